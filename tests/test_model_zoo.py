"""vrd_d2.model_zoo finds every config inside the package, also after a non-editable install
(setup.py links configs/ into vrd_d2/ and installs its files as package data)."""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from conftest import CONFIGS, REPO

from vrd_d2 import model_zoo

NAMES = sorted(
    os.path.relpath(p, CONFIGS)
    for ext in ("yaml", "json")
    for p in glob.glob(str(CONFIGS / "**" / f"*.{ext}"), recursive=True)
)


@pytest.mark.parametrize("name", [n for n in NAMES if n.endswith(".yaml")])
def test_get_config_file_finds_every_config(name):
    path = model_zoo.get_config_file(name)
    assert os.path.samefile(path, CONFIGS / name)


@pytest.mark.parametrize("name", ["VRD/no_such_stage.yaml", "VRD", "../setup.py", str(CONFIGS / "Base-VRD-CP.yaml")])
def test_unknown_config_names_the_path(name):
    with pytest.raises(FileNotFoundError, match="not a config of the model zoo") as e:
        model_zoo.get_config_file(name)
    assert repr(name) in str(e.value)


def test_non_editable_install_holds_the_configs(tmp_path):
    """``pip install --no-deps --no-build-isolation . --target DIR`` of a copy of the source (pip
    builds in place): every config lands in DIR/vrd_d2/configs as a plain file, and the installed
    model_zoo finds them there and nowhere else."""
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "configs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    shutil.copytree(REPO / "vrd_d2", src / "vrd_d2", ignore=shutil.ignore_patterns("configs", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", ".", "--target", target]
    subprocess.run(cmd, cwd=src, check=True, capture_output=True)
    shutil.rmtree(src)  # the installed files must not point back into the source
    installed = target / "vrd_d2" / "configs"
    assert sorted(str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file()) == NAMES
    assert not any(p.is_symlink() for p in [installed, *installed.rglob("*")])
    assert all((installed / n).read_bytes() == (CONFIGS / n).read_bytes() for n in NAMES)
    # the installed module on its own (importing the vrd_d2 package would need torch here)
    spec = importlib.util.spec_from_file_location("installed_model_zoo", target / "vrd_d2" / "model_zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    assert zoo.get_config_file("VRD/stage2_triplet.yaml") == str(installed / "VRD" / "stage2_triplet.yaml")
    with pytest.raises(FileNotFoundError, match="VRD/ablations/rank1.yaml"):
        zoo.get_config_file("VRD/ablations/rank1.yaml")
