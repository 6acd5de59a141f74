"""Building relation records (Detectron2 dicts + ``relations``) from any source format.

Every loader in this package reduces its format to, per image, a list of objects
``(category_id, [x1, y1, x2, y2])`` (0-based ids, XYXY_ABS in original-image pixels) and a list
of relations ``(subject object index, object object index, predicate id)``, then calls
:func:`build_record`, which applies the same rules everywhere:

- boxes outside the image are clipped to it (counted);
- boxes that are degenerate (zero area or inverted) after clipping are removed together with the
  relations that use them (counted);
- identical objects (same category and box) are merged into one annotation (counted), so an
  object shared by several relations is a single annotation;
- duplicate relations (same subject annotation, object annotation and predicate) are kept once
  (counted);
- ids outside the class lists raise ``ValueError`` naming file, image and entry.

Nothing is dropped silently: the counts are accumulated in a :class:`LoadStats` and logged as one
summary line per dataset by :meth:`LoadStats.log`.
"""

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

__all__ = ["LoadStats", "build_record", "check_id", "read_json", "RELATIONS_DTYPE"]

RELATIONS_DTYPE = np.int64


def read_json(path: str, what: str, source: str):
    """``json.load`` of ``path``; FileNotFoundError / ValueError naming ``source`` (e.g. "VRD"),
    ``what`` the file is and the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{source}: {what} file not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: {what} file {path} is not valid json: {e}") from None


class LoadStats:
    """Counters of every rule applied while loading one dataset, logged as one summary line."""

    KEYS = (
        "images",
        "relations_read",
        "relations_kept",
        "duplicate_relations_merged",
        "duplicate_objects_merged",
        "boxes_clipped",
        "degenerate_boxes",
        "relations_dropped_degenerate",
        "self_relations",
        "images_without_relations",
        "images_with_fewer_than_two_boxes",
    )

    def __init__(self, name: str):
        self.name = name
        self.counts: Dict[str, int] = OrderedDict((k, 0) for k in self.KEYS)
        self.examples: Dict[str, List[str]] = {}

    def add(self, key: str, n: int = 1, example: Optional[str] = None):
        self.counts[key] = self.counts.get(key, 0) + int(n)
        if example is not None and n > 0:
            ex = self.examples.setdefault(key, [])
            if len(ex) < 3:
                ex.append(example)

    def __getitem__(self, key):
        return self.counts[key]

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in self.counts.items()]
        text = f"[{self.name}] " + ", ".join(parts)
        for k, ex in self.examples.items():
            text += f"\n  {k} e.g. in: {'; '.join(ex)}"
        return text

    def log(self):
        logger.info(self.summary())


def check_id(value, num: int, what: str, file: str, image: str, entry) -> int:
    """``int(value)`` if it lies in ``[0, num)``, else a ValueError naming file, image, entry."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{file}: image {image}, entry {entry}: {what} must be an integer, " f"found {value!r}"
        ) from None
    if not (0 <= v < num):
        raise ValueError(
            f"{file}: image {image}, entry {entry}: {what} {v} outside [0, {num}) "
            f"(expected a 0-based id into a list of {num} names)"
        )
    return v


def build_record(
    objects: Sequence[Tuple[int, Sequence[float]]],
    relations: Sequence[Tuple[int, int, int]],
    height: int,
    width: int,
    stats: LoadStats,
    image_desc: str,
    merge_objects: bool = True,
    relations_complete: Optional[Sequence[Tuple[int, int, int]]] = None,
) -> dict:
    """Apply the common rules and return the annotation part of a record.

    Args:
        objects: per object ``(category_id, box)``, box XYXY_ABS ``[x1, y1, x2, y2]`` in original
            image pixels, ids already checked.
        relations: rows ``(subject object index, object object index, predicate)`` into ``objects``.
        height, width: image size used for clipping.
        stats: counters to update.
        image_desc: "file: image" text used in logged examples.
        merge_objects: merge identical (category, box) objects into one annotation.
        relations_complete: optional superset of relations, same convention (shapes dataset).

    Returns:
        dict with ``annotations`` (list of {bbox, bbox_mode, category_id}), ``relations``
        (int64 [M, 3] of (subject annotation, object annotation, predicate), deduplicated, rows in
        first-seen order) and, if given, ``relations_complete`` (int64 [M', 3]).
    """
    stats.add("images")
    # 1. clip and drop degenerate boxes; map object index -> annotation index (or -1)
    obj_to_ann = np.full(len(objects), -1, dtype=np.int64)
    key_to_ann: Dict[tuple, int] = {}
    annotations = []
    for i, (cat, box) in enumerate(objects):
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (x1 < x2 and y1 < y2):
            stats.add("degenerate_boxes", example=f"{image_desc} object {i} box {list(box)}")
            continue
        cx1, cy1 = min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height))
        cx2, cy2 = min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            stats.add(
                "boxes_clipped",
                example=f"{image_desc} object {i} box {list(box)} " f"in {width}x{height}",
            )
        if not (cx1 < cx2 and cy1 < cy2):
            stats.add(
                "degenerate_boxes",
                example=f"{image_desc} object {i} box {list(box)} "
                f"(empty after clipping to {width}x{height})",
            )
            continue
        key = (int(cat), cx1, cy1, cx2, cy2)
        if merge_objects and key in key_to_ann:
            stats.add("duplicate_objects_merged")
            obj_to_ann[i] = key_to_ann[key]
            continue
        key_to_ann[key] = len(annotations)
        obj_to_ann[i] = len(annotations)
        annotations.append(
            {"bbox": [cx1, cy1, cx2, cy2], "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(cat)}
        )

    def remap(rels, count: bool):
        out, seen = [], set()
        for s, o, p in rels:
            if count:
                stats.add("relations_read")
            a_s, a_o = obj_to_ann[int(s)], obj_to_ann[int(o)]
            if a_s < 0 or a_o < 0:
                if count:
                    stats.add("relations_dropped_degenerate")
                continue
            row = (int(a_s), int(a_o), int(p))
            if row in seen:
                if count:
                    stats.add("duplicate_relations_merged")
                continue
            seen.add(row)
            out.append(row)
            if count and a_s == a_o:
                stats.add("self_relations", example=f"{image_desc}")
        arr = np.asarray(out, dtype=RELATIONS_DTYPE).reshape(-1, 3)
        return arr

    rel_arr = remap(relations, count=True)
    stats.add("relations_kept", len(rel_arr))
    if len(rel_arr) == 0:
        stats.add("images_without_relations")
    if len(annotations) < 2:
        stats.add("images_with_fewer_than_two_boxes")
    out = {"annotations": annotations, "relations": rel_arr}
    if relations_complete is not None:
        out["relations_complete"] = remap(relations_complete, count=False)
    return out


def build_flip_map(predicate_classes: Sequence[str], swap_pairs: Sequence[Tuple[str, str]]):
    """A horizontal-flip predicate map: identity except the named pairs, swapped both ways.

    Returns ``{id: id}`` over all predicates. Pairs whose names are absent are ignored.
    """
    index = {n: i for i, n in enumerate(predicate_classes)}
    flip = {i: i for i in range(len(predicate_classes))}
    for a, b in swap_pairs:
        if a in index and b in index:
            flip[index[a]], flip[index[b]] = index[b], index[a]
    return flip


LEFT_RIGHT_PAIRS = (
    ("left of", "right of"),
    ("on the left of", "on the right of"),
    ("to the left of", "to the right of"),
)
