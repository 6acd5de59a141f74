"""The relation ROI heads: StandardROIHeads (the Faster R-CNN detector) plus the paper's relation
head on box pairs.

For an ordered pair of boxes (b_s, b_o) the head predicts the log-factors of the rank-R CP
distribution over (subject, predicate, object) (eq. 5-6):

    s_s = f_s(ROIAlign(b_s))                      [R, |X_s|]
    s_p = f_p([ROIAlign(b_s U b_o), g(masks)])    [R, |X_p|]   g: the 2x64x64 spatial-mask branch
    s_o = f_o(ROIAlign(b_o))                      [R, |X_o|]

and the selection head P(X_sel = 1 | b_s, b_o) = sigmoid(h([ROIAlign(b_s U b_o), g(masks)])),
the probability that annotators labelled the pair. The test-time score of a triplet t in a pair is

    P(b_s) P(b_o) * psi_c(t) psi_u(t) * P(X_sel | b_s, b_o)

(box scores, CP distribution, triplet prior, selection), decoded exactly per pair (decode.py).
With ``geometry_only`` every branch reads [pair_geometry(b_s, b_o), g(masks)] instead of image
features.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm

from ..config import MODES, TRAIN_STAGES
from .cp_triplet import TripletPrior, cp_nll_loss, crf_log_normalizer
from .decode import topk_per_image, topk_predicates_given_labels, topk_triplets_per_pair
from .pairs import all_ordered_pairs, cap_pairs, match_proposals_to_gt, pair_triplets
from .spatial import PAIR_GEOMETRY_DIM, SpatialMaskBranch, pair_geometry, spatial_masks, union_boxes

__all__ = ["VRDROIHeads", "MLP", "empty_relations", "RELATION_FIELDS"]

logger = logging.getLogger(__name__)
_FILE = "vrd_d2/modeling/roi_heads.py"

# the relation field of the model output (docs/DESIGN.md "Model output")
RELATION_FIELDS = ("pair_indices", "subject_boxes", "object_boxes", "subject_classes",
                   "predicate_classes", "object_classes", "scores", "pair_rank")
# modules trained by each MODEL.VRD.TRAIN_STAGE other than "detector" (attributes of the heads)
TRIPLET_MODULES = ("spatial_branch", "subject_branch", "predicate_branch", "object_branch")
SELECTION_MODULES = ("selection_head",)


class MLP(nn.Sequential):
    """Linear + ReLU for each hidden dim, then a Linear to ``out_dim`` with small weights (the
    output starts close to its bias) and a bias drawn from N(0, bias_std^2) (0: zeros)."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, bias_std: float = 0.0):
        layers, d = [], in_dim
        for h in hidden_dims:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        last = nn.Linear(d, out_dim)
        nn.init.normal_(last.weight, std=0.01)
        if bias_std > 0:
            nn.init.normal_(last.bias, std=bias_std)
        else:
            nn.init.zeros_(last.bias)
        super().__init__(*layers, last)


class _CountsPrior(TripletPrior):
    """The TripletPrior of VRDROIHeads, rebuilt from its ``triplet_counts`` buffer. Its own
    (data-dependent, variable-size) buffers are not saved: fvcore's checkpointer skips tensors
    whose shape differs from the model's, so a sparse prior could not load into a fresh model."""

    def register_buffer(self, name, tensor, persistent=True):
        super().register_buffer(name, tensor, persistent=False)


def _mean_over_workers(count: int, device) -> float:
    """``count`` averaged over the processes of a distributed run (``count`` in one process), >= 1.

    A per-process sum divided by it makes DDP's mean of the gradients the gradient of the mean
    over every process's items: N processes train like one process with the whole batch, even
    when images carry different numbers of annotated pairs.
    """
    world = comm.get_world_size()
    if world == 1:
        return float(max(count, 1))
    t = torch.tensor([float(count)], device=device)
    torch.distributed.all_reduce(t)
    return max(t.item() / world, 1.0 / world)


