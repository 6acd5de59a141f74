"""tools/demo.py: JSON scene graphs and PNG drawings for images with 0, 1 and many boxes; a
corrupt image or boxes that do not fit the image are reported while the others are written."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

import vrd_d2  # noqa: F401
from vrd_d2 import add_vrd_config
from vrd_d2.demo import expand_inputs
from vrd_d2.utils.given_boxes import GivenBoxes, check_boxes_fit, load_given_boxes

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
    rc = demo.main(
        [
            "--config-file",
            CONFIG,
            "--weights",
            weights,
            "--input",
            str(images),
            "--output",
            str(out),
            "--boxes",
            str(boxes_file),
            "--top-n",
            "5",
            "--k-per-pair",
            "1",
        ]
    )
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


# ---- #14: no file overwritten, names that cannot collide, bounded drawings, per-entry --boxes
# validation, range-checked flags, no code run from a weights file. The library's run_demo is
# called with one predictor; the tool's main() where the command line itself is under test.


@pytest.fixture(scope="module")
def predictor(weights):
    from vrd_d2.demo import setup_demo_cfg
    from vrd_d2.predictor import VRDPredictor

    cfg = setup_demo_cfg(CONFIG, ["MODEL.DEVICE", "cpu"], weights)
    return VRDPredictor(cfg)


def run(predictor, paths, out, given, protected=(), overwrite=False, **options):
    from detectron2.data import MetadataCatalog

    from vrd_d2.demo import DemoOptions, run_demo
    from vrd_d2.utils.demo_outputs import OutputFolder

    meta = MetadataCatalog.get("shapes_test")
    folder = OutputFolder(str(out), protected=list(map(str, paths)) + list(protected), overwrite=overwrite)
    return run_demo(
        predictor,
        [str(p) for p in paths],
        folder,
        DemoOptions(**options),
        meta.thing_classes,
        meta.predicate_classes,
        given=given,
        needs_boxes=True,
    )


def write_image(path, h=90, w=120, seed=0):
    cv2.imwrite(str(path), np.random.RandomState(seed).randint(0, 255, (h, w, 3)).astype(np.uint8))
    return path


TWO_BOXES = GivenBoxes(np.array([[5.0, 5, 40, 40], [30, 20, 80, 70]]), np.array([0, 1]))


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_outputs_into_the_input_folder_never_replace_inputs_and_need_overwrite(tmp_path, predictor):
    folder = tmp_path / "photos"
    folder.mkdir()
    inputs = [write_image(folder / "photo.png", seed=1), write_image(folder / "photo.jpg", seed=2)]
    (folder / "photo.json").write_text('{"mine": true}')  # the user's own file beside the photos
    before = snapshot(folder)
    given = {"photo.png": TWO_BOXES, "photo.jpg": TWO_BOXES}
    report = run(predictor, inputs, folder, given)
    assert report.failures == [] and len(report.written) == 2
    after = snapshot(folder)
    assert {k: after[k] for k in before} == before  # inputs and the user's photo.json untouched
    assert sorted(set(after) - set(before)) == sorted(
        f"photo.{e}{s}" for e in ("png", "jpg") for s in (".png", ".json", ".graph.png")
    )
    # stems do not collide: each JSON describes its own input
    assert json.loads(after["photo.png.json"])["file_name"].endswith("photo.png")
    assert json.loads(after["photo.jpg.json"])["file_name"].endswith("photo.jpg")

    again = run(predictor, inputs, folder, given)  # a second run without --overwrite
    assert len(again.written) == 0 and len(again.failures) == 2
    assert all("exists; pass --overwrite" in why for _, why in again.failures)
    assert again.summary("out") == "demo: 0 of 2 images written to out"
    assert snapshot(folder) == after

    replaced = run(predictor, inputs, folder, given, overwrite=True)
    assert replaced.failures == [] and snapshot(folder).keys() == after.keys()
    assert {k: snapshot(folder)[k] for k in before} == before


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, predictor):
    folder = tmp_path / "in"
    folder.mkdir()
    pic, clash = write_image(folder / "x.png", seed=3), write_image(folder / "x.png.png", seed=4)
    out = tmp_path / "out"
    out.mkdir()
    other = write_image(tmp_path / "y.png", seed=5)
    os.symlink(other, out / "y.png.png")  # an output path that resolves to an input
    before = {p: p.read_bytes() for p in (pic, clash, other)}
    given = {n: TWO_BOXES for n in ("x.png", "x.png.png", "y.png")}
    report = run(predictor, [pic, clash], folder, given, overwrite=True)
    assert [p for p, _ in report.failures] == [str(pic)]
    assert "is an input file of this run" in report.failures[0][1]
    assert list(report.written) == [str(clash)]  # x.png.png -> x.png.png.png etc.
    report = run(predictor, [other], out, given, overwrite=True)
    assert len(report.failures) == 1 and "is an input file" in report.failures[0][1]
    assert {p: p.read_bytes() for p in (pic, clash, other)} == before
    assert not (folder / "x.png.json").exists()  # nothing of the refused image was written


def test_same_file_name_in_two_folders_fails_the_second_not_the_first(tmp_path, predictor):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    paths = [write_image(a / "pic.png", seed=6), write_image(b / "pic.png", seed=7)]
    report = run(predictor, paths, tmp_path / "out", {"pic.png": TWO_BOXES}, overwrite=True)
    assert list(report.written) == [str(paths[0])]
    assert "already written for" in report.failures[0][1] and str(paths[0]) in report.failures[0][1]
    assert json.loads((tmp_path / "out" / "pic.png.json").read_text())["file_name"] == str(paths[0])


def test_json_is_written_only_together_with_its_pictures(tmp_path, predictor, monkeypatch):
    import vrd_d2.demo as demo_lib

    pic = write_image(tmp_path / "p.png")

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(demo_lib, "plot_scene_graph", broken)
    report = run(predictor, [pic], tmp_path / "out", {"p.png": TWO_BOXES})
    assert "drawing failed" in report.failures[0][1]
    assert os.listdir(tmp_path / "out") == []  # neither the JSON nor the first drawing


def test_output_folder_writes_all_files_or_none(tmp_path):
    from vrd_d2.utils.demo_outputs import OutputFolder

    folder = OutputFolder(str(tmp_path / "out"))
    with pytest.raises(TypeError):
        folder.write("a.jpg", {".json": b"{}", ".png": object()})  # the second file cannot be written
    assert os.listdir(tmp_path / "out") == []  # no a.jpg.json, no temporary part left
    assert folder.write("a.jpg", {".json": b"{}", ".png": b"png"}) == [
        str(tmp_path / "out" / "a.jpg.json"),
        str(tmp_path / "out" / "a.jpg.png"),
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "out" / "a.jpg.json").st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize(
    "h,w,box", [(1, 1, [0, 0, 1, 1]), (6000, 6000, [100, 200, 3000, 5000]), (20, 4000, [0, 0, 2000, 20])]
)
def test_drawings_are_bounded_whatever_the_image_size(tmp_path, predictor, h, w, box):
    from PIL import Image

    pic = tmp_path / "big.png"
    cv2.imwrite(str(pic), np.full((h, w, 3), 90, np.uint8))  # flat: quick to encode even at 6000 px
    boxes = GivenBoxes(np.array([box, [0.0, 0, w, h]], dtype=np.float64), np.array([0, 1]))
    report = run(predictor, [pic], tmp_path / "out", {"big.png": boxes}, top_n=5)
    assert report.failures == []
    for suffix in (".png", ".graph.png"):
        with Image.open(tmp_path / "out" / f"big.png{suffix}") as im:
            assert 480 <= max(im.size) <= 2000, (suffix, im.size)
    graph = json.loads((tmp_path / "out" / "big.png.json").read_text())
    assert graph["objects"][1]["box"] == [0.0, 0.0, float(w), float(h)]  # the JSON keeps image pixels


BAD_ENTRIES = {
    "unknown.png": ({"boxes": [[1, 1, 20, 20]], "labels": ["zebra"]}, "unknown class name 'zebra'"),
    "float_label.png": ({"boxes": [[1, 1, 20, 20]], "labels": [2.5]}, "labels[0] must be an integer, found 2.5"),
    "bool_label.png": ({"boxes": [[1, 1, 20, 20]], "labels": [True]}, "labels[0] must be an integer"),
    "nan_score.png": ({"boxes": [[1, 1, 20, 20]], "scores": [float("nan")]}, "scores[0] must be a finite"),
    "negative_score.png": ({"boxes": [[1, 1, 20, 20]], "scores": [-0.1]}, "scores[0] must be in [0.0, 1.0]"),
    "big_score.png": ({"boxes": [[1, 1, 20, 20]], "scores": [1.5]}, "scores[0] must be in [0.0, 1.0]"),
    "inf_box.png": ({"boxes": [[1, 1, float("inf"), 20]]}, "boxes[0] must be 4 finite numbers"),
    "inverted.png": ({"boxes": [[30, 1, 20, 20]]}, "boxes[0] [30, 1, 20, 20] is inverted"),
    "three.png": ({"boxes": [[1, 1, 20]]}, "boxes[0] must be 4 finite numbers"),
    "count.png": ({"boxes": [[1, 1, 20, 20]], "labels": [0, 1]}, "1 boxes but 2 labels"),
    "no_boxes.png": ({"labels": [0]}, "needs a 'boxes' list"),
    "outside.png": ({"boxes": [[1, 1, 500, 20]]}, "lies outside the 120x90 image"),
}


def test_each_bad_boxes_entry_fails_only_its_image(tmp_path, predictor):
    from detectron2.data import MetadataCatalog

    from vrd_d2.utils.given_boxes import GivenBoxesFile

    folder = tmp_path / "images"
    folder.mkdir()
    entries = {name: entry for name, (entry, _) in BAD_ENTRIES.items()}
    entries["good.png"] = {"boxes": [[5, 5, 40, 40], [30, 20, 80, 70]], "labels": ["red circle", 1], "scores": [0.5, 1]}
    paths = [write_image(folder / name) for name in sorted(entries)]
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(entries))  # json writes NaN / Infinity as Python reads them back
    given = GivenBoxesFile(str(boxes_file), MetadataCatalog.get("shapes_test").thing_classes)
    report = run(predictor, paths, tmp_path / "out", given)
    assert list(report.written) == [str(folder / "good.png")]
    assert report.summary("out") == f"demo: 1 of {len(entries)} images written to out"
    why = {os.path.basename(p): reason for p, reason in report.failures}
    assert sorted(why) == sorted(BAD_ENTRIES)
    for name, (_, expected) in BAD_ENTRIES.items():
        assert expected in why[name], (name, why[name])
        if name != "outside.png":  # the file and the entry are named
            assert f"boxes.json: entry '{name}'" in why[name]
    good = json.loads((tmp_path / "out" / "good.png.json").read_text())
    assert [o["score"] for o in good["objects"]] == [0.5, 1.0]


def test_a_file_name_listed_twice_fails_its_image(tmp_path):
    from vrd_d2.utils.given_boxes import GivenBoxesFile

    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text('{"a.png": {"boxes": []}, "a.png": {"boxes": [[1, 1, 2, 2]]}, "b.png": {"boxes": []}}')
    given = GivenBoxesFile(str(boxes_file), ["x"])
    with pytest.raises(ValueError, match="'a.png': listed 2 times"):
        given["a.png"]
    assert given["b.png"].boxes.shape == (0, 4)
    boxes_file.write_text('[{"file_name": "c.png", "boxes": [], "boxes": [[1, 1, 2, 2]]}]')
    with pytest.raises(ValueError, match=r"'c.png': key\(s\) \['boxes'\] given more than once"):
        GivenBoxesFile(str(boxes_file), ["x"])["c.png"]
    boxes_file.write_text('"just a string"')
    with pytest.raises(ValueError, match="boxes.json: expected a list of entries or a dict"):
        GivenBoxesFile(str(boxes_file), ["x"])


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--top-n", "-1", "--top-n must be >= 1, found -1"),
        ("--top-n", "0", "--top-n must be >= 1, found 0"),
        ("--score-thresh", "nan", "--score-thresh must be a finite number"),
        ("--score-thresh", "1.5", "--score-thresh must be in [0.0, 1.0], found 1.5"),
        ("--k-per-pair", "-3", "--k-per-pair must be >= 0, found -3"),
    ],
)
def test_command_line_values_are_range_checked(tmp_path, capsys, flag, value, message):
    demo = load_tool("demo")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--config-file", CONFIG, "--input", str(tmp_path), "--output", str(tmp_path / "out"), flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _Payload:
    """Unpickling this creates a folder: the proof that a weights file ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_weights_file_with_code_is_refused_and_not_run(tmp_path, capsys, suffix):
    import pickle

    marker = tmp_path / "code_ran"
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(pickle.dumps({"model": _Payload(str(marker))}, protocol=2))
    pic = write_image(tmp_path / "p.png")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"p.png": {"boxes": [[1, 1, 20, 20]]}}))
    demo = load_tool("demo")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(
            [
                "--config-file",
                CONFIG,
                "--weights",
                str(evil),
                "--input",
                str(pic),
                "--output",
                str(tmp_path / "out"),
                "--boxes",
                str(boxes),
                "MODEL.DEVICE",
                "cpu",
            ]
        )
    assert exit_info.value.code == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "evil" in err
    if suffix == ".pkl":
        assert "--trust-pickle" in err


