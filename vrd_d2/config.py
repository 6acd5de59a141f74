"""Config keys of vrd_d2: ``add_vrd_config(cfg)`` adds ``cfg.MODEL.VGG.*`` and ``cfg.MODEL.VRD.*``.

Like PointRend's ``add_pointrend_config``: every key with its default and a one-line why. The
paper's values (Dupty, Zhang & Lee, AAAI 2020) are the defaults; configs/Shapes/ shrinks them.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_vrd_config", "TRAIN_STAGES", "MODES"]

TRAIN_STAGES = ("detector", "triplet", "selection")
MODES = ("sgdet", "phrase_cls", "predcls")


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
    # feed the branches the detector's box-head output (fc7) of the subject, object and union boxes
    # instead of the ROIAlign conv5_3 features (the box head stays frozen outside stage 1)
    _C.MODEL.VRD.USE_BOX_HEAD_FEATURES = False
    # ROIAlign output side for subject/object/union features (ROI_BOX_HEAD pooler type/ratio)
    _C.MODEL.VRD.POOLER_RESOLUTION = 7
    # test-time score terms (ablations): psi_u prior, P(X_sel | b), P(b_s) P(b_o)
    _C.MODEL.VRD.USE_PRIOR = True
    # False: psi_c uniform at test time, i.e. the frequency prior alone (ablation baseline)
    _C.MODEL.VRD.USE_CP = True
    _C.MODEL.VRD.USE_SELECTION = True
    _C.MODEL.VRD.USE_BOX_SCORE = True
    # feed the CP branches and the selection head only box geometry + spatial masks (no image
    # features): trains on annotations alone, needs given boxes
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

    # ------------------------------------------------------------------ schedule in epochs
    # > 0: the stage trains this many epochs over the images it trains on (the relation stages:
    # images with relations; the detector: images with annotations) and SOLVER.MAX_ITER is
    # ceil(EPOCHS * images / SOLVER.IMS_PER_BATCH) (vrd_d2.engine.resolve_schedule, logged);
    # 0: SOLVER.MAX_ITER and SOLVER.STEPS as written
    _C.SOLVER.EPOCHS = 0.0
    # with EPOCHS > 0: the epochs after which the learning rate is multiplied by SOLVER.GAMMA
    # (they replace SOLVER.STEPS)
    _C.SOLVER.EPOCH_STEPS = ()
    return cfg
