"""Config keys of vrd_d2: ``add_vrd_config(cfg)`` adds ``cfg.MODEL.VGG.*`` and ``cfg.MODEL.VRD.*``.

Like PointRend's ``add_pointrend_config``: every key with its default and a one-line why. The
paper's values (Dupty, Zhang & Lee, AAAI 2020) are the defaults; configs/Shapes/ shrinks them.

:func:`resolve_vrd_config` is the one place that validates ``MODEL.VRD.*`` and resolves it (the
deprecated feature switches folded into ``MODEL.VRD.FEATURES``): the model's builder calls it
before it builds anything, and the modules read the resolved keys without checking them again.
"""

import logging

from detectron2.config import CfgNode as CN

from .utils.checks import check_float, check_int

__all__ = [
    "add_vrd_config",
    "resolve_vrd_config",
    "check_vrd_config",
    "resolve_pair_features",
    "TRAIN_STAGES",
    "MODES",
    "OPTIMIZERS",
    "PAIR_FEATURES",
]

logger = logging.getLogger(__name__)

TRAIN_STAGES = ("detector", "triplet", "selection")
MODES = ("sgdet", "phrase_cls", "predcls")
OPTIMIZERS = ("SGD", "ADAM")  # SOLVER.OPTIMIZER
# MODEL.VRD.FEATURES: how a box pair is featurised (vrd_d2/modeling/relation_predictor.py)
PAIR_FEATURES = ("roi_align", "box_head", "geometry")
# deprecated booleans (one release) -> the MODEL.VRD.FEATURES value each one selects
_FEATURE_ALIASES = (("GEOMETRY_ONLY", "geometry"), ("USE_BOX_HEAD_FEATURES", "box_head"))


