"""The vrd json format as a JSON Schema (vrd_d2/data/vrd_json.schema.json) and
``convert_to_vrd_json.py --check``: the schema and the strict loader agree on hand-made good and bad
files; what a schema cannot say (ids below the list lengths, box orientation, repeated keys) is
named by --check too; each bad entry is reported with the file and the entry."""

import copy
import json
import os

import pytest
from conftest import REPO_DIR as REPO  # noqa: E402
from tools_loader import load_tool  # noqa: E402

from vrd_d2.data import load_vrd_json_file
from vrd_d2.data.vrd_json_check import SCHEMA_FILE, check_vrd_json, load_schema, schema_errors

GOOD = {
    "thing_classes": ["person", "horse", "hat"],
    "predicate_classes": ["ride", "wear", "left of", "right of"],
    "flip_predicate_pairs": [["left of", "right of"]],
    "images": [
        {
            "file_name": "a.jpg",
            "image_id": 1,
            "height": 100,
            "width": 200,
            "objects": [
                {"bbox": [10, 10, 50, 90], "category_id": 0},
                {"bbox": [5.5, 20, 150, 95], "category_id": 1},
                {"bbox": [12, 5, 30, 20], "category_id": 2.0},
            ],
            "relations": [[0, 1, 0], [0, 2, 1]],
            "relations_complete": [[0, 1, 0], [0, 2, 1], [1, 0, 3]],
        },
        {"file_name": "b.jpg", "image_id": "b", "height": 50, "width": 50, "objects": [], "relations": []},
    ],
}


