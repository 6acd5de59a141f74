"""tools/shapes_demo.py (make demo): the whole pipeline with --quick (2 iterations a stage, a few
images), checking the structure of what it prints and writes, not the numbers; --reuse skips the
trained stages; the docs/RESULTS.md section is replaced between its markers only."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

from vrd_d2_studies import ablation
from vrd_d2_studies.results_doc import cpu_model, split_provenance
from vrd_d2_studies.shapes_demo import bands as shapes_bands
from vrd_d2_studies.shapes_demo import runner as shapes_demo


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A --quick run whose table goes to a results section: the study's writing of it (the tool
    refuses --update-readme with --quick, tests/test_no_overwrite.py)."""
    tool = load_tool("shapes_demo")
    out = tmp_path_factory.mktemp("shapes_demo")
    readme = out / "RESULTS.md"
    readme.write_text(
        "# x\n\n## Results\n\n<!-- shapes-demo:begin -->\nold table\n<!-- shapes-demo:end -->\n\n## After\n"
    )
    args = tool.get_parser().parse_args(
        ["--quick", "--output", str(out), "--update-results", "--results-file", str(readme)]
    )
    shapes_bands.run_cli(args)
    return shapes_demo, out, readme, 0


def test_quick_pipeline_trains_every_stage_and_writes_results(quick_run, capsys):
    tool, out, _, rc = quick_run
    assert rc == 0
    stages = ["stage0_backbone", "stage1_detector"]
    stages += [f"rank{r}_{s}" for r in (5, 1) for s in ("stage2_triplet", "stage3_selection")]
    for stage in stages:
        assert os.path.isfile(out / stage / "model_final.pth"), stage
    data = json.loads((out / "results.json").read_text())
    assert list(data["test"]) == list(tool.VARIANTS)
    assert data["quick"] is True
    for variant, res in data["test"].items():
        for _, task, metric in tool.COLUMNS:
            assert 0.0 <= res[task][metric] <= 100.0, (variant, task, metric)
    assert "relationship" in data["test"][tool.FULL] and "phrase" in data["test"][tool.FULL]
    assert data["seconds"]["total"] > 0
    assert list(data["seconds"])[:2] == ["stage 0 backbone", "stage 1 detector"]
    # stage 1 started from stage 0's backbone
    det_cfg = (out / "stage1_detector" / "config.yaml").read_text()
    assert str(out / "stage0_backbone" / "model_final.pth") in det_cfg
    # the markdown table: header, separator, one row per variant, each with every column
    lines = (out / "results.md").read_text().splitlines()
    assert lines[0].count("|") == len(tool.COLUMNS) + 2
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == list(tool.VARIANTS)
    assert all(r.count("|") == len(tool.COLUMNS) + 2 for r in rows)
    assert any(line.startswith("Wall time:") for line in lines)


def test_each_triplet_net_reports_its_rank_usage(quick_run):
    tool, out, _, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    usage = data["cp_usage"]
    assert set(usage) == {"5", "1"}
    for r, u in usage.items():
        assert u["rank"] == int(r) and len(u["shares"]) == int(r) and u["pairs"] > 0
        assert sum(u["shares"]) == pytest.approx(1.0) and u["shares"] == sorted(u["shares"], reverse=True)
        assert u["rank1_kl"] >= 0.0
    assert usage["1"]["shares"] == [pytest.approx(1.0)] and usage["1"]["rank1_kl"] == pytest.approx(0.0, abs=1e-9)
    lines = (out / "results.md").read_text().splitlines()
    assert sum(line.startswith("Stage-2 CP net, rank ") for line in lines) == 2


def test_results_section_is_replaced_between_markers_only(quick_run):
    _, out, readme, _ = quick_run
    text = readme.read_text()
    table = (out / "results.md").read_text().strip()
    assert "old table" not in text
    # headed by the line naming the command (this process's), the CPU, threads and date
    section = text.split("<!-- shapes-demo:begin -->\n")[1].split("\n<!-- shapes-demo:end -->")[0]
    provenance, rest = split_provenance(section)
    assert provenance is not None and f"CPU: {cpu_model()}" in provenance and rest == table
    assert text.startswith("# x\n\n## Results\n") and text.endswith("\n## After\n")


