"""Readers for Lu et al.'s (ECCV 2016) MATLAB release: ground truth and R-CNN detections.

All files are MATLAB 5.0 ``.mat`` and hold 1x1000 cell arrays whose i-th cell belongs to the i-th
image of ``data/imagePath.mat``.

Box convention (established on the real files, tests/test_datasets.py): gt.mat's
``gt_sub_bboxes`` / ``gt_obj_bboxes`` are ``[x1 y1 x2 y2]`` holding exactly the numbers of
annotations_test.json's ``[ymin, ymax, xmin, xmax]`` reordered (no +1 / -1 shift), i.e. the same
XYXY_ABS boxes as our records. Lu's evaluation computes IoU with the inclusive-pixel ``+1``
convention; that is the evaluator's business, not the loader's.
"""

import os
from typing import Dict, List, Optional

import numpy as np

from .common import as_int_array

__all__ = [
    "load_image_paths",
    "load_lu_gt_mat",
    "load_lu_detections",
    "read_lu_gt_cells",
    "loadmat_checked",
    "mat_cells",
    "mat_rows",
]


def loadmat_checked(path: str, keys):
    """``scipy.io.loadmat(path)``, with a clear error when the file or one of ``keys`` is missing."""
    import scipy.io

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Lu et al. mat file not found: {path}")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise ValueError(f"cannot read {path} as a MATLAB file: {e}") from None
    for k in keys:
        if k not in mat:
            raise ValueError(
                f"{path}: variable {k!r} missing (found " f"{sorted(x for x in mat if not x.startswith('__'))})"
            )
    return mat


def mat_cells(mat, key: str, path: str, n: Optional[int]):
    """The 1xN cell array ``mat[key]`` flattened; an error unless it has ``n`` cells (if given)."""
    cells = mat[key].reshape(-1)
    if n is not None and len(cells) != n:
        raise ValueError(f"{path}: {key} has {len(cells)} cells, expected {n} (one per image " f"of imagePath.mat)")
    return cells


def mat_rows(cell, width: int, dtype, where: str = "a .mat cell") -> np.ndarray:
    """One cell's matrix as ``dtype`` rows of ``width`` ([0, width] for an empty cell).

    A ValueError naming ``where`` when the cell does not hold rows of ``width`` numbers (an
    ``[n, width]`` matrix; a 1 x n or n x 1 vector for width 1; a transposed ``[width, n]`` matrix is
    refused, not reshaped into scrambled rows), or when ``dtype`` is an integer type and a value
    is not integral (3.7 is not truncated to 3)."""
    arr = np.asarray(cell)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{where}: expected numbers, found dtype {arr.dtype} (shape {arr.shape})")
    if np.issubdtype(np.dtype(dtype), np.integer):
        arr = as_int_array(arr, "value", where)
    if arr.size == 0:
        return np.zeros((0, width), dtype)
    if width == 1:
        ok = arr.ndim <= 1 or (arr.ndim == 2 and 1 in arr.shape)
    else:
        ok = (arr.ndim == 1 and arr.size == width) or (arr.ndim == 2 and arr.shape[1] == width)
    if not ok:
        hint = " (transposed? each row is one relation)" if arr.ndim == 2 and arr.shape[0] == width else ""
        raise ValueError(f"{where}: shape {arr.shape} does not hold rows of {width} numbers{hint}")
    return arr.astype(dtype).reshape(-1, width)


def load_image_paths(image_path_mat: str) -> List[str]:
    """Image file names (e.g. ``3845770407_1a8cd41230_b.jpg``) in the order of every .mat file."""
    mat = loadmat_checked(image_path_mat, ["imagePath"])
    names = []
    for i, c in enumerate(mat["imagePath"].reshape(-1)):
        c = np.asarray(c).reshape(-1)
        if len(c) != 1 or not isinstance(c[0], str) or not c[0]:
            raise ValueError(f"{image_path_mat}: imagePath cell {i}: expected one file name, found {c.tolist()!r}")
        names.append(str(c[0]))
    return names


