"""Dataset loaders: real VRD annotations (skipped when absent), hand-written VRD json, VG150 h5,
VG200 h5 and vrd json files covering every conversion rule."""

import collections
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_VRD  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from vrd_d2.data import get_triplet_counts, register_vrd_json
from vrd_d2.data.datasets.common import LoadStats
from vrd_d2.data.datasets.custom import dump_vrd_json, load_vrd_json_file
from vrd_d2.data.datasets.lu2016 import load_image_paths, load_lu_detections, load_lu_gt_mat
from vrd_d2.data.datasets.vg import load_vg150
from vrd_d2.data.datasets.vg200 import load_vg200_h5
from vrd_d2.data.datasets.vrd import load_vrd_json, register_all_vrd

needs_shared = pytest.mark.skipif(
    not (SHARED_VRD / "annotations_train.json").is_file(),
    reason=f"real VRD annotations not found in {SHARED_VRD}",
)


# ------------------------------------------------------------------ real VRD annotations
@pytest.fixture(scope="module")
def real_vrd():
    if not (SHARED_VRD / "annotations_train.json").is_file():
        pytest.skip(f"real VRD annotations not found in {SHARED_VRD}")
    prefix = "vrd_shared_test"
    if f"{prefix}_train" not in DatasetCatalog.list():
        register_all_vrd(str(SHARED_VRD), prefix=prefix)
    out = {"prefix": prefix}
    for split in ("train", "test"):
        stats = LoadStats(split)
        out[split] = load_vrd_json(
            str(SHARED_VRD / f"annotations_{split}.json"),
            str(SHARED_VRD / f"sg_{split}_images"),
            str(SHARED_VRD / "objects.json"),
            str(SHARED_VRD / "predicates.json"),
            str(SHARED_VRD / f"{split}_image_metadata.json"),
            stats=stats,
        )
        out[split + "_stats"] = stats
        with open(SHARED_VRD / f"annotations_{split}.json") as f:
            out[split + "_raw"] = json.load(f)
    return out


def _raw_key(r):
    s, o = r["subject"], r["object"]
    return (s["category"], r["predicate"], o["category"], tuple(s["bbox"]), tuple(o["bbox"]))


@needs_shared
def test_real_vrd_counts(real_vrd):
    tr, te = real_vrd["train"], real_vrd["test"]
    assert (len(tr), len(te)) == (4000, 1000)
    assert real_vrd["train_stats"]["relations_read"] == 30355
    assert real_vrd["test_stats"]["relations_read"] == 7638
    # independent count of distinct relations straight from the json
    distinct = {
        s: sum(len({_raw_key(r) for r in rels}) for rels in real_vrd[s + "_raw"].values()) for s in ("train", "test")
    }
    assert distinct == {"train": 29861, "test": 7478}
    assert real_vrd["train_stats"]["duplicate_relations_merged"] == 30355 - 29861 == 494
    assert real_vrd["test_stats"]["duplicate_relations_merged"] == 7638 - 7478 == 160
    # 9210906893_4102aa74c8_b.jpg: metadata 500x374, boxes up to 1023: 5 boxes clipped, 2 become
    # empty, 1 relation dropped -> 29860 relations kept in train.
    st = real_vrd["train_stats"]
    assert (st["boxes_clipped"], st["degenerate_boxes"], st["relations_dropped_degenerate"]) == (
        5,
        2,
        1,
    )
    assert sum(len(d["relations"]) for d in tr) == 29860
    assert sum(len(d["relations"]) for d in te) == 7478
    assert real_vrd["test_stats"]["boxes_clipped"] == 0
    assert st["images_without_relations"] == 220 and real_vrd["test_stats"]["images_without_relations"] == 45
    md = MetadataCatalog.get(real_vrd["prefix"] + "_train")
    assert len(md.thing_classes) == 100 and len(md.predicate_classes) == 70
    flip = md.flip_predicate_map
    left, right = md.predicate_classes.index("on the left of"), md.predicate_classes.index("on the right of")
    assert flip[left] == right and flip[right] == left
    assert sum(flip[i] != i for i in flip) == 2


