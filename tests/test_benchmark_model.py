"""tools/benchmark_model.py and its library (vrd_d2_studies/benchmarks/model_benchmark.py): the paper's dense
decoding returns the relations of our exact decoding, checked against the dense tensor computed
here; the tool runs end to end on 2 real images with shrunk widths and writes its figures."""

import json

import pytest
import torch
from detectron2.structures import Boxes, Instances
from paper_data import TINY as PAPER_TINY
from tools_loader import load_tool

from vrd_d2.modeling.cp_triplet import dense_log_prob
from vrd_d2.modeling.decode import topk_predicates_given_labels, topk_triplets_per_pair
from vrd_d2.modeling.triplet_prior import TripletPrior
from vrd_d2_studies.benchmarks.model_benchmark import (
    BenchRelationInference,
    dense_predicates_given_labels,
    same_decoding,
    same_relations,
)

S, P, R = 7, 5, 3
# paper_data's shrunk input size and widths (its training keys are unused here), fewer boxes and pairs
TINY = PAPER_TINY + ["TEST.DETECTIONS_PER_IMAGE", "6", "MODEL.VRD.MAX_PAIRS_PER_IMAGE", "12"]


def _prior():
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(0, 4, (S, P, S), generator=g) * (torch.rand(S, P, S, generator=g) < 0.2)
    return TripletPrior.from_counts(counts)


class FakePairLogits:
    """The predictor's ``pair_logits`` with random logits of ``scale`` (a new draw per call, kept)."""

    def __init__(self, scale):
        self.scale, self.calls, self.gen = scale, [], torch.Generator().manual_seed(int(10 * scale))

    def __call__(self, features, boxes, pairs, image_sizes, want_cp=True, want_sel=True):
        n, g, c = pairs[0].shape[0], self.gen, self.scale
        out = {
            "s_s": c * torch.randn(n, R, S, generator=g),
            "s_p": c * torch.randn(n, R, P, generator=g),
            "s_o": c * torch.randn(n, R, S, generator=g),
            "sel": torch.randn(n, generator=g),
        }
        self.calls.append({k: v.clone() for k, v in out.items()})
        return out


def _instances(n=6):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(n, 2, generator=g) * 50
    return Instances(
        (100, 100),
        pred_boxes=Boxes(torch.cat((xy, xy + 10 + 40 * torch.rand(n, 2, generator=g)), 1)),
        scores=0.2 + 0.8 * torch.rand(n, generator=g),
        pred_classes=torch.randint(0, S, (n,), generator=g),
    )


def test_dense_predicates_match_the_dense_tensor_and_ours():
    g = torch.Generator().manual_seed(0)
    s_s, s_p, s_o = (torch.randn(9, R, c, generator=g) for c in (S, P, S))
    sub, obj = torch.randint(0, S, (9,), generator=g), torch.randint(0, S, (9,), generator=g)
    prior = _prior()
    v, t = dense_predicates_given_labels(s_s, s_p, s_o, sub, obj, 3, prior=prior)
    full = dense_log_prob(s_s, s_p, s_o) + prior.to_dense(log=True).float()  # [N, S, P, S]
    by_hand = full[torch.arange(9), sub, :, obj].topk(3, dim=1)
    assert torch.allclose(v, by_hand.values, atol=1e-5)
    assert torch.equal(t[..., 1], by_hand.indices)
    assert torch.equal(t[..., 0], sub[:, None].expand(9, 3)) and torch.equal(t[..., 2], obj[:, None].expand(9, 3))
    w = torch.randn(9, generator=g)
    ours = topk_predicates_given_labels(s_s, s_p, s_o, sub, obj, 3, prior=prior, pair_log_weight=w, normalize=True)
    dense = dense_predicates_given_labels(s_s, s_p, s_o, sub, obj, 3, prior=prior, pair_log_weight=w, normalize=True)
    assert torch.allclose(ours[0], dense[0], atol=1e-5) and torch.equal(ours[1], dense[1])