def test_weights_without_the_relation_head_are_an_error(tmp_path, weights):
    pytest.importorskip("vrd_d2.checkpoint")  # VRDCheckpointer(require_relation_head=True)
    from vrd_d2.demo import setup_demo_cfg
    from vrd_d2.predictor import VRDPredictor

    state = torch.load(weights, weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("roi_heads.")}
    headless = tmp_path / "headless.pth"
    torch.save(state, headless)
    with pytest.raises(ValueError, match="relation"):
        VRDPredictor(setup_demo_cfg(CONFIG, ["MODEL.DEVICE", "cpu"], str(headless)))


def test_expand_inputs_skips_earlier_outputs_and_repeats(tmp_path):
    for name in ("a.jpg", "a.jpg.png", "a.jpg.graph.png", "b.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_inputs([str(tmp_path), str(tmp_path / "b.png"), str(tmp_path / "*.jpg")])
    assert found == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    # named explicitly, an earlier output is an input like any other
    assert expand_inputs([str(tmp_path / "a.jpg.png")]) == [str(tmp_path / "a.jpg.png")]


def test_graph_format_both_writes_the_graph_picture_and_the_dot_file(tmp_path, weights):
    demo = load_tool("demo")
    pic = write_image(tmp_path / "p.jpg")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"p.jpg": {"boxes": [[5, 5, 40, 40], [30, 20, 80, 70]], "labels": [0, 1]}}))
    rc = demo.main(
        [
            "--config-file",
            CONFIG,
            "--weights",
            weights,
            "--input",
            str(pic),
            "--output",
            str(tmp_path / "out"),
            "--boxes",
            str(boxes),
            "--graph-format",
            "both",
            "--top-n",
            "2",
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    assert rc == 0
    assert sorted(os.listdir(tmp_path / "out")) == [f"p.jpg{s}" for s in (".dot", ".graph.png", ".json", ".png")]
    dot = (tmp_path / "out" / "p.jpg.dot").read_text()
    rels = json.loads((tmp_path / "out" / "p.jpg.json").read_text())["relations"]
    assert dot.count(" -> ") == len(rels) == 2
