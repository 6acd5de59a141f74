#!/usr/bin/env python
"""
Reproduce the paper's tables for one dataset with the paper's recipe: stage 1 -> 2 -> 3 -> 4 (the
triplet net on RPN proposals) -> stage 3 again (X_sel on the retrained spatial branch) ->
evaluation in sgdet, phrase_cls and predcls, each stage from the previous stage's model_final.pth;
finished stages are skipped (run it again to resume). --no-proposals stops the chain at stage 3 (a
model the paper did not evaluate). Writes the dataset's table (Table 1 for VRD, 2 for VG200, 3 for
VG150) as <output-root>/<DATASET>/table.{md,json}, and with --ablation the Table 4 rows (VRD,
VG150) as table4.{md,json}. VG150 and VG200 are evaluated with both protocols
(MODEL.VRD.TEST.PROTOCOL both): Lu et al.'s columns (R@50/100 at k=1 and free k) beside the
Scene-Graph-Benchmark's (R@20/50/100, ngR@K, mR@K; PredCls/SGCls/SGDet); VRD with Lu's only, or
both with the trailing override MODEL.VRD.TEST.PROTOCOL both. Every departure from the paper's
settings: docs/REPRODUCING.md, "Departures from the paper".

    python tools/reproduce.py --dataset vrd --num-gpus 1
    python tools/reproduce.py --dataset vg150 --ablation --dry-run
    python tools/reproduce.py --dataset vrd MODEL.VRD.TEST.PROTOCOL both
"""

import argparse
import os
import subprocess
import sys

from vrd_d2.engine.pipeline import DATASETS, reproduce

PROG = "tools/reproduce.py"


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def get_parser():
    p = _OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument(
        "--no-proposals",
        dest="no_proposals",
        action="store_true",
        help="skip stage 4 (the triplet net on RPN proposals) and X_sel again: evaluate stage 3's model",
    )
    p.add_argument(
        "--proposals",
        dest="proposals_flag",
        action="store_true",
        help="deprecated no-op: training on proposals is now the default",
    )
    p.add_argument("--ablation", action="store_true", help="the Table 4 rows (vrd, vg150)")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to tools/train_net.py (detectron2's launch)")
    p.add_argument("--output-root", default="output", help="replaces the configs' output/ folder")
    p.add_argument("--dry-run", action="store_true", help="print the commands; run nothing, read no dataset file")
    p.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides passed to every stage (KEY VALUE pairs; not OUTPUT_DIR or MODEL.WEIGHTS, set per stage)",
    )
    return p


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.proposals_flag and args.no_proposals:
        parser.error("--proposals and --no-proposals contradict each other")
    if args.proposals_flag:
        print(
            f"{PROG}: --proposals is deprecated and does nothing: training on proposals is the default", file=sys.stderr
        )
    if not args.output_root:
        parser.error("--output-root must not be empty")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        return reproduce(
            args.dataset,
            proposals=not args.no_proposals,
            ablation=args.ablation,
            num_gpus=args.num_gpus,
            output_root=args.output_root,
            dry_run=args.dry_run,
            opts=args.opts,
            repo=repo,
            datasets_root=os.path.join(repo, os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))),
            run=lambda argv: subprocess.run(argv, cwd=repo, check=True),
            out=sys.stdout,
        )
    except FileNotFoundError as e:
        sys.exit(str(e))
    except ValueError as e:  # a bad combination of arguments, named by the library
        sys.exit(str(e) if str(e).startswith(PROG) else f"{PROG}: error: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"{PROG}: error: a step exited with status {e.returncode}: {' '.join(map(str, e.cmd))}")


if __name__ == "__main__":
    main()
