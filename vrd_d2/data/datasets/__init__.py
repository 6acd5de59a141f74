"""Relationship datasets in Detectron2's catalog; importing this registers the builtin ones.

Like detectron2/data/datasets/builtin.py, the builtin datasets live under
``$DETECTRON2_DATASETS`` (default ``datasets``): ``vrd/`` (vrd_train, vrd_test; vrd_train_fit + vrd_val, a seeded split of vrd_train), ``vg/``
(vg150_train, vg150_val, vg150_test), ``vg200/`` (vg200_train, vg200_test; vg200_train_fit + vg200_val). The embedded shapes
data of ``make demo`` is not a library dataset: ``import vrd_d2_studies.shapes_demo`` registers it.
Registration reads no annotation file (only class lists when present), so it is cheap and works
without the data; loading a missing dataset raises FileNotFoundError naming the file.
"""

import os

from .common import LoadStats, build_flip_map, build_record
from .custom import dump_vrd_json, load_vrd_json_file, read_vrd_json_header, register_vrd_json
from .holdout import register_holdout_split, split_holdout
from .lu2016 import load_image_paths, load_lu_detections, load_lu_gt_mat
from .vg import load_vg150, register_vg150
from .vg200 import load_vg200_h5, register_vg200
from .vrd import load_vrd_json, register_all_vrd, register_vrd_split

__all__ = [k for k in globals().keys() if not k.startswith("_") and k != "os"]


def register_all_builtin(root: str):
    register_all_vrd(os.path.join(root, "vrd"))
    register_vg150(os.path.join(root, "vg"))
    register_vg200(os.path.join(root, "vg200"))
    # validation images held out of the training splits that have no val split (holdout.py)
    register_holdout_split("vrd_train", "vrd_train_fit", "vrd_val")
    register_holdout_split("vg200_train", "vg200_train_fit", "vg200_val")


_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_builtin(_root)
