#!/usr/bin/env bash
# make demo: train every stage on the embedded shapes data and print the recall table.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tools/shapes_demo.py "$@"
