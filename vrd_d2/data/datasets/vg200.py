"""Visual Genome split VG200 (Zhang et al. 2017, VTransE).

VG200 (VTransE split, 200 objects / 100 predicates), ``$DETECTRON2_DATASETS/vg200``::

    vg1_2_meta.h5   image_data.json (optional: image sizes, else image headers)   images/

Format as read by public code (not verified on the real file, which is not available here):
``meta/cls/idx2name/<k>`` and ``meta/pre/idx2name/<k>`` name datasets (class id = k, a
``__background__`` entry at 0 is dropped and ids shifted down by one), and per image
``gt/{train,test}/<image stem>/{rlp_labels, sub_boxes, obj_boxes}``: rlp_labels [n,3] are
(subject, predicate, object) and boxes [n,4] are ``[x1, y1, x2, y2]`` in original pixels. If your copy differs, convert it into the
vrd json format (docs/DATASETS.md): one image entry per image, objects = the distinct
(class, box) of subjects and objects, relations = (subject index, object index, predicate).
"""

import os
from typing import List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .common import LoadStats, as_int_array, build_record, check_id, read_json, registration_guard
from .vg import open_h5, read_image_data
from .vrd import read_image_size

__all__ = ["load_vg200_h5", "register_vg200"]


def _vg200_group_names(h5, path, key):
    """(names, id offset) of the group ``key`` of ``meta/{cls,pre}/idx2name``; ValueError naming it."""
    if key not in h5:
        raise ValueError(f"VG200: {path}: group {key!r} missing")
    return _vg200_names(h5[key], path, key)


def _vg200_names(group, path, key) -> List[str]:
    try:
        items = sorted((int(k), v[()]) for k, v in group.items())
    except ValueError:
        raise ValueError(f"{path}: {key} keys must be integers") from None
    if not items:
        raise ValueError(f"{path}: {key} is empty")
    try:
        names = [(v.decode() if isinstance(v, bytes) else str(v)) for _, v in items]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {key}: a name is not UTF-8 text: {e}") from None
    if [k for k, _ in items] != list(range(items[0][0], items[0][0] + len(items))):
        raise ValueError(f"{path}: {key} keys are not consecutive")
    offset = items[0][0]
    if names and names[0].lower() in ("__background__", "background"):
        names, offset = names[1:], offset + 1
    return names, offset


def _rows(arr: np.ndarray, width: int, name: str, where: str) -> np.ndarray:
    if arr.size % width:
        raise ValueError(f"{where}: {name} has shape {arr.shape}, expected rows of {width}")
    return arr.reshape(-1, width)


def load_vg200_h5(
    h5_file: str,
    image_root: str,
    split: str,
    image_data_file: Optional[str] = None,
    name: str = "vg200",
    stats: Optional[LoadStats] = None,
) -> List[dict]:
    """Load VTransE's ``vg1_2_meta.h5`` split ("train" | "test"); see the module docstring."""
    with open_h5(h5_file) as h5:
        if f"gt/{split}" not in h5:
            raise ValueError(f"VG200: {h5_file}: group 'gt/{split}' missing")
        objects, obj_off = _vg200_group_names(h5, h5_file, "meta/cls/idx2name")
        predicates, pred_off = _vg200_group_names(h5, h5_file, "meta/pre/idx2name")
        sizes = {}
        if image_data_file and os.path.isfile(image_data_file):
            for image_id, height, width, _ in read_image_data(
                read_json(image_data_file, "image_data", "VG"), image_data_file
            ):
                sizes[str(image_id)] = (height, width)
        stats = stats if stats is not None else LoadStats(name)
        records = []
        for stem in sorted(h5[f"gt/{split}"].keys(), key=lambda s: (len(s), s)):
            g, where = h5[f"gt/{split}/{stem}"], f"VG200: {h5_file}: image {stem}"
            missing = [k for k in ("rlp_labels", "sub_boxes", "obj_boxes") if k not in g]
            if missing:
                raise ValueError(f"{where}: datasets {missing} missing")
            lab = _rows(as_int_array(g["rlp_labels"][()], "rlp_labels", where), 3, "rlp_labels", where)
            sb = _rows(np.asarray(g["sub_boxes"][()], dtype=np.float64), 4, "sub_boxes", where)
            ob = _rows(np.asarray(g["obj_boxes"][()], dtype=np.float64), 4, "obj_boxes", where)
            if not (len(lab) == len(sb) == len(ob)) or not np.isfinite(sb).all() or not np.isfinite(ob).all():
                raise ValueError(
                    f"{where}: {len(lab)} rlp_labels rows, {len(sb)} sub_boxes and {len(ob)} obj_boxes "
                    f"(expected as many finite boxes as labels)"
                )
            file_name = os.path.join(image_root, f"{stem}.jpg")
            height, width = sizes[stem] if stem in sizes else read_image_size(file_name)
            objs, index, rel_rows = [], {}, []
            for j in range(len(lab)):
                desc = stem
                s = check_id(lab[j, 0] - obj_off, len(objects), "subject class", h5_file, desc, j)
                p = check_id(lab[j, 1] - pred_off, len(predicates), "predicate", h5_file, desc, j)
                o = check_id(lab[j, 2] - obj_off, len(objects), "object class", h5_file, desc, j)
                ends = []
                for cat, box in ((s, sb[j]), (o, ob[j])):
                    key = (cat,) + tuple(box.tolist())
                    if key not in index:
                        index[key] = len(objs)
                        objs.append((cat, box.tolist()))
                    ends.append(index[key])
                rel_rows.append((ends[0], ends[1], p))
            rec = build_record(objs, rel_rows, height, width, stats, f"{h5_file}: {stem}")
            rec.update(
                file_name=file_name,
                image_id=int(stem) if stem.isdigit() else stem,
                height=height,
                width=width,
            )
            records.append(rec)
    stats.log()
    return records


def register_vg200(root: str, prefix: str = "vg200"):
    """Register ``<prefix>_{train,test}`` from ``root/vg1_2_meta.h5`` (lazy)."""
    h5_file = os.path.join(root, "vg1_2_meta.h5")
    image_root = os.path.join(root, "images")
    for split in ("train", "test"):
        name = f"{prefix}_{split}"
        DatasetCatalog.register(
            name,
            lambda split=split, name=name: load_vg200_h5(
                h5_file, image_root, split, os.path.join(root, "image_data.json"), name=name
            ),
        )
        md = MetadataCatalog.get(name)
        md.set(
            evaluator_type="vrd",
            evaluation_protocol="sgb",  # VRDEvaluator's "auto": the VG community's protocol
            train_split=f"{prefix}_train",
            image_root=image_root,
            flip_predicate_map=None,
        )
        if os.path.isfile(h5_file):
            with registration_guard(name), open_h5(h5_file) as h5:
                objects, _ = _vg200_group_names(h5, h5_file, "meta/cls/idx2name")
                predicates, _ = _vg200_group_names(h5, h5_file, "meta/pre/idx2name")
                md.set(thing_classes=objects, predicate_classes=predicates)
