"""Users' own relationship data: the vrd_d2 json format (documented in docs/DATASETS.md).

::

    {
      "thing_classes": ["person", "horse", ...],          # object names, id = position
      "predicate_classes": ["ride", "left of", ...],     # predicate names, id = position
      "flip_predicate_pairs": [["left of", "right of"]], # optional; absent/null = flip refused,
                                                         # [] = every predicate flip-invariant
      "images": [
        {"file_name": "img/0001.jpg",                    # relative to image_root (or absolute)
         "image_id": 1,                                  # optional, default: position in the list
         "height": 480, "width": 640,                    # optional, default: read image header
         "objects": [{"bbox": [x1, y1, x2, y2], "category_id": 0}, ...],  # XYXY_ABS, 0-based id
         "relations": [[0, 1, 0], ...],                  # (subject obj, object obj, predicate)
         "relations_complete": [[0, 1, 0], ...]}         # optional superset (all valid relations)
      ]
    }

The format is published as a JSON Schema, ``vrd_d2/data/vrd_json.schema.json`` (shipped with the
package); ``tools/convert_to_vrd_json.py --check FILE`` names every bad entry of a file. The same
rules as every other loader apply (vrd_d2/data/datasets/common.py): clipping, degenerate
boxes, merged duplicates, counted and logged; ids out of range raise ValueError naming file,
image and entry. ``tools/convert_to_vrd_json.py`` writes this format from any registered dataset.
"""

import json
import os
from typing import List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.safe_write import atomic_open
from .common import (
    LoadStats,
    as_box,
    as_dict,
    as_image_size,
    as_int,
    as_list,
    as_names,
    build_flip_map,
    build_record,
    check_id,
    read_json,
)
from .vrd import read_image_size

__all__ = ["load_vrd_json_file", "register_vrd_json", "read_vrd_json_header", "dump_vrd_json"]


def _read(json_file: str):
    data = as_dict(read_json(json_file, "relationship json", "vrd json"), "the top level", json_file)
    for key in ("thing_classes", "predicate_classes", "images"):
        if key not in data:
            raise ValueError(f"{json_file}: top-level key {key!r} missing (found {sorted(data)})")
    for key in ("thing_classes", "predicate_classes"):
        as_names(data[key], key, json_file)
    as_list(data["images"], "images", json_file)
    _flip_map(data, json_file)  # checked on every read, not only at registration
    return data


def _flip_map(data, json_file):
    pairs = data.get("flip_predicate_pairs")
    if pairs is None:
        return None
    names = data["predicate_classes"]
    for j, pair in enumerate(as_list(pairs, "flip_predicate_pairs", json_file)):
        if not isinstance(pair, list) or len(pair) != 2 or any(not isinstance(p, str) or p not in names for p in pair):
            raise ValueError(
                f"{json_file}: flip_predicate_pairs entry {j} {pair!r} must be two " f"names from predicate_classes"
            )
    return build_flip_map(names, [tuple(p) for p in pairs])


def _objects(img, json_file, image_desc, n_obj):
    """[(category_id, [x1, y1, x2, y2])] of one image entry, every field checked."""
    objects = []
    for j, ob in enumerate(as_list(img.get("objects", []), "objects", f"{json_file}: image {image_desc}")):
        where = f"{json_file}: image {image_desc}, entry objects[{j}]"
        ob = as_dict(ob, "an object", where)
        if "category_id" not in ob or "bbox" not in ob:
            raise ValueError(f"{where}: malformed object, expected keys 'bbox' and 'category_id', found {sorted(ob)}")
        cat = check_id(ob["category_id"], n_obj, "category_id", json_file, image_desc, f"objects[{j}]")
        objects.append((cat, as_box(ob["bbox"], "bbox [x1, y1, x2, y2]", where)))
    return objects


def _relations(img, key, json_file, image_desc, n_objects, n_pred):
    """[(subject, object, predicate)] of ``img[key]``, every id checked."""
    out = []
    for j, r in enumerate(as_list(img.get(key, []), key, f"{json_file}: image {image_desc}")):
        entry = f"{key}[{j}]"
        if not isinstance(r, list) or len(r) != 3:
            raise ValueError(
                f"{json_file}: image {image_desc}, entry {entry}: expected [subject, object, predicate], found {r!r}"
            )
        s = check_id(r[0], n_objects, "subject object index", json_file, image_desc, entry)
        o = check_id(r[1], n_objects, "object object index", json_file, image_desc, entry)
        p = check_id(r[2], n_pred, "predicate", json_file, image_desc, entry)
        out.append((s, o, p))
    return out


