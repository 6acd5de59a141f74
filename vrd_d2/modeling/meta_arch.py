"""VRDRCNN: GeneralizedRCNN that returns ``{"instances", "relations"}`` per image.

Why not GeneralizedRCNN's own inference: its ``_postprocess`` returns only ``instances`` and
``detector_postprocess`` drops empty boxes, which would leave the relations' ``pair_indices``
pointing at the wrong rows and their boxes unscaled. Here both are rescaled together, nothing is
dropped.
"""

import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from ..config import resolve_vrd_config

__all__ = ["VRDRCNN", "rescale_relation_outputs"]

logger = logging.getLogger(__name__)
_FILE = "vrd_d2/modeling/meta_arch.py"


def _scale_boxes(boxes: Boxes, sx: float, sy: float, out_size) -> Boxes:
    b = boxes.clone()
    b.scale(sx, sy)
    b.clip(out_size)
    return b


def rescale_relation_outputs(instances: Instances, relations: Instances, height: int, width: int):
    """Instances and relations of one image, from input-image to original (height, width)
    coordinates. No row is dropped, so ``pair_indices`` keep indexing ``instances``."""
    in_h, in_w = instances.image_size
    sx, sy = width / in_w, height / in_h
    out_size = (height, width)
    inst = Instances(out_size, **instances.get_fields())
    if inst.has("pred_boxes"):
        inst.pred_boxes = _scale_boxes(inst.pred_boxes, sx, sy, out_size)
    rel = Instances(out_size, **relations.get_fields())
    rel.subject_boxes = _scale_boxes(rel.subject_boxes, sx, sy, out_size)
    rel.object_boxes = _scale_boxes(rel.object_boxes, sx, sy, out_size)
    return inst, rel


