"""Run-to-run bands of the shapes demo: several seeds x thread counts, mean with min-max.

One demo run depends on its seed and on the float order of its thread count (another detector,
other numbers). :func:`run_matrix` runs the demo (:func:`vrd_d2_studies.shapes_demo.runner.run`) once per
(seed, threads), each into its own folder; :func:`headline` picks the figures docs/RESULTS.md quotes
and :func:`effects` the paper's effects in one run (a variant's gain over the variant without
that part); :func:`band` summarises them (mean, min, max over runs) and :func:`format_band_table`
prints both; :func:`format_beside_band` prints one run beside a stored band (``make demo``).
"""

import copy
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import ablation
from ..results_doc import provenance_line, replace_readme_section
from . import runner as shapes_demo

__all__ = [
    "BAND_FILE",
    "section_band_file",
    "run_cli",
    "run_matrix",
    "headline",
    "EFFECTS",
    "effects",
    "band",
    "format_band_table",
    "format_effects_table",
    "format_beside_band",
    "settings",
    "save_band",
    "load_band",
]

logger = logging.getLogger(__name__)

# the stored band that make demo prints its run beside (written by --seeds ... --update-results)
BAND_FILE = str(ablation.CONFIG_ROOT / "Shapes" / "demo_band.json")
TOLERANCE = 3.0  # points: a run's headline figure within +-3 of the band's mean counts as inside it


def headline(results: Dict[str, dict]) -> "OrderedDict[str, float]":
    """The headline figures of one run's test results ({variant: VRDEvaluator results}):
    phrase_cls free-k R@50 and R@100 and predcls free-k R@50 of each variant, and sgdet
    relationship detection free-k R@50 of the full model."""
    out = OrderedDict()
    for variant, res in results.items():
        for task, metric, label in (
            ("phrase_cls", "R@50_kfree", "phrase_cls R@50"),
            ("phrase_cls", "R@100_kfree", "phrase_cls R@100"),
            ("predcls", "R@50_kfree", "predcls R@50"),
        ):
            out[f"{variant} | {label}"] = float(res[task][metric])
    full = results[shapes_demo.FULL]
    out[f"{shapes_demo.FULL} | sgdet relationship R@50"] = float(full["relationship"]["R@50_kfree"])
    return out


# (effect, variant with the part, variant without it, task, metric): the paper's Table 4 claims
# as differences within one run, in points of phrase classification R@50 (free k unless named)
EFFECTS = (
    ("rank 5 over rank 1", "rank 5", "rank 1", "phrase_cls", "R@50_kfree"),
    ("X_sel over rank 5", "rank 5 + X_sel", "rank 5", "phrase_cls", "R@50_kfree"),
    ("prior over rank 5 + X_sel", shapes_demo.FULL, "rank 5 + X_sel", "phrase_cls", "R@50_kfree"),
    ("prior over rank 5 + X_sel, k = 1", shapes_demo.FULL, "rank 5 + X_sel", "phrase_cls", "R@50_k1"),
    ("prior over rank 5 + X_sel, R@100", shapes_demo.FULL, "rank 5 + X_sel", "phrase_cls", "R@100_kfree"),
    ("prior over rank 1 + X_sel", "rank 1 + X_sel + prior", "rank 1 + X_sel", "phrase_cls", "R@50_kfree"),
)


def effects(results: Dict[str, dict]) -> "OrderedDict[str, float]":
    """The :data:`EFFECTS` of one run's test results ({variant: VRDEvaluator results}): each
    the variant with the part minus the variant without it, in points."""
    out = OrderedDict()
    for name, with_part, without, task, metric in EFFECTS:
        out[name] = float(results[with_part][task][metric]) - float(results[without][task][metric])
    return out


def _mean_range(s: dict, signed: bool = False) -> str:
    """One :func:`band` entry as "mean (min–max)"; ``signed`` (effects): "+m (+a to +b)"."""
    if signed:
        return f"{s['mean']:+.2f} ({s['min']:+.2f} to {s['max']:+.2f})"
    return f"{s['mean']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def band(runs: Sequence[Dict[str, float]]) -> "OrderedDict[str, dict]":
    """{figure: {mean, min, max, max_dev, positive}} over runs (each a :func:`headline` or
    :func:`effects` dict, same keys); ``positive``: how many runs have the figure above 0."""
    if not runs:
        raise ValueError("shapes_bands: no runs to summarise")
    out = OrderedDict()
    for key in runs[0]:
        v = np.array([r[key] for r in runs], dtype=float)
        out[key] = {
            "mean": float(v.mean()),
            "min": float(v.min()),
            "max": float(v.max()),
            "max_dev": float(np.abs(v - v.mean()).max()),
            "positive": int((v > 0).sum()),
        }
    return out


