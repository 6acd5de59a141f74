"""Single-image inference for demos: Detectron2's DefaultPredictor plus given boxes, with weights
loaded safely (no pickle unless trusted; a checkpoint without the relation head is an error)."""

from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from .checkpoint import VRDCheckpointer
from .checkpoint_info import resolve_class_names
from .data import triplet_counts_from_config

__all__ = ["VRDPredictor", "load_weights", "given_instances", "select_relations"]


class VRDPredictor(DefaultPredictor):
    """
    Like :class:`DefaultPredictor` (loads ``cfg.MODEL.WEIGHTS``, converts BGR input, resizes by
    ``INPUT.MIN/MAX_SIZE_TEST``), and optionally takes the boxes of the image from the caller
    (gold boxes or another detector's), for the gold-box modes ``MODEL.VRD.MODE`` =
    ``"phrase_cls"`` / ``"predcls"`` and the geometry-only head.

    The weights go through :func:`load_weights`: a pickle file is refused unless
    ``trust_pickle``, and weights without the relation head are an error, not a random head. The
    prior psi_u is the checkpoint's; a checkpoint without counts keeps those of
    ``DATASETS.TRAIN[0]`` (with ``MODEL.VRD.USE_PRIOR``), given to the model before loading.

    ``class_names`` (``{"thing_classes", "predicate_classes"}``, or None when unknown) name the
    outputs: the checkpoint's own (vrd_d2 training writes them), else those of a registered dataset
    of the config; a registered dataset whose names differ from the checkpoint's is an error
    (:func:`~vrd_d2.checkpoint_info.resolve_class_names`). No dataset files are needed.
    """

    def __init__(self, cfg, trust_pickle: bool = False):
        # DefaultPredictor.__init__ minus its unchecked DetectionCheckpointer.load
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        counts = triplet_counts_from_config(self.cfg)
        if counts is not None and hasattr(getattr(self.model, "roi_heads", None), "set_triplet_counts"):
            self.model.roi_heads.set_triplet_counts(counts)
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        extras = load_weights(self.model, cfg.MODEL.WEIGHTS, trust_pickle=trust_pickle)
        self.class_names = resolve_class_names(cfg, extras, cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"VRDPredictor: INPUT.FORMAT must be RGB or BGR, found {self.input_format!r}")

    def __call__(
        self,
        original_image: np.ndarray,
        boxes: Optional[np.ndarray] = None,
        labels: Optional[Sequence[int]] = None,
        scores: Optional[Sequence[float]] = None,
    ):
        """
        Args:
            original_image: (H, W, 3) uint8 BGR image.
            boxes: optional float array [B, 4] XYXY_ABS in original image coordinates.
            labels: optional [B] 0-based class ids of ``boxes`` (required by ``predcls``).
            scores: optional [B] detector confidences of ``boxes`` (used as P(b) when
                ``MODEL.VRD.USE_BOX_SCORE``); default 1.

        Returns:
            dict with ``"instances"`` and ``"relations"`` (see ``VRDRCNN``), in original
            image coordinates.
        """
        with torch.no_grad():
            image = original_image
            if self.input_format == "RGB":
                image = image[:, :, ::-1]
            height, width = image.shape[:2]
            transform = self.aug.get_transform(image)
            resized = transform.apply_image(image)
            inputs = {
                "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                "height": height,
                "width": width,
            }
            if boxes is not None:
                inputs["instances"] = given_instances(transform, resized.shape[:2], boxes, labels, scores)
            return self.model([inputs])[0]


def load_weights(model: torch.nn.Module, path: str, trust_pickle: bool = False):
    """
    Load ``path`` into ``model`` for inference; returns the checkpoint's other entries (e.g. the
    ``thing_classes``, ``predicate_classes`` and ``config`` vrd_d2 training writes).

    Raises:
        ValueError: ``path`` is empty (the relation head would be random), or a ``.pkl`` file
            while ``trust_pickle`` is False (unpickling runs code from the file), or the
            checkpoint holds no (or mismatched) relation-head weights.
    """
    if not path:
        raise ValueError(
            "no weights given (MODEL.WEIGHTS / --weights is empty): the relation head "
            "would be random; pass the model_final.pth of a trained model"
        )
    return VRDCheckpointer(model, trust_pickle=trust_pickle, require_relation_head=True).load(path)


def given_instances(transform, image_size, boxes, labels=None, scores=None) -> Instances:
    """Caller-given boxes as the ``instances`` a gold-box mode reads (gt_boxes, gt_classes,
    gt_scores), mapped into the resized input image by ``transform``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    inst = Instances(image_size)
    inst.gt_boxes = Boxes(torch.as_tensor(transform.apply_box(boxes), dtype=torch.float32).reshape(n, 4))
    inst.gt_classes = torch.as_tensor(
        np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    ).reshape(n)
    inst.gt_scores = torch.as_tensor(
        np.ones(n, dtype=np.float32) if scores is None else np.asarray(scores, dtype=np.float32)
    ).reshape(n)
    return inst


def select_relations(
    relations: Instances, k_per_pair: int = 0, top_n: int = 20, score_thresh: float = 0.0
) -> Instances:
    """
    The top ``top_n`` rows of a relation field with at most ``k_per_pair`` triplets per pair
    (0 = any number) and a score of at least ``score_thresh``, sorted by score.
    """
    keep = relations.scores >= score_thresh
    if k_per_pair > 0:
        keep &= relations.pair_rank < k_per_pair
    rel = relations[keep.nonzero().flatten()]
    order = torch.argsort(rel.scores, descending=True, stable=True)[:top_n]
    return rel[order]
