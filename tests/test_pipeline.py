"""The pipeline library: the pre-flight check of a stage's input checkpoint, schedules in epochs,
and tools/reproduce.py's plan (stage order, weights chaining, one chain per rank), resumability and
missing-files message."""

import io
import json
import math
import os

import pytest
import torch
from conftest import REPO, tiny_config
from detectron2.modeling import build_model
from tools_loader import load_tool

from vrd_d2.engine import Trainer, check_stage_inputs, resolve_schedule, stage_training_dicts
from vrd_d2.engine.pipeline import SGB_COLUMNS, format_table, missing_dataset_files, plan_steps, reproduce

SMALL = ["MODEL.VRD.USE_PRIOR", "False", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


def _save(cfg, path):
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "iteration": 3}, path)
    return str(path)


def _usage_stub(step):
    """Stands for the CP usage check (a real one builds the full-size model): one component used."""
    return {"rank": 5, "images": 1, "pairs": 2, "shares": [1.0, 0, 0, 0, 0], "rank1_kl": 0.0, "triplets": 0}


def _final_checkpoint(path):
    """What a finished training step leaves: a (small) torch checkpoint."""
    torch.save({"model": {"w": torch.zeros(2)}, "iteration": 9}, path)


def _shapes_cfg(stage_file, *opts):
    return tiny_config(f"Shapes/{stage_file}", *SMALL, *opts)


def test_missing_checkpoint_is_named(tmp_path):
    cfg = _shapes_cfg("stage3_selection.yaml", "MODEL.WEIGHTS", str(tmp_path / "nope" / "model_final.pth"))
    with pytest.raises(FileNotFoundError, match=r"nope/model_final.pth.*'selection'.*not found"):
        check_stage_inputs(cfg)
    with pytest.raises(FileNotFoundError, match="nope/model_final.pth"):
        Trainer(cfg)  # before any data or model is built


def test_checkpoint_of_another_rank_is_an_error_naming_tensor_and_shapes(tmp_path):
    ckpt = _save(_shapes_cfg("stage2_triplet.yaml", "MODEL.VRD.RANK", "5"), tmp_path / "rank5.pth")
    # stage 3 trains only the selection head: the rank-5 CP layers would stay random in a rank-1 model
    cfg = _shapes_cfg("stage3_selection.yaml", "MODEL.VRD.RANK", "1", "MODEL.WEIGHTS", ckpt)
    with pytest.raises(ValueError) as e:
        check_stage_inputs(cfg)
    msg = str(e.value)
    # Shapes: 6 classes, 10 predicates, 256-d FCs: rank 5 -> 30 / 50 outputs, rank 1 -> 6 / 10
    assert "rank5.pth" in msg and "MODEL.VRD.RANK 1" in msg
    assert "roi_heads.relation_predictor.subject_branch.4.weight: checkpoint (30, 256), model (6, 256)" in msg
    assert "roi_heads.relation_predictor.predicate_branch.4.weight: checkpoint (50, 256), model (10, 256)" in msg
    with pytest.raises(ValueError, match="predicate_branch"):  # evaluation too
        check_stage_inputs(
            _shapes_cfg("stage3_selection.yaml", "MODEL.VRD.RANK", "1", "MODEL.WEIGHTS", ckpt), eval_only=True
        )
    # stage 4 fine-tunes the triplet net: it must start from the same rank
    with pytest.raises(ValueError, match="subject_branch"):
        check_stage_inputs(_shapes_cfg("stage2_triplet_proposals.yaml", "MODEL.VRD.RANK", "1", "MODEL.WEIGHTS", ckpt))
    # stage 2 trains the CP branches from scratch: any rank starts from the one detector (logged)
    check_stage_inputs(_shapes_cfg("stage2_triplet.yaml", "MODEL.VRD.RANK", "1", "MODEL.WEIGHTS", ckpt))


def test_checkpoint_of_another_dataset_is_an_error(tmp_path):
    ckpt = _save(_shapes_cfg("stage2_triplet.yaml"), tmp_path / "shapes.pth")
    cfg = _shapes_cfg(
        "stage2_triplet.yaml",
        "MODEL.ROI_HEADS.NUM_CLASSES",
        "9",
        "MODEL.VRD.NUM_PREDICATES",
        "4",
        "MODEL.WEIGHTS",
        ckpt,
    )
    with pytest.raises(ValueError) as e:
        check_stage_inputs(cfg)
    msg = str(e.value)
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint (7, 256), model (10, 256)" in msg  # frozen detector
    assert "roi_heads.triplet_counts: checkpoint (6, 10, 6), model (9, 4, 9)" in msg
    check_stage_inputs(_shapes_cfg("stage1_detector.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", "9", "MODEL.WEIGHTS", ckpt))


