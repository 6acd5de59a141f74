#!/usr/bin/env python
"""
Per-image seconds and peak memory of the whole model on real VRD images, at the width of the
configs as they are (random weights):

* stage-2 and stage-3 training (forward + backward);
* inference in predcls, phrase_cls and sgdet, each with our exact decoding and, beside it in the
  same run, the paper's dense decoding (psi_c psi_u for every triplet of a pair, then top-K), the
  ratio, and whether both return the same relations;
* the relation-scoring step alone at VG150 size (151 classes, 51 predicates, gold boxes), ours vs
  dense on the same logits (``relation_scoring_speedup_vg150``), and with the CP log-factors
  multiplied by one scalar per chunk of pairs so that their standard deviation over classes is
  ``--peak-std`` (``..._peaked``: random weights give flat logits, std about 0.004, a trained net
  peaked ones); the whole-image time is reported for both;
* with ``--trained-config C --trained-weights W``: a trained model's phrase_cls scoring on these
  images, ours vs dense on its own logits and prior (``relation_scoring_speedup_trained``; the
  table's last column shows how peaked each row's logits are).

    python tools/benchmark_model.py --images 3 --json /tmp/model_bench.json [--device cuda] [KEY VALUE ...]

Images: the first --images test images of ``--vrd-root``/annotations_test.json with relations
whose file is in ``--image-dir`` (default ``<vrd-root>/sample_images``). Peak memory: CUDA
max_memory_allocated, or the sampled CPU RSS high-water mark (absolute, whole process).
Code: vrd_d2_studies/benchmarks/model_benchmark.py.
"""

import argparse
import json
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vrd_d2_studies.benchmarks.model_benchmark import format_table, run_benchmark  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = os.path.join(REPO, "..", "shared", "data", "vrd")
    p.add_argument("--vrd-root", default=os.getenv("VRD_D2_SHARED_DATA", shared), help="the VRD json folder")
    p.add_argument("--image-dir", default=None, help="default: <vrd-root>/sample_images")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before each row")
    p.add_argument("--peak-std", type=float, default=2.0, help="CP log-factor std over classes, peaked rows")
    p.add_argument(
        "--rows",
        nargs="*",
        default=[],
        help="subset of stage2_train stage3_train predcls phrase_cls sgdet vg150_scoring",
    )
    p.add_argument("--trained-config", default=None, help="config file of a trained model (with --trained-weights)")
    p.add_argument(
        "--trained-weights", default=None, help="its checkpoint: row trained_phrase_cls, ours vs dense on its logits"
    )
    p.add_argument(
        "--prior",
        default="train",
        choices=["train", "images"],
        help="the random models' prior: annotations_train.json's triplet counts, or the benchmarked images'",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides (every row)")
    args = p.parse_args(argv)
    from vrd_d2.utils.checks import check_float, check_int
    from vrd_d2.utils.safe_write import atomic_write_text, check_output_path

    check_int(args.images, "--images", low=1, where="tools/benchmark_model.py")
    check_int(args.warmup, "--warmup", low=0, where="tools/benchmark_model.py")
    check_float(args.peak_std, "--peak-std", low=0.0, where="tools/benchmark_model.py")
    if (args.trained_config is None) != (args.trained_weights is None):
        p.error("--trained-config and --trained-weights go together")
    for path in (args.trained_config, args.trained_weights):
        if path is not None and not os.path.isfile(path):
            p.error(f"no such file: {path}")
    inputs = [args.trained_config, args.trained_weights]
    if args.json:
        try:
            check_output_path(args.json, inputs, args.overwrite, flag="--json")
        except FileExistsError as e:
            p.error(str(e))
    logging.basicConfig(level=logging.WARNING)
    res = run_benchmark(
        args.vrd_root,
        args.image_dir or os.path.join(args.vrd_root, "sample_images"),
        args.images,
        device=args.device,
        opts=args.opts,
        warmup=args.warmup,
        peak_std=args.peak_std,
        repo=REPO,
        rows=args.rows,
        trained=(args.trained_config, args.trained_weights) if args.trained_config else None,
        prior=args.prior,
    )
    print(format_table(res))
    for k in (
        "relation_scoring_speedup_vg150",
        "relation_scoring_speedup_vg150_peaked",
        "relation_scoring_speedup_trained",
    ):
        if k in res:
            print(f"{k}: {res[k]:.1f}")
    if args.json:
        check_output_path(args.json, inputs, args.overwrite, flag="--json")
        atomic_write_text(args.json, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
