"""``make demo``: every training stage on the embedded shapes data, then the Table 4 ablation.

Stages, each (but stage 0) a detectron2 training run of :class:`vrd_d2.engine.Trainer` in this
process:
  0. dense class pretraining of the from-scratch backbone, in place of the paper's ImageNet
     weights (configs/Shapes/stage0_backbone.yaml, :mod:`vrd_d2_studies.shapes_demo.backbone_pretrain`);
  1. the detector from the stage-0 backbone (configs/Shapes/stage1_detector.yaml);
  2. the CP triplet net on gold boxes, rank 5 and rank 1, both from the same stage-1 weights
     (configs/Shapes/stage2_triplet.yaml); rank 5 trained ``--restarts`` times with other seeds
     and the one whose psi_c alone ranks shapes_val best kept (:func:`train_triplet`), rank 1
     (one component: nothing to choose among) once;
  3. the selection head of each (configs/Shapes/stage3_selection.yaml).
Then every variant of :data:`VARIANTS` is scored on shapes_test (and the full model on
shapes_val, where its settings would be tuned) with VRDEvaluator: phrase classification (gold
boxes, labels predicted) and predicate classification, against the annotated and the complete
ground truth, plus relationship detection (sgdet) for the full model. Seeds are fixed
(``cfg.SEED`` before every stage), so a run repeats.

``options`` below is any object with the attributes of ``tools/shapes_demo.py``'s arguments:
``output, reuse, quick, prefix, opts`` (and ``readme, update_readme, min_detector_accuracy,
restarts, relation_images`` for :func:`run`; absent ones take their defaults).

The relation stages (2, 3) train on the first ``relation_images`` training images only (default
:data:`RELATION_IMAGES` = 150; 0: all 1200; :func:`relation_train_split`; their prior counts those
images), the backbone and the detector on all: relations as scarce per triplet as in the paper's
data, where the prior helps the CP net.

After stage 1 the detector's gold-box classification accuracy on ``<prefix>_val`` is printed;
the run stops (:class:`~vrd_d2_studies.shapes_demo.detector_check.DetectorAccuracyError`) when it is below
``min_detector_accuracy`` percent (default :data:`MIN_DETECTOR_ACCURACY`; 0 with --quick).
"""

import json
import logging
import os
import re
import time
from collections import OrderedDict
from typing import Dict

import torch
from detectron2.data import DatasetCatalog

from vrd_d2.engine.rank_usage import cp_rank_usage, format_rank_usage

from .. import ablation
from ..ablation import CONFIG_ROOT, Variant
from ..results_doc import invocation, provenance_line, replace_readme_section
from .backbone_pretrain import pretrain_backbone
from .config import get_shapes_cfg
from .detector_check import check_accuracy, format_accuracy, gold_box_accuracy
from .oracle import format_oracle_line, oracle_of_dataset
from .restarts import STAGE2_RESTARTS, heldout_recall, num_restarts, restart_line, restart_suffix
from .splits import RELATION_IMAGES, num_relation_images, register_quick_subsets, relation_train_split

__all__ = [
    "VARIANTS",
    "FULL",
    "COLUMNS",
    "RANKS",
    "register_quick_subsets",
    "build_cfg",
    "train_stage",
    "train_triplet",
    "heldout_recall",
    "num_restarts",
    "restarts_per_rank",
    "run",
    "format_table",
    "relation_train_split",
    "num_relation_images",
    "readme_marker",
]

logger = logging.getLogger(__name__)

CONFIGS = {
    "backbone": str(CONFIG_ROOT / "Shapes" / "stage0_backbone.yaml"),
    "detector": str(CONFIG_ROOT / "Shapes" / "stage1_detector.yaml"),
    "triplet": str(CONFIG_ROOT / "Shapes" / "stage2_triplet.yaml"),
    "selection": str(CONFIG_ROOT / "Shapes" / "stage3_selection.yaml"),
}
RANKS = (5, 1)
FULL = "rank 5 + X_sel + prior (full)"
VARIANTS = OrderedDict(
    [  # the paper's Table 4 ablation
        ("prior alone", Variant(rank=5, use_cp=False, use_selection=False, use_prior=True)),
        ("rank 1", Variant(rank=1)),
        ("rank 1 + X_sel", Variant(rank=1, use_selection=True)),  # so that the prior's gain at rank 1 shows
        ("rank 1 + X_sel + prior", Variant(rank=1, use_selection=True, use_prior=True)),
        ("rank 5", Variant(rank=5)),
        ("rank 5 + X_sel", Variant(rank=5, use_selection=True)),
        (FULL, Variant(rank=5, use_selection=True, use_prior=True)),
    ]
)
# (column header, task, metric); a task of VRDEvaluator's results dict
COLUMNS = [
    ("phrase_cls R@50 k=1", "phrase_cls", "R@50_k1"),
    ("phrase_cls R@100 k=1", "phrase_cls", "R@100_k1"),
    ("phrase_cls R@50 free k", "phrase_cls", "R@50_kfree"),
    ("phrase_cls R@100 free k", "phrase_cls", "R@100_kfree"),
    ("predcls R@50 free k", "predcls", "R@50_kfree"),
    ("complete-GT phrase_cls R@50 free k", "phrase_cls_complete", "R@50_kfree"),
    ("complete-GT predcls R@50 free k", "predcls_complete", "R@50_kfree"),
]
MIN_DETECTOR_ACCURACY = 95.0  # percent of the visible gold boxes of shapes_val
# {relation images: docs/RESULTS.md section}: the default demo's, and the one with all 1200 images
README_MARKERS = {RELATION_IMAGES: "shapes-demo", 0: "shapes-demo-all-relations"}


