"""The triplet prior psi_u of the relation heads: the training triplet counts, saved in checkpoints
as the buffer ``triplet_counts`` [S, P, S], and the TripletPrior rebuilt from them."""

import logging
from typing import Optional, Tuple

import torch
from torch import Tensor

from .cp_triplet import TripletPrior

__all__ = ["CountsPrior", "triplet_counts_from_config", "check_triplet_counts", "keep_training_counts"]

logger = logging.getLogger(__name__)
_FILE = "vrd_d2/modeling/relation_prior.py"


class CountsPrior(TripletPrior):
    """A TripletPrior rebuilt from a ``triplet_counts`` buffer. Its own (data-dependent,
    variable-size) buffers are not saved: fvcore's checkpointer skips tensors whose shape differs
    from the model's, so a sparse prior could not load into a fresh model."""

    def register_buffer(self, name, tensor, persistent=True):
        super().register_buffer(name, tensor, persistent=False)


def check_triplet_counts(counts, shape: Tuple[int, int, int], where: str) -> Tensor:
    """``counts`` (Tensor / ndarray [S, P, S], None = all zero: a uniform prior) as float32 of
    ``shape``; a ValueError naming ``where`` otherwise."""
    if counts is None:
        return torch.zeros(shape)
    counts = torch.as_tensor(counts, dtype=torch.float32)
    if tuple(counts.shape) != tuple(shape):
        raise ValueError(
            f"{where}: triplet_counts shape {tuple(counts.shape)} != (NUM_CLASSES, "
            f"NUM_PREDICATES, NUM_CLASSES) = {tuple(shape)}"
        )
    return counts


def triplet_counts_from_config(cfg) -> Optional[Tensor]:
    """Counts of the first training dataset (Tensor[S, P, S], a copy), or None without the prior
    (MODEL.VRD.USE_PRIOR False) or without a training dataset."""
    v = cfg.MODEL.VRD
    if not (v.USE_PRIOR and len(cfg.DATASETS.TRAIN)):
        return None
    from ..data import get_triplet_counts  # the data package; imported lazily

    s, p = cfg.MODEL.ROI_HEADS.NUM_CLASSES, v.NUM_PREDICATES
    name = cfg.DATASETS.TRAIN[0]
    counts = get_triplet_counts(name)
    if tuple(counts.shape) != (s, p, s):
        raise ValueError(
            f"{_FILE}: get_triplet_counts({name!r}) has shape {tuple(counts.shape)}, the "
            f"config expects (MODEL.ROI_HEADS.NUM_CLASSES, MODEL.VRD.NUM_PREDICATES, "
            f"NUM_CLASSES) = {(s, p, s)}"
        )
    return torch.tensor(counts, dtype=torch.float32)  # a copy: the cached counts stay read-only


def keep_training_counts(state_dict, key: str, current: Tensor) -> None:
    """Before loading: a checkpoint whose ``key`` holds all-zero counts (a model built without a
    training set) does not replace non-zero ``current`` counts built from the training set."""
    incoming = state_dict.get(key)
    if incoming is not None and float(incoming.sum()) == 0 and float(current.sum()) > 0:
        logger.info("vrd_d2: the checkpoint's triplet prior is empty: keeping the one built from the training set")
        state_dict[key] = current.clone()