@needs_shared
def test_real_vrd_triplets_and_zero_shot(real_vrd):
    counts = get_triplet_counts(real_vrd["prefix"] + "_test")  # via train_split metadata
    assert counts.shape == (100, 70, 100) and counts.sum() == 29860
    assert int((counts > 0).sum()) == 6672
    assert get_triplet_counts(real_vrd["prefix"] + "_train") is counts  # cached once
    raw_train = {
        (r["subject"]["category"], r["predicate"], r["object"]["category"])
        for rels in real_vrd["train_raw"].values()
        for r in rels
    }
    assert set(zip(*np.nonzero(counts))) == {(s, p, o) for s, p, o in raw_train}
    zero_shot = sum(
        counts[r["subject"]["category"], r["predicate"], r["object"]["category"]] == 0
        for rels in real_vrd["test_raw"].values()
        for r in rels
    )
    assert zero_shot == 1169  # before deduplication, as zeroShot.mat
    zs_dedup = 0
    for d in real_vrd["test"]:
        cats = np.array([a["category_id"] for a in d["annotations"]])
        rel = d["relations"]
        if len(rel):
            zs_dedup += int((counts[cats[rel[:, 0]], rel[:, 2], cats[rel[:, 1]]] == 0).sum())
    assert zs_dedup == 1146


@needs_shared
def test_real_vrd_json_agrees_with_gt_mat(real_vrd):
    """gt.mat boxes [x1 y1 x2 y2] are the json's [ymin ymax xmin xmax] reordered, no offset."""
    gt = load_lu_gt_mat(str(SHARED_VRD / "lu2016/evaluation/gt.mat"), str(SHARED_VRD / "lu2016/data/imagePath.mat"))
    by_name = {d["image_name"]: d for d in real_vrd["test"]}
    assert set(gt) == set(by_name) == set(real_vrd["test_raw"])
    n_rows = 0
    for name, g in gt.items():
        n_rows += len(g["labels"])
        gt_multiset = collections.Counter(
            (int(l[0]), int(l[1]), int(l[2])) + tuple(sb) + tuple(ob)
            for l, sb, ob in zip(g["labels"], g["sub_boxes"], g["obj_boxes"])
        )
        raw = collections.Counter()
        for r in real_vrd["test_raw"][name]:
            (ys0, ys1, xs0, xs1), (yo0, yo1, xo0, xo1) = r["subject"]["bbox"], r["object"]["bbox"]
            raw[
                (
                    r["subject"]["category"],
                    r["predicate"],
                    r["object"]["category"],
                    xs0,
                    ys0,
                    xs1,
                    ys1,
                    xo0,
                    yo0,
                    xo1,
                    yo1,
                )
            ] += 1
        assert gt_multiset == raw, name
        d = by_name[name]
        boxes = np.array([a["bbox"] for a in d["annotations"]]).reshape(-1, 4)
        cats = [a["category_id"] for a in d["annotations"]]
        ours = {(cats[s], p, cats[o]) + tuple(boxes[s]) + tuple(boxes[o]) for s, o, p in d["relations"]}
        assert ours == set(gt_multiset), name
    assert n_rows == 7638


@needs_shared
def test_real_lu_detections_and_image_paths():
    names = load_image_paths(str(SHARED_VRD / "lu2016/data/imagePath.mat"))
    assert len(names) == 1000 and names[0] == "3845770407_1a8cd41230_b.jpg"
    det = load_lu_detections(
        str(SHARED_VRD / "lu2016/data/objectDetRCNN.mat"),
        str(SHARED_VRD / "lu2016/data/imagePath.mat"),
    )
    assert len(det) == 1000
    d0 = det[names[0]]
    assert d0["boxes"].shape == (9, 4) and d0["labels"][0] == 0  # 1-based 1 -> person
    assert d0["boxes"][0].tolist() == [272, 213, 562, 890]
    allab = np.concatenate([d["labels"] for d in det.values()])
    assert allab.min() >= 0 and allab.max() < 100
    assert all(len(d["boxes"]) == len(d["scores"]) for d in det.values())


@needs_shared
def test_real_vrd_gif_image_name(real_vrd):
    (rec,) = [d for d in real_vrd["test"] if d["image_name"] == "4392556686_44d71ff5a0_o.jpg"]
    assert rec["file_name"].endswith("4392556686_44d71ff5a0_o.gif")


