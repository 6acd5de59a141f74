#!/usr/bin/env python
"""Benchmark the CP triplet distribution against dense S x P x O computation.

1. Loss + backward (eq. 5 / eq. 6, vrd_d2.modeling.cp_triplet.cp_nll_loss) vs the dense
   log-space tensor (dense_log_prob, normalized by its own sum, gathered, backpropagated),
   at VRD (100x70x100) and VG150 (151x51x151) sizes, R in {1, 5, 10}.
2. Exact top-100 decoding (vrd_d2.modeling.decode.topk_triplets_per_pair) vs dense
   (dense_topk_triplets) on peaked (trained-like), random and flat logits, with and without a
   prior, at VG150 size (151x51x151), and peaked logits at VRD size (``--vrd-pairs`` pairs).
3. The dense fallback at VG200 size (200x100x200), flat logits without prior (no bound can
   certify them), R = 5: our exact decode against one batched matrix product per chunk of pairs
   that builds the same float32 S x P x O tensors (``fallback_vs_gemm_vg200_flat``; also against
   the float64 tensors), on ``--vg200-pairs`` pairs, and against dense.

Dense timings at large N are expensive; the dense side is measured on ``--dense-pairs`` pairs
(chunked) and scaled linearly to N when that is smaller than N (dense cost is exactly linear in
pairs); the table says so in the "dense N" column. ``--full`` measures dense at the same N.

    python tools/benchmark_cp.py --quick --json /tmp/cp_bench.json [--device cuda]

Code: vrd_d2_studies/benchmarks/cp_benchmark.py.
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from vrd_d2.utils.safe_write import check_output_path  # noqa: E402
from vrd_d2_studies.benchmarks.cp_benchmark import SIZES, run_and_report  # noqa: E402


def get_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small settings, < 1 min on 2 CPU cores")
    ap.add_argument("--full", action="store_true", help="dense measured at the same N as CP (slow)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dense-pairs",
        dest="dense_pairs_override",
        type=int,
        default=None,
        help="pairs on which dense loss is measured",
    )
    ap.add_argument("--loss-sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--loss-ranks", nargs="+", type=int, default=[1, 5, 10])
    ap.add_argument(
        "--decode-ranks",
        dest="decode_ranks_override",
        nargs="+",
        type=int,
        default=None,
        help="ranks of the decode rows (default: 5 with --quick, else 1 5 10)",
    )
    ap.add_argument("--vrd-pairs", type=int, default=256, help="pairs of the VRD-size decode rows")
    ap.add_argument(
        "--vg200-pairs",
        type=int,
        default=None,
        help="pairs of the VG200 fallback row (default: 1000, 16 with --quick)",
    )
    return ap


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.json:  # before the benchmark, not after it
        try:
            check_output_path(args.json, (), args.overwrite, flag="--json")
        except FileExistsError as e:
            parser.error(str(e))
    run_and_report(args)


if __name__ == "__main__":
    main()
