"""The stage-1 accuracy check of the shapes demo: gold-box classification counted per class
against the json's classes, a crippled detector reported, and the demo stopping on it."""

import json

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

import vrd_d2  # noqa: F401
from vrd_d2_studies.shapes_demo import detector_check
from vrd_d2_studies.shapes_demo import runner as shapes_demo


@pytest.fixture(scope="module")
def quick_val():
    prefix = shapes_demo.register_quick_subsets()
    return f"{prefix}_val"


def _detector_cfg(tmp_path, prefix):
    from types import SimpleNamespace

    return shapes_demo.build_cfg(
        SimpleNamespace(prefix=prefix, output=str(tmp_path), quick=True, opts=[]), "detector", 5
    )


def test_crippled_detector_predicts_one_class_and_is_reported(tmp_path, quick_val):
    """Zeroed classifier weights and a bias that favours class 2: every gold box is called class 2,
    so the accuracy is the share of class 2 among the visible objects (counted from the json)."""
    cfg = _detector_cfg(tmp_path, quick_val.rsplit("_", 1)[0])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        cls = model.roi_heads.box_predictor.cls_score
        cls.weight.zero_()
        cls.bias.zero_()
        cls.bias[2] = 1.0
    weights = str(tmp_path / "crippled.pth")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("crippled")
    acc = detector_check.gold_box_accuracy(cfg, weights, quick_val)

    ids = {d["image_id"] for d in DatasetCatalog.get(quick_val)}
    with open(MetadataCatalog.get(quick_val).json_file) as f:
        objs = [o for d in json.load(f)["images"] if d["image_id"] in ids for o in d["objects"]]
    visible = [o["category_id"] for o in objs if not o["shadowed"]]
    assert acc["visible"].sum() == len(visible) and acc["shadowed"].sum() == len(objs) - len(visible)
    assert (acc["confusion"][:, [0, 1, 3, 4, 5]] == 0).all()  # every box went to class 2
    assert acc["confusion"][:, 2].sum() == len(objs)
    assert acc["visible_accuracy"] == pytest.approx(100.0 * visible.count(2) / len(visible))
    for c, name in enumerate(acc["classes"]):
        expected = None if c not in visible else (100.0 if c == 2 else 0.0)
        assert acc["per_class"][name] == expected
    line = detector_check.format_accuracy(acc, quick_val)
    assert f"{acc['visible_accuracy']:.1f}% of {len(visible)} visible objects" in line
    with pytest.raises(detector_check.DetectorAccuracyError, match=r"below the required 95\.0%") as e:
        detector_check.check_accuracy(acc, quick_val, 95.0)
    worst = [n for c, n in enumerate(acc["classes"]) if c in visible and c != 2]
    assert all(f"{n} 0.0% (mostly called {acc['classes'][2]})" in str(e.value) for n in worst)
    detector_check.check_accuracy(acc, quick_val, 0.0)  # nothing below 0%
    with pytest.raises(ValueError, match="minimum detector accuracy"):
        detector_check.check_accuracy(acc, quick_val, 120.0)


def test_demo_stops_after_an_untrained_detector(tmp_path, capsys):
    """--quick trains stage 1 for 2 iterations: far below 95%, so the demo prints the accuracy,
    exits non-zero and trains no later stage."""
    tool = load_tool("shapes_demo")
    rc = tool.main(["--quick", "--min-detector-accuracy", "95", "--output", str(tmp_path)])
    assert rc == 2
    out = capsys.readouterr().out
    assert "Stage-1 detector, gold-box classification on shapes_quick_val" in out
    assert (tmp_path / "stage1_detector" / "model_final.pth").is_file()
    assert not (tmp_path / "rank5_stage2_triplet").exists()
    assert "below the required 95.0%" in (tmp_path / "log.txt").read_text()


def test_check_uses_the_accuracy_over_visible_objects():
    """96% over the visible objects passes although a rare class is at 70%; 94% stops and names it."""
    classes = ["a", "b"]
    vis = np.array([[93, 0], [3, 7]])  # class a 93/93, class b 7/10: 100/103 = 97.1%
    acc = {
        "classes": classes,
        "visible": vis,
        "visible_accuracy": 100.0 * 100 / 103,
        "per_class": {"a": 100.0, "b": 70.0},
    }
    detector_check.check_accuracy(acc, "x", 95.0)
    acc["visible_accuracy"] = 94.0
    with pytest.raises(detector_check.DetectorAccuracyError, match=r"94\.0%.*below: b 70\.0% \(mostly called a\)"):
        detector_check.check_accuracy(acc, "x", 95.0)
