"""tools/demo.py: JSON scene graphs and PNG drawings for images with 0, 1 and many boxes; a
corrupt image or boxes that do not fit the image are reported while the others are written."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import vrd_d2  # noqa: F401
from vrd_d2 import add_vrd_config
from vrd_d2.demo import expand_inputs
from vrd_d2.utils.given_boxes import GivenBoxes, check_boxes_fit, load_given_boxes

from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "Shapes", "geometry_only.yaml")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_weights")
    cfg = add_vrd_config(get_cfg())
    cfg.merge_from_file(CONFIG)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(out)).save("model")
    return str(out / "model.pth")


def test_demo_writes_json_and_png_and_reports_bad_images(tmp_path, weights):
    demo = load_tool("demo")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.RandomState(0)
    for name in ("none.png", "one.png", "many.png", "outside.png"):
        cv2.imwrite(str(images / name), rng.randint(0, 255, (90, 120, 3)).astype(np.uint8))
    (images / "corrupt.png").write_bytes(b"this is not a png")
    many = [[5 + 10 * i, 5 + 5 * i, 30 + 10 * i, 40 + 5 * i] for i in range(6)]
    boxes = {
        "none.png": {"boxes": []},
        "one.png": {"boxes": [[10, 10, 50, 60]], "labels": [2]},
        "many.png": {"boxes": many, "labels": ["red circle", 1, 2, 3, 4, 5]},
        "outside.png": {"boxes": [[10, 10, 500, 60], [1, 1, 20, 20]], "labels": [0, 1]},
        "corrupt.png": {"boxes": [[1, 1, 20, 20], [5, 5, 30, 30]], "labels": [0, 1]},
    }
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    out = tmp_path / "out"
    rc = demo.main(["--config-file", CONFIG, "--weights", weights, "--input", str(images),
                    "--output", str(out), "--boxes", str(boxes_file), "--top-n", "5",
                    "--k-per-pair", "1"])
    assert rc == 1  # two images failed
    written = sorted(os.listdir(out))
    # output names keep the input's extension (#14): pic.png -> pic.png.json, .png, .graph.png
    assert written == [f"{n}.png{s}" for n in ("many", "none", "one") for s in (".graph.png", ".json", ".png")]
    graphs = {n: json.loads((out / f"{n}.png.json").read_text()) for n in ("none", "one", "many")}
    assert graphs["none"]["objects"] == [] and graphs["none"]["relations"] == []
    assert len(graphs["one"]["objects"]) == 1 and graphs["one"]["relations"] == []
    rels = graphs["many"]["relations"]
    assert len(graphs["many"]["objects"]) == 6 and len(rels) == 5
    scores = [r["score"] for r in rels]
    assert scores == sorted(scores, reverse=True)
    assert len({(r["subject"], r["object"]) for r in rels}) == 5  # k = 1 per pair
    for r in rels:
        assert r["subject"] != r["object"] and 0 <= r["predicate_id"] < 10
    for n in ("none", "one", "many"):
        png = cv2.imread(str(out / f"{n}.png.png"))
        assert png is not None and png.shape[0] >= 90 and png.shape[1] > 120


def test_demo_refuses_boxes_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_given_boxes(str(bad), ["a", "b"])
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"x.png": {"boxes": [[0, 0, 1, 1]], "labels": ["zebra"]}}))
    with pytest.raises(ValueError, match="zebra"):
        load_given_boxes(str(unknown), ["a", "b"])
    with pytest.raises(ValueError, match="x.png: box 0"):
        check_boxes_fit("x.png", (10, 10, 3), GivenBoxes(np.array([[5.0, 5, 3, 8]])), 2)
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        check_boxes_fit("x.png", (10, 10, 3), GivenBoxes(np.array([[1.0, 1, 3, 8], [2, 2, 5, 5]]), np.array([0])), 2)
    with pytest.raises(FileNotFoundError, match="no image file matches"):
        expand_inputs([str(tmp_path / "*.jpg")])