def readme_marker(options) -> str:
    """The docs/RESULTS.md section a run's table goes to: ``--results-section`` when given, else
    ``shapes-demo`` for the default demo (also with --quick), ``shapes-demo-all-relations`` with
    --relation-images 0. A ValueError for other --relation-images (the page has no section for
    them) and for a section name of other than letters, digits, - and _."""
    if getattr(options, "readme_section", None) is not None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", options.readme_section):  # it also names a file under configs/Shapes
            raise ValueError(
                f"shapes_demo: --results-section {options.readme_section!r}: letters, digits, - and _ only "
                "(it names the docs/RESULTS.md markers and the band file configs/Shapes/NAME.json)"
            )
        return options.readme_section
    n = getattr(options, "relation_images", None)
    if n is None:
        return README_MARKERS[RELATION_IMAGES]
    if n not in README_MARKERS:
        raise ValueError(
            f"shapes_demo: --update-results writes the docs/RESULTS.md tables of --relation-images {RELATION_IMAGES} "
            f"(the default) and 0 (all training images), not of --relation-images {n}"
        )
    return README_MARKERS[n]


def _stage_dir(stage: str, rank: int, relation_images=None) -> str:
    if stage == "backbone":
        return "stage0_backbone"
    if stage == "detector":
        return "stage1_detector"
    # other relation data, other folders: --reuse never takes a head trained on other images
    suffix = f"_rel{relation_images}" if relation_images else ""
    return f"rank{rank}_{'stage2_triplet' if stage == 'triplet' else 'stage3_selection'}{suffix}"


def build_cfg(options, stage: str, rank: int, weights: str = ""):
    """The config of ``stage`` ("backbone", "detector", "triplet", "selection") at CP rank ``rank``."""
    cfg = get_shapes_cfg()
    cfg.merge_from_file(CONFIGS[stage])
    relation_stage = stage in ("triplet", "selection")
    cfg.DATASETS.TRAIN = (relation_train_split(options) if relation_stage else f"{options.prefix}_train",)
    cfg.DATASETS.TEST = ()  # evaluated variant by variant
    cfg.MODEL.VRD.RANK = rank
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = os.path.join(options.output, _stage_dir(stage, rank, num_relation_images(options)))
    if options.quick:
        cfg.SOLVER.MAX_ITER = 2
        cfg.SOLVER.IMS_PER_BATCH = 2
        cfg.SOLVER.WARMUP_ITERS = 1
        cfg.SOLVER.STEPS = ()
    cfg.merge_from_list(list(options.opts))
    return cfg


def train_stage(cfg, reuse: bool):
    """One seeded stage (:func:`ablation.train_stage`). Returns (weights path, seconds)."""
    return ablation.train_stage(cfg, reuse=reuse, seed=True)


def check_detector(options, det: str):
    """Gold-box accuracy of the stage-1 weights ``det`` on ``<prefix>_val``, printed; raises
    DetectorAccuracyError below the minimum. Returns the accuracy dict (gold_box_accuracy)."""
    dataset = f"{options.prefix}_val"
    acc = gold_box_accuracy(build_cfg(options, "detector", RANKS[0]), det, dataset)
    print(format_accuracy(acc, dataset), flush=True)
    minimum = getattr(options, "min_detector_accuracy", None)
    if minimum is None:
        minimum = 0.0 if options.quick else MIN_DETECTOR_ACCURACY
    check_accuracy(acc, dataset, minimum)
    return acc


