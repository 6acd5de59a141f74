# vrd_d2 — the two commands. Both create (once) and reuse the environment at .venv/.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 2

.PHONY: env test demo clean-env

env:
	@bash scripts/setup_env.sh

test: env
	$(PY) -m pytest tests -q -p no:cacheprovider

demo: env
	bash scripts/demo.sh

clean-env:
	rm -rf "$$(readlink -f .venv)" .venv
