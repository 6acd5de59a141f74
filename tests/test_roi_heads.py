"""The relation ROI heads and VRDRCNN: the relation field, gold-box modes, empty images,
checkpoints (and version-1 checkpoints), geometry-only. Tiny random models on CPU. The pair and
spatial-mask tests are in test_pairs.py and test_spatial.py."""

import logging
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou

import vrd_d2.modeling  # noqa: F401
from vrd_d2.config import add_vrd_config
from vrd_d2.modeling.cp_triplet import TripletPrior
from vrd_d2.modeling.pairs import all_ordered_pairs
from vrd_d2.modeling.relation_inference import RELATION_FIELDS

S, P = 4, 3


def tiny_cfg(**vrd):
    cfg = get_cfg()
    add_vrd_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-VRD-CP.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VGG.WIDTH_DIVISOR = 16
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]]
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = S
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.VRD.NUM_PREDICATES = P
    cfg.MODEL.VRD.RANK = 2
    cfg.MODEL.VRD.FC_DIMS = [16]
    cfg.MODEL.VRD.SELECTION_FC_DIM = 8
    cfg.MODEL.VRD.SPATIAL_DIM = 8
    cfg.MODEL.VRD.SPATIAL_MASK_SIZE = 16
    cfg.MODEL.VRD.SPATIAL_CONV_DIMS = [2, 4]
    cfg.MODEL.VRD.TEST.TOPK_PER_IMAGE = 20
    for k, v in vrd.items():
        setattr(cfg.MODEL.VRD, k, v)
    return cfg


def make_inputs(n_boxes=(3, 4), size=64, orig=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in n_boxes:
        xy = torch.rand(n, 2, generator=g) * (size - 20)
        wh = 6 + torch.rand(n, 2, generator=g) * 12
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat((xy, xy + wh), 1))
        inst.gt_classes = torch.randint(0, S, (n,), generator=g)
        rel = [(i, (i + 1) % n, i % P) for i in range(n)] if n >= 2 else []
        out.append(
            {
                "image": torch.randint(0, 255, (3, size, size), generator=g).float(),
                "height": orig,
                "width": orig,
                "instances": inst,
                "relations": torch.tensor(rel, dtype=torch.long).reshape(-1, 3),
            }
        )
    return out


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


# ------------------------------------------------------------------------------------ outputs
def _check_relation_field(rel, inst, n_boxes, orig):
    assert set(RELATION_FIELDS) <= set(rel.get_fields())
    t = len(rel)
    for f in RELATION_FIELDS:
        assert len(rel.get(f)) == t, f
    assert rel.image_size == (orig, orig)
    assert rel.pair_indices.shape == (t, 2)
    if t == 0:
        return
    assert (rel.pair_indices[:, 0] != rel.pair_indices[:, 1]).all()
    assert int(rel.pair_indices.max()) < n_boxes
    assert torch.equal(rel.subject_boxes.tensor, inst.pred_boxes.tensor[rel.pair_indices[:, 0]])
    assert torch.equal(rel.object_boxes.tensor, inst.pred_boxes.tensor[rel.pair_indices[:, 1]])
    assert (rel.scores[:-1] >= rel.scores[1:]).all()
    assert ((rel.scores >= 0) & (rel.scores <= 1)).all()
    # pair_rank: within a pair, ranks 0.. in score order (the union keeps each pair's prefix)
    for pair in {tuple(p) for p in rel.pair_indices.tolist()}:
        rows = [i for i, p in enumerate(rel.pair_indices.tolist()) if tuple(p) == pair]
        ranks = rel.pair_rank[rows].tolist()
        assert ranks == list(range(len(rows))), (pair, ranks)