def empty_relations(image_size, device=None) -> Instances:
    """A relation field with 0 rows (images with fewer than 2 boxes)."""
    z = torch.zeros(0, dtype=torch.long, device=device)
    return Instances(
        image_size, pair_indices=torch.zeros((0, 2), dtype=torch.long, device=device),
        subject_boxes=Boxes(torch.zeros((0, 4), device=device)), object_boxes=Boxes(torch.zeros((0, 4), device=device)),
        subject_classes=z, predicate_classes=z.clone(), object_classes=z.clone(),
        scores=torch.zeros(0, device=device), pair_rank=z.clone(),
    )


@ROI_HEADS_REGISTRY.register()
class VRDROIHeads(StandardROIHeads):
    """StandardROIHeads plus the CP relation head, the selection head and the triplet prior.

    Training (``train_stage``): "detector" trains the StandardROIHeads losses only; "triplet"
    returns ``loss_cp`` (cp_nll_loss over annotated pairs of gold boxes, or of proposals matched to
    them); "selection" returns ``loss_sel`` (binary cross-entropy on annotated vs. sampled null
    pairs). Inference: ``forward`` detects boxes (sgdet), ``forward_with_given_boxes`` takes them
    from the caller (gold-box modes); both return ``(instances, relations)``.
    """

    @configurable
    def __init__(
        self,
        *,
        relation_in_features: List[str],
        relation_pooler: ROIPooler,
        box_feature_dim: int,
        num_predicates: int,
        rank: int,
        fc_dims: Sequence[int],
        selection_fc_dim: int,
        spatial_dim: int,
        spatial_mask_size: int,
        spatial_conv_dims: Sequence[int],
        triplet_counts: Optional[Tensor] = None,
        use_prior: bool = True,
        use_cp: bool = True,
        use_selection: bool = True,
        use_box_score: bool = True,
        geometry_only: bool = False,
        use_box_head_features: bool = False,
        mode: str = "sgdet",
        train_stage: str = "detector",
        train_on_proposals: bool = False,
        proposals_per_gt: int = 4,
        proposal_iou: float = 0.5,
        max_pairs_per_image: int = 10000,
        selection_neg_per_pos: float = 1.0,
        test_topk_per_image: int = 100,
        test_k_per_pair: Sequence[int] = (1, 10, 0),
        test_nms_thresh: float = 0.7,
        test_pair_batch: int = 1024,
        cp_init_bias_std: float = 0.0,
        **kwargs,
    ):
        """
        Args (besides StandardROIHeads'):
            relation_in_features: feature maps the relation pooler reads.
            relation_pooler: ROIPooler for subject, object and union boxes.
            box_feature_dim: C * res * res of one pooled box.
            num_predicates: |X_p|; |X_s| = |X_o| = ``num_classes``.
            rank: R of the CP decomposition.
            fc_dims: hidden FC sizes of each factor branch.
            selection_fc_dim: hidden FC size of the selection head.
            cp_init_bias_std: std of the initial output biases of the factor branches (0: zeros;
                random biases make the R components differ from the first step).
            spatial_dim, spatial_mask_size, spatial_conv_dims: the spatial-mask branch.
            triplet_counts: Tensor[S, P, S] training triplet counts, psi_u = their add-1 smoothed
                normalization (TripletPrior); None = no counts (uniform). Saved in checkpoints
                (buffer ``triplet_counts``); a checkpoint with all-zero counts does not replace
                non-zero counts built from the training set.
            use_prior, use_selection, use_box_score: test-time score terms (ablations).
            use_cp: False replaces psi_c by the uniform distribution at test time, so the
                triplet score is the frequency prior alone (the baseline of the ablations).
            geometry_only: branches read pair geometry + masks only (no image features).
            use_box_head_features: branches read box_head(box_pooler(box)) (the detector's fc7)
                of subject, object and union boxes instead of relation_pooler features.
            mode: "sgdet" | "phrase_cls" | "predcls".
            train_stage: "detector" | "triplet" | "selection".
            train_on_proposals: pair proposals matched to gold boxes instead of gold boxes.
            proposals_per_gt, proposal_iou: the proposal matching of train_on_proposals.
            max_pairs_per_image: cap on ordered pairs per image (logged when hit).
            selection_neg_per_pos: null pairs sampled per annotated pair for loss_sel.
            test_topk_per_image, test_k_per_pair: output = union over k in test_k_per_pair of the
                top test_topk_per_image triplets with at most k per pair (0 = free k).
            test_nms_thresh: class-agnostic NMS on detected boxes before pairing (sgdet).
            test_pair_batch: pairs per forward chunk at test (bounds peak memory).
        """
        super().__init__(**kwargs)
        ctx = f"{_FILE}:VRDROIHeads"
        if mode not in MODES:
            raise ValueError(f"{ctx}: MODEL.VRD.MODE must be one of {MODES}, found {mode!r}")
        if train_stage not in TRAIN_STAGES:
            raise ValueError(f"{ctx}: MODEL.VRD.TRAIN_STAGE must be one of {TRAIN_STAGES}, found {train_stage!r}")
        shape = (self.num_classes, num_predicates, self.num_classes)
        if triplet_counts is None:
            triplet_counts = torch.zeros(shape)
        triplet_counts = torch.as_tensor(triplet_counts, dtype=torch.float32)
        if tuple(triplet_counts.shape) != shape:
            raise ValueError(f"{ctx}: triplet_counts shape {tuple(triplet_counts.shape)} != (NUM_CLASSES, "
                             f"NUM_PREDICATES, NUM_CLASSES) = {shape}")
        self.relation_in_features = list(relation_in_features)
        self.relation_pooler = relation_pooler
        self.num_predicates = num_predicates
        self.rank = rank
        self.geometry_only = geometry_only
        self.use_box_head_features = use_box_head_features
        if use_box_head_features:
            box_feature_dim = self.box_head.output_shape.channels
        self.spatial_branch = SpatialMaskBranch(spatial_mask_size, spatial_conv_dims, spatial_dim)
        s, p = self.num_classes, num_predicates
        if geometry_only:
            pair_dim = PAIR_GEOMETRY_DIM + spatial_dim
            box_dim = pair_dim
        else:
            pair_dim = box_feature_dim + spatial_dim
            box_dim = box_feature_dim
        self.subject_branch = MLP(box_dim, fc_dims, rank * s, bias_std=cp_init_bias_std)
        self.object_branch = MLP(box_dim, fc_dims, rank * s, bias_std=cp_init_bias_std)
        self.predicate_branch = MLP(pair_dim, fc_dims, rank * p, bias_std=cp_init_bias_std)
        self.selection_head = MLP(pair_dim, [selection_fc_dim], 1)
        self.register_buffer("triplet_counts", triplet_counts)
        self.prior = _CountsPrior.from_counts(triplet_counts)
        self.use_prior, self.use_selection, self.use_box_score = use_prior, use_selection, use_box_score
        self.use_cp = use_cp
        self.mode, self.train_stage = mode, train_stage
        self.train_on_proposals = train_on_proposals
        self.proposals_per_gt, self.proposal_iou = proposals_per_gt, proposal_iou
        self.max_pairs_per_image = max_pairs_per_image
        self.selection_neg_per_pos = selection_neg_per_pos
        self.test_topk_per_image = test_topk_per_image
        self.test_k_per_pair = [int(k) for k in test_k_per_pair]
        self.test_nms_thresh = test_nms_thresh
        self.test_pair_batch = max(1, int(test_pair_batch))

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_relation_head(cfg, input_shape))
        return ret

    @classmethod
    def _init_relation_head(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        v = cfg.MODEL.VRD
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"{_FILE}: MODEL.ROI_HEADS.IN_FEATURES {in_features} must have equal channels, found {channels}")
        res = v.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=res,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        s, p = cfg.MODEL.ROI_HEADS.NUM_CLASSES, v.NUM_PREDICATES
        counts = None
        if v.USE_PRIOR and len(cfg.DATASETS.TRAIN):
            from ..data import get_triplet_counts  # the data role's module; imported lazily

            name = cfg.DATASETS.TRAIN[0]
            counts = get_triplet_counts(name)
            if tuple(counts.shape) != (s, p, s):
                raise ValueError(f"{_FILE}: get_triplet_counts({name!r}) has shape {tuple(counts.shape)}, the "
                                 f"config expects (MODEL.ROI_HEADS.NUM_CLASSES, MODEL.VRD.NUM_PREDICATES, "
                                 f"NUM_CLASSES) = {(s, p, s)}")
            counts = torch.tensor(counts, dtype=torch.float32)  # a copy: the cached counts stay read-only
        return {
            "relation_in_features": list(in_features),
            "relation_pooler": pooler,
            "box_feature_dim": channels.pop() * res * res,
            "num_predicates": p,
            "rank": v.RANK,
            "fc_dims": list(v.FC_DIMS),
            "selection_fc_dim": v.SELECTION_FC_DIM,
            "cp_init_bias_std": v.CP_INIT_BIAS_STD,
            "spatial_dim": v.SPATIAL_DIM,
            "spatial_mask_size": v.SPATIAL_MASK_SIZE,
            "spatial_conv_dims": list(v.SPATIAL_CONV_DIMS),
            "triplet_counts": counts,
            "use_prior": v.USE_PRIOR,
            "use_cp": v.USE_CP,
            "use_selection": v.USE_SELECTION,
            "use_box_score": v.USE_BOX_SCORE,
            "geometry_only": v.GEOMETRY_ONLY,
            "use_box_head_features": v.USE_BOX_HEAD_FEATURES,
            "mode": v.MODE,
            "train_stage": v.TRAIN_STAGE,
            "train_on_proposals": v.TRAIN_ON_PROPOSALS,
            "proposals_per_gt": v.PROPOSALS_PER_GT,
            "proposal_iou": v.PROPOSAL_IOU,
            "max_pairs_per_image": v.MAX_PAIRS_PER_IMAGE,
            "selection_neg_per_pos": v.SELECTION_NEG_PER_POS,
            "test_topk_per_image": v.TEST.TOPK_PER_IMAGE,
            "test_k_per_pair": list(v.TEST.K_PER_PAIR),
            "test_nms_thresh": v.TEST.NMS_THRESH,
            "test_pair_batch": v.TEST.PAIR_BATCH,
        }

    def set_triplet_counts(self, counts) -> None:
        """Replace the counts (Tensor/ndarray [S, P, S]) and the prior psi_u built from them."""
        counts = torch.as_tensor(counts, dtype=torch.float32, device=self.triplet_counts.device)
        if counts.shape != self.triplet_counts.shape:
            raise ValueError(f"{_FILE}:set_triplet_counts: shape {tuple(counts.shape)} != {tuple(self.triplet_counts.shape)}")
        self.triplet_counts.copy_(counts)
        self.prior.set_counts(counts)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "triplet_counts"
        incoming = state_dict.get(key)
        if incoming is not None and float(incoming.sum()) == 0 and float(self.triplet_counts.sum()) > 0:
            logger.info("vrd_d2: the checkpoint's triplet prior is empty: keeping the one built from the training set")
            state_dict[key] = self.triplet_counts.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.prior.set_counts(self.triplet_counts)

    # ------------------------------------------------------------------------------ stages
    def trainable_modules(self, stage: str) -> Tuple[str, ...]:
        """Attribute names of the relation modules trained in ``stage`` ("detector": none)."""
        return {"detector": (), "triplet": TRIPLET_MODULES, "selection": SELECTION_MODULES}[stage]

    def relation_modules(self) -> Tuple[str, ...]:
        return TRIPLET_MODULES + SELECTION_MODULES

    # ------------------------------------------------------------------------------ features
    def _pair_logits(self, features: Dict[str, Tensor], boxes: List[Tensor], pairs: List[Tensor],
                     image_sizes: List[Tuple[int, int]], want_cp: bool = True, want_sel: bool = True):
        """CP log-factors and selection logits of the pairs of a batch.

        Args:
            features: backbone features (unused with geometry_only; may then be empty).
            boxes: per image Tensor[B_i, 4] XYXY_ABS (input-image coordinates).
            pairs: per image LongTensor[N_i, 2] rows into boxes[i].
            image_sizes: per image (h, w).
        Returns:
            dict with ``s_s`` [N, R, S], ``s_p`` [N, R, P], ``s_o`` [N, R, S] (want_cp) and
            ``sel`` [N] logits (want_sel), N = sum N_i, images concatenated in order.
        """
        sub = cat([b[p[:, 0]] for b, p in zip(boxes, pairs)], 0)
        obj = cat([b[p[:, 1]] for b, p in zip(boxes, pairs)], 0)
        n = sub.shape[0]
        spatial = self.spatial_branch(spatial_masks(sub, obj, self.spatial_branch.mask_size))
        if self.geometry_only:
            geo = cat([pair_geometry(b[p[:, 0]], b[p[:, 1]], sz) for b, p, sz in zip(boxes, pairs, image_sizes)], 0)
            pair_feat = torch.cat((geo, spatial), 1)
            sub_in = obj_in = pair_feat
            s_index = o_index = None
        else:
            unions = [Boxes(union_boxes(b[p[:, 0]], b[p[:, 1]])) for b, p in zip(boxes, pairs)]
            pair_feat = torch.cat((self._roi_features(features, unions), spatial), 1)
            box_feat = self._roi_features(features, [Boxes(b) for b in boxes])
            offsets = [0]
            for b in boxes[:-1]:
                offsets.append(offsets[-1] + b.shape[0])
            s_index = cat([p[:, 0] + o for p, o in zip(pairs, offsets)], 0)
            o_index = cat([p[:, 1] + o for p, o in zip(pairs, offsets)], 0)
            sub_in = obj_in = box_feat
        out = {}
        if want_cp:
            r, s, p = self.rank, self.num_classes, self.num_predicates
            s_s = self.subject_branch(sub_in)
            s_o = self.object_branch(obj_in)
            if s_index is not None:  # branches run once per box, then each pair picks its boxes
                s_s, s_o = s_s[s_index], s_o[o_index]
            out["s_s"] = s_s.view(n, r, s)
            out["s_o"] = s_o.view(n, r, s)
            out["s_p"] = self.predicate_branch(pair_feat).view(n, r, p)
        if want_sel:
            out["sel"] = self.selection_head(pair_feat).view(n)
        return out

    def _roi_features(self, features: Dict[str, Tensor], boxes: List[Boxes]) -> Tensor:
        """[sum B_i, D] features of boxes: flattened ROIAlign, or the detector's box head on them."""
        if self.use_box_head_features:
            maps = [features[f] for f in self.box_in_features]
            return self.box_head(self.box_pooler(maps, boxes)).flatten(1)
        maps = [features[f] for f in self.relation_in_features]
        return self.relation_pooler(maps, boxes).flatten(1)

    # ------------------------------------------------------------------------------ training
    def forward(self, images, features, proposals, targets=None, relations: Optional[List[Tensor]] = None):
        """
        Training, train_stage "detector": StandardROIHeads.forward. Other stages: returns
        ``([], {"loss_cp"})`` or ``([], {"loss_sel"})``; ``targets`` are the gold Instances
        (gt_boxes, gt_classes) and ``relations`` per image LongTensor[M_i, 3] (subject row, object
        row, predicate). ``proposals`` (RPN) are used only with train_on_proposals.

        Inference: detects boxes (class-agnostic NMS at test_nms_thresh on the detections), then
        :meth:`forward_with_given_boxes`. Returns (instances, relations).
        """
        if self.training:
            if self.train_stage == "detector":
                return super().forward(images, features, proposals, targets)
            if targets is None or relations is None:
                raise ValueError(f"{_FILE}:VRDROIHeads.forward: train_stage {self.train_stage!r} needs "
                                 "targets (gold Instances) and relations (per image LongTensor[M, 3])")
            return [], self._relation_losses(features, proposals, targets, relations)
        pred = self._forward_box(features, proposals)
        pred = [p[nms(p.pred_boxes.tensor, p.scores, self.test_nms_thresh).sort().values] for p in pred]
        return self.forward_with_given_boxes(features, pred)

    def _training_pairs(self, proposals, targets, relations):
        """Per image: (boxes [B, 4], pairs [N, 2], triplets [T, 3], pair_index [T], annotated [N] bool)."""
        out = []
        for i, (gt, rel) in enumerate(zip(targets, relations)):
            if self.train_on_proposals:
                p_idx, g_idx = match_proposals_to_gt(proposals[i].proposal_boxes, gt.gt_boxes,
                                                     self.proposals_per_gt, self.proposal_iou)
                boxes = proposals[i].proposal_boxes.tensor[p_idx].detach()
            else:
                boxes = gt.gt_boxes.tensor
                g_idx = torch.arange(len(gt), device=boxes.device)
            pairs = all_ordered_pairs(boxes.shape[0], boxes.device)
            if self.train_on_proposals:  # two proposals of the same gold box are not a pair
                pairs = pairs[g_idx[pairs[:, 0]] != g_idx[pairs[:, 1]]]
            _, pidx = pair_triplets(pairs, g_idx, gt.gt_classes, rel)
            annotated = torch.zeros(pairs.shape[0], dtype=torch.bool, device=boxes.device)
            annotated[pidx] = True
            if self.train_stage == "triplet":
                # pairs without a triplet add 0 to cp_nll_loss: score only annotated pairs
                keep = annotated.nonzero().squeeze(1)
            else:  # selection: all annotated pairs and a random sample of null pairs
                pos = annotated.nonzero().squeeze(1)
                neg = (~annotated).nonzero().squeeze(1)
                n_neg = min(neg.numel(), int(math.ceil(self.selection_neg_per_pos * pos.numel())))
                neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
                keep = torch.cat((pos, neg)).sort().values
            pairs, annotated = pairs[keep], annotated[keep]
            capped = cap_pairs(torch.cat((pairs, torch.arange(pairs.shape[0], device=pairs.device)[:, None]), 1),
                               self.max_pairs_per_image, annotated.float(), " (training)")
            pairs, annotated = capped[:, :2], annotated[capped[:, 2]]
            trip, pidx = pair_triplets(pairs, g_idx, gt.gt_classes, rel)
            out.append((boxes, pairs, trip, pidx, annotated))
        return out

    def _zero_loss(self, stage: str) -> Tensor:
        # a 0 connected to every trained parameter, so DDP sees them all used
        params = [p for m in self.trainable_modules(stage) for p in getattr(self, m).parameters()]
        return sum(p.sum() for p in params) * 0.0

    def _relation_losses(self, features, proposals, targets, relations) -> Dict[str, Tensor]:
        per_image = self._training_pairs(proposals, targets, relations)
        stage = self.train_stage
        name = "loss_cp" if stage == "triplet" else "loss_sel"
        if sum(x[1].shape[0] for x in per_image) == 0:
            zero = self._zero_loss(stage)
            if stage == "triplet":  # the other processes' loss waits for this process's count
                _mean_over_workers(0, zero.device)
            return {name: zero}
        boxes = [x[0] for x in per_image]
        pairs = [x[1] for x in per_image]
        sizes = [t.image_size for t in targets]
        out = self._pair_logits(features, boxes, pairs, sizes, want_cp=stage == "triplet", want_sel=stage == "selection")
        if stage == "triplet":
            offs, trips, pidx = 0, [], []
            for _, p, t, pi, _ in per_image:
                trips.append(t)
                pidx.append(pi + offs)
                offs += p.shape[0]
            pidx = cat(pidx, 0)
            loss = cp_nll_loss(out["s_s"], out["s_p"], out["s_o"], cat(trips, 0), pidx, reduction="sum")
            loss = loss / _mean_over_workers(torch.unique(pidx).numel(), loss.device)
            return {name: loss + self._zero_loss(stage)}
        target = cat([x[4] for x in per_image], 0).to(out["sel"].dtype)
        return {name: F.binary_cross_entropy_with_logits(out["sel"], target)}

    # ------------------------------------------------------------------------------ inference
    def forward_with_given_boxes(self, features: Dict[str, Tensor], instances: List[Instances]):
        """Relations among given boxes (detections, or gold boxes in the gold-box modes).

        Args:
            features: backbone features (may be empty with geometry_only).
            instances: per image Instances with pred_boxes (input-image coordinates),
                pred_classes (used by "predcls") and scores (P(b), used with use_box_score).
        Returns:
            (instances, relations): ``instances`` after StandardROIHeads' mask/keypoint heads (none
            here); ``relations`` per image an Instances with the fields of RELATION_FIELDS, sorted by
            score descending (docs/DESIGN.md "Model output"), in input-image coordinates.
        """
        assert not self.training
        if features and (self.mask_on or self.keypoint_on):
            instances = super().forward_with_given_boxes(features, instances)
        relations = []
        for i, inst in enumerate(instances):
            feats_i = {k: v[i : i + 1] for k, v in features.items()} if features else {}
            relations.append(self._relations_one_image(feats_i, inst))
        return instances, relations

    def _relations_one_image(self, features: Dict[str, Tensor], inst: Instances) -> Instances:
        boxes = inst.pred_boxes.tensor
        dev = boxes.device
        n = boxes.shape[0]
        if n < 2:
            return empty_relations(inst.image_size, dev)
        log_box = inst.scores.clamp(min=1e-12).log() if (self.use_box_score and inst.has("scores")) else boxes.new_zeros(n)
        pairs = all_ordered_pairs(n, dev)
        pairs = cap_pairs(pairs, self.max_pairs_per_image, log_box[pairs[:, 0]] + log_box[pairs[:, 1]], " (test)")
        prior = self.prior if self.use_prior else None
        topk = self.test_topk_per_image
        scores, triplets = [], []
        for a in range(0, pairs.shape[0], self.test_pair_batch):
            chunk = pairs[a : a + self.test_pair_batch]
            out = self._pair_logits(features, [boxes], [chunk], [inst.image_size], want_cp=True, want_sel=self.use_selection)
            if not self.use_cp:  # all log-factors equal: psi_c is uniform
                out.update({k: torch.zeros_like(out[k]) for k in ("s_s", "s_p", "s_o")})
            weight = log_box[chunk[:, 0]] + log_box[chunk[:, 1]]
            if self.use_selection:
                weight = weight + F.logsigmoid(out["sel"])
            if self.mode == "predcls":
                cls = inst.pred_classes
                # labels are given (gold or a detector's): score = P(b_s) P(b_o) P(p | s, o, b) P(X_sel)
                v, t = topk_predicates_given_labels(out["s_s"], out["s_p"], out["s_o"], cls[chunk[:, 0]],
                                                    cls[chunk[:, 1]], topk, prior=prior, pair_log_weight=weight,
                                                    normalize=True)
            else:
                if prior is not None:  # P(t | b) = psi_c psi_u / sum_t psi_c psi_u, a distribution per pair
                    weight = weight - crf_log_normalizer(out["s_s"], out["s_p"], out["s_o"], prior).to(weight)
                v, t = topk_triplets_per_pair(out["s_s"], out["s_p"], out["s_o"], topk, prior=prior, pair_log_weight=weight)
            scores.append(v)
            triplets.append(t)
        scores, triplets = torch.cat(scores), torch.cat(triplets)
        kk = scores.shape[1]
        # union over k of "top-K with at most k per pair", keyed by (pair, rank within pair)
        keys = []
        for k in self.test_k_per_pair:
            pi, _, _, rank = topk_per_image(scores, triplets, k, topk)
            keys.append(pi * kk + rank)
        keys = torch.unique(torch.cat(keys))
        pi, rank = keys // kk, keys % kk
        sc = scores[pi, rank]
        order = sc.argsort(descending=True, stable=True)
        pi, rank, sc = pi[order], rank[order], sc[order]
        trip = triplets[pi, rank]
        pair = pairs[pi]
        return Instances(
            inst.image_size,
            pair_indices=pair,
            subject_boxes=Boxes(boxes[pair[:, 0]]),
            object_boxes=Boxes(boxes[pair[:, 1]]),
            subject_classes=trip[:, 0],
            predicate_classes=trip[:, 1],
            object_classes=trip[:, 2],
            scores=sc.exp(),
            pair_rank=rank,
        )
