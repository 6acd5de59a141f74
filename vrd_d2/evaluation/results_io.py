"""Results files and ground truth for the relation evaluator.

* our JSON results format (docs/EVALUATION.md): :func:`relations_to_json_images`,
  :func:`write_results_json` (the strict reader is :mod:`.results_json`);
* Lu et al.'s ``.mat`` results (``rlp_labels_ours`` ...): :func:`load_lu_results_mat`;
* Lu et al.'s ``gt.mat`` / ``zeroShot.mat`` / ``imagePath.mat``: :func:`load_lu_ground_truth`
  (on top of the data module's .mat cell readers, ``vrd_d2.data.datasets.lu2016``: one reader
  of gt.mat serves the dataset view and the evaluator);
* dataset records -> ground-truth records: :func:`dataset_ground_truth`;
* :func:`validate_prediction`: clear errors naming the image and the row.

Record layout: see :mod:`vrd_d2.evaluation.recall`.
"""

import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..data.datasets.lu2016 import load_image_paths, loadmat_checked, mat_cells, mat_rows, read_lu_gt_cells
from .matching import compute_pair_rank
from .results_json import RESULTS_FORMAT

__all__ = [
    "RESULTS_FORMAT",
    "relations_to_record",
    "relations_to_json_images",
    "write_results_json",
    "load_lu_results_mat",
    "load_lu_ground_truth",
    "dataset_ground_truth",
    "validate_prediction",
    "image_key",
]


def image_key(name: str) -> str:
    """Image name without folder and extension: matches our records to Lu's imagePath.mat
    (whose ``4392556686_44d71ff5a0_o.jpg`` is a .gif on disk)."""
    return os.path.splitext(os.path.basename(str(name)))[0]


def relations_to_record(relations) -> dict:
    """Model output ``outputs[i]["relations"]`` (Instances, DESIGN.md "Model output") -> record."""
    fields = relations.get_fields()
    need = ("subject_boxes", "object_boxes", "subject_classes", "predicate_classes", "object_classes", "scores")
    missing = [f for f in need if f not in fields]
    if missing:
        raise KeyError(f"relations Instances lacks field(s) {missing} (has {sorted(fields)})")

    def arr(x):
        x = getattr(x, "tensor", x)
        return x.detach().cpu().numpy()

    labels = (
        np.stack(
            [arr(fields["subject_classes"]), arr(fields["predicate_classes"]), arr(fields["object_classes"])],
            axis=1,
        )
        .astype(np.int64)
        .reshape(-1, 3)
    )
    rec = {
        "labels": labels,
        "sub_boxes": arr(fields["subject_boxes"]).astype(np.float64).reshape(-1, 4),
        "obj_boxes": arr(fields["object_boxes"]).astype(np.float64).reshape(-1, 4),
        "scores": arr(fields["scores"]).astype(np.float64).reshape(-1),
    }
    if "pair_rank" in fields:
        rec["pair_rank"] = arr(fields["pair_rank"]).astype(np.int64).reshape(-1)
    else:
        rec["pair_rank"] = compute_pair_rank(rec["sub_boxes"], rec["obj_boxes"], rec["scores"])
    return rec


