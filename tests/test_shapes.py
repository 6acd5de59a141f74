"""The embedded shapes dataset: determinism, lazy atomic generation, and the paper's phenomena
(multimodal pairs, incomplete annotation biased to near pairs, skewed triplets), checked against
an independent re-derivation of the predicates from boxes and classes."""

import collections
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vrd_d2.data import get_triplet_counts
from vrd_d2_studies.shapes_demo import data as shapes

SMALL = {"train": 12, "val": 3, "test": 3}


def _hashes(root: Path):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generation_is_byte_for_byte_deterministic(tmp_path):
    a = shapes.generate_shapes(str(tmp_path / "a"), seed=5, split_sizes=SMALL)
    b = shapes.generate_shapes(str(tmp_path / "b"), seed=5, split_sizes=SMALL)
    ha, hb = _hashes(Path(a)), _hashes(Path(b))
    assert len(ha) == sum(SMALL.values()) + 3  # PNGs + one json per split
    assert ha == hb
    c = shapes.generate_shapes(str(tmp_path / "c"), seed=6, split_sizes=SMALL)
    assert _hashes(Path(c))["train/000000.png"] != ha["train/000000.png"]
    # no temporary folder is left beside the outputs
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(shapes, "_make_image", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        shapes.generate_shapes(str(tmp_path / "x"), seed=0, split_sizes=SMALL)
    assert os.listdir(tmp_path) == []


def test_registration_is_lazy_and_uses_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VRD_D2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shapes, "SPLIT_SIZES", SMALL)
    root = shapes.shapes_root(seed=9)
    assert root == str(tmp_path / "cache" / f"shapes-{shapes.SHAPES_VERSION}-9")
    shapes.register_shapes(seed=9, prefix="lazy_shapes")
    assert not os.path.exists(root)
    md = MetadataCatalog.get("lazy_shapes_val")
    assert md.thing_classes == shapes.SHAPE_CLASSES and md.train_split == "lazy_shapes_train"
    val = DatasetCatalog.get("lazy_shapes_val")
    assert os.path.isdir(root) and len(val) == SMALL["val"]
    assert all(os.path.isfile(d["file_name"]) for d in val)


def _reference_predicates(bs, cs, bo, co):
    """Independent re-derivation of the predicate definitions documented in shapes.py."""
    names = shapes.SHAPE_PREDICATES
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    inside_so = bs[0] >= bo[0] and bs[1] >= bo[1] and bs[2] <= bo[2] and bs[3] <= bo[3]
    inside_os = bo[0] >= bs[0] and bo[1] >= bs[1] and bo[2] <= bs[2] and bo[3] <= bs[3]
    dx = max(0, bo[0] - bs[2], bs[0] - bo[2])
    dy = max(0, bo[1] - bs[3], bs[1] - bo[3])
    colour = lambda c: c // 3  # noqa: E731  classes are [red x 3 shapes, blue x 3 shapes]
    truth = {
        "left of": bs[2] <= bo[0],
        "right of": bs[0] >= bo[2],
        "above": bs[3] <= bo[1],
        "below": bs[1] >= bo[3],
        "near": (dx * dx + dy * dy) <= 144 and not (inside_so or inside_os),
        "larger than": area(bs) >= 2 * area(bo),
        "smaller than": 2 * area(bs) <= area(bo),
        "same colour as": colour(cs) == colour(co),
        "different colour from": colour(cs) != colour(co),
        "inside": inside_so,
    }
    return {names.index(k) for k, v in truth.items() if v}


@pytest.fixture(scope="module")
def shapes_train():
    return DatasetCatalog.get("shapes_train")  # the default dataset (generated once, cached)


def test_default_sizes_and_metadata(shapes_train):
    md = MetadataCatalog.get("shapes_train")
    assert len(md.thing_classes) == 6 and len(md.predicate_classes) == 10
    left, right = md.predicate_classes.index("left of"), md.predicate_classes.index("right of")
    assert md.flip_predicate_map[left] == right and md.flip_predicate_map[right] == left
    assert len(shapes_train) == 1200
    assert len(DatasetCatalog.get("shapes_val")) == 100
    assert len(DatasetCatalog.get("shapes_test")) == 200
    n_obj = [len(d["annotations"]) for d in shapes_train]
    assert min(n_obj) == 3 and max(n_obj) == 6
    assert all((d["height"], d["width"]) == (128, 128) for d in shapes_train)
    import cv2

    img = cv2.imread(shapes_train[0]["file_name"])
    assert img.shape == (128, 128, 3)


def test_complete_relations_match_definitions_and_annotated_is_strict_subset(shapes_train):
    n_ann = n_complete = 0
    for d in shapes_train:
        boxes = [a["bbox"] for a in d["annotations"]]
        cats = [a["category_id"] for a in d["annotations"]]
        expected = {
            (i, j, p)
            for i in range(len(boxes))
            for j in range(len(boxes))
            if i != j
            for p in _reference_predicates(boxes[i], cats[i], boxes[j], cats[j])
        }
        complete = {tuple(r) for r in d["relations_complete"].tolist()}
        annotated = {tuple(r) for r in d["relations"].tolist()}
        assert complete == expected
        assert annotated <= complete and len(annotated) >= 1
        n_ann, n_complete = n_ann + len(annotated), n_complete + len(complete)
    # incomplete: most valid relations are not annotated
    assert n_ann < 0.5 * n_complete, (n_ann, n_complete)


