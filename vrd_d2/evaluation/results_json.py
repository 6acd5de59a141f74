"""Strict reader of our JSON results format (docs/EVALUATION.md "Results file formats").

Every error is a ValueError that names the file, the image entry (index, image_id, file name) and
the relation row, with what was expected and what was found; nothing is dropped or coerced
silently: an image entry gives one record, a relation row gives one row of it.
"""

import json
import math
from numbers import Integral, Real
from typing import List, Optional

import numpy as np

from ..utils.checks import is_finite_number
from .matching import compute_pair_rank

#: the ``format`` tag of our results files (:func:`~.results_io.write_results_json` writes it)
RESULTS_FORMAT = "vrd_d2.relations.v1"

__all__ = ["load_results_json", "RELATION_KEYS"]

#: keys every relation row needs (``pair_rank`` is optional)
RELATION_KEYS = ("subject_box", "object_box", "subject", "predicate", "object", "score")


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _read_document(path: str):
    """The parsed file; ValueError naming it when empty, truncated, not JSON or with a key twice."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected a results .json file") from None
    if not raw.strip():
        raise ValueError(f"{path}: the file is empty (expected a JSON results document)")
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (truncated or malformed: {e})") from None
    except ValueError as e:  # a duplicated key
        raise ValueError(f"{path}: {e}") from None
    except RecursionError:
        raise ValueError(f"{path}: not a results document (JSON nested too deeply to read)") from None


def _image_list(data, path: str, expected_dataset: Optional[str]) -> list:
    if isinstance(data, dict):
        if "images" not in data:
            raise ValueError(f"{path}: the results object has no 'images' key (keys: {sorted(data)})")
        fmt, dataset = data.get("format"), data.get("dataset")
        if fmt is not None and fmt != RESULTS_FORMAT:
            raise ValueError(f"{path}: key 'format' is {fmt!r}, this reader knows only {RESULTS_FORMAT!r}")
        if dataset is not None and not isinstance(dataset, str):
            raise ValueError(f"{path}: key 'dataset' must be a dataset name, found {dataset!r}")
        if expected_dataset is not None and dataset is not None and not _same_images(dataset, expected_dataset):
            raise ValueError(
                f"{path}: key 'dataset' declares {dataset!r}, but it is scored against {expected_dataset!r} "
                f"(--dataset); evaluate it against its own dataset"
            )
        data = data["images"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of images or an object with 'images', found {type(data).__name__}")
    return data


def _same_images(declared: str, expected: str) -> bool:
    """Whether results of dataset ``declared`` may be scored against ``expected``: the same name,
    or a registered view of its images (metadata ``images_of``, e.g. Lu's detections of a split)."""
    from detectron2.data import MetadataCatalog

    if declared == expected:
        return True
    return declared in MetadataCatalog.list() and MetadataCatalog.get(declared).get("images_of", None) == expected


def _is_number(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _box(value, name: str, where: str) -> List[float]:
    if not isinstance(value, list) or len(value) != 4 or not all(_is_number(v) for v in value):
        raise ValueError(f"{where}: {name} must be 4 numbers [x1, y1, x2, y2], found {value!r}")
    if not all(is_finite_number(v) for v in value):
        raise ValueError(f"{where}: {name} {[v if is_finite_number(v) else 'too large' for v in value]} is not finite")
    return [float(v) for v in value]


def _label(value, name: str, where: str) -> int:
    if isinstance(value, Integral) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**63:  # stored as int64
            raise ValueError(f"{where}: labels must be integers within int64, {name} is {value!r}")
        return int(value)
    if not is_finite_number(value) or float(value) != round(float(value)):
        raise ValueError(f"{where}: labels must be integers, {name} is {value!r}")
    if not -(2**63) <= int(value) < 2**63:  # stored as int64
        raise ValueError(f"{where}: labels must be integers within int64, {name} is {value!r}")
    return int(value)


def _score(value, where: str) -> float:
    if value is None:  # JSON has no NaN: null stands for it and is refused with the other checks
        return float("nan")
    if not _is_number(value):
        raise ValueError(f"{where}: score must be a number, found {value!r}")
    if not is_finite_number(value):
        raise ValueError(f"{where}: score is not a finite number")
    return float(value)


def _relation_row(r, where: str):
    if not isinstance(r, dict):
        raise ValueError(f"{where}: expected a relation object, found {type(r).__name__} {r!r}")
    miss = [k for k in RELATION_KEYS if k not in r]
    if miss:
        raise ValueError(f"{where}: missing {miss}")
    labels = [_label(r[k], k, where) for k in ("subject", "predicate", "object")]
    rank = None
    if "pair_rank" in r:
        rank = r["pair_rank"]
        if isinstance(rank, bool) or not isinstance(rank, Integral) or rank < 0:
            raise ValueError(f"{where}: pair_rank must be an integer >= 0, found {rank!r}")
    return (
        _box(r["subject_box"], "subject_box", where),
        _box(r["object_box"], "object_box", where),
        labels,
        _score(r["score"], where),
        rank,
    )


def _image_record(im, i: int, path: str) -> dict:
    if not isinstance(im, dict):
        raise ValueError(f"{path}: image entry {i} must be an object, found {type(im).__name__}")
    if "image_id" not in im and "file_name" not in im:
        raise ValueError(f"{path}: image entry {i} has neither image_id nor file_name")
    image_id, file_name = im.get("image_id"), im.get("file_name", "")
    if not (isinstance(image_id, (str, Integral)) or image_id is None) or isinstance(image_id, bool):
        raise ValueError(f"{path}: image entry {i}: image_id must be an integer or a string, found {image_id!r}")
    if not isinstance(file_name, str):
        raise ValueError(f"{path}: image entry {i}: file_name must be a string, found {file_name!r}")
    where = f"{path}: image {i} (image_id={image_id}, {file_name})"
    rels = im.get("relations", [])
    if not isinstance(rels, list):
        raise ValueError(f"{where}: 'relations' must be a list, found {type(rels).__name__}")
    rows = [_relation_row(r, f"{where}, row {j}") for j, r in enumerate(rels)]
    n = len(rows)
    rec = {
        "sub_boxes": np.array([r[0] for r in rows], np.float64).reshape(n, 4),
        "obj_boxes": np.array([r[1] for r in rows], np.float64).reshape(n, 4),
        "labels": np.array([r[2] for r in rows], np.int64).reshape(n, 3),
        "scores": np.array([r[3] for r in rows], np.float64).reshape(n),
    }
    if n and all(r[4] is not None for r in rows):
        rec["pair_rank"] = np.array([r[4] for r in rows], np.int64)
    else:  # pair_rank absent (anywhere in the image): a pair is its two boxes
        rec["pair_rank"] = compute_pair_rank(rec["sub_boxes"], rec["obj_boxes"], rec["scores"])
    return {"image_id": image_id, "file_name": file_name, "record": rec, "where": where}


def load_results_json(path: str, expected_dataset: Optional[str] = None) -> List[dict]:
    """Read our JSON results: a list of ``{"image_id", "file_name", "record", "where"}``, one per
    image entry, in file order.

    Accepts the ``{"format", "images"}`` object or a bare list of image entries. Every relation
    needs subject_box, object_box (4 numbers each), subject, predicate, object (integers; an
    integral float such as 3.0 is read as 3, a bool or 3.7 is an error) and score (a number;
    null reads as NaN, which the evaluator refuses naming the row); pair_rank is optional
    (recomputed from the boxes when absent in the whole image). Raises ValueError naming the file
    and the entry, also when the object's ``format`` is not :data:`RESULTS_FORMAT` or its
    ``dataset`` is not ``expected_dataset`` (when both are given).
    """
    images = _image_list(_read_document(path), path, expected_dataset)
    return [_image_record(im, i, path) for i, im in enumerate(images)]
