"""The geometry-only head on the real VRD annotations (skipped without ../shared/data/vrd), and
tools/vrd_real.py's input checks."""

import os

import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402
from conftest import SHARED_VRD_DIR as SHARED_VRD  # noqa: E402
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import vrd_d2  # noqa: F401
from vrd_d2 import add_vrd_config
from vrd_d2.data import VRDDatasetMapper, register_all_vrd
from vrd_d2.engine import build_vrd_optimizer
from vrd_d2_studies.vrd_geometry import study as vrd_real

needs_vrd = pytest.mark.skipif(
    not os.path.isfile(os.path.join(SHARED_VRD, "annotations_train.json")), reason="real VRD annotations not present"
)


def test_missing_vrd_files_are_named(tmp_path):
    tool = vrd_real
    (tmp_path / "annotations_train.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        tool.check_vrd_root(str(tmp_path))
    msg = str(e.value)
    assert "annotations_test.json" in msg and "lu2016/evaluation/gt.mat" in msg
    assert "annotations_train.json," not in msg  # present files are not listed


def test_update_results_writes_the_results_page_section():
    """--update-results (and its deprecated alias --update-readme) write the vrd-real section of
    docs/RESULTS.md, which exists."""
    from tools_loader import load_tool

    from vrd_d2_studies.results_doc import check_readme_section

    assert vrd_real.RESULTS_FILE == os.path.join(REPO, "docs", "RESULTS.md")
    check_readme_section(vrd_real.RESULTS_FILE, vrd_real.README_MARKER)
    parser = load_tool("vrd_real").get_parser()
    assert not parser.parse_args([]).update_readme
    assert (
        parser.parse_args(["--update-results"]).update_readme and parser.parse_args(["--update-readme"]).update_readme
    )


@needs_vrd
def test_geometry_only_head_learns_on_real_annotations():
    """A few SGD steps on 32 real training images (no pixels read): loss_cp falls."""
    if "vrdslice_train" not in DatasetCatalog.list():
        register_all_vrd(SHARED_VRD, prefix="vrdslice_full")
        DatasetCatalog.register(
            "vrdslice_train", lambda: [d for d in DatasetCatalog.get("vrdslice_full_train") if len(d["relations"])][:32]
        )
        meta = MetadataCatalog.get("vrdslice_full_train").as_dict()
        meta.pop("name")
        MetadataCatalog.get("vrdslice_train").set(**meta)
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO, "configs", "VRD", "geometry_only.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = ("vrdslice_train",)
    cfg.MODEL.VRD.FC_DIMS = [128]
    cfg.SOLVER.BASE_LR = 0.05
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    mapper = VRDDatasetMapper(cfg, True)
    assert not mapper.load_image
    batches = []
    dicts = DatasetCatalog.get("vrdslice_train")
    for i in range(0, 32, 8):
        batches.append([mapper(d) for d in dicts[i : i + 8]])
    assert all("image" not in x for b in batches for x in b)
    opt = build_vrd_optimizer(cfg, model)
    losses = []
    with EventStorage():
        for step in range(40):
            loss = model(batches[step % 4])["loss_cp"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)


def test_lu_detections_registered_as_a_dataset(shared_vrd):
    """register_lu_detections: every test image, Lu et al.'s detections as its boxes (the same
    numbers load_lu_detections reads), the detector's confidence as score, no relations."""
    from detectron2.structures import BoxMode

    from vrd_d2.data.datasets.lu2016 import load_lu_detections
    from vrd_d2.data.datasets.lu_detections import register_lu_detections

    det_mat = str(shared_vrd / "lu2016" / "data" / "objectDetRCNN.mat")
    paths = str(shared_vrd / "lu2016" / "data" / "imagePath.mat")
    if "ludet_test_det" not in DatasetCatalog.list():
        register_all_vrd(str(shared_vrd), prefix="ludet")
        register_lu_detections("ludet_test_det", "ludet_test", det_mat, paths)
    test, dets = DatasetCatalog.get("ludet_test"), DatasetCatalog.get("ludet_test_det")
    assert [d["file_name"] for d in dets] == [d["file_name"] for d in test]
    assert MetadataCatalog.get("ludet_test_det").thing_classes == MetadataCatalog.get("ludet_test").thing_classes
    raw = {os.path.splitext(k)[0]: v for k, v in load_lu_detections(det_mat, paths).items()}
    for d in dets[:50]:
        r = raw[os.path.splitext(os.path.basename(d["file_name"]))[0]]
        assert d["relations"].shape == (0, 3)
        assert [a["bbox"] for a in d["annotations"]] == r["boxes"].tolist()
        assert [a["category_id"] for a in d["annotations"]] == r["labels"].tolist()
        assert [a["score"] for a in d["annotations"]] == r["scores"].tolist()
        assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in d["annotations"])