def add_vrd_config(cfg):
    """Add the vrd_d2 keys to a detectron2 config (in place). Safe to call twice."""
    _C = cfg
    if "VRD" in _C.MODEL and "VGG" in _C.MODEL:
        return cfg

    # ------------------------------------------------------------------ VGG16 backbone
    _C.MODEL.VGG = CN()
    # name of the single conv5_3 output (stride 16, no pool5), as in py-faster-rcnn
    _C.MODEL.VGG.OUT_FEATURE = "vgg_conv5"
    # divide every conv width by this (1 = VGG16; 8-16 = the tiny CPU variant of configs/Shapes)
    _C.MODEL.VGG.WIDTH_DIVISOR = 1
    # freeze all 13 conv layers (conv1_1-conv5_3); MODEL.BACKBONE.FREEZE_AT freezes the first
    # FREEZE_AT conv blocks instead (py-faster-rcnn freezes conv1 and conv2: FREEZE_AT 2)
    _C.MODEL.VGG.FREEZE_CONVS = False
    # "" (VGG16 as in the paper) or "GN" (GroupNorm after each conv: the from-scratch tiny variant)
    _C.MODEL.VGG.NORM = ""

    # ------------------------------------------------------------------ VGG box head
    # dropout after each FC of the VGG16FCHead (VGG's fc6/fc7 use 0.5)
    _C.MODEL.ROI_BOX_HEAD.DROPOUT = 0.0

    # ------------------------------------------------------------------ relation head
    _C.MODEL.VRD = CN()
    # |X_p|: number of predicate classes (|X_s| = |X_o| = MODEL.ROI_HEADS.NUM_CLASSES)
    _C.MODEL.VRD.NUM_PREDICATES = 70
    # R of the CP decomposition (eq. 5)
    _C.MODEL.VRD.RANK = 5
    # hidden FC sizes of each of the three factor branches (subject, predicate, object)
    _C.MODEL.VRD.FC_DIMS = [4096, 4096]
    # std of the initial output biases of the three factor branches (0: zeros). The R components
    # start equal with zero biases and then get equal gradients, so rank R trains like rank 1
    # until that symmetry breaks; random biases break it from the first step.
    _C.MODEL.VRD.CP_INIT_BIAS_STD = 0.0
    # hidden FC size of the selection head P(X_sel | b_s, b_o)
    _C.MODEL.VRD.SELECTION_FC_DIM = 4096
    # output size of the 2x64x64 spatial-mask branch, concatenated to the union feature
    _C.MODEL.VRD.SPATIAL_DIM = 512
    # side of the binary spatial masks (2 channels: subject, object in the union box frame)
    _C.MODEL.VRD.SPATIAL_MASK_SIZE = 64
    # channels of the 2 stride-2 5x5 convs of the spatial-mask branch
    _C.MODEL.VRD.SPATIAL_CONV_DIMS = [96, 128]
    # how a pair is featurised: "roi_align" (ROIAlign of the conv features of the subject, object
    # and union boxes), "box_head" (the detector's box-head output (fc7) of those boxes; the box
    # head stays frozen outside stage 1; see FINETUNE_BOX_HEAD), "geometry" (box geometry +
    # spatial masks only: no image features, trains on annotations alone, needs given boxes)
    _C.MODEL.VRD.FEATURES = "roi_align"
    # with FEATURES "box_head": the relation stages read the boxes through their own copy of the
    # box head (roi_heads.relation_box_head, copied from the detector's box head when a checkpoint
    # has none) and stage 2 trains it, as the paper's branches train their FCs above the frozen
    # convs; the detector's own box head, and so its detections, stay as stage 1 left them. Other
    # FEATURES read no box head: the key has no effect there
    _C.MODEL.VRD.FINETUNE_BOX_HEAD = False
    # the RELATION_PREDICTOR_REGISTRY entry that maps pair features to the CP log-factors and the
    # selection logit
    _C.MODEL.VRD.PREDICTOR_NAME = "CPRelationPredictor"
    # deprecated (one release): True = FEATURES "box_head"
    _C.MODEL.VRD.USE_BOX_HEAD_FEATURES = False
    # ROIAlign output side for subject/object/union features (ROI_BOX_HEAD pooler type/ratio)
    _C.MODEL.VRD.POOLER_RESOLUTION = 7
    # test-time score terms (ablations): psi_u prior, P(X_sel | b), P(b_s) P(b_o)
    _C.MODEL.VRD.USE_PRIOR = True
    # False: psi_c uniform at test time, i.e. the frequency prior alone (ablation baseline)
    _C.MODEL.VRD.USE_CP = True
    # how psi_c and psi_u combine at test time. False: the paper's eq. 7, the product
    # psi_c(t) psi_u(t). True: P(t | b) = psi_c psi_u / sum_t' psi_c psi_u, a distribution per pair
    # (in predcls: over the predicates of the given labels). The choice changes rankings across
    # pairs: normalized, a pair whose likely triplets the prior has never seen is not pushed below
    # the seen triplets of other pairs
    _C.MODEL.VRD.CRF_NORMALIZE = False
    _C.MODEL.VRD.USE_SELECTION = True
    _C.MODEL.VRD.USE_BOX_SCORE = True
    # deprecated (one release): True = FEATURES "geometry"
    _C.MODEL.VRD.GEOMETRY_ONLY = False
    # "sgdet": detected boxes; "phrase_cls": gold boxes, labels predicted; "predcls": gold boxes
    # and labels given, only predicates predicted
    _C.MODEL.VRD.MODE = "sgdet"
    # what a training run trains: "detector" (RPN + box head + convs), "triplet" (the CP
    # branches and the spatial branch, on gold boxes), "selection" (the selection head only)
    _C.MODEL.VRD.TRAIN_STAGE = "detector"
    # train the relation head on RPN proposals matched to gold boxes instead of on gold boxes
    _C.MODEL.VRD.TRAIN_ON_PROPOSALS = False
    # at most this many proposals per gold box, with IoU >= PROPOSAL_IOU (TRAIN_ON_PROPOSALS)
    _C.MODEL.VRD.PROPOSALS_PER_GT = 4
    _C.MODEL.VRD.PROPOSAL_IOU = 0.5
    # cap on ordered box pairs per image (training: annotated pairs kept first; test: pairs with
    # the highest box-score products kept); logged when hit
    _C.MODEL.VRD.MAX_PAIRS_PER_IMAGE = 10000
    # unannotated ("null") pairs sampled per annotated pair to train the selection head
    _C.MODEL.VRD.SELECTION_NEG_PER_POS = 1.0

    _C.MODEL.VRD.TEST = CN()
    # predictions kept per image for each k of K_PER_PAIR (Lu et al.'s top-100)
    _C.MODEL.VRD.TEST.TOPK_PER_IMAGE = 100
    # k = triplets per pair (0 = free k); the output is the union over these k
    _C.MODEL.VRD.TEST.K_PER_PAIR = [1, 10, 0]
    # class-agnostic NMS on the detected boxes before pairing (sgdet)
    _C.MODEL.VRD.TEST.NMS_THRESH = 0.7
    # pairs run through the head at once at test: bounds peak memory (linear in pairs)
    _C.MODEL.VRD.TEST.PAIR_BATCH = 1024
    # evaluation protocol of VRDEvaluator: "lu" (Lu et al. 2016: total hits / total ground truth,
    # one-to-one matching, each k of K_PER_PAIR), "sgb" (Scene-Graph-Benchmark: per-image means,
    # graph constraint = k 1, no graph constraint = free k, R@20/50/100), another name of
    # VRD_PROTOCOL_REGISTRY, "auto" (the dataset metadata's evaluation_protocol: SGB for VG150 /
    # VG200, Lu otherwise) or "both" (results {"lu": ..., "sgb": ...}); docs/EVALUATION.md
    _C.MODEL.VRD.TEST.PROTOCOL = "auto"
    # SGB's zeroshot_triplet.pytorch: its triplets are the zero-shot rows of zR@K under "sgb"
    # ("": triplets with training count 0)
    _C.MODEL.VRD.TEST.SGB_ZEROSHOT_TRIPLETS = ""

    # ------------------------------------------------------------------ schedule in epochs
    # > 0: the stage trains this many epochs over the images it trains on (the relation stages:
    # images with relations; the detector: images with annotations) and SOLVER.MAX_ITER is
    # ceil(EPOCHS * images / SOLVER.IMS_PER_BATCH) (vrd_d2.engine.resolve_schedule, logged);
    # 0: SOLVER.MAX_ITER and SOLVER.STEPS as written
    _C.SOLVER.EPOCHS = 0.0
    # with EPOCHS > 0: the epochs after which the learning rate is multiplied by SOLVER.GAMMA
    # (they replace SOLVER.STEPS)
    _C.SOLVER.EPOCH_STEPS = ()
    # "SGD" (detectron2's, the paper's) or "ADAM" (same parameter groups, BASE_LR, WEIGHT_DECAY,
    # warm-up, steps and clipping; MOMENTUM and NESTEROV unused). configs/Shapes/stage2_triplet.yaml
    # uses Adam: with SGD a CP component's step scales with its share of the mass and one
    # component took all of it within 40 iterations (docs/DESIGN.md, "CP components")
    _C.SOLVER.OPTIMIZER = "SGD"
    return cfg


