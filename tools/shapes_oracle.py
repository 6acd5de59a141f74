#!/usr/bin/env python
"""
Ceilings of the shapes data from the generator's own probabilities (vrd_d2.data.datasets.
shapes_oracle): phrase classification with gold boxes, free k, R@K, for the Bayes-optimal
ranking, the best the model can represent at rank >= 4 with the selection head, and at rank 1
(the product of the marginals); with and without the selection head's P(looked); and the full
model (eq. 7) with psi_c at those ceilings times the prior psi_u of the training counts.

    python tools/shapes_oracle.py [--split test] [--seed 0] [--images N] [--train-seed S] [--json FILE]

By default it scores the images of shapes_<split> (the demo's test split); ``--images N`` draws
N fresh images from the generator instead (a larger sample). psi_u is built from shapes_train of
dataset seed ``--train-seed`` (default: ``--seed``, or 0 with ``--images``: the demo's).
``--json FILE`` writes optimal_R50_free_k, rank1_R50_free_k, rank5_R50_free_k (percent; and the
*_no_sel and *_prior values).
"""

import argparse
import json
import sys

from vrd_d2.utils.checks import check_int
from vrd_d2.utils.safe_write import atomic_write_text, check_output_path
from vrd_d2_studies.shapes_demo import oracle as shapes_oracle
from vrd_d2_studies.shapes_demo.data import SPLIT_SIZES, ensure_shapes


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="test", choices=sorted(SPLIT_SIZES))
    p.add_argument("--seed", type=int, default=0, help="dataset seed (with --images: the draw's seed)")
    p.add_argument("--images", type=int, default=0, help="score N freshly drawn images instead of the split")
    p.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="dataset seed of the training split behind the prior (default: --seed; 0 with --images)",
    )
    p.add_argument("--k", type=int, default=50, help="recall at K (default 50)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the recalls as json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.json:
        try:
            check_output_path(args.json, (), args.overwrite, flag="--json")
        except FileExistsError as e:
            parser.error(str(e))
    k = check_int(args.k, "--k", low=1, where="shapes_oracle")
    n = check_int(args.images, "--images", low=0, where="shapes_oracle")
    train_seed = args.train_seed if args.train_seed is not None else (0 if n else args.seed)
    prior = shapes_oracle.prior_of_root(ensure_shapes(seed=train_seed))
    if n:
        recall = shapes_oracle.oracle_recall_of_fresh_images(n, seed=args.seed, k=k, prior=prior)
        source = f"{n} fresh images"
    else:
        recall = shapes_oracle.oracle_recall_of_split(ensure_shapes(seed=args.seed), args.split, k=k, prior=prior)
        source = f"shapes_{args.split} (seed {args.seed})"
    print(f"phrase classification, gold boxes, free k, R@{k} on {source}:")
    for name, value in recall.items():
        print(f"  {name:>13s}  {value:6.2f}")
    print(f"  rank gap (rank >= 4 minus rank 1, with X_sel): {recall['rank5'] - recall['rank1']:.2f} points")
    print(
        f"  prior psi_u (shapes_train, seed {train_seed}): {recall['rank5_prior'] - recall['rank5']:+.2f} points at "
        f"rank >= 4, {recall['rank1_prior'] - recall['rank1']:+.2f} at rank 1 (both with X_sel)"
    )
    if args.json:
        check_output_path(args.json, (), args.overwrite, flag="--json")
        atomic_write_text(args.json, json.dumps(shapes_oracle.oracle_json(recall, k), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
