"""VRDCheckpointer: no untrusted unpickling, relation-head shape mismatches and missing relation-head
weights are errors naming keys and shapes, an empty prior with USE_PRIOR is an error at evaluation."""

import pickle

import numpy as np
import pytest
import torch
from conftest import SMALL_HEAD  # noqa: E402  (tests/ is on sys.path under pytest)

from vrd_d2.checkpoint import VRDCheckpointer, is_relation_head_key
from vrd_d2.engine import Trainer

SMALL = [
    "DATASETS.TRAIN",
    "()",
    *SMALL_HEAD,
    "MODEL.VRD.USE_PRIOR",
    "False",
]


@pytest.fixture
def build(tiny_cfg):
    def make(*opts):
        torch.manual_seed(0)
        return Trainer.build_model(tiny_cfg("Shapes/geometry_only.yaml", *SMALL, *opts))

    return make


class _WritesAFile:
    """Unpickling this creates ``path``: proof that a loader ran code from the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_relation_head_key_predicate_old_and_new_layouts():
    for key in (
        "roi_heads.relation_predictor.subject_branch.0.weight",
        "roi_heads.relation_predictor.subject_branch.0.weight",
        "roi_heads.relation_predictor.selection_head.2.bias",
        "roi_heads.relation_predictor.spatial_branch.fc.weight",
        "roi_heads.triplet_counts",
    ):
        assert is_relation_head_key(key), key
    for key in (
        "roi_heads.box_head.fc1.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "backbone.conv1.weight",
        "proposal_generator.rpn_head.conv.weight",
        "roi_heads.mask_head.mask_fcn1.weight",
    ):
        assert not is_relation_head_key(key), key


def test_pickle_refused_unless_trusted(build, tmp_path):
    model = build()
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {}, "x": _WritesAFile(marker)}))
    with pytest.raises(ValueError, match=r"evil.pkl is a pickle file.*--trust-pickle.*trust_pickle=True"):
        VRDCheckpointer(model).load(str(evil))
    assert not marker.exists()
    # a .pth that needs arbitrary unpickling is refused the same way
    evil_pth = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "x": _WritesAFile(marker)}, evil_pth)
    with pytest.raises(ValueError, match=r"evil.pth .*arbitrary unpickling.*--trust-pickle"):
        VRDCheckpointer(model).load(str(evil_pth))
    assert not marker.exists()
    # trusted: detectron2's pickle path (numpy arrays, as the model zoo's .pkl)
    good = tmp_path / "good.pkl"
    state = {k: v.numpy() + 1 for k, v in model.state_dict().items()}
    good.write_bytes(pickle.dumps({"model": state, "__author__": "test"}))
    VRDCheckpointer(model, trust_pickle=True).load(str(good))
    np.testing.assert_allclose(
        model.roi_heads.relation_predictor.subject_branch[0].weight.detach().numpy(),
        state["roi_heads.relation_predictor.subject_branch.0.weight"],
    )
    # a .pth of numpy arrays needs unpickling too: refused, then loaded when trusted
    np_pth = tmp_path / "numpy.pth"
    torch.save({"model": {k: v + 1 for k, v in state.items()}}, np_pth)
    with pytest.raises(ValueError, match=r"numpy.pth .*Unsupported global.*numpy.*--trust-pickle"):
        VRDCheckpointer(model).load(str(np_pth))
    VRDCheckpointer(model, trust_pickle=True).load(str(np_pth))
    np.testing.assert_allclose(
        model.roi_heads.relation_predictor.subject_branch[0].weight.detach().numpy(),
        state["roi_heads.relation_predictor.subject_branch.0.weight"] + 1,
    )


def test_plain_pth_loads_with_weights_only(build, tmp_path):
    src, dst = build(), build("SEED", "5")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    path = tmp_path / "model.pth"
    torch.save({"model": src.state_dict(), "iteration": 3}, path)
    extra = VRDCheckpointer(dst, require_relation_head=True).load(str(path))
    assert extra == {"iteration": 3}
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_relation_head_shape_mismatch_names_key_and_shapes(build, tmp_path):
    path = tmp_path / "rank5.pth"
    torch.save({"model": build("MODEL.VRD.RANK", "5").state_dict()}, path)
    rank2 = build("MODEL.VRD.RANK", "2")
    msg = r"roi_heads.relation_predictor.subject_branch.2.weight has shape \(30, 8\) in the checkpoint but \(12, 8\) in the model"
    with pytest.raises(ValueError, match=msg):
        VRDCheckpointer(rank2, require_relation_head=True).load(str(path))
    # stage 3 freezes the CP branches: a mismatch would leave them random, also without require_relation_head
    sel = build("MODEL.VRD.RANK", "2", "MODEL.VRD.TRAIN_STAGE", "selection")
    with pytest.raises(ValueError, match=msg):
        VRDCheckpointer(sel).load(str(path))
    # predicate count
    torch.save(
        {"model": build("MODEL.VRD.NUM_PREDICATES", "7", "MODEL.VRD.TRAIN_STAGE", "selection").state_dict()}, path
    )
    with pytest.raises(
        ValueError, match=r"predicate_branch.2.weight has shape \(35, 8\) in the checkpoint but " r"\(50, 8\)"
    ):
        VRDCheckpointer(build("MODEL.VRD.TRAIN_STAGE", "selection")).load(str(path))


def test_stage2_may_reinitialise_what_it_trains(build, tmp_path):
    """Stage 2 of another rank from a stage-1 checkpoint: the CP branches are trained from scratch."""
    path = tmp_path / "stage1.pth"
    stage1 = build("MODEL.VRD.RANK", "5", "MODEL.VRD.TRAIN_STAGE", "detector")
    torch.save({"model": stage1.state_dict()}, path)
    stage2 = build("MODEL.VRD.RANK", "2", "MODEL.VRD.TRAIN_STAGE", "triplet")
    before = stage2.roi_heads.relation_predictor.subject_branch[2].weight.detach().clone()
    VRDCheckpointer(stage2).load(str(path))
    assert torch.equal(stage2.roi_heads.relation_predictor.subject_branch[2].weight, before)  # kept its own init
    assert torch.equal(stage2.roi_heads.box_head.fc1.weight, stage1.roi_heads.box_head.fc1.weight)


def test_missing_relation_head_or_nothing_matched(build, tmp_path):
    model = build()
    detector_only = {k: v for k, v in model.state_dict().items() if not is_relation_head_key(k)}
    path = tmp_path / "det.pth"
    torch.save({"model": detector_only}, path)
    VRDCheckpointer(build()).load(str(path))  # training from a detector: fine
    with pytest.raises(
        ValueError, match=r"det.pth lacks relation-head weights: .*roi_heads.relation_predictor.object_branch.0.bias"
    ):
        VRDCheckpointer(build(), require_relation_head=True).load(str(path))
    torch.save({"model": {"some.other.weight": torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match="matches no weight of the model"):
        VRDCheckpointer(build(), require_relation_head=True).load(str(path))
    with pytest.raises(ValueError, match="no checkpoint given"):
        VRDCheckpointer(build(), require_relation_head=True).load("")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pth"):
        VRDCheckpointer(build()).load(str(tmp_path / "nope.pth"))


def test_use_prior_with_empty_prior_is_an_error_at_evaluation(build, tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"model": build().state_dict()}, path)  # DATASETS.TRAIN (): all-zero counts
    with pytest.raises(ValueError, match=r"USE_PRIOR is on but the triplet prior is empty.*DATASETS.TRAIN"):
        VRDCheckpointer(build("MODEL.VRD.USE_PRIOR", "True"), require_relation_head=True).load(str(path))
    VRDCheckpointer(build("MODEL.VRD.USE_PRIOR", "False"), require_relation_head=True).load(str(path))
    state = build().state_dict()
    state["roi_heads.triplet_counts"][0, 1, 2] = 4.0  # counts saved by training
    torch.save({"model": state}, path)
    model = build("MODEL.VRD.USE_PRIOR", "True")
    VRDCheckpointer(model, require_relation_head=True).load(str(path))
    assert float(model.roi_heads.triplet_counts.sum()) == 4.0


def test_train_net_eval_only_refuses_pickle_and_detector_checkpoint(build, tmp_path, repo_root):
    from tools_loader import load_tool

    tool = load_tool("train_net")
    model = build()
    det = tmp_path / "det.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items() if not is_relation_head_key(k)}}, det)
    pkl = tmp_path / "w.pkl"
    pkl.write_bytes(pickle.dumps({"model": {}}))
    base = ["--config-file", str(repo_root / "configs" / "Shapes" / "geometry_only.yaml"), "--eval-only"]
    for weights, msg in (
        (pkl, "--trust-pickle"),
        (det, r"lacks relation-head weights|model tensor\(s\) absent from the checkpoint.*relation_predictor"),
    ):
        with pytest.raises(ValueError, match=msg):
            tool.main(base + SMALL + ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "out")])


def test_training_counts_its_own_training_set_evaluation_keeps_the_checkpoints(tiny_cfg, tmp_path):
    """MODEL.WEIGHTS from a run on another split of the same label space: a training run's psi_u
    is its own DATASETS.TRAIN's counts (the paper's prior), evaluation keeps the checkpoint's."""
    from detectron2.data import DatasetCatalog

    from vrd_d2.data import compute_triplet_counts, get_triplet_counts
    from vrd_d2.modeling.triplet_prior import TripletPrior

    opts = [*SMALL, "DATASETS.TRAIN", "('shapes_train',)", "MODEL.VRD.USE_PRIOR", "True", "DATASETS.TEST", "()"]
    cfg = tiny_cfg("Shapes/geometry_only.yaml", *opts, "OUTPUT_DIR", str(tmp_path / "run"))
    train = get_triplet_counts("shapes_train")
    other = compute_triplet_counts(DatasetCatalog.get("shapes_val"), 6, 10)  # another split, same shape
    assert other.sum() > 0 and not np.array_equal(other, train)
    state = Trainer.build_model(cfg).state_dict()
    assert np.array_equal(state["roi_heads.triplet_counts"].numpy(), train)  # built from DATASETS.TRAIN
    state["roi_heads.triplet_counts"] = torch.as_tensor(other, dtype=torch.float32)
    weights = tmp_path / "other_split.pth"
    torch.save({"model": state}, weights)

    cfg.MODEL.WEIGHTS = str(weights)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    heads = trainer.model.roi_heads
    np.testing.assert_array_equal(heads.triplet_counts.numpy(), train)
    expected = TripletPrior.from_counts(torch.tensor(train)).to_dense()
    torch.testing.assert_close(heads.prior.to_dense(), expected, rtol=0, atol=0)

    model = Trainer.build_model(cfg)
    VRDCheckpointer(model, require_relation_head=True).load(str(weights))
    np.testing.assert_array_equal(model.roi_heads.triplet_counts.numpy(), other)