def resolve_pair_features(cfg, *, warn: bool = False) -> str:
    """The MODEL.VRD.FEATURES value of ``cfg`` (one of PAIR_FEATURES), with the deprecated
    booleans MODEL.VRD.GEOMETRY_ONLY / USE_BOX_HEAD_FEATURES mapped onto it (a logged warning
    when ``warn``). Both booleans on, a boolean that contradicts FEATURES, or an unknown FEATURES
    value is a ValueError."""
    vrd = cfg.MODEL.VRD
    features = vrd.FEATURES
    if features not in PAIR_FEATURES:
        raise ValueError(f"vrd_d2/config.py: MODEL.VRD.FEATURES must be one of {PAIR_FEATURES}, found {features!r}")
    on = [(key, value) for key, value in _FEATURE_ALIASES if vrd.get(key, False)]
    if len(on) > 1:
        raise ValueError(
            "vrd_d2/config.py: MODEL.VRD.GEOMETRY_ONLY and MODEL.VRD.USE_BOX_HEAD_FEATURES are both "
            "True; they are deprecated: set MODEL.VRD.FEATURES to 'geometry' or 'box_head'"
        )
    if not on:
        return features
    key, value = on[0]
    if features not in ("roi_align", value):
        raise ValueError(
            f"vrd_d2/config.py: MODEL.VRD.{key} True selects FEATURES {value!r}, but MODEL.VRD.FEATURES "
            f"is {features!r}; drop the deprecated MODEL.VRD.{key}"
        )
    if warn:
        logger.warning(
            f"vrd_d2: MODEL.VRD.{key} is deprecated and will be removed in the next release: "
            f"use MODEL.VRD.FEATURES: {value!r}"
        )
    return value


