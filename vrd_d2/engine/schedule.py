"""Schedules in epochs: SOLVER.EPOCHS and SOLVER.EPOCH_STEPS become SOLVER.MAX_ITER and
SOLVER.STEPS from the number of images the stage trains on and SOLVER.IMS_PER_BATCH."""

import logging
import math
from typing import List

from detectron2.data import get_detection_dataset_dicts

from ..data import filter_images_without_relations
from ..utils.checks import check_float, check_int

__all__ = ["stage_training_dicts", "resolve_schedule", "iterations_for_epochs", "check_solver"]

logger = logging.getLogger(__name__)


def stage_training_dicts(cfg) -> List[dict]:
    """The dataset dicts a stage trains on: for ``TRAIN_STAGE`` "detector" detectron2's (images
    with annotations when DATALOADER.FILTER_EMPTY_ANNOTATIONS), for the relation stages the images
    with relations (:func:`vrd_d2.data.filter_images_without_relations`)."""
    if cfg.MODEL.VRD.TRAIN_STAGE == "detector":
        return get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    return filter_images_without_relations(dicts)


def iterations_for_epochs(epochs: float, num_images: int, ims_per_batch: int) -> int:
    """``ceil(epochs * num_images / ims_per_batch)``, at least 1."""
    return max(1, math.ceil(epochs * num_images / ims_per_batch - 1e-9))


def check_solver(cfg) -> None:
    """SOLVER.IMS_PER_BATCH >= 1, SOLVER.EPOCHS >= 0 and, when EPOCHS is 0, SOLVER.MAX_ITER >= 1:
    a ValueError naming the key before anything is built (detectron2 / fvcore would fail later
    with a bare assertion, EPOCHS with IMS_PER_BATCH 0 with a ZeroDivisionError)."""
    s = cfg.SOLVER
    check_int(s.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH", low=1, where="config")
    epochs = check_float(s.EPOCHS, "SOLVER.EPOCHS", low=0.0, where="config")
    if epochs == 0:
        check_int(s.MAX_ITER, "SOLVER.MAX_ITER (SOLVER.EPOCHS is 0)", low=1, where="config")


def resolve_schedule(cfg, num_images: int = None):
    """A copy of ``cfg`` with SOLVER.MAX_ITER and SOLVER.STEPS computed from SOLVER.EPOCHS and
    SOLVER.EPOCH_STEPS (logged); ``cfg`` itself when SOLVER.EPOCHS is 0.

    Args:
        num_images: images per epoch; by default ``len(stage_training_dicts(cfg))``.
    """
    check_solver(cfg)
    s = cfg.SOLVER
    epochs = float(s.EPOCHS)
    if epochs == 0:
        return cfg
    if num_images is None:
        num_images = len(stage_training_dicts(cfg))
    if num_images <= 0:
        raise ValueError(
            f"SOLVER.EPOCHS {epochs}: the training set {tuple(cfg.DATASETS.TRAIN)} has no image "
            f"to train stage {cfg.MODEL.VRD.TRAIN_STAGE!r} on"
        )
    for e in s.EPOCH_STEPS:
        check_float(e, "SOLVER.EPOCH_STEPS entry", low=0.0, high=epochs, where="config")
    max_iter = iterations_for_epochs(epochs, num_images, s.IMS_PER_BATCH)
    steps = tuple(sorted({min(max_iter - 1, round(e * num_images / s.IMS_PER_BATCH)) for e in s.EPOCH_STEPS}))
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = max_iter, steps
    cfg.freeze()
    logger.info(
        f"Schedule: {epochs:g} epochs of {num_images} images at {s.IMS_PER_BATCH} images per batch "
        f"= SOLVER.MAX_ITER {max_iter}; lr x {s.GAMMA:g} at epochs {tuple(s.EPOCH_STEPS)} = "
        f"SOLVER.STEPS {steps}"
    )
    return cfg