def test_multimodal_pairs(shapes_train):
    valid_per_pair = collections.Counter()
    labelled_per_pair = collections.Counter()
    for k, d in enumerate(shapes_train):
        for s, o, _ in d["relations_complete"].tolist():
            valid_per_pair[(k, s, o)] += 1
        for s, o, _ in d["relations"].tolist():
            labelled_per_pair[(k, s, o)] += 1
    multi_valid = sum(v >= 2 for v in valid_per_pair.values())
    multi_labelled = sum(v >= 2 for v in labelled_per_pair.values())
    assert multi_valid > 0.8 * len(valid_per_pair)  # almost every pair has >= 2 predicates
    assert multi_labelled > 0.2 * len(labelled_per_pair)  # annotators often write several


def test_nearer_pairs_are_annotated_more_often(shapes_train):
    near_pairs = near_lab = far_pairs = far_lab = 0
    for d in shapes_train:
        boxes = np.array([a["bbox"] for a in d["annotations"]], dtype=float)
        labelled = {(s, o) for s, o, _ in d["relations"].tolist()}
        for i in range(len(boxes)):
            for j in range(len(boxes)):
                if i == j:
                    continue
                dx = max(0, boxes[j, 0] - boxes[i, 2], boxes[i, 0] - boxes[j, 2])
                dy = max(0, boxes[j, 1] - boxes[i, 3], boxes[i, 1] - boxes[j, 3])
                gap = np.hypot(dx, dy)
                if gap <= 12:
                    near_pairs, near_lab = near_pairs + 1, near_lab + ((i, j) in labelled)
                elif gap >= 40:
                    far_pairs, far_lab = far_pairs + 1, far_lab + ((i, j) in labelled)
    assert near_pairs > 100 and far_pairs > 100
    assert near_lab / near_pairs > 2 * far_lab / far_pairs


def test_triplet_frequencies_are_skewed(shapes_train):
    counts = get_triplet_counts("shapes_test")  # through train_split -> shapes_train
    assert counts.shape == (6, 10, 6)
    assert counts.sum() == sum(len(d["relations"]) for d in shapes_train)
    nz = np.sort(counts[counts > 0])[::-1]
    top = nz[: max(1, len(nz) // 10)].sum()
    assert top > 0.25 * nz.sum(), (top, nz.sum())  # top 10% of triplet types: > 25% (uniform: 10%)
    assert nz[0] >= 20 * nz[-1]
    assert (nz <= 4).sum() >= 10  # a long tail of rare triplets (seen at most 4 times in 1200 images)
    assert nz[-(len(nz) // 10) :].sum() < 0.01 * nz.sum()  # the rarest 10% of triplet types: < 1%
    per_pred = counts.sum(axis=(0, 2))
    assert per_pred.max() >= 5 * per_pred.min()


@pytest.fixture(scope="module")
def shapes_train_json(shapes_train):
    import json

    with open(MetadataCatalog.get("shapes_train").json_file) as f:
        return json.load(f)["images"]


def test_shadowed_objects_hide_their_colour(shapes_train_json):
    """~SHADOW_PROB of the objects are drawn dark grey; the others in their class colour."""
    import cv2

    objs = [o for d in shapes_train_json for o in d["objects"]]
    frac = sum(o["shadowed"] for o in objs) / len(objs)
    assert abs(frac - shapes.SHADOW_PROB) < 0.03, frac
    checked = collections.Counter()
    for d in shapes_train_json[:100]:
        img = cv2.imread(
            os.path.join(os.path.dirname(MetadataCatalog.get("shapes_train").json_file), d["file_name"])
        ).astype(int)
        boxes = [o["bbox"] for o in d["objects"]]
        for k, o in enumerate(d["objects"]):
            x1, y1, x2, y2 = o["bbox"]
            cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
            # objects drawn later (inside a square) may cover this one's centre
            if any(b[0] <= cx < b[2] and b[1] <= cy < b[3] for b in boxes[k + 1 :]):
                continue
            b, g, r = img[cy, cx]
            if o["shadowed"]:
                # dark grey with a small random tint (jitter // 3 per channel), whatever the colour
                assert all(abs(v - shapes.SHADOW_BGR) <= 9 for v in (b, g, r)), (d["file_name"], k)
                checked["shadowed"] += 1
            elif o["category_id"] // 3 == 0:  # red
                assert r > 150 and r > b + 80, (d["file_name"], k)
                checked["red"] += 1
            else:
                assert b > 150 and b > r + 80, (d["file_name"], k)
                checked["blue"] += 1
    assert min(checked.values()) >= 20, checked


def test_colour_predicate_goes_with_the_hidden_colour(shapes_train_json):
    """For a shadowed subject, "same colour as" is labelled only when the hidden colour matches:
    the (subject class, predicate) table is not a product of marginals (needs CP rank > 1)."""
    same = shapes.SHAPE_PREDICATES.index("same colour as")
    table = np.zeros((2, 2))  # [hidden colour matches the object's, "same colour as" labelled]
    for d in shapes_train_json:
        labelled = {(s, o) for s, o, p in d["relations"] if p == same}
        pairs = {(s, o) for s, o, _ in d["relations"]}
        for s, o in pairs:
            if d["objects"][s]["shadowed"]:
                match = d["objects"][s]["category_id"] // 3 == d["objects"][o]["category_id"] // 3
                table[int(match), int((s, o) in labelled)] += 1
    assert table[0, 1] == 0 and table[1, 1] >= 30, table
    # independence would put table.sum(1)[0] * table.sum(0)[1] / table.sum() in cell [0, 1]
    assert table.sum(1)[0] * table.sum(0)[1] / table.sum() >= 10, table