def test_reuse_skips_trained_stages(quick_run):
    tool, out, _, _ = quick_run
    mtimes = {p: os.path.getmtime(p) for p in out.rglob("model_final.pth")}
    args = SimpleNamespace(quick=True, reuse=True, output=str(out), opts=[])
    args.prefix = tool.register_quick_subsets()
    cfg = tool.build_cfg(args, "triplet", 5, str(out / "stage1_detector" / "model_final.pth"))
    path, seconds = tool.train_stage(cfg, reuse=True)
    assert path == str(out / "rank5_stage2_triplet" / "model_final.pth") and seconds == 0.0
    assert {p: os.path.getmtime(p) for p in out.rglob("model_final.pth")} == mtimes


def test_failure_exits_nonzero(tmp_path, monkeypatch):
    tool = load_tool("shapes_demo")

    def boom(*args, **kwargs):
        raise RuntimeError("no data")

    monkeypatch.setattr(shapes_demo, "train_stage", boom)
    assert tool.main(["--quick", "--output", str(tmp_path)]) == 1


@pytest.fixture(scope="module")
def restarted_run(tmp_path_factory):
    tool = load_tool("shapes_demo")
    out = tmp_path_factory.mktemp("shapes_demo_restarts")
    rc = tool.main(["--quick", "--restarts", "2", "--output", str(out)])
    return out, rc


def test_stage2_keeps_the_restart_with_the_best_heldout_recall(restarted_run):
    """Of two rank-5 restarts the one whose psi_c alone has the higher phrase classification R@50
    on the validation split is kept, ties to the lower cross-entropy; each recall is the one
    VRDEvaluator gives that restart's weights (no selection head, no prior)."""
    out, rc = restarted_run
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["restarts"] == 2 and data["restarts_per_rank"] == {"5": 2, "1": 1}
    # rank 1 has one CP component, nothing for a restart to choose among: it trains once
    u1 = data["cp_usage"]["1"]
    assert len(u1["restart_nll"]) == 1 and u1["restart"] == 0
    assert not (out / "rank1_stage2_triplet_restart1").exists()
    rank = "5"  # the restart checks: rank 5 alone has restarts
    u = data["cp_usage"][rank]
    nll = u["restart_nll"]
    assert len(nll) == 2 and all(x > 0 for x in nll)
    rec = u["restart_val_R50"]
    assert len(rec) == 2 and all(0 <= x <= 100 for x in rec)
    assert u["restart"] == max(range(2), key=lambda k: (rec[k], -nll[k])) and u["nll"] == nll[u["restart"]]
    prefix = shapes_demo.register_quick_subsets()
    options = SimpleNamespace(quick=True, reuse=True, output=str(out), opts=[], prefix=prefix)
    for k in range(2):
        cfg = shapes_demo.build_cfg(options, "triplet", 5)
        cfg.OUTPUT_DIR += shapes_demo.restart_suffix(k)
        weights = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        res = ablation.evaluate_variant(
            cfg,
            weights,
            f"{prefix}_val",
            "phrase_cls",
            str(out / f"check{k}"),
            variant=ablation.Variant(rank=5),
            seed=True,
        )
        assert res["phrase_cls"]["R@50_kfree"] == pytest.approx(rec[k], abs=1e-9)
    # restart 1 has its own folder and seed; stage 3 is trained from the kept restart, in a
    # folder of its own (so that --reuse never takes another restart's selection head)
    cfg1 = (out / f"rank{rank}_stage2_triplet_restart1" / "config.yaml").read_text()
    assert "\nSEED: 1000\n" in cfg1
    suffix = f"_restart{u['restart']}" if u["restart"] else ""
    stage3 = (out / f"rank{rank}_stage3_selection{suffix}" / "config.yaml").read_text()
    assert f"rank{rank}_stage2_triplet{suffix}/model_final.pth" in stage3
    assert not (out / f"rank{rank}_stage3_selection{'' if suffix else '_restart1'}").exists()
    lines = (out / "results.md").read_text().splitlines()
    assert sum("Kept restart" in line and "of 2 (phrase classification R@50" in line for line in lines) == 1


