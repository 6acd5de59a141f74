"""The triplet prior psi_u of the paper: add-1 smoothed training counts, stored sparse (pure
torch). Flat triplet ids follow :func:`~.cp_checks.unravel_triplets`."""

from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .cp_checks import check_index, check_range

__all__ = ["TripletPrior", "check_prior"]

_FILE = "vrd_d2/modeling/triplet_prior.py"


def check_prior(prior, shape: Tuple[int, int, int], ctx: str) -> None:
    """Validate that ``prior`` is a :class:`TripletPrior` of shape ``(S, P, O)``."""
    if not isinstance(prior, TripletPrior):
        raise ValueError(f"{ctx}: prior must be a TripletPrior or None, found {type(prior).__name__}")
    if tuple(prior.shape) != tuple(shape):
        raise ValueError(f"{ctx}: prior has shape {tuple(prior.shape)} but the factors give (S, P, O) = {tuple(shape)}")


def _checked_counts(counts: Tensor, ctx: str) -> Tensor:
    """``counts`` as float64, or a ValueError naming the first entry that is not a finite,
    non-negative integer (a fractional count has no add-1 reading)."""
    c = counts.to(torch.float64)
    bad = ~torch.isfinite(c) | (c < 0) | (c != c.floor())
    if c.numel() and bool(bad.any()):
        at = tuple(int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"{ctx}: counts {tuple(c.shape)} must be finite non-negative integers, found "
            f"counts{list(at)} = {float(c[at])!r}"
        )
    return c