def read_lu_gt_cells(gt_mat: str, names: Optional[List[str]] = None) -> List[Dict[str, np.ndarray]]:
    """The cells of gt.mat in file order: per image ``labels`` int64 [n,3] 0-based (subject,
    predicate, object), ``sub_boxes`` / ``obj_boxes`` float64 [n,4] XYXY_ABS, duplicates kept.
    ``names`` (imagePath.mat order), when given, must have one entry per cell and name the
    images in errors."""
    mat = loadmat_checked(gt_mat, ["gt_tuple_label", "gt_sub_bboxes", "gt_obj_bboxes"])
    labels = mat_cells(mat, "gt_tuple_label", gt_mat, None if names is None else len(names))
    n = len(labels)
    subs = mat_cells(mat, "gt_sub_bboxes", gt_mat, n)
    objs = mat_cells(mat, "gt_obj_bboxes", gt_mat, n)
    out = []
    for i in range(n):
        where = f"{gt_mat}: image {i}" + (f" ({names[i]})" if names is not None else "")
        lab = mat_rows(labels[i], 3, np.int64, f"{where}: gt_tuple_label") - 1
        sb = mat_rows(subs[i], 4, np.float64, f"{where}: gt_sub_bboxes")
        ob = mat_rows(objs[i], 4, np.float64, f"{where}: gt_obj_bboxes")
        if not (len(lab) == len(sb) == len(ob)):
            raise ValueError(f"{where}: {len(lab)} labels but {len(sb)} subject and {len(ob)} object boxes")
        if len(lab) and lab.min() < 0:
            raise ValueError(f"{where}: label 0 found, labels are 1-based")
        out.append({"labels": lab, "sub_boxes": sb, "obj_boxes": ob})
    return out


def load_lu_gt_mat(gt_mat: str, image_path_mat: str) -> Dict[str, Dict[str, np.ndarray]]:
    """Read gt.mat: per image name, ``labels`` int64 [n,3] 0-based (subject, predicate, object),
    ``sub_boxes`` / ``obj_boxes`` float64 [n,4] XYXY_ABS. Duplicates are kept (gt.mat has 7638
    rows, 7478 distinct), because Lu's recall counts them."""
    names = load_image_paths(image_path_mat)
    return dict(zip(names, read_lu_gt_cells(gt_mat, names)))


def load_lu_detections(det_mat: str, image_path_mat: str) -> Dict[str, Dict[str, np.ndarray]]:
    """Read objectDetRCNN.mat: per image name, ``boxes`` float64 [n,4] XYXY_ABS (same convention
    as gt.mat), ``labels`` int64 [n] 0-based, ``scores`` float64 [n]."""
    names = load_image_paths(image_path_mat)
    mat = loadmat_checked(det_mat, ["detection_bboxes", "detection_labels", "detection_confs"])
    boxes = mat_cells(mat, "detection_bboxes", det_mat, len(names))
    labels = mat_cells(mat, "detection_labels", det_mat, len(names))
    confs = mat_cells(mat, "detection_confs", det_mat, len(names))
    out = {}
    for i, name in enumerate(names):
        where = f"{det_mat}: image {i} ({name})"
        b = mat_rows(boxes[i], 4, np.float64, f"{where}: detection_bboxes")
        lab = mat_rows(labels[i], 1, np.int64, f"{where}: detection_labels").reshape(-1) - 1
        sc = mat_rows(confs[i], 1, np.float64, f"{where}: detection_confs").reshape(-1)
        if not (len(b) == len(lab) == len(sc)):
            raise ValueError(f"{where}: {len(b)} boxes, {len(lab)} labels, {len(sc)} scores")
        if len(lab) and lab.min() < 0:
            raise ValueError(f"{where}: label 0 found, labels are 1-based")
        out[name] = {"boxes": b, "labels": lab, "scores": sc}
    return out