def test_heldout_cross_entropy_counts_every_annotated_relation(quick_run):
    from detectron2.data import DatasetCatalog

    tool, out, _, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    n_relations = sum(len(d["relations"]) for d in DatasetCatalog.get("shapes_quick_val"))
    for u in data["cp_usage"].values():
        assert u["triplets"] == n_relations > 0
        assert u["nll"] > 0 and u["restart_nll"] == [u["nll"]] and u["restart"] == 0
    assert data["restarts"] == 1  # --quick trains stage 2 once


def test_restarts_must_be_positive(tmp_path):
    tool = load_tool("shapes_demo")
    with pytest.raises(ValueError, match="--restarts must be"):
        tool.main(["--quick", "--restarts", "0", "--output", str(tmp_path)])


def test_every_variant_on_test_and_the_full_model_alone_on_val(monkeypatch, tmp_path):
    calls = []

    def fake_evaluate(cfg, weights, dataset, mode, out_dir, *, variant=None, seed=False, train_split=None):
        calls.append((dataset, os.path.basename(os.path.dirname(out_dir)), mode))
        train_splits.add(train_split)
        return {mode: {"R@50_kfree": 1.0}}

    train_splits = set()

    monkeypatch.setattr(shapes_demo.ablation, "evaluate_variant", fake_evaluate)
    options = SimpleNamespace(prefix="shapes", output=str(tmp_path), quick=False, opts=[])
    results = shapes_demo.evaluate_all(options, {1: "r1.pth", 5: "r5.pth"}, ("test", "val"), {})
    assert list(results["test"]) == list(shapes_demo.VARIANTS)
    assert list(results["val"]) == [shapes_demo.FULL]
    full = shapes_demo.VARIANTS[shapes_demo.FULL].tag(shapes_demo.FULL)
    assert sorted(c for c in calls if c[0] == "shapes_val") == [
        ("shapes_val", full, "phrase_cls"),
        ("shapes_val", full, "predcls"),
    ]
    assert len([c for c in calls if c[0] == "shapes_test"]) == 2 * len(shapes_demo.VARIANTS) + 1  # + sgdet
    assert train_splits == {"shapes_train_first150"}  # zero-shot: unseen by the relation stages


def test_relation_images_train_the_relation_stages_on_the_first_images(tmp_path):
    """--relation-images N: stages 2 and 3 train on (and their prior counts) the first N training
    images, in folders of their own; stages 0 and 1 on all; a split too small is refused."""
    prefix = shapes_demo.register_quick_subsets()
    args = SimpleNamespace(quick=True, reuse=False, output=str(tmp_path), opts=[], prefix=prefix, relation_images=3)
    for stage, train, folder in (
        ("backbone", f"{prefix}_train", "stage0_backbone"),
        ("detector", f"{prefix}_train", "stage1_detector"),
        ("triplet", f"{prefix}_train_first3", "rank5_stage2_triplet_rel3"),
        ("selection", f"{prefix}_train_first3", "rank5_stage3_selection_rel3"),
    ):
        cfg = shapes_demo.build_cfg(args, stage, 5)
        assert cfg.DATASETS.TRAIN == (train,) and cfg.OUTPUT_DIR == str(tmp_path / folder), stage
    from detectron2.data import DatasetCatalog

    from vrd_d2.data import get_triplet_counts

    first = DatasetCatalog.get(f"{prefix}_train_first3")
    assert [d["image_id"] for d in first] == [d["image_id"] for d in DatasetCatalog.get(f"{prefix}_train")[:3]]
    by_hand = np.zeros((6, 10, 6), dtype=np.int64)
    for d in first:
        cats = [a["category_id"] for a in d["annotations"]]
        for s, o, p in d["relations"]:
            by_hand[cats[s], p, cats[o]] += 1
    np.testing.assert_array_equal(get_triplet_counts(f"{prefix}_train_first3"), by_hand)
    args.relation_images = 1000
    with pytest.raises(ValueError, match=r"--relation-images 1000, but shapes_quick_train has 8 images"):
        DatasetCatalog.get(shapes_demo.relation_train_split(args))