def read_vrd_json_header(json_file: str) -> dict:
    """Metadata of a vrd json file: thing_classes, predicate_classes, flip_predicate_map."""
    data = _read(json_file)
    return dict(
        thing_classes=list(data["thing_classes"]),
        predicate_classes=list(data["predicate_classes"]),
        flip_predicate_map=_flip_map(data, json_file),
    )


def load_vrd_json_file(
    json_file: str, image_root: str, name: str = "vrd_json", stats: Optional[LoadStats] = None
) -> List[dict]:
    """Load a vrd json file into relation records (``relations`` int64 [M,3], deduplicated)."""
    data = _read(json_file)
    n_obj, n_pred = len(data["thing_classes"]), len(data["predicate_classes"])
    stats = stats if stats is not None else LoadStats(name)
    records = []
    for idx, img in enumerate(data["images"]):
        img = as_dict(img, "an image entry", f"{json_file}: image entry {idx}")
        fname = img.get("file_name")
        if not isinstance(fname, str) or not fname:
            raise ValueError(f"{json_file}: image entry {idx}: file_name must be a non-empty string, found {fname!r}")
        image_desc = f"{idx} ({fname})"
        objects = _objects(img, json_file, image_desc, n_obj)
        relations = _relations(img, "relations", json_file, image_desc, len(objects), n_pred)
        complete = None
        if "relations_complete" in img:
            complete = _relations(img, "relations_complete", json_file, image_desc, len(objects), n_pred)
        file_name = fname if os.path.isabs(fname) else os.path.join(image_root, fname)
        if "height" in img and "width" in img:
            height, width = as_image_size(img["height"], img["width"], f"{json_file}: image {image_desc}")
        else:
            height, width = read_image_size(file_name)
        rec = build_record(
            objects,
            relations,
            height,
            width,
            stats,
            f"{json_file}: {image_desc}",
            relations_complete=complete,
        )
        image_id = img.get("image_id", idx)
        if not isinstance(image_id, str):  # detectron2's evaluators key results by an int or str id
            image_id = as_int(image_id, "image_id (an integer or a string)", f"{json_file}: image {image_desc}")
        rec.update(file_name=file_name, image_id=image_id, height=height, width=width)
        records.append(rec)
    stats.log()
    return records


def register_vrd_json(name: str, json_file: str, image_root: str, train_split: Optional[str] = None, **metadata):
    """Register a vrd json file as dataset ``name`` (lazy: the file is read on first use).

    Metadata: ``thing_classes``, ``predicate_classes``, ``flip_predicate_map`` are read from the
    file now unless given in ``metadata``; ``evaluator_type="vrd"``; ``evaluation_protocol``
    (VRDEvaluator's "auto"; default "lu"); ``train_split`` (default
    ``name``: the split whose triplet counts give the prior and zero-shot set).
    """
    DatasetCatalog.register(name, lambda: load_vrd_json_file(json_file, image_root, name=name))
    md = dict(metadata)
    if "thing_classes" not in md:
        md.update(read_vrd_json_header(json_file))
    md.setdefault("flip_predicate_map", None)
    md.setdefault("evaluation_protocol", "lu")
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="vrd",
        train_split=train_split or name,
        **md,
    )


def dump_vrd_json(
    records: List[dict],
    thing_classes,
    predicate_classes,
    out_file: str,
    flip_predicate_map=None,
    image_root: Optional[str] = None,
):
    """Write records in the vrd json format (file names made relative to ``image_root``), through a
    temporary file beside ``out_file`` (replaced whole or not at all)."""
    from detectron2.structures import BoxMode

    pairs = None
    if flip_predicate_map is not None:
        pairs = sorted(
            {
                tuple(sorted((predicate_classes[a], predicate_classes[b])))
                for a, b in flip_predicate_map.items()
                if a != b
            }
        )
        pairs = [list(p) for p in pairs]
    images = []
    for r in records:
        objs = []
        for a in r["annotations"]:
            box = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            objs.append({"bbox": [float(v) for v in box], "category_id": int(a["category_id"])})
        fname = r["file_name"]
        if image_root is not None:
            fname = os.path.relpath(fname, image_root)
        image_id = r["image_id"]
        if isinstance(image_id, np.integer):
            image_id = int(image_id)
        entry = {
            "file_name": fname,
            "image_id": image_id,
            "height": int(r["height"]),
            "width": int(r["width"]),
            "objects": objs,
            "relations": [[int(v) for v in row] for row in r["relations"]],
        }
        if "relations_complete" in r:
            entry["relations_complete"] = [[int(v) for v in row] for row in r["relations_complete"]]
        images.append(entry)
    data = {
        "thing_classes": list(thing_classes),
        "predicate_classes": list(predicate_classes),
        "images": images,
    }
    if pairs is not None:
        data["flip_predicate_pairs"] = pairs
    with atomic_open(out_file) as f:
        json.dump(data, f)
