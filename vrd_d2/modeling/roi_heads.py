"""The relation ROI heads: StandardROIHeads (the Faster R-CNN detector) plus the paper's relation
head on box pairs, wired from its parts the way DensePose's ROI heads wire theirs:

- relation_predictor.py: box pairs -> CP log-factors and selection logits (a registry);
- relation_losses.py: the training pairs, ``loss_cp`` and ``loss_sel``;
- relation_inference.py: pairs -> decoded, scored triplets (the relation field);
- relation_prior.py: the triplet prior psi_u and its counts buffer.
"""

import logging
from typing import Dict, List, Optional, Tuple

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances
from torch import Tensor
from torchvision.ops import nms

from ..config import check_vrd_config
from .relation_inference import RELATION_FIELDS, RelationInference, empty_relations
from .relation_losses import RelationLoss
from .relation_predictor import build_relation_predictor
from .relation_prior import CountsPrior, check_triplet_counts, keep_training_counts, triplet_counts_from_config

__all__ = ["VRDROIHeads", "empty_relations", "RELATION_FIELDS", "version1_key_now"]

logger = logging.getLogger(__name__)
_FILE = "vrd_d2/modeling/roi_heads.py"


def version1_key_now(key: str, prefix: str, modules) -> Optional[str]:
    """The name a version-1 checkpoint key ``<prefix><module>.*`` (``module`` one of ``modules``, the
    relation predictor's submodules) has now, ``<prefix>relation_predictor.<module>.*``; None for
    any other key."""
    if not key.startswith(prefix) or key[len(prefix) :].split(".")[0] not in modules:
        return None
    return prefix + "relation_predictor." + key[len(prefix) :]


