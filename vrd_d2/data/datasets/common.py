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

import contextlib
import json
import logging
import math
import os
from collections import OrderedDict
from numbers import Integral, Real
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

__all__ = [
    "LoadStats",
    "build_record",
    "check_id",
    "read_json",
    "as_int",
    "as_int_array",
    "as_number",
    "as_box",
    "as_image_size",
    "as_names",
    "as_dict",
    "as_list",
    "registration_guard",
    "RELATIONS_DTYPE",
]

RELATIONS_DTYPE = np.int64


def read_json(path: str, what: str, source: str):
    """``json.load`` of ``path`` (UTF-8); FileNotFoundError / ValueError naming ``source`` (e.g.
    "VRD"), ``what`` the file is and the path. A key repeated inside one json object is an error
    (json would keep the last value and silently drop the others)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{source}: {what} file not found: {path}")

    def unique_keys(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"{source}: {what} file {path}: key {k!r} appears twice in one json object")
            out[k] = v
        return out

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: {what} file {path} is not valid json: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: {what} file {path} is not UTF-8 text: {e}") from None
    except RecursionError:
        raise ValueError(f"{source}: {what} file {path}: json nested too deeply to read") from None


def as_int(value, what: str, where: str) -> int:
    """``value`` as an int if it is an integral number (3 or 3.0; numpy scalars too), else a
    ValueError ``"<where>: <what> must be an integer, found <value>"``. bool, strings, 3.7 and
    non-finite numbers are refused: ``int()`` would turn them silently into another id."""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: {what} must be an integer, found {value!r}")
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real) and math.isfinite(float(value)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{where}: {what} must be an integer, found {value!r}")


def as_int_array(arr, what: str, where: str) -> np.ndarray:
    """``arr`` as int64 if every value is integral, else a ValueError naming the first bad row
    (``astype`` would truncate 3.7 to 3 and turn True into 1)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if not bad.any():
            return arr.astype(np.int64)
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{where}: {what} row {row}: ids must be integers, found {arr[row].tolist()}")
    raise ValueError(f"{where}: {what} must hold integers, found dtype {arr.dtype}")


def as_number(value, what: str, where: str) -> float:
    """``value`` as a finite float (not bool, not a string), else a ValueError naming ``where``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{where}: {what} must be a finite number, found {value!r}")
    return float(value)


def as_box(value, what: str, where: str) -> List[float]:
    """A list of 4 finite numbers (in the file's own order), else a ValueError naming ``where``."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"{where}: {what} must be a list of 4 numbers, found {value!r}")
    return [as_number(v, f"{what} coordinate", where) for v in value]


def as_image_size(height, width, where: str) -> Tuple[int, int]:
    """(height, width) as positive ints, else a ValueError naming ``where``."""
    h, w = as_int(height, "height", where), as_int(width, "width", where)
    if h <= 0 or w <= 0:
        raise ValueError(f"{where}: height and width must be positive, found {h} x {w}")
    return h, w


def as_names(value, what: str, where: str) -> List[str]:
    """A json list of distinct, non-blank strings (class names: a name is its id's only key), else a
    ValueError naming ``where`` and the offending positions."""
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        found = repr(value)
        raise ValueError(f"{where}: {what} must be a list of strings, found {found[:80]}{'...' * (len(found) > 80)}")
    blank = [i for i, n in enumerate(value) if not n.strip()]
    if blank:
        raise ValueError(f"{where}: {what}: entry {blank[0]} is blank ({value[blank[0]]!r})")
    first = {}
    for i, n in enumerate(value):
        if n in first:
            raise ValueError(f"{where}: {what}: {n!r} is both entry {first[n]} and entry {i}; names must be distinct")
        first[n] = i
    return list(value)


def as_dict(value, what: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {what} must be a json object, found {type(value).__name__}")
    return value


def as_list(value, what: str, where: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{where}: {what} must be a list, found {type(value).__name__}")
    return value


@contextlib.contextmanager
def registration_guard(name: str):
    """Around the metadata a registration reads (class lists): a malformed file must not make
    ``import vrd_d2`` fail for runs that never use ``name``. The error is logged here and raised
    again, naming the file, when the dataset is loaded (its loader reads the same file)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 (any malformed file: import must still work; raised again on load)
        logger.warning(f"dataset {name!r} registered without class names: {type(e).__name__}: {e}")


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
    """``value`` as an int if it is integral (see :func:`as_int`) and lies in ``[0, num)``, else a
    ValueError naming file, image, entry."""
    v = as_int(value, what, f"{file}: image {image}, entry {entry}")
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
                example=f"{image_desc} object {i} box {list(box)} " f"(empty after clipping to {width}x{height})",
            )
            continue
        key = (int(cat), cx1, cy1, cx2, cy2)
        if merge_objects and key in key_to_ann:
            stats.add("duplicate_objects_merged")
            obj_to_ann[i] = key_to_ann[key]
            continue
        key_to_ann[key] = len(annotations)
        obj_to_ann[i] = len(annotations)
        annotations.append({"bbox": [cx1, cy1, cx2, cy2], "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(cat)})

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