def resolve_vrd_config(cfg, *, warn: bool = True):
    """Validate the MODEL.VRD keys of ``cfg`` (and SOLVER.OPTIMIZER) and return them resolved: a
    copy of ``cfg`` (frozen when ``cfg`` is) whose MODEL.VRD.FEATURES is the resolved value (one of
    PAIR_FEATURES) and whose deprecated GEOMETRY_ONLY / USE_BOX_HEAD_FEATURES are False, so that
    every module reads MODEL.VRD.FEATURES alone. Resolving a resolved config changes nothing.

    A bad value is a ValueError naming the key, the expected range or choices and the value found
    (``check_int`` / ``check_float``), raised before a model is built rather than deep inside torch.
    ``warn``: log the deprecated switches that were set.
    """
    v, where = cfg.MODEL.VRD, "vrd_d2 config"
    for key, allowed in (("MODE", MODES), ("TRAIN_STAGE", TRAIN_STAGES)):
        if v[key] not in allowed:
            raise ValueError(f"{where}: MODEL.VRD.{key} must be one of {allowed}, found {v[key]!r}")
    if cfg.SOLVER.OPTIMIZER not in OPTIMIZERS:
        raise ValueError(f"{where}: SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, found {cfg.SOLVER.OPTIMIZER!r}")
    features = resolve_pair_features(cfg, warn=warn)
    _check_sizes(v, where)
    _check_test_keys(v.TEST, where)
    resolved = cfg.clone()
    frozen = resolved.is_frozen()
    resolved.defrost()
    resolved.MODEL.VRD.FEATURES = features
    for key, _ in _FEATURE_ALIASES:
        if key in resolved.MODEL.VRD:
            resolved.MODEL.VRD[key] = False
    if frozen:
        resolved.freeze()
    return resolved


def _check_sizes(v, where: str) -> None:
    for key in ("NUM_PREDICATES", "RANK", "SELECTION_FC_DIM", "SPATIAL_DIM", "POOLER_RESOLUTION", "PROPOSALS_PER_GT"):
        check_int(v[key], f"MODEL.VRD.{key}", low=1, where=where)
    for key in ("FC_DIMS", "SPATIAL_CONV_DIMS"):
        for i, d in enumerate(v[key]):
            check_int(d, f"MODEL.VRD.{key}[{i}]", low=1, where=where)
    # each stride-2 conv of the spatial branch halves the mask: at least 2 cells a side per conv,
    # and no fewer than 4 cells (a 2 x 2 mask cannot show how two boxes are placed)
    check_int(
        v.SPATIAL_MASK_SIZE, "MODEL.VRD.SPATIAL_MASK_SIZE", low=max(4, 2 ** len(v.SPATIAL_CONV_DIMS)), where=where
    )
    check_int(v.MAX_PAIRS_PER_IMAGE, "MODEL.VRD.MAX_PAIRS_PER_IMAGE (0 = no cap)", low=0, where=where)
    check_float(v.PROPOSAL_IOU, "MODEL.VRD.PROPOSAL_IOU", low=0.0, high=1.0, where=where)
    check_float(v.SELECTION_NEG_PER_POS, "MODEL.VRD.SELECTION_NEG_PER_POS", low=0.0, where=where)
    check_float(v.CP_INIT_BIAS_STD, "MODEL.VRD.CP_INIT_BIAS_STD", low=0.0, where=where)


def _check_test_keys(t, where: str) -> None:
    check_int(t.TOPK_PER_IMAGE, "MODEL.VRD.TEST.TOPK_PER_IMAGE", low=1, where=where)
    if len(t.K_PER_PAIR) == 0:
        raise ValueError(f"{where}: MODEL.VRD.TEST.K_PER_PAIR must list at least one k (0 = free k), found []")
    for i, k in enumerate(t.K_PER_PAIR):
        check_int(k, f"MODEL.VRD.TEST.K_PER_PAIR[{i}] (0 = free k)", low=0, where=where)
    check_int(t.PAIR_BATCH, "MODEL.VRD.TEST.PAIR_BATCH", low=1, where=where)
    check_float(t.NMS_THRESH, "MODEL.VRD.TEST.NMS_THRESH", low=0.0, high=1.0, where=where)
    # the registered protocols (a user's own included): vrd_d2/evaluation/protocols/
    from .evaluation.protocols import protocol_choices

    if t.PROTOCOL not in protocol_choices():
        raise ValueError(f"{where}: MODEL.VRD.TEST.PROTOCOL must be one of {protocol_choices()}, found {t.PROTOCOL!r}")


def check_vrd_config(cfg) -> str:
    """Validate ``cfg`` as :func:`resolve_vrd_config` does (deprecated switches logged) and return
    the resolved MODEL.VRD.FEATURES."""
    return resolve_vrd_config(cfg).MODEL.VRD.FEATURES
