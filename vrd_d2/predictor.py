"""Single-image inference for demos: Detectron2's DefaultPredictor plus given boxes."""
from typing import Optional, Sequence

import numpy as np
import torch
from detectron2.engine import DefaultPredictor
from detectron2.structures import Boxes, Instances

__all__ = ["VRDPredictor", "select_relations"]


class VRDPredictor(DefaultPredictor):
    """
    Like :class:`DefaultPredictor` (loads ``cfg.MODEL.WEIGHTS``, converts BGR input, resizes by
    ``INPUT.MIN/MAX_SIZE_TEST``), and optionally takes the boxes of the image from the caller
    (gold boxes or another detector's), for the gold-box modes ``MODEL.VRD.MODE`` =
    ``"phrase_cls"`` / ``"predcls"`` and the geometry-only head.
    """

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
                inputs["instances"] = given_instances(
                    transform, resized.shape[:2], boxes, labels, scores
                )
            return self.model([inputs])[0]


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


def select_relations(relations: Instances, k_per_pair: int = 0, top_n: int = 20,
                     score_thresh: float = 0.0) -> Instances:
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