def validate_prediction(
    rec: dict, where: str, num_objects: Optional[int] = None, num_predicates: Optional[int] = None
) -> None:
    """Raise ValueError naming ``where`` (the image) and the first bad row.

    Checks: consistent lengths, finite scores (no NaN), finite boxes with x2 >= x1 and y2 >= y1,
    labels within [0, num_objects) / [0, num_predicates) when those are given, pair_rank >= 0.
    """
    labels, sub, obj, scores = rec["labels"], rec["sub_boxes"], rec["obj_boxes"], rec["scores"]
    n = len(scores)
    lens = {"labels": len(labels), "sub_boxes": len(sub), "obj_boxes": len(obj), "scores": n}
    if rec.get("pair_rank") is not None:
        lens["pair_rank"] = len(rec["pair_rank"])
    if len(set(lens.values())) > 1:
        raise ValueError(f"{where}: inconsistent numbers of rows {lens}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ValueError(f"{where}, row {bad[0]}: score is {scores[bad[0]]}, expected a finite number")
    for name, boxes in (("subject_box", sub), ("object_box", obj)):
        bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
        if len(bad):
            raise ValueError(f"{where}, row {bad[0]}: {name} {boxes[bad[0]].tolist()} is not finite")
        bad = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        if len(bad):
            raise ValueError(
                f"{where}, row {bad[0]}: {name} {boxes[bad[0]].tolist()} has x2 < x1 or y2 < y1 "
                f"(expected [x1, y1, x2, y2] XYXY_ABS)"
            )
    checks = (("subject", 0, num_objects), ("predicate", 1, num_predicates), ("object", 2, num_objects))
    for name, col, size in checks:
        lab = labels[:, col]
        hi = size if size is not None else np.iinfo(np.int64).max
        bad = np.flatnonzero((lab < 0) | (lab >= hi))
        if len(bad):
            raise ValueError(
                f"{where}, row {bad[0]}: {name} id {lab[bad[0]]} outside the class list "
                f"(expected 0 <= id < {size}, 0-based)"
            )
    pr = rec.get("pair_rank")
    if pr is not None and len(pr) and pr.min() < 0:
        bad = int(np.flatnonzero(pr < 0)[0])
        raise ValueError(f"{where}, row {bad}: pair_rank {pr[bad]} < 0")


# ---------------------------------------------------------------------------------------------
# our JSON format
def _record_to_json_rows(rec: dict) -> List[dict]:
    rows = []
    for j in range(len(rec["scores"])):
        s, p, o = (int(x) for x in rec["labels"][j])
        rows.append(
            {
                "subject_box": [float(x) for x in rec["sub_boxes"][j]],
                "object_box": [float(x) for x in rec["obj_boxes"][j]],
                "subject": s,
                "predicate": p,
                "object": o,
                "score": float(rec["scores"][j]),
                "pair_rank": int(rec["pair_rank"][j]),
            }
        )
    return rows


def relations_to_json_images(inputs: Sequence[dict], outputs: Sequence[dict]) -> List[dict]:
    """Model inputs/outputs (one batch) -> image entries of our JSON results format."""
    images = []
    for inp, out in zip(inputs, outputs):
        rec = out if "scores" in out and "labels" in out else relations_to_record(out["relations"])
        images.append(
            {
                "image_id": inp["image_id"],
                "file_name": inp.get("file_name", ""),
                "relations": _record_to_json_rows(rec),
            }
        )
    return images


def write_results_json(path: str, images: Sequence[dict], dataset_name: Optional[str] = None):
    """Write our JSON results file: ``{"format", "dataset", "images": [...]}``.

    ``images`` are entries from :func:`relations_to_json_images`, or dicts with ``image_id``,
    ``file_name`` and a prediction record under ``"record"``.
    """
    entries = []
    for im in images:
        if "record" in im:
            im = {
                "image_id": im["image_id"],
                "file_name": im.get("file_name", ""),
                "relations": _record_to_json_rows(im["record"]),
            }
        entries.append(im)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"format": RESULTS_FORMAT, "dataset": dataset_name, "images": entries}, f)


# ---------------------------------------------------------------------------------------------
# Lu et al.'s MATLAB files
def load_lu_ground_truth(
    gt_mat: str, image_path_mat: Optional[str] = None, zeroshot_mat: Optional[str] = None
) -> Tuple[List[str], List[dict]]:
    """Read gt.mat (and zeroShot.mat) into ground-truth records.

    Labels become 0-based; boxes stay [x1 y1 x2 y2]; duplicates are kept. Values are converted to
    float64 / int64 (MATLAB would compute in the stored uint8 / uint16 classes; see
    docs/EVALUATION.md).

    Returns:
        (image names from imagePath.mat, or ``"image_<i>"`` when not given; records in that order)
    """
    names = load_image_paths(image_path_mat) if image_path_mat else None
    records = read_lu_gt_cells(gt_mat, names)  # checks one cell per name
    n = len(records)
    names = names if names is not None else [f"image_{i}" for i in range(n)]
    if zeroshot_mat:
        zs_cells = mat_cells(loadmat_checked(zeroshot_mat, ["zeroShot"]), "zeroShot", zeroshot_mat, n)
        for i, rec in enumerate(records):
            zs = np.asarray(zs_cells[i]).reshape(-1).astype(bool)
            if len(zs) != len(rec["labels"]):
                raise ValueError(
                    f"{zeroshot_mat}: image {i} ({names[i]}): {len(zs)} flags for {len(rec['labels'])} relations"
                )
            rec["zeroshot"] = zs
    return names, records


