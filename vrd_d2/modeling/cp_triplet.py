"""The non-negative rank-R CP triplet distribution and the triplet prior (pure torch).

Dupty, Zhang & Lee, "Visual Relationship Detection with Low Rank Non-Negative Tensor
Decomposition", AAAI 2020. For a batch of N (subject box, object box) pairs the network predicts
log-factors ``s_s [N, R, S]``, ``s_p [N, R, P]``, ``s_o [N, R, O]``; the factors are
``phi = exp(s)`` (non-negative by construction) and the triplet distribution is

    y(i, j, k) = sum_r phi_s,r(i) phi_p,r(j) phi_o,r(k) / Z                      (eq. 5)
    Z = sum_r (sum_i phi_s,r(i)) (sum_j phi_p,r(j)) (sum_k phi_o,r(k))           (eq. 6)

Everything here is computed in log space (``logsumexp``), so logits of any size are safe: the
paper's plain ``exp`` overflows in float32 above ~88. Nothing here builds the S x P x O tensor
except :func:`dense_log_prob`, the reference used by tests, benchmarks and the decoder's fallback.

Conventions: class ids are 0-based; a triplet is a row ``(subject, predicate, object)``; a flat
triplet id is ``(subject * P + predicate) * O + object`` (row-major over ``[S, P, O]``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "check_factors",
    "log_partition",
    "triplet_log_prob",
    "triplet_log_score",
    "cp_nll_loss",
    "marginals",
    "log_marginals",
    "predicate_log_conditional",
    "dense_log_prob",
    "TripletPrior",
    "crf_log_normalizer",
    "unravel_triplets",
    "describe_shape",
    "check_labels",
    "check_prior",
    "dense_log_unnormalized",
]

_FILE = "vrd_d2/modeling/cp_triplet.py"


def unravel_triplets(flat: Tensor, P: int, O: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Flat triplet ids (any shape; id = (subject P + predicate) O + object) -> (subject,
    predicate, object) ids of the same shape: the inverse of :meth:`TripletPrior.flat_index`.

    Raises:
        ValueError if ``P`` or ``O`` is not a positive int, ``flat`` not an integer tensor, or an
        id is negative (floor division would silently wrap it to another triplet).
    """
    ctx = f"{_FILE}:unravel_triplets"
    for name, size in (("P", P), ("O", O)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{ctx}: {name} must be a positive int, found {size!r}")
    if not isinstance(flat, Tensor) or flat.is_floating_point() or flat.is_complex():
        raise ValueError(
            f"{ctx}: flat must be an integer tensor of triplet ids, found "
            f"{flat.dtype if isinstance(flat, Tensor) else type(flat).__name__}"
        )
    if flat.numel() and int(flat.min()) < 0:
        raise ValueError(f"{ctx}: flat triplet ids must be >= 0, found {int(flat.min())}")
    return flat // (P * O), (flat // O) % P, flat % O


# --------------------------------------------------------------------------------------------
# input validation: every public entry checks its arguments and names them in the error
# --------------------------------------------------------------------------------------------
def describe_shape(t) -> str:
    """The shape of a tensor as a tuple string, or the type name of anything else (for errors)."""
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_factors(
    s_s: Tensor, s_p: Tensor, s_o: Tensor, *, where: str = ""
) -> Tuple[int, int, int, int, int]:
    """Validate CP log-factors; return ``(N, R, S, P, O)``.

    Args:
        s_s: Tensor[N, R, S] subject log-factors; s_p: Tensor[N, R, P]; s_o: Tensor[N, R, O].
            Same floating dtype and device, finite (no NaN / inf).
    Raises:
        ValueError naming the argument, the expected and the found shape / dtype.
    """
    ctx = f"{_FILE}:{where or 'check_factors'}"
    for name, t in (("s_s", s_s), ("s_p", s_p), ("s_o", s_o)):
        if not isinstance(t, Tensor):
            raise ValueError(
                f"{ctx}: {name} must be a torch.Tensor [N, R, C], found {type(t).__name__}"
            )
        if t.dim() != 3:
            raise ValueError(f"{ctx}: {name} must be 3-D [N, R, C], found shape {describe_shape(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{ctx}: {name} must be a floating tensor, found dtype {t.dtype}")
    if not (s_s.shape[0] == s_p.shape[0] == s_o.shape[0]):
        raise ValueError(
            f"{ctx}: s_s, s_p, s_o must have the same number of pairs N (dim 0), found shapes "
            f"{describe_shape(s_s)}, {describe_shape(s_p)}, {describe_shape(s_o)}"
        )
    if not (s_s.shape[1] == s_p.shape[1] == s_o.shape[1]):
        raise ValueError(
            f"{ctx}: s_s, s_p, s_o must have the same rank R (dim 1), found shapes "
            f"{describe_shape(s_s)}, {describe_shape(s_p)}, {describe_shape(s_o)}"
        )
    if s_s.shape[1] < 1 or min(s_s.shape[2], s_p.shape[2], s_o.shape[2]) < 1:
        raise ValueError(
            f"{ctx}: rank R and class counts must be >= 1, found shapes "
            f"{describe_shape(s_s)}, {describe_shape(s_p)}, {describe_shape(s_o)}"
        )
    if not (s_s.dtype == s_p.dtype == s_o.dtype):
        raise ValueError(
            f"{ctx}: s_s, s_p, s_o dtypes differ: {s_s.dtype}, {s_p.dtype}, {s_o.dtype}"
        )
    if not (s_s.device == s_p.device == s_o.device):
        raise ValueError(
            f"{ctx}: s_s, s_p, s_o devices differ: {s_s.device}, {s_p.device}, {s_o.device}"
        )
    for name, t in (("s_s", s_s), ("s_p", s_p), ("s_o", s_o)):
        if t.numel() and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{ctx}: {name} {describe_shape(t)} contains NaN or inf logits")
    if s_s.numel():
        _check_log_partition_finite(s_s.detach(), s_p.detach(), s_o.detach(), ctx)
    n, r, s = s_s.shape
    return n, r, s, s_p.shape[2], s_o.shape[2]


def _check_log_partition_finite(s_s: Tensor, s_p: Tensor, s_o: Tensor, ctx: str) -> None:
    """Finite logits can still overflow log Z (eq. 6): e.g. float32 logits of 3e38 give
    logsumexp sums of inf, then NaN probabilities. Refuse them, naming the largest factor."""
    sums = _log_factor_sums(s_s, s_p, s_o)
    terms = sums[0] + sums[1] + sums[2]  # [N, R]
    bad = ~torch.isfinite(terms)
    if not bool(bad.any()):
        return
    n, r = (int(x) for x in bad.nonzero()[0])
    values = {name: float(a[n, r]) for name, a in zip(("s_s", "s_p", "s_o"), sums)}
    # a sum of three overflows only if one term reaches a third of the largest float
    third = torch.finfo(s_s.dtype).max / 3
    worst = [name for name, v in values.items() if not abs(v) < third]
    found = ", ".join(f"{name} {v:.3g}" for name, v in values.items())
    raise ValueError(
        f"{ctx}: log Z (eq. 6) is not finite in {s_s.dtype} at pair {n}, rank {r}: the logits of "
        f"{', '.join(worst)} are too large (logsumexp per factor: {found}); scale the logits "
        "down or use float64"
    )


def _check_index(name: str, t, shape_desc: str, ndim: int, last: Optional[int], ctx: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(
            f"{ctx}: {name} must be a torch.Tensor {shape_desc}, found {type(t).__name__}"
        )
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(
            f"{ctx}: {name} must be an integer (long) tensor {shape_desc}, found dtype {t.dtype}"
        )
    if t.dim() != ndim or (last is not None and t.shape[-1] != last):
        raise ValueError(f"{ctx}: {name} must have shape {shape_desc}, found {describe_shape(t)}")


def _check_range(name: str, t: Tensor, high: int, what: str, ctx: str) -> None:
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= high:
        raise ValueError(
            f"{ctx}: {name} ids must be in [0, {high}) ({what}), found range [{lo}, {hi}]"
        )


def _check_triplets(triplets, pair_index, n, s, p, o, device, ctx) -> None:
    _check_index("triplets", triplets, "[M, 3] (subject, predicate, object)", 2, 3, ctx)
    _check_index("pair_index", pair_index, "[M]", 1, None, ctx)
    if pair_index.shape[0] != triplets.shape[0]:
        raise ValueError(
            f"{ctx}: pair_index {describe_shape(pair_index)} must have one entry per row of triplets {describe_shape(triplets)}"
        )
    for name, t in (("triplets", triplets), ("pair_index", pair_index)):
        if t.device != device:
            raise ValueError(f"{ctx}: {name} is on {t.device} but the factors are on {device}")
    _check_range("triplets[:, 0]", triplets[:, 0], s, "subject classes S", ctx)
    _check_range("triplets[:, 1]", triplets[:, 1], p, "predicate classes P", ctx)
    _check_range("triplets[:, 2]", triplets[:, 2], o, "object classes O", ctx)
    _check_range("pair_index", pair_index, n, "pairs N", ctx)


def check_labels(subject, object_, n, s, o, device, ctx) -> None:
    """Validate per-pair class ids: ``subject`` LongTensor[n] in [0, s), ``object_`` in [0, o)."""
    for name, t, high, what in (
        ("subject", subject, s, "subject classes S"),
        ("object", object_, o, "object classes O"),
    ):
        _check_index(name, t, f"[N={n}]", 1, None, ctx)
        if t.shape[0] != n:
            raise ValueError(f"{ctx}: {name} must have shape [N={n}], found {describe_shape(t)}")
        if t.device != device:
            raise ValueError(f"{ctx}: {name} is on {t.device} but the factors are on {device}")
        _check_range(name, t, high, what, ctx)


# --------------------------------------------------------------------------------------------
# the CP distribution
# --------------------------------------------------------------------------------------------
def _log_factor_sums(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """log sum_i phi_s,r(i) etc.: three Tensor[N, R]."""
    return s_s.logsumexp(-1), s_p.logsumexp(-1), s_o.logsumexp(-1)


def log_partition(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tensor:
    """log Z per pair by the factorized sum of eq. 6, in log space.

    log Z = logsumexp_r [ logsumexp_i s_s,r(i) + logsumexp_j s_p,r(j) + logsumexp_k s_o,r(k) ].
    Cost and memory O(N R (S + P + O)); exact and stable for any finite logits.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
    Returns:
        Tensor[N].
    """
    check_factors(s_s, s_p, s_o, where="log_partition")
    a_s, a_p, a_o = _log_factor_sums(s_s, s_p, s_o)
    return (a_s + a_p + a_o).logsumexp(-1)


def _log_psi_c_unnormalized(
    s_s: Tensor, s_p: Tensor, s_o: Tensor, triplets: Tensor, pair_index: Tensor
) -> Tensor:
    """log sum_r phi_s,r(i) phi_p,r(j) phi_o,r(k) for listed triplets (numerator of eq. 5): [M]."""
    n_idx = pair_index.long()
    t = triplets.long()
    terms = s_s[n_idx, :, t[:, 0]] + s_p[n_idx, :, t[:, 1]] + s_o[n_idx, :, t[:, 2]]  # [M, R]
    return terms.logsumexp(-1)


def triplet_log_prob(
    s_s: Tensor, s_p: Tensor, s_o: Tensor, triplets: Tensor, pair_index: Tensor
) -> Tensor:
    """log y(i, j, k) of eq. 5 for a list of triplets, each belonging to one pair.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
        triplets: LongTensor[M, 3] rows (subject, predicate, object), 0-based.
        pair_index: LongTensor[M] pair (row of the factors) of each triplet.
    Returns:
        Tensor[M] log probabilities (normalized by Z of eq. 6).
    """
    n, _, s, p, o = check_factors(s_s, s_p, s_o, where="triplet_log_prob")
    _check_triplets(triplets, pair_index, n, s, p, o, s_s.device, f"{_FILE}:triplet_log_prob")
    if triplets.shape[0] == 0:
        return s_s.new_zeros(0)
    a_s, a_p, a_o = _log_factor_sums(s_s, s_p, s_o)
    log_z = (a_s + a_p + a_o).logsumexp(-1)  # eq. 6
    return _log_psi_c_unnormalized(s_s, s_p, s_o, triplets, pair_index) - log_z[pair_index.long()]


def triplet_log_score(
    s_s: Tensor,
    s_p: Tensor,
    s_o: Tensor,
    triplets: Tensor,
    pair_index: Tensor,
    prior: Optional["TripletPrior"] = None,
) -> Tensor:
    """log psi_c + log psi_u: the paper's combined triplet score (in log space) of listed triplets.

    Args: as :func:`triplet_log_prob`; ``prior`` a :class:`TripletPrior` of shape (S, P, O) or None.
    Returns:
        Tensor[M].
    """
    lp = triplet_log_prob(s_s, s_p, s_o, triplets, pair_index)
    if prior is None:
        return lp
    check_prior(
        prior, tuple(s_s.shape[2:]) + (s_p.shape[2], s_o.shape[2]), f"{_FILE}:triplet_log_score"
    )
    return lp + prior.log_prob(triplets).to(lp)


def cp_nll_loss(
    s_s: Tensor,
    s_p: Tensor,
    s_o: Tensor,
    triplets: Tensor,
    pair_index: Tensor,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of annotated triplets (the paper's training loss).

    A pair may carry several annotated triplets (the multimodal case): its loss is minus the sum
    of their log-likelihoods log y (eq. 5 with Z of eq. 6). Pairs with no triplet contribute 0.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
        triplets: LongTensor[M, 3] (subject, predicate, object); pair_index: LongTensor[M].
        reduction: "mean" (over pairs with >= 1 triplet; 0 if none), "sum", or "none" (Tensor[N]).
    Returns:
        scalar Tensor, or Tensor[N] for reduction="none".
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(
            f"{_FILE}:cp_nll_loss: reduction must be 'mean', 'sum' or 'none', found {reduction!r}"
        )
    lp = triplet_log_prob(s_s, s_p, s_o, triplets, pair_index)
    n = s_s.shape[0]
    per_pair = s_s.new_zeros(n).index_add(0, pair_index.long(), -lp)
    if lp.numel() == 0:
        # no annotated triplet: a 0 that is still attached to the graph (DDP, loss.backward())
        per_pair = per_pair + 0.0 * (s_s.sum() + s_p.sum() + s_o.sum())
    if reduction == "none":
        return per_pair
    if reduction == "sum":
        return per_pair.sum()
    has = torch.zeros(n, dtype=torch.bool, device=s_s.device)
    has[pair_index.long()] = True
    return per_pair.sum() / has.sum().clamp(min=1).to(per_pair.dtype)


def log_marginals(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """log of the marginals of y over each variable (eq. 5 summed over the two others).

    log p_s(i) = logsumexp_r [ s_s,r(i) + log sum_j phi_p,r(j) + log sum_k phi_o,r(k) ] - log Z.

    Returns:
        (Tensor[N, S], Tensor[N, P], Tensor[N, O]).
    """
    check_factors(s_s, s_p, s_o, where="log_marginals")
    a_s, a_p, a_o = _log_factor_sums(s_s, s_p, s_o)
    log_z = (a_s + a_p + a_o).logsumexp(-1)[:, None]
    ls = (s_s + (a_p + a_o)[..., None]).logsumexp(1) - log_z
    lp = (s_p + (a_s + a_o)[..., None]).logsumexp(1) - log_z
    lo = (s_o + (a_s + a_p)[..., None]).logsumexp(1) - log_z
    return ls, lp, lo


def marginals(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Marginal distributions of y over subject, predicate, object.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
    Returns:
        (p_s Tensor[N, S], p_p Tensor[N, P], p_o Tensor[N, O]), each row summing to 1.
    """
    return tuple(x.exp() for x in log_marginals(s_s, s_p, s_o))  # type: ignore[return-value]


def predicate_log_conditional(
    s_s: Tensor, s_p: Tensor, s_o: Tensor, subject: Tensor, object: Tensor
) -> Tensor:
    """log P(predicate | subject, object, pair) = log y(s, :, o) - log sum_j y(s, j, o).

    Used for predicate classification (labels given). With c_r = s_s,r(s) + s_o,r(o):
    log P(j | s, o) = logsumexp_r [c_r + s_p,r(j)] - logsumexp_r [c_r + logsumexp_j s_p,r(j)].

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
        subject: LongTensor[N] subject class per pair; object: LongTensor[N] object class per pair.
    Returns:
        Tensor[N, P], rows summing to 1 after exp.
    """
    n, _, s, _, o = check_factors(s_s, s_p, s_o, where="predicate_log_conditional")
    check_labels(subject, object, n, s, o, s_s.device, f"{_FILE}:predicate_log_conditional")
    ar = torch.arange(n, device=s_s.device)
    c = s_s[ar, :, subject.long()] + s_o[ar, :, object.long()]  # [N, R]
    joint = (c[..., None] + s_p).logsumexp(1)  # [N, P]
    return joint - joint.logsumexp(-1, keepdim=True)


def dense_log_unnormalized(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tensor:
    """log sum_r phi_s,r(i) phi_p,r(j) phi_o,r(k) for every triplet: Tensor[N, S, P, O].

    Accumulates over r with logaddexp so memory is O(N S P O), not O(N R S P O).
    """
    acc = None
    for r in range(s_s.shape[1]):
        term = s_s[:, r, :, None, None] + s_p[:, r, None, :, None] + s_o[:, r, None, None, :]
        acc = term if acc is None else torch.logaddexp(acc, term)
    return acc


def dense_log_prob(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tensor:
    """Dense log y over all triplets, normalized by summing the dense tensor (not eq. 6).

    Reference / fallback only: memory O(N S P O). Independent of :func:`log_partition`, so tests
    can check eq. 6 against it.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
    Returns:
        Tensor[N, S, P, O].
    """
    check_factors(s_s, s_p, s_o, where="dense_log_prob")
    lu = dense_log_unnormalized(s_s, s_p, s_o)
    return lu - lu.flatten(1).logsumexp(-1)[:, None, None, None]


# --------------------------------------------------------------------------------------------
# the triplet prior psi_u
# --------------------------------------------------------------------------------------------
def check_prior(prior, shape: Tuple[int, int, int], ctx: str) -> None:
    """Validate that ``prior`` is a :class:`TripletPrior` of shape ``(S, P, O)``."""
    if not isinstance(prior, TripletPrior):
        raise ValueError(
            f"{ctx}: prior must be a TripletPrior or None, found {type(prior).__name__}"
        )
    if tuple(prior.shape) != tuple(shape):
        raise ValueError(
            f"{ctx}: prior has shape {tuple(prior.shape)} but the factors give (S, P, O) = {tuple(shape)}"
        )


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
        if any(
            (not isinstance(x, (int, np.integer))) or isinstance(x, bool) or x < 1 for x in sizes
        ):
            raise ValueError(
                f"{_FILE}:TripletPrior: (S, P, O) must be positive ints, found {sizes}"
            )
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
        c = (
            torch.as_tensor(np.asarray(counts) if not isinstance(counts, Tensor) else counts)
            .detach()
            .cpu()
        )
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
            raise ValueError(
                f"{ctx}: counts shape {tuple(c.shape)} != prior shape {self._sizes}"
            )
        c = _checked_counts(c, ctx)
        flat = c.reshape(-1)
        support = flat.nonzero().squeeze(1)  # ascending: searchsorted needs it
        log_denom = math.log(float(flat.sum()) + self.numel)
        device, dtype = self.support_log_prob.device, self.support_log_prob.dtype
        self.support_index = support.to(device)
        self.support_log_prob = (torch.log1p(flat[support]) - log_denom).to(
            device=device, dtype=dtype
        )
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
        _check_index("triplets", triplets, "[M, 3] (subject, predicate, object)", 2, 3, ctx)
        for col, (name, high) in enumerate(zip(("subject", "predicate", "object"), self._sizes)):
            _check_range(
                f"triplets[:, {col}]", triplets[:, col], high, f"{name} classes of the prior", ctx
            )
        return self.log_prob_flat(self.flat_index(triplets.to(self.support_index.device)))

    def to_dense(self, log: bool = False) -> Tensor:
        """The dense prior psi_u (or its log if ``log``): Tensor[S, P, O]. For tests / fallback."""
        out = self.log_floor.expand(self.numel).clone()
        out[self.support_index] = self.support_log_prob
        out = out.reshape(self._sizes)
        return out if log else out.exp()

    def extra_repr(self) -> str:
        return f"shape={self._sizes}, support={self.num_support}, log_floor={float(self.log_floor):.4f}"


def crf_log_normalizer(
    s_s: Tensor, s_p: Tensor, s_o: Tensor, prior: TripletPrior, pairs_per_chunk: int = 64
) -> Tensor:
    """log sum_t psi_c(t | pair) psi_u(t) per pair: the normalizer of the piecewise CRF
    P(t | b) = psi_c psi_u / sum (the paper's product of the CP factor and the prior).

    psi_u equals its floor off the support and psi_c sums to 1, so the sum is
    floor + sum over the support of (psi_u(t) - floor) psi_c(t): exact, linear in
    pairs x R x (support size), no dense tensor.

    Args:
        s_s, s_p, s_o: Tensor[N, R, S], [N, R, P], [N, R, O] log-factors.
        prior: a TripletPrior of shape (S, P, O).
    Returns:
        Tensor[N] in the dtype of the factors.
    """
    n, _, S, P, O = check_factors(s_s, s_p, s_o, where="crf_log_normalizer")
    ctx = f"{_FILE}:crf_log_normalizer"
    if not isinstance(prior, TripletPrior):
        raise ValueError(
            f"{ctx}: prior must be a TripletPrior (the normalizer sums psi_c psi_u), found "
            f"{type(prior).__name__}"
        )
    check_prior(prior, (S, P, O), ctx)
    dt = s_s.dtype
    log_floor = prior.log_floor.to(s_s.device, dt)
    sup = prior.support_index.to(s_s.device)
    if n == 0 or sup.numel() == 0:
        return log_floor.expand(n).clone()
    lpu = prior.support_log_prob.to(s_s.device, torch.float64)
    # log(psi_u - floor) on the support (psi_u > floor there: counts >= 1)
    log_excess = (lpu + torch.log1p(-torch.exp(prior.log_floor.to(lpu) - lpu))).to(dt)
    si, sj, sk = unravel_triplets(sup, P, O)
    log_z = log_partition(s_s, s_p, s_o)
    out = []
    for a in range(0, n, pairs_per_chunk):
        b = min(n, a + pairs_per_chunk)
        terms = (s_s[a:b].index_select(2, si) + s_p[a:b].index_select(2, sj)
                 + s_o[a:b].index_select(2, sk)).logsumexp(1)  # [c, U]: log of y's numerator
        on_support = (terms - log_z[a:b, None] + log_excess).logsumexp(1)
        out.append(torch.logaddexp(on_support, log_floor))
    return torch.cat(out)
