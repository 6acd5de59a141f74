"""The relation predictor: box pairs -> the CP log-factors and the selection logit (eq. 5-6).

For an ordered pair of boxes (b_s, b_o):

    s_s = f_s(x(b_s))                         [R, |X_s|]
    s_p = f_p([x(b_s U b_o), g(masks)])       [R, |X_p|]   g: the 2x64x64 spatial-mask branch
    s_o = f_o(x(b_o))                         [R, |X_o|]
    sel = h([x(b_s U b_o), g(masks)])         logit of P(X_sel = 1 | b_s, b_o)

where the box feature x is chosen by ``MODEL.VRD.FEATURES``: "roi_align" (flattened ROIAlign of
the conv features), "box_head" (the detector's box head on its own pooler: fc7) or "geometry"
(every branch reads [pair_geometry(b_s, b_o), g(masks)], no image features).

Like DensePose's predictors and PointRend's point heads, predictors live in a registry
(RELATION_PREDICTOR_REGISTRY); ``MODEL.VRD.PREDICTOR_NAME`` picks one.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from .spatial import PAIR_GEOMETRY_DIM, SpatialMaskBranch, pair_geometry, spatial_masks, union_boxes

__all__ = [
    "RELATION_PREDICTOR_REGISTRY",
    "build_relation_predictor",
    "CPRelationPredictor",
    "MLP",
    "TRIPLET_MODULES",
    "SELECTION_MODULES",
]

_FILE = "vrd_d2/modeling/relation_predictor.py"

RELATION_PREDICTOR_REGISTRY = Registry("RELATION_PREDICTOR")
RELATION_PREDICTOR_REGISTRY.__doc__ = """
Registry for relation predictors: box pairs -> CP log-factors (s_s, s_p, s_o) and selection logits.
The registered object is called with ``obj(cfg, input_shape, box_feature_dim=...)`` and must have
``num_predicates``, ``pair_logits`` and ``trainable_modules`` as :class:`CPRelationPredictor`.
"""

# submodules trained by each MODEL.VRD.TRAIN_STAGE other than "detector" (attributes of the predictor)
TRIPLET_MODULES = ("spatial_branch", "subject_branch", "predicate_branch", "object_branch")
SELECTION_MODULES = ("selection_head",)

# (features, boxes) -> Tensor[sum B_i, D]: the detector's box head on List[Boxes] (FEATURES "box_head")
BoxFeatureFn = Callable[[Dict[str, Tensor], List[Boxes]], Tensor]


def build_relation_predictor(
    cfg, input_shape: Optional[Dict[str, ShapeSpec]] = None, *, box_feature_dim: Optional[int] = None
) -> nn.Module:
    """The predictor named by ``cfg.MODEL.VRD.PREDICTOR_NAME``.

    Args:
        input_shape: backbone output shapes (needed with FEATURES "roi_align").
        box_feature_dim: width of the detector's box-head output (needed with FEATURES "box_head").
    """
    return RELATION_PREDICTOR_REGISTRY.get(cfg.MODEL.VRD.PREDICTOR_NAME)(
        cfg, input_shape, box_feature_dim=box_feature_dim
    )


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


@RELATION_PREDICTOR_REGISTRY.register()
class CPRelationPredictor(nn.Module):
    """The paper's relation head: the spatial-mask branch, the subject / predicate / object factor
    branches of the rank-R CP decomposition and the selection head."""

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        num_predicates: int,
        rank: int,
        fc_dims: Sequence[int],
        selection_fc_dim: int,
        spatial_dim: int,
        spatial_mask_size: int,
        spatial_conv_dims: Sequence[int],
        pair_features: str = "roi_align",
        box_feature_dim: int = 0,
        in_features: Sequence[str] = (),
        pooler: Optional[ROIPooler] = None,
        cp_init_bias_std: float = 0.0,
    ):
        """
        Args:
            num_classes: |X_s| = |X_o|; num_predicates: |X_p|.
            rank: R of the CP decomposition.
            fc_dims: hidden FC sizes of each factor branch.
            selection_fc_dim: hidden FC size of the selection head.
            spatial_dim, spatial_mask_size, spatial_conv_dims: the spatial-mask branch.
            pair_features: "roi_align" | "box_head" | "geometry" (MODEL.VRD.FEATURES).
            box_feature_dim: width D of one box feature ("roi_align": C * res * res; "box_head":
                the box head's output width; unused with "geometry").
            in_features: feature maps the ``pooler`` reads ("roi_align").
            pooler: ROIPooler of subject, object and union boxes ("roi_align").
            cp_init_bias_std: std of the initial output biases of the factor branches (0: zeros;
                random biases make the R components differ from the first step).
        """
        super().__init__()
        if pair_features == "roi_align" and pooler is None:
            raise ValueError(f"{_FILE}: FEATURES 'roi_align' needs a pooler (and in_features)")
        self.pair_features = pair_features
        self.in_features = list(in_features)
        self.pooler = pooler
        self.num_classes, self.num_predicates, self.rank = num_classes, num_predicates, rank
        # creation order = the order random initial weights are drawn (kept for reproducibility)
        self.spatial_branch = SpatialMaskBranch(spatial_mask_size, spatial_conv_dims, spatial_dim)
        if pair_features == "geometry":
            pair_dim = box_dim = PAIR_GEOMETRY_DIM + spatial_dim
        else:
            pair_dim, box_dim = box_feature_dim + spatial_dim, box_feature_dim
        s, p = num_classes, num_predicates
        self.subject_branch = MLP(box_dim, fc_dims, rank * s, bias_std=cp_init_bias_std)
        self.object_branch = MLP(box_dim, fc_dims, rank * s, bias_std=cp_init_bias_std)
        self.predicate_branch = MLP(pair_dim, fc_dims, rank * p, bias_std=cp_init_bias_std)
        self.selection_head = MLP(pair_dim, [selection_fc_dim], 1)

    @classmethod
    def from_config(
        cls, cfg, input_shape: Optional[Dict[str, ShapeSpec]] = None, *, box_feature_dim: Optional[int] = None
    ):
        v = cfg.MODEL.VRD
        pair_features = v.FEATURES  # resolved by vrd_d2.config.resolve_vrd_config
        ret = {
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "num_predicates": v.NUM_PREDICATES,
            "rank": v.RANK,
            "fc_dims": list(v.FC_DIMS),
            "selection_fc_dim": v.SELECTION_FC_DIM,
            "spatial_dim": v.SPATIAL_DIM,
            "spatial_mask_size": v.SPATIAL_MASK_SIZE,
            "spatial_conv_dims": list(v.SPATIAL_CONV_DIMS),
            "pair_features": pair_features,
            "cp_init_bias_std": v.CP_INIT_BIAS_STD,
        }
        if pair_features == "box_head":
            if box_feature_dim is None:
                raise ValueError(
                    f"{_FILE}: MODEL.VRD.FEATURES 'box_head' needs the box head's output width " "(box_feature_dim)"
                )
            ret["box_feature_dim"] = box_feature_dim
        elif pair_features == "roi_align":
            ret.update(cls._init_pooler(cfg, input_shape))
        return ret

    @staticmethod
    def _init_pooler(cfg, input_shape: Optional[Dict[str, ShapeSpec]]):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if input_shape is None or any(f not in input_shape for f in in_features):
            raise ValueError(
                f"{_FILE}: MODEL.VRD.FEATURES 'roi_align' needs the shapes of MODEL.ROI_HEADS.IN_FEATURES "
                f"{in_features}, found {sorted(input_shape or {})}"
            )
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(
                f"{_FILE}: MODEL.ROI_HEADS.IN_FEATURES {in_features} must have equal channels, found {channels}"
            )
        res = cfg.MODEL.VRD.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=res,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        return {"in_features": in_features, "pooler": pooler, "box_feature_dim": channels.pop() * res * res}

    def trainable_modules(self, stage: str) -> Tuple[str, ...]:
        """Attribute names of the submodules trained in ``stage`` ("detector": none)."""
        return {"detector": (), "triplet": TRIPLET_MODULES, "selection": SELECTION_MODULES}[stage]

    def pair_logits(
        self,
        features: Dict[str, Tensor],
        boxes: List[Tensor],
        pairs: List[Tensor],
        image_sizes: List[Tuple[int, int]],
        *,
        want_cp: bool = True,
        want_sel: bool = True,
        box_features: Optional[BoxFeatureFn] = None,
    ) -> Dict[str, Tensor]:
        """CP log-factors and selection logits of the pairs of a batch.

        Args:
            features: backbone features (read with "roi_align" only; may be empty with "geometry").
            boxes: per image Tensor[B_i, 4] XYXY_ABS (input-image coordinates).
            pairs: per image LongTensor[N_i, 2] (subject, object) rows into boxes[i].
            image_sizes: per image (h, w).
            box_features: the detector's box head on boxes (needed with "box_head").
        Returns:
            dict with ``s_s`` [N, R, S], ``s_p`` [N, R, P], ``s_o`` [N, R, S] (want_cp) and
            ``sel`` [N] logits (want_sel), N = sum N_i, images concatenated in order.
        """
        sub = cat([b[p[:, 0]] for b, p in zip(boxes, pairs)], 0)
        obj = cat([b[p[:, 1]] for b, p in zip(boxes, pairs)], 0)
        n = sub.shape[0]
        spatial = self.spatial_branch(spatial_masks(sub, obj, self.spatial_branch.mask_size))
        if self.pair_features == "geometry":
            geo = cat([pair_geometry(b[p[:, 0]], b[p[:, 1]], sz) for b, p, sz in zip(boxes, pairs, image_sizes)], 0)
            pair_feat = torch.cat((geo, spatial), 1)
            sub_in = obj_in = pair_feat
            s_index = o_index = None
        else:
            unions = [Boxes(union_boxes(b[p[:, 0]], b[p[:, 1]])) for b, p in zip(boxes, pairs)]
            pair_feat = torch.cat((self._box_features(features, unions, box_features), spatial), 1)
            sub_in = obj_in = self._box_features(features, [Boxes(b) for b in boxes], box_features)
            offsets = [0]
            for b in boxes[:-1]:
                offsets.append(offsets[-1] + b.shape[0])
            s_index = cat([p[:, 0] + o for p, o in zip(pairs, offsets)], 0)
            o_index = cat([p[:, 1] + o for p, o in zip(pairs, offsets)], 0)
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

    def _box_features(
        self, features: Dict[str, Tensor], boxes: List[Boxes], box_features: Optional[BoxFeatureFn]
    ) -> Tensor:
        """[sum B_i, D] features of boxes: flattened ROIAlign, or the detector's box head on them."""
        if self.pair_features == "box_head":
            if box_features is None:
                raise ValueError(
                    f"{_FILE}:pair_logits: FEATURES 'box_head' needs box_features (the detector's box head)"
                )
            return box_features(features, boxes)
        return self.pooler([features[f] for f in self.in_features], boxes).flatten(1)
