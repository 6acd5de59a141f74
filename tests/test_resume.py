"""Exact resume: tools/train_net.py killed with SIGKILL after a periodic checkpoint, resumed with
--resume, ends with the same weights, SGD momentum buffers and LR schedule as an uninterrupted run
of the same seed (a real kill of a real subprocess). A ``last_checkpoint`` that is empty, not text or
names a missing file is an error naming it and the way out (a one-line error from the tool); a save
goes through a temporary file, so a failed one leaves the earlier checkpoint and tag."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402

MAX_ITER = 80
# a tiny geometry-only head; warmup and a LR step inside the run, so the scheduler state matters
OPTS = [
    "MODEL.VRD.FC_DIMS",
    "[32]",
    "MODEL.VRD.SPATIAL_DIM",
    "16",
    "MODEL.VRD.SPATIAL_CONV_DIMS",
    "[4, 8]",
    "MODEL.VRD.SPATIAL_MASK_SIZE",
    "16",
    "SOLVER.IMS_PER_BATCH",
    "4",
    "SOLVER.WARMUP_ITERS",
    "5",
    "SOLVER.STEPS",
    "(40,)",
    "SOLVER.MAX_ITER",
    str(MAX_ITER),
    "SOLVER.CHECKPOINT_PERIOD",
    "10",
    "SOLVER.MOMENTUM",
    "0.9",
    "DATASETS.TEST",
    "()",
    "SEED",
    "3",
]


def _cmd(out_dir, *flags):
    return [
        sys.executable,
        os.path.join(REPO, "tools", "train_net.py"),
        "--config-file",
        os.path.join(REPO, "configs", "Shapes", "geometry_only.yaml"),
        *flags,
        *OPTS,
        "OUTPUT_DIR",
        str(out_dir),
    ]


def _env():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def _checkpoint_tagged(out_dir) -> bool:
    """``last_checkpoint`` names a saved file. Its existence alone is not enough: fvcore opens it
    and then writes the name, so a kill between the two leaves it empty."""
    tag = out_dir / "last_checkpoint"
    try:
        name = tag.read_text().strip()
    except FileNotFoundError:
        return False
    return name.endswith(".pth") and (out_dir / name).is_file()


def _final(out_dir):
    return torch.load(os.path.join(out_dir, "model_final.pth"), map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    killed_dir, full_dir = tmp_path / "killed", tmp_path / "full"
    logs = {n: open(tmp_path / f"{n}.log", "w") for n in ("killed", "full", "resumed")}
    # the uninterrupted run and the run to be killed, side by side
    full = subprocess.Popen(_cmd(full_dir), cwd=REPO, env=_env(), stdout=logs["full"], stderr=subprocess.STDOUT)
    victim = subprocess.Popen(_cmd(killed_dir), cwd=REPO, env=_env(), stdout=logs["killed"], stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not _checkpoint_tagged(killed_dir) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (killed_dir / "model_final.pth").exists()  # really killed mid-run
    stopped_at = (killed_dir / "last_checkpoint").read_text().strip()
    assert stopped_at != "model_final.pth"

    resumed = subprocess.run(
        _cmd(killed_dir, "--resume"),
        cwd=REPO,
        env=_env(),
        stdout=logs["resumed"],
        stderr=subprocess.STDOUT,
        timeout=240,
    )
    assert full.wait(timeout=240) == 0, (tmp_path / "full.log").read_text()[-3000:]
    resumed_log = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0, resumed_log[-3000:]
    assert f"Loading from {killed_dir / stopped_at}" in resumed_log.replace("[Checkpointer] ", "")
    start = int(stopped_at[len("model_") : -len(".pth")]) + 1
    assert 0 < start < MAX_ITER

    a, b = _final(full_dir), _final(killed_dir)
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    opt_a, opt_b = a["trainer"]["optimizer_trainer"]["optimizer"], b["trainer"]["optimizer_trainer"]["optimizer"]
    assert len(opt_a["state"]) == len(opt_b["state"]) > 0
    for i in opt_a["state"]:
        torch.testing.assert_close(
            opt_b["state"][i]["momentum_buffer"],
            opt_a["state"][i]["momentum_buffer"],
            rtol=1e-5,
            atol=1e-6,
            msg=f"momentum of parameter {i}",
        )
    assert [g["lr"] for g in opt_a["param_groups"]] == [g["lr"] for g in opt_b["param_groups"]]
    assert a["trainer"]["hooks"]["LRScheduler"] == b["trainer"]["hooks"]["LRScheduler"]
    assert a["trainer"]["sampler"] == b["trainer"]["sampler"]
    # and the weights moved after the resume: the comparison is not of two untouched models
    ckpt = torch.load(killed_dir / stopped_at, map_location="cpu", weights_only=True)
    assert any(not torch.equal(ckpt["model"][k], b["model"][k]) for k in b["model"] if "branch" in k)


# ------------------------------------------------------------------ a broken last_checkpoint
def _small_checkpointer(folder):
    from vrd_d2.checkpoint import VRDCheckpointer

    torch.manual_seed(0)
    return VRDCheckpointer(torch.nn.Linear(3, 2), str(folder))


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "is empty"),
        (b"  \n", "is empty"),
        (b"\xff\xfe\x00\x81garbage", "is not text"),
        (b"model_0000009.pth\nmodel_0000019.pth", "does not hold one file name"),
        (b"model_0000009.pth", "names .*/model_0000009.pth, which does not exist"),
    ],
    ids=["empty", "blank", "binary", "two_names", "missing_file"],
)
def test_broken_last_checkpoint_is_an_error_naming_it_and_the_way_out(tmp_path, content, why):
    from vrd_d2.checkpoint import ResumeError

    (tmp_path / "last_checkpoint").write_bytes(content)
    model_before = {k: v.clone() for k, v in _small_checkpointer(tmp_path).model.state_dict().items()}
    ckpt = _small_checkpointer(tmp_path)
    with pytest.raises(ResumeError) as e:
        ckpt.resume_or_load("", resume=True)
    msg = str(e.value)
    assert re.search(f"cannot resume: {re.escape(str(tmp_path / 'last_checkpoint'))} {why}", msg), msg
    assert "delete it to start from MODEL.WEIGHTS" in msg and "model_*.pth" in msg
    assert (tmp_path / "last_checkpoint").read_bytes() == content  # left as found
    assert all(torch.equal(v, model_before[k]) for k, v in ckpt.model.state_dict().items())


def test_good_last_checkpoint_resumes_and_is_written_whole(tmp_path):
    ckpt = _small_checkpointer(tmp_path)
    with torch.no_grad():
        ckpt.model.weight.fill_(0.5)
    ckpt.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]  # no temp left
    fresh = _small_checkpointer(tmp_path)
    assert fresh.resume_or_load("", resume=True)["iteration"] == 9
    assert torch.equal(fresh.model.weight, torch.full((2, 3), 0.5))
    # a save that fails half-way keeps the earlier checkpoint and its tag as they were
    before = (tmp_path / "model_0000009.pth").read_bytes()
    ckpt.checkpointables["bad"] = _Unsaveable()
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save("model_0000009", iteration=19)
    assert (tmp_path / "model_0000009.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]


class _Unsaveable:
    def state_dict(self):
        return {"x": _FailsToPickle()}


class _FailsToPickle:
    def __reduce__(self):
        raise RuntimeError("disk full")


def test_train_net_resume_with_empty_last_checkpoint_is_a_one_line_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "last_checkpoint").write_bytes(b"")  # what a kill between fvcore's open and write left
    done = subprocess.run(_cmd(out, "--resume"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"train_net.py: error: VRDCheckpointer: cannot resume: {out / 'last_checkpoint'} is empty; delete it to "
        f"start from MODEL.WEIGHTS, or write into it the name of a checkpoint of {out} (model_*.pth) to resume from"
    )
    assert "Traceback" not in done.stderr
    assert (out / "last_checkpoint").read_bytes() == b""