# ------------------------------------------------------------------ hand-written VRD json
def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def _rel(p, sc, sb, oc, ob):
    return {
        "predicate": p,
        "subject": {"category": sc, "bbox": sb},
        "object": {"category": oc, "bbox": ob},
    }


@pytest.fixture
def small_vrd(tmp_path):
    _write(tmp_path / "objects.json", ["person", "horse", "hat"])
    _write(tmp_path / "predicates.json", ["on", "on the left of", "on the right of"])
    person, horse = [10, 50, 20, 60], [0, 30, 0, 40]  # [ymin, ymax, xmin, xmax]
    anns = {
        "a.jpg": [
            _rel(0, 0, person, 1, horse),
            _rel(0, 0, person, 1, horse),  # duplicate: merged
            _rel(1, 0, person, 1, horse),  # same pair, second predicate: kept
            _rel(0, 2, [5, 8, 70, 130], 0, person),  # hat box past the right border: clipped
            _rel(2, 2, [9, 4, 1, 3], 0, person),  # inverted box: relation skipped
        ],
        "b.jpg": [],
        "c.jpg": [_rel(0, 0, person, 0, person)],  # subject == object: one box, kept
    }
    _write(tmp_path / "annotations_train.json", anns)
    _write(tmp_path / "train_image_metadata.json", {k: {"width": 100, "height": 80} for k in anns})
    return tmp_path


def _load_small(root, stats=None, split="train"):
    return load_vrd_json(
        str(root / f"annotations_{split}.json"),
        str(root / "img"),
        str(root / "objects.json"),
        str(root / "predicates.json"),
        str(root / f"{split}_image_metadata.json"),
        stats=stats,
    )


def test_vrd_json_conversion_rules(small_vrd):
    stats = LoadStats("small")
    a, b, c = _load_small(small_vrd, stats)
    assert (a["height"], a["width"]) == (80, 100)
    boxes = [x["bbox"] for x in a["annotations"]]
    assert boxes[0] == [20, 10, 60, 50] and boxes[1] == [0, 0, 40, 30]  # [xmin ymin xmax ymax]
    assert boxes[2] == [70, 5, 100, 8]  # clipped to width 100
    assert all(x["bbox_mode"] == BoxMode.XYXY_ABS for x in a["annotations"])
    assert [x["category_id"] for x in a["annotations"]] == [0, 1, 2]
    assert a["relations"].dtype == np.int64
    assert a["relations"].tolist() == [[0, 1, 0], [0, 1, 1], [2, 0, 0]]
    assert b["relations"].shape == (0, 3) and b["annotations"] == []
    assert c["relations"].tolist() == [[0, 0, 0]] and len(c["annotations"]) == 1
    assert stats["relations_read"] == 6 and stats["relations_kept"] == 4
    assert stats["duplicate_relations_merged"] == 1
    assert stats["boxes_clipped"] == 1 and stats["degenerate_boxes"] == 1
    assert stats["relations_dropped_degenerate"] == 1 and stats["self_relations"] == 1
    assert stats["images_without_relations"] == 1
    assert stats["images_with_fewer_than_two_boxes"] == 2
    assert "degenerate_boxes e.g. in" in stats.summary() and "a.jpg" in stats.summary()


def test_vrd_json_errors_name_file_and_entry(small_vrd):
    anns = json.loads((small_vrd / "annotations_train.json").read_text())
    anns["a.jpg"][1]["predicate"] = 3
    _write(small_vrd / "annotations_train.json", anns)
    with pytest.raises(
        ValueError,
        match=r"annotations_train.json: image a.jpg, entry 1: predicate 3 outside \[0, 3\)",
    ):
        _load_small(small_vrd)
    anns["a.jpg"][1]["predicate"] = 0
    anns["a.jpg"][2]["object"]["category"] = -1
    _write(small_vrd / "annotations_train.json", anns)
    with pytest.raises(ValueError, match="entry 2: object category -1"):
        _load_small(small_vrd)
    del anns["a.jpg"][2]["object"]["category"]
    _write(small_vrd / "annotations_train.json", anns)
    with pytest.raises(ValueError, match="entry 2: malformed"):
        _load_small(small_vrd)
    (small_vrd / "annotations_train.json").write_text("{not json")
    with pytest.raises(ValueError, match="annotations_train.json is not valid json"):
        _load_small(small_vrd)
    with pytest.raises(FileNotFoundError, match="annotations_test.json"):
        _load_small(small_vrd, split="test")


