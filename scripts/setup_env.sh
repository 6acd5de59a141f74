#!/usr/bin/env bash
# Create (or reuse) the virtual environment used by `make test` and `make demo`.
#
# The environment is built once per set of dependency pins in a cache folder outside the
# checkout ($VRD_D2_CACHE, default ~/.cache/vrd_d2) and linked as .venv/, so a fresh clone
# on the same machine reuses it. It is only used once the marker file written by the last
# step exists: a failed or interrupted install is removed and rebuilt on the next run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 9)' >/dev/null 2>&1; then
  echo "setup_env: FAILED at step: python" >&2
  echo "setup_env: '$PY' is not a working Python >= 3.9; install one or set PYTHON=/path/to/python3" >&2
  exit 1
fi

TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
D2_SDIST="pb1-detectron2==0.6"
# detectron2 0.6's pure-Python requirements, and Pillow<10 because it uses Image.LINEAR.
D2_REQS="fvcore<0.1.6 iopath<0.1.10 yacs omegaconf>=2.1 hydra-core>=1.1 termcolor>=1.1 tabulate cloudpickle tqdm>4.29.0 tensorboard pycocotools>=2.0.2 matplotlib Pillow<10 black"

# The key covers what the environment holds: the pins above and setup.py's dependency lists.
key_src="$TORCH_PINS|$D2_SDIST|$D2_REQS|$(sed -n '/install_requires=\[/,/extras_require/p' setup.py)|$($PY -c 'import sys; print(sys.version)')|${TORCH_INDEX_URL:-}"
key="$(printf '%s' "$key_src" | sha256sum | cut -c1-16)"
cache="${VRD_D2_CACHE:-$HOME/.cache/vrd_d2}"
venv="$cache/venv-$key"
marker="$venv/.vrd_d2_complete"

fail() {
  echo "" >&2
  echo "setup_env: FAILED at step: $1" >&2
  echo "setup_env: $2" >&2
  echo "setup_env: the partial environment $venv was removed; fix the cause and run the command again." >&2
  rm -rf "$venv"
  rm -f "$here/.venv"
  exit 1
}

link_venv() {
  if [ -L .venv ] || [ ! -e .venv ]; then
    ln -sfn "$venv" .venv
  elif [ "$(readlink -f .venv)" != "$(readlink -f "$venv")" ]; then
    echo "setup_env: .venv exists and is not a link made by this script; remove it to let make manage it" >&2
    exit 1
  fi
}

ensure_editable() {
  # The cached environment may serve several checkouts: point the editable install at this one.
  local where
  where="$(cd /tmp && "$venv/bin/python" -c 'import vrd_d2, os; print(os.path.dirname(os.path.dirname(os.path.abspath(vrd_d2.__file__))))' 2>/dev/null || true)"
  if [ "$where" != "$here" ]; then
    if ! "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here"; then
      # The environment itself is complete (its marker exists) and may be serving other
      # checkouts or running jobs: report, but never remove it for this.
      echo "" >&2
      echo "setup_env: FAILED at step: pip install -e ." >&2
      echo "setup_env: pointing the cached environment $venv at this checkout failed (see pip's message above); the environment was kept" >&2
      exit 1
    fi
  fi
}

if [ -f "$marker" ]; then
  link_venv
  ensure_editable
  exit 0
fi

echo "setup_env: building the environment in $venv (once per dependency pins; torch is large, allow a few minutes)"
rm -rf "$venv"
mkdir -p "$cache"
$PY -m venv "$venv" || fail "python -m venv" "could not create a virtual environment with $PY (install python3-venv, or set PYTHON=/path/to/python3.11)"
pip_() { "$venv/bin/python" -m pip "$@"; }

system_d2=0
if [ "${VRD_D2_USE_SYSTEM_DETECTRON2:-1}" = 1 ] && (cd /tmp && "$PY" -c 'import torch, detectron2.modeling' >/dev/null 2>&1); then
  system_d2=1
fi

if [ "$system_d2" = 1 ]; then
  # A working detectron2 (with the torch it was built for) is importable by the base
  # interpreter: keep the user's build and its torch (set VRD_D2_USE_SYSTEM_DETECTRON2=0 to not).
  echo "setup_env: [1/5] using the torch and detectron2 already importable by $PY (system site-packages)"
  sed -i 's/include-system-site-packages = false/include-system-site-packages = true/' "$venv/pyvenv.cfg"
  echo "setup_env: [2/5] detectron2: kept the installed build"
else
  echo "setup_env: [1/5] torch, torchvision ($TORCH_PINS)"
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip_ install -q $TORCH_PINS --index-url "$TORCH_INDEX_URL" \
      || fail "torch" "pip could not install $TORCH_PINS from $TORCH_INDEX_URL"
  else
    pip_ install -q $TORCH_PINS \
      || fail "torch" "pip could not install $TORCH_PINS: check the network to the package registry, or set TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu121) for another CUDA build"
  fi

  echo "setup_env: [2/5] detectron2 (Python sources of $D2_SDIST, no compiled ops)"
  pip_ install -q $D2_REQS || fail "detectron2 requirements" "pip could not install detectron2's requirements ($D2_REQS): check the network to the package registry"
  tmp="$(mktemp -d)"
  "$venv/bin/python" "$here/scripts/install_detectron2_sdist.py" --download pb1-detectron2 0.6 "$tmp" \
    || fail "detectron2 sdist" "could not download the $D2_SDIST sdist from the package registry (see the message above)"
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$venv/bin/python" "$here/scripts/install_detectron2_sdist.py" --install "$tmp"/*.tar.gz "$site" \
    || fail "detectron2 unpack" "could not unpack detectron2 from the sdist in $tmp"
  rm -rf "$tmp"
fi

echo "setup_env: [3/5] vrd_d2 and its dev extras"
pip_ install -q "Pillow<10" -e "$here[dev]" || fail "pip install -e .[dev]" "pip could not install vrd_d2's dependencies (see pip's message above)"

echo "setup_env: [4/5] import check"
(cd /tmp && "$venv/bin/python" -c 'import torch, torchvision, detectron2, detectron2.modeling, vrd_d2; print("torch", torch.__version__, "detectron2", detectron2.__version__)') \
  || fail "import check" "the environment was installed but torch/detectron2/vrd_d2 do not import"

echo "setup_env: [5/5] done"
touch "$marker"
link_venv