@pytest.mark.parametrize("mode", ["phrase_cls", "predcls"])
def test_gold_box_modes_use_the_given_boxes(mode):
    cfg = tiny_cfg(MODE=mode)
    model = build(cfg)
    inputs = make_inputs((3, 4))
    with torch.no_grad():
        outs = model(inputs)
    for x, out in zip(inputs, outs):
        inst, rel = out["instances"], out["relations"]
        n = len(x["instances"])
        # given boxes, scaled from the 64 px input to the 128 px original
        torch.testing.assert_close(inst.pred_boxes.tensor, x["instances"].gt_boxes.tensor * 2)
        _check_relation_field(rel, inst, n, 128)
        pairs = {tuple(p) for p in rel.pair_indices.tolist()}
        assert pairs == {(i, j) for i in range(n) for j in range(n) if i != j}
        assert len(rel) <= len(cfg.MODEL.VRD.TEST.K_PER_PAIR) * cfg.MODEL.VRD.TEST.TOPK_PER_IMAGE
        if mode == "predcls":
            cls = x["instances"].gt_classes
            assert torch.equal(rel.subject_classes, cls[rel.pair_indices[:, 0]])
            assert torch.equal(rel.object_classes, cls[rel.pair_indices[:, 1]])
            # every pair's P predicates fit in top-20: rows = all (pair, predicate)
            assert len(rel) == min(n * (n - 1) * P, 20) or len(rel) >= 20


def test_union_over_k_matches_each_k_selection():
    """For each k in K_PER_PAIR, the top-K rows with pair_rank < k must be the model's own top-K
    under "at most k per pair": check against brute force over dense scores of the same logits."""
    cfg = tiny_cfg(MODE="phrase_cls", USE_PRIOR=False)
    cfg.MODEL.VRD.TEST.K_PER_PAIR = [1, 2, 0]
    cfg.MODEL.VRD.TEST.TOPK_PER_IMAGE = 10
    model = build(cfg)
    inputs = make_inputs((4,))
    with torch.no_grad():
        rel = model(inputs)[0]["relations"]
        heads = model.roi_heads
        boxes = inputs[0]["instances"].gt_boxes.tensor
        feats = model.backbone(model.preprocess_image(inputs).tensor)
        pairs = all_ordered_pairs(4)
        out = heads.relation_predictor.pair_logits(feats, [boxes], [pairs], [(64, 64)])
        from vrd_d2.modeling.cp_triplet import dense_log_prob

        dense = dense_log_prob(out["s_s"], out["s_p"], out["s_o"]).flatten(1)
        dense = dense + torch.nn.functional.logsigmoid(out["sel"])[:, None]
    for k in (1, 2, 0):
        sel = rel[rel.pair_rank < k] if k else rel
        got = sel.scores[:10]
        per_pair = dense.sort(1, descending=True).values[:, : (k or dense.shape[1])]
        want = per_pair.flatten().sort(descending=True).values[:10].exp()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n_boxes", [0, 1])
def test_zero_or_one_box_gives_empty_relations(n_boxes):
    model = build(tiny_cfg(MODE="phrase_cls"))
    with torch.no_grad():
        out = model(make_inputs((n_boxes, 3)))
    assert len(out[0]["relations"]) == 0
    _check_relation_field(out[0]["relations"], out[0]["instances"], n_boxes, 128)
    assert len(out[1]["relations"]) > 0


def test_sgdet_detected_boxes():
    model = build(tiny_cfg(MODE="sgdet"))
    with torch.no_grad():
        outs = model(make_inputs((3, 2)))
    for out in outs:
        inst = out["instances"]
        assert inst.has("pred_boxes") and inst.has("scores") and inst.has("pred_classes")
        _check_relation_field(out["relations"], inst, len(inst), 128)
        # class-agnostic NMS 0.7 before pairing
        iou = pairwise_iou(inst.pred_boxes, inst.pred_boxes)
        assert (iou.triu(1) <= 0.7 + 1e-6).all()