def test_vrd_json_size_from_header_or_clear_error(small_vrd):
    import cv2

    meta = json.loads((small_vrd / "train_image_metadata.json").read_text())
    del meta["b.jpg"]
    _write(small_vrd / "train_image_metadata.json", meta)
    with pytest.raises(FileNotFoundError, match=r"img/b.jpg"):
        _load_small(small_vrd)
    (small_vrd / "img").mkdir()
    cv2.imwrite(str(small_vrd / "img" / "b.jpg"), np.zeros((33, 44, 3), np.uint8))
    recs = _load_small(small_vrd)
    assert (recs[1]["height"], recs[1]["width"]) == (33, 44)
    # an image on disk wins over wrong metadata (counted)
    meta["b.jpg"] = {"width": 10, "height": 10}
    _write(small_vrd / "train_image_metadata.json", meta)
    stats = LoadStats("x")
    recs = _load_small(small_vrd, stats)
    assert (recs[1]["height"], recs[1]["width"]) == (33, 44)
    assert stats["metadata_size_mismatch"] == 1


def test_register_vrd_metadata_and_lazy(small_vrd):
    register_all_vrd(str(small_vrd), prefix="small_vrd_reg")
    md = MetadataCatalog.get("small_vrd_reg_test")
    assert md.train_split == "small_vrd_reg_train" and md.evaluator_type == "vrd"
    assert md.thing_classes == ["person", "horse", "hat"]
    assert md.flip_predicate_map == {0: 0, 1: 2, 2: 1}
    assert md.gt_mat.endswith("lu2016/evaluation/gt.mat")
    counts = get_triplet_counts("small_vrd_reg_test")
    assert counts.shape == (3, 3, 3) and counts.sum() == 4
    assert counts[0, 0, 1] == 1 and counts[0, 1, 1] == 1 and counts[2, 0, 0] == 1 and counts[0, 0, 0] == 1
    with pytest.raises(FileNotFoundError, match="annotations_test.json"):
        DatasetCatalog.get("small_vrd_reg_test")


# ------------------------------------------------------------------ VG150 h5
def _write_vg150(root, labels=None, relationships=None):
    h5py = pytest.importorskip("h5py")
    root.mkdir(parents=True, exist_ok=True)
    _write(
        root / "VG-SGG-dicts-with-attri.json",
        {
            "idx_to_label": {"1": "man", "2": "shirt", "3": "tree"},
            "idx_to_predicate": {"1": "wearing", "2": "near"},
            "label_to_idx": {},
            "predicate_to_idx": {},
        },
    )
    # image 0: train, no boxes; image 1: train, 3 boxes (global 0..2), 2 relations;
    # image 2: test, 2 boxes (3..4), 1 relation; image 3: train, 2 boxes (5..6), no relation
    _write(
        root / "image_data.json",
        [
            {"image_id": 10, "width": 800, "height": 600, "url": "https://x/VG_100K/10.jpg"},
            {"image_id": 11, "width": 2048, "height": 1024, "url": "https://x/VG_100K/11.jpg"},
            {"image_id": 12, "width": 512, "height": 1024, "url": "https://x/VG_100K/12.jpg"},
            {"image_id": 13, "width": 100, "height": 100, "url": "https://x/VG_100K/13.jpg"},
        ],
    )
    boxes = np.array(
        [
            [100, 50, 40, 20],  # -> [80,40,120,60] * 2
            [300, 300, 100, 100],
            [100, 50, 40, 20],  # same as box 0 but another label
            [512, 512, 200, 100],  # scale 1: -> [412,462,612,562]
            [100, 100, 10, 10],
            [1000, 1000, 100, 100],  # 1024-scale, image 100px: -> [92.8,92.8,102.5,102.5] clipped
            [20, 20, 0, 8],
        ],  # zero width: degenerate
        np.int32,
    )
    with h5py.File(root / "VG-SGG-with-attri.h5", "w") as f:
        f["split"] = np.array([0, 0, 2, 0])
        f["img_to_first_box"] = np.array([-1, 0, 3, 5])
        f["img_to_last_box"] = np.array([-1, 2, 4, 6])
        f["img_to_first_rel"] = np.array([-1, 0, 2, -1])
        f["img_to_last_rel"] = np.array([-1, 1, 2, -1])
        f["labels"] = np.array([[1], [2], [3], [1], [3], [1], [2]]) if labels is None else labels
        f["boxes_1024"] = boxes
        f["predicates"] = np.array([[1], [2], [2]])
        f["relationships"] = np.array([[0, 1], [2, 0], [4, 3]]) if relationships is None else relationships
    return root


