"""The environment: detectron2 imports, its missing compiled ops fail clearly, vrd_d2 registers
its components, and a stock Faster R-CNN runs on CPU."""

import os
import re
import shutil
import subprocess

import pytest
import torch
from conftest import REPO_DIR as REPO  # noqa: E402


def test_detectron2_imports():
    import detectron2
    from detectron2.modeling import build_model  # noqa: F401

    assert detectron2.__version__.startswith("0.6")


def test_compiled_ops_placeholder_raises_clear_import_error():
    from detectron2 import _C

    if getattr(_C, "__file__", "").endswith(".py"):
        with pytest.raises(ImportError, match="not installed"):
            _C.deform_conv_forward  # noqa: B018
    else:  # an official compiled build: the op must really be there
        assert hasattr(_C, "deform_conv_forward")


def test_vrd_d2_registers_components():
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, ROI_HEADS_REGISTRY

    import vrd_d2  # noqa: F401

    assert "build_vgg16_backbone" in BACKBONE_REGISTRY._obj_map
    assert "VRDRCNN" in META_ARCH_REGISTRY._obj_map
    assert "VRDROIHeads" in ROI_HEADS_REGISTRY._obj_map
    for name in (
        "vrd_train",
        "vrd_test",
        "vg150_train",
        "vg150_val",
        "vg150_test",
        "shapes_train",
        "shapes_val",
        "shapes_test",
    ):
        assert name in DatasetCatalog.list(), name


def test_add_vrd_config_adds_keys():
    from detectron2.config import get_cfg

    from vrd_d2 import add_vrd_config

    cfg = get_cfg()
    add_vrd_config(cfg)
    assert cfg.MODEL.VRD.RANK >= 1
    assert cfg.MODEL.VRD.MODE in ("sgdet", "phrase_cls", "predcls")


def test_default_faster_rcnn_runs_on_cpu():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 128
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 255, (3, 80, 120), dtype=torch.uint8)
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 80, "width": 120}])
    inst = out["instances"]
    assert inst.image_size == (80, 120)
    assert inst.pred_boxes.tensor.shape[1] == 4
    assert len(inst) == len(inst.scores) == len(inst.pred_classes)


def test_pillow_pinned_below_10_for_detectron2():
    import PIL

    assert int(PIL.__version__.split(".")[0]) < 10
    from PIL import Image

    assert hasattr(Image, "LINEAR")


def _setup_env_without_index(tmp_path):
    """(checkout with scripts/ and setup.py, environment whose pip reaches no package index)."""
    env = dict(os.environ)
    env.update(
        VRD_D2_CACHE=str(tmp_path / "cache"),
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(tmp_path / "empty"),
        VRD_D2_USE_SYSTEM_DETECTRON2="0",
    )
    (tmp_path / "empty").mkdir()
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(os.path.join(REPO, "scripts"), work / "scripts")
    shutil.copy(os.path.join(REPO, "setup.py"), work / "setup.py")
    return work, env


def test_setup_env_reports_failing_step(tmp_path):
    """A setup failure names the step and leaves no half-built environment behind."""
    work, env = _setup_env_without_index(tmp_path)
    # No package index reachable: the torch step fails after the venv was created.
    proc = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "FAILED at step: torch" in proc.stderr, proc.stderr[-2000:]
    assert not (work / ".venv").exists()
    leftovers = list((tmp_path / "cache").glob("venv-*")) if (tmp_path / "cache").exists() else []
    assert leftovers == []


def test_setup_env_keeps_a_complete_environment_when_the_editable_install_fails(tmp_path):
    """A cached environment (its marker written) serves other checkouts and running jobs: when
    only pointing it at this checkout fails (pip install -e), the step is named and the environment
    stays. (A checkout deleted during that step once removed the shared environment.)"""
    work, env = _setup_env_without_index(tmp_path)
    first = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=work, env=env, capture_output=True, text=True)
    venv = re.search(r"building the environment in (\S+)", first.stdout).group(1)
    # a complete environment at the same key whose python answers "vrd_d2 lives elsewhere" and whose pip fails
    os.makedirs(os.path.join(venv, "bin"))
    python = os.path.join(venv, "bin", "python")
    with open(python, "w") as f:
        f.write(
            '#!/bin/sh\ncase "$*" in *"-m pip"*) echo "pip: simulated failure" >&2; exit 1;; esac\necho /elsewhere\n'
        )
    os.chmod(python, 0o755)
    open(os.path.join(venv, ".vrd_d2_complete"), "w").close()
    proc = subprocess.run(["bash", "scripts/setup_env.sh"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "FAILED at step: pip install -e ." in proc.stderr and "was kept" in proc.stderr, proc.stderr[-2000:]
    assert os.path.isfile(os.path.join(venv, ".vrd_d2_complete")) and os.path.isfile(python)
