"""``--reuse`` of a trained stage (vrd_d2_studies.ablation.stage_output): the weights in a stage
folder are reused only when they were trained with the same config; paths may differ."""

import re
import shutil

import pytest
from detectron2.config import get_cfg

from vrd_d2.config import add_vrd_config
from vrd_d2_studies.ablation import config_differences, stage_output


def _trained_stage(folder, **solver):
    cfg = add_vrd_config(get_cfg())
    cfg.OUTPUT_DIR = str(folder)
    cfg.MODEL.WEIGHTS = str(folder.parent / "stage1" / "model_final.pth")
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(cfg.dump())
    (folder / "model_final.pth").write_bytes(b"weights")
    return cfg


def test_same_config_is_reused_even_from_another_folder(tmp_path):
    cfg = _trained_stage(tmp_path / "a" / "stage2", MAX_ITER=750)
    assert stage_output(cfg, reuse=True) == (str(tmp_path / "a" / "stage2" / "model_final.pth"), True)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # a band run's folders copied elsewhere
    moved = cfg.clone()
    moved.OUTPUT_DIR = str(tmp_path / "b" / "stage2")
    moved.MODEL.WEIGHTS = str(tmp_path / "b" / "stage1" / "model_final.pth")
    assert stage_output(moved, reuse=True) == (str(tmp_path / "b" / "stage2" / "model_final.pth"), True)


def test_another_config_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "stage2"
    cfg = _trained_stage(folder, MAX_ITER=750, STEPS=(600,))
    now = cfg.clone()
    now.SOLVER.MAX_ITER, now.SOLVER.STEPS = 300, (240,)
    assert config_differences((folder / "config.yaml").read_text(), now) == [
        "SOLVER.MAX_ITER: 750 -> 300",
        "SOLVER.STEPS: [600] -> [240]",
    ]
    with pytest.raises(
        ValueError,
        match=r"stage2/model_final.pth: reuse asked, but it was trained with another config"
        r" \(.*config.yaml: SOLVER.MAX_ITER: 750 -> 300; SOLVER.STEPS: \[600\] -> \[240\]\)",
    ):
        stage_output(now, reuse=True)
    assert (folder / "model_final.pth").read_bytes() == b"weights"
    # without --reuse the stage trains again (the caller asked for it), config.yaml rewritten
    assert stage_output(now, reuse=False) == (str(folder / "model_final.pth"), False)
    assert config_differences((folder / "config.yaml").read_text(), now) == []


def test_weights_without_a_saved_config_are_refused_and_left_alone(tmp_path):
    """Weights of an unknown recipe are not taken silently (--reuse of the shapes demo, the VRD study)."""
    folder = tmp_path / "stage2"
    cfg = _trained_stage(folder)
    (folder / "config.yaml").unlink()
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(folder))}: reuse asked, but its model_final.pth has no config.yaml"
    ):
        stage_output(cfg, reuse=True)
    assert (folder / "model_final.pth").read_bytes() == b"weights" and not (folder / "config.yaml").exists()


@pytest.mark.parametrize(
    "text",
    [b"MODEL: {RANK: [5\n", b"SOLVER:\n\tMAX_ITER: 3\n", b"\xff\xfe\x00garbage", b"- a list\n- not a config\n"],
    ids=["unclosed", "tab", "binary", "list"],
)
def test_saved_config_that_is_not_yaml_is_an_error_naming_it(tmp_path, text):
    folder = tmp_path / "stage2"
    cfg = _trained_stage(folder)
    (folder / "config.yaml").write_bytes(text)
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(folder / 'config.yaml'))}: not a config dumped as YAML \(.+\), so "
    ):
        stage_output(cfg, reuse=True)
    assert (folder / "config.yaml").read_bytes() == text and (folder / "model_final.pth").read_bytes() == b"weights"


def test_without_reuse_the_folder_is_the_stage_s_own(tmp_path):
    """No --reuse: the stage trains again into its folder; its config.yaml is the new recipe's."""
    folder = tmp_path / "stage2"
    cfg = _trained_stage(folder)
    (folder / "config.yaml").write_bytes(b"\xff not yaml")
    assert stage_output(cfg, reuse=False) == (str(folder / "model_final.pth"), False)
    assert (folder / "config.yaml").read_text() == cfg.dump()
