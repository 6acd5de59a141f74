#!/usr/bin/env python
"""
Run a vrd_d2 model on images and write, per image, a JSON scene graph and a PNG drawing.

    python tools/demo.py --config-file configs/VRD/geometry_only.yaml --weights model_final.pth \
        --input path/to/images/ --output demo_out/ --boxes-from-dataset vrd_test --top-n 10

Inputs are image files, folders or globs. Boxes come from the model's detector, or from
``--boxes FILE`` (gold boxes or another detector's; required by the geometry-only head and the
gold-box modes) or ``--boxes-from-dataset NAME`` (the annotated boxes of a registered dataset).
``--boxes`` JSON: a list of ``{"file_name": "a.jpg", "boxes": [[x1, y1, x2, y2], ...],
"labels": [id or class name, ...], "scores": [...]}`` (``labels``/``scores`` optional), or a dict
mapping file names to such entries. A failing image (unreadable, boxes that do not fit it) is
reported and skipped; the others are still processed; the exit status is 1 if any failed.
"""
import argparse
import glob
import json
import logging
import os
import sys

import numpy as np
import torch
import tqdm
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401  (registers datasets and model components)
from vrd_d2 import add_vrd_config
from vrd_d2.config import resolve_pair_features
from vrd_d2.predictor import VRDPredictor, select_relations
from vrd_d2.utils.visualizer import RelationVisualizer, scene_graph_dict

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
logger = logging.getLogger("vrd_d2.demo")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", default="", help="checkpoint (overrides MODEL.WEIGHTS)")
    p.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    p.add_argument("--output", required=True, help="folder for <image>.json and <image>.png")
    p.add_argument("--boxes", default="", help="JSON file of given boxes per image (see above)")
    p.add_argument("--boxes-from-dataset", default="", help="use the annotated boxes of this dataset")
    p.add_argument("--top-n", type=int, default=10, help="relations drawn and written per image")
    p.add_argument("--score-thresh", type=float, default=0.0, help="minimum relation score")
    p.add_argument("--k-per-pair", type=int, default=1, help="relations per box pair (0 = any)")
    p.add_argument("opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return p


def expand_inputs(inputs):
    """Files, folders and globs → a sorted list of image paths; a pattern matching nothing is an error."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(glob.glob(os.path.expanduser(item)))
        if not found:
            raise FileNotFoundError(f"--input {item!r}: no image file matches")
        paths.extend(found)
    return paths


def load_given_boxes(path, thing_classes):
    """The ``--boxes`` file → {basename: (boxes [B,4], labels [B] or None, scores [B] or None)}."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--boxes {path}: cannot read JSON: {e}") from e
    entries = data.items() if isinstance(data, dict) else [(d.get("file_name"), d) for d in data]
    index = {name: i for i, name in enumerate(thing_classes)}
    out = {}
    for name, entry in entries:
        if not name or not isinstance(entry, dict) or "boxes" not in entry:
            raise ValueError(f"--boxes {path}: entry {name!r} needs a file name and a 'boxes' list")
        labels = entry.get("labels")
        if labels is not None:
            try:
                labels = [index[l] if isinstance(l, str) else int(l) for l in labels]
            except KeyError as e:
                raise ValueError(f"--boxes {path}: entry {name!r}: unknown class name {e}") from None
        out[os.path.basename(name)] = (entry["boxes"], labels, entry.get("scores"))
    return out


def boxes_from_dataset(name):
    boxes = {}
    for d in DatasetCatalog.get(name):
        anns = d.get("annotations", [])
        b = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        boxes[os.path.basename(d["file_name"])] = (b, [a["category_id"] for a in anns], None)
    return boxes


def check_boxes(name, image_shape, boxes, labels, scores, num_classes):
    """Raise ValueError naming the image and the row when given boxes do not fit the image."""
    h, w = image_shape[:2]
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    for i, (x0, y0, x1, y1) in enumerate(arr):
        if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
            raise ValueError(f"{name}: box {i} {[x0, y0, x1, y1]} is degenerate or not finite")
        if x0 < -1 or y0 < -1 or x1 > w + 1 or y1 > h + 1:
            raise ValueError(f"{name}: box {i} {[x0, y0, x1, y1]} lies outside the {w}x{h} image")
    for field, values in (("labels", labels), ("scores", scores)):
        if values is not None and len(values) != len(arr):
            raise ValueError(f"{name}: {len(arr)} boxes but {len(values)} {field}")
    if labels is not None:
        for i, l in enumerate(labels):
            if not 0 <= l < num_classes:
                raise ValueError(f"{name}: label {l} of box {i} is outside [0, {num_classes})")
    return arr


def setup_cfg(args):
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("demo: CUDA is not available, running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="vrd_d2")
    logger.setLevel(logging.INFO)
    cfg = setup_cfg(args)
    meta_name = (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0]
    meta = MetadataCatalog.get(meta_name)
    thing_classes, predicate_classes = meta.thing_classes, meta.predicate_classes
    given = {}
    if args.boxes:
        given = load_given_boxes(args.boxes, thing_classes)
    elif args.boxes_from_dataset:
        given = boxes_from_dataset(args.boxes_from_dataset)
    needs_boxes = resolve_pair_features(cfg) == "geometry" or cfg.MODEL.VRD.MODE != "sgdet"
    paths = expand_inputs(args.input)
    os.makedirs(args.output, exist_ok=True)
    predictor = VRDPredictor(cfg)
    failures = []
    for path in tqdm.tqdm(paths, desc="demo", unit="img", disable=len(paths) < 2):
        name = os.path.basename(path)
        try:
            image = read_image(path, format="BGR")
            entry = given.get(name)
            if entry is None and needs_boxes:
                raise ValueError(f"{name}: this model needs given boxes (--boxes / --boxes-from-dataset)"
                                 " and none are listed for this image")
            if entry is not None:
                boxes = check_boxes(name, image.shape, *entry, num_classes=len(thing_classes))
                outputs = predictor(image, boxes, entry[1], entry[2])
            else:
                outputs = predictor(image)
            rel = select_relations(outputs["relations"].to("cpu"), args.k_per_pair, args.top_n,
                                   args.score_thresh)
            graph = scene_graph_dict(outputs["instances"].to("cpu"), rel, thing_classes, predicate_classes)
            graph.update(file_name=path, height=image.shape[0], width=image.shape[1])
            stem = os.path.splitext(name)[0]
            with open(os.path.join(args.output, stem + ".json"), "w") as f:
                json.dump(graph, f, indent=1)
            RelationVisualizer(image[:, :, ::-1]).draw_scene_graph(graph).save(
                os.path.join(args.output, stem + ".png"))
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            failures.append((path, f"{type(e).__name__}: {e}"))
            logger.error("demo: %s failed: %s", path, failures[-1][1])
    logger.info("demo: %d of %d images written to %s", len(paths) - len(failures), len(paths), args.output)
    for path, why in failures:
        logger.error("demo: FAILED %s: %s", path, why)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