def test_switches_change_the_scores():
    inputs = make_inputs((3,))
    model = build(tiny_cfg(MODE="phrase_cls"))
    model.roi_heads.set_triplet_counts(np.random.RandomState(0).randint(0, 3, (S, P, S)))
    with torch.no_grad():
        base = model(inputs)[0]["relations"].scores
        model.roi_heads.relation_inference.use_selection = False
        no_sel = model(inputs)[0]["relations"].scores
        model.roi_heads.relation_inference.use_prior = False
        no_prior = model(inputs)[0]["relations"].scores
    assert not torch.allclose(base, no_sel) and not torch.allclose(no_sel, no_prior)


def test_checkpoint_roundtrip_identical_outputs(tmp_path):
    cfg = tiny_cfg(MODE="phrase_cls")
    a = build(cfg, seed=0)
    a.roi_heads.set_triplet_counts(np.random.RandomState(0).randint(0, 3, (S, P, S)))
    inputs = make_inputs((4,))
    DetectionCheckpointer(a, save_dir=str(tmp_path)).save("m")
    b = build(cfg, seed=1)
    assert b.roi_heads.prior.num_support == 0
    DetectionCheckpointer(b).load(str(tmp_path / "m.pth"))
    assert b.roi_heads.prior.num_support == a.roi_heads.prior.num_support > 0
    assert torch.equal(b.roi_heads.prior.to_dense(), a.roi_heads.prior.to_dense())
    with torch.no_grad():
        ra, rb = a(inputs)[0]["relations"], b(inputs)[0]["relations"]
    for f in RELATION_FIELDS:
        va, vb = ra.get(f), rb.get(f)
        va, vb = (va.tensor, vb.tensor) if isinstance(va, Boxes) else (va, vb)
        assert torch.equal(va, vb), f


def _version1_state_dict(model, with_metadata=True):
    """``model``'s state_dict as a checkpoint written before the relation predictor became a
    submodule (roi_heads version 1): its branches at roi_heads.<branch>.*."""
    sd = model.state_dict()
    old = OrderedDict((k.replace("roi_heads.relation_predictor.", "roi_heads."), v.clone()) for k, v in sd.items())
    assert len(old) == len(sd) and any(k.startswith("roi_heads.subject_branch.") for k in old)
    if with_metadata:
        meta = OrderedDict(
            (k.replace("roi_heads.relation_predictor.", "roi_heads."), dict(v))
            for k, v in sd._metadata.items()
            if k != "roi_heads.relation_predictor"
        )
        meta["roi_heads"]["version"] = 1
        old._metadata = meta
    return old