def test_relation_images_run_counts_its_own_prior(tmp_path):
    """A --quick --relation-images 4 run: the relation stages' checkpoints carry the counts of the
    first 4 training images (not the detector's, which counted all 8), results.json records N and
    results.md says so; the default band is not printed beside it."""
    import torch
    from detectron2.data import DatasetCatalog

    tool = load_tool("shapes_demo")
    assert tool.main(["--quick", "--relation-images", "4", "--output", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["relation_images"] == 4
    by_hand = np.zeros((6, 10, 6))
    for d in DatasetCatalog.get("shapes_quick_train")[:4]:
        cats = [a["category_id"] for a in d["annotations"]]
        for s, o, p in d["relations"]:
            by_hand[cats[s], p, cats[o]] += 1

    def counts(folder):
        state = torch.load(tmp_path / folder / "model_final.pth", map_location="cpu", weights_only=True)
        return state["model"]["roi_heads.triplet_counts"].numpy()

    assert counts("stage1_detector").sum() > by_hand.sum()  # all 8 images
    for folder in ("rank5_stage2_triplet_rel4", "rank5_stage3_selection_rel4", "rank1_stage3_selection_rel4"):
        np.testing.assert_array_equal(counts(folder), by_hand)
    text = (tmp_path / "results.md").read_text()
    assert "Relation stages (2, 3) trained on the first 4 training images" in text
    with pytest.raises(ValueError, match="--relation-images must be"):
        tool.main(["--quick", "--relation-images", "-1", "--output", str(tmp_path / "x")])


def test_relation_images_default_and_all(tmp_path):
    """By default the relation stages train on the first RELATION_IMAGES training images (with
    --quick on all of its 8); --relation-images 0 means all of them, in the folders without a
    suffix."""
    args = SimpleNamespace(quick=False, reuse=False, output=str(tmp_path), opts=[], prefix="shapes")
    assert shapes_demo.num_relation_images(args) == shapes_demo.RELATION_IMAGES == 150
    cfg = shapes_demo.build_cfg(args, "triplet", 5)
    assert cfg.DATASETS.TRAIN == ("shapes_train_first150",)
    assert cfg.OUTPUT_DIR == str(tmp_path / "rank5_stage2_triplet_rel150")
    assert shapes_demo.build_cfg(args, "detector", 5).DATASETS.TRAIN == ("shapes_train",)
    args.relation_images = 0
    cfg = shapes_demo.build_cfg(args, "selection", 1)
    assert cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.OUTPUT_DIR == str(tmp_path / "rank1_stage3_selection")
    quick = SimpleNamespace(quick=True, output=str(tmp_path), opts=[], prefix=shapes_demo.register_quick_subsets())
    assert shapes_demo.num_relation_images(quick) == 0
    assert shapes_demo.build_cfg(quick, "triplet", 5).DATASETS.TRAIN == ("shapes_quick_train",)


def test_update_results_only_for_the_settings_the_results_page_has_a_table_of(tmp_path):
    """--update-results: the default demo's section (also for --relation-images 150 and --quick),
    the all-images one for 0; another N is refused before anything is trained."""
    args = SimpleNamespace(quick=False)
    assert shapes_demo.readme_marker(args) == "shapes-demo"
    for n, marker in ((150, "shapes-demo"), (0, "shapes-demo-all-relations")):
        assert shapes_demo.readme_marker(SimpleNamespace(quick=False, relation_images=n)) == marker
    assert shapes_demo.readme_marker(SimpleNamespace(quick=True)) == "shapes-demo"
    tool = load_tool("shapes_demo")
    with pytest.raises(ValueError, match=r"not of --relation-images 100"):
        tool.main(["--relation-images", "100", "--update-results", "--output", str(tmp_path / "y")])
    assert not (tmp_path / "y" / "stage0_backbone").exists()
    # --results-section names any section (e.g. a band of other seeds beside make demo's); one the
    # page lacks is refused before anything is trained
    named = SimpleNamespace(quick=False, relation_images=100, readme_section="shapes-demo-other-seeds")
    assert shapes_demo.readme_marker(named) == "shapes-demo-other-seeds"
    readme = tmp_path / "RESULTS.md"
    readme.write_text("<!-- shapes-demo:begin -->\nold\n<!-- shapes-demo:end -->\n")
    argv = [
        "--update-results",
        "--results-file",
        str(readme),
        "--results-section",
        "nope",
        "--output",
        str(tmp_path / "z"),
    ]
    with pytest.raises(ValueError, match=r"RESULTS.md: markers <!-- nope:begin --> ... <!-- nope:end --> not found"):
        tool.main(argv)
    with pytest.raises(ValueError, match=r"--results-section '\.\./x': letters, digits, - and _ only"):
        tool.main(argv[:3] + ["--results-section", "../x"] + argv[5:])  # would write outside configs/Shapes
    with pytest.raises(ValueError, match=r"it needs --update-results"):
        tool.main(argv[1:])
    assert not (tmp_path / "z" / "stage0_backbone").exists()


def test_update_results_writes_the_results_page_and_keeps_the_old_flag_names():
    """The tables go to docs/RESULTS.md, which holds every section the tool writes by default;
    --update-readme / --readme-section / --readme still parse as the new flags."""
    from conftest import REPO_DIR

    from vrd_d2_studies.results_doc import check_readme_section

    parser = load_tool("shapes_demo").get_parser()
    default = parser.parse_args([])
    assert default.readme == os.path.join(REPO_DIR, "docs", "RESULTS.md") and not default.update_readme
    for marker in list(shapes_demo.README_MARKERS.values()) + ["shapes-demo-heldout"]:
        check_readme_section(default.readme, marker)  # a ValueError naming the file if missing
    new = parser.parse_args(["--update-results", "--results-section", "s", "--results-file", "f.md"])
    old = parser.parse_args(["--update-readme", "--readme-section", "s", "--readme", "f.md"])
    for args in (new, old):
        assert (args.update_readme, args.readme_section, args.readme) == (True, "s", "f.md")


def _hand_counts(dicts):
    counts = np.zeros((6, 10, 6), dtype=np.int64)
    for d in dicts:
        cats = [a["category_id"] for a in d["annotations"]]
        for s, o, p in d["relations"]:
            counts[cats[s], p, cats[o]] += 1
    return counts


def test_zero_shot_counts_against_the_relation_stages_training_images():
    """VRDEvaluator(train_split=...): a test triplet is zero-shot when the relation stages' own
    training images never hold it (the demo passes its relation split), not the metadata's split."""
    from detectron2.data import DatasetCatalog

    from vrd_d2.evaluation import VRDEvaluator

    prefix = shapes_demo.register_quick_subsets()
    first3 = shapes_demo.relation_train_split(SimpleNamespace(quick=True, prefix=prefix, relation_images=3))
    test = DatasetCatalog.get(f"{prefix}_test")
    preds = [{"image_id": d["image_id"], "file_name": d["file_name"]} for d in test]

    def flags(**kwargs):
        ev = VRDEvaluator(f"{prefix}_test", mode="predcls", distributed=False, save_predictions=False, **kwargs)
        gts, _ = ev._load_dataset_ground_truth(preds)
        return np.concatenate([g["zeroshot"] for g in gts])

    def by_hand(train_dicts):
        counts = _hand_counts(train_dicts)
        return np.array(
            [
                counts[d["annotations"][s]["category_id"], p, d["annotations"][o]["category_id"]] == 0
                for d in test
                for s, o, p in d["relations"]
            ]
        )

    train = DatasetCatalog.get(f"{prefix}_train")
    np.testing.assert_array_equal(flags(), by_hand(train))  # the metadata's: all 8 training images
    np.testing.assert_array_equal(flags(train_split=first3), by_hand(train[:3]))
    assert flags(train_split=first3).sum() > flags().sum()


@pytest.mark.parametrize(
    "recalls, nlls, kept",
    [
        (
            (60.0, 64.5, 62.0),
            (2.1, 2.4, 2.2),
            1,
        ),  # the highest held-out recall, although its cross-entropy is the worst
        ((63.0, 61.0, 63.0), (2.3, 2.0, 2.2), 2),  # a tie in recall: the lower cross-entropy of the two
    ],
)
def test_restart_rule_recall_first_cross_entropy_on_ties(tmp_path, monkeypatch, recalls, nlls, kept):
    def restart(cfg):
        return 0 if cfg.OUTPUT_DIR.endswith("_rel150") else int(cfg.OUTPUT_DIR[-1])

    monkeypatch.setattr(shapes_demo, "train_stage", lambda cfg, reuse: (f"w{restart(cfg)}", 1.0))
    monkeypatch.setattr(shapes_demo, "cp_rank_usage", lambda cfg, w, val: {"nll": nlls[restart(cfg)]})
    monkeypatch.setattr(shapes_demo, "format_rank_usage", lambda usage, val: "")
    monkeypatch.setattr(shapes_demo, "heldout_recall", lambda options, cfg, w, rank: recalls[restart(cfg)])
    options = SimpleNamespace(quick=False, reuse=False, output=str(tmp_path), opts=[], prefix="shapes", restarts=3)
    weights, seconds, usage = shapes_demo.train_triplet(options, 5, "det.pth")
    assert (weights, usage["restart"], seconds) == (f"w{kept}", kept, 3.0)
    assert usage["restart_val_R50"] == list(recalls) and usage["restart_nll"] == list(nlls)
    # rank 1 trains once and is not evaluated for a choice
    monkeypatch.setattr(shapes_demo, "heldout_recall", lambda *a: pytest.fail("nothing to choose"))
    weights, _, usage = shapes_demo.train_triplet(options, 1, "det.pth")
    assert weights == "w0" and "restart_val_R50" not in usage


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--min-detector-accuracy", "150"], r"--min-detector-accuracy must be in \[0.0, 100.0\], found 150.0"),
        (["--min-detector-accuracy", "nan"], r"--min-detector-accuracy must be a finite number"),
        (["--seeds", "-1"], r"--seeds must be in \[0, 4294967295\], found -1"),
        (["MODEL.VRD.RANK", "0"], r"MODEL.VRD.RANK must be >= 1, found 0"),
        (["MODEL.VRD.TEST.PROTOCOL", "bogus"], r"MODEL.VRD.TEST.PROTOCOL must be one of"),
        (["SOLVER.IMS_PER_BATCH", "0"], r"SOLVER.IMS_PER_BATCH"),
        (["MODEL.VRD.NOPE", "1"], r"bad config override .*MODEL.VRD.NOPE"),
    ],
)
def test_bad_options_are_refused_before_any_stage_trains(tmp_path, argv, message):
    """Each bad value stops the demo before stage 0 (it used to pass stages 0 and 1 first): the
    output folder is never made, so nothing was trained."""
    tool = load_tool("shapes_demo")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        tool.main(["--quick", "--output", str(out)] + argv)
    assert not out.exists()