def _register_slices(root, prefix="vrdrealslice", n_train=64, n_test=30):
    """``<prefix>_train`` / ``_test`` / ``_test_lu_det``: the first images of the real splits (a
    fast run of vrd_real; the scores are recall against all of gt.mat, so they are small)."""
    from vrd_d2.data.datasets.lu_detections import register_lu_detections

    if f"{prefix}_test_lu_det" in DatasetCatalog.list():
        return prefix
    register_all_vrd(str(root), prefix=f"{prefix}_full")
    register_lu_detections(
        f"{prefix}_full_test_lu_det",
        f"{prefix}_full_test",
        str(root / "lu2016" / "data" / "objectDetRCNN.mat"),
        str(root / "lu2016" / "data" / "imagePath.mat"),
    )
    for split, n in (("train", n_train), ("test", n_test), ("test_lu_det", n_test)):
        full = f"{prefix}_full_{split}"
        DatasetCatalog.register(f"{prefix}_{split}", lambda full=full, n=n: DatasetCatalog.get(full)[:n])
        meta = MetadataCatalog.get(full).as_dict()
        meta.pop("name")
        if "images_of" in meta:  # as register_lu_detections: its results are scored against the slice
            meta["images_of"] = f"{prefix}_test"
        MetadataCatalog.get(f"{prefix}_{split}").set(**meta)
    return prefix


def _run_tool(root, out, *args):
    from tools_loader import load_tool

    prefix = _register_slices(root)
    argv = ["--vrd-root", str(root), "--output", str(out), "--iters", "2", "--prefix", prefix, *args]
    assert load_tool("vrd_real").main(argv) == 0


def _results(path):
    import json

    with open(path) as f:
        return json.load(f)


def test_variant_crf_normalize_applies(tiny_cfg):
    from vrd_d2_studies.ablation import Variant

    cfg = tiny_cfg("VRD/geometry_only.yaml")
    assert cfg.MODEL.VRD.CRF_NORMALIZE is True
    assert Variant(rank=5).apply(cfg.clone()).MODEL.VRD.CRF_NORMALIZE is True  # None: the config's value
    assert Variant(rank=5, crf_normalize=False).apply(cfg.clone()).MODEL.VRD.CRF_NORMALIZE is False
    eq7 = vrd_real.VARIANTS["rank 5 + X_sel, eq. 7 product"]
    full = vrd_real.VARIANTS["rank 5 + X_sel"]
    assert eq7.crf_normalize is False and full.crf_normalize is None
    assert (eq7.rank, eq7.use_cp, eq7.use_selection, eq7.use_prior) == (
        full.rank,
        full.use_cp,
        full.use_selection,
        full.use_prior,
    )


def test_eq7_row_reuses_the_rank5_weights(tmp_path):
    from types import SimpleNamespace

    opts = SimpleNamespace(output=str(tmp_path), config_file=vrd_real.CONFIG, prefix="x", iters=2, opts=[], seed=3)
    for stage in ("triplet", "selection"):
        a = vrd_real.build_cfg(opts, "rank 5 + X_sel", stage)
        b = vrd_real.build_cfg(opts, "rank 5 + X_sel, eq. 7 product", stage)
        assert a.OUTPUT_DIR == b.OUTPUT_DIR and a.SEED == b.SEED == 3
        assert a.MODEL.VRD.CRF_NORMALIZE is True and b.MODEL.VRD.CRF_NORMALIZE is False


@pytest.fixture(scope="module")
def seed_runs(shared_vrd, tmp_path_factory):
    """Two seeds (0, 1) with saved predictions, and seed 0 once more into another folder."""
    out = tmp_path_factory.mktemp("vrdreal")
    _run_tool(shared_vrd, out / "bands", "--seeds", "0", "1", "--variants", "rank 1", "--save-predictions")
    _run_tool(shared_vrd, out / "again", "--seed", "0", "--variants", "rank 1")
    return out


def test_same_seed_same_results(seed_runs):
    first = _results(seed_runs / "bands" / "seed0" / "results.json")
    again = _results(seed_runs / "again" / "results.json")
    assert first["seed"] == again["seed"] == 0
    assert first["results"] == again["results"]


def test_band_is_mean_min_max_over_seeds(seed_runs):
    runs = [_results(seed_runs / "bands" / f"seed{s}" / "results.json")["results"] for s in (0, 1)]
    bands = _results(seed_runs / "bands" / "bands.json")["band"]
    n = 0
    for task, metrics in runs[0]["rank 1"].items():
        for metric, v0 in metrics.items():
            if isinstance(v0, bool) or not isinstance(v0, (int, float)):
                continue
            v1 = runs[1]["rank 1"][task][metric]
            b = bands[f"rank 1 | {task} | {metric}"]
            assert b["mean"] == pytest.approx((v0 + v1) / 2)
            assert (b["min"], b["max"]) == (pytest.approx(min(v0, v1)), pytest.approx(max(v0, v1)))
            n += 1
    assert n == len(bands) and n > 10
    table = (seed_runs / "bands" / "bands.md").read_text()
    r50 = bands["rank 1 | relationship | R@50_kfree"]
    assert f"{r50['mean']:.2f} ({r50['min']:.2f}–{r50['max']:.2f})" in table


def test_saved_predictions_rescored_by_eval_results(seed_runs):
    from tools_loader import load_tool

    path = seed_runs / "bands" / "seed0" / "eval" / "rank_1" / "lu_det" / "relations_results.json"
    assert path.is_file()
    assert not (seed_runs / "again" / "eval" / "rank_1" / "lu_det" / "relations_results.json").exists()
    # the run scored the first 30 test images: the ground truth is that registered slice
    scores = load_tool("eval_results").main(
        [str(path), "--dataset", "vrdrealslice_test", "--protocol", "sgb", "--json", str(seed_runs / "sgb.json")]
    )
    assert "relationship_R@50" in scores and 0.0 <= scores["relationship_R@50"] <= 100.0
