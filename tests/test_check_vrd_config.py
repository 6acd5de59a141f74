"""check_vrd_config: every shipped config passes; each bad MODEL.VRD value is a ValueError naming
the key, the rule and the value found, raised when the model is built (not torch's own error)."""

import pytest
from conftest import CONFIGS, tiny_config  # noqa: E402  (tests/ is on sys.path under pytest)
from detectron2.modeling import build_model

from vrd_d2.config import check_vrd_config

CONFIG_FILES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml") if not p.name.startswith("Base-"))


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_every_config_file_passes(config_file):
    assert check_vrd_config(tiny_config(config_file)) in ("roi_align", "box_head", "geometry")


def test_negative_rank_names_the_key_when_the_model_is_built():
    cfg = tiny_config("Shapes/geometry_only.yaml", "MODEL.VRD.RANK", "-2")
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    assert "MODEL.VRD.RANK must be >= 1, found -2" in str(e.value)
    assert "negative dimension" not in str(e.value)


BAD = [
    ("MODEL.VRD.RANK", "0", "MODEL.VRD.RANK must be >= 1, found 0"),
    ("MODEL.VRD.NUM_PREDICATES", "0", "MODEL.VRD.NUM_PREDICATES must be >= 1, found 0"),
    ("MODEL.VRD.FC_DIMS", "[256, 0]", "MODEL.VRD.FC_DIMS[1] must be >= 1, found 0"),
    ("MODEL.VRD.SELECTION_FC_DIM", "-1", "MODEL.VRD.SELECTION_FC_DIM must be >= 1, found -1"),
    ("MODEL.VRD.SPATIAL_DIM", "0", "MODEL.VRD.SPATIAL_DIM must be >= 1, found 0"),
    ("MODEL.VRD.SPATIAL_CONV_DIMS", "[16, -3]", "MODEL.VRD.SPATIAL_CONV_DIMS[1] must be >= 1, found -3"),
    ("MODEL.VRD.SPATIAL_MASK_SIZE", "2", "MODEL.VRD.SPATIAL_MASK_SIZE must be >= 4, found 2"),
    ("MODEL.VRD.PROPOSAL_IOU", "1.5", "MODEL.VRD.PROPOSAL_IOU must be in [0.0, 1.0], found 1.5"),
    ("MODEL.VRD.PROPOSALS_PER_GT", "0", "MODEL.VRD.PROPOSALS_PER_GT must be >= 1, found 0"),
    ("MODEL.VRD.SELECTION_NEG_PER_POS", "-0.5", "MODEL.VRD.SELECTION_NEG_PER_POS must be >= 0.0, found -0.5"),
    ("MODEL.VRD.CP_INIT_BIAS_STD", "-0.1", "MODEL.VRD.CP_INIT_BIAS_STD must be >= 0.0, found -0.1"),
    ("MODEL.VRD.MAX_PAIRS_PER_IMAGE", "-1", "MODEL.VRD.MAX_PAIRS_PER_IMAGE (0 = no cap) must be >= 0, found -1"),
    ("MODEL.VRD.TEST.TOPK_PER_IMAGE", "0", "MODEL.VRD.TEST.TOPK_PER_IMAGE must be >= 1, found 0"),
    ("MODEL.VRD.TEST.K_PER_PAIR", "[1, -1]", "MODEL.VRD.TEST.K_PER_PAIR[1] (0 = free k) must be >= 0, found -1"),
    ("MODEL.VRD.TEST.K_PER_PAIR", "[]", "MODEL.VRD.TEST.K_PER_PAIR must list at least one k"),
    ("MODEL.VRD.TEST.PAIR_BATCH", "0", "MODEL.VRD.TEST.PAIR_BATCH must be >= 1, found 0"),
    ("MODEL.VRD.TEST.NMS_THRESH", "1.2", "MODEL.VRD.TEST.NMS_THRESH must be in [0.0, 1.0], found 1.2"),
    ("MODEL.VRD.MODE", "sgcls", "MODEL.VRD.MODE must be one of ('sgdet', 'phrase_cls', 'predcls'), found 'sgcls'"),
    (
        "MODEL.VRD.TRAIN_STAGE",
        "all",
        "MODEL.VRD.TRAIN_STAGE must be one of ('detector', 'triplet', 'selection'), " "found 'all'",
    ),
    (
        "MODEL.VRD.FEATURES",
        "fc7",
        "MODEL.VRD.FEATURES must be one of ('roi_align', 'box_head', 'geometry'), " "found 'fc7'",
    ),
]


@pytest.mark.parametrize("key, value, message", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_value_names_key_rule_and_value(key, value, message):
    cfg = tiny_config("Shapes/geometry_only.yaml", key, value)
    with pytest.raises(ValueError) as e:
        check_vrd_config(cfg)
    assert message in str(e.value)


def test_the_mask_must_hold_one_cell_per_conv_halving():
    cfg = tiny_config(
        "Shapes/geometry_only.yaml", "MODEL.VRD.SPATIAL_CONV_DIMS", "[4, 4, 4, 4]", "MODEL.VRD.SPATIAL_MASK_SIZE", "8"
    )
    with pytest.raises(ValueError, match="MODEL.VRD.SPATIAL_MASK_SIZE must be >= 16, found 8"):
        check_vrd_config(cfg)
    cfg.MODEL.VRD.SPATIAL_MASK_SIZE = 16
    check_vrd_config(cfg)