def train_triplet(options, rank: int, det: str):
    """Stage 2 at ``rank`` from the detector ``det``, restarted :func:`num_restarts` times (restart
    k: cfg.SEED + 1000 k, folder ``rank<R>_stage2_triplet[_restart<k>]``); of several restarts the
    one whose psi_c alone ranks ``<prefix>_val`` best is kept (:func:`heldout_recall`: phrase
    classification R@50, free k), ties to the lower cross-entropy of its annotated triplets. Why:
    how the CP components split varies from run to run (docs/DESIGN.md, "CP components"), and a
    run whose components stayed together scores several points lower; held-out data tell which
    one it is. Returns (weights, seconds of all restarts, cp_rank_usage of the kept one plus
    ``restart`` (its k), ``restart_nll`` (every restart's cross-entropy) and, with several
    restarts, ``restart_val_R50`` (every restart's held-out recall))."""
    val = f"{options.prefix}_val"
    n = num_restarts(options, rank)
    best, seconds, nlls, recalls = None, 0.0, [], []
    for k in range(n):
        cfg = build_cfg(options, "triplet", rank, det)
        cfg.OUTPUT_DIR += restart_suffix(k)
        if k and cfg.SEED >= 0:
            cfg.SEED += 1000 * k
        weights, sec = train_stage(cfg, options.reuse)
        seconds += sec
        usage = cp_rank_usage(cfg, weights, val)
        nlls.append(usage["nll"])
        line = f"restart {k} (SEED {cfg.SEED}): " + format_rank_usage(usage, val)
        if n > 1:  # one restart: nothing to choose, no evaluation
            recalls.append(heldout_recall(options, cfg, weights, rank))
            line += f" Phrase classification R@50 (free k) of psi_c alone: {recalls[-1]:.2f}."
        print(line, flush=True)
        key = (recalls[-1] if recalls else 0.0, -usage["nll"])
        if best is None or key > best[2]:
            best = (weights, dict(usage, restart=k), key)
    weights, usage, _ = best
    usage["restart_nll"] = nlls
    if recalls:
        usage["restart_val_R50"] = recalls
        print(
            f"Stage 2, rank {rank}: kept restart {usage['restart']} (psi_c's phrase classification R@50 on {val})",
            flush=True,
        )
    return weights, seconds, usage


def restarts_per_rank(options) -> Dict[str, int]:
    """{rank (str): stage-2 runs at that rank} (:func:`num_restarts`; results.json keeps it)."""
    return {str(r): num_restarts(options, r) for r in RANKS}


def train_all(options):
    """Stages 0-3 for every rank of :data:`RANKS`, the detector checked after stage 1, stage 2
    kept from the best of its restarts (:func:`train_triplet`). Returns ({rank: final weights},
    detector accuracy, timings, {rank: cp_rank_usage of the kept triplet net})."""
    timings, usage = OrderedDict(), OrderedDict()
    det_cfg = build_cfg(options, "detector", RANKS[0])
    if options.reuse and os.path.isfile(os.path.join(det_cfg.OUTPUT_DIR, "model_final.pth")):
        timings["stage 0 backbone"] = 0.0  # the detector is reused: nothing to start it from
    else:
        det_cfg.MODEL.WEIGHTS, timings["stage 0 backbone"], pre = pretrain_backbone(
            build_cfg(options, "backbone", RANKS[0]), f"{options.prefix}_train", f"{options.prefix}_val", options.reuse
        )
        if pre["val_cell_accuracy"] is not None:
            print(
                f"Stage-0 backbone: {pre['val_cell_accuracy']:.1f}% of the object cells of {options.prefix}_val classified right",
                flush=True,
            )
    det, timings["stage 1 detector"] = train_stage(det_cfg, options.reuse)
    accuracy = check_detector(options, det)
    weights = {}
    for rank in RANKS:
        trip, timings[f"stage 2 triplet rank {rank}"], usage[rank] = train_triplet(options, rank, det)
        cfg = build_cfg(options, "selection", rank, trip)
        cfg.OUTPUT_DIR += restart_suffix(usage[rank]["restart"])  # --reuse must not take another restart's head
        sel, timings[f"stage 3 selection rank {rank}"] = train_stage(cfg, options.reuse)
        weights[rank] = sel  # holds the detector, the triplet net and the selection head
    return weights, accuracy, timings, usage


def evaluate_all(options, weights, splits, timings):
    """{split: {variant: VRDEvaluator results}}: every variant on "test", the full model alone on
    the other splits (where its test-time settings would be tuned); eval timings into ``timings``."""
    results = OrderedDict((split, OrderedDict()) for split in splits)
    for name, variant in VARIANTS.items():
        start = time.perf_counter()
        cfg = build_cfg(options, "selection", variant.rank, weights[variant.rank])
        for split in results:
            if split != "test" and name != FULL:
                continue
            res = OrderedDict()
            modes = ["phrase_cls", "predcls"] + (["sgdet"] if name == FULL and split == "test" else [])
            for mode in modes:
                res.update(
                    ablation.evaluate_variant(
                        cfg,
                        weights[variant.rank],
                        f"{options.prefix}_{split}",
                        mode,
                        os.path.join(options.output, "eval", split, variant.tag(name), mode),
                        variant=variant,
                        seed=True,
                        train_split=relation_train_split(options),  # zero-shot: unseen by the relation stages
                    )
                )
            results[split][name] = res
        timings[f"eval {name}"] = time.perf_counter() - start
    return results