def _load_vg(root, split, **kw):
    return load_vg150(
        str(root / "VG-SGG-with-attri.h5"),
        str(root / "VG-SGG-dicts-with-attri.json"),
        str(root / "image_data.json"),
        str(root / "VG_100K"),
        split,
        **kw,
    )


def test_vg150_conversion_rules(tmp_path):
    root = _write_vg150(tmp_path / "vg")
    stats = LoadStats("vg")
    train = _load_vg(root, "train", num_val=1, stats=stats)
    val = _load_vg(root, "val", num_val=1)
    test = _load_vg(root, "test")
    # val = first training image with a relation (image 1); train = the other training images
    assert [d["image_id"] for d in val] == [11]
    assert [d["image_id"] for d in train] == [10, 13]
    assert [d["image_id"] for d in test] == [12]
    (v,) = val
    assert v["file_name"].endswith("VG_100K/11.jpg") and (v["height"], v["width"]) == (1024, 2048)
    assert [a["bbox"] for a in v["annotations"]] == [
        [160, 80, 240, 120],
        [500, 500, 700, 700],
        [160, 80, 240, 120],
    ]
    assert [a["category_id"] for a in v["annotations"]] == [0, 1, 2]  # 1-based labels
    assert v["relations"].tolist() == [[0, 1, 0], [2, 0, 1]]  # 1-based predicates
    (t,) = test
    assert [a["bbox"] for a in t["annotations"]] == [[412, 462, 512, 562], [95, 95, 105, 105]]
    assert t["relations"].tolist() == [[1, 0, 1]]  # global indices 4,3 minus first box 3
    empty, last = train
    assert empty["annotations"] == [] and empty["relations"].shape == (0, 3)
    assert len(last["annotations"]) == 1 and last["annotations"][0]["bbox"] == pytest.approx(
        [1000 / 10.24 - 50 / 10.24, 1000 / 10.24 - 50 / 10.24, 100, 100]
    )
    assert stats["boxes_clipped"] == 1 and stats["degenerate_boxes"] == 1
    assert stats["images_without_relations"] == 2 and stats["images_with_fewer_than_two_boxes"] == 2


def test_vg150_errors(tmp_path):
    root = _write_vg150(tmp_path / "a", labels=np.array([[1], [2], [0], [1], [3], [1], [2]]))
    with pytest.raises(ValueError, match=r"VG-SGG-with-attri.h5: image 1 \(11.jpg\), entry box 2: label"):
        _load_vg(root, "val")  # default num_val=5000: image 1 is in val
    root = _write_vg150(tmp_path / "b", relationships=np.array([[0, 1], [2, 3], [4, 3]]))
    with pytest.raises(ValueError, match=r"relation 1: boxes \(2, 3\) outside the image's box range 0..2"):
        _load_vg(root, "val")
    (root / "VG-SGG-with-attri.h5").write_bytes(b"not an h5 file")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        _load_vg(root, "test")


