"""The non-negative rank-R CP triplet distribution (pure torch); with the triplet prior
(:mod:`.triplet_prior`) and the argument checks (:mod:`.cp_checks`) re-exported here.

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
from typing import Optional, Tuple

import torch
from torch import Tensor

from .cp_checks import (
    check_factors,
    check_labels,
    check_triplets,
    describe_shape,
    unravel_triplets,
)
from .triplet_prior import TripletPrior, check_prior

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


def _log_psi_c_unnormalized(s_s: Tensor, s_p: Tensor, s_o: Tensor, triplets: Tensor, pair_index: Tensor) -> Tensor:
    """log sum_r phi_s,r(i) phi_p,r(j) phi_o,r(k) for listed triplets (numerator of eq. 5): [M]."""
    n_idx = pair_index.long()
    t = triplets.long()
    terms = s_s[n_idx, :, t[:, 0]] + s_p[n_idx, :, t[:, 1]] + s_o[n_idx, :, t[:, 2]]  # [M, R]
    return terms.logsumexp(-1)


def triplet_log_prob(s_s: Tensor, s_p: Tensor, s_o: Tensor, triplets: Tensor, pair_index: Tensor) -> Tensor:
    """log y(i, j, k) of eq. 5 for a list of triplets, each belonging to one pair.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
        triplets: LongTensor[M, 3] rows (subject, predicate, object), 0-based.
        pair_index: LongTensor[M] pair (row of the factors) of each triplet.
    Returns:
        Tensor[M] log probabilities (normalized by Z of eq. 6).
    """
    n, _, s, p, o = check_factors(s_s, s_p, s_o, where="triplet_log_prob")
    check_triplets(triplets, pair_index, n, s, p, o, s_s.device, f"{_FILE}:triplet_log_prob")
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
    check_prior(prior, tuple(s_s.shape[2:]) + (s_p.shape[2], s_o.shape[2]), f"{_FILE}:triplet_log_score")
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
        raise ValueError(f"{_FILE}:cp_nll_loss: reduction must be 'mean', 'sum' or 'none', found {reduction!r}")
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


def predicate_log_conditional(s_s: Tensor, s_p: Tensor, s_o: Tensor, subject: Tensor, object: Tensor) -> Tensor:
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


def crf_log_normalizer(s_s: Tensor, s_p: Tensor, s_o: Tensor, prior: TripletPrior, pairs_per_chunk: int = 64) -> Tensor:
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
            f"{ctx}: prior must be a TripletPrior (the normalizer sums psi_c psi_u), found " f"{type(prior).__name__}"
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
        terms = (s_s[a:b].index_select(2, si) + s_p[a:b].index_select(2, sj) + s_o[a:b].index_select(2, sk)).logsumexp(
            1
        )  # [c, U]: log of y's numerator
        on_support = (terms - log_z[a:b, None] + log_excess).logsumexp(1)
        out.append(torch.logaddexp(on_support, log_floor))
    return torch.cat(out)
