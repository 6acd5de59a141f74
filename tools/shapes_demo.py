#!/usr/bin/env python
"""
``make demo``: train every stage on the embedded shapes data and print the recall table.

    python tools/shapes_demo.py [--output output/shapes_demo] [--reuse] [--update-readme]

Stages, each a detectron2 training run of vrd_d2.engine.Trainer in this process:
  1. the detector (configs/Shapes/stage1_detector.yaml);
  2. the CP triplet net on gold boxes, rank 5 and rank 1 (the ablation), both from the same
     stage-1 weights (configs/Shapes/stage2_triplet.yaml);
  3. the selection head of each (configs/Shapes/stage3_selection.yaml).
Then every variant of the paper's Table 4 ablation is scored on shapes_test with VRDEvaluator:
phrase classification (MODEL.VRD.MODE phrase_cls: gold boxes, labels predicted) and predicate
classification (predcls), against the annotated ground truth and against the complete one
(``relations_complete``: every valid relation, ``<task>_complete``), plus relationship detection
(sgdet, detected boxes) for the full model. The same numbers on shapes_val are kept in
results.json (settings are chosen there, never on the test split).

Outputs under ``--output``: one folder per stage (``--reuse`` skips a stage whose model_final.pth
exists), results.md, results.json; ``--update-readme`` replaces the README section between
``<!-- shapes-demo:begin -->`` and ``<!-- shapes-demo:end -->``. ``--quick`` runs the pipeline
with a few iterations on a few images (for the test; its numbers mean nothing). Seeds are fixed
(cfg.SEED before every stage), so a run is repeatable. Exits non-zero on failure.
"""
import argparse
import json
import logging
import os
import sys
import time
from collections import OrderedDict

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401  (registers the shapes datasets, VGG16, the heads)
from vrd_d2 import add_vrd_config
from vrd_d2.engine import Trainer
from vrd_d2.evaluation import VRDEvaluator
from vrd_d2.utils.readme import replace_readme_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "detector": os.path.join(REPO, "configs", "Shapes", "stage1_detector.yaml"),
    "triplet": os.path.join(REPO, "configs", "Shapes", "stage2_triplet.yaml"),
    "selection": os.path.join(REPO, "configs", "Shapes", "stage3_selection.yaml"),
}
README_MARKER = "shapes-demo"
RANKS = (5, 1)
logger = logging.getLogger("vrd_d2.shapes_demo")

# name -> (rank, use_cp, use_selection, use_prior): the paper's Table 4 ablation
VARIANTS = OrderedDict([
    ("prior alone", (5, False, False, True)),
    ("rank 1", (1, True, False, False)),
    ("rank 1 + X_sel + prior", (1, True, True, True)),
    ("rank 5", (5, True, False, False)),
    ("rank 5 + X_sel", (5, True, True, False)),
    ("rank 5 + X_sel + prior (full)", (5, True, True, True)),
])
FULL = "rank 5 + X_sel + prior (full)"
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
QUICK_SIZES = {"train": 8, "val": 4, "test": 4}


def register_quick_subsets(prefix="shapes_quick"):
    """``<prefix>_{train,val,test}``: the first images of each shapes split (for --quick)."""
    for split, n in QUICK_SIZES.items():
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda split=split, n=n: DatasetCatalog.get(f"shapes_{split}")[:n])
        meta = MetadataCatalog.get(f"shapes_{split}").as_dict()
        for key in ("name", "triplet_counts"):
            meta.pop(key, None)
        meta["train_split"] = f"{prefix}_train"
        MetadataCatalog.get(name).set(**meta)
    return prefix


def build_cfg(args, stage, rank, weights=""):
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(CONFIGS[stage])
    cfg.DATASETS.TRAIN = (f"{args.prefix}_train",)
    cfg.DATASETS.TEST = ()  # evaluated below, variant by variant
    cfg.MODEL.VRD.RANK = rank
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = os.path.join(args.output, "stage1_detector" if stage == "detector"
                                  else f"rank{rank}_{'stage2_triplet' if stage == 'triplet' else 'stage3_selection'}")
    if args.quick:
        cfg.SOLVER.MAX_ITER = 2
        cfg.SOLVER.IMS_PER_BATCH = 2
        cfg.SOLVER.WARMUP_ITERS = 1
        cfg.SOLVER.STEPS = ()
    cfg.merge_from_list(args.opts)
    return cfg


def train_stage(cfg, reuse):
    """Train one stage unless --reuse finds its model_final.pth. Returns (weights path, seconds)."""
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if reuse and os.path.isfile(final):
        logger.info("reusing %s", final)
        return final, 0.0
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    start = time.perf_counter()
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    if not os.path.isfile(final):
        raise RuntimeError(f"shapes_demo: training {cfg.OUTPUT_DIR} wrote no model_final.pth")
    return final, time.perf_counter() - start


