"""Visual Genome split VG150 (Xu et al. 2017); the h5 and image_data readers VG200 shares.

VG150 layout under ``$DETECTRON2_DATASETS/vg``::

    VG-SGG-with-attri.h5 (or VG-SGG.h5)   VG-SGG-dicts-with-attri.json   image_data.json   VG_100K/

Conversion rules (the public format, as read by Scene-Graph-Benchmark.pytorch):

- ``boxes_1024`` [Nb,4] are ``[cx, cy, w, h]`` in an image rescaled so its longest side is 1024:
  ``x1 = cx - w/2, y1 = cy - h/2, x2 = x1 + w, y2 = y1 + h``, then times
  ``max(width, height) / 1024`` with width/height from image_data.json (original image size);
- ``labels`` [Nb,1] and ``predicates`` [Nr,1] are 1-based (0 = background, an error here);
  names come from ``idx_to_label`` / ``idx_to_predicate`` in the dicts json (1-based keys);
- ``relationships`` [Nr,2] hold *global* box indices (subject, object); image i owns the inclusive
  ranges ``img_to_first_box[i]..img_to_last_box[i]`` and
  ``img_to_first_rel[i]..img_to_last_rel[i]``,
  ``-1`` meaning none; a relation pointing outside its image's box range is a ValueError;
- ``split`` is 0 for train, 2 for test; ``vg150_val`` is the first 5000 training images (h5 order)
  that have at least one relation (as in the benchmark code), ``vg150_train`` the remaining
  training images; images without boxes/relations are kept (counted) and can be filtered for
  training by :func:`vrd_d2.data.filter_images_without_relations`;
- image_data.json has 4 more entries than the h5 in the public release (corrupted images
  1592, 1722, 4616, 4617); they are dropped to align the two, anything else is an error.

VG200 is read by vg200.py.
"""

import logging
import os
from typing import List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .common import (
    LoadStats,
    as_dict,
    as_image_size,
    as_int,
    as_int_array,
    as_list,
    as_names,
    build_flip_map,
    build_record,
    check_id,
    read_json,
    registration_guard,
)

logger = logging.getLogger(__name__)

__all__ = ["load_vg150", "register_vg150", "open_h5", "read_image_data", "VG150_NUM_VAL"]

VG150_NUM_VAL = 5000
BOX_SCALE = 1024
VG_CORRUPTED_IMAGES = ("1592.jpg", "1722.jpg", "4616.jpg", "4617.jpg")
H5_KEYS = (
    "split",
    "img_to_first_box",
    "img_to_last_box",
    "img_to_first_rel",
    "img_to_last_rel",
    "labels",
    "boxes_%d" % BOX_SCALE,
    "predicates",
    "relationships",
)


def _names_from_1based(mapping: dict, path: str, key: str) -> List[str]:
    """``{"1": name1, ...}`` -> [name1, ...] (0-based list)."""
    as_dict(mapping, key, path)
    try:
        idx = sorted(int(k) for k in mapping)
    except ValueError:
        raise ValueError(f"{path}: {key} keys must be integers") from None
    if idx != list(range(1, len(idx) + 1)):
        raise ValueError(f"{path}: {key} keys must be 1..{len(idx)} (1-based, 0 = background)")
    return as_names([mapping[k] for k in sorted(mapping, key=int)], f"{key} values", path)


def read_image_data(image_data: list, path: str) -> List[tuple]:
    """Per image_data.json entry (image_id, height, width, image name), every field checked."""
    out = []
    for i, d in enumerate(as_list(image_data, "the top level", f"VG: {path}")):
        where = f"VG: {path}: entry {i}"
        d = as_dict(d, "an image entry", where)
        missing = [k for k in ("image_id", "width", "height") if k not in d]
        if missing:
            raise ValueError(f"{where}: keys {missing} missing (found {sorted(d)})")
        image_id = as_int(d["image_id"], "image_id", where)
        height, width = as_image_size(d["height"], d["width"], where)
        out.append((image_id, height, width, os.path.basename(str(d.get("url", f"{image_id}.jpg")))))
    return out


