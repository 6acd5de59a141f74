"""The demo run behind ``tools/demo.py``: images in, per image a JSON scene graph, a drawing on the
image, and the scene graph drawn as a graph (PNG and/or Graphviz ``.dot``).

One bad image (unreadable, boxes that do not fit it, a bad ``--boxes`` entry, an output that
exists) fails alone: :func:`run_demo` reports it and goes on with the others.
"""

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data.detection_utils import read_image

from .config import add_vrd_config, resolve_pair_features
from .predictor import select_relations
from .utils.checks import check_float, check_int
from .utils.demo_outputs import OutputFolder
from .utils.given_boxes import GivenBoxes, check_boxes_fit
from .utils.scene_graph_plot import plot_scene_graph, scene_graph_dot
from .utils.visualizer import RelationVisualizer, scene_graph_dict

__all__ = [
    "DemoOptions",
    "DemoReport",
    "setup_demo_cfg",
    "needs_given_boxes",
    "demo_class_names",
    "expand_inputs",
    "render_outputs",
    "run_demo",
    "IMAGE_EXTS",
    "GRAPH_FORMATS",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# --graph-format -> the graph files written: <name>.graph.png and/or <name>.dot
GRAPH_FORMATS = {"png": ("png",), "dot": ("dot",), "both": ("png", "dot"), "none": ()}
logger = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    """What the demo writes per image; range-checked on construction (``ValueError`` naming the flag).

    Attributes:
        top_n: relations kept per image (>= 1), best first.
        score_thresh: minimum relation score, in [0, 1].
        k_per_pair: relations per box pair (>= 0; 0 = any number).
        graph_formats: the graph files to write: ``"png"`` (``<name>.graph.png``) and/or
            ``"dot"`` (``<name>.dot``); empty for none (see ``GRAPH_FORMATS``).

    Whether earlier outputs may be replaced is the output folder's rule (:class:`OutputFolder`).
    """

    top_n: int = 10
    score_thresh: float = 0.0
    k_per_pair: int = 1
    graph_formats: Tuple[str, ...] = ("png",)

    def __post_init__(self):
        self.top_n = check_int(self.top_n, "--top-n", low=1, where="demo")
        self.score_thresh = check_float(self.score_thresh, "--score-thresh", low=0.0, high=1.0, where="demo")
        self.k_per_pair = check_int(self.k_per_pair, "--k-per-pair", low=0, where="demo")
        self.graph_formats = tuple(self.graph_formats)
        if not set(self.graph_formats) <= {"png", "dot"}:
            raise ValueError(f"demo: graph_formats must hold only 'png' and 'dot', found {self.graph_formats}")


@dataclass
class DemoReport:
    """``written``: input path -> output paths; ``failures``: (input path, reason)."""

    total: int = 0
    written: Dict[str, List[str]] = field(default_factory=dict)
    failures: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self, output: str) -> str:
        return f"demo: {len(self.written)} of {self.total} images written to {output}"


def setup_demo_cfg(config_file: str, opts: Sequence[str] = (), weights: str = "") -> CfgNode:
    """The frozen config of ``config_file`` + ``opts`` (+ ``weights`` as ``MODEL.WEIGHTS``), on the
    CPU when CUDA is asked for but absent."""
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if weights:
        cfg.MODEL.WEIGHTS = weights
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("demo: CUDA is not available, running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def needs_given_boxes(cfg: CfgNode) -> bool:
    """True when the model cannot find boxes itself: the geometry-only head (``MODEL.VRD.FEATURES
    geometry`` or the deprecated ``GEOMETRY_ONLY``) and the gold-box modes (``MODE`` other than sgdet)."""
    return resolve_pair_features(cfg) == "geometry" or cfg.MODEL.VRD.MODE != "sgdet"


def demo_class_names(predictor, cfg: CfgNode) -> Dict[str, List[str]]:
    """The names the demo writes: ``predictor.class_names`` (the checkpoint's, else a registered
    dataset's). ValueError when neither the checkpoint nor a dataset of the config has them."""
    names = getattr(predictor, "class_names", None)
    if names is None:
        datasets = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
        raise ValueError(
            f"no class names: the checkpoint {cfg.MODEL.WEIGHTS} holds none (not written by vrd_d2 training) "
            f"and no dataset of DATASETS.TEST/TRAIN {datasets} has them (are its files under "
            f"$DETECTRON2_DATASETS?)"
        )
    return names


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """
    Files, folders and globs -> image paths (a folder's images sorted by name; a file listed twice
    kept once). In a folder, ``<image>.png`` / ``<image>.graph.png`` next to ``<image>`` are
    earlier demo outputs and are skipped (logged). A pattern matching nothing is an error.
    """
    paths, seen = [], set()
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(f for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS))
            outputs = {n + s for n in names for s in (".png", ".graph.png")}
            skipped = [n for n in names if n in outputs]
            if skipped:
                logger.info("demo: %s: skipping %d earlier demo outputs (e.g. %s)", item, len(skipped), skipped[0])
            found = [os.path.join(item, n) for n in names if n not in outputs]
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(glob.glob(os.path.expanduser(item)))
        if not found:
            raise FileNotFoundError(f"--input {item!r}: no image file matches")
        for path in found:
            key = os.path.realpath(path)
            if key in seen:
                logger.info("demo: %s is listed more than once; processed once", path)
                continue
            seen.add(key)
            paths.append(path)
    return paths


