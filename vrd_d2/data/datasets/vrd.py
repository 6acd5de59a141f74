"""VRD (Lu et al., ECCV 2016) from its json release.

Expected layout under ``root`` (``$DETECTRON2_DATASETS/vrd``)::

    annotations_train.json  annotations_test.json  objects.json  predicates.json
    train_image_metadata.json  test_image_metadata.json      (optional: image sizes)
    sg_train_images/  sg_test_images/                        (images; not needed to register)

``annotations_<split>.json`` maps image file name to a list of
``{"predicate": p, "subject": {"category": c, "bbox": [ymin, ymax, xmin, xmax]}, "object": {...}}``
with 0-based ids into objects.json / predicates.json. Boxes are converted to XYXY_ABS
``[xmin, ymin, xmax, ymax]`` with the same numbers: Lu et al.'s gt.mat stores exactly these
values as ``[x1 y1 x2 y2]`` (checked on all 7638 test relations, see tests/test_datasets.py).

Image sizes come from the image header when the image exists, otherwise from
``<split>_image_metadata.json`` (disagreements are counted and logged). Images are not opened
at registration; the mapper reports a missing image by name.
"""

import logging
import os
from typing import List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .common import (
    LEFT_RIGHT_PAIRS,
    LoadStats,
    as_box,
    as_dict,
    as_image_size,
    as_list,
    as_names,
    build_flip_map,
    build_record,
    check_id,
    read_json,
    registration_guard,
)

logger = logging.getLogger(__name__)

__all__ = [
    "load_vrd_json",
    "load_vrd_split",
    "register_vrd_split",
    "register_all_vrd",
    "read_image_size",
    "VRD_IMAGE_ALIASES",
]

# Images whose name in annotations_*.json differs from the file in sg_dataset (a GIF named .jpg).
VRD_IMAGE_ALIASES = {"4392556686_44d71ff5a0_o.jpg": "4392556686_44d71ff5a0_o.gif"}


