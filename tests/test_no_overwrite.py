"""No tool writes over a user's file (issue #31): an existing output only with --overwrite, an
input never (also through a symlink or a hard link), a write goes through a temporary file of its
own (a user's ``X.tmp`` is not touched, a failed write leaves the old file); ``shapes_demo.py
--update-results`` (alias --update-readme) refuses --quick. Each refusal leaves every file byte for byte as it was."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog
from tools_loader import load_tool

from vrd_d2.data.datasets.custom import register_vrd_json
from vrd_d2.utils.safe_write import atomic_write_bytes, atomic_write_text, check_output_path, dataset_files

A, B = [10.0, 10.0, 50.0, 50.0], [60.0, 20.0, 90.0, 70.0]


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {
        os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(folder)
        for n in names
    }


# ---------------------------------------------------------------------------- the helper
def test_check_output_path_rules(tmp_path):
    new, old, source = tmp_path / "new.json", tmp_path / "old.json", tmp_path / "source.json"
    old.write_text("mine")
    source.write_text("input")
    check_output_path(str(new), [str(source)])  # a new file: fine
    check_output_path(str(old), [str(source)], overwrite=True)
    with pytest.raises(FileExistsError, match=rf"^--json {old}: exists; pass --overwrite to replace it$"):
        check_output_path(str(old), [str(source)], flag="--json")
    link, hard = tmp_path / "link.json", tmp_path / "hard.json"
    link.symlink_to(source)
    os.link(source, hard)
    for path in (source, link, hard, tmp_path / "sub" / ".." / "source.json"):
        with pytest.raises(FileExistsError, match=r"a file this run reads; it is never written over \(not even with"):
            check_output_path(str(path), [None, "", str(source)], overwrite=True)
    with pytest.raises(FileExistsError, match=rf"^--output {tmp_path}: is a folder"):
        check_output_path(str(tmp_path), [], overwrite=True)
    assert source.read_text() == "input" and old.read_text() == "mine"


def test_atomic_write_keeps_the_old_file_on_failure_and_leaves_no_temp(tmp_path):
    target, user_tmp = tmp_path / "out.json", tmp_path / "out.json.tmp"
    user_tmp.write_text("a user's file")
    atomic_write_text(str(target), "first")
    assert target.read_text() == "first" and user_tmp.read_text() == "a user's file"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600

    class Boom(Exception):
        pass

    from vrd_d2.utils.safe_write import atomic_open

    with pytest.raises(Boom):
        with atomic_open(str(target)) as f:
            f.write("half of the new")
            raise Boom()
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.json.tmp"]
    atomic_write_bytes(str(tmp_path / "new" / "x.bin"), b"\x00\x01")  # makes the folder
    assert (tmp_path / "new" / "x.bin").read_bytes() == b"\x00\x01"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- a small dataset
@pytest.fixture
def small_dataset(tmp_path):
    """A two-image vrd json registered as a dataset; its annotation file and a results file."""
    name = f"no_overwrite_{tmp_path.name}"
    ann = tmp_path / "data" / "annotations.json"
    ann.parent.mkdir()
    images = [
        {
            "file_name": f"im{i}.jpg",
            "image_id": i,
            "height": 100,
            "width": 100,
            "objects": [{"bbox": A, "category_id": 0}, {"bbox": B, "category_id": 1}],
            "relations": [[0, 1, i]],
        }
        for i in range(2)
    ]
    ann.write_text(json.dumps({"thing_classes": ["a", "b"], "predicate_classes": ["p", "q"], "images": images}))
    register_vrd_json(name, str(ann), str(tmp_path / "data"))
    row = {"subject_box": A, "object_box": B, "subject": 0, "object": 1, "score": 0.9, "pair_rank": 0}
    results = tmp_path / "res.json"
    results.write_text(
        json.dumps(
            {
                "images": [
                    {"image_id": i, "file_name": f"im{i}.jpg", "relations": [dict(row, predicate=0)]} for i in range(2)
                ]
            }
        )
    )
    yield name, ann, results
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_dataset_files_are_its_metadata_files_and_root_files(small_dataset, tmp_path):
    name, ann, _ = small_dataset
    assert dataset_files(MetadataCatalog.get(name)) == [str(ann)]
    (tmp_path / "data" / "objects.json").write_text("[]")
    assert sorted(dataset_files({"root": str(tmp_path / "data"), "json_file": str(ann), "split": "test"})) == sorted(
        [str(ann), str(ann), str(tmp_path / "data" / "objects.json")]
    )


# ---------------------------------------------------------------------------- convert_to_vrd_json
def test_convert_refuses_its_own_source_even_with_overwrite(small_dataset, tmp_path, capsys):
    name, ann, _ = small_dataset
    tool = load_tool("convert_to_vrd_json")
    link = tmp_path / "link.json"
    link.symlink_to(ann)
    before = _snapshot(tmp_path)
    for target in (ann, link):
        with pytest.raises(SystemExit) as e:
            tool.main(["--dataset", name, "--output", str(target), "--overwrite"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"convert_to_vrd_json.py: error: --output {target}: is {ann}, a file this run reads")
    assert _snapshot(tmp_path) == before


def test_convert_replaces_an_existing_file_only_with_overwrite(small_dataset, tmp_path, capsys):
    name, ann, _ = small_dataset
    tool = load_tool("convert_to_vrd_json")
    out, user_tmp = tmp_path / "out.json", tmp_path / "out.json.tmp"
    out.write_text("a user's file")
    user_tmp.write_text("another user's file")
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        tool.main(["--dataset", name, "--output", str(out)])
    assert e.value.code == 2
    assert f"--output {out}: exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    assert tool.main(["--dataset", name, "--output", str(out), "--overwrite"]) == 0
    written = json.loads(out.read_text())
    assert [im["relations"] for im in written["images"]] == [[[0, 1, 0]], [[0, 1, 1]]]
    assert written["thing_classes"] == ["a", "b"] and written["predicate_classes"] == ["p", "q"]
    after = _snapshot(tmp_path)
    assert after.pop("out.json") != before.pop("out.json") and after == before  # X.tmp untouched, no temp left


# ---------------------------------------------------------------------------- eval_results --json
def test_eval_results_never_writes_over_what_it_reads(small_dataset, tmp_path):
    name, ann, results = small_dataset
    tool = load_tool("eval_results")
    gt_mat = tmp_path / "lu" / "evaluation" / "gt.mat"
    gt_mat.parent.mkdir(parents=True)
    gt_mat.write_bytes(b"MATLAB 5.0 MAT-file, not scored here")
    before = _snapshot(tmp_path)
    for argv, target in (
        ([str(results), "--dataset", name], results),  # the results file being scored
        ([str(results), "--dataset", name], ann),  # the dataset's annotations
        ([str(results), "--gt-mat", str(gt_mat)], gt_mat),  # Lu's ground truth
        ([str(results), "--gt-mat", str(gt_mat)], gt_mat.parent / "zeroShot.mat"),  # its default beside gt.mat
    ):
        with pytest.raises(FileExistsError, match=rf"^--json {target}: is .*, a file this run reads"):
            tool.main(argv + ["--json", str(target), "--overwrite"])
    assert _snapshot(tmp_path) == before


def test_eval_results_replaces_an_earlier_scores_file_only_with_overwrite(small_dataset, tmp_path):
    name, _, results = small_dataset
    tool = load_tool("eval_results")
    scores = tmp_path / "scores.json"
    scores.write_text("earlier scores")
    argv = [str(results), "--dataset", name, "--protocol", "lu", "--json", str(scores)]
    with pytest.raises(FileExistsError, match=rf"^--json {scores}: exists; pass --overwrite"):
        tool.main(argv)
    assert scores.read_text() == "earlier scores"
    tool.main(argv + ["--overwrite"])
    # predicate 0 right on image 0, wrong on image 1: one of two ground-truth relations found
    assert json.loads(scores.read_text())["relationship_R@50"] == pytest.approx(50.0)


def test_eval_results_cli_refusal_is_a_one_line_error(small_dataset, tmp_path):
    _, _, results = small_dataset
    before = results.read_bytes()
    gt_mat = tmp_path / "gt.mat"
    gt_mat.write_bytes(b"x")
    done = subprocess.run(
        [sys.executable, "tools/eval_results.py", str(results), "--gt-mat", str(gt_mat), "--json", str(results)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"eval_results.py: error: --json {results}: is {results}, a file this run reads; it is never written over "
        "(not even with --overwrite): choose another file"
    ]
    assert results.read_bytes() == before


# ---------------------------------------------------------------------------- the other --json / output tools
@pytest.mark.parametrize(
    "tool_name, argv",
    [
        ("shapes_oracle", ["--images", "2"]),
        ("benchmark_cp", ["--quick"]),
        ("benchmark_model", ["--images", "1"]),
    ],
)
def test_json_of_the_other_tools_is_not_replaced_without_overwrite(tool_name, argv, tmp_path, capsys):
    existing = tmp_path / "figures.json"
    existing.write_text("earlier figures")
    with pytest.raises(SystemExit) as e:  # before any work
        load_tool(tool_name).main(argv + ["--json", str(existing)])
    assert e.value.code == 2
    assert f"--json {existing}: exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert existing.read_text() == "earlier figures"


def test_shapes_oracle_json_with_overwrite(tmp_path):
    existing = tmp_path / "oracle.json"
    existing.write_text("earlier figures")
    assert load_tool("shapes_oracle").main(["--images", "20", "--json", str(existing), "--overwrite"]) == 0
    assert "optimal_R50_free_k" in json.loads(existing.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["oracle.json"]


def test_convert_torchvision_vgg_never_writes_over_its_input(tmp_path, monkeypatch, capsys):
    tool = load_tool("convert_torchvision_vgg")
    source, out = tmp_path / "vgg16.pth", tmp_path / "converted.pth"
    torch.save({"features.0.weight": torch.ones(2)}, source)
    out.write_bytes(b"earlier weights")
    before = _snapshot(tmp_path)
    for argv in ([str(source), str(source), "--overwrite"], [str(source), str(out)]):
        with pytest.raises(SystemExit) as e:
            tool.main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"output {source}: is {source}, a file this run reads" in err
    assert f"output {out}: exists; pass --overwrite to replace it" in err
    assert _snapshot(tmp_path) == before
    monkeypatch.setattr(tool, "convert_torchvision_vgg16", lambda state: {"backbone.w": state["features.0.weight"]})
    tool.main([str(source), str(out), "--overwrite"])
    saved = torch.load(out, weights_only=True)
    assert torch.equal(saved["model"]["backbone.w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted.pth", "vgg16.pth"]


# ---------------------------------------------------------------------------- shapes_demo
def test_shapes_demo_update_readme_refuses_quick(tmp_path, capsys):
    readme, band = tmp_path / "README.md", tmp_path / "demo_band.json"
    readme.write_text("<!-- shapes-demo:begin -->\nthe measured table\n<!-- shapes-demo:end -->\n")
    band.write_text('{"band": "the measured band"}')
    before = _snapshot(tmp_path)
    for extra in ([], ["--seeds", "0", "1", "--threads", "1"]):
        argv = ["--quick", "--update-readme", "--readme", str(readme), "--band-file", str(band)]
        rc = load_tool("shapes_demo").main(argv + ["--output", str(tmp_path / "out")] + extra)
        assert rc == 2
        assert capsys.readouterr().err == (
            "shapes_demo.py: error: --update-results refuses --quick (its numbers mean nothing)\n"
        )
    assert _snapshot(tmp_path) == before and not (tmp_path / "out").exists()  # nothing trained
