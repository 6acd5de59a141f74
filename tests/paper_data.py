"""Test scaffolding: the 60 real VRD sample images with their annotations written as the three
paper datasets (VRD json, VG150 h5 + dicts + image_data, VG200 vg1_2_meta.h5) in a temporary
folder, registered under the builtin names (vrd_*, vg150_*, vg200_*), and the config overrides
that shrink only input size and widths."""

import json
import os
from pathlib import Path

import h5py
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from vrd_d2.data.datasets import load_vg150, load_vrd_json, register_all_vrd, register_vg150, register_vg200
from vrd_d2.data.datasets.vg import BOX_SCALE

BUILTIN = ("vrd_train", "vrd_test", "vg150_train", "vg150_val", "vg150_test", "vg200_train", "vg200_test")
NUM_TEST = 2  # test images (the first ones in file-name order); every sample image trains

# input size and widths only: the code path of the paper configs is unchanged
TINY = [
    "MODEL.DEVICE",
    "cpu",
    "SEED",
    "0",
    "DATALOADER.NUM_WORKERS",
    "0",
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "MODEL.VGG.WIDTH_DIVISOR",
    "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "32",
    "MODEL.VRD.FC_DIMS",
    "[32, 32]",
    "MODEL.VRD.SELECTION_FC_DIM",
    "32",
    "MODEL.VRD.SPATIAL_DIM",
    "16",
    "MODEL.VRD.SPATIAL_MASK_SIZE",
    "16",
    "MODEL.VRD.SPATIAL_CONV_DIMS",
    "[4, 8]",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "20",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
    "TEST.DETECTIONS_PER_IMAGE",
    "8",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.STEPS",
    "(1,)",
]


def write_paper_datasets(shared_vrd: Path, root: Path) -> dict:
    """Write vrd/, vg/ and vg200/ under ``root`` from the sample images; returns the VRD records
    of the training split (all 60 images)."""
    images = sorted(os.listdir(shared_vrd / "sample_images"))
    anns = json.loads((shared_vrd / "annotations_test.json").read_text())
    train = {k: anns[k] for k in images}
    vrd = root / "vrd"
    vrd.mkdir(parents=True)
    (vrd / "annotations_train.json").write_text(json.dumps(train))
    (vrd / "annotations_test.json").write_text(json.dumps({k: train[k] for k in images[:NUM_TEST]}))
    for f in ("objects.json", "predicates.json"):
        (vrd / f).write_text((shared_vrd / f).read_text())
    for split in ("train", "test"):
        (vrd / f"sg_{split}_images").symlink_to(shared_vrd / "sample_images")
    records = load_vrd_json(
        str(vrd / "annotations_train.json"),
        str(vrd / "sg_train_images"),
        str(vrd / "objects.json"),
        str(vrd / "predicates.json"),
    )
    _write_vg150(shared_vrd, root / "vg", records)
    _write_vg200(shared_vrd, root / "vg200", records)
    return records