@ROI_HEADS_REGISTRY.register()
class VRDROIHeads(StandardROIHeads):
    """StandardROIHeads plus the relation predictor, the triplet prior, the relation losses and
    the relation inference.

    Training (``train_stage``): "detector" trains the StandardROIHeads losses only; "triplet"
    returns ``{"loss_cp"}``, "selection" ``{"loss_sel"}`` (:class:`RelationLoss`). Inference:
    ``forward`` detects boxes (class-agnostic NMS before pairing) and returns ``(instances, {})``
    like StandardROIHeads; :meth:`forward_relations` scores the pairs of given instances.
    """

    # 2: the predictor's branches moved from roi_heads.<branch> to roi_heads.relation_predictor.<branch>
    _version = 2

    @configurable
    def __init__(
        self,
        *,
        relation_predictor,
        relation_loss: RelationLoss,
        relation_inference: RelationInference,
        triplet_counts: Optional[Tensor] = None,
        test_nms_thresh: float = 0.7,
        **kwargs,
    ):
        """
        Args (besides StandardROIHeads'):
            relation_predictor: a RELATION_PREDICTOR_REGISTRY module (``pair_logits``).
            relation_loss: the losses of the training stage (its ``train_stage`` is the heads').
            relation_inference: the test-time scoring of pairs.
            triplet_counts: Tensor[S, P, S] training triplet counts, psi_u = their add-1 smoothed
                normalization (TripletPrior); None = no counts (uniform). Saved in checkpoints
                (buffer ``triplet_counts``); a checkpoint with all-zero counts does not replace
                non-zero counts built from the training set.
            test_nms_thresh: class-agnostic NMS on detected boxes before pairing (sgdet).
        """
        super().__init__(**kwargs)
        shape = (self.num_classes, relation_predictor.num_predicates, self.num_classes)
        triplet_counts = check_triplet_counts(triplet_counts, shape, f"{_FILE}:VRDROIHeads")
        self.relation_predictor = relation_predictor
        self.relation_loss = relation_loss
        self.relation_inference = relation_inference
        self.register_buffer("triplet_counts", triplet_counts)
        self.prior = CountsPrior.from_counts(triplet_counts)
        self.test_nms_thresh = test_nms_thresh

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_vrd_config(cfg)  # clear errors for bad MODEL.VRD values; deprecated switches logged
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_relation_head(cfg, input_shape, box_feature_dim=ret["box_head"].output_shape.channels))
        return ret

    @classmethod
    def _init_relation_head(cls, cfg, input_shape: Dict[str, ShapeSpec], *, box_feature_dim: int):
        return {
            "relation_predictor": build_relation_predictor(cfg, input_shape, box_feature_dim=box_feature_dim),
            "relation_loss": RelationLoss(cfg),
            "relation_inference": RelationInference(cfg),
            "triplet_counts": triplet_counts_from_config(cfg),
            "test_nms_thresh": cfg.MODEL.VRD.TEST.NMS_THRESH,
        }

    @property
    def train_stage(self) -> str:
        return self.relation_loss.train_stage

    @property
    def use_prior(self) -> bool:
        """Whether test-time scores use psi_u (VRDCheckpointer refuses an empty prior then)."""
        return self.relation_inference.use_prior

    # ------------------------------------------------------------------------------ prior, checkpoints
    def set_triplet_counts(self, counts) -> None:
        """Replace the counts (Tensor/ndarray [S, P, S]) and the prior psi_u built from them."""
        counts = check_triplet_counts(counts, tuple(self.triplet_counts.shape), f"{_FILE}:set_triplet_counts")
        self.triplet_counts.copy_(counts.to(self.triplet_counts.device))
        self.prior.set_counts(counts)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        if local_metadata.get("version", 1) < 2:
            self._rename_version1_keys(state_dict, prefix)
        keep_training_counts(state_dict, prefix + "triplet_counts", self.triplet_counts)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        self.prior.set_counts(self.triplet_counts)

    def _rename_version1_keys(self, state_dict, prefix: str) -> None:
        """Version-1 checkpoints hold the branches at ``roi_heads.<branch>.*``: move them under
        ``roi_heads.relation_predictor.``. As fvcore's checkpointer does for the other keys, a
        tensor whose shape differs from the model's is skipped with a warning."""
        own = self.relation_predictor.state_dict()
        moved = {m.split(".")[-1] for m in self.relation_modules()}
        for old in [k for k in state_dict if version1_key_now(k, prefix, moved)]:
            name = old[len(prefix) :]
            value = state_dict.pop(old)
            if name in own and tuple(own[name].shape) != tuple(value.shape):
                logger.warning(
                    f"Skip loading parameter '{old}' (now '{prefix}relation_predictor.{name}') to the model due "
                    f"to incompatible shapes: {tuple(value.shape)} in the checkpoint but "
                    f"{tuple(own[name].shape)} in the model!"
                )
                continue
            state_dict.setdefault(prefix + "relation_predictor." + name, value)

    # ------------------------------------------------------------------------------ stages
    def trainable_modules(self, stage: str) -> Tuple[str, ...]:
        """Names (for ``get_submodule``) of the relation modules trained in ``stage`` ("detector": none)."""
        return tuple("relation_predictor." + m for m in self.relation_predictor.trainable_modules(stage))

    def relation_modules(self) -> Tuple[str, ...]:
        """Names (for ``get_submodule``) of every relation module a relation stage trains."""
        return self.trainable_modules("triplet") + self.trainable_modules("selection")

    def _trained_parameters(self, stage: str):
        return [p for m in self.trainable_modules(stage) for p in self.get_submodule(m).parameters()]

    # ------------------------------------------------------------------------------ features
    def pair_logits(
        self,
        features: Dict[str, Tensor],
        boxes: List[Tensor],
        pairs: List[Tensor],
        image_sizes: List[Tuple[int, int]],
        **kwargs,
    ) -> Dict[str, Tensor]:
        """The predictor's ``pair_logits`` with the detector's box head as its "box_head" features."""
        return self.relation_predictor.pair_logits(
            features, boxes, pairs, image_sizes, box_features=self._box_head_features, **kwargs
        )

    def _box_head_features(self, features: Dict[str, Tensor], boxes: List[Boxes]) -> Tensor:
        """[sum B_i, D] the detector's box head (fc7) on boxes."""
        maps = [features[f] for f in self.box_in_features]
        return self.box_head(self.box_pooler(maps, boxes)).flatten(1)

    # ------------------------------------------------------------------------------ forward
    def forward(self, images, features, proposals, targets=None, relations: Optional[List[Tensor]] = None):
        """
        Training, train_stage "detector": StandardROIHeads.forward. Other stages: returns
        ``([], {"loss_cp"})`` or ``([], {"loss_sel"})``; ``targets`` are the gold Instances
        (gt_boxes, gt_classes) and ``relations`` per image LongTensor[M_i, 3] (subject row, object
        row, predicate). ``proposals`` (RPN) are used only with train_on_proposals.

        Inference: detects boxes, keeps those that survive class-agnostic NMS at test_nms_thresh,
        then :meth:`forward_with_given_boxes`. Returns ``(instances, {})``.
        """
        if self.training:
            if self.train_stage == "detector":
                return super().forward(images, features, proposals, targets)
            if targets is None or relations is None:
                raise ValueError(
                    f"{_FILE}:VRDROIHeads.forward: train_stage {self.train_stage!r} needs "
                    "targets (gold Instances) and relations (per image LongTensor[M, 3])"
                )
            trained = self._trained_parameters(self.train_stage)
            return [], self.relation_loss(self.pair_logits, trained, features, proposals, targets, relations)
        pred = self._forward_box(features, proposals)
        pred = [p[nms(p.pred_boxes.tensor, p.scores, self.test_nms_thresh).sort().values] for p in pred]
        return self.forward_with_given_boxes(features, pred), {}

    def forward_with_given_boxes(self, features: Dict[str, Tensor], instances: List[Instances]) -> List[Instances]:
        """StandardROIHeads' mask / keypoint heads on given boxes (none in the paper's model);
        with empty ``features`` (FEATURES "geometry" on given boxes) the instances are returned as they are."""
        assert not self.training
        if features and (self.mask_on or self.keypoint_on):
            instances = super().forward_with_given_boxes(features, instances)
        return instances

    def forward_relations(self, features: Dict[str, Tensor], instances: List[Instances]) -> List[Instances]:
        """Relations among given boxes (detections, or gold boxes in the gold-box modes).

        Args:
            features: backbone features of the batch (may be empty with FEATURES "geometry").
            instances: per image Instances with pred_boxes (input-image coordinates),
                pred_classes (read by "predcls") and scores (P(b), read with use_box_score).
        Returns:
            per image an Instances with the fields of RELATION_FIELDS, sorted by score descending
            (docs/DESIGN.md "Model output"), in input-image coordinates.
        """
        assert not self.training
        out = []
        for i, inst in enumerate(instances):
            feats_i = {k: v[i : i + 1] for k, v in features.items()} if features else {}
            out.append(self.relation_inference(self.pair_logits, self.prior, feats_i, inst))
        return out
