"""The geometry-only relation head on the real VRD annotations (Lu et al. 2016): the ablation.

Trains on annotations_train.json (no images needed) and scores every variant of :data:`VARIANTS`
on the test set: predicate classification (gold boxes and labels), and relationship / phrase
detection on Lu et al.'s R-CNN detections (score = conf_s * conf_o * P(predicate | s, o, boxes) *
P(X_sel)), against Lu et al.'s gt.mat with Lu's matching (docs/EVALUATION.md).

``options`` below is any object with the attributes of ``tools/vrd_real.py``'s arguments:
``vrd_root, output, config_file, variants, iters, prefix, update_readme, opts`` and optionally
``seed`` (cfg.SEED, default 0; every stage is trained seeded: a repeatable run), ``seeds`` (one
run per seed into ``<output>/seed<S>`` and a band table, :func:`run_seeds`) and
``save_predictions`` (``relations_results.json`` beside each evaluation, for
``tools/eval_results.py``).
"""

import copy
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from vrd_d2.config import add_vrd_config
from vrd_d2.data import register_all_vrd
from vrd_d2.data.datasets.lu_detections import register_lu_detections

from .. import ablation
from ..ablation import CONFIG_ROOT, Variant
from ..results_doc import invocation, provenance_line, replace_readme_section
from ..shapes_demo.bands import band

__all__ = [
    "VARIANTS",
    "REQUIRED",
    "PAPER",
    "default_vrd_root",
    "check_vrd_root",
    "build_cfg",
    "run",
    "run_seeds",
    "flatten",
    "format_table",
    "format_band_table",
]

logger = logging.getLogger(__name__)

REPO = str(CONFIG_ROOT.parent)
CONFIG = str(CONFIG_ROOT / "VRD" / "geometry_only.yaml")
README_MARKER = "vrd-real"
RESULTS_FILE = os.path.join(REPO, "docs", "RESULTS.md")  # where --update-results writes the table
REQUIRED = (
    "annotations_train.json",
    "annotations_test.json",
    "objects.json",
    "predicates.json",
    "lu2016/evaluation/gt.mat",
    "lu2016/evaluation/zeroShot.mat",
    "lu2016/data/imagePath.mat",
    "lu2016/data/objectDetRCNN.mat",
)
VARIANTS = OrderedDict(
    [  # the paper's Table 4 ablation on real data
        ("prior alone", Variant(rank=1, use_cp=False, use_prior=True)),
        ("rank 1", Variant(rank=1, use_prior=True)),
        ("rank 1 + X_sel", Variant(rank=1, use_selection=True, use_prior=True)),
        ("rank 5", Variant(rank=5, use_prior=True)),
        ("rank 5 + X_sel", Variant(rank=5, use_selection=True, use_prior=True)),
        ("rank 5 + X_sel, no prior", Variant(rank=5, use_selection=True, use_prior=False)),
        # CRF_NORMALIZE acts at test time only: this row reuses the rank-5 chain's weights
        ("rank 5 + X_sel, eq. 7 product", Variant(rank=5, use_selection=True, use_prior=True, crf_normalize=False)),
    ]
)
PAPER = {  # Dupty et al. 2020, Table 1, full model with images, proposals of Lu et al.
    "relationship": {"R@50_k1": 17.67, "R@100_k1": 18.64, "R@50_kfree": 24.08, "R@100_kfree": 28.29},
}


def default_vrd_root() -> str:
    """``$DETECTRON2_DATASETS/vrd`` (default ``datasets/vrd``), as for every builtin dataset; a
    copy elsewhere is named by ``--vrd-root`` or ``$VRD_D2_SHARED_DATA``."""
    return os.getenv("VRD_D2_SHARED_DATA") or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "vrd")


def check_vrd_root(root: str) -> None:
    """SystemExit with a message naming every missing file."""
    missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise SystemExit(
            f"vrd_real: the VRD folder {os.path.abspath(root)} lacks: {', '.join(missing)}.\n"
            "Lay it out as in docs/DATASETS.md 'VRD' (Lu et al.'s json release plus lu2016/ from "
            "their MATLAB release) and pass it with --vrd-root."
        )


def build_cfg(options, name: str, stage: str, weights: str = ""):
    """The config of variant ``name`` at training stage ``stage`` ("triplet" or "selection")."""
    variant = VARIANTS[name]
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(options.config_file)
    cfg.DATASETS.TRAIN = (f"{options.prefix}_train",)
    cfg.DATASETS.TEST = ()  # evaluated against gt.mat, not at the end of training
    variant.apply(cfg)
    cfg.MODEL.VRD.TRAIN_STAGE = stage
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.SEED = getattr(options, "seed", 0)
    cfg.OUTPUT_DIR = os.path.join(options.output, f"rank{variant.rank}", stage)
    if stage == "selection":
        cfg.SOLVER.MAX_ITER = cfg.SOLVER.MAX_ITER // 2
    if options.iters:
        cfg.SOLVER.MAX_ITER = options.iters
    cfg.merge_from_list(list(options.opts))
    return cfg


