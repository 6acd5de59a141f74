"""Strict, named parsing in every loader: ids must be integral (not bool), duplicate json keys, class
lists that are not lists of strings, malformed sizes/boxes/metadata, bad h5 and .mat rows: each a
ValueError naming the file and the entry. Property tests feed the json loaders random malformed
documents: a ValueError naming the file, or a load whose counts add up. A malformed class file
under $DETECTRON2_DATASETS does not break ``import vrd_d2``."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import REPO_DIR as REPO  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrd_d2.data.datasets.common import LoadStats
from vrd_d2.data.datasets.custom import load_vrd_json_file
from vrd_d2.data.datasets.lu2016 import load_lu_detections, load_lu_gt_mat
from vrd_d2.data.datasets.vg import load_vg150
from vrd_d2.data.datasets.vg200 import load_vg200_h5
from vrd_d2.data.datasets.vrd import load_vrd_json

PERSON, HORSE = [10, 50, 20, 60], [0, 30, 0, 40]  # [ymin, ymax, xmin, xmax]


def _rel(p=0, sc=0, oc=1, sb=PERSON, ob=HORSE):
    return {"predicate": p, "subject": {"category": sc, "bbox": list(sb)}, "object": {"category": oc, "bbox": list(ob)}}


def _vrd_dir(root, anns, meta=None, raw=None):
    os.makedirs(root, exist_ok=True)
    for name, obj in (("objects.json", ["person", "horse"]), ("predicates.json", ["on", "near", "ride", "has"])):
        with open(os.path.join(root, name), "w") as f:
            json.dump(obj, f)
    with open(os.path.join(root, "annotations_train.json"), "wb" if raw is not None else "w") as f:
        f.write(raw) if raw is not None else json.dump(anns, f)
    meta = {k: {"width": 100, "height": 80} for k in ("a.jpg", "b.jpg", "c.jpg")} if meta is None else meta
    with open(os.path.join(root, "train_image_metadata.json"), "w") as f:
        f.write(meta) if isinstance(meta, str) else json.dump(meta, f)
    return root


def _load_vrd(root, stats=None):
    return load_vrd_json(
        *(
            os.path.join(root, n)
            for n in ("annotations_train.json", "img", "objects.json", "predicates.json", "train_image_metadata.json")
        ),
        stats=stats,
    )


@pytest.mark.parametrize(
    "anns, match",
    [
        ({"a.jpg": [_rel(p=3.7)]}, r"image a.jpg, entry 0: predicate must be an integer, found 3.7"),
        ({"a.jpg": [_rel(), _rel(sc=0.9)]}, r"image a.jpg, entry 1: subject category must be an integer, found 0.9"),
        ({"a.jpg": [_rel(p=True)]}, r"entry 0: predicate must be an integer, found True"),
        ({"a.jpg": [_rel(p="1")]}, r"entry 0: predicate must be an integer, found '1'"),
        ({"a.jpg": [_rel(sb="x")]}, r"entry 0: subject bbox \[ymin, ymax, xmin, xmax\] must be a list of 4 numbers"),
        (
            {"a.jpg": [_rel(ob=[0, 30, "x", 40])]},
            r"entry 0: object bbox .* coordinate must be a finite number, found 'x'",
        ),
        (
            {"a.jpg": [_rel(ob=[0, 30, True, 40])]},
            r"entry 0: object bbox .* coordinate must be a finite number, found True",
        ),
        ({"a.jpg": [5]}, r"image a.jpg, entry 0: a relation must be a json object, found int"),
        ({"a.jpg": {"x": 1}}, r"image a.jpg: the relations must be a list, found dict"),
        ([], r"must map image names to relation lists, found list"),
    ],
)
def test_vrd_json_bad_entries(tmp_path, anns, match):
    root = _vrd_dir(str(tmp_path), anns)
    with pytest.raises(ValueError, match=r"annotations_train.json.*" + match):
        _load_vrd(root)


def test_vrd_json_integral_floats_still_load(tmp_path):
    """Nothing that loaded correctly before is rejected: 3.0 is the id 3."""
    (rec,) = _load_vrd(_vrd_dir(str(tmp_path), {"a.jpg": [_rel(p=3.0, sc=0.0, oc=1.0)]}))
    assert rec["relations"].tolist() == [[0, 1, 3]]


@pytest.mark.parametrize(
    "raw, match",
    [
        (b'{"a.jpg": [], "b.jpg": [], "a.jpg": []}', r"annotations_train.json: key 'a.jpg' appears twice"),
        (b'{"a.jpg": [{"predicate": 0, "predicate": 1}]}', r"annotations_train.json: key 'predicate' appears twice"),
        ('{"caf\u00e9.jpg": []}'.encode("latin-1"), r"annotations_train.json is not UTF-8 text"),
    ],
)
def test_vrd_json_duplicate_keys_and_encoding(tmp_path, raw, match):
    with pytest.raises(ValueError, match=match):
        _load_vrd(_vrd_dir(str(tmp_path), None, raw=raw))


@pytest.mark.parametrize(
    "meta, match",
    [
        ({"a.jpg": {"width": 100, "height": "abc"}}, r"image a.jpg: height must be an integer, found 'abc'"),
        ({"a.jpg": {"width": 100}}, r"image a.jpg: expected \{'width': .., 'height': ..\}, found keys \['width'\]"),
        ({"a.jpg": {"width": 100, "height": 0}}, r"image a.jpg: height and width must be positive"),
        ({"a.jpg": [100, 80]}, r"image a.jpg: the entry must be a json object, found list"),
        ([["a.jpg", 100, 80]], r"the top level must be a json object, found list"),
        ('{"a.jpg": {"width": 1, "height": 2}, "a.jpg": {"width": 1, "height": 2}}', r"key 'a.jpg' appears twice"),
    ],
)
def test_vrd_metadata_errors_name_file_and_image(tmp_path, meta, match):
    root = _vrd_dir(str(tmp_path), {"a.jpg": [_rel()]}, meta=meta)
    with pytest.raises(ValueError, match=r"train_image_metadata.json.*" + match):
        _load_vrd(root)


# ------------------------------------------------------------------ custom vrd json
def _custom(**over):
    doc = {
        "thing_classes": ["a", "b"],
        "predicate_classes": ["p", "q"],
        "images": [
            {
                "file_name": "x.png",
                "height": 10,
                "width": 10,
                "objects": [{"bbox": [0, 0, 5, 5], "category_id": 0}, {"bbox": [5, 5, 9, 9], "category_id": 1}],
                "relations": [[0, 1, 0]],
            }
        ],
    }
    for path, value in over.items():
        *parents, last = path.split("__")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


@pytest.mark.parametrize(
    "doc, match",
    [
        (_custom(thing_classes="person"), r"thing_classes must be a list of strings, found 'person'"),
        (_custom(predicate_classes=["p", 3]), r"predicate_classes must be a list of strings"),
        ([1, 2], r"the top level must be a json object, found list"),
        (_custom(images={"x": 1}), r"images must be a list, found dict"),
        (
            _custom(images__0__relations=[[0, 1.5, 0]]),
            r"image 0 \(x.png\), entry relations\[0\]: object object index " r"must be an integer, found 1.5",
        ),
        (
            _custom(images__0__relations=[[0, 1, True]]),
            r"entry relations\[0\]: predicate must be an integer, found True",
        ),
        (_custom(images__0__relations=[[0, 1]]), r"entry relations\[0\]: expected \[subject, object, predicate\]"),
        (
            _custom(images__0__objects__0={"bbox": [0, 0, 5, 5], "category_id": 0.9}),
            r"entry objects\[0\]: category_id must be an integer, found 0.9",
        ),
        (_custom(images__0__objects__1={"bbox": "x", "category_id": 1}), r"entry objects\[1\]: bbox .* must be a list"),
        (_custom(images__0__objects__1="box"), r"entry objects\[1\]: an object must be a json object, found str"),
        (_custom(images__0__height="abc"), r"image 0 \(x.png\): height must be an integer, found 'abc'"),
        (_custom(images__0=[]), r"image entry 0: an image entry must be a json object, found list"),
        (_custom(images__0__file_name=7), r"image entry 0: file_name must be a non-empty string, found 7"),
        (_custom(flip_predicate_pairs=[["p"]]), r"flip_predicate_pairs entry 0 \['p'\] must be two names"),
        (_custom(flip_predicate_pairs="pq"), r"flip_predicate_pairs must be a list, found str"),
    ],
)
def test_custom_json_bad_documents(tmp_path, doc, match):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"data.json.*" + match):
        load_vrd_json_file(str(path), str(tmp_path))


# ------------------------------------------------------------------ property tests (hypothesis)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 5)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=3),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=3), kids, max_size=3),
    max_leaves=6,
)


def _mutate(data, node, depth=0):
    """A copy of ``node`` where some values are replaced by random json or removed."""
    if data.draw(st.integers(0, 9), label=f"mutate at depth {depth}") == 0:
        return data.draw(JSON)
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if data.draw(st.integers(0, 19)) == 0:
                continue  # key removed
            out[k] = _mutate(data, v, depth + 1)
        return out
    if isinstance(node, list):
        return [_mutate(data, v, depth + 1) for v in node]
    return node


def _check_counts(records, stats, n_images, n_relations):
    assert len(records) == stats["images"] == n_images
    assert stats["relations_read"] == n_relations
    assert (
        stats["relations_kept"] + stats["duplicate_relations_merged"] + stats["relations_dropped_degenerate"]
        == stats["relations_read"]
    )
    assert sum(len(r["relations"]) for r in records) == stats["relations_kept"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_custom_json_error_names_file_or_counts_add_up(data):
    doc = _mutate(data, _custom(**{"images__0__relations": [[0, 1, 0], [0, 1, 0], [1, 0, 1]]}))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "doc.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        stats = LoadStats("prop")
        try:
            records = load_vrd_json_file(path, tmp, stats=stats)
        except ValueError as e:
            assert path in str(e)
            return
        except FileNotFoundError as e:  # height/width removed: the size comes from the image, which is absent
            assert tmp in str(e)
            return
    n_rel = sum(len(img.get("relations", [])) for img in doc["images"])
    _check_counts(records, stats, len(doc["images"]), n_rel)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_vrd_json_error_names_file_or_counts_add_up(data):
    anns = _mutate(data, {"a.jpg": [_rel(), _rel(), _rel(p=1, ob=[9, 4, 1, 3])], "b.jpg": [], "c.jpg": [_rel(oc=0)]})
    with tempfile.TemporaryDirectory() as tmp:
        root = _vrd_dir(tmp, anns)
        stats = LoadStats("prop")
        try:
            records = _load_vrd(root, stats)
        except ValueError as e:
            assert os.path.join(root, "annotations_train.json") in str(e)
            return
        except FileNotFoundError as e:  # a mutated image name has no metadata and no image
            assert os.path.join(root, "img") in str(e)
            return
    _check_counts(records, stats, len(anns), sum(len(v) for v in anns.values()))


# ------------------------------------------------------------------ VG150 / VG200 h5, Lu .mat
def _vg150(root, image_data=None, **arrays):
    h5py = pytest.importorskip("h5py")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "dicts.json"), "w") as f:
        json.dump({"idx_to_label": {"1": "man", "2": "shirt"}, "idx_to_predicate": {"1": "wearing"}}, f)
    with open(os.path.join(root, "image_data.json"), "w") as f:
        json.dump(
            image_data or [{"image_id": 1, "width": 100, "height": 100}, {"image_id": 2, "width": 100, "height": 100}],
            f,
        )
    base = dict(
        split=np.array([2, 2]),
        img_to_first_box=np.array([0, 2]),
        img_to_last_box=np.array([1, 3]),
        img_to_first_rel=np.array([0, 2]),
        img_to_last_rel=np.array([1, 2]),
        labels=np.array([[1], [2], [1], [2]]),
        boxes_1024=np.array([[50, 50, 20, 20]] * 4),
        predicates=np.array([[1], [1], [1]]),
        relationships=np.array([[0, 1], [1, 0], [2, 3]]),
    )
    base.update(arrays)
    with h5py.File(os.path.join(root, "vg.h5"), "w") as f:
        for k, v in base.items():
            f[k] = v
    return [os.path.join(root, n) for n in ("vg.h5", "dicts.json", "image_data.json")] + [root, "test"]


@pytest.mark.parametrize(
    "image_data, arrays, match",
    [
        (
            None,
            {"predicates": np.array([[1], [1]])},
            r"vg.h5: predicates has 2 rows but relationships has shape \(3, 2\)",
        ),
        (
            None,
            {"labels": np.array([[1], [2], [1.5], [2]])},
            r"vg.h5: labels row 2: ids must be integers, found \[1.5\]",
        ),
        (
            None,
            {"labels": np.array([[True], [True], [True], [True]])},
            r"vg.h5: labels must hold integers, found dtype bool",
        ),
        (None, {"relationships": np.array([[0, 1], [1, 0.5], [2, 3]])}, r"vg.h5: relationships row 1"),
        (
            [{"image_id": 1, "width": 100, "height": 100}, {"image_id": 2, "height": 100}],
            {},
            r"image_data.json: entry 1: keys \['width'\] missing",
        ),
        (
            [{"image_id": 1, "width": 100, "height": "abc"}, {"image_id": 2, "width": 1, "height": 1}],
            {},
            r"image_data.json: entry 0: height must be an integer, found 'abc'",
        ),
        ([[1, 100, 100], [2, 100, 100]], {}, r"image_data.json: entry 0: an image entry must be a json object"),
    ],
)
def test_vg150_bad_files(tmp_path, image_data, arrays, match):
    with pytest.raises(ValueError, match=match):
        load_vg150(*_vg150(str(tmp_path), image_data, **arrays))


def test_vg150_dicts_values_must_be_names(tmp_path):
    args = _vg150(str(tmp_path))
    with open(args[1], "w") as f:
        json.dump({"idx_to_label": {"1": "man", "2": 7}, "idx_to_predicate": {"1": "wearing"}}, f)
    with pytest.raises(ValueError, match=r"dicts.json: idx_to_label values must be a list of strings"):
        load_vg150(*args)


def test_vg200_bad_rows(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "vg1_2_meta.h5"
    with h5py.File(path, "w") as f:
        for i, n in enumerate(["__background__", "man", "horse"]):
            f[f"meta/cls/idx2name/{i}"] = n
        f["meta/pre/idx2name/0"] = "ride"
        g = f.create_group("gt/train/7")
        g["rlp_labels"] = np.array([[1, 0, 2], [1.5, 0, 2]])
        g["sub_boxes"] = np.array([[1, 2, 30, 40]] * 2)
        g["obj_boxes"] = np.array([[5, 5, 20, 20]] * 2)
    with pytest.raises(ValueError, match=r"vg1_2_meta.h5: image 7: rlp_labels row 1: ids must be integers"):
        load_vg200_h5(str(path), str(tmp_path), "train")
    with h5py.File(path, "a") as f:
        del f["gt/train/7/rlp_labels"]
        f["gt/train/7/rlp_labels"] = np.array([[1, 0, 2]])
    with pytest.raises(ValueError, match=r"image 7: 1 rlp_labels rows, 2 sub_boxes and 2 obj_boxes"):
        load_vg200_h5(str(path), str(tmp_path), "train")


def test_lu_mat_fractional_labels_and_empty_names(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = np.array(["a.jpg"]), np.array(["b.jpg"])
    scipy_io.savemat(tmp_path / "imagePath.mat", {"imagePath": names})

    def cells(*arrays):
        c = np.empty((1, len(arrays)), dtype=object)
        for i, a in enumerate(arrays):
            c[0, i] = np.asarray(a, dtype=np.float64)
        return c

    scipy_io.savemat(
        tmp_path / "gt.mat",
        {
            "gt_tuple_label": cells([[1, 2, 3]], [[1, 3.7, 2]]),
            "gt_sub_bboxes": cells([[0, 0, 5, 5]], [[0, 0, 5, 5]]),
            "gt_obj_bboxes": cells([[1, 1, 6, 6]], [[1, 1, 6, 6]]),
        },
    )
    with pytest.raises(
        ValueError,
        match=r"gt.mat: image 1 \(b.jpg\): gt_tuple_label: value row 0: ids must be "
        r"integers, found \[1.0, 3.7, 2.0\]",
    ):
        load_lu_gt_mat(str(tmp_path / "gt.mat"), str(tmp_path / "imagePath.mat"))
    scipy_io.savemat(
        tmp_path / "det.mat",
        {
            "detection_bboxes": cells([[0, 0, 5, 5]], [[0, 0, 5]]),
            "detection_labels": cells([[1]], [[1]]),
            "detection_confs": cells([[0.5]], [[0.5]]),
        },
    )
    with pytest.raises(
        ValueError, match=r"det.mat: image 1 \(b.jpg\): detection_bboxes: shape \(1, 3\) does not " r"hold rows of 4"
    ):
        load_lu_detections(str(tmp_path / "det.mat"), str(tmp_path / "imagePath.mat"))
    names[0, 1] = np.array([], dtype="<U1")
    scipy_io.savemat(tmp_path / "imagePath.mat", {"imagePath": names})
    with pytest.raises(ValueError, match=r"imagePath.mat: imagePath cell 1: expected one file name"):
        load_lu_gt_mat(str(tmp_path / "gt.mat"), str(tmp_path / "imagePath.mat"))


# ------------------------------------------------------------------ registration at import
def test_malformed_class_files_do_not_break_import(tmp_path):
    (tmp_path / "vrd").mkdir()
    (tmp_path / "vrd" / "objects.json").write_text('["person", "person" ')  # truncated
    (tmp_path / "vrd" / "predicates.json").write_text('"on"')
    (tmp_path / "vg").mkdir()
    (tmp_path / "vg" / "VG-SGG-dicts-with-attri.json").write_bytes(b'{"idx_to_label": {"1": "caf\xe9"}}')
    (tmp_path / "vg200").mkdir()
    (tmp_path / "vg200" / "vg1_2_meta.h5").write_bytes(b"not an h5 file")
    code = (
        "import vrd_d2\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "from vrd_d2.data import get_triplet_counts\n"
        "for name, call in (('vrd_train', DatasetCatalog.get), ('vrd_test', get_triplet_counts),\n"
        "                   ('vg150_test', DatasetCatalog.get), ('vg200_train', DatasetCatalog.get)):\n"
        "    try:\n"
        "        call(name)\n"
        "    except ValueError as e:\n"
        "        print('ERROR', name, e)\n"
        "print('all registered:', all(n in DatasetCatalog.list() for n in ('vrd_test', 'vg150_val', 'vg200_test')))\n"
    )
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(tmp_path),
        OMP_NUM_THREADS="1",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "all registered: True" in out
    assert f"ERROR vrd_train VRD: object file {tmp_path}/vrd/objects.json is not valid json" in out
    assert f"ERROR vrd_test VRD: object file {tmp_path}/vrd/objects.json is not valid json" in out
    assert f"ERROR vg150_test VG: dicts file {tmp_path}/vg/VG-SGG-dicts-with-attri.json is not UTF-8 text" in out
    assert f"ERROR vg200_train VG: {tmp_path}/vg200/vg1_2_meta.h5 is not a readable HDF5 file" in out


@pytest.mark.parametrize(
    "names, message",
    [
        (["person", "horse", "person"], "'person' is both entry 0 and entry 2; names must be distinct"),
        (["person", " ", "horse"], "entry 1 is blank"),
        (["person", ""], "entry 1 is blank"),
    ],
)
def test_class_lists_with_duplicate_or_blank_names_are_refused(tmp_path, names, message):
    """A class name is its id's only key (--boxes labels, the checkpoint's names, conversion): two
    ids with one name, or a blank one, is an error naming the file and both positions."""
    from vrd_d2.data.datasets.vrd import _load_class_list

    path = tmp_path / "objects.json"
    path.write_text(json.dumps(names))
    with pytest.raises(ValueError) as e:
        _load_class_list(str(path), "object")
    assert str(path) in str(e.value) and message in str(e.value)
    path.write_text(json.dumps(["person", "horse"]))
    assert _load_class_list(str(path), "object") == ["person", "horse"]
