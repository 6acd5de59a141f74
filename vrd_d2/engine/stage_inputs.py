"""Pre-flight check of a stage's input checkpoint (MODEL.WEIGHTS), before any data or training:
missing file, a checkpoint of another CP rank, of another dataset (class / predicate counts) or of
an earlier stage is an error naming the file, the tensor and both shapes."""
import logging
import os
from unittest import mock
from typing import Dict, Tuple

import torch
from detectron2.modeling import build_model

from ..modeling.roi_heads import _CountsPrior

__all__ = ["check_stage_inputs", "expected_state_shapes", "read_checkpoint_shapes", "RELATION_HEAD_PREFIXES"]

logger = logging.getLogger(__name__)

# the relation head: a mismatch here is always an error (fvcore would skip it with a warning and
# leave random weights, which a later stage keeps frozen)
RELATION_HEAD_PREFIXES = ("roi_heads.subject_branch.", "roi_heads.object_branch.", "roi_heads.predicate_branch.",
                          "roi_heads.selection_head.", "roi_heads.spatial_branch.", "roi_heads.triplet_counts")


def expected_state_shapes(cfg) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of the model ``cfg`` builds, without allocating it (meta device)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "meta"
    # USE_PRIOR off: the counts buffer keeps its [S, P, S] shape without reading the dataset; the
    # prior built from it has only non-persistent buffers and needs real data, so it is skipped
    cfg.MODEL.VRD.USE_PRIOR = False
    with torch.device("meta"), mock.patch.object(_CountsPrior, "from_counts", _empty_prior):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _empty_prior(counts):
    return _CountsPrior(*counts.shape)


def read_checkpoint_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of a ``.pth`` checkpoint's model (``{"model": state_dict}`` or a bare
    state_dict), read with ``torch.load(weights_only=True)``: no pickle is executed."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 (torch raises several types for unreadable files)
        raise ValueError(f"MODEL.WEIGHTS {path}: not a checkpoint readable with torch.load(weights_only=True) "
                         f"({type(e).__name__}: {e})") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"MODEL.WEIGHTS {path}: expected a dict of tensors (or {{'model': ...}}), "
                         f"found {type(state if state is not None else ckpt).__name__}")
    prefix = "module." if state and all(k.startswith("module.") for k in state) else ""
    return {k[len(prefix):]: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _describe(cfg) -> str:
    v = cfg.MODEL.VRD
    return (f"MODEL.VRD.RANK {v.RANK}, MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, "
            f"MODEL.VRD.NUM_PREDICATES {v.NUM_PREDICATES}, MODEL.VRD.FC_DIMS {list(v.FC_DIMS)}")


def check_stage_inputs(cfg, expected: Dict[str, Tuple[int, ...]] = None) -> None:
    """Raise ValueError (FileNotFoundError for a missing file) when MODEL.WEIGHTS cannot feed the
    stage ``cfg`` describes:

    - the file is missing;
    - a relation-head tensor or ``triplet_counts`` has another shape than the model's (another
      rank, dataset or head width), in any stage;
    - outside the detector stage (the relation stages and evaluation, where the detector is
      frozen): any other tensor of another shape, or model tensors absent from the checkpoint
      (e.g. ImageNet weights given to stage 2).

    In the detector stage, detector tensors of another shape are re-initialised (fine-tuning from
    another dataset's detector), which is logged. "" (no weights), URLs and ``.pkl`` files
    (detectron2's model zoo; not unpickled here) are not checked.

    Args:
        expected: ``{key: shape}`` of the model (default: :func:`expected_state_shapes`).
    """
    path = cfg.MODEL.WEIGHTS
    if not path or "://" in path:
        return
    stage = cfg.MODEL.VRD.TRAIN_STAGE
    where = f"MODEL.WEIGHTS {path} (input of TRAIN_STAGE {stage!r}, OUTPUT_DIR {cfg.OUTPUT_DIR})"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: file not found; train the stage that writes it first")
    if path.endswith(".pkl"):
        logger.info(f"{where}: a pickle file, not unpickled here; shapes not checked")
        return
    found = read_checkpoint_shapes(path)
    expected = expected if expected is not None else expected_state_shapes(cfg)
    bad, reinit = [], []
    for k, shape in expected.items():
        if k in found and found[k] != shape:
            (bad if stage != "detector" or k.startswith(RELATION_HEAD_PREFIXES) else reinit).append(
                f"{k}: checkpoint {found[k]}, model {shape}")
    if bad:
        raise ValueError(f"{where}: {len(bad)} tensor(s) do not match the model ({_describe(cfg)}), was it "
                         f"trained with another rank, dataset or head width?\n  " + "\n  ".join(bad))
    if reinit:
        logger.warning(f"{where}: {len(reinit)} detector tensor(s) of another shape are re-initialised:\n  "
                       + "\n  ".join(reinit))
    missing = [k for k in expected if k not in found]
    if stage != "detector" and missing:
        raise ValueError(f"{where}: {len(missing)} model tensor(s) absent from the checkpoint, which the "
                         f"{stage!r} stage would keep at their random initial values (is it the output of "
                         f"the previous stage?), e.g. {missing[:5]}")
