"""The triplet prior psi_u of the relation heads: the training triplet counts, saved in checkpoints
as the buffer ``triplet_counts`` [S, P, S], and the TripletPrior rebuilt from them. The counts are
given to the model (``VRDROIHeads.set_triplet_counts``); counting a dataset is the data package's
job (``vrd_d2.data.triplet_counts_from_config``)."""

import logging
from typing import Tuple

import torch
from torch import Tensor

from .cp_triplet import TripletPrior

__all__ = ["CountsPrior", "check_triplet_counts", "keep_training_counts"]

logger = logging.getLogger(__name__)


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


def keep_training_counts(state_dict, key: str, current: Tensor) -> None:
    """Before loading: a checkpoint whose ``key`` holds all-zero counts (a model built without a
    training set) does not replace non-zero ``current`` counts built from the training set."""
    incoming = state_dict.get(key)
    if incoming is not None and float(incoming.sum()) == 0 and float(current.sum()) > 0:
        logger.info("vrd_d2: the checkpoint's triplet prior is empty: keeping the one built from the training set")
        state_dict[key] = current.clone()
