"""Every config file in configs/ loads with add_vrd_config (unknown keys fail, like DensePose's
test_setup.py) and names known components; the Shapes stages chain their weights."""

import glob
import os

import pytest
from conftest import REPO_DIR as REPO  # noqa: E402
from detectron2.config import get_cfg
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, ROI_BOX_HEAD_REGISTRY, ROI_HEADS_REGISTRY

import vrd_d2.modeling  # noqa: F401
from vrd_d2.config import MODES, TRAIN_STAGES, add_vrd_config
from vrd_d2.engine.table4 import ablation_runs
from vrd_d2_studies.shapes_demo.config import add_shapes_demo_config

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def load(path):
    cfg = get_cfg()
    add_vrd_config(cfg)
    if os.path.relpath(path, os.path.join(REPO, "configs")).startswith("Shapes"):
        add_shapes_demo_config(cfg)  # the demo's stage 0 has a key of its own
    cfg.merge_from_file(path)
    return cfg


def test_there_are_configs():
    names = {os.path.relpath(p, os.path.join(REPO, "configs")) for p in CONFIGS}
    for d in ("VRD", "VG150", "VG200", "Shapes"):
        for stage in ("stage1_detector", "stage2_triplet", "stage3_selection", "stage2_triplet_proposals"):
            assert f"{d}/{stage}.yaml" in names
    assert {"Base-VGG16-FasterRCNN.yaml", "Base-VRD-CP.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_loads_and_names_known_components(path):
    cfg = load(path)
    assert cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY._obj_map
    assert cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY._obj_map
    assert cfg.MODEL.ROI_HEADS.NAME in ROI_HEADS_REGISTRY._obj_map
    assert cfg.MODEL.ROI_BOX_HEAD.NAME in ROI_BOX_HEAD_REGISTRY._obj_map
    assert cfg.MODEL.VRD.TRAIN_STAGE in TRAIN_STAGES
    assert cfg.MODEL.VRD.MODE in MODES
    assert cfg.MODEL.RPN.IN_FEATURES == [cfg.MODEL.VGG.OUT_FEATURE] == cfg.MODEL.ROI_HEADS.IN_FEATURES
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE in ("full_model", "norm", "value")


def test_unknown_key_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{os.path.join(REPO, "configs", "Base-VRD-CP.yaml")}"\nMODEL:\n  VRD:\n    RANKK: 3\n')
    with pytest.raises(KeyError):
        load(str(bad))


@pytest.mark.parametrize("dataset", ["VRD", "VG150", "VG200", "Shapes"])
def test_stages_chain_and_freeze(dataset):
    d = os.path.join(REPO, "configs", dataset)
    s1, s2, s3 = (
        load(os.path.join(d, f)) for f in ("stage1_detector.yaml", "stage2_triplet.yaml", "stage3_selection.yaml")
    )
    assert (s1.MODEL.VRD.TRAIN_STAGE, s2.MODEL.VRD.TRAIN_STAGE, s3.MODEL.VRD.TRAIN_STAGE) == TRAIN_STAGES
    assert s2.MODEL.WEIGHTS.startswith(s1.OUTPUT_DIR) and s3.MODEL.WEIGHTS.startswith(s2.OUTPUT_DIR)
    assert s2.MODEL.VGG.FREEZE_CONVS and s2.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert s2.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 20.0
    if dataset != "Shapes":
        assert s2.SOLVER.BASE_LR == 1e-4  # the paper's stage-2 SGD learning rate
        assert s2.MODEL.VRD.FC_DIMS == [4096, 4096] and s2.MODEL.VRD.SELECTION_FC_DIM == 4096


def test_ablations_override_only_their_key():
    """The Table 4 runs (vrd_d2.engine.table4): the stage configs with the rank or a score term
    overridden."""
    base = load(os.path.join(REPO, "configs", "VRD", "stage2_triplet.yaml"))
    runs = {r.name: r for r in ablation_runs("VRD")}

    def run_cfg(name):
        cfg = load(os.path.join(REPO, "configs", "VRD", runs[name].config))
        cfg.merge_from_list(list(runs[name].opts))
        return cfg

    for r in range(1, 6):
        cfg = run_cfg(f"rank{r}")
        assert cfg.MODEL.VRD.RANK == r and cfg.MODEL.VRD.FC_DIMS == base.MODEL.VRD.FC_DIMS
    assert not run_cfg("no_prior").MODEL.VRD.USE_PRIOR
    assert not run_cfg("no_selection").MODEL.VRD.USE_SELECTION
