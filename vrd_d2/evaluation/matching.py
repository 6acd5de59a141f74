"""Lu et al.'s (ECCV 2016) relationship / phrase matching, vectorised with numpy.

This mirrors ``evaluation/top_recall_Relationship.m`` and ``top_recall_Phrase.m`` of
Prof-Lu-Cewu/Visual-Relationship-Detection (see docs/EVALUATION.md):

* per image the predictions are sorted by confidence, descending, with MATLAB's stable
  ``sort(..., 'descend')`` (ties keep their input order), and the first K are kept;
* walking them in that order, a prediction is a hit if, among the ground-truth relations that are
  not matched yet and have the identical (subject, predicate, object) labels, one has overlap
  ``>= 0.5``; it takes the one with the largest overlap (the first in ground-truth order among
  equal overlaps: MATLAB's ``ov > ovmax``);
* overlap = min(IoU subject, IoU object) for relationships, IoU of the union boxes for phrases,
  IoU with the inclusive-pixel ``+1`` convention (width = x2 - x1 + 1), 0 when boxes are disjoint.

All functions take boxes as float arrays ``[N, 4]`` XYXY_ABS and labels ``[N, 3]`` int (subject,
predicate, object), 0-based or 1-based alike (only equality is used). No detectron2 import.
"""

from typing import Optional

import numpy as np

__all__ = [
    "CRITERIA",
    "box_iou_inclusive",
    "union_boxes",
    "pair_overlaps",
    "greedy_match",
    "match_relations",
    "select_top_predictions",
    "compute_pair_rank",
]

#: matching criteria: "relationship" (both boxes) and "phrase" (union box)
CRITERIA = ("relationship", "phrase")


