#!/usr/bin/env python
"""Score a relationship results file without the model (docs/EVALUATION.md).

Examples:
  # our JSON results against a registered dataset (its default protocol: SGB for VG150 / VG200)
  python tools/eval_results.py output/inference/vrd_test/relations_results.json --dataset vrd_test
  # Lu-style .mat results against Lu's gt.mat / zeroShot.mat, Lu's and SGB's protocol
  python tools/eval_results.py relationship_det_result.mat \\
      --gt-mat ../shared/data/vrd/lu2016/evaluation/gt.mat --json scores.json
  python tools/eval_results.py relationship_det_result.mat \\
      --gt-mat ../shared/data/vrd/lu2016/evaluation/gt.mat --protocol sgb --json scores_sgb.json

Results files: our JSON format (``images`` with ``image_id``/``file_name`` and ``relations``), or
Lu's .mat (``rlp_labels_ours`` [n,3] 1-based, ``rlp_confs_ours``, ``sub_bboxes_ours``,
``obj_bboxes_ours`` [x1 y1 x2 y2], one cell per test image in imagePath.mat order).
``--json`` writes, with ``--protocol lu``, ``relationship_R@50``, ``relationship_R@100``,
``phrase_R@50``, ``phrase_R@100`` and the same with a ``zeroshot_`` prefix, for the k per pair
given by ``--k`` (default 0: every row of the file); with ``--protocol sgb``,
``relationship_R@20/50/100`` and ``phrase_R@20/50/100`` (graph constraint) and every other SGB
metric as ``<task>_<metric>`` (``relationship_ngR@50``, ``relationship_mR@50``, ...); with
``--protocol both``, Lu's scores and SGB's prefixed ``sgb_`` (``sgb_relationship_R@20``). An
``--json`` also records ``missing_images``: the images of the ground truth a JSON file left out,
accepted only with ``--only-present-images`` (then not scored). An
existing ``--json`` file is replaced only with ``--overwrite``, and never when it is a file the run
reads (the results, gt.mat, imagePath.mat, zeroShot.mat, the dataset's annotation files).
"""

import argparse
import json
import logging
import os
import sys

from vrd_d2.evaluation.offline import evaluate_results_file, flat_scores
from vrd_d2.evaluation.protocols import protocol_choices
from vrd_d2.utils.checks import check_int
from vrd_d2.utils.safe_write import atomic_write_text, check_output_path, dataset_files


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="our .json results or Lu-style .mat results")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="registered dataset name (ground truth from its dicts)")
    src.add_argument("--gt-mat", help="Lu et al.'s evaluation/gt.mat")
    p.add_argument("--image-path-mat", help="imagePath.mat (default: <gt.mat>/../../data/)")
    p.add_argument("--zeroshot-mat", help="zeroShot.mat (default: beside gt.mat)")
    p.add_argument(
        "--protocol",
        default="auto",
        choices=protocol_choices(),
        help="lu (Lu et al.), sgb (Scene-Graph-Benchmark), auto (the dataset's default: SGB for "
        "VG150/VG200, Lu otherwise and for --gt-mat) or both (Lu's scores, then SGB's as sgb_<task>_<metric>)",
    )
    p.add_argument("--sgb-zeroshot-triplets", help="SGB's zeroshot_triplet.pytorch (zero-shot rows of zR@K)")
    p.add_argument("--mode", default="sgdet", choices=["sgdet", "phrase_cls", "predcls"])
    p.add_argument("--k", type=int, default=0, help="k per pair for --json under Lu (0 = free k)")
    p.add_argument("--k-values", type=int, nargs="+", default=[1, 10, 0])
    p.add_argument("--denominator", default="rows", choices=["rows", "matlab_length"])
    p.add_argument("--num-objects", type=int, default=None, help="class-list size (gt.mat: 100)")
    p.add_argument("--num-predicates", type=int, default=None, help="predicates (gt.mat: 70)")
    p.add_argument(
        "--only-present-images",
        action="store_true",
        help="a JSON results file may leave images out; score only those present (default: every "
        "image of the ground truth needs an entry)",
    )
    p.add_argument("--json", help="write the flat scores here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file (never an input)")
    return p


def input_files(args):
    """The files this run reads: the results, Lu's .mat files (also the defaults beside gt.mat)
    and SGB's zero-shot triplets, or the registered dataset's files (and its training split's)."""
    files = [args.results, args.image_path_mat, args.zeroshot_mat, args.sgb_zeroshot_triplets]
    if args.gt_mat:
        lu = os.path.dirname(os.path.abspath(args.gt_mat))
        files += [
            args.gt_mat,
            os.path.join(lu, "zeroShot.mat"),
            os.path.join(os.path.dirname(lu), "data", "imagePath.mat"),
        ]
    if args.dataset:
        from detectron2.data import MetadataCatalog

        import vrd_d2.data  # noqa: F401  (registers the builtin datasets)

        md = MetadataCatalog.get(args.dataset)
        files += dataset_files(md)
        if md.get("train_split", None):
            files += dataset_files(MetadataCatalog.get(md.train_split))
    return files


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_int(args.k, "--k", low=0, where="eval_results.py")
    for k in args.k_values:
        check_int(k, "--k-values", low=0, where="eval_results.py")
    for flag in ("num_objects", "num_predicates"):
        if getattr(args, flag) is not None:
            check_int(getattr(args, flag), "--" + flag.replace("_", "-"), low=1, where="eval_results.py")
    if args.json:  # before the scoring, not after it
        check_output_path(args.json, input_files(args), args.overwrite, flag="--json")
    results, table, evaluator = evaluate_results_file(
        args.results,
        dataset=args.dataset,
        gt_mat=args.gt_mat,
        image_path_mat=args.image_path_mat,
        protocol=args.protocol,
        num_objects=args.num_objects,
        num_predicates=args.num_predicates,
        mode=args.mode,
        k_values=list(dict.fromkeys(args.k_values + [args.k])),
        zeroshot_mat=args.zeroshot_mat,
        denominator=args.denominator,
        sgb_zeroshot_triplets=args.sgb_zeroshot_triplets,
        only_present_images=args.only_present_images,
    )
    print(table)
    scores, settings = flat_scores(results, evaluator.protocols, args.k)
    settings.update(missing_images=evaluator.missing_images, only_present_images=args.only_present_images)
    print(json.dumps(scores, indent=1))
    if args.json:
        check_output_path(args.json, input_files(args), args.overwrite, flag="--json")
        atomic_write_text(args.json, json.dumps(dict(scores, protocol=evaluator.protocol, **settings), indent=1))
    return scores


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"eval_results.py: error: {e}", file=sys.stderr)
        sys.exit(2)
