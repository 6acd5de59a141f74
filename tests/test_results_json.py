"""The strict results-JSON reader (vrd_d2.evaluation.load_results_json): every bad document is a
ValueError naming the file and the entry, and every document that loads keeps all its rows."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrd_d2.evaluation import load_results_json

GOOD_ROW = {
    "subject_box": [0, 0, 9, 9],
    "object_box": [20, 20, 29, 29],
    "subject": 1,
    "predicate": 2,
    "object": 3,
    "score": 0.5,
    "pair_rank": 0,
}


def _doc(rows, **image):
    return {
        "format": "vrd_d2.relations.v1",
        "images": [dict({"image_id": 7, "file_name": "a.jpg"}, **image, relations=rows)],
    }


def _write(tmp_path, doc, name="res.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_good_document_loads_every_row(tmp_path):
    rows = [GOOD_ROW, dict(GOOD_ROW, predicate=4.0, score=1, pair_rank=1)]
    out = load_results_json(_write(tmp_path, _doc(rows)))
    rec = out[0]["record"]
    assert (out[0]["image_id"], out[0]["file_name"]) == (7, "a.jpg")
    np.testing.assert_array_equal(rec["labels"], [[1, 2, 3], [1, 4, 3]])  # 4.0 is the integer 4
    np.testing.assert_array_equal(rec["pair_rank"], [0, 1])
    np.testing.assert_allclose(rec["scores"], [0.5, 1.0])


@pytest.mark.parametrize(
    "content,message",
    [
        ("", r"res.json: the file is empty"),
        ("   \n", r"res.json: the file is empty"),
        ('{"images": [{"image_id": 0, "relations": [', r"res.json: not valid JSON \(truncated"),
        ('{"format": "x"}', r"res.json: the results object has no 'images' key \(keys: \['format'\]\)"),
        ('"images"', r"res.json: expected a list of images .* found str"),
        ('{"images": 3}', r"res.json: expected a list of images .* found int"),
        ('{"images": [], "images": []}', r"res.json: key 'images' appears twice"),
        ("[5]", r"res.json: image entry 0 must be an object, found int"),
        ('[{"relations": []}]', r"res.json: image entry 0 has neither image_id nor file_name"),
        ('[{"image_id": [1]}]', r"res.json: image entry 0: image_id must be an integer or a string"),
        ('[{"image_id": 1, "file_name": 3}]', r"image entry 0: file_name must be a string, found 3"),
        ('[{"image_id": 1, "relations": {}}]', r"image 0 \(image_id=1, \): 'relations' must be a list"),
        ('[{"image_id": 1, "relations": [[1, 2]]}]', r"image 0 \(image_id=1, \), row 0: expected a relation object"),
    ],
)
def test_bad_documents_name_the_file_and_entry(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        load_results_json(_write(tmp_path, content))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("score", "high", r"row 1: score must be a number, found 'high'"),
        ("subject", True, r"row 1: labels must be integers, subject is True"),
        ("predicate", 3.7, r"row 1: labels must be integers, predicate is 3.7"),
        ("object", "3", r"row 1: labels must be integers, object is '3'"),
        # found by the mutation test: 2**63 as a float overflowed int64 instead of naming the row
        ("object", 9.223372036854776e18, r"row 1: labels must be integers within int64, object is 9.22"),
        ("subject", 2**70, r"row 1: labels must be integers within int64, subject is"),
        ("subject_box", [0, 0, 9], r"row 1: subject_box must be 4 numbers \[x1, y1, x2, y2\], found \[0, 0, 9\]"),
        ("object_box", [0, 0, "x", 9], r"row 1: object_box must be 4 numbers"),
        ("object_box", "0 0 9 9", r"row 1: object_box must be 4 numbers"),
        ("pair_rank", -1, r"row 1: pair_rank must be an integer >= 0, found -1"),
        ("pair_rank", 0.5, r"row 1: pair_rank must be an integer >= 0, found 0.5"),
    ],
)
def test_bad_rows_name_image_and_row(tmp_path, field, value, message):
    doc = _doc([GOOD_ROW, dict(GOOD_ROW, **{field: value})])
    with pytest.raises(ValueError, match=r"res.json: image 0 \(image_id=7, a.jpg\), " + message):
        load_results_json(_write(tmp_path, doc))


def test_missing_keys_are_listed(tmp_path):
    row = {k: v for k, v in GOOD_ROW.items() if k not in ("score", "object")}
    with pytest.raises(ValueError, match=r"image 0 \(image_id=7, a.jpg\), row 0: missing \['object', 'score'\]"):
        load_results_json(_write(tmp_path, _doc([row])))


def test_latin1_bytes_name_the_file(tmp_path):
    path = tmp_path / "res.json"
    path.write_bytes('[{"file_name": "caf\xe9.jpg"}]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"res.json: not UTF-8 text"):
        load_results_json(str(path))


# ------------------------------------------------------------------------ property tests
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 200), st.floats(allow_nan=False, width=32), st.text(max_size=3)
)
_values = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8
)
_box = st.one_of(st.lists(st.floats(0, 100, width=32), min_size=4, max_size=4), _values)
_row = st.fixed_dictionaries(
    {},
    optional={
        "subject_box": _box,
        "object_box": _box,
        "subject": _values | st.integers(0, 5),
        "predicate": _values | st.integers(0, 5),
        "object": st.integers(0, 5) | _values,
        "score": st.floats(0, 1) | _values,
        "pair_rank": st.integers(0, 3) | _values,
    },
)
_image = st.one_of(
    st.fixed_dictionaries(
        {"image_id": st.integers(0, 9) | _values},
        optional={"file_name": st.text(max_size=4) | _values, "relations": st.lists(_row, max_size=4) | _values},
    ),
    _values,
)
_document = st.one_of(
    st.lists(_image, max_size=4),
    st.fixed_dictionaries({"images": st.lists(_image, max_size=4)}),
    st.dictionaries(st.text(max_size=6), _values, max_size=3),
    _values,
)


def _count(doc):
    images = doc["images"] if isinstance(doc, dict) else doc
    return len(images), sum(len(im.get("relations", [])) for im in images)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_document, cut=st.one_of(st.none(), st.integers(0, 400)))
def test_random_documents_load_completely_or_name_the_file(tmp_path, doc, cut):
    text = json.dumps(doc)
    if cut is not None:  # a truncated file
        text = text[:cut]
    path = _write(tmp_path, text, "random.json")
    try:
        out = load_results_json(path)
    except ValueError as e:
        assert str(e).startswith(path + ":"), str(e)
        return
    n_images, n_rows = _count(json.loads(text))
    assert len(out) == n_images
    assert sum(len(e["record"]["scores"]) for e in out) == n_rows
    for e in out:
        rec = e["record"]
        assert {len(v) for v in rec.values()} <= {len(rec["scores"])}
        assert rec["labels"].shape[1:] == (3,) and rec["sub_boxes"].shape[1:] == (4,)


_mutation = st.tuples(
    st.integers(0, 2), st.integers(0, 3), st.sampled_from(sorted(GOOD_ROW)), st.one_of(st.just("<delete>"), _values)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_rows=st.lists(st.integers(0, 4), min_size=1, max_size=3), mutations=st.lists(_mutation, max_size=3))
def test_mutated_valid_documents_load_completely_or_name_the_entry(tmp_path, n_rows, mutations):
    """Valid documents with a few fields deleted or replaced by random JSON values."""
    doc = {
        "images": [
            {"image_id": i, "file_name": f"im{i}.jpg", "relations": [dict(GOOD_ROW, score=0.1 * j) for j in range(n)]}
            for i, n in enumerate(n_rows)
        ]
    }
    for im_idx, row_idx, key, value in mutations:
        rows = doc["images"][im_idx % len(n_rows)]["relations"]
        if not rows:
            continue
        row = rows[row_idx % len(rows)]
        if value == "<delete>":
            row.pop(key, None)
        else:
            row[key] = value
    path = _write(tmp_path, doc, "mutated.json")
    try:
        out = load_results_json(path)
    except ValueError as e:
        assert str(e).startswith(path + ": image "), str(e)  # names the image entry (and the row)
        return
    assert [len(e["record"]["scores"]) for e in out] == n_rows