def test_checkpoint_with_pre_predictor_names_passes_the_pre_flight_as_it_loads(tmp_path):
    # checkpoints written before the relation predictor: roi_heads.<branch>.* (VRDROIHeads maps them)
    state = build_model(_shapes_cfg("stage2_triplet.yaml")).state_dict()
    old = {k.replace("roi_heads.relation_predictor.", "roi_heads."): v for k, v in state.items()}
    assert any(k.startswith("roi_heads.subject_branch.") for k in old)
    path = tmp_path / "old_names.pth"
    torch.save({"model": old}, path)
    check_stage_inputs(_shapes_cfg("stage3_selection.yaml", "MODEL.WEIGHTS", str(path)))
    check_stage_inputs(_shapes_cfg("stage3_selection.yaml", "MODEL.WEIGHTS", str(path)), eval_only=True)
    with pytest.raises(ValueError) as e:  # shapes are still compared, under the current names
        check_stage_inputs(_shapes_cfg("stage3_selection.yaml", "MODEL.VRD.RANK", "1", "MODEL.WEIGHTS", str(path)))
    assert "roi_heads.relation_predictor.subject_branch.4.weight: checkpoint (30, 256), model (6, 256)" in str(e.value)


def test_imagenet_weights_cannot_feed_a_relation_stage(tmp_path):
    full = build_model(_shapes_cfg("stage1_detector.yaml")).state_dict()
    path = tmp_path / "imagenet.pth"
    torch.save({"model": {k: v for k, v in full.items() if k.startswith("backbone.")}}, path)
    check_stage_inputs(_shapes_cfg("stage1_detector.yaml", "MODEL.WEIGHTS", str(path)))
    with pytest.raises(ValueError, match=r"absent from the checkpoint.*proposal_generator.rpn_head"):
        check_stage_inputs(_shapes_cfg("stage2_triplet.yaml", "MODEL.WEIGHTS", str(path)))


class _NotAWeight:
    pass


def test_checkpoint_is_read_without_unpickling_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _NotAWeight()}, path)
    with pytest.raises(ValueError, match=r"evil.pth: not a checkpoint readable with torch.load\(weights_only=True\)"):
        check_stage_inputs(_shapes_cfg("stage2_triplet.yaml", "MODEL.WEIGHTS", str(path)))


def test_schedule_from_epochs():
    cfg = tiny_config("VRD/stage2_triplet.yaml", "SOLVER.EPOCH_STEPS", "(3.5,)")
    out = resolve_schedule(cfg, num_images=3780)
    assert out.SOLVER.MAX_ITER == math.ceil(7 * 3780 / 8) == 3308 and out.SOLVER.STEPS == (round(3.5 * 3780 / 8),)
    assert cfg.SOLVER.MAX_ITER == 80000  # the input config is not modified
    shapes = tiny_config("Shapes/stage2_triplet.yaml")  # EPOCHS 0: MAX_ITER as written in the file
    assert shapes.SOLVER.EPOCHS == 0.0 and resolve_schedule(shapes).SOLVER.MAX_ITER == 750
    with pytest.raises(ValueError, match=r"SOLVER.EPOCH_STEPS entry must be in \[0.0, 7.0\], found 9.0"):
        resolve_schedule(tiny_config("VRD/stage2_triplet.yaml", "SOLVER.EPOCH_STEPS", "(9.0,)"), num_images=10)


