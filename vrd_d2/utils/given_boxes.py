"""Caller-given boxes for the demo and the gold-box modes: the ``--boxes`` JSON file, a registered
dataset's annotated boxes, and the check that given boxes fit their image.

The ``--boxes`` file is a list of ``{"file_name": "a.jpg", "boxes": [[x1, y1, x2, y2], ...],
"labels": [id or class name, ...], "scores": [...]}`` (``labels`` / ``scores`` optional), or a dict
mapping file names to such entries. Only a file that cannot be read as such a list or dict fails
as a whole; each entry is validated when its image asks for it, so one bad entry fails only its
image (:class:`GivenBoxesFile`).
"""

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .checks import check_float, check_int, is_finite_number

__all__ = ["GivenBoxes", "GivenBoxesFile", "load_given_boxes", "boxes_from_dataset", "check_boxes_fit"]


@dataclass
class GivenBoxes:
    """The boxes given for one image.

    Attributes:
        boxes: float64 [B, 4] XYXY_ABS, finite, x1 > x0 and y1 > y0.
        labels: int64 [B] 0-based class ids, or None (unknown labels).
        scores: float32 [B] detector confidences in [0, 1], or None (all 1).
    """

    boxes: np.ndarray
    labels: Optional[np.ndarray] = None
    scores: Optional[np.ndarray] = None


class GivenBoxesFile(Mapping):
    """
    The ``--boxes`` JSON file as a mapping ``basename -> GivenBoxes``.

    Reading the file raises ``ValueError`` naming it when it is not JSON, when its top level is
    neither a list nor a dict, or when a list element has no ``file_name``. Looking an entry up
    validates it and raises ``ValueError`` naming the file, the entry and the row (an unknown class
    name, a non-integral label, a NaN / negative / > 1 score, a box that is not 4 finite numbers
    with x1 > x0 and y1 > y0, counts that differ, a file name listed twice); ``dict(f)`` therefore
    validates every entry.
    """

    def __init__(self, path: str, thing_classes: Sequence[str]):
        self.path = path
        self._class_ids = {name: i for i, name in enumerate(thing_classes)}
        self._num_classes = len(thing_classes)
        self._raw: Dict[str, List] = {}
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f, object_pairs_hook=_pairs_keeping_duplicates)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--boxes {path}: cannot read JSON: {e}") from e
        except RecursionError:
            raise ValueError(f"--boxes {path}: cannot read JSON: nested too deeply") from None
        if isinstance(data, _DuplicatePairs):
            entries = list(data.pairs)
        elif isinstance(data, list):
            entries = []
            for i, d in enumerate(data):
                name = d.get("file_name") if isinstance(d, _DuplicatePairs) else None
                if not isinstance(name, str) or not name:
                    raise ValueError(f"--boxes {path}: list element {i} needs a 'file_name' string")
                entries.append((name, d))
        else:
            raise ValueError(
                f"--boxes {path}: expected a list of entries or a dict by file name, " f"found {type(data).__name__}"
            )
        for name, entry in entries:
            self._raw.setdefault(os.path.basename(name), []).append(entry)

    def __iter__(self):
        return iter(self._raw)

    def __len__(self):
        return len(self._raw)

    def __getitem__(self, name: str) -> GivenBoxes:
        found = self._raw[name]
        where = f"--boxes {self.path}: entry {name!r}"
        if len(found) > 1:
            raise ValueError(f"{where}: listed {len(found)} times (expected once)")
        entry = found[0]
        if not isinstance(entry, _DuplicatePairs):
            raise ValueError(f"{where}: expected an object with 'boxes', found {type(entry).__name__}")
        entry = entry.unique(where)
        if not isinstance(entry.get("boxes"), list):
            raise ValueError(f"{where}: needs a 'boxes' list, found {entry.get('boxes')!r}")
        boxes = _parse_boxes(entry["boxes"], where)
        labels, scores = entry.get("labels"), entry.get("scores")
        for field, values in (("labels", labels), ("scores", scores)):
            if values is not None and (not isinstance(values, list) or len(values) != len(boxes)):
                found_n = len(values) if isinstance(values, list) else type(values).__name__
                raise ValueError(f"{where}: {len(boxes)} boxes but {found_n} {field}")
        if labels is not None:
            labels = np.array([self._label_id(v, where, i) for i, v in enumerate(labels)], dtype=np.int64)
        if scores is not None:
            scores = np.array(
                [check_float(v, f"scores[{i}]", low=0.0, high=1.0, where=where) for i, v in enumerate(scores)],
                dtype=np.float32,
            )
        return GivenBoxes(boxes, labels, scores)

    def _label_id(self, value, where: str, row: int) -> int:
        if isinstance(value, str):
            if value not in self._class_ids:
                raise ValueError(f"{where}: labels[{row}]: unknown class name {value!r}")
            return self._class_ids[value]
        return check_int(value, f"labels[{row}]", low=0, high=self._num_classes - 1, where=where)