def read_image_size(path: str):
    """(height, width) from the image header only (PIL reads it lazily)."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found (needed for its size): {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # PIL raises several types for corrupt files
        raise OSError(f"cannot read the image header of {path}: {e}") from None
    return int(h), int(w)


def _load_class_list(path: str, what: str) -> List[str]:
    return as_names(read_json(path, what, "VRD"), f"{what} names", f"VRD: {path}")


def read_image_metadata(path: str) -> dict:
    """``{image stem: (height, width)}`` from ``<split>_image_metadata.json``
    (``{image: {"width", "height"}}``); ValueError naming the file and the image otherwise."""
    sizes = {}
    for k, v in as_dict(read_json(path, "image metadata", "VRD"), "the top level", f"VRD: {path}").items():
        where = f"VRD: {path}: image {k}"
        v = as_dict(v, "the entry", where)
        if "height" not in v or "width" not in v:
            raise ValueError(f"{where}: expected {{'width': .., 'height': ..}}, found keys {sorted(v)}")
        sizes[os.path.splitext(k)[0]] = as_image_size(v["height"], v["width"], where)
    return sizes


def load_vrd_json(
    json_file: str,
    image_root: str,
    objects_file: str,
    predicates_file: str,
    metadata_file: Optional[str] = None,
    name: str = "vrd",
    stats: Optional[LoadStats] = None,
) -> List[dict]:
    """Load one VRD split as relation records (see vrd_d2/data/datasets/common.py).

    Args:
        json_file: annotations_<split>.json.
        image_root: folder of the split's images (sg_train_images / sg_test_images).
        objects_file, predicates_file: the class-name lists.
        metadata_file: optional ``{image: {"width", "height"}}``, used for images not on disk.
        name: dataset name used in the logged summary.
        stats: optional LoadStats to fill (the counts of every rule applied).

    Returns:
        records in json order with ``file_name, image_id (int, json order), image_name (json key),
        height, width, annotations, relations``.
    """
    objects = _load_class_list(objects_file, "object")
    predicates = _load_class_list(predicates_file, "predicate")
    anns = read_json(json_file, "annotation", "VRD")
    if not isinstance(anns, dict):
        raise ValueError(f"VRD: {json_file} must map image names to relation lists, " f"found {type(anns).__name__}")
    sizes = {}
    if metadata_file is not None and os.path.isfile(metadata_file):
        sizes = read_image_metadata(metadata_file)
    stats = stats if stats is not None else LoadStats(name)
    records = []
    for image_id, (img_name, rels) in enumerate(anns.items()):
        as_list(rels, "the relations", f"VRD: {json_file}: image {img_name}")
        file_name = os.path.join(image_root, img_name)
        alias = VRD_IMAGE_ALIASES.get(img_name)
        if alias is not None and not os.path.exists(file_name):
            alt = os.path.join(image_root, alias)
            if os.path.exists(alt) or not os.path.isdir(image_root):
                file_name = alt
        stem = os.path.splitext(img_name)[0]
        # keyed by stem: the metadata lists the GIF as .gif. The image header, when the image is
        # there, wins over the metadata (9210906893_4102aa74c8_b.jpg's metadata is wrong).
        if os.path.isfile(file_name) or stem not in sizes:
            height, width = read_image_size(file_name)
            if stem in sizes and sizes[stem] != (height, width):
                stats.add(
                    "metadata_size_mismatch",
                    example=f"{img_name}: metadata " f"{sizes[stem]}, image header {(height, width)}",
                )
        else:
            height, width = sizes[stem]
        obj_list, rel_list = [], []
        obj_index = {}
        for j, r in enumerate(rels):
            where = f"VRD: {json_file}: image {img_name}, entry {j}"
            r = as_dict(r, "a relation", where)
            missing = [k for k in ("predicate", "subject", "object") if k not in r]
            if missing:
                raise ValueError(f"{where}: malformed relation, keys {missing} missing (found {sorted(r)})")
            pred = check_id(r["predicate"], len(predicates), "predicate", json_file, img_name, j)
            ends = []
            for role in ("subject", "object"):
                end = as_dict(r[role], role, where)
                if "category" not in end or "bbox" not in end:
                    raise ValueError(f"{where}: malformed {role} {end!r}, expected keys 'category' and 'bbox'")
                cat = check_id(end["category"], len(objects), f"{role} category", json_file, img_name, j)
                ymin, ymax, xmin, xmax = as_box(end["bbox"], f"{role} bbox [ymin, ymax, xmin, xmax]", where)
                key = (cat, xmin, ymin, xmax, ymax)
                if key not in obj_index:
                    obj_index[key] = len(obj_list)
                    obj_list.append((cat, [xmin, ymin, xmax, ymax]))
                ends.append(obj_index[key])
            rel_list.append((ends[0], ends[1], pred))
        rec = build_record(obj_list, rel_list, height, width, stats, f"{json_file}: {img_name}")
        rec.update(file_name=file_name, image_id=image_id, image_name=img_name, height=height, width=width)
        records.append(rec)
    stats.log()
    return records


def load_vrd_split(root: str, split: str, name: str, image_root: Optional[str] = None) -> List[dict]:
    """:func:`load_vrd_json` of ``<root>/annotations_<split>.json`` with the root's class lists and
    image metadata; images looked for in ``image_root`` (default ``<root>/sg_<split>_images``)."""
    return load_vrd_json(
        os.path.join(root, f"annotations_{split}.json"),
        image_root or os.path.join(root, f"sg_{split}_images"),
        os.path.join(root, "objects.json"),
        os.path.join(root, "predicates.json"),
        os.path.join(root, f"{split}_image_metadata.json"),
        name=name,
    )


def register_vrd_split(name: str, root: str, split: str, train_split: Optional[str] = None):
    """Register VRD ``split`` ("train" | "test") under ``name``; class lists are read lazily."""
    json_file = os.path.join(root, f"annotations_{split}.json")
    image_root = os.path.join(root, f"sg_{split}_images")
    DatasetCatalog.register(name, lambda: load_vrd_split(root, split, name))
    md = MetadataCatalog.get(name)
    md.set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="vrd",
        evaluation_protocol="lu",  # VRDEvaluator's "auto": Lu et al.'s protocol
        train_split=train_split or name,
        split=split,
        root=root,
    )
    if split == "test":
        md.set(
            gt_mat=os.path.join(root, "lu2016", "evaluation", "gt.mat"),
            image_path_mat=os.path.join(root, "lu2016", "data", "imagePath.mat"),
            det_mat=os.path.join(root, "lu2016", "data", "objectDetRCNN.mat"),
        )
    if os.path.isfile(os.path.join(root, "objects.json")) and os.path.isfile(os.path.join(root, "predicates.json")):
        with registration_guard(name):
            objects = _load_class_list(os.path.join(root, "objects.json"), "object")
            predicates = _load_class_list(os.path.join(root, "predicates.json"), "predicate")
            md.set(
                thing_classes=objects,
                predicate_classes=predicates,
                flip_predicate_map=build_flip_map(predicates, LEFT_RIGHT_PAIRS),
            )
    if md.get("thing_classes", None) is None:
        # Data not installed, or a malformed class list: loading raises, naming the file.
        md.set(flip_predicate_map=None)


def register_all_vrd(root: str, prefix: str = "vrd"):
    """Register ``<prefix>_train`` and ``<prefix>_test`` from ``root`` (the json folder)."""
    register_vrd_split(f"{prefix}_train", root, "train")
    register_vrd_split(f"{prefix}_test", root, "test", train_split=f"{prefix}_train")