def test_vg200_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "vg1_2_meta.h5"
    with h5py.File(path, "w") as f:
        for i, n in enumerate(["__background__", "man", "horse"]):
            f[f"meta/cls/idx2name/{i}"] = n
        for i, n in enumerate(["ride", "near"]):
            f[f"meta/pre/idx2name/{i}"] = n
        g = f.create_group("gt/train/7")
        g["rlp_labels"] = np.array([[1, 0, 2], [1, 1, 2], [2, 1, 1]])
        g["sub_boxes"] = np.array([[1, 2, 30, 40], [1, 2, 30, 40], [5, 5, 20, 20]])
        g["obj_boxes"] = np.array([[5, 5, 20, 20], [5, 5, 20, 20], [1, 2, 30, 40]])
        f.create_group("gt/test")
    _write(tmp_path / "image_data.json", [{"image_id": 7, "width": 50, "height": 60}])
    (rec,) = load_vg200_h5(str(path), str(tmp_path / "images"), "train", str(tmp_path / "image_data.json"))
    assert [a["category_id"] for a in rec["annotations"]] == [0, 1]
    assert [a["bbox"] for a in rec["annotations"]] == [[1, 2, 30, 40], [5, 5, 20, 20]]
    assert rec["relations"].tolist() == [[0, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert (rec["height"], rec["width"], rec["image_id"]) == (60, 50, 7)


# ------------------------------------------------------------------ vrd json (users' data)
def test_custom_json_roundtrip_and_register(small_vrd, tmp_path):
    recs = _load_small(small_vrd)
    out = str(tmp_path / "custom.json")
    dump_vrd_json(
        recs,
        ["person", "horse", "hat"],
        ["on", "on the left of", "on the right of"],
        out,
        flip_predicate_map={0: 0, 1: 2, 2: 1},
        image_root=str(small_vrd / "img"),
    )
    data = json.loads(Path(out).read_text())
    assert data["images"][0]["file_name"] == "a.jpg"
    assert data["flip_predicate_pairs"] == [["on the left of", "on the right of"]]
    again = load_vrd_json_file(out, str(small_vrd / "img"))
    for r1, r2 in zip(recs, again):
        assert r1["file_name"] == r2["file_name"] and r1["annotations"] == r2["annotations"]
        assert r1["relations"].tolist() == r2["relations"].tolist()
    register_vrd_json("custom_rt_test", out, str(small_vrd / "img"))
    md = MetadataCatalog.get("custom_rt_test")
    assert md.flip_predicate_map == {0: 0, 1: 2, 2: 1} and md.train_split == "custom_rt_test"
    assert len(DatasetCatalog.get("custom_rt_test")) == 3


def test_custom_json_errors(tmp_path):
    base = {
        "thing_classes": ["a", "b"],
        "predicate_classes": ["p"],
        "images": [
            {
                "file_name": "x.png",
                "height": 10,
                "width": 10,
                "objects": [
                    {"bbox": [0, 0, 5, 5], "category_id": 0},
                    {"bbox": [5, 5, 9, 9], "category_id": 1},
                ],
                "relations": [[0, 1, 0], [0, 2, 0]],
            }
        ],
    }
    path = _write(tmp_path / "bad.json", base)
    with pytest.raises(
        ValueError,
        match=r"bad.json: image 0 \(x.png\), entry relations\[1\]: object object index 2",
    ):
        load_vrd_json_file(path, str(tmp_path))
    base["images"][0]["relations"] = [[0, 1, 0]]
    base["images"][0]["objects"][1]["category_id"] = 2
    path = _write(tmp_path / "bad.json", base)
    with pytest.raises(ValueError, match=r"entry objects\[1\]: category_id 2 outside \[0, 2\)"):
        load_vrd_json_file(path, str(tmp_path))
    del base["predicate_classes"]
    path = _write(tmp_path / "bad.json", base)
    with pytest.raises(ValueError, match="top-level key 'predicate_classes' missing"):
        load_vrd_json_file(path, str(tmp_path))


def test_convert_tool_shapes_subset(tmp_path, monkeypatch):
    from vrd_d2_studies.shapes_demo import data as shapes

    monkeypatch.setattr(shapes, "SPLIT_SIZES", {"train": 4, "val": 2, "test": 2})
    shapes.register_shapes(root=str(tmp_path / "shp"), seed=3, prefix="convert_shapes")
    from tools_loader import load_tool

    tool = load_tool("convert_to_vrd_json")
    out = tmp_path / "out" / "val.json"
    assert tool.main(["--dataset", "convert_shapes_val", "--output", str(out)]) == 0
    back = load_vrd_json_file(str(out), str(tmp_path / "shp"))
    orig = DatasetCatalog.get("convert_shapes_val")
    assert [r["file_name"] for r in back] == [r["file_name"] for r in orig]
    for r1, r2 in zip(orig, back):
        assert r1["relations"].tolist() == r2["relations"].tolist()
        assert r1["relations_complete"].tolist() == r2["relations_complete"].tolist()