def _evaluate(options, cfg, weights, name):
    """predcls on gold boxes, then relationship/phrase detection on Lu et al.'s detections."""
    cfg = cfg.clone()
    cfg.MODEL.VRD.USE_BOX_SCORE = True  # 1 for gold boxes; the detector's confidences otherwise
    root, tag = options.vrd_root, VARIANTS[name].tag(name)
    mats = {
        "gt_mat": os.path.join(root, "lu2016", "evaluation", "gt.mat"),
        "image_path_mat": os.path.join(root, "lu2016", "data", "imagePath.mat"),
    }
    mats["save_predictions"] = bool(getattr(options, "save_predictions", False))
    res = OrderedDict()
    res.update(
        ablation.evaluate_variant(
            cfg,
            weights,
            f"{options.prefix}_test",
            "predcls",
            os.path.join(options.output, "eval", tag, "predcls"),
            **mats,
        )
    )
    res.update(
        ablation.evaluate_variant(
            cfg,
            weights,
            f"{options.prefix}_test_lu_det",
            "predcls",
            os.path.join(options.output, "eval", tag, "lu_det"),
            eval_mode="sgdet",
            **mats,
        )
    )
    return res


def _register(options) -> None:
    """Register the VRD splits and Lu et al.'s detections under ``options.prefix`` (once)."""
    check_vrd_root(options.vrd_root)
    if f"{options.prefix}_test_lu_det" in DatasetCatalog.list():
        return
    register_all_vrd(options.vrd_root, prefix=options.prefix)
    register_lu_detections(
        f"{options.prefix}_test_lu_det",
        f"{options.prefix}_test",
        os.path.join(options.vrd_root, "lu2016", "data", "objectDetRCNN.mat"),
        os.path.join(options.vrd_root, "lu2016", "data", "imagePath.mat"),
    )


def run(options):
    """Train (reusing finished stages) and score every variant; print and save the tables."""
    _register(options)
    results, timings, normalised = OrderedDict(), OrderedDict(), OrderedDict()
    for name in options.variants or list(VARIANTS):
        variant = VARIANTS[name]
        start = time.perf_counter()
        weights = ""  # the prior alone needs no training: psi_c is uniform
        # seeded (cfg.SEED): a repeatable run; finished stages are reused (same config only: ablation.stage_output)
        if variant.use_cp:
            weights, _ = ablation.train_stage(build_cfg(options, name, "triplet"), seed=True)
            if variant.use_selection:
                weights, _ = ablation.train_stage(build_cfg(options, name, "selection", weights), seed=True)
        cfg = build_cfg(options, name, "selection" if variant.use_selection else "triplet", weights)
        normalised[name] = bool(cfg.MODEL.VRD.CRF_NORMALIZE)
        results[name] = _evaluate(options, cfg, weights, name)
        timings[name] = time.perf_counter() - start
        logger.info("%s: done in %.0f s", name, timings[name])
    table = format_table(results, normalised)
    print(table)
    os.makedirs(options.output, exist_ok=True)
    with open(os.path.join(options.output, "results.json"), "w") as f:
        json.dump(
            {
                "results": results,
                "crf_normalize": normalised,
                "seed": getattr(options, "seed", 0),
                "seconds": timings,
                "paper": PAPER,
            },
            f,
            indent=1,
        )
    with open(os.path.join(options.output, "results.md"), "w") as f:
        f.write(table + "\n")
    if options.update_readme:
        replace_readme_section(RESULTS_FILE, README_MARKER, table, provenance_line(invocation()))
    return results


def flatten(results) -> "OrderedDict[str, float]":
    """{"variant | task | metric": value} of the numeric entries of ``results``
    ({variant: {task: {metric: value}}})."""
    return OrderedDict(
        (f"{v} | {t} | {m}", float(x))
        for v, res in results.items()
        for t, ms in res.items()
        if isinstance(ms, dict)
        for m, x in ms.items()
        if isinstance(x, (int, float)) and not isinstance(x, bool)
    )