def evaluate(cfg, weights, dataset, mode, variant, out_dir):
    """VRDEvaluator results of one variant's model on ``dataset`` in ``mode``."""
    rank, use_cp, use_sel, use_prior = VARIANTS[variant]
    cfg = cfg.clone()
    cfg.MODEL.VRD.MODE = mode
    cfg.MODEL.VRD.USE_CP, cfg.MODEL.VRD.USE_SELECTION, cfg.MODEL.VRD.USE_PRIOR = use_cp, use_sel, use_prior
    cfg.DATASETS.TEST = (dataset,)
    seed_all_rng(cfg.SEED)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    evaluator = VRDEvaluator(dataset, mode=mode, output_dir=out_dir, distributed=False,
                             k_values=tuple(cfg.MODEL.VRD.TEST.K_PER_PAIR), save_predictions=False)
    with torch.no_grad():
        res = inference_on_dataset(model, Trainer.build_test_loader(cfg, dataset), evaluator)
    if not res:
        raise RuntimeError(f"shapes_demo: {variant} / {mode} on {dataset}: the evaluator returned nothing")
    return res


def run(args):
    wall = time.perf_counter()
    if args.quick:
        args.prefix = register_quick_subsets()
    timings = OrderedDict()
    det, timings["stage 1 detector"] = train_stage(build_cfg(args, "detector", RANKS[0]), args.reuse)
    weights = {}
    for rank in RANKS:
        trip, timings[f"stage 2 triplet rank {rank}"] = train_stage(build_cfg(args, "triplet", rank, det), args.reuse)
        sel, timings[f"stage 3 selection rank {rank}"] = train_stage(
            build_cfg(args, "selection", rank, trip), args.reuse)
        weights[rank] = sel  # holds the detector, the triplet net and the selection head
    # val: where settings are compared; skipped by --quick (its numbers mean nothing anyway)
    splits = ("test",) if args.quick else ("test", "val")
    results = OrderedDict((split, OrderedDict()) for split in splits)
    for variant, (rank, _, _, _) in VARIANTS.items():
        start = time.perf_counter()
        cfg = build_cfg(args, "selection", rank, weights[rank])
        tag = variant.split(" (")[0].replace(" ", "_").replace("+", "plus")
        for split in results:
            res = OrderedDict()
            modes = ["phrase_cls", "predcls"] + (["sgdet"] if variant == FULL and split == "test" else [])
            for mode in modes:
                res.update(evaluate(cfg, weights[rank], f"{args.prefix}_{split}", mode, variant,
                                    os.path.join(args.output, "eval", split, tag, mode)))
            results[split][variant] = res
        timings[f"eval {variant}"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - wall
    n_test = len(DatasetCatalog.get(f"{args.prefix}_test"))
    table = format_table(results["test"], timings, n_test, quick=args.quick)
    print(table)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"test": results["test"], "val": results.get("val", {}), "seconds": timings,
                   "variants": {k: dict(zip(("rank", "use_cp", "use_selection", "use_prior"), v))
                                for k, v in VARIANTS.items()},
                   "columns": [{"header": h, "task": t, "metric": m} for h, t, m in COLUMNS],
                   "quick": bool(args.quick)}, f, indent=1)
    if args.update_readme:
        replace_readme_section(args.readme, README_MARKER, table)
        logger.info("updated %s", args.readme)
    return results, timings


def _cell(res, task, metric):
    v = res.get(task, {}).get(metric)
    return "–" if v is None else f"{v:.2f}"


def format_table(results, timings, n_test, quick=False):
    """The markdown table: one row per variant (test split), then sgdet and the timings."""
    lines = ["| variant | " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|---" * (1 + len(COLUMNS)) + "|"]
    for variant, res in results.items():
        lines.append(f"| {variant} | " + " | ".join(_cell(res, t, m) for _, t, m in COLUMNS) + " |")
    full = results.get(FULL, {})
    lines += ["", f"Full model on detected boxes (sgdet), free k: relationship detection R@50 "
                  f"{_cell(full, 'relationship', 'R@50_kfree')}, R@100 {_cell(full, 'relationship', 'R@100_kfree')}; "
                  f"phrase detection R@50 {_cell(full, 'phrase', 'R@50_kfree')}, "
                  f"R@100 {_cell(full, 'phrase', 'R@100_kfree')}."]
    stages = ", ".join(f"{k} " + (f"{v:.0f} s" if v > 0 else "reused") for k, v in timings.items() if k.startswith("stage"))
    evals = sum(v for k, v in timings.items() if k.startswith("eval"))
    lines.append(f"Wall time: {timings['total'] / 60:.1f} min in total ({stages}; evaluation {evals:.0f} s); "
                 f"test split, {n_test} images" + (" (--quick: meaningless numbers)" if quick else "") + ".")
    return "\n".join(lines)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/shapes_demo")
    p.add_argument("--reuse", action="store_true", help="skip stages whose model_final.pth exists")
    p.add_argument("--update-readme", action="store_true", help="replace the shapes-demo section of README.md")
    p.add_argument("--readme", default=os.path.join(REPO, "README.md"), help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="2 iterations a stage, 4-8 images a split (tests)")
    p.add_argument("--prefix", default="shapes", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE for every stage")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    setup_logger(output=os.path.join(args.output, "log.txt"), name="detectron2")
    setup_logger(output=os.path.join(args.output, "log.txt"), name="vrd_d2")
    try:
        run(args)
    except Exception:
        logger.exception("shapes_demo failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