def run_matrix(options, seeds: Sequence[int], threads: Sequence[int]) -> List[dict]:
    """One demo run per (seed, thread count), into ``<output>/seed<s>_threads<t>``; cfg.SEED is
    the seed (the dataset stays the same). Returns one record per run: seed, threads, headline
    figures, detector accuracy, seconds."""
    records = []
    before = torch.get_num_threads()
    try:
        for seed in seeds:
            for t in threads:
                opts = copy.copy(options)
                opts.output = os.path.join(options.output, f"seed{seed}_threads{t}")
                opts.opts = list(options.opts) + ["SEED", str(seed)]
                opts.update_readme = False
                done = _finished_run(opts.output, seed, t, opts) if options.reuse else None
                if done is None:
                    os.makedirs(opts.output, exist_ok=True)
                    torch.set_num_threads(t)
                    shapes_demo.run(opts)
                    with open(os.path.join(opts.output, "results.json")) as f:
                        done = json.load(f)
                else:
                    logger.info("--reuse: the finished run in %s (seed %d, %d threads)", opts.output, seed, t)
                records.append(
                    {
                        "seed": seed,
                        "threads": t,
                        "headline": headline(done["test"]),
                        "effects": effects(done["test"]),
                        "detector_visible_accuracy": done["detector_accuracy"]["visible_accuracy"],
                        "seconds": done["seconds"]["total"],
                    }
                )
    finally:
        torch.set_num_threads(before)
    return records


def _finished_run(folder: str, seed: int, threads: int, options):
    """The results.json of a finished run in ``folder`` made with this seed, thread count and
    :func:`settings` of ``options``, or None (no file, or another setting: that run is made again).
    A file without ``restarts_per_rank`` restarted every rank ``restarts`` times (one when that is
    absent too); one without ``relation_images`` (or None) trained on all the training images."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        done = json.load(f)
    made_settings = {
        "quick": bool(done.get("quick")),
        "relation_images": done.get("relation_images") or 0,
        "restarts_per_rank": done.get("restarts_per_rank")
        or {str(r): done.get("restarts", 1) for r in shapes_demo.RANKS},
    }
    made = (done.get("seed"), done.get("threads"), made_settings)
    wanted = (seed, threads, settings(options))
    if made != wanted:
        logger.info("%s: made with (seed, threads, settings) %s; running %s again", path, made, wanted)
        return None
    return done


def format_band_table(records: Sequence[dict], command: str, quick: bool = False) -> str:
    """The docs/RESULTS.md table: each headline figure's mean (min–max) over the runs, then one line per
    run (detector accuracy, wall time) and whether every figure is within +-TOLERANCE."""
    b = band([r["headline"] for r in records])
    variants = list(OrderedDict.fromkeys(k.split(" | ")[0] for k in b))
    labels = list(OrderedDict.fromkeys(k.split(" | ")[1] for k in b))
    rows = []
    for v in variants:
        cells = [_mean_range(b[k]) if k in b else "–" for k in (f"{v} | {lab}" for lab in labels)]
        rows.append([v] + cells)
    lines = [
        f"Mean (min–max) over {len(records)} runs of `{command}` on shapes_test, free k"
        + (" (--quick: meaningless numbers)" if quick else "")
        + ":",
        "",
    ]
    lines += ablation.markdown_rows(["variant"] + labels, rows)
    worst = max(b.items(), key=lambda kv: kv[1]["max_dev"])
    lines += [
        "",
        "Runs: "
        + "; ".join(
            f"seed {r['seed']}, {r['threads']} thread{'s' if r['threads'] > 1 else ''}: detector "
            f"{r['detector_visible_accuracy']:.1f}%, {r['seconds'] / 60:.1f} min"
            for r in records
        )
        + ".",
        f"Largest distance from the mean: {worst[1]['max_dev']:.2f} points ({worst[0]}); "
        + ("every figure within" if worst[1]["max_dev"] <= TOLERANCE else "NOT every figure within")
        + f" ±{TOLERANCE:g} points of its mean.",
    ]
    if all("effects" in r for r in records):
        lines += ["", *format_effects_table(records)]
    return "\n".join(lines)


def format_effects_table(records: Sequence[dict]) -> List[str]:
    """The :data:`EFFECTS` of each run (in the order of ``records``), their mean (min–max) and
    in how many runs each is above 0, as markdown lines."""
    b = band([r["effects"] for r in records])
    rows = [
        [
            name,
            " ".join(f"{r['effects'][name]:+.2f}" for r in records),
            _mean_range(s, signed=True),
            f"{s['positive']} of {len(records)}",
        ]
        for name, s in b.items()
    ]
    head = (
        "The paper's effects in each run (the variant with the part minus the one without, in points of "
        "phrase_cls R@50, free k unless named; runs in the order above):"
    )
    return [head, ""] + ablation.markdown_rows(["effect", "each run", "mean (min to max)", "runs above 0"], rows)


def settings(options) -> Dict[str, object]:
    """What must be equal for two runs' figures to belong to one band (besides seed and threads)."""
    return {
        "quick": bool(options.quick),
        "relation_images": shapes_demo.num_relation_images(options),
        "restarts_per_rank": shapes_demo.restarts_per_rank(options),
    }