@META_ARCH_REGISTRY.register()
class VRDRCNN(GeneralizedRCNN):
    """Faster R-CNN + the relation ROI heads (VRDROIHeads), trained in stages.

    ``train_stage`` sets ``requires_grad=False`` on everything the stage does not train:
    "detector" freezes the relation modules (the backbone keeps its own FREEZE_AT), "triplet"
    trains only the CP branches and the spatial branch (and the relation stages' copy of the box
    head with MODEL.VRD.FINETUNE_BOX_HEAD), "selection" only the selection head.
    """

    @configurable
    def __init__(
        self,
        *,
        train_stage: str = "detector",
        mode: str = "sgdet",
        pair_features: str = "roi_align",
        train_on_proposals: bool = False,
        **kwargs,
    ):
        """
        Args:
            train_stage: "detector" | "triplet" | "selection" (MODEL.VRD.TRAIN_STAGE; values are
                not checked here: :func:`~vrd_d2.config.resolve_vrd_config` checks the config).
            mode: "sgdet" (detect boxes) | "phrase_cls" | "predcls" (gold boxes from
                ``batched_inputs[i]["instances"]``: gt_boxes, gt_classes, optional gt_scores).
            pair_features: MODEL.VRD.FEATURES; with "geometry" the relation head needs no image
                features (no backbone forward when the boxes are given).
            train_on_proposals: the relation stages pair RPN proposals (needs the backbone).
            kwargs: GeneralizedRCNN's arguments.
        """
        super().__init__(**kwargs)
        self.train_stage, self.mode = train_stage, mode
        self.pair_features, self.train_on_proposals = pair_features, train_on_proposals
        self.freeze_for_stage(train_stage)

    @classmethod
    def from_config(cls, cfg):
        # resolved before any part is built: a bad MODEL.VRD value fails here, and the backbone and
        # heads are built from the resolved keys, which they read without checking again
        cfg = resolve_vrd_config(cfg)
        ret = super().from_config(cfg)
        v = cfg.MODEL.VRD
        ret.update(
            train_stage=v.TRAIN_STAGE,
            mode=v.MODE,
            pair_features=v.FEATURES,
            train_on_proposals=v.TRAIN_ON_PROPOSALS,
        )
        return ret

    def freeze_for_stage(self, stage: str) -> None:
        """requires_grad=False on every parameter ``stage`` does not train."""
        heads = self.roi_heads
        if stage == "detector":
            for name in heads.relation_modules():
                heads.get_submodule(name).requires_grad_(False)
            return
        trained = {id(p) for m in heads.trainable_modules(stage) for p in heads.get_submodule(m).parameters()}
        for p in self.parameters():
            if id(p) not in trained:
                p.requires_grad_(False)

    # ------------------------------------------------------------------------------ helpers
    @property
    def _needs_features(self) -> bool:
        geometry = self.pair_features == "geometry"
        if self.training:
            return not geometry or self.train_on_proposals
        return not geometry or self.mode == "sgdet"

    def _image_sizes(self, batched_inputs):
        """(ImageList or None, [(h, w)]): the preprocessed images when features are needed."""
        if self._needs_features:
            images = self.preprocess_image(batched_inputs)
            return images, list(images.image_sizes)
        sizes = []
        for i, x in enumerate(batched_inputs):
            if "image" in x:
                sizes.append(tuple(x["image"].shape[-2:]))
            elif "instances" in x:
                sizes.append(tuple(x["instances"].image_size))
            else:
                raise ValueError(f"{_FILE}: batched_inputs[{i}] has neither 'image' nor 'instances'")
        return None, sizes

    def _backbone(self, images):
        if images is None or not self._needs_features:
            return {}
        if any(p.requires_grad for p in self.backbone.parameters()) and self.training:
            return self.backbone(images.tensor)
        with torch.no_grad():
            return self.backbone(images.tensor)

    def _given_instances(self, batched_inputs, image_sizes) -> List[Instances]:
        out = []
        for i, (x, size) in enumerate(zip(batched_inputs, image_sizes)):
            if "instances" not in x:
                raise ValueError(
                    f"{_FILE}: MODEL.VRD.MODE={self.mode!r} takes the gold boxes from batched_inputs[{i}]"
                    "['instances'] (gt_boxes, gt_classes), found keys "
                    + str(sorted(x.keys()))
                    + "; the mapper keeps annotations at test time for this mode"
                )
            gt = x["instances"].to(self.device)
            n = len(gt)
            scores = gt.gt_scores if gt.has("gt_scores") else torch.ones(n, device=self.device)
            classes = gt.gt_classes if gt.has("gt_classes") else torch.zeros(n, dtype=torch.long, device=self.device)
            out.append(
                Instances(size, pred_boxes=gt.gt_boxes.clone(), scores=scores.float(), pred_classes=classes.long())
            )
        return out

    # ------------------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Training: the losses of ``train_stage`` (detector: RPN + Fast R-CNN; triplet: loss_cp;
        selection: loss_sel). Each input needs ``instances`` (gt_boxes, gt_classes) and, for the
        relation stages, ``relations`` LongTensor[M, 3] (subject row, object row, predicate).
        Inference: see :meth:`inference`.
        """
        if not self.training:
            return self.inference(batched_inputs)
        if self.train_stage == "detector":
            return super().forward(batched_inputs)
        images, sizes = self._image_sizes(batched_inputs)
        gt = [x["instances"].to(self.device) for x in batched_inputs]
        relations = [x.get("relations", torch.zeros((0, 3), dtype=torch.long)).to(self.device) for x in batched_inputs]
        features = self._backbone(images)
        proposals = None
        if self.train_on_proposals:
            with torch.no_grad():
                proposals, _ = self.proposal_generator(images, features, gt)
        _, losses = self.roi_heads(images, features, proposals, gt, relations=relations)
        return losses

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """
        Returns:
            per image ``{"instances": Instances(pred_boxes, scores, pred_classes), "relations":
            Instances(pair_indices, subject_boxes, object_boxes, subject_classes,
            predicate_classes, object_classes, scores, pair_rank)}``, in original image
            coordinates (``height``/``width`` of the input) when ``do_postprocess``.
            ``detected_instances`` (pred_boxes, scores, pred_classes in input coordinates)
            replace the detector, like GeneralizedRCNN's.
        """
        assert not self.training
        images, sizes = self._image_sizes(batched_inputs)
        features = self._backbone(images)
        if detected_instances is not None:
            instances = self.roi_heads.forward_with_given_boxes(
                features, [x.to(self.device) for x in detected_instances]
            )
        elif self.mode == "sgdet":
            proposals, _ = self.proposal_generator(images, features, None)
            instances, _ = self.roi_heads(images, features, proposals, None)
        else:
            instances = self.roi_heads.forward_with_given_boxes(features, self._given_instances(batched_inputs, sizes))
        relations = self.roi_heads.forward_relations(features, instances)
        if not do_postprocess:
            return [{"instances": i, "relations": r} for i, r in zip(instances, relations)]
        results = []
        for inst, rel, x, size in zip(instances, relations, batched_inputs, sizes):
            h, w = x.get("height", size[0]), x.get("width", size[1])
            inst, rel = rescale_relation_outputs(inst, rel, h, w)
            results.append({"instances": inst, "relations": rel})
        return results