def run_seeds(options, seeds: Sequence[int]):
    """One :func:`run` per seed into ``<output>/seed<S>`` (cfg.SEED = S), then the band table
    (each figure's mean (min–max) over the seeds) to ``<output>/bands.md`` / ``bands.json`` and,
    with ``update_readme``, to the docs/RESULTS.md section. Returns (band, per-seed records)."""
    records = []
    for seed in seeds:
        opts = copy.copy(options)
        opts.seed, opts.output, opts.update_readme = seed, os.path.join(options.output, f"seed{seed}"), False
        start = time.perf_counter()
        results = run(opts)
        with open(os.path.join(opts.output, "results.json")) as f:
            normalised = json.load(f)["crf_normalize"]
        records.append(
            {"seed": seed, "results": results, "crf_normalize": normalised, "seconds": time.perf_counter() - start}
        )
    bands = band([flatten(r["results"]) for r in records])
    table = format_band_table(records, bands)
    print(table)
    with open(os.path.join(options.output, "bands.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(options.output, "bands.json"), "w") as f:
        json.dump(
            {
                "seeds": list(seeds),
                "band": bands,
                "crf_normalize": records[0]["crf_normalize"],
                "seconds": {r["seed"]: r["seconds"] for r in records},
                "paper": PAPER,
            },
            f,
            indent=1,
        )
    if options.update_readme:
        replace_readme_section(RESULTS_FILE, README_MARKER, table, provenance_line(invocation()))
    return bands, records


def format_band_table(records, bands) -> str:
    """:func:`format_table` with each cell mean (min–max) over the seeds of ``records``."""

    def band_cell(res, task, metric):
        b = res.get(task, {}).get(metric)
        return "–" if b is None else f"{b['mean']:.2f} ({b['min']:.2f}–{b['max']:.2f})"

    nested = OrderedDict()
    for key, b in bands.items():
        v, t, m = key.split(" | ")
        nested.setdefault(v, OrderedDict()).setdefault(t, OrderedDict())[m] = b
    seeds = ", ".join(f"{r['seed']} ({r['seconds'] / 60:.1f} min)" for r in records)
    return f"Mean (min–max) over {len(records)} seeds (seed, wall time: {seeds}).\n\n" + format_table(
        nested, records[0]["crf_normalize"], cell=band_cell
    )


def format_table(results, normalised: Optional[Dict[str, bool]] = None, cell=ablation.cell) -> str:
    """Markdown tables: predicate classification, and detection on Lu et al.'s detections.

    normalised: {variant: MODEL.VRD.CRF_NORMALIZE} for the "scoring" column (per-pair normalised,
    or the paper's eq. 7 product psi_c * psi_u); cell(res, task, metric) -> str formats a cell.
    """
    normalised = normalised or {}
    ks = (("k1", "k=1"), ("k10", "k=10"), ("kfree", "free k"))

    def name(variant):
        if variant not in normalised:
            return f"| {variant} | – | "
        return f"| {variant} | {'normalised' if normalised[variant] else 'eq. 7 product'} | "

    head = "| variant | scoring | " + " | ".join(f"{n} R@50 | {n} R@100" for _, n in ks) + " |"
    sep = "|---" * (2 + 2 * len(ks)) + "|"
    lines = [
        "**Predicate classification** (gold boxes and labels; gt.mat, 7638 relations). Scoring: "
        '"normalised" = psi_c·psi_u normalised over each pair\'s triplets (MODEL.VRD.CRF_NORMALIZE); '
        '"eq. 7 product" = the paper\'s eq. 7, psi_c·psi_u without the per-pair normaliser',
        "",
        head,
        sep,
    ]
    for variant, res in results.items():
        lines.append(
            name(variant)
            + " | ".join(f"{cell(res, 'predcls', f'R@50_{k}')} | {cell(res, 'predcls', f'R@100_{k}')}" for k, _ in ks)
            + " |"
        )
    for task, title in (("relationship", "Relationship detection"), ("phrase", "Phrase detection")):
        lines += [
            "",
            f"**{title}** on Lu et al.'s R-CNN detections (score = conf_s·conf_o·"
            "P(p | s, o, boxes)·P(X_sel); gt.mat)",
            "",
            head + " zero-shot R@50 (free k) |",
            sep + "---|",
        ]
        for variant, res in results.items():
            lines.append(
                name(variant)
                + " | ".join(f"{cell(res, task, f'R@50_{k}')} | {cell(res, task, f'R@100_{k}')}" for k, _ in ks)
                + f" | {cell(res, task, 'zsR@50_kfree')} |"
            )
        if task in PAPER:
            p = PAPER[task]
            lines.append(
                f"| paper, full model with images | eq. 7 | {p['R@50_k1']} | {p['R@100_k1']} | – | – | "
                f"{p['R@50_kfree']} | {p['R@100_kfree']} | – |"
            )
    return "\n".join(lines)
