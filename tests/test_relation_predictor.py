"""The relation predictor built on its own (as detectron2's tests/modeling build heads: fixed seed,
ShapeSpec inputs, inside EventStorage), and MODEL.VRD.FEATURES: which inputs each value reads, its
deprecated boolean aliases and their errors."""

import logging

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from test_roi_heads import P, S, make_inputs, tiny_cfg  # noqa: E402  (tests/ is on sys.path under pytest)
from torch import nn

from vrd_d2.config import resolve_pair_features
from vrd_d2.modeling.relation_predictor import (
    RELATION_PREDICTOR_REGISTRY,
    CPRelationPredictor,
    build_relation_predictor,
)
from vrd_d2.modeling.spatial import PAIR_GEOMETRY_DIM

FEATURE = "vgg_conv5"
STRIDE, CHANNELS, BOX_HEAD_DIM = 16, 8, 12


def predictor_cfg(features="roi_align"):
    cfg = tiny_cfg(RANK=3, FEATURES=features)
    assert list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == [FEATURE]
    return cfg


class RecordingDict(dict):
    """A features dict that records which maps were read."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read = []

    def __getitem__(self, key):
        self.read.append(key)
        return super().__getitem__(key)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = RecordingDict({FEATURE: torch.randn(2, CHANNELS, 8, 8, generator=g)})
    boxes = []
    for n in (3, 4):
        xy = torch.rand(n, 2, generator=g) * 80
        boxes.append(torch.cat((xy, xy + 10 + torch.rand(n, 2, generator=g) * 30), 1))
    pairs = [torch.tensor([[0, 1], [2, 0]]), torch.tensor([[1, 3], [3, 2], [0, 1]])]
    return features, boxes, pairs, [(128, 128), (128, 128)]


def _build(features):
    torch.manual_seed(0)
    shape = {FEATURE: ShapeSpec(channels=CHANNELS, stride=STRIDE)}
    return build_relation_predictor(predictor_cfg(features), shape, box_feature_dim=BOX_HEAD_DIM)


@pytest.mark.parametrize("features", ["roi_align", "box_head", "geometry"])
def test_pair_logits_shapes_and_the_inputs_each_feature_mode_reads(features):
    model = _build(features)
    assert isinstance(model, CPRelationPredictor) and model.pair_features == features
    feats, boxes, pairs, sizes = _inputs()
    calls = []

    def box_head(f, b):  # stands in for the detector's box head: one row per box
        calls.append([len(x) for x in b])
        return torch.cat([x.tensor[:, :1].repeat(1, BOX_HEAD_DIM) / 100 for x in b])

    with EventStorage():
        out = model.pair_logits(feats, boxes, pairs, sizes, box_features=box_head)
    n = 5
    assert out["s_s"].shape == (n, 3, S) and out["s_o"].shape == (n, 3, S)
    assert out["s_p"].shape == (n, 3, P) and out["sel"].shape == (n,)
    assert all(torch.isfinite(v).all() for v in out.values())
    # roi_align reads the conv map; box_head calls the box head on the unions (5 pairs) then on the
    # boxes (3 + 4) and reads no map itself; geometry reads neither
    assert feats.read == ([FEATURE, FEATURE] if features == "roi_align" else [])
    assert calls == ([[2, 3], [3, 4]] if features == "box_head" else [])
    first_layer = {"roi_align": CHANNELS * 7 * 7, "box_head": BOX_HEAD_DIM, "geometry": PAIR_GEOMETRY_DIM + 8}
    assert model.subject_branch[0].in_features == first_layer[features]
    assert model.predicate_branch[0].in_features == first_layer[features] + (8 if features != "geometry" else 0)


def test_geometry_needs_no_features_and_each_pair_is_scored_alone():
    model = _build("geometry")
    _, boxes, pairs, sizes = _inputs()
    with torch.no_grad():
        both = model.pair_logits({}, boxes, pairs, sizes)
        second = model.pair_logits({}, boxes[1:], pairs[1:], sizes[1:])
    for k in ("s_s", "s_p", "s_o", "sel"):
        torch.testing.assert_close(both[k][2:], second[k])


def test_want_flags_and_missing_box_head():
    model = _build("box_head")
    feats, boxes, pairs, sizes = _inputs()
    with pytest.raises(ValueError, match="box_features"):
        model.pair_logits(feats, boxes, pairs, sizes)
    geo = _build("geometry")
    assert set(geo.pair_logits({}, boxes, pairs, sizes, want_cp=False)) == {"sel"}
    assert set(geo.pair_logits({}, boxes, pairs, sizes, want_sel=False)) == {"s_s", "s_p", "s_o"}


def test_predictor_name_picks_a_registered_predictor():
    @RELATION_PREDICTOR_REGISTRY.register()
    class _TestConstantPredictor(nn.Module):
        def __init__(self, cfg, input_shape, box_feature_dim=None):
            super().__init__()
            self.num_predicates = cfg.MODEL.VRD.NUM_PREDICATES

    try:
        cfg = predictor_cfg("geometry")
        cfg.MODEL.VRD.PREDICTOR_NAME = "_TestConstantPredictor"
        assert isinstance(build_relation_predictor(cfg), _TestConstantPredictor)
    finally:
        RELATION_PREDICTOR_REGISTRY._obj_map.pop("_TestConstantPredictor")


# ------------------------------------------------------------------------------ MODEL.VRD.FEATURES
@pytest.mark.parametrize("features", ["roi_align", "box_head", "geometry"])
def test_each_features_value_builds_that_model(features):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(MODE="phrase_cls", FEATURES=features))
    pred = model.roi_heads.relation_predictor
    assert pred.pair_features == model.pair_features == features
    conv5 = model.backbone.output_shape()[model.roi_heads.box_in_features[0]].channels
    box_dim = {"roi_align": conv5 * 7 * 7, "box_head": 16, "geometry": PAIR_GEOMETRY_DIM + 8}
    assert pred.subject_branch[0].in_features == box_dim[features]
    assert (pred.pooler is not None) == (features == "roi_align")
    with torch.no_grad():
        assert len(model.eval()(make_inputs((3,)))[0]["relations"]) > 0


@pytest.mark.parametrize("alias, value", [("GEOMETRY_ONLY", "geometry"), ("USE_BOX_HEAD_FEATURES", "box_head")])
def test_deprecated_booleans_select_the_feature_value_with_a_warning(alias, value, caplog):
    cfg = tiny_cfg(MODE="phrase_cls", **{alias: True})
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg)
    assert model.roi_heads.relation_predictor.pair_features == value
    assert f"MODEL.VRD.{alias} is deprecated" in caplog.text and "MODEL.VRD.FEATURES" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_model(tiny_cfg(MODE="phrase_cls", FEATURES=value))
    assert "deprecated" not in caplog.text


def test_both_deprecated_booleans_on_is_an_error():
    cfg = tiny_cfg(GEOMETRY_ONLY=True, USE_BOX_HEAD_FEATURES=True)
    with pytest.raises(ValueError, match="GEOMETRY_ONLY and MODEL.VRD.USE_BOX_HEAD_FEATURES are both True"):
        resolve_pair_features(cfg)
    with pytest.raises(ValueError, match="both True"):
        build_model(cfg)


def test_a_boolean_that_contradicts_features_is_an_error():
    with pytest.raises(ValueError, match="GEOMETRY_ONLY True selects FEATURES 'geometry'.*'box_head'"):
        resolve_pair_features(tiny_cfg(GEOMETRY_ONLY=True, FEATURES="box_head"))
    assert resolve_pair_features(tiny_cfg(GEOMETRY_ONLY=True, FEATURES="geometry")) == "geometry"


def test_unknown_features_value_is_an_error():
    with pytest.raises(ValueError, match=r"MODEL.VRD.FEATURES must be one of .*found 'fc7'"):
        build_model(tiny_cfg(FEATURES="fc7"))
