"""Pre-flight check of a stage's input checkpoint (MODEL.WEIGHTS), before any data or training:
missing file, a checkpoint of another CP rank, of another dataset (class / predicate counts) or of
an earlier stage is an error naming the file, the tensor and both shapes."""

import logging
import os
from typing import Dict, Set, Tuple

import torch
from detectron2.modeling import build_model

from ..config import resolve_pair_features
from ..modeling.relation_predictor import SELECTION_MODULES, TRIPLET_MODULES
from ..modeling.roi_heads import relation_box_head_from_detector, version1_key_now

__all__ = ["check_stage_inputs", "check_evaluation_mode", "expected_state_shapes", "read_checkpoint_shapes"]

logger = logging.getLogger(__name__)


def expected_state_shapes(cfg) -> Tuple[Dict[str, Tuple[int, ...]], Set[str]]:
    """``({key: shape}, trained keys)`` of the model ``cfg`` builds, without allocating it (meta
    device); the trained keys are the parameters with ``requires_grad`` in its TRAIN_STAGE."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "meta"
    # build_model reads no dataset: the triplet counts keep their [S, P, S] shape with no values
    # (the Trainer sets them after building)
    with torch.device("meta"):
        model = build_model(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes, {k for k, p in model.named_parameters() if p.requires_grad}


def read_checkpoint_shapes(path: str) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of a ``.pth`` checkpoint's model (``{"model": state_dict}`` or a bare
    state_dict), read with ``torch.load(weights_only=True)``: no pickle is executed."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 (torch raises several types for unreadable files)
        raise ValueError(
            f"MODEL.WEIGHTS {path}: not a checkpoint readable with torch.load(weights_only=True) "
            f"({type(e).__name__}: {e})"
        ) from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(
            f"MODEL.WEIGHTS {path}: expected a dict of tensors (or {{'model': ...}}), "
            f"found {type(state if state is not None else ckpt).__name__}"
        )
    prefix = "module." if state and all(k.startswith("module.") for k in state) else ""
    return _version2_names({k[len(prefix) :]: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)})


def _version2_names(shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
    """The names VRDROIHeads loads a checkpoint's tensors under: checkpoints written before the
    relation predictor existed hold its branches at ``roi_heads.<branch>.*`` (now
    ``roi_heads.relation_predictor.<branch>.*``); a current name wins over an old one. A checkpoint
    without the relation stages' box head loads the detector's into it."""
    moved = set(TRIPLET_MODULES) | set(SELECTION_MODULES)
    renamed = {k: version1_key_now(k, "roi_heads.", moved) for k in shapes}
    out = {k: v for k, v in shapes.items() if renamed[k] is None}
    for k in sorted(k for k, now in renamed.items() if now is not None):
        out.setdefault(renamed[k], shapes[k])
    relation_box_head_from_detector(out, "roi_heads.")
    return out


def _describe(cfg) -> str:
    v = cfg.MODEL.VRD
    return (
        f"MODEL.VRD.RANK {v.RANK}, MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, "
        f"MODEL.VRD.NUM_PREDICATES {v.NUM_PREDICATES}, MODEL.VRD.FC_DIMS {list(v.FC_DIMS)}"
    )


def check_stage_inputs(cfg, eval_only: bool = False) -> None:
    """Raise when MODEL.WEIGHTS cannot feed the stage ``cfg`` describes, before any data is read
    or training starts: FileNotFoundError for a missing file, ValueError naming the file, each
    tensor and both shapes when

    - a tensor the stage keeps frozen (or, with ``eval_only``, any tensor) has another shape
      than the model's: another CP rank, dataset (class / predicate counts) or head width. fvcore
      would skip it with a warning and leave random weights that this stage never trains;
    - a tensor the stage fine-tunes (MODEL.VRD.TRAIN_ON_PROPOSALS: stage 4) has another shape;
    - tensors the stage keeps frozen are absent (e.g. ImageNet weights given to stage 2).

    Tensors a stage trains from scratch (stage 2's CP and spatial branches, stage 3's selection
    head, the detector stage: everything) are re-initialised when their shape differs, which is
    logged: stage 2 of every rank starts from the one stage-1 detector. "" (no weights), URLs and
    ``.pkl`` files (detectron2's model zoo; not unpickled here) are not checked.
    """
    if eval_only or cfg.DATASETS.TEST:  # a training run evaluates DATASETS.TEST at its end
        check_evaluation_mode(cfg)
    path = cfg.MODEL.WEIGHTS
    if not path or "://" in path:
        return
    stage = "evaluation" if eval_only else cfg.MODEL.VRD.TRAIN_STAGE
    where = f"MODEL.WEIGHTS {path} (input of {stage!r}, OUTPUT_DIR {cfg.OUTPUT_DIR})"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: file not found; train the stage that writes it first")
    if path.endswith(".pkl"):
        logger.info(f"{where}: a pickle file, not unpickled here; shapes not checked")
        return
    found = read_checkpoint_shapes(path)
    expected, trained = expected_state_shapes(cfg)
    if eval_only or cfg.MODEL.VRD.TRAIN_ON_PROPOSALS:
        trained = set()
    elif stage == "detector":
        trained = set(expected)
    bad, reinit = [], []
    for k, shape in expected.items():
        if k in found and found[k] != shape:
            (reinit if k in trained else bad).append(f"{k}: checkpoint {found[k]}, model {shape}")
    if bad:
        raise ValueError(
            f"{where}: {len(bad)} tensor(s) do not match the model ({_describe(cfg)}), was it "
            f"trained with another rank, dataset or head width?\n  " + "\n  ".join(bad)
        )
    if reinit:
        logger.warning(
            f"{where}: {len(reinit)} tensor(s) of another shape, which this stage trains, are "
            f"re-initialised ({_describe(cfg)}):\n  " + "\n  ".join(reinit)
        )
    missing = [k for k in expected if k not in found and k not in trained]
    if missing:
        raise ValueError(
            f"{where}: {len(missing)} model tensor(s) absent from the checkpoint, which the "
            f"{stage!r} stage would keep at their random initial values (is it the output of "
            f"the previous stage?), e.g. {missing[:5]}"
        )


def check_evaluation_mode(cfg) -> None:
    """Refuse to evaluate MODEL.VRD.MODE "sgdet" with the geometry-only head (MODEL.VRD.FEATURES
    "geometry") unless it was fine-tuned on proposals (MODEL.VRD.TRAIN_ON_PROPOSALS): that head is
    trained on given boxes next to a detector that never trained, whose detections would score
    zeros. Given detections are scored with MODE "predcls" / "phrase_cls" on a detections dataset
    (``register_lu_detections``)."""
    vrd = cfg.MODEL.VRD
    if vrd.MODE == "sgdet" and resolve_pair_features(cfg) == "geometry" and not vrd.TRAIN_ON_PROPOSALS:
        raise ValueError(
            f"MODEL.VRD.MODE 'sgdet' with MODEL.VRD.FEATURES 'geometry' (OUTPUT_DIR {cfg.OUTPUT_DIR}): "
            f"the geometry-only head has no trained detector to find boxes; evaluate it with MODE "
            f"'predcls' or 'phrase_cls' (given boxes, e.g. a detections dataset)"
        )