def _set(path, value):
    """A copy of GOOD with the entry at ``path`` (keys / indices) set to ``value`` (deleted: ...)."""

    def mutate(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is Ellipsis:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return data

    return mutate


OBJ0 = ("images", 0, "objects")
# (case, mutation, what --check must print): both the schema and the loader refuse these
STRUCTURAL = [
    ("id as a string", _set(OBJ0 + (1, "category_id"), "1"), "$.images[0].objects[1].category_id: must be integer"),
    ("id as a bool", _set(("images", 0, "relations", 0, 2), True), "$.images[0].relations[0][2]: must be integer"),
    ("id 3.5", _set(OBJ0 + (0, "category_id"), 3.5), "$.images[0].objects[0].category_id: must be integer"),
    ("negative id", _set(OBJ0 + (2, "category_id"), -1), "$.images[0].objects[2].category_id: must be >= 0"),
    ("box of 3", _set(OBJ0 + (0, "bbox"), [1, 2, 3]), "$.images[0].objects[0].bbox: must hold exactly 4 items"),
    ("box NaN", _set(OBJ0 + (0, "bbox"), [1, 2, float("nan"), 4]), "$.images[0].objects[0].bbox[2]: must be number"),
    ("no file_name", _set(("images", 1, "file_name"), ...), "$.images[1]: missing required key(s) ['file_name']"),
    ("no category", _set(OBJ0 + (1, "category_id"), ...), "$.images[0].objects[1]: missing required key(s)"),
    ("pair of 2", _set(("images", 0, "relations", 1), [0, 2]), "$.images[0].relations[1]: must hold exactly 3"),
    ("names not list", _set(("thing_classes",), "person"), "$.thing_classes: must be array"),
    ("no images", _set(("images",), ...), "$: missing required key(s) ['images']"),
    ("image_id a list", _set(("images", 1, "image_id"), [1]), "$.images[1].image_id: must be integer or string"),
    ("height 0", _set(("images", 1, "height"), 0), "$.images[1].height: must be >= 1"),
]
# the schema cannot say these; the loader refuses them, naming the image and the entry
SEMANTIC = [
    ("unknown category", _set(OBJ0 + (1, "category_id"), 3), "entry objects[1]: category_id 3 outside [0, 3)"),
    (
        "relation to a missing object",
        _set(("images", 0, "relations", 1), [0, 3, 1]),
        "image 0 (a.jpg), entry relations[1]: object object index 3 outside [0, 3)",
    ),
    ("unknown predicate", _set(("images", 0, "relations_complete", 2, 2), 4), "relations_complete[2]: predicate 4"),
    ("flip pair", _set(("flip_predicate_pairs", 0, 1), "above"), "flip_predicate_pairs entry 0"),
]


def _write(tmp_path, data, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _loader_refuses(path, tmp_path):
    try:
        load_vrd_json_file(path, str(tmp_path))
    except ValueError:
        return True
    return False


def test_the_schema_uses_only_implemented_keywords_and_is_shipped_and_documented():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert os.path.dirname(SCHEMA_FILE) == os.path.join(REPO, "vrd_d2", "data")
    with open(os.path.join(REPO, "setup.py")) as f:
        assert "data/vrd_json.schema.json" in f.read()
    with open(os.path.join(REPO, "docs", "DATASETS.md")) as f:
        assert "vrd_d2/data/vrd_json.schema.json" in f.read()


def test_good_file_passes_the_schema_the_loader_and_check(tmp_path, capsys):
    path = _write(tmp_path, GOOD)
    assert schema_errors(json.loads(open(path).read()), load_schema()) == []
    records = load_vrd_json_file(path, str(tmp_path))
    assert [len(r["annotations"]) for r in records] == [3, 0]
    assert [r["image_id"] for r in records] == [1, "b"]
    assert records[0]["annotations"][2]["category_id"] == 2  # 2.0 is an integer to both
    assert load_tool("convert_to_vrd_json").main(["--check", path]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{path}: OK"


@pytest.mark.parametrize("case,mutate,message", STRUCTURAL, ids=[c[0] for c in STRUCTURAL])
def test_schema_and_loader_both_refuse_structural_errors(tmp_path, capsys, case, mutate, message):
    data = mutate(copy.deepcopy(GOOD))
    path = _write(tmp_path, data)
    assert schema_errors(data, load_schema()), case
    assert _loader_refuses(path, tmp_path), case
    assert load_tool("convert_to_vrd_json").main(["--check", path]) == 1
    out = capsys.readouterr().out
    assert f"{path}: {message}" in out


@pytest.mark.parametrize("case,mutate,message", SEMANTIC, ids=[c[0] for c in SEMANTIC])
def test_check_names_what_only_the_loader_refuses(tmp_path, capsys, case, mutate, message):
    data = mutate(copy.deepcopy(GOOD))
    path = _write(tmp_path, data)
    assert schema_errors(data, load_schema()) == [], case  # beyond what a schema can say
    assert _loader_refuses(path, tmp_path), case
    assert load_tool("convert_to_vrd_json").main(["--check", path]) == 1
    out = capsys.readouterr().out
    assert path in out and message in out


def test_check_reports_inverted_boxes_and_repeated_keys_that_the_loader_repairs_or_refuses(tmp_path, capsys):
    data = _set(OBJ0 + (1, "bbox"), [150, 20, 5.5, 95])(copy.deepcopy(GOOD))  # x2 < x1
    path = _write(tmp_path, data)
    assert schema_errors(data, load_schema()) == []
    records = load_vrd_json_file(path, str(tmp_path))  # a repair: box and its relation dropped, counted
    assert len(records[0]["annotations"]) == 2 and records[0]["relations"].tolist() == [[0, 1, 1]]
    assert check_vrd_json(path) == [
        f"{path}: image 0 (a.jpg), entry objects[1]: bbox [150.0, 20.0, 5.5, 95.0] must have x2 > x1 and "
        "y2 > y1 ([x1, y1, x2, y2]); the loader would drop it and its relations"
    ]
    text = json.dumps(GOOD).replace('"category_id": 1}', '"category_id": 1, "category_id": 2}', 1)
    dup = tmp_path / "dup.json"
    dup.write_text(text)
    with pytest.raises(ValueError, match="'category_id' appears twice"):
        load_vrd_json_file(str(dup), str(tmp_path))
    assert check_vrd_json(str(dup)) == [
        f"{dup}: $.images[0].objects[1]: key 'category_id' appears more than once (json keeps only the last)"
    ]


def test_check_names_every_bad_entry_not_only_the_first(tmp_path, capsys):
    data = copy.deepcopy(GOOD)
    data["images"][0]["objects"][0]["category_id"] = "person"  # schema
    data["images"][1]["objects"] = [{"bbox": [1, 1, 9, 9], "category_id": 7}, {"bbox": [1, 1, 9, 9], "category_id": 0}]
    data["images"].append({"file_name": "c.jpg", "height": 9, "width": 9, "relations": [[0, 1, 0]]})
    path = _write(tmp_path, data)
    problems = check_vrd_json(path)
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{path}: $.images[0].objects[0].category_id: must be integer")
    assert "image 1 (b.jpg), entry objects[0]: category_id 7 outside [0, 3)" in problems[1]
    assert "image 2 (c.jpg), entry relations[0]: subject object index 0 outside [0, 0)" in problems[2]
    assert load_tool("convert_to_vrd_json").main(["--check", path]) == 1
    assert capsys.readouterr().out.strip().endswith(f"{path}: 3 problem(s)")


def test_unreadable_file_and_images_without_size_are_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    (problem,) = check_vrd_json(str(bad))
    assert problem.startswith(f"{bad}: cannot read it as JSON")
    data = copy.deepcopy(GOOD)
    del data["images"][1]["height"], data["images"][1]["width"]  # sizes then come from b.jpg, absent
    path = _write(tmp_path, data)
    (problem,) = check_vrd_json(path)
    assert problem.startswith(f"{path}: the loader refuses it:") and "b.jpg" in problem


def test_a_converted_dataset_passes_check(tmp_path, monkeypatch):
    from vrd_d2_studies.shapes_demo import data as shapes

    monkeypatch.setattr(shapes, "SPLIT_SIZES", {"train": 2, "val": 2, "test": 2})
    shapes.register_shapes(root=str(tmp_path / "shp"), seed=5, prefix="s30_schema_shapes")
    tool = load_tool("convert_to_vrd_json")
    out = tmp_path / "val.json"
    assert tool.main(["--dataset", "s30_schema_shapes_val", "--output", str(out)]) == 0
    assert check_vrd_json(str(out), str(tmp_path / "shp")) == []
    assert schema_errors(json.loads(out.read_text()), load_schema()) == []


def test_an_independent_validator_agrees_where_installed(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(load_schema())
    assert not list(validator.iter_errors(GOOD))
    for case, mutate, _ in STRUCTURAL:
        data = mutate(copy.deepcopy(GOOD))
        if case != "box NaN":  # NaN is no json number; jsonschema takes Python's float as one
            assert list(validator.iter_errors(data)), case
    for case, mutate, _ in SEMANTIC:
        assert not list(validator.iter_errors(mutate(copy.deepcopy(GOOD)))), case
