"""VRDDatasetMapper: relations stay aligned with boxes through augmentation, flips swap
predicates or are refused, clear errors for missing/unreadable images, training filter."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, SHARED_VRD  # noqa: E402
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from vrd_d2.data import VRDDatasetMapper, filter_images_without_relations, remap_relations

# predicates: 0 "on", 1 "left of", 2 "right of"
FLIP = {0: 0, 1: 2, 2: 1}


def _record(tmp_path, boxes, relations, h=48, w=64):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), np.full((h, w, 3), 127, np.uint8))
    return {
        "file_name": str(path),
        "image_id": 0,
        "height": h,
        "width": w,
        # one class per box, so a box can be recognised after augmentation
        "annotations": [
            {"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": k} for k, b in enumerate(boxes)
        ],
        "relations": np.asarray(relations, dtype=np.int64).reshape(-1, 3),
    }


def _mapper(augs, flip=None, is_train=True):
    return VRDDatasetMapper(is_train, augmentations=augs, image_format="BGR", flip_predicate_map=flip)


def test_remap_relations_by_hand():
    rel = np.array([[0, 1, 5], [1, 2, 6], [2, 0, 7], [3, 2, 8]])
    out, dropped = remap_relations(rel, np.array([True, False, True, True]))
    assert out.tolist() == [[1, 0, 7], [2, 1, 8]] and dropped == 2


def test_crop_removes_boxes_and_their_relations(tmp_path):
    boxes = [[2, 2, 10, 10], [20, 5, 30, 15], [50, 30, 60, 40]]
    rec = _record(tmp_path, boxes, [[0, 1, 0], [1, 2, 1], [2, 0, 2], [1, 0, 1]])
    # keep x in [0, 40): box 2 disappears
    out = _mapper([T.CropTransform(0, 0, 40, 48)])(rec)
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 1]
    assert out["relations"].dtype == torch.long
    assert out["relations"].tolist() == [[0, 1, 0], [1, 0, 1]]
    assert out["num_relations_dropped"] == 2
    assert out["image"].shape == (3, 48, 40)


def test_random_crops_keep_relations_aligned(tmp_path):
    rng = np.random.default_rng(0)
    boxes = [[x, y, x + 8, y + 8] for x, y in rng.integers(0, 56, (6, 2)).tolist()]
    boxes = [[b[0], min(b[1], 38), b[2], min(b[3], 46)] for b in boxes]
    rels = [[i, j, (i + 2 * j) % 3] for i in range(6) for j in range(6) if i != j]
    rec = _record(tmp_path, boxes, rels)
    mapper = _mapper([T.RandomCrop("absolute_range", (16, 40)), T.RandomFlip(0.5)], flip=FLIP)
    torch.manual_seed(0)
    np.random.seed(0)
    flipped_seen = 0
    total_dropped = 0
    for _ in range(40):
        out = mapper(rec)
        cls = out["instances"].gt_classes.tolist()  # class k == original box k
        got = sorted(map(tuple, out["relations"].tolist()))
        expected = [(cls.index(s), cls.index(o), p) for s, o, p in rels if s in cls and o in cls]
        assert len(got) == len(expected)
        assert out["num_relations_dropped"] == len(rels) - len(expected)
        total_dropped += out["num_relations_dropped"]
        # predicates: all unchanged (no flip) or all swapped through FLIP (flip)
        exp_plain = sorted(expected)
        exp_flip = sorted((s, o, FLIP[p]) for s, o, p in expected)
        assert got in (exp_plain, exp_flip)
        if exp_plain != exp_flip and got == exp_flip:
            flipped_seen += 1
    assert flipped_seen > 0 and total_dropped > 0
    assert mapper.num_relations_dropped == total_dropped


def test_hflip_swaps_predicates_and_mirrors_boxes(tmp_path):
    rec = _record(tmp_path, [[2, 2, 10, 10], [20, 5, 30, 15]], [[0, 1, 1], [1, 0, 2], [0, 1, 0]])
    out = _mapper([T.HFlipTransform(64)], flip=FLIP)(rec)
    assert out["relations"].tolist() == [[0, 1, 2], [1, 0, 1], [0, 1, 0]]
    assert out["instances"].gt_boxes.tensor.tolist() == [[54, 2, 62, 10], [34, 5, 44, 15]]
    # box 0 is now to the right of box 1, so "0 right of 1" is the correct relation
    b = out["instances"].gt_boxes.tensor
    assert b[0, 0] >= b[1, 2]


def test_flip_refused_without_map_and_vertical_refused(tmp_path):
    with pytest.raises(ValueError, match="no flip_predicate_map"):
        _mapper([T.RandomFlip(horizontal=True)], flip=None)
    with pytest.raises(ValueError, match="vertical flip"):
        _mapper([T.RandomFlip(horizontal=False, vertical=True)], flip=FLIP)
    # no flip: fine without a map, predicates untouched
    rec = _record(tmp_path, [[2, 2, 10, 10], [20, 5, 30, 15]], [[0, 1, 1]])
    assert _mapper([T.ResizeTransform(48, 64, 96, 128)])(rec)["relations"].tolist() == [[0, 1, 1]]


def test_resize_scales_boxes_keeps_relations_and_gt_at_inference(tmp_path):
    rec = _record(tmp_path, [[2, 2, 10, 10], [20, 5, 30, 15]], [[0, 1, 1], [1, 0, 2]])
    out = _mapper([T.ResizeTransform(48, 64, 96, 128)], is_train=False)(rec)
    assert out["instances"].gt_boxes.tensor.tolist() == [[4, 4, 20, 20], [40, 10, 60, 30]]
    assert out["relations"].tolist() == [[0, 1, 1], [1, 0, 2]]
    assert (out["height"], out["width"]) == (48, 64) and out["image"].shape == (3, 96, 128)
    assert "annotations" not in out


def test_missing_and_unreadable_images_are_named(tmp_path):
    rec = _record(tmp_path, [[2, 2, 10, 10]], [])
    rec["file_name"] = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        _mapper([])(rec)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00garbage")
    rec["file_name"] = str(bad)
    with pytest.raises(OSError, match="cannot read image .*bad.jpg"):
        _mapper([])(rec)


def test_filter_images_without_relations(caplog):
    ann = {"bbox": [0, 0, 1, 1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
    dicts = [
        {"annotations": [ann, ann], "relations": np.array([[0, 1, 0]])},
        {"annotations": [ann, ann], "relations": np.zeros((0, 3), np.int64)},
        {"annotations": [ann], "relations": np.array([[0, 0, 0]])},  # self relation, one box
        {"annotations": [], "relations": np.zeros((0, 3), np.int64)},
    ]
    import logging

    with caplog.at_level(logging.INFO):
        kept = filter_images_without_relations(dicts)
    assert kept == [dicts[0]]
    assert "Removed 2 images without relations and 1 images" in caplog.text


def test_from_config_reads_input_keys_and_metadata():
    import vrd_d2.data  # noqa: F401  registers shapes_* (lazily: nothing is generated here)

    MetadataCatalog.get("mapper_no_flip_ds").set(thing_classes=["a"], predicate_classes=["p"], flip_predicate_map=None)
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (100,)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.DATASETS.TRAIN = ("shapes_train",)
    cfg.DATASETS.TEST = ("mapper_no_flip_ds",)
    m = VRDDatasetMapper(cfg, is_train=True)  # default RANDOM_FLIP="horizontal": shapes has a map
    names = [type(a).__name__ for a in m.augmentations.augs]
    assert names == ["ResizeShortestEdge", "RandomFlip"]
    left, right = (MetadataCatalog.get("shapes_train").predicate_classes.index(n) for n in ("left of", "right of"))
    assert m.flip_lut[left] == right and m.flip_lut[right] == left
    # inference on a dataset without a flip map: no flip at test time, so it is accepted
    VRDDatasetMapper(cfg, is_train=False)
    cfg.DATASETS.TRAIN = ("mapper_no_flip_ds",)
    with pytest.raises(ValueError, match="mapper_no_flip_ds has no flip_predicate_map"):
        VRDDatasetMapper(cfg, is_train=True)
    cfg.INPUT.RANDOM_FLIP = "none"
    assert VRDDatasetMapper(cfg, is_train=True).flip_lut is None


def test_real_vrd_sample_image(tmp_path):
    samples = SHARED_VRD / "sample_images"
    if not samples.is_dir():
        pytest.skip(f"VRD sample images not found in {samples}")
    from vrd_d2.data.datasets.vrd import load_vrd_json

    recs = load_vrd_json(
        str(SHARED_VRD / "annotations_test.json"),
        str(samples),
        str(SHARED_VRD / "objects.json"),
        str(SHARED_VRD / "predicates.json"),
        str(SHARED_VRD / "test_image_metadata.json"),
    )
    rec = next(r for r in recs if os.path.isfile(r["file_name"]) and len(r["relations"]) > 3)
    out = _mapper([T.ResizeShortestEdge(300, 500)], is_train=False)(rec)
    scale = out["image"].shape[1] / rec["height"]
    assert out["relations"].tolist() == rec["relations"].tolist()
    exp = torch.tensor([a["bbox"] for a in rec["annotations"]], dtype=torch.float32) * scale
    assert torch.allclose(out["instances"].gt_boxes.tensor, exp, rtol=1e-2, atol=1.0)
    # the same record pointing at the official folder, where the image is absent: a clear error
    rec2 = dict(rec, file_name=str(SHARED_VRD / "sg_test_images" / os.path.basename(rec["file_name"])))
    with pytest.raises(FileNotFoundError, match="sg_test_images"):
        _mapper([], is_train=False)(rec2)


def test_image_free_mapping_for_the_geometry_only_head(tmp_path):
    """load_image=False: no pixels read (the file need not exist), no augmentation, boxes in
    original coordinates, relations aligned, detector scores carried as gt_scores."""
    boxes = [[2, 2, 10, 10], [20, 5, 30, 15], [50, 30, 60, 40]]
    rec = _record(tmp_path, boxes, [[0, 1, 0], [2, 1, 1]])
    os.remove(rec["file_name"])
    for k, a in enumerate(rec["annotations"]):
        a["score"] = 0.5 + 0.1 * k
    m = VRDDatasetMapper(True, augmentations=[T.ResizeShortestEdge(96, 200)], image_format="BGR", load_image=False)
    out = m(rec)
    assert "image" not in out
    assert out["instances"].image_size == (48, 64)
    assert out["instances"].gt_boxes.tensor.tolist() == [[float(v) for v in b] for b in boxes]
    assert out["relations"].tolist() == [[0, 1, 0], [2, 1, 1]]
    assert torch.allclose(out["instances"].gt_scores, torch.tensor([0.5, 0.6, 0.7]))


def test_needs_image_follows_stage_and_mode():
    from vrd_d2 import add_vrd_config
    from vrd_d2.data.mapper import needs_image

    cfg = add_vrd_config(get_cfg())
    assert needs_image(cfg, True) and needs_image(cfg, False)
    cfg.MODEL.VRD.GEOMETRY_ONLY = True
    cfg.MODEL.VRD.TRAIN_STAGE = "triplet"
    cfg.MODEL.VRD.MODE = "predcls"
    assert not needs_image(cfg, True) and not needs_image(cfg, False)
    cfg.MODEL.VRD.MODE = "sgdet"  # boxes come from the detector: pixels needed
    assert needs_image(cfg, False)
    cfg.MODEL.VRD.TRAIN_STAGE = "detector"
    assert needs_image(cfg, True)