def render_outputs(image_rgb: np.ndarray, graph: Dict, graph_formats: Sequence[str]) -> Dict[str, bytes]:
    """Every file of one image, rendered in memory: ``{".json", ".png"[, ".graph.png"][, ".dot"]}``
    -> bytes. Raises (and nothing is written) when any of them cannot be made."""
    files = {".json": json.dumps(graph, indent=1, allow_nan=False).encode("utf-8")}
    drawing = RelationVisualizer(image_rgb).draw_scene_graph(graph).get_image()
    files[".png"] = _png_bytes(drawing)
    title = os.path.basename(graph.get("file_name", ""))
    if "png" in graph_formats:
        files[".graph.png"] = _png_bytes(plot_scene_graph(graph, title=title))
    if "dot" in graph_formats:
        files[".dot"] = scene_graph_dot(graph, title=title).encode("utf-8")
    return files


def run_demo(
    predictor: Callable,
    paths: Sequence[str],
    output: OutputFolder,
    options: DemoOptions,
    thing_classes: Sequence[str],
    predicate_classes: Sequence[str],
    given: Optional[Mapping[str, GivenBoxes]] = None,
    needs_boxes: bool = False,
    progress: Callable = iter,
) -> DemoReport:
    """
    Run ``predictor`` (a :class:`~vrd_d2.predictor.VRDPredictor`) on each image of ``paths`` and
    write its files through ``output``.

    Args:
        given: basename -> boxes for the image (a mapping whose lookup may raise ``ValueError``
            for a bad entry, as :class:`~vrd_d2.utils.given_boxes.GivenBoxesFile` does).
        needs_boxes: an image without an entry in ``given`` fails (see :func:`needs_given_boxes`).
        progress: wraps the list of paths (e.g. ``tqdm.tqdm``).
    """
    report = DemoReport(total=len(paths))
    given = given or {}
    for path in progress(paths):
        name = os.path.basename(path)
        try:
            image = read_image(path, format="BGR")
            entry = given.get(name)
            if entry is None and needs_boxes:
                raise ValueError(
                    f"{name}: this model needs given boxes (--boxes / --boxes-from-dataset)"
                    " and none are listed for this image"
                )
            if entry is not None:
                check_boxes_fit(name, image.shape, entry, num_classes=len(thing_classes))
                outputs = predictor(image, entry.boxes, entry.labels, entry.scores)
            else:
                outputs = predictor(image)
            rel = select_relations(
                outputs["relations"].to("cpu"), options.k_per_pair, options.top_n, options.score_thresh
            )
            graph = scene_graph_dict(outputs["instances"].to("cpu"), rel, thing_classes, predicate_classes)
            graph.update(file_name=path, height=image.shape[0], width=image.shape[1])
            files = render_outputs(np.ascontiguousarray(image[:, :, ::-1]), graph, options.graph_formats)
            report.written[path] = output.write(path, files)
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            report.failures.append((path, f"{type(e).__name__}: {e}"))
            logger.error("demo: %s failed: %s", path, report.failures[-1][1])
    return report


def _png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} drawing as PNG")
    return buf.tobytes()
