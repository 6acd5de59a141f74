#!/usr/bin/env bash
# make demo: train every stage on the embedded shapes data (one seed, cfg.SEED 0) and print the
# recall table, beside the band of docs/RESULTS.md's runs (configs/Shapes/demo_band.json) when stored.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tools/shapes_demo.py "$@"
