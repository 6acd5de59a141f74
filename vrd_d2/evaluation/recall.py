"""Dataset-level recall: R@K, mean recall over predicates and zero-shot recall (Lu et al.'s
protocol, see docs/EVALUATION.md), from per-image predictions and ground truth.

Per-image records are plain dicts of numpy arrays (picklable, so they travel through
``comm.gather``):

* prediction: ``labels`` int64 [T,3] (subject, predicate, object), ``sub_boxes`` / ``obj_boxes``
  float64 [T,4] XYXY_ABS, ``scores`` float64 [T], ``pair_rank`` int64 [T] (or None: then only
  free k can be evaluated);
* ground truth: ``labels`` [G,3], ``sub_boxes`` / ``obj_boxes`` [G,4], optional ``zeroshot`` bool
  [G]. Duplicated rows are kept and each counts in the denominator.

An image of the ground truth that has no predictions at all (absent from the model's outputs or
the results file) is :func:`missing_image_record`: no rows, so a miss of every relation under
Lu's protocol, and ``missing: True``, so SGB's protocol counts it as recall 0 instead of
leaving it out as it does an image whose prediction list is empty.
"""

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from .matching import greedy_match, pair_overlaps, select_top_predictions

__all__ = [
    "RecallCounts",
    "count_recall_hits",
    "recall_metrics",
    "k_label",
    "select_best_k",
    "best_k_from_results",
    "DENOMINATORS",
    "missing_image_record",
]

#: "rows": every ground-truth row counts once (the brief's and the python ports' reading of
#: Lu's protocol); "matlab_length": MATLAB's ``length(gt_tuple_label{i})``, which is
#: max(rows, 3) for a non-empty n x 3 matrix, i.e. what Lu's .m files literally compute.
DENOMINATORS = ("rows", "matlab_length")


def missing_image_record() -> dict:
    """The prediction record of an image without predictions (module docstring): 0 rows."""
    return {
        "labels": np.zeros((0, 3), np.int64),
        "sub_boxes": np.zeros((0, 4), np.float64),
        "obj_boxes": np.zeros((0, 4), np.float64),
        "scores": np.zeros(0, np.float64),
        "pair_rank": np.zeros(0, np.int64),
        "missing": True,
    }


@dataclass
class RecallCounts:
    """Hit and ground-truth counts of one (criterion, k per pair) over a set of images.

    ``hits[i]`` counts matched ground truth in the top ``topk_values[i]``; ``*_per_predicate``
    are [len(topk_values), P] and [P]; ``zs_*`` restrict to zero-shot ground truth.
    """

    topk_values: tuple
    num_predicates: int
    hits: np.ndarray = None
    num_gt: float = 0.0
    hits_per_predicate: np.ndarray = None
    gt_per_predicate: np.ndarray = None
    zs_hits: np.ndarray = None
    num_zs_gt: float = 0.0
    has_zeroshot: bool = False
    num_images: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.topk_values)
        self.hits = np.zeros(n, dtype=np.int64)
        self.hits_per_predicate = np.zeros((n, self.num_predicates), dtype=np.int64)
        self.gt_per_predicate = np.zeros(self.num_predicates, dtype=np.int64)
        self.zs_hits = np.zeros(n, dtype=np.int64)


def _num_gt(n: int, denominator: str) -> int:
    if denominator == "matlab_length":
        return max(n, 3) if n > 0 else 0
    return n


