#!/usr/bin/env python
"""Score a relationship results file without the model (Lu et al.'s protocol, docs/EVALUATION.md).

Examples:
  # our JSON results against a registered dataset
  python tools/eval_results.py output/inference/vrd_test/relations_results.json --dataset vrd_test
  # Lu-style .mat results against Lu's gt.mat / zeroShot.mat
  python tools/eval_results.py relationship_det_result.mat \\
      --gt-mat ../shared/data/vrd/lu2016/evaluation/gt.mat --json scores.json

Results files: our JSON format (``images`` with ``image_id``/``file_name`` and ``relations``), or
Lu's .mat (``rlp_labels_ours`` [n,3] 1-based, ``rlp_confs_ours``, ``sub_bboxes_ours``,
``obj_bboxes_ours`` [x1 y1 x2 y2], one cell per test image in imagePath.mat order).
``--json`` writes ``relationship_R@50``, ``relationship_R@100``, ``phrase_R@50``, ``phrase_R@100``
and the same with a ``zeroshot_`` prefix, for the k per pair given by ``--k`` (default 0: every
row of the file).
"""

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from vrd_d2.evaluation import VRDEvaluator, format_results_table, load_lu_results_mat, load_results_json
from vrd_d2.data.datasets.lu2016 import load_image_paths
from vrd_d2.evaluation.results_io import image_key
from vrd_d2.evaluation.recall import k_label

logger = logging.getLogger("vrd_d2.eval_results")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="our .json results or Lu-style .mat results")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered dataset name (ground truth from its dicts)")
    src.add_argument("--gt-mat", help="Lu et al.'s evaluation/gt.mat")
    p.add_argument("--image-path-mat", help="imagePath.mat (default: <gt.mat>/../../data/ or metadata)")
    p.add_argument("--zeroshot-mat", help="zeroShot.mat (default: beside gt.mat)")
    p.add_argument("--mode", default="sgdet", choices=["sgdet", "phrase_cls", "predcls"])
    p.add_argument("--k", type=int, default=0, help="k per pair for --json (0 = free k)")
    p.add_argument("--k-values", type=int, nargs="+", default=[1, 10, 0])
    p.add_argument("--denominator", default="rows", choices=["rows", "matlab_length"])
    p.add_argument("--num-objects", type=int, default=None, help="class-list size (gt.mat: 100)")
    p.add_argument("--num-predicates", type=int, default=None, help="predicates (gt.mat: 70)")
    p.add_argument("--json", help="write the flat scores here")
    return p


def _lu_class_counts(gt_mat: str):
    """Sizes of Lu's objectListN / relationListN beside gt.mat, else VRD's 100 / 70."""
    import scipy.io

    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(gt_mat))), "data")
    sizes = []
    for name, key, default in (("objectListN.mat", "objectListN", 100), ("relationListN.mat", "relationListN", 70)):
        path = os.path.join(data, name)
        sizes.append(scipy.io.loadmat(path)[key].size if os.path.isfile(path) else default)
    return sizes


def load_predictions(args, gt_names: Optional[List[str]], dataset_dicts) -> List[dict]:
    """Results file -> entries ``{"image_id", "file_name", "record", "where"}`` aligned with the
    ground truth's images; raises on a wrong number of images, unknown or repeated images."""
    n_gt = len(gt_names) if gt_names is not None else len(dataset_dicts)
    if args.results.endswith(".mat"):
        if gt_names is None:
            raise ValueError("Lu .mat results need --gt-mat (their cells follow imagePath.mat)")
        mat = load_lu_results_mat(args.results, num_images=n_gt)  # raises on a wrong cell count
        return [
            {"image_id": i, "file_name": gt_names[i], "record": r,
             "where": f"{args.results}: image {i} ({gt_names[i]})"}
            for i, r in enumerate(mat)
        ]
    entries = load_results_json(args.results)
    if len(entries) != n_gt:
        raise ValueError(
            f"{args.results}: {len(entries)} images, but the ground truth has {n_gt} "
            f"({'gt.mat' if gt_names is not None else args.dataset}); every image needs an entry "
            f"(an empty 'relations' list for none)"
        )
    if gt_names is not None:  # match to gt.mat by file name
        index = {image_key(n): i for i, n in enumerate(gt_names)}
        seen = {}
        for e in entries:
            key = image_key(e["file_name"])
            if key not in index:
                raise ValueError(f"{e['where']}: file name not among the gt.mat images")
            if key in seen:
                raise ValueError(f"{e['where']}: image repeated (also {seen[key]})")
            seen[key] = e["where"]
            e["image_id"] = index[key]
        return entries
    ids = {d["image_id"] for d in dataset_dicts}
    seen = {}
    for e in entries:
        if e["image_id"] not in ids:
            raise ValueError(f"{e['where']}: image_id not in {args.dataset}")
        if e["image_id"] in seen:
            raise ValueError(f"{e['where']}: image_id repeated (also {seen[e['image_id']]})")
        seen[e["image_id"]] = e["where"]
    return entries


def flat_scores(results, mode: str, k: int, topk_values=(50, 100)) -> dict:
    """``<task>_R@K`` and ``zeroshot_<task>_R@K`` for one k per pair."""
    out = {}
    suffix = k_label(k)
    for task, metrics in results.items():
        if task.endswith("_complete"):
            continue
        for topk in topk_values:
            out[f"{task}_R@{topk}"] = metrics[f"R@{topk}_{suffix}"]
        for topk in topk_values:
            if f"zsR@{topk}_{suffix}" in metrics:
                out[f"zeroshot_{task}_R@{topk}"] = metrics[f"zsR@{topk}_{suffix}"]
    return out


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    k_values = list(dict.fromkeys(args.k_values + [args.k]))
    if args.gt_mat:
        image_path_mat = args.image_path_mat or os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(args.gt_mat))), "data", "imagePath.mat"
        )
        gt_names = load_image_paths(image_path_mat)
        n_obj, n_pred = _lu_class_counts(args.gt_mat)
        evaluator = VRDEvaluator(
            "vrd_d2_eval_results_lu_gt", mode=args.mode, distributed=False, k_values=k_values,
            gt_mat=args.gt_mat, image_path_mat=image_path_mat, zeroshot_mat=args.zeroshot_mat,
            denominator=args.denominator, save_predictions=False,
            num_objects=args.num_objects or n_obj, num_predicates=args.num_predicates or n_pred,
        )
        dataset_dicts = None
    else:
        import vrd_d2.data  # noqa: F401  (registers the builtin datasets)
        from detectron2.data import DatasetCatalog

        gt_names = None
        dataset_dicts = DatasetCatalog.get(args.dataset)
        evaluator = VRDEvaluator(
            args.dataset, mode=args.mode, distributed=False, k_values=k_values,
            denominator=args.denominator, save_predictions=False,
            num_objects=args.num_objects, num_predicates=args.num_predicates,
        )
    predictions = load_predictions(args, gt_names, dataset_dicts)
    results = evaluator.evaluate_predictions(predictions)
    print(format_results_table(results))
    scores = flat_scores(results, args.mode, args.k)
    print(json.dumps(scores, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(scores, k_per_pair=args.k, denominator=args.denominator), f, indent=1)
    return scores


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"eval_results.py: error: {e}", file=sys.stderr)
        sys.exit(2)
