"""MODEL.VRD.TRAIN_STAGE: one SGD step changes exactly the parameters the stage trains, the
losses each stage returns, total-norm clipping, training on proposals."""

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from test_roi_heads import make_inputs, tiny_cfg  # noqa: E402  (tests/ is on sys.path under pytest)

from vrd_d2.engine import AdamWithTotalNormClip, SGDWithTotalNormClip, build_vrd_optimizer

# parameter-name prefixes each stage trains (everything else must stay bit-identical)
TRAINED = {
    "detector": ("backbone.", "proposal_generator.", "roi_heads.box_head.", "roi_heads.box_predictor."),
    "triplet": (
        "roi_heads.relation_predictor.spatial_branch.",
        "roi_heads.relation_predictor.subject_branch.",
        "roi_heads.relation_predictor.predicate_branch.",
        "roi_heads.relation_predictor.object_branch.",
    ),
    "selection": ("roi_heads.relation_predictor.selection_head.",),
}
LOSSES = {
    "detector": {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"},
    "triplet": {"loss_cp"},
    "selection": {"loss_sel"},
}


def _one_step(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    before = copy.deepcopy(model.state_dict())
    opt = build_vrd_optimizer(cfg, model)
    with EventStorage():
        losses = model(make_inputs((3, 4)))
    total = sum(losses.values())
    opt.zero_grad()
    total.backward()
    opt.step()
    return model, before, losses


@pytest.mark.parametrize("stage", ["detector", "triplet", "selection"])
def test_one_step_changes_only_the_stage_parameters(stage):
    cfg = tiny_cfg(TRAIN_STAGE=stage)
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 0.01  # decay would move a frozen parameter given to the optimizer
    if stage != "detector":
        cfg.MODEL.VGG.FREEZE_CONVS = True
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 20.0
    model, before, losses = _one_step(cfg)
    assert set(losses) == LOSSES[stage]
    assert all(torch.isfinite(v) for v in losses.values())
    after = model.state_dict()
    params = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for k in changed:
        assert k.startswith(TRAINED[stage]), f"stage {stage} changed {k}"
    for k, p in params.items():
        assert p.requires_grad == k.startswith(TRAINED[stage]), k
    # every trained module moved
    for prefix in TRAINED[stage]:
        assert any(k.startswith(prefix) for k in changed), f"stage {stage} did not train {prefix}"
    assert torch.equal(before["roi_heads.triplet_counts"], after["roi_heads.triplet_counts"])


def test_detector_stage_respects_freeze_at():
    cfg = tiny_cfg(TRAIN_STAGE="detector")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model, before, _ = _one_step(cfg)
    after = model.state_dict()
    for k in before:
        if k.startswith(("backbone.conv1_", "backbone.conv2_")):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["backbone.conv3_1.weight"], after["backbone.conv3_1.weight"])


def _params_with_large_gradients():
    """Two parameters whose gradients (also returned) have total norm far above 20."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    grads = [torch.randn(3) * 50, torch.randn(2, 2) * 50]
    for p, g in zip(a, grads):
        p.grad = g.clone()
    return a, grads


def test_total_norm_clipping_matches_manual():
    a, grads = _params_with_large_gradients()
    w0 = [p.detach().clone() for p in a]
    opt = SGDWithTotalNormClip(a, clip_norm=20.0, lr=1.0, momentum=0.0)
    opt.step()
    total = torch.sqrt(sum((g**2).sum() for g in grads))
    assert total > 20
    for p, w, g in zip(a, w0, grads):
        torch.testing.assert_close(p.detach(), w - g * (20.0 / total), rtol=1e-5, atol=1e-5)


def test_adam_clips_the_total_norm_before_its_moments():
    a, grads = _params_with_large_gradients()
    opt = AdamWithTotalNormClip(a, clip_norm=20.0, lr=0.1, betas=(0.9, 0.999))
    opt.step()
    total = torch.sqrt(sum((g**2).sum() for g in grads))
    assert total > 20
    for p, g in zip(a, grads):  # Adam's first moment after one step: (1 - beta1) * clipped gradient
        torch.testing.assert_close(opt.state[p]["exp_avg"], 0.1 * g * (20.0 / total), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], 0.001 * (g * (20.0 / total)) ** 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clip_type", ["full_model", "value", None])
def test_solver_optimizer_adam_trains_only_the_stage_parameters(clip_type):
    cfg = tiny_cfg(TRAIN_STAGE="triplet")
    cfg.MODEL.VGG.FREEZE_CONVS = True
    cfg.SOLVER.OPTIMIZER = "ADAM"
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WEIGHT_DECAY = 0.01  # Adam's decay would move a frozen parameter given to it
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip_type is not None
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type or "value"
    model, before, _ = _one_step(cfg)
    opt = build_vrd_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.SGD)
    assert isinstance(opt, AdamWithTotalNormClip) == (clip_type == "full_model")
    assert {g["lr"] for g in opt.param_groups} == {0.01}
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trained
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(TRAINED["triplet"]) for k in changed)
    for prefix in TRAINED["triplet"]:
        assert any(k.startswith(prefix) for k in changed), prefix


def test_unknown_optimizer_is_a_clear_error():
    cfg = tiny_cfg(TRAIN_STAGE="triplet")
    cfg.SOLVER.OPTIMIZER = "adamw"
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER must be one of \('SGD', 'ADAM'\), found 'adamw'"):
        build_model(cfg)


def test_selection_pairs_are_balanced():
    cfg = tiny_cfg(TRAIN_STAGE="selection")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = make_inputs((4,))
    per_image = model.roi_heads.relation_loss.training_pairs(None, [inputs[0]["instances"]], [inputs[0]["relations"]])
    boxes, pairs, trip, pidx, annotated = per_image[0]
    # make_inputs annotates the 4 pairs (i, i+1 mod 4) of 12: all 4 kept, 4 null pairs sampled
    assert int(annotated.sum()) == 4 and len(pairs) == 8
    annotated_pairs = {tuple(p) for p, a in zip(pairs.tolist(), annotated.tolist()) if a}
    assert annotated_pairs == {(0, 1), (1, 2), (2, 3), (3, 0)}


def test_triplet_stage_on_proposals():
    cfg = tiny_cfg(TRAIN_STAGE="triplet", TRAIN_ON_PROPOSALS=True, PROPOSAL_IOU=0.0)
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    model, before, losses = _one_step(cfg)
    assert set(losses) == {"loss_cp"} and torch.isfinite(losses["loss_cp"])
    assert float(losses["loss_cp"].detach()) > 0


def test_geometry_only_training_needs_no_image():
    cfg = tiny_cfg(TRAIN_STAGE="triplet", FEATURES="geometry")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    inputs = make_inputs((3, 4))
    for x in inputs:
        del x["image"]
    with EventStorage():
        losses = model(inputs)
    losses["loss_cp"].backward()
    assert model.roi_heads.relation_predictor.subject_branch[0].weight.grad is not None


def test_triplet_stage_on_box_head_features_keeps_the_detector_frozen():
    cfg = tiny_cfg(TRAIN_STAGE="triplet", FEATURES="box_head")
    cfg.SOLVER.BASE_LR = 0.1
    model, before, losses = _one_step(cfg)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(TRAINED["triplet"]) for k in changed)
    # the branches read the box head's output (FC_DIM wide)
    assert model.roi_heads.relation_predictor.subject_branch[0].in_features == cfg.MODEL.ROI_BOX_HEAD.FC_DIM