class TripletPrior(nn.Module):
    """The language/statistics prior psi_u over (subject, predicate, object).

    psi_u(i, j, k) = (count(i, j, k) + 1) / (total + S P O): the training counts add-1 smoothed and
    normalized (the paper's prior). Only ~1% of triplets are ever seen, so the prior is stored
    sparse: the sorted flat ids of the seen triplets (``support_index``, LongTensor[U]) with their
    log-probabilities (``support_log_prob``, Tensor[U]) and the constant off-support value
    ``log_floor = -log(total + S P O)``. All three are buffers, so they follow ``.to(device)`` and
    are saved in checkpoints; loading resizes the data-dependent buffers, so a freshly constructed
    (empty) prior of the same shape can load any saved prior of that shape.

    An empty prior (no counts) is uniform: psi_u = 1 / (S P O).
    """

    def __init__(self, num_subjects: int, num_predicates: int, num_objects: int):
        super().__init__()
        sizes = (num_subjects, num_predicates, num_objects)
        if any((not isinstance(x, (int, np.integer))) or isinstance(x, bool) or x < 1 for x in sizes):
            raise ValueError(f"{_FILE}:TripletPrior: (S, P, O) must be positive ints, found {sizes}")
        self._sizes = tuple(int(x) for x in sizes)
        self.register_buffer("sizes", torch.tensor(self._sizes, dtype=torch.long))
        self.register_buffer("support_index", torch.zeros(0, dtype=torch.long))
        # float64 so that decoding float64 logits sees the exact prior; cast to the logits' dtype on use
        self.register_buffer("support_log_prob", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("log_floor", torch.tensor(-math.log(self.numel), dtype=torch.float64))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_counts(cls, counts: Union[np.ndarray, Tensor]) -> "TripletPrior":
        """Build from training counts.

        Args:
            counts: [S, P, O] non-negative counts (numpy or torch, integer or integral float), e.g.
                ``vrd_d2.data.get_triplet_counts(name)``.
        """
        ctx = f"{_FILE}:TripletPrior.from_counts"
        c = torch.as_tensor(np.asarray(counts) if not isinstance(counts, Tensor) else counts).detach().cpu()
        if c.dim() != 3:
            raise ValueError(f"{ctx}: counts must have shape [S, P, O], found {tuple(c.shape)}")
        c = _checked_counts(c, ctx)
        prior = cls(*c.shape)
        prior.set_counts(c)
        return prior

    def set_counts(self, counts: Tensor) -> None:
        """Replace the prior by the add-1 smoothed, normalized ``counts`` [S, P, O] (finite,
        non-negative integers)."""
        ctx = f"{_FILE}:TripletPrior.set_counts"
        c = torch.as_tensor(counts).detach().cpu()
        if tuple(c.shape) != self._sizes:
            raise ValueError(f"{ctx}: counts shape {tuple(c.shape)} != prior shape {self._sizes}")
        c = _checked_counts(c, ctx)
        flat = c.reshape(-1)
        support = flat.nonzero().squeeze(1)  # ascending: searchsorted needs it
        log_denom = math.log(float(flat.sum()) + self.numel)
        device, dtype = self.support_log_prob.device, self.support_log_prob.dtype
        self.support_index = support.to(device)
        self.support_log_prob = (torch.log1p(flat[support]) - log_denom).to(device=device, dtype=dtype)
        self.log_floor = torch.tensor(-log_denom, dtype=self.log_floor.dtype, device=device)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        sizes = state_dict.get(prefix + "sizes")
        if sizes is not None and tuple(int(x) for x in sizes.tolist()) != self._sizes:
            raise ValueError(
                f"{_FILE}:TripletPrior: checkpoint entry {prefix}sizes has shape (S, P, O) = "
                f"{tuple(int(x) for x in sizes.tolist())}, this prior expects {self._sizes}"
            )
        # the support size depends on the training data: resize before the default copy_
        for name in ("support_index", "support_log_prob"):
            incoming = state_dict.get(prefix + name)
            if incoming is not None and incoming.shape != getattr(self, name).shape:
                cur = getattr(self, name)
                setattr(self, name, torch.empty(incoming.shape, dtype=cur.dtype, device=cur.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ---------------------------------------------------------------- queries
    @property
    def shape(self) -> Tuple[int, int, int]:
        """(S, P, O)."""
        return self._sizes

    @property
    def numel(self) -> int:
        s, p, o = self._sizes
        return s * p * o

    @property
    def num_support(self) -> int:
        """U, the number of triplets seen in training."""
        return int(self.support_index.numel())

    def flat_index(self, triplets: Tensor) -> Tensor:
        """LongTensor[M, 3] (subject, predicate, object) -> LongTensor[M] flat ids."""
        _, p, o = self._sizes
        t = triplets.long()
        return (t[:, 0] * p + t[:, 1]) * o + t[:, 2]

    def log_prob_flat(self, flat: Tensor) -> Tensor:
        """log psi_u for flat triplet ids of any shape (values in [0, S P O)); same shape out."""
        if self.num_support == 0:
            return self.log_floor.expand(flat.shape).clone()
        sup = self.support_index
        pos = torch.searchsorted(sup, flat.reshape(-1).to(sup.device)).clamp_(max=sup.numel() - 1)
        hit = sup[pos] == flat.reshape(-1)
        out = torch.where(hit, self.support_log_prob[pos], self.log_floor)
        return out.reshape(flat.shape)

    def log_prob(self, triplets: Tensor) -> Tensor:
        """log psi_u of triplets.

        Args:
            triplets: LongTensor[M, 3] (subject, predicate, object), 0-based.
        Returns:
            Tensor[M] (dtype of the buffers).
        """
        ctx = f"{_FILE}:TripletPrior.log_prob"
        check_index("triplets", triplets, "[M, 3] (subject, predicate, object)", 2, 3, ctx)
        for col, (name, high) in enumerate(zip(("subject", "predicate", "object"), self._sizes)):
            check_range(f"triplets[:, {col}]", triplets[:, col], high, f"{name} classes of the prior", ctx)
        return self.log_prob_flat(self.flat_index(triplets.to(self.support_index.device)))

    def to_dense(self, log: bool = False) -> Tensor:
        """The dense prior psi_u (or its log if ``log``): Tensor[S, P, O]. For tests / fallback."""
        out = self.log_floor.expand(self.numel).clone()
        out[self.support_index] = self.support_log_prob
        out = out.reshape(self._sizes)
        return out if log else out.exp()

    def extra_repr(self) -> str:
        return f"shape={self._sizes}, support={self.num_support}, log_floor={float(self.log_floor):.4f}"