def box_iou_inclusive(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU matrix with Lu's inclusive-pixel convention.

    Args:
        boxes1: [N, 4], boxes2: [M, 4], XYXY_ABS; a box ``[x1, y1, x2, y2]`` covers the pixels
            x1..x2 and y1..y2 inclusive, so its width is ``x2 - x1 + 1``.
    Returns:
        float64 [N, M]; 0 where the (inclusive) intersection is empty.
    """
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    # MATLAB: "if iw > 0 & ih > 0" else no overlap at all
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(inter > 0, inter / union, 0.0)
    return iou


def union_boxes(sub_boxes: np.ndarray, obj_boxes: np.ndarray) -> np.ndarray:
    """Smallest box enclosing subject and object: [N, 4] from two [N, 4] arrays."""
    s = np.asarray(sub_boxes, dtype=np.float64).reshape(-1, 4)
    o = np.asarray(obj_boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([np.minimum(s[:, :2], o[:, :2]), np.maximum(s[:, 2:], o[:, 2:])], axis=1)


def pair_overlaps(
    pred_labels: np.ndarray,
    pred_sub: np.ndarray,
    pred_obj: np.ndarray,
    gt_labels: np.ndarray,
    gt_sub: np.ndarray,
    gt_obj: np.ndarray,
    criterion: str = "relationship",
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Candidate overlaps between predictions and ground truth.

    Args:
        pred_labels: [N, 3]; pred_sub, pred_obj: [N, 4]; gt_labels: [G, 3]; gt_sub, gt_obj: [G, 4].
        criterion: "relationship" (min of the subject and object IoUs) or "phrase" (IoU of the
            union boxes).
        iou_threshold: a candidate needs overlap ``>= iou_threshold`` (Lu: ``ov >= gt_thr``).
    Returns:
        float64 [N, G]: the overlap where the labels are identical and the overlap passes the
        threshold, ``-inf`` elsewhere.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    pl = np.asarray(pred_labels).reshape(-1, 3)
    gl = np.asarray(gt_labels).reshape(-1, 3)
    n, g = len(pl), len(gl)
    if n == 0 or g == 0:
        return np.full((n, g), -np.inf)
    same = (pl[:, None, :] == gl[None, :, :]).all(axis=2)
    if criterion == "relationship":
        ov = np.minimum(box_iou_inclusive(pred_sub, gt_sub), box_iou_inclusive(pred_obj, gt_obj))
    else:
        ov = box_iou_inclusive(union_boxes(pred_sub, pred_obj), union_boxes(gt_sub, gt_obj))
    return np.where(same & (ov >= iou_threshold), ov, -np.inf)


def greedy_match(overlaps: np.ndarray) -> np.ndarray:
    """Lu's greedy assignment, predictions taken in row order (already sorted by confidence).

    Args:
        overlaps: [N, G] from :func:`pair_overlaps` (``-inf`` = not a candidate), rows in walk order.
    Returns:
        int64 [N]: the ground-truth index each prediction matched, -1 for a false positive.
        Each ground-truth row is matched at most once; among equal overlaps the lowest index wins.
    """
    n, g = overlaps.shape
    matched = np.full(n, -1, dtype=np.int64)
    if n == 0 or g == 0:
        return matched
    # only rows with some candidate need the sequential walk; the others are false positives
    rows = np.flatnonzero(np.isfinite(overlaps).any(axis=1))
    taken = np.zeros(g, dtype=bool)
    for j in rows:
        ov = np.where(taken, -np.inf, overlaps[j])
        best = int(np.argmax(ov))  # first maximum, as MATLAB's strict "ov > ovmax"
        if np.isfinite(ov[best]):
            matched[j] = best
            taken[best] = True
    return matched


def match_relations(
    pred_labels: np.ndarray,
    pred_sub: np.ndarray,
    pred_obj: np.ndarray,
    gt_labels: np.ndarray,
    gt_sub: np.ndarray,
    gt_obj: np.ndarray,
    criterion: str = "relationship",
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Match predictions given in walk order (confidence descending) to ground truth.

    Shapes as in :func:`pair_overlaps`. Returns int64 [N], the matched ground-truth row or -1.
    """
    return greedy_match(
        pair_overlaps(pred_labels, pred_sub, pred_obj, gt_labels, gt_sub, gt_obj, criterion, iou_threshold)
    )


def select_top_predictions(scores: np.ndarray, pair_rank: Optional[np.ndarray], k: int, topk: int) -> np.ndarray:
    """Indices of "the top ``topk`` predictions with at most ``k`` per pair", in walk order.

    Args:
        scores: [T] confidences.
        pair_rank: [T] 0-based rank of each triplet within its own pair; may be None when
            ``k == 0``.
        k: triplets per pair; 0 = free k (no limit).
        topk: predictions kept per image (Lu's Nre).
    Returns:
        int64 [<= topk] indices into the inputs, sorted by score descending; ties keep input
        order (MATLAB's ``sort(..., 'descend')`` is stable).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    idx = np.arange(len(scores))
    if k > 0:
        if pair_rank is None:
            raise ValueError("k per pair > 0 needs pair_rank")
        idx = idx[np.asarray(pair_rank).reshape(-1) < k]
    order = idx[np.argsort(-scores[idx], kind="stable")]
    return order[:topk]


def compute_pair_rank(sub_boxes: np.ndarray, obj_boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Rank of each triplet among the triplets with the same (subject box, object box).

    For results that carry no ``pair_rank`` (e.g. Lu's .mat results): a pair is identified by its
    two boxes. Args: sub_boxes, obj_boxes [T, 4], scores [T]. Returns int64 [T], 0 = best of its
    pair (ties by input order).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = len(scores)
    rank = np.zeros(t, dtype=np.int64)
    if t == 0:
        return rank
    key = np.concatenate(
        [np.asarray(sub_boxes, np.float64).reshape(-1, 4), np.asarray(obj_boxes, np.float64).reshape(-1, 4)],
        axis=1,
    )
    _, group = np.unique(key, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(t), -scores, group))  # by group, then score desc, then index
    g_sorted = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g_sorted)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, t]))
    rank[order] = np.arange(t) - first
    return rank