def save_band(records: Sequence[dict], command: str, path: str = BAND_FILE, run_settings=None) -> None:
    """Write the band of ``records`` (made by ``command`` with ``run_settings``: :func:`settings`) to ``path``."""
    with open(path, "w") as f:
        json.dump(
            {
                "command": command,
                "settings": run_settings,
                "runs": list(records),
                "band": band([r["headline"] for r in records]),
                **({"effects": band([r["effects"] for r in records])} if all("effects" in r for r in records) else {}),
            },
            f,
            indent=1,
        )


def load_band(path: str = BAND_FILE):
    """The stored band ({command, settings, runs, band, effects}) or None when there is none."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def format_beside_band(figures: Dict[str, float], stored: dict, run_effects: Optional[Dict[str, float]] = None) -> str:
    """This run's headline figures beside the stored band: value, mean (min–max), and whether
    the value lies within ±TOLERANCE of the mean; then, given ``run_effects`` (:func:`effects`)
    and a band that stores its effects, each effect of this run beside the band's."""
    b = stored["band"]
    rows = []
    for key, value in figures.items():
        if key not in b:
            continue
        s = b[key]
        rows.append(
            [
                key.replace(" | ", ", "),
                f"{value:.2f}",
                _mean_range(s),
                "yes" if abs(value - s["mean"]) <= TOLERANCE else "NO",
            ]
        )
    lines = [f"This run beside the band of {len(stored['runs'])} runs (`{stored['command']}`):", ""]
    lines += ablation.markdown_rows(["figure", "this run", "band mean (min–max)", f"within ±{TOLERANCE:g}"], rows)
    if run_effects is not None and "effects" in stored:
        rows = []
        for name, value in run_effects.items():
            s = stored["effects"].get(name)
            if s is None:
                continue
            above = f"above 0 in {s['positive']} of {len(stored['runs'])}"
            rows.append(
                [name, f"{value:+.2f}", f"{_mean_range(s, signed=True)}, {above}", "yes" if value > 0 else "NO"]
            )
        lines += ["", "This run's effects beside the band's (points of phrase_cls R@50, free k unless named):", ""]
        lines += ablation.markdown_rows(["effect", "this run", "band mean (min to max)", "above 0"], rows)
    return "\n".join(lines)


def run_cli(options) -> None:
    """What ``tools/shapes_demo.py`` does with its parsed ``options``: one run (printed beside
    the stored band unless --quick), or with ``seeds``/``threads`` one run per pair and the band
    table (docs/RESULTS.md section and ``band_file`` with ``update_readme``)."""
    if not (options.seeds or options.threads):
        results, _ = shapes_demo.run(options)
        stored = None if options.quick else load_band(options.band_file)
        if stored and stored.get("settings") == settings(options):
            print(format_beside_band(headline(results["test"]), stored, effects(results["test"])))
        elif stored:
            print(
                f"(The band in {options.band_file} was made with other settings, {stored.get('settings')}: not compared.)"
            )
        return
    seeds = list(options.seeds or [0])
    threads = list(options.threads or [torch.get_num_threads()])
    command = (
        "tools/shapes_demo.py --seeds "
        + " ".join(map(str, seeds))
        + " --threads "
        + " ".join(map(str, threads))
        + (" --quick" if options.quick else "")
        + (
            f" --relation-images {options.relation_images}"
            if getattr(options, "relation_images", None) is not None
            else ""
        )
        + (f" --restarts {options.restarts}" if getattr(options, "restarts", None) is not None else "")
        + ("" if not options.opts else " " + " ".join(options.opts))
    )
    records = run_matrix(options, seeds, threads)
    table = format_band_table(records, command, quick=options.quick)
    print(table)
    with open(os.path.join(options.output, "bands.md"), "w") as f:
        f.write(table + "\n")
    save_band(records, command, os.path.join(options.output, "bands.json"), settings(options))
    if options.update_readme:
        marker = shapes_demo.readme_marker(options)
        replace_readme_section(options.readme, marker, table, provenance_line("python " + command, threads))
        if marker == shapes_demo.README_MARKERS[shapes_demo.RELATION_IMAGES]:  # the default demo's: make demo's band
            save_band(records, command, options.band_file, settings(options))
        elif getattr(options, "readme_section", None):  # another band beside it, kept with its results table
            save_band(records, command, section_band_file(options.band_file, marker), settings(options))


def section_band_file(band_file: str, section: str) -> str:
    """Where the band written to the docs/RESULTS.md section ``section`` (``--results-section``) is kept:
    beside ``band_file`` (make demo's band), as ``<section>.json``."""
    return os.path.join(os.path.dirname(os.path.abspath(band_file)), f"{section}.json")