class _RecordingCheckpointer(DetectionCheckpointer):
    """Keeps the incompatible keys of its last load (``load`` itself returns the checkpoint's
    other entries)."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


@pytest.mark.parametrize("with_metadata", [True, False])
def test_version1_checkpoint_loads_with_identical_outputs(tmp_path, with_metadata):
    cfg = tiny_cfg(MODE="phrase_cls")
    a = build(cfg, seed=0)
    a.roi_heads.set_triplet_counts(np.random.RandomState(0).randint(0, 3, (S, P, S)))
    torch.save({"model": _version1_state_dict(a, with_metadata)}, tmp_path / "old.pth")
    b = build(cfg, seed=1)
    assert not torch.equal(
        b.roi_heads.relation_predictor.subject_branch[0].weight, a.roi_heads.relation_predictor.subject_branch[0].weight
    )
    checkpointer = _RecordingCheckpointer(b)
    checkpointer.load(str(tmp_path / "old.pth"))
    # every version-1 key found its new name: none missing from the model, none left over
    incompatible = checkpointer.incompatible
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    inputs = make_inputs((4,))
    with torch.no_grad():
        ra, rb = a(inputs)[0]["relations"], b(inputs)[0]["relations"]
    assert len(ra) > 0
    for f in RELATION_FIELDS:
        va, vb = ra.get(f), rb.get(f)
        va, vb = (va.tensor, vb.tensor) if isinstance(va, Boxes) else (va, vb)
        assert torch.equal(va, vb), f


def test_version1_checkpoint_with_another_shape_is_skipped_with_a_warning(tmp_path, caplog):
    """As fvcore does for current keys: a version-1 branch tensor of another shape (another rank)
    is not loaded, and the log names it; the other branches load."""
    a = build(tiny_cfg(MODE="phrase_cls", RANK=3), seed=0)
    torch.save({"model": _version1_state_dict(a)}, tmp_path / "old.pth")
    b = build(tiny_cfg(MODE="phrase_cls", RANK=2), seed=1)
    before = b.roi_heads.relation_predictor.subject_branch[-1].weight.clone()
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(b).load(str(tmp_path / "old.pth"))
    assert "roi_heads.subject_branch.2.weight" in caplog.text
    assert torch.equal(b.roi_heads.relation_predictor.subject_branch[-1].weight, before)
    assert torch.equal(
        b.roi_heads.relation_predictor.spatial_branch.fc.weight, a.roi_heads.relation_predictor.spatial_branch.fc.weight
    )


def test_empty_checkpoint_prior_keeps_the_training_prior(tmp_path):
    cfg = tiny_cfg(MODE="phrase_cls")
    a = build(cfg)  # no counts
    DetectionCheckpointer(a, save_dir=str(tmp_path)).save("m")
    b = build(cfg)
    counts = np.random.RandomState(0).randint(0, 3, (S, P, S))
    b.roi_heads.set_triplet_counts(counts)
    DetectionCheckpointer(b).load(str(tmp_path / "m.pth"))
    assert torch.equal(b.roi_heads.triplet_counts, torch.as_tensor(counts, dtype=torch.float32))
    assert torch.equal(b.roi_heads.prior.to_dense(), TripletPrior.from_counts(counts).to_dense())


def test_geometry_only_needs_no_image_and_no_backbone():
    model = build(tiny_cfg(MODE="phrase_cls", FEATURES="geometry"))
    inputs = make_inputs((3,))
    for x in inputs:
        del x["image"]

    def boom(*a, **k):
        raise AssertionError("backbone called")

    model.backbone.forward = boom
    with torch.no_grad():
        out = model(inputs)[0]
    _check_relation_field(out["relations"], out["instances"], 3, 128)
    assert len(out["relations"]) > 0


def test_gold_box_mode_without_instances_names_the_problem():
    model = build(tiny_cfg(MODE="phrase_cls"))
    inputs = make_inputs((3,))
    del inputs[0]["instances"]
    with pytest.raises(ValueError, match="instances"):
        model(inputs)


def test_box_head_feature_mode_runs_in_gold_box_mode():
    model = build(tiny_cfg(MODE="predcls", FEATURES="box_head"))
    with torch.no_grad():
        out = model(make_inputs((3,)))[0]
    _check_relation_field(out["relations"], out["instances"], 3, 128)
    assert len(out["relations"]) == 3 * 2 * P


def test_prior_alone_scores_are_the_add1_frequencies():
    """USE_CP False, no selection, predcls: each pair's predicate scores are the add-1 smoothed
    training frequencies P(p | s, o) ∝ count(s, p, o) + 1 (up to the pair's constant), computed
    here by hand from the counts."""
    inputs = make_inputs((4,))
    model = build(tiny_cfg(MODE="predcls", USE_CP=False, USE_SELECTION=False))
    counts = np.random.RandomState(1).randint(0, 5, (S, P, S))
    model.roi_heads.set_triplet_counts(counts)
    with torch.no_grad():
        rel = model(inputs)[0]["relations"]
    assert len(rel) > 0
    for (s, p, o), score, (i, j) in zip(
        zip(rel.subject_classes.tolist(), rel.predicate_classes.tolist(), rel.object_classes.tolist()),
        rel.scores.tolist(),
        rel.pair_indices.tolist(),
    ):
        same_pair = [
            (pp, sc)
            for pp, sc, pr in zip(rel.predicate_classes.tolist(), rel.scores.tolist(), rel.pair_indices.tolist())
            if pr == [i, j]
        ]
        for pp, sc in same_pair:  # ratios within a pair follow (count + 1)
            assert sc / score == pytest.approx((counts[s, pp, o] + 1) / (counts[s, p, o] + 1), rel=1e-4)


def _assert_each_pair_sums_to_one(model, inputs, n_rows):
    """Both pairs of a 2-box image get n_rows predictions whose scores sum to 1."""
    with torch.no_grad():
        rel = model(inputs)[0]["relations"]
    for pair in ([0, 1], [1, 0]):
        rows = [i for i, p in enumerate(rel.pair_indices.tolist()) if p == pair]
        assert len(rows) == n_rows
        assert rel.scores[rows].sum().item() == pytest.approx(1.0, abs=1e-5)


def test_predcls_scores_are_conditional_predicate_probabilities():
    """Labels given, no selection, box scores 1: a pair's scores over all predicates are
    P(p | s, o, b) and sum to 1 (the score of the issue: conf_s conf_o P(p | s, o, b) P(X_sel))."""
    inputs = make_inputs((2,))
    cfg = tiny_cfg(MODE="predcls", USE_SELECTION=False, CRF_NORMALIZE=True)
    cfg.MODEL.VRD.TEST.TOPK_PER_IMAGE = 2 * P
    model = build(cfg)
    model.roi_heads.set_triplet_counts(np.random.RandomState(2).randint(0, 4, (S, P, S)))
    _assert_each_pair_sums_to_one(model, inputs, P)


def test_phrase_cls_scores_are_a_distribution_per_pair_with_the_prior():
    """With the prior, P(t | b) = psi_c psi_u / sum_t psi_c psi_u: with no selection and box scores
    1, one pair's scores over all S*P*S triplets sum to 1 (checked on a tiny tensor, all rows)."""
    inputs = make_inputs((2,))
    cfg = tiny_cfg(MODE="phrase_cls", USE_SELECTION=False, CRF_NORMALIZE=True)
    cfg.MODEL.VRD.TEST.TOPK_PER_IMAGE = 2 * S * P * S
    cfg.MODEL.VRD.TEST.K_PER_PAIR = [0]
    model = build(cfg)
    model.roi_heads.set_triplet_counts(np.random.RandomState(3).randint(0, 4, (S, P, S)))
    _assert_each_pair_sums_to_one(model, inputs, S * P * S)


def test_cp_init_bias_std_makes_components_differ_and_selection_starts_at_one_half():
    """MODEL.VRD.CP_INIT_BIAS_STD: the factor branches' output biases ~ N(0, std^2), so the R
    components differ by O(std) logits from the start (0: zero biases, the components differ only
    by the small random weights); the selection head always starts at P(X_sel) ~ 1/2."""
    g = torch.Generator().manual_seed(0)
    gaps = {}
    for std in (0.0, 0.5):
        heads = build(tiny_cfg(RANK=3, CP_INIT_BIAS_STD=std)).roi_heads.relation_predictor
        for name, n in (("subject_branch", S), ("object_branch", S), ("predicate_branch", P)):
            branch = getattr(heads, name)
            if std == 0:
                assert torch.equal(branch[-1].bias, torch.zeros_like(branch[-1].bias))
            else:
                assert float(branch[-1].bias.std()) == pytest.approx(std, rel=0.6)
            x = torch.randn(6, branch[0].in_features, generator=g)
            out = branch(x).view(6, 3, n)
            gap = (out[:, None] - out[:, :, None]).abs().amax(dim=(0, 3))  # [R, R] largest logit gap
            gaps[std, name] = float(gap[~torch.eye(3, dtype=torch.bool)].min())
        x = torch.randn(6, heads.selection_head[0].in_features, generator=g)
        assert float(torch.sigmoid(heads.selection_head(x)).sub(0.5).abs().max()) < 0.05
    for name in ("subject_branch", "object_branch", "predicate_branch"):
        assert gaps[0.5, name] > 0.1 and gaps[0.5, name] > 3 * gaps[0.0, name], gaps