def count_recall_hits(
    predictions: Sequence[Optional[dict]],
    ground_truths: Sequence[dict],
    criterion: str,
    k: int,
    topk_values: Sequence[int] = (50, 100),
    num_predicates: Optional[int] = None,
    iou_threshold: float = 0.5,
    denominator: str = "rows",
) -> RecallCounts:
    """Match every image and count hits for each K in ``topk_values``.

    Args:
        predictions: per image, a prediction record (module docstring) or None (no predictions).
        ground_truths: per image (same order), a ground-truth record.
        criterion: "relationship" or "phrase" (:func:`~.matching.pair_overlaps`).
        k: triplets per pair (0 = free k).
        topk_values: the K of R@K. Greedy matching in confidence order makes the top-K matching
            a prefix of the top-K' one (K < K'), so one walk over max(K) serves all K.
        num_predicates: P for mean recall (default: 1 + the largest predicate id seen).
        denominator: one of :data:`DENOMINATORS` (only R@K and zero-shot R@K use it).
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction records for {len(ground_truths)} images")
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    topk_values = tuple(int(x) for x in topk_values)
    max_k = max(topk_values)
    if num_predicates is None:
        labels = [np.asarray(r["labels"]).reshape(-1, 3)[:, 1] for r in ground_truths]
        labels += [np.asarray(r["labels"]).reshape(-1, 3)[:, 1] for r in predictions if r is not None]
        num_predicates = 1 + max([int(x.max()) for x in labels if len(x)] or [0])
    out = RecallCounts(topk_values, num_predicates)
    out.num_images = len(ground_truths)
    for pred, gt in zip(predictions, ground_truths):
        gt_labels = np.asarray(gt["labels"], dtype=np.int64).reshape(-1, 3)
        n_gt = len(gt_labels)
        out.num_gt += _num_gt(n_gt, denominator)
        np.add.at(out.gt_per_predicate, gt_labels[:, 1], 1)
        zs = gt.get("zeroshot", None)
        if zs is not None:
            out.has_zeroshot = True
            zs_idx = np.flatnonzero(np.asarray(zs, dtype=bool).reshape(-1))
            out.num_zs_gt += _num_gt(len(zs_idx), denominator)
        if pred is None or n_gt == 0 or len(pred["scores"]) == 0:
            continue
        order = select_top_predictions(pred["scores"], pred.get("pair_rank"), k, max_k)
        ov = pair_overlaps(
            np.asarray(pred["labels"]).reshape(-1, 3)[order],
            np.asarray(pred["sub_boxes"]).reshape(-1, 4)[order],
            np.asarray(pred["obj_boxes"]).reshape(-1, 4)[order],
            gt_labels,
            gt["sub_boxes"],
            gt["obj_boxes"],
            criterion,
            iou_threshold,
        )
        matched = greedy_match(ov)
        for i, topk in enumerate(topk_values):
            g = matched[:topk]
            g = g[g >= 0]
            out.hits[i] += len(g)
            np.add.at(out.hits_per_predicate[i], gt_labels[g, 1], 1)
        if zs is not None and len(zs_idx):
            # Lu's zeroShot_top_recall_*.m delete the seen-triplet rows before matching, so a
            # prediction can only be taken by zero-shot ground truth: keep only those columns.
            zs_matched = greedy_match(ov[:, zs_idx])
            for i, topk in enumerate(topk_values):
                out.zs_hits[i] += int((zs_matched[:topk] >= 0).sum())
    return out


def k_label(k: int) -> str:
    """Metric suffix of a k per pair: ``k1``, ``k10``, ``kfree`` (k = 0)."""
    return "kfree" if int(k) == 0 else f"k{int(k)}"


def recall_metrics(counts: RecallCounts, suffix: str, zeroshot: bool = True) -> Dict[str, float]:
    """Percentages ``R@K_<suffix>``, ``mR@K_<suffix>`` and (if available) ``zsR@K_<suffix>``.

    mR@K is the mean over predicates with ground truth of (hits of that predicate) / (its
    ground-truth rows), counted over the whole split like R@K.
    """
    res = {}
    present = counts.gt_per_predicate > 0
    for i, topk in enumerate(counts.topk_values):
        res[f"R@{topk}_{suffix}"] = 100.0 * counts.hits[i] / counts.num_gt if counts.num_gt else float("nan")
    for i, topk in enumerate(counts.topk_values):
        if present.any():
            per = counts.hits_per_predicate[i][present] / counts.gt_per_predicate[present]
            res[f"mR@{topk}_{suffix}"] = 100.0 * float(per.mean())
        else:
            res[f"mR@{topk}_{suffix}"] = float("nan")
    if zeroshot and counts.has_zeroshot:
        for i, topk in enumerate(counts.topk_values):
            res[f"zsR@{topk}_{suffix}"] = (
                100.0 * counts.zs_hits[i] / counts.num_zs_gt if counts.num_zs_gt else float("nan")
            )
    return res


def select_best_k(per_k: Mapping[int, float]) -> int:
    """The k per pair with the highest validation metric.

    Args:
        per_k: k -> metric value on a validation split (k = 0 is free k).
    Returns:
        the best k; ties go to the smaller k, free k (0) counting as the largest.
    """
    if not per_k:
        raise ValueError("select_best_k: no per-k results given")
    items = [(int(k), float(v)) for k, v in per_k.items()]
    if any(np.isnan(v) for _, v in items):
        raise ValueError(f"select_best_k: NaN among the validation results {dict(items)}")
    return min(items, key=lambda kv: (-kv[1], np.inf if kv[0] == 0 else kv[0]))[0]


def best_k_from_results(
    results: Mapping[str, Mapping[str, float]], task: str = "relationship", metric: str = "R@50"
) -> int:
    """Pick the best k from a VRDEvaluator result dict of a validation split.

    Reads ``results[task]["<metric>_k<k>"]`` (and ``_kfree``) and applies :func:`select_best_k`.
    """
    if task not in results:
        raise KeyError(f"best_k_from_results: task {task!r} not in results (has {sorted(results)})")
    per_k = {}
    prefix = f"{metric}_k"
    for key, value in results[task].items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest == "free":
            per_k[0] = value
        elif rest.isdigit():
            per_k[int(rest)] = value
    if not per_k:
        raise KeyError(f"best_k_from_results: no '{prefix}*' metric in results[{task!r}]")
    return select_best_k(per_k)
