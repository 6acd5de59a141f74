"""Stage 0 of the shapes demo (vrd_d2_studies.shapes_demo.backbone_pretrain): the dense cell targets worked by
hand, the weights it writes load into the stage-1 detector's backbone, --reuse, bad input, and
that it learns the classes of the cells it is trained on."""

import os
from types import SimpleNamespace

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from vrd_d2_studies.shapes_demo import backbone_pretrain as bp
from vrd_d2_studies.shapes_demo import runner as shapes_demo


def test_dense_targets_by_hand():
    """128 px image, 4 x 4 cells of 32 px (centres 16, 48, 80, 112). A host box (0, 0, 70, 70) of
    class 2 holds the centres 16 and 48 on both axes; a box (40, 40, 60, 60) of class 4 nested in it
    holds (48, 48) and wins (the smaller box); a shadowed box at the bottom right is ignored; a box
    whose right edge is exactly 80 holds the centre 80 (borders included)."""
    boxes = [(0, 0, 70, 70), (40, 40, 60, 60), (100, 100, 128, 128), (70, 100, 80, 120)]
    t = bp.dense_class_targets(boxes, [2, 4, 1, 5], [False, False, True, False], (128, 128), (4, 4), 6)
    bg, ig = 6, bp.IGNORE
    expected = [
        [2, 2, bg, bg],
        [2, 4, bg, bg],
        [bg, bg, bg, bg],
        [bg, bg, 5, ig],
    ]
    assert t.dtype == torch.int64 and t.tolist() == expected


def test_dense_targets_scale_with_the_image_and_grid():
    """The same box on a 64 x 128 (h x w) image and a 2 x 8 grid: cells are 32 x 16 px."""
    t = bp.dense_class_targets([(16, 0, 48, 20)], [3], [False], (64, 128), (2, 8), 6)
    # column centres 8, 24, 40, 56, ...: 24 and 40 inside [16, 48]; row centres 16, 48: 16 inside [0, 20]
    assert t.tolist() == [[6, 3, 3, 6, 6, 6, 6, 6], [6] * 8]


@pytest.fixture(scope="module")
def quick_options(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage0")
    options = SimpleNamespace(output=str(out), reuse=True, quick=True, opts=[])
    options.prefix = shapes_demo.register_quick_subsets()
    return options


def test_weights_load_into_the_stage1_backbone_and_reuse(quick_options):
    cfg = shapes_demo.build_cfg(quick_options, "backbone", 5)
    path, seconds, info = bp.pretrain_backbone(cfg, "shapes_quick_train", "shapes_quick_val")
    assert path == os.path.join(quick_options.output, "stage0_backbone", "model_final.pth") and seconds > 0
    assert 0.0 <= info["val_cell_accuracy"] <= 100.0
    saved = torch.load(path, weights_only=True)["model"]
    det_cfg = shapes_demo.build_cfg(quick_options, "detector", 5, path)
    model = build_model(det_cfg)
    backbone_keys = {f"backbone.{k}" for k in model.backbone.state_dict()}
    assert set(saved) == backbone_keys
    DetectionCheckpointer(model).load(path)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, saved[f"backbone.{k}"]), k
    mtime = os.path.getmtime(path)
    assert bp.pretrain_backbone(cfg, "shapes_quick_train")[:2] == (path, 0.0)  # reused, untouched
    assert os.path.getmtime(path) == mtime


def test_learns_the_cells_it_is_trained_on(quick_options, tmp_path):
    """200 iterations on the 8 quick training images at 128 px (8 x 8 cells): their object cells
    are classified far above the share of their most frequent class (35%) and a 1-in-6 guess."""
    cfg = shapes_demo.build_cfg(quick_options, "backbone", 5)
    cfg.OUTPUT_DIR = str(tmp_path / "learn")
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.WARMUP_ITERS = 200, 4, 10
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    _, _, info = bp.pretrain_backbone(cfg, "shapes_quick_train", "shapes_quick_train", reuse=False)
    _, targets = bp._images_and_targets("shapes_quick_train", 128, 8, 6)
    fg = targets[(targets >= 0) & (targets < 6)]
    majority = 100.0 * torch.bincount(fg, minlength=6).max().item() / len(fg)
    assert info["val_cell_accuracy"] > max(majority, 100 / 6) + 30, (info, majority)


def test_images_of_different_sizes_are_refused(quick_options):
    name = "stage0_mixed_sizes"
    dicts = [dict(d) for d in DatasetCatalog.get("shapes_quick_train")[:2]]
    dicts[1]["width"] = 100
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(json_file="")
    with pytest.raises(ValueError, match=name):
        bp._images_and_targets(name, 256, 16, 6)


def test_pretrain_backbone_runs_stage0_from_its_config(quick_options, tmp_path):
    """tools/pretrain_backbone.py with configs/Shapes/stage0_backbone.yaml runs stage 0 (not a
    detector training) and refuses --eval-only, which has nothing to evaluate, and a config that is
    not a stage-0 config; tools/train_net.py refuses the stage-0 config (its key is the demo's)."""
    from conftest import REPO_DIR
    from tools_loader import load_tool

    tool = load_tool("pretrain_backbone")
    cfg_file = os.path.join(REPO_DIR, "configs", "Shapes", "stage0_backbone.yaml")
    opts = ["DATASETS.TRAIN", '("shapes_quick_train",)', "DATASETS.TEST", '("shapes_quick_val",)']
    opts += ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()"]
    out = tmp_path / "stage0"
    info = tool.main(["--config-file", cfg_file] + opts + ["OUTPUT_DIR", str(out)])
    assert 0.0 <= info["val_cell_accuracy"] <= 100.0
    saved = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert saved and all(k.startswith("backbone.") for k in saved)
    assert not (out / "metrics.json").exists()  # no detectron2 training ran
    with pytest.raises(ValueError, match="stage 0"):
        tool.main(["--config-file", cfg_file, "--eval-only"] + opts + ["OUTPUT_DIR", str(tmp_path / "x")])
    detector_cfg = os.path.join(REPO_DIR, "configs", "Shapes", "stage1_detector.yaml")
    with pytest.raises(ValueError, match="not a stage-0 config"):
        tool.main(["--config-file", detector_cfg, "OUTPUT_DIR", str(tmp_path / "y")])
    with pytest.raises(KeyError, match="BACKBONE_PRETRAIN"):
        load_tool("train_net").main(["--config-file", cfg_file] + opts + ["OUTPUT_DIR", str(tmp_path / "z")])
    assert not (tmp_path / "y" / "model_final.pth").exists() and not (tmp_path / "z" / "model_final.pth").exists()