def _write_vg150(shared_vrd, vg, records):
    """VG150's h5: every record as a training image, the first NUM_TEST again as test images;
    VRD classes kept (< 150), predicates modulo 50."""
    vg.mkdir()
    (vg / "VG-SGG-dicts-with-attri.json").write_text(
        (shared_vrd / "vg150" / "VG-SGG-dicts-with-attri.json").read_text()
    )
    (vg / "VG_100K").symlink_to(shared_vrd / "sample_images")
    entries = [(r, 0) for r in records] + [(r, 2) for r in records[:NUM_TEST]]
    boxes, labels, rels, preds, split, fb, lb, fr, lr, image_data = [], [], [], [], [], [], [], [], [], []
    for i, (r, flag) in enumerate(entries):
        scale = BOX_SCALE / max(r["width"], r["height"])
        first = len(boxes)
        for a in r["annotations"]:
            x1, y1, x2, y2 = a["bbox"]
            boxes.append([(x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale, (x2 - x1) * scale, (y2 - y1) * scale])
            labels.append(a["category_id"] + 1)
        fb.append(first), lb.append(len(boxes) - 1)
        fr.append(len(rels))
        for s, o, p in np.asarray(r["relations"]).tolist():
            rels.append([first + s, first + o])
            preds.append(p % 50 + 1)
        lr.append(len(rels) - 1)
        split.append(flag)
        image_data.append(
            {
                "image_id": 1000 + i,
                "width": r["width"],
                "height": r["height"],
                "url": f"https://example/{os.path.basename(r['file_name'])}",
            }
        )
    with h5py.File(vg / "VG-SGG-with-attri.h5", "w") as h5:
        h5["boxes_%d" % BOX_SCALE] = np.asarray(boxes, dtype=np.float64)
        h5["labels"] = np.asarray(labels, dtype=np.int64)[:, None]
        h5["relationships"] = np.asarray(rels, dtype=np.int64)
        h5["predicates"] = np.asarray(preds, dtype=np.int64)[:, None]
        for k, v in (
            ("split", split),
            ("img_to_first_box", fb),
            ("img_to_last_box", lb),
            ("img_to_first_rel", fr),
            ("img_to_last_rel", lr),
        ):
            h5[k] = np.asarray(v, dtype=np.int64)
    (vg / "image_data.json").write_text(json.dumps(image_data))


def _write_vg200(shared_vrd, vg200, records):
    """VTransE's vg1_2_meta.h5 (200 classes, 100 predicates, background at 0), one gt entry per
    relation; the first NUM_TEST images also as test images."""
    (vg200 / "images").mkdir(parents=True)
    with h5py.File(vg200 / "vg1_2_meta.h5", "w") as h5:
        for group, n in (("meta/cls/idx2name", 200), ("meta/pre/idx2name", 100)):
            h5[f"{group}/0"] = "__background__"
            for k in range(1, n + 1):
                h5[f"{group}/{k}"] = f"{group.split('/')[1]}{k}"
        for split, recs in (("train", records), ("test", records[:NUM_TEST])):
            for i, r in enumerate(recs):
                stem = str(i + 1 if split == "train" else 10000 + i)
                (vg200 / "images" / f"{stem}.jpg").symlink_to(r["file_name"])
                ann = r["annotations"]
                rel = np.asarray(r["relations"]).reshape(-1, 3)
                g = h5.create_group(f"gt/{split}/{stem}")
                g["rlp_labels"] = np.asarray(
                    [[ann[s]["category_id"] + 1, p + 1, ann[o]["category_id"] + 1] for s, o, p in rel.tolist()],
                    dtype=np.int64,
                )
                g["sub_boxes"] = np.asarray([ann[s]["bbox"] for s in rel[:, 0]], dtype=np.float64)
                g["obj_boxes"] = np.asarray([ann[o]["bbox"] for o in rel[:, 1]], dtype=np.float64)


def _remove_builtin():
    for n in BUILTIN:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def register_paper_datasets(root: Path):
    """Register the builtin names on ``root``; VG150 without a val split (60 images, not 5000+)."""
    _remove_builtin()
    register_all_vrd(str(root / "vrd"))
    register_vg150(str(root / "vg"))
    vg = root / "vg"
    for split in ("train", "test"):
        DatasetCatalog.remove(f"vg150_{split}")
        DatasetCatalog.register(
            f"vg150_{split}",
            lambda split=split: load_vg150(
                str(vg / "VG-SGG-with-attri.h5"),
                str(vg / "VG-SGG-dicts-with-attri.json"),
                str(vg / "image_data.json"),
                str(vg / "VG_100K"),
                split,
                num_val=0,
                name=f"vg150_{split}",
            ),
        )
    register_vg200(str(root / "vg200"))


def restore_builtin_datasets():
    from vrd_d2.data.datasets import _root

    _remove_builtin()
    register_all_vrd(os.path.join(_root, "vrd"))
    register_vg150(os.path.join(_root, "vg"))
    register_vg200(os.path.join(_root, "vg200"))
