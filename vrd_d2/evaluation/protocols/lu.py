"""Lu et al.'s protocol (Lu et al. 2016; "lu"): total hits over total ground truth, one-to-one
greedy matching, for every k triplets per pair (:mod:`..recall`; docs/EVALUATION.md).

* :class:`LuProtocol`: the registered protocol;
* :func:`evaluate_records` / :func:`format_results_table`: its results dict and table.
"""

from collections import OrderedDict
from typing import Dict, Optional, Sequence

from tabulate import tabulate

from ..recall import count_recall_hits, k_label, recall_metrics
from .registry import VRD_PROTOCOL_REGISTRY, ProtocolResult, RelationProtocol, tasks_for_mode

__all__ = ["LuProtocol", "LU_TOPK", "evaluate_records", "format_results_table"]

#: the K of Lu's R@K (predictions per image)
LU_TOPK = (50, 100)


@VRD_PROTOCOL_REGISTRY.register()
class LuProtocol(RelationProtocol):
    """Lu et al.'s recall: for each k of ``k_values`` the rows with ``pair_rank < k`` (all for
    k = 0, free k), top K by score; metric names ``R@K_<k>``, ``mR@K_<k>``, ``zsR@K_<k>``
    (:func:`evaluate_records`)."""

    name = "lu"
    title = "Lu et al."
    legend = "(k=0 is free k)"

    def __init__(
        self,
        *,
        mode: str = "sgdet",
        k_values: Sequence[int] = (1, 10, 0),
        topk_values: Optional[Sequence[int]] = None,
        best_k: Optional[int] = None,
        iou_threshold: float = 0.5,
        denominator: str = "rows",
        **unused,
    ):
        """
        Args:
            k_values: triplets per pair to evaluate; 0 = free k.
            topk_values: the K of R@K; None: :data:`LU_TOPK`.
            best_k: k chosen on a validation split, reported as ``*_kbest`` plus ``best_k``.
            denominator: "rows" or "matlab_length" (:data:`~..recall.DENOMINATORS`).
        """
        super().__init__(mode=mode, iou_threshold=iou_threshold)
        self.k_values = tuple(int(k) for k in k_values)
        self.topk_values = tuple(int(k) for k in topk_values) if topk_values else LU_TOPK
        self.best_k = best_k
        self.denominator = denominator

    def evaluate(self, predictions, ground_truths, complete_ground_truths=None, num_predicates=None):
        results = evaluate_records(
            predictions,
            ground_truths,
            mode=self.mode,
            k_values=self.k_values,
            topk_values=self.topk_values,
            num_predicates=num_predicates,
            complete_ground_truths=complete_ground_truths,
            best_k=self.best_k,
            iou_threshold=self.iou_threshold,
            denominator=self.denominator,
        )
        return ProtocolResult(results, notes=self.legend)

    def table(self, results):
        return format_results_table(results)

    def settings(self):
        return {
            "k_values": list(self.k_values),
            "topk_values": list(self.topk_values),
            "best_k": self.best_k,
            "denominator": self.denominator,
        }

    def flat_scores(self, results, k: int = 0):
        """``<task>_R@K`` and ``zeroshot_<task>_R@K`` at ``k`` per pair (``_complete`` tasks left out)."""
        suffix = k_label(k)
        out = {}
        for task, metrics in results.items():
            if task.endswith("_complete"):
                continue
            for topk in self.topk_values:
                out[f"{task}_R@{topk}"] = metrics[f"R@{topk}_{suffix}"]
            for topk in self.topk_values:
                if f"zsR@{topk}_{suffix}" in metrics:
                    out[f"zeroshot_{task}_R@{topk}"] = metrics[f"zsR@{topk}_{suffix}"]
        return out

    def flat_settings(self, k: int = 0):
        return {"k_per_pair": k, "denominator": self.denominator}


def evaluate_records(
    predictions: Sequence[Optional[dict]],
    ground_truths: Sequence[dict],
    mode: str = "sgdet",
    k_values: Sequence[int] = (1, 10, 0),
    topk_values: Sequence[int] = (50, 100),
    num_predicates: Optional[int] = None,
    complete_ground_truths: Optional[Sequence[dict]] = None,
    best_k: Optional[int] = None,
    iou_threshold: float = 0.5,
    denominator: str = "rows",
) -> "OrderedDict[str, Dict[str, float]]":
    """Results dict task -> metric -> percent from aligned per-image records (see recall.py).

    Metrics per task, for each k of ``k_values`` (suffix ``k1``, ``k10``, ``kfree``) and each K of
    ``topk_values``: ``R@K_<k>``, ``mR@K_<k>``, ``zsR@K_<k>`` (when the ground truth has zero-shot
    flags). With ``best_k`` (chosen on a validation split, :func:`~.recall.best_k_from_results`)
    the same metrics again with suffix ``kbest`` and ``best_k`` = that k (not a percentage).
    Tasks ``<task>_complete`` (when ``complete_ground_truths`` is given) use that ground truth.
    """
    ks = [int(k) for k in k_values]
    if best_k is not None and int(best_k) not in ks:
        ks.append(int(best_k))
    results = OrderedDict()
    sets = [("", ground_truths)]
    if complete_ground_truths is not None:
        sets.append(("_complete", complete_ground_truths))
    for suffix, gts in sets:
        for task, criterion in tasks_for_mode(mode):
            metrics = OrderedDict()
            for k in ks:
                counts = count_recall_hits(
                    predictions,
                    gts,
                    criterion,
                    k,
                    topk_values,
                    num_predicates,
                    iou_threshold,
                    denominator,
                )
                m = recall_metrics(counts, k_label(k))
                if k in k_values:
                    metrics.update(m)
                if best_k is not None and k == int(best_k):
                    metrics.update(recall_metrics(counts, "kbest"))
                    metrics["best_k"] = float(best_k)
            results[task + suffix] = metrics
    return results


def format_results_table(results: Dict[str, Dict[str, float]]) -> str:
    """One row per (task, k), columns R@K / mR@K / zsR@K."""
    rows, columns = [], []
    for task, metrics in results.items():
        by_k = OrderedDict()
        for name, value in metrics.items():
            if "_" not in name or name == "best_k":
                continue
            metric, suffix = name.rsplit("_", 1)
            by_k.setdefault(suffix, OrderedDict())[metric] = value
            if metric not in columns:
                columns.append(metric)
        for suffix, vals in by_k.items():
            label = suffix
            if suffix == "kbest" and "best_k" in metrics:
                label = f"kbest (k={int(metrics['best_k'])})"
            rows.append([task, label] + [vals.get(c, float("nan")) for c in columns])
    return tabulate(rows, headers=["task", "k/pair"] + columns, tablefmt="pipe", floatfmt=".2f", numalign="left")
