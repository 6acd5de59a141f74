#!/usr/bin/env python
"""
The geometry-only relation head on the real VRD annotations (Lu et al. 2016): train on
annotations_train.json (no images needed), evaluate on the test set, print and save the tables.

    python tools/vrd_real.py --vrd-root datasets/vrd --output output/vrd_real

For every variant (frequency prior alone; rank 1 / rank 5, with and without X_sel, without the
prior) it reports
  * predicate classification (gold boxes and labels), R@50/100 for k = 1, 10, free k;
  * relationship and phrase detection on Lu et al.'s R-CNN detections (lu2016/data/
    objectDetRCNN.mat), with the detector's labels and confidences as given:
    score = conf_s * conf_o * P(predicate | s, o, boxes) * P(X_sel) — the setting of the paper's
    Table 1 "w/ proposals from (Lu et al. 2016)";
all scored against Lu et al.'s gt.mat / zeroShot.mat with Lu's matching (docs/EVALUATION.md).
The row "rank 5 + X_sel, eq. 7 product" scores with the paper's eq. 7 (psi_c * psi_u, no per-pair
normaliser: MODEL.VRD.CRF_NORMALIZE False) and reuses the rank-5 chain's weights (the key acts at
test time only); the other rows take the config's CRF_NORMALIZE (True: normalised per pair).
Results go to <output>/results.json and <output>/results.md; ``--update-results`` also replaces
the table between the ``vrd-real`` markers of docs/RESULTS.md. Training is seeded (``--seed``, cfg.SEED):
a repeatable run. ``--seeds 0 1 2`` runs once per seed into <output>/seed<S> and writes the band
table (mean (min–max) over seeds) to <output>/bands.md / bands.json (and the docs/RESULTS.md section with
``--update-results``). ``--save-predictions`` writes relations_results.json beside each evaluation
(<output>/eval/<variant>/{predcls,lu_det}/) for tools/eval_results.py. The runner is
vrd_d2_studies.vrd_geometry.study.
"""

import argparse
import sys

import torch
from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401
from vrd_d2.utils.checks import check_int
from vrd_d2_studies.vrd_geometry import study as vrd_real


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--vrd-root",
        default=None,
        help="VRD folder (default: $VRD_D2_SHARED_DATA if set, else $DETECTRON2_DATASETS/vrd)",
    )
    p.add_argument("--output", default="output/vrd_real")
    p.add_argument("--config-file", default=vrd_real.CONFIG)
    p.add_argument("--variants", nargs="*", choices=list(vrd_real.VARIANTS), help="default: all")
    p.add_argument("--iters", type=int, default=0, help="override SOLVER.MAX_ITER (quick runs)")
    p.add_argument("--prefix", default="vrdreal", help="names the datasets are registered under")
    p.add_argument("--seed", type=int, default=0, help="cfg.SEED of every stage (a repeatable run)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="one run per seed into <output>/seed<S>, and the band table over them",
    )
    p.add_argument(
        "--save-predictions",
        action="store_true",
        help="write relations_results.json beside each evaluation (tools/eval_results.py)",
    )
    p.add_argument(
        "--update-results",
        "--update-readme",  # deprecated alias (the table was in README.md)
        dest="update_readme",
        action="store_true",
        help="replace the vrd-real section of docs/RESULTS.md",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    args.vrd_root = args.vrd_root or vrd_real.default_vrd_root()
    setup_logger(name="vrd_d2")
    setup_logger(name="detectron2")
    check_int(args.iters, "--iters", low=0, where="vrd_real.py")
    for seed in [args.seed] + list(args.seeds or []):
        check_int(seed, "--seed", low=0, where="vrd_real.py")
    torch.manual_seed(0)
    if args.seeds:
        vrd_real.run_seeds(args, args.seeds)
    else:
        vrd_real.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