@pytest.mark.parametrize("crf_normalize", [False, True])
@pytest.mark.parametrize("mode", ["predcls", "phrase_cls", "sgdet"])
def test_dense_decoding_returns_our_relations(mode, crf_normalize):
    prior, inst = _prior(), _instances()
    kw = dict(mode=mode, topk_per_image=20, k_per_pair=(1, 0), pair_batch=7, crf_normalize=crf_normalize)
    ours, dense = BenchRelationInference(**kw), BenchRelationInference(dense=True, **kw)
    assert dense.decode_triplets is not ours.decode_triplets
    for scale in (1.0, 3.0):
        logits = FakePairLogits(scale)
        a = ours(logits, prior, {}, inst)
        logits.gen.manual_seed(int(10 * scale))  # the same draws for the dense decoder
        b = dense(logits, prior, {}, inst)
        assert len(a) >= 20 and same_relations(a, b)  # union over k of the top 20
        assert same_decoding(ours.decoded, dense.decoded)
        if mode != "predcls":  # each pair's top-1 triplet, by hand from the dense tensor
            calls = logits.calls[len(logits.calls) // 2 :]
            lp = torch.cat([dense_log_prob(d["s_s"], d["s_p"], d["s_o"]).flatten(1) for d in calls])
            top = torch.cat([t[:, 0] for _, t in dense.decoded])
            assert torch.equal(
                (top[:, 0] * P + top[:, 1]) * S + top[:, 2], (lp + prior.to_dense(log=True).flatten().float()).argmax(1)
            )
        ours.reset()
        dense.reset()
        assert ours.decoded == [] and ours.decode_seconds == 0.0


def test_same_decoding_sees_a_changed_triplet():
    v = torch.tensor([[-1.0, -2.0, -3.0]])
    t = torch.tensor([[[0, 0, 0], [1, 1, 1], [2, 2, 2]]])
    t2 = t.clone()
    t2[0, 2, 1] = 3
    assert same_decoding([(v, t)], [(v, t)])
    assert not same_decoding([(v, t)], [(v, t2)])
    assert not same_decoding([(v, t)], [(v + 0.01, t)])
    tie = torch.tensor([[-1.0, -1.0, -3.0]])
    assert same_decoding([(tie, t)], [(tie, t[:, [1, 0, 2]])])  # order among exact ties is free


def test_tool_runs_end_to_end_on_real_images(shared_vrd, tmp_path):
    out = tmp_path / "bench.json"
    rc = load_tool("benchmark_model").main(
        ["--vrd-root", str(shared_vrd), "--images", "2", "--warmup", "0", "--json", str(out)] + TINY
    )
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {(r["row"], r["decoder"]) for r in res["rows"]}
    assert {("stage2_train", "-"), ("stage3_train", "-")} <= rows
    for name in ("predcls", "phrase_cls", "sgdet", "vg150_scoring", "vg150_scoring_peaked"):
        assert {(name, "ours"), (name, "dense")} <= rows
    assert len(res["images"]) == 2
    for r in res["rows"]:
        assert r["seconds_per_image"] > 0 and r["peak_bytes"] > 0
        if r["decoder"] == "dense":
            assert r["same_triplets"] is True, r
    assert res["relation_scoring_speedup_vg150"] > 0 and res["relation_scoring_speedup_vg150_peaked"] > 0
    assert set(res["inference_speedup"]) == {"predcls", "phrase_cls", "sgdet", "vg150_scoring", "vg150_scoring_peaked"}


def test_peak_std_rescales_the_cp_factors():
    seen = []

    def decode(s_s, s_p, s_o, *args, **kwargs):
        seen.append(torch.stack([x.std(-1).mean() for x in (s_s, s_p, s_o)]).mean())
        return topk_triplets_per_pair(s_s, s_p, s_o, *args, **kwargs)

    inf = BenchRelationInference(mode="phrase_cls", topk_per_image=5, k_per_pair=(0,), pair_batch=7, peak_std=2.0)
    inf.decode_triplets = decode
    inf(FakePairLogits(0.01), _prior(), {}, _instances())
    assert len(seen) == len(inf.scales) == 5  # 30 pairs in chunks of 7
    assert all(abs(float(s) - 2.0) < 1e-4 for s in seen)
    assert all(150 < s < 250 for s in inf.scales)  # 2 / (std of 0.01 N(0, 1))


def test_logit_std_is_recorded_as_decoded():
    fake = FakePairLogits(0.5)
    inf = BenchRelationInference(mode="phrase_cls", topk_per_image=5, k_per_pair=(0,), pair_batch=7)
    inf(fake, _prior(), {}, _instances())
    assert len(inf.stds) == 5 and inf.scales == []
    logits = {k: torch.cat([c[k] for c in fake.calls]) for k in ("s_s", "s_p", "s_o")}
    for i, (a, b) in enumerate([(0, 7), (7, 14), (14, 21), (21, 28), (28, 30)]):
        expect = sum(float(logits[k][a:b].std(-1).mean()) for k in logits) / 3
        assert inf.stds[i] == pytest.approx(expect, rel=1e-5)


def test_trained_row_scores_a_checkpoint_on_its_own_logits(shared_vrd, tmp_path, repo_root):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from vrd_d2.config import add_vrd_config

    config = str(repo_root / "configs" / "VRD" / "geometry_only.yaml")
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(config)
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    model.roi_heads.set_triplet_counts(torch.randint(0, 3, (100, 70, 100), generator=g))
    head = model.roi_heads.relation_predictor
    with torch.no_grad():  # peaked log-factors (std ~2 over classes), as training leaves them
        for branch in (head.subject_branch, head.predicate_branch, head.object_branch):
            branch[-1].bias.normal_(0.0, 2.0, generator=g)
    weights = tmp_path / "trained.pth"
    torch.save({"model": model.state_dict()}, weights)
    out = tmp_path / "bench.json"
    tool = load_tool("benchmark_model")
    args = ["--vrd-root", str(shared_vrd), "--images", "1", "--warmup", "0", "--json", str(out)]
    trained = ["--rows", "trained_phrase_cls", "--trained-config", config, "--trained-weights", str(weights)]
    rc = tool.main(args + trained + ["MODEL.VRD.MAX_PAIRS_PER_IMAGE", "12"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [(r["row"], r["decoder"]) for r in res["rows"]] == [
        ("trained_phrase_cls", "ours"),
        ("trained_phrase_cls", "dense"),
    ]
    dense = res["rows"][1]
    assert dense["same_triplets"] is True and dense["same_relations"] == 1.0
    assert res["relation_scoring_speedup_trained"] == dense["scoring_ratio"] > 0
    assert res["trained"] == {"config": config, "weights": str(weights)}
    assert 1.0 < res["rows"][0]["logit_std"] < 3.0  # the biases' spread, not random-init flatness (~0.004)
    with pytest.raises(SystemExit):
        tool.main(args + ["--trained-config", config])


def test_prior_flag_is_recorded_and_checked(shared_vrd, tmp_path):
    out = tmp_path / "bench.json"
    tool = load_tool("benchmark_model")
    args = [
        "--vrd-root",
        str(shared_vrd),
        "--images",
        "1",
        "--warmup",
        "0",
        "--json",
        str(out),
        "--rows",
        "stage3_train",
    ]
    for prior, source in (("images", "these images"), ("train", "annotations_train.json")):
        assert tool.main(args + ["--prior", prior, "--overwrite"] + TINY) == 0  # the second replaces the first
        res = json.loads(out.read_text())
        assert res["prior"] == prior and res["weights"].endswith(source)
    with pytest.raises(SystemExit):
        tool.main(args + ["--prior", "uniform"])
