#!/usr/bin/env python
"""
``make demo``: train every stage on the embedded shapes data and print the recall table.

    python tools/shapes_demo.py [--output output/shapes_demo] [--reuse] [--update-results]
    python tools/shapes_demo.py --seeds 0 1 2 --threads 1 2 --update-results   # make demo's band
    python tools/shapes_demo.py --seeds 3 4 5 --threads 1 2 --update-results --results-section shapes-demo-heldout
    python tools/shapes_demo.py --seeds 0 1 2 --threads 1 2 --relation-images 0 --update-results   # all images

The pipeline (vrd_d2_studies.shapes_demo.runner): stage 1 the detector, stage 2 the CP triplet net at
rank 5 and rank 1 from the same detector (rank 5 ``--restarts`` times, the one whose psi_c alone
has the highest phrase classification R@50 on shapes_val kept; rank 1 once), stage 3 the selection head of
each; then every variant of the paper's Table 4 ablation is scored on shapes_test (phrase
classification, predicate classification, against the annotated and the complete ground truth;
sgdet for the full model).
The full model's numbers on shapes_val go to results.json (settings are chosen there, never on test).

Outputs under ``--output``: one folder per stage (``--reuse`` skips a stage whose model_final.pth
exists, when the config.yaml beside it is the stage's config but for paths; another config is an
error), results.md, results.json; ``--update-results`` replaces the docs/RESULTS.md section between
``<!-- shapes-demo:begin -->`` and ``<!-- shapes-demo:end -->``. ``--quick`` runs the pipeline
with a few iterations on a few images (for the tests; its numbers mean nothing, so
``--update-results`` refuses it). Seeds are fixed
(cfg.SEED before every stage), so a run is repeatable. A single run is printed beside the band
stored in configs/Shapes/demo_band.json (``make demo``). ``--seeds``/``--threads`` run the demo
once per (seed, thread count) into <output>/seed<S>_threads<T> and print each headline figure's
mean (min–max) over the runs and the paper's effects in each run (rank 5 over rank 1, X_sel, the
prior: a variant minus the one without that part) with the number of runs where each is above 0
(bands.md, bands.json); with ``--update-results`` those tables go to docs/RESULTS.md and the band to
configs/Shapes/demo_band.json; ``make demo`` prints its own effects beside the band's. After
stage 1 the detector's gold-box classification accuracy on shapes_val is printed; below --min-detector-accuracy (95%) the run
stops with exit code 2. Exits 1 on any other failure. The relation stages (2, 3) train on the first
``--relation-images`` N training images only (default 150; 0: all 1200), and their prior counts those
(relations as scarce per triplet as in the paper's data; their folders end in ``_rel<N>``);
``--update-results`` writes the docs/RESULTS.md table of N = 150 (and the band file) or of N = 0, or with
``--results-section NAME`` the section NAME (e.g. a band of other seeds; its band goes to
configs/Shapes/NAME.json, make demo's band stays as it is). ``--update-readme`` and ``--readme-section``
are deprecated aliases of ``--update-results`` and ``--results-section``.
"""

import argparse
import logging
import os
import sys

from detectron2.utils.logger import setup_logger

import vrd_d2  # noqa: F401  (registers VGG16, the heads)
from vrd_d2.utils.checks import check_int
from vrd_d2_studies.results_doc import check_readme_section
from vrd_d2_studies.shapes_demo import bands as shapes_bands
from vrd_d2_studies.shapes_demo import runner as shapes_demo
from vrd_d2_studies.shapes_demo.detector_check import DetectorAccuracyError
from vrd_d2_studies.shapes_demo.options import check_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
logger = logging.getLogger("vrd_d2.shapes_demo")


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/shapes_demo")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="skip stages whose model_final.pth exists, trained with the same config (another config: an error "
        "naming the keys); with --seeds/--threads: runs whose results.json has the same seed and threads",
    )
    p.add_argument(
        "--update-results",
        "--update-readme",  # deprecated alias (the tables were in README.md)
        dest="update_readme",
        action="store_true",
        help="replace the shapes-demo section of docs/RESULTS.md",
    )
    p.add_argument(
        "--results-section",
        "--readme-section",  # deprecated alias
        dest="readme_section",
        default=None,
        metavar="NAME",
        help="with --update-results: the docs/RESULTS.md section (<!-- NAME:begin --> ... <!-- NAME:end -->) the table goes "
        "to (default: shapes-demo, shapes-demo-all-relations with --relation-images 0); the band make demo "
        "compares with (configs/Shapes/demo_band.json) is written for shapes-demo only, another section's band "
        "to configs/Shapes/NAME.json (NAME: letters, digits, - and _)",
    )
    p.add_argument(
        "--results-file",
        "--readme",
        dest="readme",
        default=os.path.join(REPO, "docs", "RESULTS.md"),
        help=argparse.SUPPRESS,
    )
    p.add_argument("--quick", action="store_true", help="2 iterations a stage, 4-8 images a split (tests)")
    p.add_argument(
        "--min-detector-accuracy",
        type=float,
        default=None,
        metavar="PERCENT",
        help="stop after stage 1 when the detector classifies fewer of the visible gold boxes of "
        f"shapes_val correctly (default {shapes_demo.MIN_DETECTOR_ACCURACY:g}; 0 with --quick)",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=None,
        metavar="N",
        help="stage-2 runs at rank 5 (rank 1: one), the one whose psi_c alone has the highest phrase "
        "classification R@50 on shapes_val kept "
        f"(default {shapes_demo.STAGE2_RESTARTS}; 1 with --quick)",
    )
    p.add_argument(
        "--relation-images",
        type=int,
        default=None,
        metavar="N",
        help="train the relation stages (2, 3) and count their prior on the first N training images only "
        "(the backbone and the detector use all; 0: all): relations as scarce per triplet as in the paper's data "
        f"(default {shapes_demo.RELATION_IMAGES}; 0 with --quick)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="one run per seed (cfg.SEED) ...")
    p.add_argument("--threads", type=int, nargs="+", default=None, help="... and per torch thread count")
    p.add_argument("--band-file", default=shapes_bands.BAND_FILE, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="shapes", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE for every stage")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.update_readme and args.quick:
        # a --quick run's numbers mean nothing: they must not replace the results table or the band file
        print("shapes_demo.py: error: --update-results refuses --quick (its numbers mean nothing)", file=sys.stderr)
        return 2
    for t in args.threads or []:
        check_int(t, "--threads", low=1, where="shapes_demo")
    if args.restarts is not None:
        check_int(args.restarts, "--restarts", low=1, where="shapes_demo")
    if args.relation_images is not None:
        check_int(args.relation_images, "--relation-images", low=0, where="shapes_demo")
    if args.readme_section is not None and not args.update_readme:
        raise ValueError(
            "shapes_demo: --results-section names where --update-results writes; it needs --update-results"
        )
    check_options(args)  # every value a stage reads, before stage 0 trains
    if args.update_readme:
        # a ValueError now, not after the run, if the results page has no section for it
        check_readme_section(args.readme, shapes_demo.readme_marker(args))
    os.makedirs(args.output, exist_ok=True)
    setup_logger(output=os.path.join(args.output, "log.txt"), name="detectron2")
    setup_logger(output=os.path.join(args.output, "log.txt"), name="vrd_d2")
    try:
        shapes_bands.run_cli(args)
    except DetectorAccuracyError as e:
        logger.error("shapes_demo stopped: %s", e)
        return 2
    except Exception:
        logger.exception("shapes_demo failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
