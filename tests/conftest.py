"""Shared test scaffolding: the repo root, the real-data folder (skipped when absent), tiny configs.

Tests that read the real VRD files use the ``shared_vrd`` fixture (or ``SHARED_VRD`` with
``needs_shared_vrd``); both skip cleanly when ``../shared/data/vrd`` (or ``$VRD_D2_SHARED_DATA``)
is absent, as on a fresh clone outside the workplace.
"""

import logging
import os
from pathlib import Path

import pytest

import vrd_d2_studies.shapes_demo  # noqa: F401  (registers the shapes datasets the tiny configs train on)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_VRD = Path(os.getenv("VRD_D2_SHARED_DATA", REPO.parent / "shared" / "data" / "vrd"))
needs_shared_vrd = pytest.mark.skipif(
    not (SHARED_VRD / "annotations_train.json").is_file(),
    reason=f"real VRD annotations not found in {SHARED_VRD} (set VRD_D2_SHARED_DATA)",
)


@pytest.fixture(autouse=True)
def _drop_log_handlers_on_closed_streams():
    """After each test: detectron2's ``setup_logger`` is lru-cached, so a StreamHandler it bound to
    one test's captured stdout outlives that capture; every later record through it printed
    "--- Logging error --- ValueError: I/O operation on closed file" into later tests' output."""
    yield
    for logger in [logging.getLogger()] + list(logging.Logger.manager.loggerDict.values()):
        for handler in list(getattr(logger, "handlers", ())):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_vrd() -> Path:
    """``../shared/data/vrd``; skips the test when the folder is absent."""
    if not (SHARED_VRD / "annotations_train.json").is_file():
        pytest.skip(f"real VRD annotations not found in {SHARED_VRD} (set VRD_D2_SHARED_DATA)")
    return SHARED_VRD


def tiny_config(config_file: str = "Shapes/geometry_only.yaml", *opts):
    """A detectron2 config with the vrd_d2 keys, merged from ``configs/<config_file>`` and ``opts``."""
    from detectron2.config import get_cfg

    from vrd_d2 import add_vrd_config
    from vrd_d2_studies.shapes_demo.config import add_shapes_demo_config

    cfg = get_cfg()
    add_vrd_config(cfg)
    if config_file.startswith("Shapes/"):
        add_shapes_demo_config(cfg)  # the demo's stage 0 has a key of its own
    cfg.merge_from_file(str(CONFIGS / config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture
def tiny_cfg():
    """The CPU-sized geometry-only Shapes config (a function: call it with a config file and opts)."""
    return tiny_config


# the same paths as strings, for the tests that build paths with os.path
REPO_DIR = str(REPO)
SHARED_VRD_DIR = str(SHARED_VRD)

# a relation head shrunk to a few channels on a 1/64-width VGG: builds and trains on CPU in seconds
SMALL_HEAD = [
    "MODEL.VRD.FC_DIMS",
    "[8]",
    "MODEL.VRD.SPATIAL_DIM",
    "4",
    "MODEL.VRD.SPATIAL_CONV_DIMS",
    "[2, 2]",
    "MODEL.VRD.SPATIAL_MASK_SIZE",
    "8",
    "MODEL.VRD.SELECTION_FC_DIM",
    "4",
    "MODEL.VGG.WIDTH_DIVISOR",
    "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "8",
]

# the triplet stage of a net shrunk to a few channels (tools/train_net.py overrides): the two
# distributed-training tests start from it
TINY_TRIPLET_NET = [
    "MODEL.VGG.WIDTH_DIVISOR",
    "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "32",
    "MODEL.VRD.FC_DIMS",
    "[32]",
    "MODEL.VRD.SELECTION_FC_DIM",
    "16",
    "MODEL.VRD.SPATIAL_DIM",
    "16",
    "MODEL.VRD.SPATIAL_CONV_DIMS",
    "[4, 8]",
    "MODEL.VRD.SPATIAL_MASK_SIZE",
    "16",
    "MODEL.VRD.TRAIN_STAGE",
    "triplet",
    "MODEL.VRD.MODE",
    "phrase_cls",
    "MODEL.WEIGHTS",
    "",
]
