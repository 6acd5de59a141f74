"""Which protocol scores which dataset, and Lu et al.'s dataset-level results dict.

* :data:`PROTOCOLS` and :func:`resolve_protocol`: "lu" (Lu et al. 2016, total hits over total
  ground truth, one-to-one greedy matching; :mod:`.recall`) or "sgb" (Scene-Graph-Benchmark,
  per-image averages, many-to-one hits; :mod:`.sgb`); "auto" = Lu for VRD, SGB for VG150 / VG200;
* :func:`tasks_for_mode`: the tasks (and matching criteria) a model mode reports;
* :func:`evaluate_records` / :func:`format_results_table`: Lu's protocol for every k per pair.

Protocols and names: docs/EVALUATION.md.
"""

from collections import OrderedDict
from typing import Dict, Optional, Sequence

from tabulate import tabulate

from ..config import MODES
from .recall import count_recall_hits, k_label, recall_metrics

__all__ = ["PROTOCOLS", "resolve_protocol", "tasks_for_mode", "evaluate_records", "format_results_table"]

#: values of MODEL.VRD.TEST.PROTOCOL / ``--protocol``
PROTOCOLS = ("lu", "sgb", "auto")
#: dataset-name prefixes that "auto" scores with SGB's protocol (the VG community's)
SGB_DATASET_PREFIXES = ("vg150", "vg200")


def resolve_protocol(protocol: str, dataset_name: str = "") -> str:
    """"lu" or "sgb": ``protocol`` itself, or for "auto" SGB on VG150 / VG200 and Lu elsewhere."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluation protocol must be one of {PROTOCOLS}, found {protocol!r}")
    if protocol != "auto":
        return protocol
    return "sgb" if str(dataset_name).startswith(SGB_DATASET_PREFIXES) else "lu"

def tasks_for_mode(mode: str):
    """[(task name, matching criterion)]: sgdet reports relationship and phrase detection; the
    gold-box modes report the relationship criterion under the mode's own name."""
    if mode == "sgdet":
        return [("relationship", "relationship"), ("phrase", "phrase")]
    if mode in ("phrase_cls", "predcls"):
        return [(mode, "relationship")]
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


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
                    predictions, gts, criterion, k, topk_values, num_predicates,
                    iou_threshold, denominator,
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
    return tabulate(rows, headers=["task", "k/pair"] + columns, tablefmt="pipe", floatfmt=".2f",
                    numalign="left")