def run(options):
    """Train, evaluate, print and save the table (results.md, results.json; the docs/RESULTS.md section
    with ``options.update_readme``). Returns (results, timings)."""
    wall = time.perf_counter()
    if options.quick:
        options.prefix = register_quick_subsets()
    weights, accuracy, timings, usage = train_all(options)
    # val: where settings are compared; skipped by --quick (its numbers mean nothing anyway)
    splits = ("test",) if options.quick else ("test", "val")
    results = evaluate_all(options, weights, splits, timings)
    timings["total"] = time.perf_counter() - wall
    n_test = len(DatasetCatalog.get(f"{options.prefix}_test"))
    oracle = oracle_of_dataset(f"{options.prefix}_test", train=relation_train_split(options))
    relations = num_relation_images(options)
    table = format_table(
        results["test"],
        timings,
        n_test,
        quick=options.quick,
        detector=format_accuracy(accuracy, f"{options.prefix}_val"),
        ceilings=format_oracle_line(oracle, "this test split"),
        usage=[restart_line(u, f"{options.prefix}_val") for u in usage.values()],
        relations=(
            f"Relation stages (2, 3) trained on the first {relations} training images "
            f"({relation_train_split(options)}); the prior ψ_u counts their relations."
            if relations
            else ""
        ),
    )
    print(table)
    with open(os.path.join(options.output, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(options.output, "results.json"), "w") as f:
        json.dump(
            {
                "test": results["test"],
                "val": results.get("val", {}),
                "seconds": timings,
                "variants": {k: v.as_dict() for k, v in VARIANTS.items()},
                "columns": [{"header": h, "task": t, "metric": m} for h, t, m in COLUMNS],
                "detector_accuracy": {
                    k: accuracy[k] for k in ("visible_accuracy", "per_class", "shadowed_accuracy", "accuracy")
                },
                "oracle": oracle,
                "cp_usage": {str(r): u for r, u in usage.items()},
                "quick": bool(options.quick),
                "relation_images": relations,
                "restarts": num_restarts(options, max(RANKS)),
                "restarts_per_rank": restarts_per_rank(options),
                "seed": int(build_cfg(options, "detector", RANKS[0]).SEED),
                "threads": torch.get_num_threads(),
            },
            f,
            indent=1,
        )
    if options.update_readme:
        replace_readme_section(options.readme, readme_marker(options), table, provenance_line(invocation()))
        logger.info("updated %s", options.readme)
    return results, timings


def format_table(
    results, timings, n_test, quick=False, detector: str = "", ceilings: str = "", usage=(), relations: str = ""
) -> str:
    """The markdown table: one row per variant (test split), then sgdet, the relation stages'
    training images when not all (``relations``), the oracle's ceilings (``ceilings``:
    format_oracle_line), the detector's accuracy (``detector``: format_accuracy), each triplet
    net's use of its rank (``usage``: format_rank_usage lines) and the timings."""
    cell = ablation.cell
    lines = ablation.markdown_rows(
        ["variant"] + [h for h, _, _ in COLUMNS],
        ([variant] + [cell(res, t, m) for _, t, m in COLUMNS] for variant, res in results.items()),
    )
    full = results.get(FULL, {})
    lines += [
        "",
        f"Full model on detected boxes (sgdet), free k: relationship detection R@50 "
        f"{cell(full, 'relationship', 'R@50_kfree')}, R@100 {cell(full, 'relationship', 'R@100_kfree')}; "
        f"phrase detection R@50 {cell(full, 'phrase', 'R@50_kfree')}, "
        f"R@100 {cell(full, 'phrase', 'R@100_kfree')}.",
    ]
    lines += [line for line in (relations, ceilings, detector, *usage) if line]
    stages = ", ".join(
        f"{k} " + (f"{v:.0f} s" if v > 0 else "reused") for k, v in timings.items() if k.startswith("stage")
    )
    evals = sum(v for k, v in timings.items() if k.startswith("eval"))
    lines.append(
        f"Wall time: {timings['total'] / 60:.1f} min in total ({stages}; evaluation {evals:.0f} s); "
        f"test split, {n_test} images" + (" (--quick: meaningless numbers)" if quick else "") + "."
    )
    return "\n".join(lines)
