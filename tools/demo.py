#!/usr/bin/env python
"""
Run a vrd_d2 model on images and write, per image <name> (e.g. pic.jpg), <name>.json (the scene
graph), <name>.png (the drawing on the image) and <name>.graph.png (the scene graph as a graph;
--graph-format dot writes <name>.dot for Graphviz instead, "both" both, "none" neither).

    python tools/demo.py --config-file configs/VRD/geometry_only.yaml --weights model_final.pth \
        --input path/to/images/ --output demo_out/ --boxes-from-dataset vrd_test --top-n 10

Inputs are image files, folders or globs. Boxes come from the model's detector, or from
``--boxes FILE`` (gold boxes or another detector's; required by the geometry-only head and the
gold-box modes) or ``--boxes-from-dataset NAME`` (the annotated boxes of a registered dataset).
``--boxes`` JSON: a list of ``{"file_name": "a.jpg", "boxes": [[x1, y1, x2, y2], ...],
"labels": [id or class name, ...], "scores": [...]}`` (``labels``/``scores`` optional), or a dict
mapping file names to such entries.

Input files are never written over; existing outputs are replaced only with --overwrite. A
failing image (unreadable, a bad --boxes entry, boxes that do not fit it, an existing output) is
reported and skipped; the others are still processed; the exit status is 1 if any failed.
Weights in a pickle (.pkl) file are refused unless --trust-pickle (unpickling can run code).
The class and predicate names come from the checkpoint (vrd_d2 training writes them into it), so
the config and the weights are enough; a registered dataset of the config whose names differ from
the checkpoint's is an error.
"""

import argparse
import logging
import pickle
import sys

import tqdm
from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401  (registers datasets and model components)
from vrd_d2.demo import (
    GRAPH_FORMATS,
    DemoOptions,
    demo_class_names,
    expand_inputs,
    needs_given_boxes,
    run_demo,
    setup_demo_cfg,
)
from vrd_d2.predictor import VRDPredictor
from vrd_d2.utils.demo_outputs import OutputFolder
from vrd_d2.utils.given_boxes import GivenBoxesFile, boxes_from_dataset

logger = logging.getLogger("vrd_d2.demo")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", default="", help="checkpoint (overrides MODEL.WEIGHTS)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pkl weights file (unpickling runs code: only for files you trust)",
    )
    p.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    p.add_argument("--output", required=True, help="folder for <image>.json, <image>.png, <image>.graph.png")
    p.add_argument("--overwrite", action="store_true", help="replace outputs of an earlier run")
    p.add_argument("--boxes", default="", help="JSON file of given boxes per image (see above)")
    p.add_argument("--boxes-from-dataset", default="", help="use the annotated boxes of this dataset")
    p.add_argument("--top-n", type=int, default=10, help="relations drawn and written per image (>= 1)")
    p.add_argument("--score-thresh", type=float, default=0.0, help="minimum relation score, in [0, 1]")
    p.add_argument("--k-per-pair", type=int, default=1, help="relations per box pair (0 = any)")
    p.add_argument(
        "--graph-format",
        default="png",
        choices=sorted(GRAPH_FORMATS),
        help="the scene graph as <image>.graph.png (png), <image>.dot (dot), both, or none",
    )
    p.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return p


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        options = DemoOptions(
            top_n=args.top_n,
            score_thresh=args.score_thresh,
            k_per_pair=args.k_per_pair,
            graph_formats=GRAPH_FORMATS[args.graph_format],
        )
    except ValueError as e:
        parser.error(str(e))
    setup_logger(name="vrd_d2")
    logger.setLevel(logging.INFO)
    try:
        cfg = setup_demo_cfg(args.config_file, args.opts, args.weights)
        paths = expand_inputs(args.input)
        predictor = VRDPredictor(cfg, trust_pickle=args.trust_pickle)
        names = demo_class_names(predictor, cfg)
        given = {}
        if args.boxes:
            given = GivenBoxesFile(args.boxes, names["thing_classes"])
        elif args.boxes_from_dataset:
            given = boxes_from_dataset(args.boxes_from_dataset)
        protected = list(paths) + [f for f in (args.boxes, args.config_file, cfg.MODEL.WEIGHTS) if f]
        output = OutputFolder(args.output, protected=protected, overwrite=args.overwrite)
    except (ValueError, OSError, pickle.UnpicklingError) as e:
        parser.exit(2, f"demo: error: {e}\n")
    report = run_demo(
        predictor,
        paths,
        output,
        options,
        names["thing_classes"],
        names["predicate_classes"],
        given=given,
        needs_boxes=needs_given_boxes(cfg),
        progress=lambda p: tqdm.tqdm(p, desc="demo", unit="img", disable=len(p) < 2),
    )
    logger.info(report.summary(args.output))
    for path, why in report.failures:
        logger.error("demo: FAILED %s: %s", path, why)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
