"""Gold-box classification accuracy of a trained detector: does stage 1 see the classes?

Every later stage of the shapes demo reads the detector's labels (phrase classification predicts
them on gold boxes); a detector that never learned colour (every colour predicted red) halves
every recall. :func:`gold_box_accuracy` classifies each gold box of a dataset with the detector's
box head (argmax of the foreground class scores) and counts per class; :func:`check_accuracy`
stops a run whose accuracy is below a threshold.

On the shapes data a shadowed object's colour cannot be seen (its class is a guess between two
colours), so the check uses the visible objects; shadowed ones are reported apart.
"""

import json
import logging
from collections import OrderedDict
from typing import Dict

import numpy as np
import torch
from detectron2.data import MetadataCatalog

from vrd_d2.checkpoint import VRDCheckpointer
from vrd_d2.engine import Trainer
from vrd_d2.utils.checks import check_float

__all__ = ["gold_box_accuracy", "check_accuracy", "format_accuracy", "DetectorAccuracyError"]

logger = logging.getLogger(__name__)


class DetectorAccuracyError(RuntimeError):
    """The stage-1 detector classifies too few gold boxes correctly."""


def _shadowed_flags(dataset: str) -> Dict[int, list]:
    """{image_id: [bool per object]} from the dataset's json (``shadowed`` of the shapes data);
    empty when the json has no such field."""
    json_file = MetadataCatalog.get(dataset).get("json_file", None)
    if not json_file:
        return {}
    with open(json_file) as f:
        images = json.load(f)["images"]
    return {d["image_id"]: [bool(o.get("shadowed", False)) for o in d["objects"]] for d in images}


@torch.no_grad()
def gold_box_accuracy(cfg, weights: str, dataset: str) -> Dict[str, object]:
    """Classify every gold box of ``dataset`` with the detector of ``weights``.

    Returns a dict: ``classes`` (names), ``confusion`` (int [C, C], rows = true class, columns =
    predicted), ``visible`` and ``shadowed`` (the same for objects whose colour is visible /
    hidden; all objects are visible on data without ``shadowed`` flags), ``accuracy`` (overall,
    percent), ``visible_accuracy`` (percent over visible objects), ``per_class`` ({name: percent
    over the visible objects of that class, or None when there are none}).
    """
    cfg = cfg.clone()
    cfg.MODEL.VRD.MODE = "phrase_cls"  # the test mapper keeps the gold boxes
    cfg.MODEL.VRD.GEOMETRY_ONLY = False
    cfg.DATASETS.TEST = (dataset,)
    model = Trainer.build_model(cfg)
    VRDCheckpointer(model).load(weights)
    model.eval()
    classes = list(MetadataCatalog.get(dataset).thing_classes)
    n = len(classes)
    shadow = _shadowed_flags(dataset)
    conf = {"visible": np.zeros((n, n), np.int64), "shadowed": np.zeros((n, n), np.int64)}
    heads = model.roi_heads
    for batch in Trainer.build_test_loader(cfg, dataset):
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        boxes = [x["instances"].gt_boxes.to(model.device) for x in batch]
        box_features = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
        scores, _ = heads.box_predictor(heads.box_head(box_features))
        pred = scores[:, :-1].argmax(dim=1).cpu().numpy()  # foreground classes only: the box is an object
        true = torch.cat([x["instances"].gt_classes for x in batch]).numpy()
        flags = []
        for x in batch:
            f = shadow.get(x["image_id"], [False] * len(x["instances"]))
            if len(f) != len(x["instances"]):
                raise ValueError(
                    f"{dataset}: image {x['image_id']} has {len(x['instances'])} gold boxes "
                    f"but {len(f)} objects in {MetadataCatalog.get(dataset).json_file}"
                )
            flags += f
        flags = np.asarray(flags, bool)
        np.add.at(conf["visible"], (true[~flags], pred[~flags]), 1)
        np.add.at(conf["shadowed"], (true[flags], pred[flags]), 1)
    total = conf["visible"] + conf["shadowed"]
    vis = conf["visible"]
    per_class = OrderedDict(
        (name, (100.0 * vis[c, c] / vis[c].sum()) if vis[c].sum() else None) for c, name in enumerate(classes)
    )
    return {
        "classes": classes,
        "confusion": total,
        "visible": vis,
        "shadowed": conf["shadowed"],
        "accuracy": 100.0 * np.trace(total) / max(1, total.sum()),
        "visible_accuracy": 100.0 * np.trace(vis) / max(1, vis.sum()),
        "shadowed_accuracy": (
            100.0 * np.trace(conf["shadowed"]) / conf["shadowed"].sum() if conf["shadowed"].sum() else None
        ),
        "per_class": per_class,
    }


def format_accuracy(acc: Dict[str, object], dataset: str) -> str:
    """One line: visible-object accuracy, per class, and the shadowed objects apart."""
    per = ", ".join(f"{k} {'–' if v is None else f'{v:.1f}'}" for k, v in acc["per_class"].items())
    shadowed = acc["shadowed"].sum()
    line = (
        f"Stage-1 detector, gold-box classification on {dataset}: {acc['visible_accuracy']:.1f}% of "
        f"{acc['visible'].sum()} visible objects ({per})"
    )
    if shadowed:
        line += f"; shadowed objects (colour hidden) {acc['shadowed_accuracy']:.1f}% of {shadowed}"
    return line + "."


def check_accuracy(acc: Dict[str, object], dataset: str, minimum: float, where: str = "stage 1") -> None:
    """DetectorAccuracyError when the accuracy over the visible objects is below ``minimum``
    (percent); the message names the classes below it and where their boxes went. (A rare class
    alone below the minimum does not stop a run: val holds ~25 visible objects of the rarest.)"""
    minimum = check_float(minimum, "minimum detector accuracy", low=0.0, high=100.0, where=where)
    if acc["visible_accuracy"] >= minimum:
        return
    low = [(k, v) for k, v in acc["per_class"].items() if v is not None and v < minimum]
    classes = acc["classes"]
    wrong = np.array(acc["visible"], dtype=float)
    np.fill_diagonal(wrong, -1.0)  # the most common wrong label of each class
    worst = ", ".join(
        f"{k} {v:.1f}% (mostly called {classes[int(np.argmax(wrong[classes.index(k)]))]})" for k, v in low
    )
    raise DetectorAccuracyError(
        f"{where}: the detector classifies {acc['visible_accuracy']:.1f}% of the visible gold boxes of "
        f"{dataset} correctly, below the required {minimum:.1f}%"
        + (f"; classes below: {worst}" if worst else "")
        + ". Every later stage reads these labels, so the run stops here: train stage 1 longer or "
        "check its data and schedule."
    )
