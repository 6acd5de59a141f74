"""Checking a user's vrd json file against the published schema (``vrd_json.schema.json``, shipped
with the package) and the strict loader, reporting every bad entry (``convert_to_vrd_json.py --check``).

The schema is JSON Schema draft 2020-12 and any validator reads it. So that the check needs no extra
package, :func:`schema_errors` implements the few keywords the schema uses (``SCHEMA_KEYWORDS``);
a schema using another keyword is refused rather than silently half-checked. What a schema cannot
say (ids below the list lengths, flip pairs naming predicates, x2 > x1 and y2 > y1, a key twice in
one object) is checked with the loader's own per-entry code (:mod:`.datasets.custom`).
"""

import json
import math
import os
from numbers import Real
from typing import List, Optional, Tuple

from .datasets.common import LoadStats
from .datasets.custom import _flip_map, _objects, _relations, load_vrd_json_file

__all__ = ["SCHEMA_FILE", "SCHEMA_KEYWORDS", "load_schema", "schema_errors", "check_vrd_json"]

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vrd_json.schema.json")
# validation keywords schema_errors implements; the others it allows only annotate
SCHEMA_KEYWORDS = {"type", "required", "properties", "items", "minItems", "maxItems", "minimum", "minLength", "$ref"}
ANNOTATION_KEYWORDS = {"$schema", "$id", "title", "description", "$comment", "$defs"}


class _JsonObject(dict):
    """A parsed json object that remembers the keys it held more than once (json keeps the last)."""

    duplicates: Tuple[str, ...] = ()


def _object_keeping_duplicates(pairs):
    obj = _JsonObject(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        obj.duplicates = tuple(sorted({k for k in keys if keys.count(k) > 1}))
    return obj


def load_schema() -> dict:
    """The shipped schema; ValueError when it uses a keyword :func:`schema_errors` does not implement."""
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        schema = json.load(f)
    unknown = _keywords(schema) - SCHEMA_KEYWORDS - ANNOTATION_KEYWORDS
    if unknown:
        raise ValueError(f"{SCHEMA_FILE}: keywords {sorted(unknown)} are not implemented by schema_errors")
    return schema


def _keywords(schema) -> set:
    found = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            if key in ("properties", "$defs"):
                for sub in value.values():
                    found |= _keywords(sub)
            elif isinstance(value, dict):
                found |= _keywords(value)
    return found


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return _is_type(value, "number") and float(value).is_integer()
    if name == "number":  # a json number is finite; Python's json also reads NaN / Infinity
        return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    kinds = {"string": str, "array": list, "object": dict, "null": type(None), "boolean": bool}
    return isinstance(value, kinds[name])


def schema_errors(value, schema: dict, root: Optional[dict] = None, path: str = "$") -> List[Tuple[str, str]]:
    """Every place where ``value`` breaks ``schema``, as (JSON path like ``$.images[3].objects[0]``,
    problem); also keys repeated in one object (when parsed by :func:`check_vrd_json`)."""
    root = schema if root is None else root
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, root, path)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            return [(path, f"must be {' or '.join(types)}, found {json.dumps(value)[:60]}")]
    errors = []
    if isinstance(value, dict):
        for key in getattr(value, "duplicates", ()):
            errors.append((path, f"key {key!r} appears more than once (json keeps only the last)"))
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            errors.append((path, f"missing required key(s) {missing}"))
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, root, f"{path}.{key}")
    if isinstance(value, list):
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if len(value) < low or (high is not None and len(value) > high):
            want = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
            errors.append((path, f"must hold {want} items, found {len(value)}"))
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append((path, f"must have at least {schema['minLength']} characters"))
    if _is_type(value, "number") and value < schema.get("minimum", value):
        errors.append((path, f"must be >= {schema['minimum']}, found {value}"))
    return errors


def check_vrd_json(json_file: str, image_root: Optional[str] = None) -> List[str]:
    """
    Every problem of the vrd json file ``json_file``, each a line naming the file and the entry
    (JSON path, or image and entry as the loader names them); [] for a file that passes the schema,
    the loader's per-entry checks, the box orientation check and a full load (images without
    height / width are looked for under ``image_root``, default the file's folder).
    """
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_object_keeping_duplicates)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{json_file}: cannot read it as JSON: {e}"]
    problems = [f"{json_file}: {where}: {what}" for where, what in schema_errors(data, load_schema())]
    top_level = [p for p in problems if not p.startswith(f"{json_file}: $.images[")]
    if top_level:
        return problems  # the class lists or the image list itself are wrong: ids cannot be checked
    try:
        _flip_map(data, json_file)
    except ValueError as e:
        problems.append(str(e))
    n_obj, n_pred = len(data["thing_classes"]), len(data["predicate_classes"])
    for idx, img in enumerate(data["images"]):
        if any(p.startswith(f"{json_file}: $.images[{idx}]") for p in problems):
            continue  # already named by the schema
        problems += _image_problems(img, idx, json_file, n_obj, n_pred)
    if not problems:
        root = image_root if image_root is not None else os.path.dirname(os.path.abspath(json_file))
        try:
            load_vrd_json_file(json_file, root, name=os.path.basename(json_file), stats=LoadStats("check"))
        except (ValueError, OSError) as e:
            problems.append(f"{json_file}: the loader refuses it: {e}")
    return problems


def _image_problems(img, idx, json_file, n_obj, n_pred) -> List[str]:
    desc = f"{idx} ({img['file_name']})"
    try:
        objects = _objects(img, json_file, desc, n_obj)
        _relations(img, "relations", json_file, desc, len(objects), n_pred)
        if "relations_complete" in img:
            _relations(img, "relations_complete", json_file, desc, len(objects), n_pred)
    except ValueError as e:
        return [str(e)]
    return [
        f"{json_file}: image {desc}, entry objects[{j}]: bbox {box} must have x2 > x1 and y2 > y1 "
        f"([x1, y1, x2, y2]); the loader would drop it and its relations"
        for j, (_, box) in enumerate(objects)
        if not (box[2] > box[0] and box[3] > box[1])
    ]
