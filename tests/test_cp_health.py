"""The CP usage check after every triplet-net stage of tools/reproduce.py: which steps get it, the
collapse rule, its cache, and what the tables and the log carry (fake step runners; the check
itself, vrd_d2.engine.rank_usage, is tested in test_rank_usage.py / test_cp_usage.py)."""

import io
import json
import logging
import os

import torch
from conftest import REPO

from vrd_d2.engine.cp_health import COLLAPSE_KL, USAGE_FILE, format_usage_table, is_collapsed
from vrd_d2.engine.pipeline import missing_dataset_files, reproduce


def _usage(rank, kl):
    shares = [1.0] + [0.0] * (rank - 1) if kl < COLLAPSE_KL else [1.0 / rank] * rank
    return {"rank": rank, "images": 3, "pairs": 12, "shares": shares, "rank1_kl": kl, "triplets": 4, "nll": 1.5}


def test_collapse_rule():
    assert is_collapsed(_usage(5, 0.004)) and is_collapsed(_usage(2, 0.0))
    assert not is_collapsed(_usage(5, 0.3))
    assert not is_collapsed(_usage(1, 0.0))  # a rank-1 net has nothing to collapse
    assert not is_collapsed({"error": "ValueError: no pair"})


def test_usage_table_marks_collapse_and_errors():
    md = format_usage_table({"stage2_triplet": _usage(5, 0.001), "x": {"error": "E"}, "y": _usage(3, 0.2)})
    lines = md.splitlines()
    assert lines[0].startswith("**WARNING**: CP usage after stage2_triplet") and "COLLAPSED" in lines[0]
    assert "| stage2_triplet | 5 | 12 | 1.00, 0.00, 0.00, 0.00, 0.00 | 0.0010 | **COLLAPSED** |" in lines
    assert "| x | – | – | – | – | not measured: E |" in lines
    assert "| y | 3 | 12 | 0.33, 0.33, 0.33 | 0.2000 | ok |" in lines


def _runner(ran):
    def run(argv):
        ran.append(argv)
        d = argv[argv.index("OUTPUT_DIR") + 1]
        os.makedirs(d, exist_ok=True)
        if "--eval-only" in argv:
            os.makedirs(os.path.join(d, "inference", "vrd_test"), exist_ok=True)
            with open(os.path.join(d, "inference", "vrd_test", "vrd_evaluation.json"), "w") as f:
                json.dump({"results": {"relationship": {"R@50_k1": 1.0}}}, f)
        else:
            torch.save({"model": {}, "iteration": 1}, os.path.join(d, "model_final.pth"))

    return run


def test_reproduce_checks_every_triplet_stage_once_and_the_tables_carry_it(tmp_path, caplog):
    out = str(tmp_path / "out")
    for p in missing_dataset_files("vrd", str(tmp_path / "data")):
        os.makedirs(p if p.endswith("/") else os.path.dirname(p), exist_ok=True)
        if not p.endswith("/"):
            open(p, "w").close()
    os.makedirs(os.path.join(out, "VRD", "stage1_detector"))
    torch.save({"model": {}}, os.path.join(out, "VRD", "stage1_detector", "model_final.pth"))
    checked = []

    def usage(step):  # stage 2 collapsed, stage 4 and the ranks fine, rank 3's check fails
        checked.append(step.name)
        if step.name == "ablations/rank3":
            raise ValueError("vrd_test has no image with two or more gold boxes")
        return _usage(5, 0.002) if step.name == "stage2_triplet" else _usage(5, 0.25)

    ran, log = [], io.StringIO()
    kw = dict(output_root=out, repo=str(REPO), datasets_root=str(tmp_path / "data"), run=_runner(ran), cp_usage=usage)
    with caplog.at_level(logging.INFO, logger="vrd_d2.engine.cp_health"):
        reproduce("vrd", ablation=True, out=log, **kw)
    # stage 2, stage 4 and each rank's stage 2 (rank 5's is the main stage 2: read from its file)
    assert checked == ["stage2_triplet", "stage2_triplet_proposals"] + [f"ablations/rank{r}" for r in range(1, 5)]
    for d in ("stage2_triplet", "stage4_proposals", "ablations/rank1_stage2"):
        assert os.path.isfile(os.path.join(out, "VRD", d, USAGE_FILE))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and "after stage2_triplet" in warnings[0] and "COLLAPSED" in warnings[0]
    assert "WARNING: CP usage after stage2_triplet" in log.getvalue()
    table = json.load(open(os.path.join(out, "VRD", "table.json")))
    assert set(table["cp_usage"]) == {"stage2_triplet", "stage2_triplet_proposals"}
    assert table["cp_usage"]["stage2_triplet"]["rank1_kl"] == 0.002
    md = open(os.path.join(out, "VRD", "table.md")).read()
    assert "**WARNING**" in md and "| stage2_triplet | 5 | 12 |" in md and "**COLLAPSED**" in md
    t4 = json.load(open(os.path.join(out, "VRD", "table4.json")))["cp_usage"]
    assert set(t4) == {f"ablations/rank{r}" for r in range(1, 6)} and t4["ablations/rank5"]["rank1_kl"] == 0.002
    assert t4["ablations/rank3"] == {"error": "ValueError: vrd_test has no image with two or more gold boxes"}
    checked.clear()
    reproduce("vrd", ablation=True, out=io.StringIO(), **kw)  # all cached: nothing measured again
    assert checked == []
    os.utime(os.path.join(out, "VRD", "stage2_triplet", "model_final.pth"))  # a retrained stage: measured again
    os.utime(os.path.join(out, "VRD", "stage2_triplet", USAGE_FILE), (1, 1))
    reproduce("vrd", out=io.StringIO(), **kw)
    assert checked == ["stage2_triplet"]


def test_held_out_check_reads_only_the_first_images(tmp_path):
    """cp_rank_usage with max_images on a real (tiny, untrained) net: the pairs of exactly the first
    images, counted by hand from the dataset's annotations."""
    from conftest import tiny_config
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from vrd_d2.engine.rank_usage import cp_rank_usage

    cfg = tiny_config("Shapes/geometry_only.yaml")
    torch.manual_seed(0)
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    usage = cp_rank_usage(cfg, weights, "shapes_test", max_images=3)
    boxes = [len(d["annotations"]) for d in DatasetCatalog.get("shapes_test")[:3]]
    assert usage["images"] == 3 and usage["pairs"] == sum(n * (n - 1) for n in boxes) > 0
    assert abs(sum(usage["shares"]) - 1) < 1e-6 and len(usage["shares"]) == cfg.MODEL.VRD.RANK
