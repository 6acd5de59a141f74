"""Which protocol scores which dataset, and Lu et al.'s dataset-level results dict.

* :data:`PROTOCOLS` and :func:`resolve_protocol`: "lu" (Lu et al. 2016, total hits over total
  ground truth, one-to-one greedy matching; :mod:`.recall`) or "sgb" (Scene-Graph-Benchmark,
  per-image averages, many-to-one hits; :mod:`.sgb`); "auto" = Lu for VRD, SGB for VG150 / VG200;
  "both" = Lu's and SGB's results in one dict (:func:`merge_protocols`, :func:`split_protocols`);
* :func:`tasks_for_mode`: the tasks (and matching criteria) a model mode reports;
* :func:`evaluate_records` / :func:`format_results_table`: Lu's protocol for every k per pair.

Protocols and names: docs/EVALUATION.md.
"""

from collections import OrderedDict
from typing import Dict, Optional, Sequence

from tabulate import tabulate

from ..config import MODES, PROTOCOLS
from .recall import count_recall_hits, k_label, recall_metrics
from .sgb import format_sgb_table

__all__ = [
    "PROTOCOLS",
    "SGB_PREFIX",
    "resolve_protocol",
    "merge_protocols",
    "split_protocols",
    "format_protocol_table",
    "tasks_for_mode",
    "evaluate_records",
    "format_results_table",
]

#: dataset-name prefixes that "auto" scores with SGB's protocol (the VG community's)
SGB_DATASET_PREFIXES = ("vg150", "vg200")
#: under "both", SGB's metric names carry this prefix inside each task (``sgb/R@20``, ``sgb/ngR@50``)
SGB_PREFIX = "sgb/"


def resolve_protocol(protocol: str, dataset_name: str = "") -> str:
    """ "lu", "sgb" or "both": ``protocol`` itself, or for "auto" SGB on VG150 / VG200 and Lu
    elsewhere."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluation protocol must be one of {PROTOCOLS}, found {protocol!r}")
    if protocol != "auto":
        return protocol
    return "sgb" if str(dataset_name).startswith(SGB_DATASET_PREFIXES) else "lu"


def merge_protocols(lu: Dict[str, dict], sgb: Dict[str, dict]) -> "OrderedDict[str, dict]":
    """One results dict task -> metric: Lu's metrics under their names (``R@50_k1``, ...), then
    SGB's with :data:`SGB_PREFIX` (``sgb/R@20``, ...), so a task's row holds both protocols."""
    out = OrderedDict((task, OrderedDict(metrics)) for task, metrics in lu.items())
    for task, metrics in sgb.items():
        out.setdefault(task, OrderedDict()).update((SGB_PREFIX + m, v) for m, v in metrics.items())
    return out


def split_protocols(results: Dict[str, dict]):
    """Inverse of :func:`merge_protocols`: (Lu's results, SGB's results without the prefix);
    tasks with no metric of a protocol are left out of its dict."""
    lu, sgb = OrderedDict(), OrderedDict()
    for task, metrics in results.items():
        for m, v in metrics.items():
            if m.startswith(SGB_PREFIX):
                sgb.setdefault(task, OrderedDict())[m[len(SGB_PREFIX) :]] = v
            else:
                lu.setdefault(task, OrderedDict())[m] = v
    return lu, sgb


def format_protocol_table(results: Dict[str, dict], protocol: str) -> str:
    """The printable table of a results dict of the resolved ``protocol`` ("both": Lu's, then SGB's)."""
    if protocol == "sgb":
        return format_sgb_table(results)
    if protocol == "both":
        lu, sgb = split_protocols(results)
        return (
            f"Lu et al.:\n{format_results_table(lu)}\n(k=0 is free k)\n"
            f"Scene-Graph-Benchmark:\n{format_sgb_table(sgb)}"
        )
    return format_results_table(results)


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
