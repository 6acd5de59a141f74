#!/usr/bin/env python
"""
The geometry-only relation head on the real VRD annotations (Lu et al. 2016): train on
annotations_train.json (no images needed), evaluate on the test set, print and save the tables.

    python tools/vrd_real.py --vrd-root datasets/vrd --output output/vrd_real

For every variant (frequency prior alone; rank 1 / rank 5, with and without X_sel, without the
prior) it reports
  * predicate classification (gold boxes and labels), R@50/100 for k = 1, 10, free k;
  * relationship and phrase detection on Lu et al.'s R-CNN detections (lu2016/data/
    objectDetRCNN.mat), with the detector's labels and confidences as given:
    score = conf_s * conf_o * P(predicate | s, o, boxes) * P(X_sel) — the setting of the paper's
    Table 1 "w/ proposals from (Lu et al. 2016)";
all scored against Lu et al.'s gt.mat / zeroShot.mat with Lu's matching (docs/EVALUATION.md).
Results go to <output>/results.json and <output>/results.md; ``--update-readme`` also replaces
the table between the ``vrd-real`` markers of README.md.
"""
import argparse
import json
import logging
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import BoxMode
from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401
from vrd_d2 import add_vrd_config
from vrd_d2.data import register_all_vrd
from vrd_d2.data.datasets.lu2016 import load_lu_detections
from vrd_d2.engine import Trainer
from vrd_d2.evaluation import VRDEvaluator
from vrd_d2.utils.readme import replace_readme_section

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "VRD", "geometry_only.yaml")
logger = logging.getLogger("vrd_d2.vrd_real")

REQUIRED = (
    "annotations_train.json", "annotations_test.json", "objects.json", "predicates.json",
    "lu2016/evaluation/gt.mat", "lu2016/evaluation/zeroShot.mat",
    "lu2016/data/imagePath.mat", "lu2016/data/objectDetRCNN.mat",
)

# name -> (rank, use_selection, use_prior, use_cp): the paper's Table 4 ablation on real data
VARIANTS = OrderedDict([
    ("prior alone", (1, False, True, False)),
    ("rank 1", (1, False, True, True)),
    ("rank 1 + X_sel", (1, True, True, True)),
    ("rank 5", (5, False, True, True)),
    ("rank 5 + X_sel", (5, True, True, True)),
    ("rank 5 + X_sel, no prior", (5, True, False, True)),
])

PAPER = {  # Dupty et al. 2020, Table 1, full model with images, proposals of Lu et al.
    "relationship": {"R@50_k1": 17.67, "R@100_k1": 18.64, "R@50_kfree": 24.08, "R@100_kfree": 28.29},
}


def default_vrd_root():
    for cand in (os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "vrd"),
                 os.getenv("VRD_D2_SHARED_DATA", os.path.join(REPO, "..", "shared", "data", "vrd"))):
        if os.path.isfile(os.path.join(cand, "annotations_train.json")):
            return cand
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "vrd")


def check_vrd_root(root):
    """Exit with a message naming every missing file."""
    missing = [f for f in REQUIRED if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise SystemExit(
            f"vrd_real: the VRD folder {os.path.abspath(root)} lacks: {', '.join(missing)}.\n"
            "Lay it out as in README.md 'Datasets' (Lu et al.'s json release plus lu2016/ from "
            "their MATLAB release) and pass it with --vrd-root.")


def register_lu_detections(name, test_name, det_mat, image_path_mat):
    """Register ``name``: the images of ``test_name`` with Lu et al.'s R-CNN detections as their
    boxes (``score`` = the detector's confidence) and no relations."""
    def load():
        dets = load_lu_detections(det_mat, image_path_mat)
        dets = {os.path.splitext(k)[0]: v for k, v in dets.items()}
        out, missing = [], 0
        for d in DatasetCatalog.get(test_name):
            det = dets.get(os.path.splitext(os.path.basename(d["file_name"]))[0])
            if det is None:
                missing += 1
                det = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int), "scores": np.zeros(0)}
            r = {k: v for k, v in d.items() if k not in ("annotations", "relations")}
            r["annotations"] = [
                {"bbox": [float(v) for v in b], "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c),
                 "score": float(s)}
                for b, c, s in zip(det["boxes"], det["labels"], det["scores"])
            ]
            r["relations"] = np.zeros((0, 3), dtype=np.int64)
            out.append(r)
        if missing:
            logger.warning("%s: %d test images have no entry in %s (no detections)", name, missing, det_mat)
        return out

    DatasetCatalog.register(name, load)
    meta = MetadataCatalog.get(test_name).as_dict()
    meta.pop("name")
    MetadataCatalog.get(name).set(**meta)


def build_cfg(args, variant, stage, weights=""):
    rank, use_sel, use_prior, use_cp = VARIANTS[variant]
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(args.config_file)
    cfg.DATASETS.TRAIN = (f"{args.prefix}_train",)
    cfg.DATASETS.TEST = ()  # evaluated below against gt.mat, not at the end of training
    cfg.MODEL.VRD.RANK = rank
    cfg.MODEL.VRD.USE_SELECTION = use_sel
    cfg.MODEL.VRD.USE_PRIOR = use_prior
    cfg.MODEL.VRD.USE_CP = use_cp
    cfg.MODEL.VRD.TRAIN_STAGE = stage
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.OUTPUT_DIR = os.path.join(args.output, f"rank{rank}", stage)
    if stage == "selection":
        cfg.SOLVER.MAX_ITER = cfg.SOLVER.MAX_ITER // 2
    if args.iters:
        cfg.SOLVER.MAX_ITER = args.iters
    cfg.merge_from_list(args.opts)
    return cfg