def test_paper_schedule_on_the_real_vrd_annotations(shared_vrd):
    """7 epochs of the VRD training images with relations (3,780 in the release) at 8 per batch."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vrd_d2.data.datasets import register_vrd_split

    raw = json.loads((shared_vrd / "annotations_train.json").read_text())
    assert sum(1 for rels in raw.values() if rels) == 3780
    # trained on: a relation between two distinct boxes (two images relate a box to itself only)
    with_rel = sum(
        1
        for rels in raw.values()
        if len({(r[x]["category"], tuple(r[x]["bbox"])) for r in rels for x in ("subject", "object")}) >= 2
    )
    name = "vrd_train_pipeline_test"
    register_vrd_split(name, str(shared_vrd), "train")
    try:
        cfg = tiny_config("VRD/stage2_triplet.yaml", "DATASETS.TRAIN", f"('{name}',)")
        assert len(stage_training_dicts(cfg)) == with_rel == 3778
        assert resolve_schedule(cfg).SOLVER.MAX_ITER == math.ceil(7 * with_rel / 8)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_plan_chains_weights_and_one_chain_per_rank(tmp_path):
    out = str(tmp_path / "out")
    steps = plan_steps("vrd", ablation=True, repo=str(REPO), output_root=out)  # proposals: the default
    names = [s.name for s in steps]
    assert names[:5] == [
        "stage1_detector",
        "stage2_triplet",
        "stage3_selection",
        "stage2_triplet_proposals",
        "stage4_selection",
    ]
    assert names[5:8] == ["eval_sgdet", "eval_phrase_cls", "eval_predcls"]
    by = {s.name: s for s in steps}
    final = lambda n: os.path.join(by[n].output_dir, "model_final.pth")  # noqa: E731
    for prev, cur in zip(names[:4], names[1:5]):
        assert by[cur].weights == final(prev) and by[cur].output_dir.startswith(out)
    for m in ("sgdet", "phrase_cls", "predcls"):
        assert by[f"eval_{m}"].eval_only and by[f"eval_{m}"].weights == final("stage4_selection")
    outputs = set()
    for r in range(1, 5):  # their rows use neither X_sel nor the prior: no stage 3
        s2, ev = by[f"ablations/rank{r}"], by[f"ablations/rank{r}_eval"]
        assert f"ablations/rank{r}_selection" not in by
        assert s2.weights == final("stage1_detector") and ev.weights == final(f"ablations/rank{r}") and ev.eval_only
        outputs.add(s2.output_dir)
    s2, s3, ev = by["ablations/rank5"], by["ablations/rank5_selection"], by["ablations/rank5_eval"]
    assert s2.weights == final("stage1_detector") and s3.weights == final("ablations/rank5")
    assert ev.weights == final("ablations/rank5_selection") and ev.eval_only
    outputs |= {s2.output_dir, s3.output_dir}
    assert len(outputs) == 6  # each rank its own stage 2, rank 5 its stage 3
    assert by["ablations/rank5"].output_dir == by["stage2_triplet"].output_dir  # rank 5 is the main model
    assert by["ablations/rank5_selection"].output_dir == by["stage3_selection"].output_dir
    assert [by[n].label for n in ("ablations/no_prior", "ablations/full")] == [
        "rank 5 + X_sel",
        "rank 5 + X_sel + prior",
    ]
    assert sum(not s.eval_only for s in steps) == 5 + 5 + 1  # main chain, 5 stage 2s, rank 5's stage 3 (reused)
    with pytest.raises(ValueError, match="ablation"):
        plan_steps("vg200", ablation=True, repo=str(REPO))


def test_no_proposals_stops_the_main_chain_at_stage_3(tmp_path):
    out = str(tmp_path / "out")
    steps = plan_steps("vg200", proposals=False, repo=str(REPO), output_root=out)
    assert [s.name for s in steps] == [
        "stage1_detector",
        "stage2_triplet",
        "stage3_selection",
        "eval_sgdet",
        "eval_phrase_cls",
        "eval_predcls",
    ]
    stage3 = os.path.join(out, "VG200", "stage3_selection", "model_final.pth")
    assert all(s.weights == stage3 for s in steps[3:])


def test_reproduce_dry_run_needs_no_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    load_tool("reproduce").main(
        ["--dataset", "vg150", "--ablation", "--dry-run", "--num-gpus", "2", "--output-root", str(tmp_path / "o")]
    )
    lines = [l for l in capsys.readouterr().out.splitlines() if "train_net.py" in l]
    configs = [l.split("--config-file ")[1].split()[0] for l in lines]
    assert configs[:8] == [
        "configs/VG150/stage1_detector.yaml",
        "configs/VG150/stage2_triplet.yaml",
        "configs/VG150/stage3_selection.yaml",
        "configs/VG150/stage2_triplet_proposals.yaml",  # the paper's recipe, by default
        "configs/VG150/stage4_selection.yaml",
        "configs/VG150/eval_sgdet.yaml",
        "configs/VG150/eval_phrase_cls.yaml",
        "configs/VG150/eval_predcls.yaml",
    ]
    # Table 4, rank 1's chain and row: stage 2 at rank 1 and its row (no X_sel: no stage 3)
    assert configs[8:10] == [f"configs/VG150/{s}.yaml" for s in ("stage2_triplet", "eval_phrase_cls")]
    assert all("MODEL.VRD.RANK 1 " in l for l in lines[8:10])
    assert all("--num-gpus 2" in l for l in lines) and len(lines) == 8 + (4 * 2 + 3) + 3
    assert f"MODEL.WEIGHTS {tmp_path}/o/VG150/stage1_detector/model_final.pth" in lines[1]


def _fake_dataset(root, dataset="vrd"):
    for p in missing_dataset_files(dataset, str(root)):
        (
            os.makedirs(p, exist_ok=True)
            if p.endswith("/")
            else (os.makedirs(os.path.dirname(p), exist_ok=True), open(p, "w").close())
        )


def test_reproduce_skips_finished_stages_and_writes_the_table(tmp_path):
    out = str(tmp_path / "out")
    _fake_dataset(tmp_path / "data")
    for s in ("stage1_detector", "stage2_triplet"):  # finished earlier
        os.makedirs(os.path.join(out, "VRD", s))
        _final_checkpoint(os.path.join(out, "VRD", s, "model_final.pth"))
    ran = []

    def run(argv):  # stands for tools/train_net.py: writes what a finished step leaves
        ran.append(argv)
        d = argv[argv.index("OUTPUT_DIR") + 1]
        os.makedirs(d, exist_ok=True)
        if "--eval-only" in argv:
            os.makedirs(os.path.join(d, "inference", "vrd_test"))
            with open(os.path.join(d, "inference", "vrd_test", "vrd_evaluation.json"), "w") as f:
                json.dump({"results": {"relationship": {"R@50_k1": 12.5, "R@100_kfree": 30.25}}}, f)
        else:
            _final_checkpoint(os.path.join(d, "model_final.pth"))

    kw = dict(
        output_root=out,
        repo=str(REPO),
        datasets_root=str(tmp_path / "data"),
        cp_usage=_usage_stub,
        run=run,
        out=io.StringIO(),
    )
    reproduce("vrd", **kw)
    assert [a[a.index("--config-file") + 1] for a in ran] == [
        "configs/VRD/stage3_selection.yaml",
        "configs/VRD/stage2_triplet_proposals.yaml",
        "configs/VRD/stage4_selection.yaml",
        "configs/VRD/eval_sgdet.yaml",
        "configs/VRD/eval_phrase_cls.yaml",
        "configs/VRD/eval_predcls.yaml",
    ]
    assert "--resume" in ran[0] and "--eval-only" in ran[3]
    table = open(os.path.join(out, "VRD", "table.md")).read()
    assert "Table 1 (VRD)" in table and "| predicate classification | relationship | 12.50 | – | – | 30.25 |" in table
    assert set(json.load(open(os.path.join(out, "VRD", "table.json")))["results"]) == {"sgdet", "phrase_cls", "predcls"}
    ran.clear()
    reproduce("vrd", **kw)  # everything finished: nothing runs
    assert ran == []


def test_reproduce_lists_every_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d"))
    with pytest.raises(SystemExit) as e:
        load_tool("reproduce").main(["--dataset", "vg150", "--output-root", str(tmp_path / "o")])
    msg = str(e.value)
    d = tmp_path / "d" / "vg"
    for p in (d / "VG-SGG-with-attri.h5", d / "VG-SGG-dicts-with-attri.json", d / "image_data.json", d / "VG_100K"):
        assert str(p) in msg
    imagenet = REPO / "pretrained" / "vgg16_torchvision_d2.pth"
    assert (str(imagenet) in msg) == (not imagenet.is_file())
    assert f"{4 + (not imagenet.is_file())} missing file(s)" in msg


def test_reproduce_dry_run_evaluates_vg_with_both_protocols(tmp_path, capsys, monkeypatch):
    """VG150 / VG200: every evaluation step (Table 4's too) runs with MODEL.VRD.TEST.PROTOCOL both,
    no training step does; VRD keeps the configs' protocol (auto = Lu) unless overridden."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    reproduce_tool = load_tool("reproduce")
    for dataset, extra in (
        ("vg150", ["--ablation"]),
        ("vg200", []),
        ("vrd", []),
        ("vrd", ["MODEL.VRD.TEST.PROTOCOL", "both"]),
    ):
        reproduce_tool.main(["--dataset", dataset, "--dry-run", "--output-root", str(tmp_path / "o"), *extra])
        lines = [l for l in capsys.readouterr().out.splitlines() if "train_net.py" in l]
        evals = [l for l in lines if "--eval-only" in l]
        assert len(evals) == (3 + 5 + 3 if "--ablation" in extra else 3)
        both = [l.endswith("MODEL.VRD.TEST.PROTOCOL both") for l in lines]
        if dataset == "vrd" and not extra:
            assert not any("PROTOCOL" in l for l in lines)
        elif dataset == "vrd":  # the override goes to every step
            assert all(both)
        else:
            assert [l for l, b in zip(lines, both) if b] == evals
    for dataset in ("vg150", "vg200"):  # the evaluation config as tools/train_net.py merges it
        last = plan_steps(dataset, repo=str(REPO))[-1]
        cfg = tiny_config(os.path.relpath(last.config, "configs"), *last.opts)
        assert cfg.MODEL.VRD.TEST.PROTOCOL == "both" and cfg.DATASETS.TEST[0] == f"{dataset}_test"


def _lu_sgb(lu_r50_k1, sgb_r20):
    """A synthetic results dict as VRDEvaluator(protocol="both") returns it (sgdet tasks)."""
    lu = {
        t: {
            "R@50_k1": lu_r50_k1,
            "R@100_k1": lu_r50_k1 + 1,
            "R@50_kfree": lu_r50_k1 + 2,
            "R@100_kfree": lu_r50_k1 + 3,
            "mR@50_k1": 1.0,
        }
        for t in ("relationship", "phrase")
    }
    sgb = {
        t: dict(
            {
                f"{m}@{k}": sgb_r20 + i
                for i, (m, k) in enumerate((m, k) for m in ("R", "ngR", "mR") for k in (20, 50, 100))
            },
            **{"zR@20": 0.5, "ng-mR@20": 0.25},
        )
        for t in ("relationship", "phrase")
    }
    return {"lu": lu, "sgb": sgb}


def test_table_shows_lu_and_sgb_columns_side_by_side():
    res = {
        "sgdet": _lu_sgb(10.0, 20.0),
        "predcls": {
            "lu": {"predcls": {"R@50_k1": 50.0, "R@50_kfree": float("nan")}},
            "sgb": {"predcls": {"R@20": 60.0}},
        },
    }
    md = format_table("Table 3 (VG150)", res)
    header = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert header == [
        "evaluation",
        "task",
        "Lu R@50 k=1",
        "Lu R@100 k=1",
        "Lu R@50 free k",
        "Lu R@100 free k",
        "SGB R@20",
        "SGB R@50",
        "SGB R@100",
        "SGB ngR@20",
        "SGB ngR@50",
        "SGB ngR@100",
        "SGB mR@20",
        "SGB mR@50",
        "SGB mR@100",
    ]
    lu_cells = "10.00 | 11.00 | 12.00 | 13.00"
    sgb_cells = " | ".join(f"{20.0 + i:.2f}" for i in range(9))  # R@20..100, ngR@20..100, mR@20..100 in order
    assert f"| detected boxes (SGDet) | relationship | {lu_cells} | {sgb_cells} |" in md
    assert f"| detected boxes (SGDet) | phrase | {lu_cells} | {sgb_cells} |" in md
    assert (
        "| predicate classification (PredCls) | predcls | 50.00 | – | – | – | 60.00 | " + " | ".join(["–"] * 8) + " |"
        in md
    )
    assert "per-image mean" in md  # the note naming both protocols
    # an SGB-only evaluation (protocol sgb / auto on VG) fills the SGB columns, Lu's stay empty
    sgb_only = format_table("t", {"sgdet": {"relationship": {"R@20": 5.0, "R@50": 6.0, "ngR@100": 7.0}}})
    assert "| detected boxes (SGDet) | relationship | – | – | – | – | 5.00 | 6.00 | – | – | – | 7.00 |" in sgb_only
    # Lu only (VRD): no SGB column, no SGB name
    lu_only = format_table("Table 1 (VRD)", {"sgdet": {"relationship": {"R@50_k1": 1.0}}})
    assert "SGB" not in lu_only and "| detected boxes | relationship | 1.00 | – | – | – |" in lu_only
    assert len(SGB_COLUMNS) == 9


def test_reproduce_vg150_writes_both_protocols_in_markdown_and_json(tmp_path):
    out = str(tmp_path / "out")
    _fake_dataset(tmp_path / "data", "vg150")
    for s in ("stage1_detector", "stage2_triplet", "stage3_selection", "stage4_proposals", "stage4_selection"):
        os.makedirs(os.path.join(out, "VG150", s))
        _final_checkpoint(os.path.join(out, "VG150", s, "model_final.pth"))
    ran = []

    def run(argv):  # tools/train_net.py --eval-only under protocol "both"
        ran.append(argv)
        assert argv[-2:] == ["MODEL.VRD.TEST.PROTOCOL", "both"]
        d = os.path.join(argv[argv.index("OUTPUT_DIR") + 1], "inference", "vg150_test")
        os.makedirs(d)
        with open(os.path.join(d, "vrd_evaluation.json"), "w") as f:
            json.dump({"protocol": "both", "results": _lu_sgb(10.0 * len(ran), 20.0)}, f)

    reproduce(
        "vg150",
        output_root=out,
        repo=str(REPO),
        datasets_root=str(tmp_path / "data"),
        run=run,
        out=io.StringIO(),
        cp_usage=_usage_stub,
    )
    assert len(ran) == 3
    md = open(os.path.join(out, "VG150", "table.md")).read()
    assert "Table 3 (VG150)" in md and "SGB R@20" in md and "Lu R@50 k=1" in md
    assert "| detected boxes (SGDet) | phrase | 10.00 | 11.00 | 12.00 | 13.00 | 20.00 |" in md
    assert "| phrase classification (SGCls) | relationship | 20.00 | 21.00 | 22.00 | 23.00 | 20.00 |" in md
    table = json.load(open(os.path.join(out, "VG150", "table.json")))
    assert table["columns"][6] == "SGB R@20" and len(table["rows"]) == 6
    row = table["rows"][4]  # predcls, relationship
    assert row[:2] == ["predicate classification (PredCls)", "relationship"]
    assert row[2:6] == [30.0, 31.0, 32.0, 33.0] and row[6:] == [20.0 + i for i in range(9)]
    assert table["results"]["predcls"]["sgb"]["relationship"]["mR@100"] == 28.0


def _vrd_step_runner(ran):
    """Stands for tools/train_net.py: records the argv, writes what a finished step leaves."""

    def run(argv):
        ran.append(argv)
        d = argv[argv.index("OUTPUT_DIR") + 1]
        if "--eval-only" in argv:
            os.makedirs(os.path.join(d, "inference", "vrd_test"), exist_ok=True)
            with open(os.path.join(d, "inference", "vrd_test", "vrd_evaluation.json"), "w") as f:
                json.dump({"results": {"relationship": {"R@50_k1": 12.5, "R@100_kfree": 30.25}}}, f)
        else:
            os.makedirs(d, exist_ok=True)
            _final_checkpoint(os.path.join(d, "model_final.pth"))

    return run


def _vrd_reproduce_kwargs(tmp_path, out, ran):
    """reproduce()'s arguments for a VRD run under ``out`` whose steps :func:`_vrd_step_runner` fakes."""
    return dict(
        output_root=out,
        repo=str(REPO),
        datasets_root=str(tmp_path / "data"),
        cp_usage=_usage_stub,
        run=_vrd_step_runner(ran),
    )


def _good_checkpoint_bytes(tmp_path):
    _final_checkpoint(tmp_path / "good.pth")
    return (tmp_path / "good.pth").read_bytes()


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_a_zip"])
def test_reproduce_reruns_a_stage_whose_final_checkpoint_is_corrupt(tmp_path, damage):
    out = str(tmp_path / "out")
    _fake_dataset(tmp_path / "data")
    good = _good_checkpoint_bytes(tmp_path)
    bad = {"empty": b"", "truncated": good[: len(good) // 2], "not_a_zip": b"\x80\x02}q\x00." + b"x" * 64}[damage]
    for s in ("stage1_detector", "stage2_triplet"):
        os.makedirs(os.path.join(out, "VRD", s))
        (tmp_path / "out" / "VRD" / s / "model_final.pth").write_bytes(good if s == "stage1_detector" else bad)
    ran, log = [], io.StringIO()
    kw = _vrd_reproduce_kwargs(tmp_path, out, ran)
    reproduce("vrd", out=log, **kw)
    configs = [a[a.index("--config-file") + 1] for a in ran]
    assert configs[:2] == ["configs/VRD/stage2_triplet.yaml", "configs/VRD/stage3_selection.yaml"]
    assert "--resume" in ran[0]  # last_checkpoint does not name the corrupt file: resuming is safe
    stage2 = os.path.join(out, "VRD", "stage2_triplet", "model_final.pth")
    assert f"# stage2_triplet: corrupt, rerunning: {stage2}: not a complete torch checkpoint" in log.getvalue()
    assert "# stage1_detector: finished, skipped" in log.getvalue()
    # the rerun repaired it: a second run finds everything finished
    ran.clear()
    reproduce("vrd", out=io.StringIO(), **kw)
    assert ran == []


def test_corrupt_final_checkpoint_named_by_last_checkpoint_is_trained_again_not_resumed(tmp_path):
    out = str(tmp_path / "out")
    _fake_dataset(tmp_path / "data")
    for s in ("stage1_detector", "stage2_triplet"):
        os.makedirs(os.path.join(out, "VRD", s))
        _final_checkpoint(os.path.join(out, "VRD", s, "model_final.pth"))
    stage2 = tmp_path / "out" / "VRD" / "stage2_triplet"
    (stage2 / "model_final.pth").write_bytes(b"")
    (stage2 / "last_checkpoint").write_text("model_final.pth")  # --resume would load the empty file
    ran = []
    kw = _vrd_reproduce_kwargs(tmp_path, out, ran)
    reproduce("vrd", out=io.StringIO(), **kw)
    assert ran[0][ran[0].index("--config-file") + 1] == "configs/VRD/stage2_triplet.yaml"
    assert "--resume" not in ran[0] and "--eval-only" not in ran[0]
    assert "--resume" in ran[1]  # stage 3 has nothing corrupt: resumable as ever


@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"results": {"relationship": {"R@50_k1": 12.',  # truncated
        '{"dataset": "vrd_test"}',  # no results
        '{"results": {}}',
        '{"results": {"relationship": [1, 2]}}',
        '{"results": {"relationship": {"R@50_k1": "12.5"}}}',
        "[1, 2]",
    ],
    ids=["empty", "truncated", "no_results", "empty_results", "task_list", "string_value", "list"],
)
def test_reproduce_reruns_an_evaluation_whose_json_is_corrupt(tmp_path, text):
    out = str(tmp_path / "out")
    _fake_dataset(tmp_path / "data")
    os.makedirs(os.path.join(out, "VRD", "stage1_detector"))
    _final_checkpoint(os.path.join(out, "VRD", "stage1_detector", "model_final.pth"))
    ran = []
    kw = _vrd_reproduce_kwargs(tmp_path, out, ran)
    reproduce("vrd", out=io.StringIO(), **kw)  # every other step, once
    evaluation = os.path.join(out, "VRD", "eval_phrase_cls_proposals", "inference", "vrd_test", "vrd_evaluation.json")
    with open(evaluation, "w") as f:
        f.write(text)
    ran.clear()
    log = io.StringIO()
    reproduce("vrd", out=log, **kw)  # no traceback from the table step: the evaluation runs again
    assert [a[a.index("--config-file") + 1] for a in ran] == ["configs/VRD/eval_phrase_cls.yaml"]
    assert f"# eval_phrase_cls: corrupt, rerunning: {evaluation}: " in log.getvalue()
    assert json.load(open(os.path.join(out, "VRD", "table.json")))["results"]["phrase_cls"] == {
        "relationship": {"R@50_k1": 12.5, "R@100_kfree": 30.25}
    }


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"protocol": "both", "results": {"lu": {"relationship": {"R@50_k1": 1.0}}, "sgb": {"predcls": {}}}}, None),
        ({"protocol": "both", "results": {"lu": {"relationship": {"R@50_k1": 1.0}}, "sgb": {}}}, '"sgb"'),
        ({"protocol": "both", "results": {"lu": {"relationship": [1.0]}}}, '"lu"/"relationship"'),
        ({"protocol": "lu", "results": {"lu": {"relationship": {"R@50_k1": 1.0}}}}, '"results"/"lu"'),
    ],
    ids=["both_good", "both_empty_protocol", "both_bad_task", "nested_without_both"],
)
def test_evaluation_problem_reads_the_protocol_layout(tmp_path, data, problem):
    """Under "both" the results are protocol -> task -> metric; a single protocol's are task -> metric."""
    from vrd_d2.engine.finished_outputs import evaluation_problem

    path = tmp_path / "vrd_evaluation.json"
    path.write_text(json.dumps(data))
    found = evaluation_problem(str(path))
    assert found is None if problem is None else (problem in found and str(path) in found)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "vg200", "--ablation"], "the Table 4 ablation exists for ('vrd', 'vg150')"),
        (["--dataset", "vrd", "--proposals", "--no-proposals"], "--proposals and --no-proposals contradict"),
        (["--dataset", "vrd", "--num-gpus", "0"], "--num-gpus must be >= 1, found 0"),
        (["--dataset", "vrd", "--num-gpus", "two"], "argument --num-gpus: invalid int value: 'two'"),
        (["--dataset", "coco"], "argument --dataset: invalid choice: 'coco'"),
        (["--ablation"], "the following arguments are required: --dataset"),
        (["--dataset", "vrd", "--output-root="], "--output-root must not be empty"),
        (["--dataset", "vrd", "--bogus"], "unrecognized arguments: --bogus"),
        (["--dataset", "vrd", "MODEL.VRD.RANK"], "KEY VALUE pairs, found 1 words"),
        (["--dataset", "vrd", "MODEL.VRD.NOPE", "3"], "Non-existent key: MODEL.VRD.NOPE"),
        (["--dataset", "vrd", "MODEL.VRD.RANK", "five"], "Type mismatch"),
        (["--dataset", "vg150", "OUTPUT_DIR", "x"], "override OUTPUT_DIR is set per stage"),
        (["--dataset", "vrd", "MODEL.WEIGHTS", "x.pth"], "override MODEL.WEIGHTS is set per stage"),
    ],
)
def test_reproduce_bad_arguments_are_one_line_errors(tmp_path, capsys, monkeypatch, args, message):
    """Every bad combination: a non-zero exit with one error line naming it (SystemExit, not an
    exception: no traceback), nothing run (--dry-run too: the checks come before any step)."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "none"))
    tool = load_tool("reproduce")
    for extra in ([], ["--dry-run"]):
        with pytest.raises(SystemExit) as e:
            tool.main([*args[:2], *extra, "--output-root", str(tmp_path), *args[2:]])
        captured = capsys.readouterr()
        text = e.value.code if isinstance(e.value.code, str) else captured.err
        assert e.value.code not in (0, None) and "train_net.py" not in captured.out
        assert len(text.strip().splitlines()) == 1 and text.startswith("tools/reproduce.py"), text
        assert message in text, text


def test_reproduce_ablation_on_vg200_exits_without_traceback(tmp_path):
    """The issue's example, as a user runs it."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "tools/reproduce.py", "--dataset", "vg200", "--ablation", "--output-root", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "DETECTRON2_DATASETS": str(tmp_path / "none")},
    )
    errors = [l for l in p.stderr.splitlines() if "Warning" not in l and not l.startswith("  warnings.warn")]
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stdout == ""
    assert errors == [
        "tools/reproduce.py: error: the Table 4 ablation exists for ('vrd', 'vg150') (the paper's), not 'vg200'"
    ]


def test_reproduce_proposals_flag_is_a_deprecated_no_op(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    tool = load_tool("reproduce")
    tool.main(["--dataset", "vrd", "--dry-run", "--proposals", "--output-root", str(tmp_path)])
    captured = capsys.readouterr()
    with_flag = [l for l in captured.out.splitlines() if "train_net.py" in l]
    assert "--proposals is deprecated and does nothing" in captured.err
    tool.main(["--dataset", "vrd", "--dry-run", "--output-root", str(tmp_path)])
    default = [l for l in capsys.readouterr().out.splitlines() if "train_net.py" in l]
    tool.main(["--dataset", "vrd", "--dry-run", "--no-proposals", "--output-root", str(tmp_path)])
    without = [l for l in capsys.readouterr().out.splitlines() if "train_net.py" in l]
    assert with_flag == default and len(default) == 8 and len(without) == 6
    assert sum("stage2_triplet_proposals.yaml" in l or "stage4_selection.yaml" in l for l in default) == 2
    assert not any("stage2_triplet_proposals.yaml" in l or "stage4_selection.yaml" in l for l in without)