def vg150_classes(dicts_file: str):
    d = read_json(dicts_file, "dicts", "VG")
    for k in ("idx_to_label", "idx_to_predicate"):
        if k not in d:
            raise ValueError(f"{dicts_file}: key {k!r} missing")
    return (
        _names_from_1based(d["idx_to_label"], dicts_file, "idx_to_label"),
        _names_from_1based(d["idx_to_predicate"], dicts_file, "idx_to_predicate"),
    )


def open_h5(path):
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(f"VG: h5 file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"VG: {path} is not a readable HDF5 file: {e}") from None


def _find_h5(root: str) -> str:
    for n in ("VG-SGG-with-attri.h5", "VG-SGG.h5"):
        if os.path.isfile(os.path.join(root, n)):
            return os.path.join(root, n)
    return os.path.join(root, "VG-SGG-with-attri.h5")


def load_vg150(
    h5_file: str,
    dicts_file: str,
    image_data_file: str,
    image_root: str,
    split: str,
    num_val: int = VG150_NUM_VAL,
    name: str = "vg150",
    stats: Optional[LoadStats] = None,
) -> List[dict]:
    """Load one VG150 split ("train" | "val" | "test") as relation records.

    ``image_id`` is Visual Genome's image id (from image_data.json); records are in h5 order.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"VG150 split must be train, val or test, found {split!r}")
    objects, predicates = vg150_classes(dicts_file)
    image_data = read_image_data(read_json(image_data_file, "image_data", "VG"), image_data_file)
    with open_h5(h5_file) as h5:
        missing = [k for k in H5_KEYS if k not in h5]
        if missing:
            raise ValueError(f"VG: {h5_file}: datasets {missing} missing (found {sorted(h5)})")
        arr = {k: np.asarray(h5[k][()]) for k in H5_KEYS}
    for k in H5_KEYS:
        if k != "boxes_%d" % BOX_SCALE:
            arr[k] = as_int_array(arr[k], k, f"VG: {h5_file}")
    n_img = len(arr["split"])
    for k in ("img_to_first_box", "img_to_last_box", "img_to_first_rel", "img_to_last_rel"):
        if len(arr[k]) != n_img:
            raise ValueError(f"VG: {h5_file}: {k} has {len(arr[k])} entries, split has {n_img}")
    for a, b, width in (("labels", "boxes_%d" % BOX_SCALE, 4), ("predicates", "relationships", 2)):
        if arr[a].size != arr[b].size // width or arr[b].size % width:
            raise ValueError(
                f"VG: {h5_file}: {a} has {arr[a].size} rows but {b} has shape {arr[b].shape} "
                f"(expected one {a} row per {width}-number {b} row)"
            )
    if len(image_data) != n_img:
        kept = [d for d in image_data if d[3] not in VG_CORRUPTED_IMAGES]
        if len(kept) != n_img:
            raise ValueError(
                f"VG: {image_data_file} has {len(image_data)} images "
                f"({len(kept)} without the 4 known corrupted ones) but {h5_file} "
                f"has {n_img}"
            )
        image_data = kept
    boxes_c = arr["boxes_%d" % BOX_SCALE].astype(np.float64).reshape(-1, 4)
    labels = arr["labels"].reshape(-1)
    preds = arr["predicates"].reshape(-1)
    rels = arr["relationships"].reshape(-1, 2)
    # xcycwh (1024 scale) -> xyxy (1024 scale)
    xyxy = np.concatenate(
        [boxes_c[:, :2] - boxes_c[:, 2:] / 2, boxes_c[:, :2] - boxes_c[:, 2:] / 2 + boxes_c[:, 2:]],
        axis=1,
    )

    flag = arr["split"].reshape(-1)
    train_idx = np.nonzero(flag == 0)[0]
    if split == "test":
        index = np.nonzero(flag == 2)[0]
    else:
        has_rel = arr["img_to_first_rel"].reshape(-1)[train_idx] >= 0
        val_idx = train_idx[has_rel][:num_val]
        index = val_idx if split == "val" else np.setdiff1d(train_idx, val_idx)
    stats = stats if stats is not None else LoadStats(name)
    records = []
    fb, lb = arr["img_to_first_box"].reshape(-1), arr["img_to_last_box"].reshape(-1)
    fr, lr = arr["img_to_first_rel"].reshape(-1), arr["img_to_last_rel"].reshape(-1)
    for i in index.tolist():
        vg_image_id, height, width, image_name = image_data[i]
        desc = f"{i} ({image_name})"
        objs, rel_rows = [], []
        if fb[i] >= 0:
            if not (0 <= fb[i] <= lb[i] < len(labels)):
                raise ValueError(
                    f"VG: {h5_file}: image {desc}: box range {fb[i]}..{lb[i]} invalid " f"({len(labels)} boxes)"
                )
            scale = max(width, height) / float(BOX_SCALE)
            for g in range(fb[i], lb[i] + 1):
                cat = check_id(
                    int(labels[g]) - 1,
                    len(objects),
                    "label (1-based) - 1",
                    h5_file,
                    desc,
                    f"box {g}",
                )
                objs.append((cat, (xyxy[g] * scale).tolist()))
        if fr[i] >= 0:
            if fb[i] < 0 or not (0 <= fr[i] <= lr[i] < len(rels)):
                raise ValueError(
                    f"VG: {h5_file}: image {desc}: relation range {fr[i]}..{lr[i]} "
                    f"invalid (box range {fb[i]}..{lb[i]}, {len(rels)} relations)"
                )
            for r in range(fr[i], lr[i] + 1):
                s, o = int(rels[r, 0]), int(rels[r, 1])
                if not (fb[i] <= s <= lb[i] and fb[i] <= o <= lb[i]):
                    raise ValueError(
                        f"VG: {h5_file}: image {desc}, relation {r}: boxes ({s}, {o}) "
                        f"outside the image's box range {fb[i]}..{lb[i]}"
                    )
                p = check_id(
                    int(preds[r]) - 1,
                    len(predicates),
                    "predicate (1-based) - 1",
                    h5_file,
                    desc,
                    f"relation {r}",
                )
                rel_rows.append((s - fb[i], o - fb[i], p))
        rec = build_record(objs, rel_rows, height, width, stats, f"{h5_file}: image {desc}")
        rec.update(
            file_name=os.path.join(image_root, image_name),
            image_id=vg_image_id,
            height=height,
            width=width,
        )
        records.append(rec)
    stats.log()
    return records


def register_vg150(root: str, prefix: str = "vg150"):
    """Register ``<prefix>_{train,val,test}`` from ``root`` (see module docstring)."""
    dicts_file = os.path.join(root, "VG-SGG-dicts-with-attri.json")
    image_data_file = os.path.join(root, "image_data.json")
    image_root = os.path.join(root, "VG_100K")
    for split in ("train", "val", "test"):
        name = f"{prefix}_{split}"
        DatasetCatalog.register(
            name,
            lambda split=split, name=name: load_vg150(
                _find_h5(root), dicts_file, image_data_file, image_root, split, name=name
            ),
        )
        md = MetadataCatalog.get(name)
        md.set(
            evaluator_type="vrd",
            evaluation_protocol="sgb",  # VRDEvaluator's "auto": the VG community's protocol
            train_split=f"{prefix}_train",
            image_root=image_root,
            root=root,
            split=split,
        )
        if os.path.isfile(dicts_file):
            with registration_guard(name):
                things, preds = vg150_classes(dicts_file)
                # no left/right predicate in VG150: a horizontal flip keeps every predicate
                md.set(
                    thing_classes=things,
                    predicate_classes=preds,
                    flip_predicate_map=build_flip_map(preds, []),
                )
        if md.get("thing_classes", None) is None:  # loading raises, naming the file
            md.set(flip_predicate_map=None)
