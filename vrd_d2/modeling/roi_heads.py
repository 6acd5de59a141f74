"""The relation ROI heads: StandardROIHeads (the Faster R-CNN detector) plus the paper's relation
head on box pairs, wired from its parts the way DensePose's ROI heads wire theirs:

- relation_predictor.py: box pairs -> CP log-factors and selection logits (a registry);
- relation_losses.py: the training pairs, ``loss_cp`` and ``loss_sel``;
- relation_inference.py: pairs -> decoded, scored triplets (the relation field);
- relation_prior.py: the triplet prior psi_u and its counts buffer.
"""

import copy
import logging
from typing import Dict, List, Optional, Tuple

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn
from torchvision.ops import nms

from .relation_inference import RELATION_FIELDS, RelationInference, empty_relations
from .relation_losses import RelationLoss
from .relation_predictor import build_relation_predictor
from .relation_prior import CountsPrior, check_triplet_counts, keep_training_counts

__all__ = ["VRDROIHeads", "empty_relations", "RELATION_FIELDS", "version1_key_now", "relation_box_head_from_detector"]

logger = logging.getLogger(__name__)
_FILE = "vrd_d2/modeling/roi_heads.py"


def version1_key_now(key: str, prefix: str, modules) -> Optional[str]:
    """The name a version-1 checkpoint key ``<prefix><module>.*`` (``module`` one of ``modules``, the
    relation predictor's submodules) has now, ``<prefix>relation_predictor.<module>.*``; None for
    any other key."""
    if not key.startswith(prefix) or key[len(prefix) :].split(".")[0] not in modules:
        return None
    return prefix + "relation_predictor." + key[len(prefix) :]


def relation_box_head_from_detector(state: dict, prefix: str) -> List[str]:
    """When ``state`` (a state dict, or ``{key: shape}``) has no ``<prefix>relation_box_head.*``
    key, add one per ``<prefix>box_head.*`` key with its value: the relation stages' copy of the box
    head (MODEL.VRD.FINETUNE_BOX_HEAD) starts from the detector's. Returns the keys added."""
    own, detector = prefix + "relation_box_head.", prefix + "box_head."
    if any(k.startswith(own) for k in state):
        return []
    added = [own + k[len(detector) :] for k in state if k.startswith(detector)]
    for k in added:
        state[k] = state[detector + k[len(own) :]]
    return added


def _drop_untrained_copy(heads, state_dict, prefix, local_metadata) -> None:
    """Stage 1 never trains the relation box head: its checkpoints hold none, so that stage 2
    copies the box head stage 1 trained instead of keeping the copy's random weights."""
    if heads.train_stage == "detector":
        for k in [k for k in state_dict if k.startswith(prefix + "relation_box_head.")]:
            del state_dict[k]


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
        relation_box_head: Optional[nn.Module] = None,
        **kwargs,
    ):
        """
        Args (besides StandardROIHeads'):
            relation_predictor: a RELATION_PREDICTOR_REGISTRY module (``pair_logits``).
            relation_loss: the losses of the training stage (its ``train_stage`` is the heads').
            relation_inference: the test-time scoring of pairs.
            triplet_counts: Tensor[S, P, S] training triplet counts, psi_u = their add-1 smoothed
                normalization (TripletPrior); None = no counts (uniform). The heads read no data:
                ``from_config`` leaves them None and the caller sets the counts of its training set
                (:meth:`set_triplet_counts`; the Trainer and VRDPredictor count DATASETS.TRAIN[0]).
                Saved in checkpoints (buffer ``triplet_counts``); a checkpoint with all-zero counts
                does not replace non-zero counts set from the training set (and the Trainer
                re-counts its own training set after loading: a checkpoint's counts are kept only
                for evaluation).
            test_nms_thresh: class-agnostic NMS on detected boxes before pairing (sgdet).
            relation_box_head: the relation stages' own box head (FEATURES "box_head" with
                FINETUNE_BOX_HEAD; None: they read the detector's). Stage 2 trains it; loading a
                checkpoint without it copies the detector's ``box_head``; the detector stage
                does not save it.
        """
        super().__init__(**kwargs)
        shape = (self.num_classes, relation_predictor.num_predicates, self.num_classes)
        self.relation_predictor = relation_predictor
        self.relation_loss = relation_loss
        self.relation_inference = relation_inference
        self.register_buffer("triplet_counts", check_triplet_counts(triplet_counts, shape, f"{_FILE}:VRDROIHeads"))
        # without counts the prior is the empty (uniform) one, built without reading any values:
        # the model can then be built on the meta device (engine/stage_inputs.py)
        self.prior = CountsPrior(*shape)
        if triplet_counts is not None:
            self.prior.set_counts(self.triplet_counts)
        self.test_nms_thresh = test_nms_thresh
        self.relation_box_head = relation_box_head
        if relation_box_head is not None:
            self.register_state_dict_post_hook(_drop_untrained_copy)

    @classmethod
    def from_config(cls, cfg, input_shape):
        """``cfg``: resolved by :func:`~vrd_d2.config.resolve_vrd_config` (VRDRCNN.from_config)."""
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_relation_head(cfg, input_shape, box_feature_dim=ret["box_head"].output_shape.channels))
        if cfg.MODEL.VRD.FINETUNE_BOX_HEAD and cfg.MODEL.VRD.FEATURES == "box_head":
            ret["relation_box_head"] = copy.deepcopy(ret["box_head"])
        return ret

    @classmethod
    def _init_relation_head(cls, cfg, input_shape: Dict[str, ShapeSpec], *, box_feature_dim: int):
        return {
            "relation_predictor": build_relation_predictor(cfg, input_shape, box_feature_dim=box_feature_dim),
            "relation_loss": RelationLoss(cfg),
            "relation_inference": RelationInference(cfg),
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
        if self.relation_box_head is not None and relation_box_head_from_detector(state_dict, prefix):
            logger.info(f"{prefix}relation_box_head: none in the checkpoint, copied from {prefix}box_head")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        self.prior.set_counts(self.triplet_counts)

    def _rename_version1_keys(self, state_dict, prefix: str) -> None:
        """Version-1 checkpoints hold the branches at ``roi_heads.<branch>.*``: move them under
        ``roi_heads.relation_predictor.``. As fvcore's checkpointer does for the other keys, a
        tensor whose shape differs from the model's is skipped with a warning."""
        own = self.relation_predictor.state_dict()
        predictor = self.relation_predictor
        moved = set(predictor.trainable_modules("triplet") + predictor.trainable_modules("selection"))
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
        own = ("relation_box_head",) if stage == "triplet" and self.relation_box_head is not None else ()
        return own + tuple("relation_predictor." + m for m in self.relation_predictor.trainable_modules(stage))

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
        """The predictor's ``pair_logits`` with the box head (the relation stages' own copy when
        there is one, else the detector's) as its "box_head" features."""
        return self.relation_predictor.pair_logits(
            features, boxes, pairs, image_sizes, box_features=self._box_head_features, **kwargs
        )

    def _box_head_features(self, features: Dict[str, Tensor], boxes: List[Boxes]) -> Tensor:
        """[sum B_i, D] the box head (fc7) on boxes."""
        maps = [features[f] for f in self.box_in_features]
        head = self.box_head if self.relation_box_head is None else self.relation_box_head
        return head(self.box_pooler(maps, boxes)).flatten(1)

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