def load_given_boxes(path: str, thing_classes: Sequence[str]) -> Dict[str, GivenBoxes]:
    """Every entry of a ``--boxes`` file, validated (the first bad entry raises ``ValueError``)."""
    return dict(GivenBoxesFile(path, thing_classes))


def boxes_from_dataset(name: str) -> Dict[str, GivenBoxes]:
    """The annotated boxes and labels of the registered dataset ``name``, by image basename."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    out = {}
    for d in DatasetCatalog.get(name):
        anns = d.get("annotations", [])
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        out[os.path.basename(d["file_name"])] = GivenBoxes(
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            np.asarray([a["category_id"] for a in anns], dtype=np.int64),
        )
    return out


def check_boxes_fit(name: str, image_shape: Tuple[int, ...], given: GivenBoxes, num_classes: int) -> None:
    """Raise ``ValueError`` naming the image and the row when ``given`` does not fit the image:
    a box outside it (1 px of slack), a label outside ``[0, num_classes)``, or counts that differ."""
    h, w = image_shape[:2]
    for field, values in (("labels", given.labels), ("scores", given.scores)):
        if values is not None and len(values) != len(given.boxes):
            raise ValueError(f"{name}: {len(given.boxes)} boxes but {len(values)} {field}")
    for i, (x0, y0, x1, y1) in enumerate(given.boxes.tolist()):
        if not all(map(math.isfinite, (x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
            raise ValueError(f"{name}: box {i} {[x0, y0, x1, y1]} is degenerate or not finite")
        if x0 < -1 or y0 < -1 or x1 > w + 1 or y1 > h + 1:
            raise ValueError(f"{name}: box {i} {[x0, y0, x1, y1]} lies outside the {w}x{h} image")
    if given.labels is not None:
        for i, label in enumerate(given.labels.tolist()):
            if not 0 <= label < num_classes:
                raise ValueError(f"{name}: label {label} of box {i} is outside [0, {num_classes})")


def _parse_boxes(rows, where: str) -> np.ndarray:
    """A JSON list of boxes -> float64 [B, 4]; each row 4 finite numbers with x1 > x0, y1 > y0."""
    out = np.zeros((len(rows), 4), dtype=np.float64)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 4 or not all(is_finite_number(v) for v in row):
            raise ValueError(f"{where}: boxes[{i}] must be 4 finite numbers [x1, y1, x2, y2], found {row!r}")
        if not (row[2] > row[0] and row[3] > row[1]):
            raise ValueError(f"{where}: boxes[{i}] {row} is inverted or empty (need x2 > x1 and y2 > y1)")
        out[i] = row
    return out


class _DuplicatePairs:
    """A JSON object kept as its (key, value) pairs, so that a key given twice is reported, not
    silently replaced by its last value."""

    def __init__(self, pairs):
        self.pairs = pairs

    def get(self, key, default=None):
        return next((v for k, v in self.pairs if k == key), default)

    def unique(self, where: str) -> Dict:
        keys = [k for k, _ in self.pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"{where}: key(s) {twice} given more than once")
        return dict(self.pairs)


def _pairs_keeping_duplicates(pairs):
    return _DuplicatePairs(pairs)
