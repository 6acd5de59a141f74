# vrd_d2 — the two commands. Both create (once) and reuse the environment at .venv/.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: env test demo lint format clean-env

env:
	@bash scripts/setup_env.sh

test: env
	$(PY) -m pytest tests -q -p no:cacheprovider

demo: env
	bash scripts/demo.sh

# black reads no setup.cfg, so its line length is given here; isort reads its settings from setup.cfg.
LINT_PATHS := vrd_d2 vrd_d2_studies tools tests scripts setup.py
BLACK := $(PY) -m black --line-length 120 --target-version py39

lint: env
	$(BLACK) --check --diff --quiet $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)

format: env
	$(BLACK) --quiet $(LINT_PATHS)
	$(PY) -m isort --quiet $(LINT_PATHS)

clean-env:
	rm -rf "$$(readlink -f .venv)" .venv
