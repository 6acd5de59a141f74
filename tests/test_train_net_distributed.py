"""tools/train_net.py end to end on CPU: a 2-process gloo run (--num-cpu-procs 2) trains a few
iterations and evaluates; a 1-process --eval-only run of its checkpoint gives the same results."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_DIR as REPO  # noqa: E402
from conftest import TINY_TRIPLET_NET

TINY = TINY_TRIPLET_NET + [
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "128",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.MAX_ITER",
    "4",
    "SOLVER.WARMUP_ITERS",
    "0",
    "SOLVER.BASE_LR",
    "0.01",
    "DATASETS.TEST",
    '("shapes_val",)',
    "SEED",
    "1",
]


def _run(flags, out_dir, opts=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = (
        [
            sys.executable,
            os.path.join(REPO, "tools", "train_net.py"),
            "--config-file",
            os.path.join(REPO, "configs", "Shapes", "Base-Shapes.yaml"),
        ]
        + list(flags)
        + TINY
        + ["OUTPUT_DIR", str(out_dir)]
        + list(opts)
    )
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    return log


def _copypaste(log):
    """The metrics detectron2 prints with print_csv_format: {task: {metric: value}}."""
    out, task, keys = {}, None, None
    for line in log.splitlines():
        m = re.search(r"copypaste: (.*)$", line)
        if not m:
            continue
        text = m.group(1)
        if text.startswith("Task: "):
            task, keys = text[6:], None
        elif keys is None:
            keys = text.split(",")
        else:
            out[task] = dict(zip(keys, text.split(",")))
            keys = None
    return out


@pytest.mark.slow
def test_two_cpu_processes_train_and_evaluate_like_one(tmp_path):
    log2 = _run(["--num-cpu-procs", "2"], tmp_path / "two")
    assert "Rank of current process: 0. World size: 2" in log2
    assert os.path.exists(tmp_path / "two" / "model_final.pth")
    res2 = _copypaste(log2)
    assert res2, log2[-3000:]
    log1 = _run(["--eval-only"], tmp_path / "one", ["MODEL.WEIGHTS", str(tmp_path / "two" / "model_final.pth")])
    res1 = _copypaste(log1)
    assert res1 == res2
