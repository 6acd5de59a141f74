"""The paper's tables as markdown and json, from the evaluations' results (Lu's protocol, SGB's,
or both side by side), with the CP nets' component usage after each triplet-net stage
(:mod:`vrd_d2.engine.cp_health`) below them."""

import json
import math
import os
from typing import Dict, Optional, Sequence, Tuple

from .cp_health import format_usage_table

__all__ = ["SGB_COLUMNS", "table_rows", "format_table", "write_tables"]

_MODE_NAMES = {"sgdet": "detected boxes", "phrase_cls": "phrase classification", "predcls": "predicate classification"}
_SGB_MODE_NAMES = {"sgdet": "SGDet", "phrase_cls": "SGCls", "predcls": "PredCls"}
#: the SGB columns of the tables: graph constraint (k = 1) R@K, no graph constraint ngR@K, mR@K
SGB_COLUMNS = tuple(f"{m}@{k}" for m in ("R", "ngR", "mR") for k in (20, 50, 100))
_SGB_NOTE = (
    "Lu: Lu et al.'s protocol (hits over all ground truth of the split, k triplets per pair); "
    "SGB: the Scene-Graph-Benchmark's (per-image mean; R@K with graph constraint = k 1, ngR@K "
    "without = free k; mR@K over all predicates); see docs/EVALUATION.md."
)


def _lu_and_sgb(res: dict) -> Tuple[dict, dict]:
    """(Lu's, SGB's) task -> metric dicts of one evaluation's results: each under its name
    under protocol "both"; a single protocol's results stand for both (Lu's metric names end in a
    k suffix, SGB's never do, so a lookup finds only its own protocol's figures)."""
    if res and all(k in ("lu", "sgb") for k in res):
        return res.get("lu", {}), res.get("sgb", {})
    return res, res


def table_rows(
    results: Dict[str, dict],
    metrics: Sequence[str] = ("R@50", "R@100"),
    ks: Sequence[Tuple[str, str]] = (("k1", "k=1"), ("kfree", "free k")),
):
    """(header, rows) of a table: one row per (evaluation, task), Lu's ``metric`` at each k, then,
    when some result has SGB's figures, the :data:`SGB_COLUMNS` (evaluations named also by SGB's
    PredCls / SGCls / SGDet). Cells are floats, None where a figure is absent (or NaN)."""
    split = {label: _lu_and_sgb(res) for label, res in results.items()}
    with_sgb = any(vals.get(m) is not None for _, sgb in split.values() for vals in sgb.values() for m in SGB_COLUMNS)
    header = ["evaluation", "task"] + [f"Lu {m} {kl}" for _, kl in ks for m in metrics]
    header += [f"SGB {m}" for m in SGB_COLUMNS] if with_sgb else []
    rows = []
    for label, (lu, sgb) in split.items():
        name = _MODE_NAMES.get(label, label)
        if with_sgb and label in _SGB_MODE_NAMES:
            name += f" ({_SGB_MODE_NAMES[label]})"
        for task in dict.fromkeys(list(lu) + list(sgb)):
            cells = [lu.get(task, {}).get(f"{m}_{k}") for k, _ in ks for m in metrics]
            cells += [sgb.get(task, {}).get(m) for m in SGB_COLUMNS] if with_sgb else []
            rows.append([name, task] + [None if v is None or math.isnan(v) else float(v) for v in cells])
    return header, rows


def format_table(
    title: str,
    results: Dict[str, dict],
    metrics: Sequence[str] = ("R@50", "R@100"),
    ks: Sequence[Tuple[str, str]] = (("k1", "k=1"), ("kfree", "free k")),
) -> str:
    """A markdown table of :func:`table_rows`."""
    header, rows = table_rows(results, metrics, ks)
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(row[:2] + ["–" if v is None else f"{v:.2f}" for v in row[2:]]) + " |")
    if any(h.startswith("SGB ") for h in header):
        lines += ["", _SGB_NOTE]
    return "\n".join(lines) + "\n"


def write_tables(
    path_stem: str, title: str, results: Dict[str, dict], cp_usage: Optional[Dict[str, dict]] = None
) -> Tuple[str, str]:
    """Write ``<stem>.md`` and ``<stem>.json`` (title, the table's columns and rows, the
    evaluations' results dicts, and with ``cp_usage`` ({step name: usage of
    :func:`vrd_d2.engine.cp_health.stage_cp_usage`}) the CP component usage and any collapse
    warning); returns both paths."""
    os.makedirs(os.path.dirname(path_stem) or ".", exist_ok=True)
    md, js = path_stem + ".md", path_stem + ".json"
    with open(md, "w") as f:
        f.write(format_table(title, results))
        if cp_usage:
            f.write("\n" + format_usage_table(cp_usage))
    header, rows = table_rows(results)
    data = {"title": title, "columns": header, "rows": rows, "results": results}
    if cp_usage:
        data["cp_usage"] = cp_usage
    with open(js, "w") as f:
        json.dump(data, f, indent=2)
    return md, js
