"""MODEL.VRD.FINETUNE_BOX_HEAD: the relation stages' own copy of the detector's box head. Stage 2
trains the copy and nothing of the detector; a checkpoint without the copy (stage 1's) fills it
from the detector's box head, in the model and in the pre-flight check; detections never read it."""

import copy

import pytest
import torch
from detectron2.modeling import build_model
from test_pipeline import _save, _shapes_cfg  # noqa: E402  (tests/ is on sys.path under pytest)
from test_roi_heads import build, make_inputs, tiny_cfg  # noqa: E402
from test_training_stages import TRAINED, _one_step  # noqa: E402

from vrd_d2.checkpoint import VRDCheckpointer
from vrd_d2.engine import check_stage_inputs

COPY = "roi_heads.relation_box_head."


def _state(model, prefix):
    return {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def _assert_same(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_only_box_head_features_have_a_copy():
    for features in ("roi_align", "geometry"):  # they read no box head
        model = build(tiny_cfg(TRAIN_STAGE="triplet", FEATURES=features, FINETUNE_BOX_HEAD=True))
        assert model.roi_heads.relation_box_head is None
        assert not any(k.startswith(COPY) for k in model.state_dict())


def test_stage_1_neither_trains_nor_saves_the_copy():
    # nothing stage 1 saves can be taken for a trained copy
    detector = build(tiny_cfg(TRAIN_STAGE="detector", FEATURES="box_head", FINETUNE_BOX_HEAD=True))
    assert not any(p.requires_grad for p in detector.roi_heads.relation_box_head.parameters())
    state = detector.state_dict()
    assert "roi_heads.box_head.fc1.weight" in state and not any(k.startswith(COPY) for k in state)
    # the other stages save it
    assert any(
        k.startswith(COPY)
        for k in build(tiny_cfg(TRAIN_STAGE="selection", FEATURES="box_head", FINETUNE_BOX_HEAD=True)).state_dict()
    )


@pytest.mark.parametrize("stage", ["triplet", "selection"])
def test_only_stage_2_trains_the_copy(stage):
    cfg = tiny_cfg(TRAIN_STAGE=stage, FEATURES="box_head", FINETUNE_BOX_HEAD=True)
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 0.01  # decay would move a frozen parameter given to the optimizer
    model, before, _ = _one_step(cfg)
    trained = TRAINED[stage] + ((COPY,) if stage == "triplet" else ())
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith(trained) for k in changed), sorted(changed)
    assert any(k.startswith(COPY) for k in changed) == (stage == "triplet")
    for k, p in model.named_parameters():
        assert p.requires_grad == k.startswith(trained), k
    # the copy has the detector's architecture and starts from its weights
    _assert_same(
        _state(model, "roi_heads.box_head."), {k[len(COPY) :]: v for k, v in before.items() if k.startswith(COPY)}
    )


def test_a_checkpoint_without_the_copy_fills_it_from_the_box_head(tmp_path):
    detector = build(tiny_cfg(TRAIN_STAGE="detector", FEATURES="box_head"), seed=1)
    path = tmp_path / "stage1.pth"
    torch.save({"model": detector.state_dict()}, path)
    model = build(tiny_cfg(TRAIN_STAGE="triplet", FEATURES="box_head", FINETUNE_BOX_HEAD=True), seed=2)
    assert not torch.equal(model.roi_heads.box_head.fc1.weight, detector.roi_heads.box_head.fc1.weight)
    VRDCheckpointer(model).load(str(path))
    _assert_same(_state(model, COPY), _state(detector, "roi_heads.box_head."))
    _assert_same(_state(model, "roi_heads.box_head."), _state(detector, "roi_heads.box_head."))
    # two tensors, not one shared: training the copy leaves the detector's box head alone
    assert model.roi_heads.relation_box_head.fc1.weight.data_ptr() != model.roi_heads.box_head.fc1.weight.data_ptr()

    # a checkpoint with its own copy (stage 2's) keeps it
    with torch.no_grad():
        model.roi_heads.relation_box_head.fc1.weight.add_(1.0)
    trained = tmp_path / "stage2.pth"
    torch.save({"model": model.state_dict()}, trained)
    again = build(tiny_cfg(TRAIN_STAGE="selection", FEATURES="box_head", FINETUNE_BOX_HEAD=True), seed=3)
    VRDCheckpointer(again).load(str(trained))
    _assert_same(_state(again, COPY), _state(model, COPY))
    assert not torch.equal(again.roi_heads.relation_box_head.fc1.weight, again.roi_heads.box_head.fc1.weight)


def test_detections_do_not_read_the_copy_and_relations_do():
    model = build(tiny_cfg(MODE="sgdet", FEATURES="box_head", FINETUNE_BOX_HEAD=True))
    inputs = make_inputs((3, 2))
    with torch.no_grad():
        model.roi_heads.relation_box_head.load_state_dict(model.roi_heads.box_head.state_dict())
        first = model(copy.deepcopy(inputs))
        for p in model.roi_heads.relation_box_head.parameters():
            p.mul_(-1.5)
        second = model(copy.deepcopy(inputs))
    moved = False
    for a, b in zip(first, second):
        ia, ib = a["instances"], b["instances"]
        assert torch.equal(ia.pred_boxes.tensor, ib.pred_boxes.tensor)
        assert torch.equal(ia.scores, ib.scores) and torch.equal(ia.pred_classes, ib.pred_classes)
        ra, rb = a["relations"], b["relations"]
        moved |= len(ra) != len(rb) or not torch.allclose(ra.scores, rb.scores)
    assert moved


def test_pre_flight_reads_the_detector_box_head_as_the_copy(tmp_path):
    opts = ("MODEL.VRD.FINETUNE_BOX_HEAD", "False")
    # a stage-2 checkpoint trained without the copy feeds stage 3 and evaluation with it
    ckpt = _save(_shapes_cfg("stage2_triplet.yaml", *opts), tmp_path / "no_copy.pth")
    assert not any(k.startswith(COPY) for k in torch.load(ckpt, weights_only=True)["model"])
    check_stage_inputs(_shapes_cfg("stage3_selection.yaml", "MODEL.WEIGHTS", ckpt))
    check_stage_inputs(_shapes_cfg("stage3_selection.yaml", "MODEL.WEIGHTS", ckpt), eval_only=True)
    # ... but not when it has no box head either (the copy would stay random)
    state = {k: v for k, v in torch.load(ckpt, weights_only=True)["model"].items() if "box_head" not in k}
    torch.save({"model": state}, tmp_path / "no_box_head.pth")
    with pytest.raises(ValueError, match=r"absent from the checkpoint.*relation_box_head"):
        check_stage_inputs(_shapes_cfg("stage3_selection.yaml", "MODEL.WEIGHTS", str(tmp_path / "no_box_head.pth")))


def test_shapes_stage2_builds_the_copy():
    model = build_model(_shapes_cfg("stage2_triplet.yaml"))
    assert model.roi_heads.relation_box_head is not None
    assert all(p.requires_grad for p in model.roi_heads.relation_box_head.parameters())
    assert not any(p.requires_grad for p in model.roi_heads.box_head.parameters())