def train(cfg):
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final):
        logger.info("reusing %s", final)
        return final
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return final


def evaluate(cfg, weights, dataset, mode, eval_mode, out_dir, root):
    cfg = cfg.clone()
    cfg.MODEL.VRD.MODE = mode
    cfg.MODEL.VRD.USE_BOX_SCORE = True  # 1 for gold boxes; the detector's confidences otherwise
    cfg.DATASETS.TEST = (dataset,)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    evaluator = VRDEvaluator(
        dataset, mode=eval_mode, output_dir=out_dir, distributed=False,
        k_values=tuple(cfg.MODEL.VRD.TEST.K_PER_PAIR),
        gt_mat=os.path.join(root, "lu2016", "evaluation", "gt.mat"),
        image_path_mat=os.path.join(root, "lu2016", "data", "imagePath.mat"),
        save_predictions=False)
    return inference_on_dataset(model, Trainer.build_test_loader(cfg, dataset), evaluator)


def run(args):
    check_vrd_root(args.vrd_root)
    register_all_vrd(args.vrd_root, prefix=args.prefix)
    register_lu_detections(f"{args.prefix}_test_lu_det", f"{args.prefix}_test",
                           os.path.join(args.vrd_root, "lu2016", "data", "objectDetRCNN.mat"),
                           os.path.join(args.vrd_root, "lu2016", "data", "imagePath.mat"))
    results, timings = OrderedDict(), OrderedDict()
    variants = args.variants or list(VARIANTS)
    for variant in variants:
        rank, use_sel, _, use_cp = VARIANTS[variant]
        start = time.perf_counter()
        if use_cp:
            weights = train(build_cfg(args, variant, "triplet"))
            if use_sel:
                weights = train(build_cfg(args, variant, "selection", weights))
        else:  # the prior alone needs no training: psi_c is uniform
            weights = ""
        cfg = build_cfg(args, variant, "selection" if use_sel else "triplet", weights)
        tag = variant.replace(" ", "_").replace(",", "").replace("+", "plus")
        res = OrderedDict()
        res.update(evaluate(cfg, weights, f"{args.prefix}_test", "predcls", "predcls",
                            os.path.join(args.output, "eval", tag, "predcls"), args.vrd_root))
        res.update(evaluate(cfg, weights, f"{args.prefix}_test_lu_det", "predcls", "sgdet",
                            os.path.join(args.output, "eval", tag, "lu_det"), args.vrd_root))
        results[variant] = res
        timings[variant] = time.perf_counter() - start
        logger.info("%s: done in %.0f s", variant, timings[variant])
    table = format_table(results)
    print(table)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump({"results": results, "seconds": timings, "paper": PAPER}, f, indent=1)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + "\n")
    if args.update_readme:
        replace_readme_section(os.path.join(REPO, "README.md"), "vrd-real", table)
    return results


def _cell(res, task, metric):
    v = res.get(task, {}).get(metric)
    return "–" if v is None else f"{v:.2f}"


def format_table(results):
    """Markdown tables: predicate classification, and detection on Lu et al.'s detections."""
    ks = (("k1", "k=1"), ("k10", "k=10"), ("kfree", "free k"))
    head = "| variant | " + " | ".join(f"{n} R@50 | {n} R@100" for _, n in ks) + " |"
    sep = "|---" * (1 + 2 * len(ks)) + "|"
    lines = ["**Predicate classification** (gold boxes and labels; gt.mat, 7638 relations)", "",
             head, sep]
    for variant, res in results.items():
        lines.append(f"| {variant} | " + " | ".join(
            f"{_cell(res, 'predcls', f'R@50_{k}')} | {_cell(res, 'predcls', f'R@100_{k}')}" for k, _ in ks) + " |")
    for task, title in (("relationship", "Relationship detection"), ("phrase", "Phrase detection")):
        lines += ["", f"**{title}** on Lu et al.'s R-CNN detections (score = conf_s·conf_o·"
                      "P(p | s, o, boxes)·P(X_sel); gt.mat)", "", head + " zero-shot R@50 (free k) |",
                  sep + "---|"]
        for variant, res in results.items():
            lines.append(f"| {variant} | " + " | ".join(
                f"{_cell(res, task, f'R@50_{k}')} | {_cell(res, task, f'R@100_{k}')}" for k, _ in ks)
                + f" | {_cell(res, task, 'zsR@50_kfree')} |")
        if task in PAPER:
            p = PAPER[task]
            lines.append(f"| paper, full model with images | {p['R@50_k1']} | {p['R@100_k1']} | – | – | "
                         f"{p['R@50_kfree']} | {p['R@100_kfree']} | – |")
    return "\n".join(lines)


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vrd-root", default=None, help="VRD folder (default: $DETECTRON2_DATASETS/vrd, "
                   "else ../shared/data/vrd)")
    p.add_argument("--output", default="output/vrd_real")
    p.add_argument("--config-file", default=CONFIG)
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), help="default: all")
    p.add_argument("--iters", type=int, default=0, help="override SOLVER.MAX_ITER (quick runs)")
    p.add_argument("--prefix", default="vrdreal", help="names the datasets are registered under")
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.vrd_root = args.vrd_root or default_vrd_root()
    setup_logger(name="vrd_d2")
    setup_logger(name="detectron2")
    torch.manual_seed(0)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
