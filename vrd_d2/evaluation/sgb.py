"""The Scene-Graph-Benchmark (SGB) recall protocol, from our per-image records.

This mirrors ``maskrcnn_benchmark/data/datasets/evaluation/vg/sgg_eval.py`` and ``vg_eval.py`` of
KaihuaTang/Scene-Graph-Benchmark.pytorch (commit 0482daef; the protocol of Xu et al. 2017 and
neural-motifs), see docs/EVALUATION.md:

* **graph constraint** (R@K, mR@K, zR@K): one predicate per subject-object pair, the pairs ranked
  by their best triplet score: our rows with ``pair_rank == 0`` (k = 1 per pair);
* **no graph constraint** (ngR@K, ng-mR@K, ng-zR@K): every (pair, predicate) ranked by score,
  top 100: our rows for free k (k = 0);
* **hit rule** (``_compute_pred_matches``): a ground-truth row is hit when *any* of the top-K
  predictions has the same (subject, predicate, object) labels and IoU >= 0.5 for both boxes
  (relationship; SGB's sgdet) or for the union boxes (phrase; SGB's phrdet). No one-to-one
  assignment: one prediction may hit several ground-truth rows (duplicates, for instance);
* IoU of maskrcnn_benchmark's ``boxlist_iou`` (``TO_REMOVE = 1``: width = x2 - x1 + 1), which is
  the inclusive-pixel IoU of :func:`~.matching.box_iou_inclusive`;
* **per-image averaging**: R@K = mean over images of (hit rows / ground-truth rows of the image).
  Images without ground-truth relations, and images without any predicted pair, are left out of
  the mean (``evaluate_relation_of_one_image`` returns before recording them);
* mR@K: per predicate, the mean over the images containing that predicate of its per-image
  recall; then the mean over **all** P predicates, a predicate absent from the ground truth
  counting 0 (``SGMeanRecall.calculate_mean_recall``);
* zR@K: per-image recall over the zero-shot rows only (images with at least one), averaged over
  those images; the hits come from the same matching as R@K (seen rows also take predictions).

Record layout as in :mod:`vrd_d2.evaluation.recall`. Labels are 0-based here; SGB's files are
1-based with 0 = background (:func:`load_sgb_zeroshot_triplets` converts). No detectron2 import.
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .matching import box_iou_inclusive, union_boxes

__all__ = [
    "SGB_TOPK",
    "sgb_prediction_order",
    "sgb_hit_matrix",
    "sgb_image_hits",
    "zeroshot_rows",
    "load_sgb_zeroshot_triplets",
    "SGBRecall",
    "sgb_recall",
    "evaluate_records_sgb",
    "format_sgb_table",
]

#: the K of SGB's R@K (``register_container``: {20, 50, 100})
SGB_TOPK = (20, 50, 100)
#: SGB keeps only the top 100 (pair, predicate) scores without graph constraint
SGB_NOGC_MAX = 100


def sgb_prediction_order(pred: dict, graph_constraint: bool, max_k: int) -> np.ndarray:
    """Indices of the predictions SGB ranks, best first.

    Args:
        pred: prediction record; needs ``pair_rank`` for the graph constraint.
        graph_constraint: True: rows with ``pair_rank == 0`` (SGB's top-1 predicate per pair);
            False: all rows (SGB's all pair x predicate scores, top ``SGB_NOGC_MAX``).
        max_k: the largest K that will be read.
    Returns:
        int64 [<= max_k]; score descending, ties in input order (SGB sorts with an unstable
        sort, so its tie order is unspecified).
    """
    scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
    idx = np.arange(len(scores))
    if graph_constraint:
        if pred.get("pair_rank") is None:
            raise ValueError("the graph-constrained (SGB) recall needs pair_rank")
        idx = idx[np.asarray(pred["pair_rank"]).reshape(-1) == 0]
    else:
        max_k = min(max_k, SGB_NOGC_MAX)
    return idx[np.argsort(-scores[idx], kind="stable")][:max_k]


def sgb_hit_matrix(pred: dict, gt: dict, order: np.ndarray, criterion: str, iou_threshold: float = 0.5):
    """Which ranked prediction hits which ground-truth row (SGB's ``pred_to_gt`` as a matrix).

    Args:
        pred, gt: records; order: [N] indices from :func:`sgb_prediction_order`.
        criterion: "relationship" (subject IoU and object IoU both >= threshold) or "phrase"
            (IoU of the union boxes >= threshold).
    Returns:
        bool [N, G]: same three labels and the overlap rule holds.
    """
    pl = np.asarray(pred["labels"]).reshape(-1, 3)[order]
    ps = np.asarray(pred["sub_boxes"], np.float64).reshape(-1, 4)[order]
    po = np.asarray(pred["obj_boxes"], np.float64).reshape(-1, 4)[order]
    gl = np.asarray(gt["labels"]).reshape(-1, 3)
    gs = np.asarray(gt["sub_boxes"], np.float64).reshape(-1, 4)
    go = np.asarray(gt["obj_boxes"], np.float64).reshape(-1, 4)
    if len(pl) == 0 or len(gl) == 0:
        return np.zeros((len(pl), len(gl)), dtype=bool)
    same = (pl[:, None, :] == gl[None, :, :]).all(axis=2)
    if criterion == "relationship":
        box_ok = (box_iou_inclusive(ps, gs) >= iou_threshold) & (box_iou_inclusive(po, go) >= iou_threshold)
    elif criterion == "phrase":
        box_ok = box_iou_inclusive(union_boxes(ps, po), union_boxes(gs, go)) >= iou_threshold
    else:
        raise ValueError(f"criterion must be 'relationship' or 'phrase', got {criterion!r}")
    return same & box_ok


def sgb_image_hits(hits: np.ndarray, topk_values: Sequence[int]) -> np.ndarray:
    """bool [len(topk_values), G]: row g is hit by one of the first K predictions
    (SGB's ``reduce(np.union1d, pred_to_gt[:K])``)."""
    g = hits.shape[1]
    out = np.zeros((len(topk_values), g), dtype=bool)
    for i, k in enumerate(topk_values):
        out[i] = hits[:k].any(axis=0) if len(hits) else np.zeros(g, dtype=bool)
    return out


def zeroshot_rows(gt_labels: np.ndarray, zeroshot_triplets: np.ndarray) -> np.ndarray:
    """bool [G]: ground-truth rows whose (subject, predicate, object) is in ``zeroshot_triplets``
    ([Z, 3], 0-based, our column order)."""
    gl = np.asarray(gt_labels, np.int64).reshape(-1, 3)
    zs = np.asarray(zeroshot_triplets, np.int64).reshape(-1, 3)
    if len(gl) == 0 or len(zs) == 0:
        return np.zeros(len(gl), dtype=bool)
    return (gl[:, None, :] == zs[None, :, :]).all(axis=2).any(axis=1)


def load_sgb_zeroshot_triplets(path: str) -> np.ndarray:
    """SGB's ``zeroshot_triplet.pytorch`` -> int64 [Z, 3] (subject, predicate, object), 0-based.

    The file is a torch-saved int64 tensor [Z, 3] with columns (subject, object, predicate),
    1-based (0 = background). Read with ``weights_only=True``: tensors only, no code runs.
    """
    import torch

    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling refused, truncated file, ...
        raise ValueError(f"{path}: not a torch-saved tensor of zero-shot triplets ({e})") from None
    a = t.numpy() if isinstance(t, torch.Tensor) else None
    if a is None or a.ndim != 2 or a.shape[1] != 3:
        found = tuple(a.shape) if a is not None else type(t).__name__
        raise ValueError(f"{path}: expected a [Z, 3] tensor (subject, object, predicate), found {found}")
    a = a.astype(np.int64)
    if len(a) and a.min() < 1:
        row = int(np.flatnonzero((a < 1).any(axis=1))[0])
        raise ValueError(f"{path}: row {row} {a[row].tolist()} has an id < 1 (SGB's ids are 1-based)")
    return a[:, [0, 2, 1]] - 1


@dataclass
class SGBRecall:
    """Per-image recalls of one (criterion, constraint): lists to be averaged over images.

    ``recall[i]`` / ``zs_recall[i]`` hold one value per evaluated image (per image with zero-shot
    rows) for ``topk_values[i]``; ``per_predicate[i][p]`` one value per image containing p.
    """

    topk_values: tuple
    num_predicates: int
    recall: List[list] = None
    zs_recall: List[list] = None
    per_predicate: List[List[list]] = None
    num_images: int = 0
    skipped_no_gt: int = 0
    skipped_no_pred: int = 0
    has_zeroshot: bool = False

    def __post_init__(self):
        n = len(self.topk_values)
        self.recall = [[] for _ in range(n)]
        self.zs_recall = [[] for _ in range(n)]
        self.per_predicate = [[[] for _ in range(self.num_predicates)] for _ in range(n)]

    def add_image(self, hit: np.ndarray, gt_predicates: np.ndarray, zs: Optional[np.ndarray]):
        """Record one image: ``hit`` bool [len(topk), G], predicates [G], zero-shot flags [G]."""
        self.num_images += 1
        present = np.unique(gt_predicates)
        for i in range(len(self.topk_values)):
            self.recall[i].append(hit[i].mean())
            for p in present:
                rows = gt_predicates == p
                self.per_predicate[i][int(p)].append(hit[i][rows].mean())
            if zs is not None and zs.any():
                self.zs_recall[i].append(hit[i][zs].mean())

    def metrics(self, prefix: str = "") -> Dict[str, float]:
        """``{prefix}R@K``, ``{prefix}mR@K`` and (with zero-shot flags) ``{prefix}zR@K``, percent.

        ``prefix`` is "" (graph constraint) or "ng" (SGB's ngR@K, ng-mR@K, ng-zR@K)."""
        dash = "-" if prefix else ""
        res = OrderedDict()
        nan = float("nan")
        for i, k in enumerate(self.topk_values):
            res[f"{prefix}R@{k}"] = 100.0 * float(np.mean(self.recall[i])) if self.recall[i] else nan
        for i, k in enumerate(self.topk_values):
            per = [float(np.mean(v)) if v else 0.0 for v in self.per_predicate[i]]
            res[f"{prefix}{dash}mR@{k}"] = 100.0 * float(np.mean(per)) if self.num_images else nan
        if self.has_zeroshot:
            for i, k in enumerate(self.topk_values):
                v = self.zs_recall[i]
                res[f"{prefix}{dash}zR@{k}"] = 100.0 * float(np.mean(v)) if v else nan
        return res


def sgb_recall(
    predictions: Sequence[Optional[dict]],
    ground_truths: Sequence[dict],
    criterion: str,
    graph_constraint: bool,
    topk_values: Sequence[int] = SGB_TOPK,
    num_predicates: Optional[int] = None,
    iou_threshold: float = 0.5,
) -> SGBRecall:
    """SGB's per-image recall over aligned per-image records.

    Args:
        predictions: per image, a prediction record or None; ground_truths: per image, a record
            (``zeroshot`` bool [G] flags, when present, give zR@K).
        criterion: "relationship" or "phrase"; graph_constraint: see :func:`sgb_prediction_order`.
        num_predicates: P, the divisor of mR@K (default: 1 + the largest predicate id seen).
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} prediction records for {len(ground_truths)} images")
    topk_values = tuple(int(k) for k in topk_values)
    if num_predicates is None:
        ids = [np.asarray(r["labels"]).reshape(-1, 3)[:, 1] for r in ground_truths]
        ids += [np.asarray(r["labels"]).reshape(-1, 3)[:, 1] for r in predictions if r is not None]
        num_predicates = 1 + max([int(x.max()) for x in ids if len(x)] or [0])
    out = SGBRecall(topk_values, num_predicates)
    out.has_zeroshot = any(g.get("zeroshot") is not None for g in ground_truths)
    for pred, gt in zip(predictions, ground_truths):
        gt_labels = np.asarray(gt["labels"], np.int64).reshape(-1, 3)
        if len(gt_labels) == 0:
            out.skipped_no_gt += 1
            continue
        zs = gt.get("zeroshot")
        if pred is not None and pred.get("missing", False):  # absent image: a miss, not left out
            hit = np.zeros((len(topk_values), len(gt_labels)), bool)
            out.add_image(hit, gt_labels[:, 1], None if zs is None else np.asarray(zs, bool).reshape(-1))
            continue
        if pred is None or len(pred["scores"]) == 0:
            out.skipped_no_pred += 1
            continue
        order = sgb_prediction_order(pred, graph_constraint, max(topk_values))
        hit = sgb_image_hits(sgb_hit_matrix(pred, gt, order, criterion, iou_threshold), topk_values)
        out.add_image(hit, gt_labels[:, 1], None if zs is None else np.asarray(zs, bool).reshape(-1))
    return out


def evaluate_records_sgb(
    predictions: Sequence[Optional[dict]],
    ground_truths: Sequence[dict],
    tasks: Sequence[tuple],
    topk_values: Sequence[int] = SGB_TOPK,
    num_predicates: Optional[int] = None,
    iou_threshold: float = 0.5,
):
    """SGB's metrics for each (task, criterion) of ``tasks``.

    Returns:
        (results, counts): results = OrderedDict task -> {R@K, mR@K, zR@K, ngR@K, ng-mR@K,
        ng-zR@K} in percent; counts = task -> {"images", "skipped_no_gt", "skipped_no_pred"}.
    """
    results, counts = OrderedDict(), OrderedDict()
    for task, criterion in tasks:
        metrics = OrderedDict()
        for gc in (True, False):
            rec = sgb_recall(predictions, ground_truths, criterion, gc, topk_values, num_predicates, iou_threshold)
            metrics.update(rec.metrics("" if gc else "ng"))
        results[task] = metrics
        counts[task] = {
            "images": rec.num_images,
            "skipped_no_gt": rec.skipped_no_gt,
            "skipped_no_pred": rec.skipped_no_pred,
        }
    return results, counts


def format_sgb_table(results: Dict[str, Dict[str, float]]) -> str:
    """One row per (task, constraint), columns R@K / mR@K / zR@K."""
    from tabulate import tabulate

    rows, columns = [], []
    for task, metrics in results.items():
        by_c = OrderedDict()
        for name, value in metrics.items():
            ng = name.startswith("ng")
            metric = name[2:].lstrip("-") if ng else name
            by_c.setdefault("none (ng)" if ng else "graph", OrderedDict())[metric] = value
            if metric not in columns:
                columns.append(metric)
        for constraint, vals in by_c.items():
            rows.append([task, constraint] + [vals.get(c, float("nan")) for c in columns])
    return tabulate(rows, headers=["task", "constraint"] + columns, tablefmt="pipe", floatfmt=".2f", numalign="left")