def load_lu_results_mat(
    path: str, num_images: Optional[int] = None, names: Optional[Sequence[str]] = None
) -> List[dict]:
    """Read Lu-style results: cells ``rlp_labels_ours`` [n,3] (1-based), ``rlp_confs_ours`` [n],
    ``sub_bboxes_ours`` / ``obj_bboxes_ours`` [n,4] [x1 y1 x2 y2], one cell per test image in
    imagePath.mat order (``names``, when given, name the images in errors). Returns prediction
    records (0-based labels, pair_rank from the boxes)."""
    keys = ("rlp_labels_ours", "rlp_confs_ours", "sub_bboxes_ours", "obj_bboxes_ours")
    mat = loadmat_checked(path, keys)
    n = num_images if num_images is not None else len(mat[keys[0]].reshape(-1))
    cells = {k: mat_cells(mat, k, path, n) for k in keys}
    out = []
    for i in range(n):
        where = f"{path}: image {i}" + (f" ({names[i]})" if names is not None and i < len(names) else "")
        rec = {
            "labels": mat_rows(cells["rlp_labels_ours"][i], 3, np.float64, f"{where}: rlp_labels_ours"),
            "scores": mat_rows(cells["rlp_confs_ours"][i], 1, np.float64, f"{where}: rlp_confs_ours").reshape(-1),
            "sub_boxes": mat_rows(cells["sub_bboxes_ours"][i], 4, np.float64, f"{where}: sub_bboxes_ours"),
            "obj_boxes": mat_rows(cells["obj_bboxes_ours"][i], 4, np.float64, f"{where}: obj_bboxes_ours"),
        }
        bad = np.flatnonzero((rec["labels"] != np.round(rec["labels"])).any(axis=1))
        if len(bad):
            raise ValueError(f"{where}, row {bad[0]}: labels {rec['labels'][bad[0]].tolist()} not integers")
        rec["labels"] = rec["labels"].astype(np.int64) - 1
        lens = {k: len(v) for k, v in rec.items()}
        if len(set(lens.values())) > 1:
            raise ValueError(f"{where}: inconsistent numbers of rows {lens}")
        rec["pair_rank"] = compute_pair_rank(rec["sub_boxes"], rec["obj_boxes"], rec["scores"])
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------
# dataset records
def dataset_ground_truth(
    record: dict, relations_key: str = "relations", triplet_counts: Optional[np.ndarray] = None
) -> dict:
    """Ground-truth record of one dataset dict (DESIGN.md "Dataset record").

    Args:
        record: dataset dict with ``annotations`` (bbox, bbox_mode, category_id) and
            ``relations`` [M,3] (subject index, object index, predicate).
        relations_key: "relations" or "relations_complete".
        triplet_counts: training counts [S,P,O]; zero-shot = count 0. None: no zero-shot flags.
    """
    from detectron2.structures import BoxMode

    anns = record.get("annotations", [])
    boxes = np.array(
        [BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS) for a in anns],
        dtype=np.float64,
    ).reshape(-1, 4)
    cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
    rel = np.asarray(record.get(relations_key, np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    if len(rel) and (rel[:, :2].max() >= len(anns) or rel[:, :2].min() < 0):
        raise ValueError(
            f"dataset record image_id={record.get('image_id')} ({record.get('file_name')}): "
            f"{relations_key} index outside its {len(anns)} annotations"
        )
    labels = np.stack([cats[rel[:, 0]], rel[:, 2], cats[rel[:, 1]]], axis=1).reshape(-1, 3)
    gt = {"labels": labels, "sub_boxes": boxes[rel[:, 0]], "obj_boxes": boxes[rel[:, 1]]}
    if triplet_counts is not None:
        gt["zeroshot"] = triplet_counts[labels[:, 0], labels[:, 1], labels[:, 2]] == 0
    return gt
