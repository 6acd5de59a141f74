"""The public decoders: exact top-K triplets per pair, top-K predicates given labels, and the
per-image top-K with at most k per pair.

The test-time score of triplet t = (i, j, k) in pair n is (in log space)

    score_n(t) = log psi_c,n(t) + log psi_u(t) + w_n

with psi_c = y of eq. 5 (normalized by Z of eq. 6), psi_u the optional :class:`TripletPrior` and
w_n an optional per-pair log weight (log P(sel) + log detector box scores).
:func:`topk_triplets_per_pair` returns exactly what sorting the dense S x P x O score tensor
returns (up to ties), by the cheapest path that is exact for each pair:

1. rank 1: dominance candidates (:mod:`.rank1`);
2. the certified path (:mod:`.certified`): bounds prove which triplets can reach the top K;
3. the dense fallbacks (:mod:`.dense`) for the pairs it cannot certify (flat logits).

All paths are batched over pairs in chunks of a fixed element budget (:mod:`.common`), so memory
is linear in N R (S + P + O) plus the prior's tables, plus one bounded chunk of working tensors.
Device-agnostic (CPU / CUDA); gradients are not tracked (decoding is inference only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..cp_checks import check_labels
from ..triplet_prior import TripletPrior
from .certified import certified_topk
from .checks import (
    check_decode_arguments,
    check_method,
    check_positive_int,
    check_ranked_lists,
    where,
)
from .common import pair_chunks, rescore_sorted, triplet_rows
from .dense import linear_dense_topk, log_dense_topk, selected_dense_topk
from .prior_tables import cached_prior_tables, prior_on_device
from .rank1 import dominance_positions, rank1_topk

__all__ = [
    "DecodeStats",
    "topk_triplets_per_pair",
    "topk_predicates_given_labels",
    "topk_per_image",
]


@dataclass
class DecodeStats:
    """Pairs decoded by each path in one call of :func:`topk_triplets_per_pair` (benchmarks,
    tests): ``bound`` the certified path (and the rank-1 dominance path), ``linear`` the
    linear-space dense fallback (float32 selection or float64), ``log`` the log-space one."""

    bound: int = 0
    linear: int = 0
    log: int = 0

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)


def topk_triplets_per_pair(
    s_s: Tensor,
    s_p: Tensor,
    s_o: Tensor,
    k: int,
    prior: Optional[TripletPrior] = None,
    pair_log_weight: Optional[Tensor] = None,
    *,
    method: str = "auto",
    dense_threshold: int = 4096,
    max_enumerate_fraction: float = 1.0 / 32,
    stats: Optional[DecodeStats] = None,
) -> Tuple[Tensor, Tensor]:
    """Exact top-k triplets of each pair under score = log psi_c + log psi_u + pair_log_weight.

    psi_c is y of eq. 5 normalized by Z of eq. 6; psi_u the prior (if given). Returns what the
    dense S x P x O computation returns (same scores, same triplets up to ties), sorted descending.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
        k: positive int; k' = min(k, S P O) triplets are returned per pair.
        prior: optional TripletPrior of shape (S, P, O).
        pair_log_weight: optional Tensor[N] added to every score of the pair (e.g. log P(sel) +
            log box scores); -inf allowed, NaN / +inf not. It cannot change a pair's ranking.
        method: "auto" (bound path, then dense fallbacks for uncertified pairs), "bound" (same
            but always tries the bound path), "linear" / "log" (force a dense fallback; tests).
        dense_threshold: with method="auto", tensors with S P O <= this go straight to dense.
        max_enumerate_fraction: the bound path enumerates at most this fraction of S P O
            triplets per pair; pairs needing more (flat logits) go to the dense fallback.
        stats: optional :class:`DecodeStats`, filled with the pairs decoded by each path.
    Returns:
        (log_scores Tensor[N, k'], triplets LongTensor[N, k', 3] (subject, predicate, object)).
    """
    n, r, S, P, O, k, w = check_decode_arguments(s_s, s_p, s_o, k, prior, pair_log_weight, "topk_triplets_per_pair")
    check_method(method, where("topk_triplets_per_pair"))
    stats = stats if stats is not None else DecodeStats()
    stats.bound = stats.linear = stats.log = 0
    tables = None
    if prior is not None:
        if method in ("auto", "bound"):
            tables = cached_prior_tables(prior, s_s.device, s_s.dtype)
        prior = prior_on_device(prior, s_s.device)
    total = S * P * O
    kk = min(k, total)
    dev, dt = s_s.device, s_s.dtype
    scores = torch.full((n, kk), -math.inf, dtype=dt, device=dev)
    flat_ids = torch.zeros((n, kk), dtype=torch.long, device=dev)
    if n == 0:
        return scores, triplet_rows(flat_ids, P, O)
    s_s, s_p, s_o = s_s.detach(), s_p.detach(), s_o.detach()
    done = torch.zeros(n, dtype=torch.bool, device=dev)

    if r == 1 and method == "auto" and total > dense_threshold:
        width = len(dominance_positions(kk, min(kk, S), min(kk, P), min(kk, O)))
        width += prior.num_support if prior is not None else 0
        for a, b in pair_chunks(n, 8 * width):
            f = rank1_topk(s_s[a:b], s_p[a:b], s_o[a:b], kk, prior)
            scores[a:b], flat_ids[a:b] = rescore_sorted(s_s[a:b], s_p[a:b], s_o[a:b], f, prior)
        done[:] = True
    use_bound = not bool(done.all()) and (method == "bound" or (method == "auto" and total > dense_threshold))
    if use_bound:
        v, f, ok = certified_topk(s_s, s_p, s_o, kk, tables, max_enumerate_fraction)
        scores[ok], flat_ids[ok], done = v[ok], f[ok], ok
    stats.bound = int(done.sum())  # rank-1 dominance path counted here too
    todo = (~done).nonzero().squeeze(1)
    if todo.numel() and method in ("auto", "bound", "linear"):
        prior_dense = prior.to_dense().reshape(-1).to(dev, torch.float64) if prior is not None else None
        # float32 first (half the memory traffic of float64), candidates rescored exactly
        prior_scaled = (prior_dense / prior_dense.max()).float() if prior_dense is not None else None
        for a, b in pair_chunks(todo.numel(), total + r * S * P + 2 * kk * O):
            idx = todo[a:b]
            f, ok = selected_dense_topk(s_s[idx], s_p[idx], s_o[idx], kk, prior_scaled)
            if not bool(ok.any()):
                continue
            sel = idx[ok]
            sc, fs = rescore_sorted(s_s[sel], s_p[sel], s_o[sel], f[ok], prior)
            scores[sel], flat_ids[sel], done[sel] = sc[:, :kk], fs[:, :kk], True
        todo = (~done).nonzero().squeeze(1)
        for a, b in pair_chunks(todo.numel(), 2 * total + r * (S * P + S + P + O)):
            idx = todo[a:b]
            f, ok = linear_dense_topk(s_s[idx], s_p[idx], s_o[idx], kk, prior_dense)
            if not bool(ok.any()):
                continue
            sel = idx[ok]
            sc, fs = rescore_sorted(s_s[sel], s_p[sel], s_o[sel], f[ok], prior)
            scores[sel], flat_ids[sel], done[sel] = sc, fs, True
        stats.linear = int(done.sum()) - stats.bound
        todo = (~done).nonzero().squeeze(1)
    stats.log = int(todo.numel())
    if todo.numel():
        prior_log = prior.to_dense(log=True).reshape(-1).to(dev, dt) if prior is not None else None
        for a, b in pair_chunks(todo.numel(), 3 * total):
            idx = todo[a:b]
            v, f = log_dense_topk(s_s[idx], s_p[idx], s_o[idx], kk, prior_log)
            scores[idx], flat_ids[idx] = v, f

    # normalize by Z (eq. 6) and add the per-pair weights: neither changes a pair's ranking
    a_s, a_p, a_o = s_s.logsumexp(-1), s_p.logsumexp(-1), s_o.logsumexp(-1)
    scores = scores - (a_s + a_p + a_o).logsumexp(-1)[:, None]
    if w is not None:
        scores = scores + w[:, None]
    return scores, triplet_rows(flat_ids, P, O)


def topk_predicates_given_labels(
    s_s: Tensor,
    s_p: Tensor,
    s_o: Tensor,
    subject: Tensor,
    object: Tensor,
    k: int,
    prior: Optional[TripletPrior] = None,
    pair_log_weight: Optional[Tensor] = None,
    *,
    normalize: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Top-k predicates per pair when the subject and object labels are given (predicate
    classification, or detector labels).

    Score of predicate j: log psi_c(s_n, j, o_n) + log psi_u(s_n, j, o_n) + pair_log_weight[n],
    i.e. the entries of the full score tensor at the given labels (eq. 5, Z of eq. 6). With
    ``normalize=True`` each pair's scores are renormalized over predicates before the weight is
    added, so without a prior they are log P(predicate | subject, object, pair).

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
        subject: LongTensor[N]; object: LongTensor[N] class ids (0-based).
        k: positive int, k' = min(k, P).
        prior, pair_log_weight: as in :func:`topk_triplets_per_pair`.
    Returns:
        (log_scores Tensor[N, k'], triplets LongTensor[N, k', 3]) sorted descending; the subject
        and object columns repeat the given labels.
    """
    function = "topk_predicates_given_labels"
    n, _, S, P, O, k, w = check_decode_arguments(s_s, s_p, s_o, k, prior, pair_log_weight, function)
    check_labels(subject, object, n, S, O, s_s.device, where(function))
    if prior is not None:
        prior = prior_on_device(prior, s_s.device)
    kk = min(k, P)
    s_s, s_p, s_o = s_s.detach(), s_p.detach(), s_o.detach()
    ar = torch.arange(n, device=s_s.device)
    sub, obj = subject.long(), object.long()
    c = s_s[ar, :, sub] + s_o[ar, :, obj]  # [N, R]
    score = (c[..., None] + s_p).logsumexp(1)  # [N, P] unnormalized log psi_c
    a_s, a_p, a_o = s_s.logsumexp(-1), s_p.logsumexp(-1), s_o.logsumexp(-1)
    score = score - (a_s + a_p + a_o).logsumexp(-1)[:, None]
    if prior is not None:
        preds = torch.arange(P, device=s_s.device)
        flat = (sub[:, None] * P + preds[None]) * O + obj[:, None]
        score = score + prior.log_prob_flat(flat).to(score)
    if normalize:
        score = score - score.logsumexp(1, keepdim=True)
    if w is not None:
        score = score + w[:, None]
    v, j = score.topk(kk, dim=1)
    trip = torch.stack((sub[:, None].expand(n, kk), j, obj[:, None].expand(n, kk)), dim=-1)
    return v, trip


def topk_per_image(
    log_scores: Tensor, triplets: Tensor, k_per_pair: Optional[int], topk: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The top ``topk`` triplets of one image with at most ``k_per_pair`` per pair.

    Exact given per-pair lists sorted descending that hold at least min(k_per_pair, topk) entries
    (e.g. the output of :func:`topk_triplets_per_pair` with k = topk).

    Args:
        log_scores: Tensor[N, k'] per-pair scores, each row sorted descending.
        triplets: LongTensor[N, k', 3] (subject, predicate, object).
        k_per_pair: positive int (1, 10, ...) or 0 / None for free k.
        topk: positive int.
    Returns:
        (pair_idx LongTensor[T], triplets LongTensor[T, 3], log_scores Tensor[T],
        pair_rank LongTensor[T]) sorted by score descending, T = min(topk, N * min(k_per_pair, k')).
        pair_rank is the 0-based rank of the triplet within its pair.
    """
    ctx = where("topk_per_image")
    check_ranked_lists(log_scores, triplets, ctx)
    topk = check_positive_int(topk, "topk", ctx)
    if k_per_pair is None or (not isinstance(k_per_pair, bool) and isinstance(k_per_pair, int) and k_per_pair == 0):
        kp = log_scores.shape[1]
    else:
        kp = min(
            check_positive_int(k_per_pair, "k_per_pair (0 or None = free)", ctx),
            log_scores.shape[1],
        )
    v = log_scores[:, :kp].reshape(-1)
    t = min(topk, v.numel())
    # stable sort: ties keep (pair, rank) order, so results are deterministic
    order = v.sort(descending=True, stable=True).indices[:t]
    pair_idx = torch.div(order, kp, rounding_mode="floor") if kp else order
    rank = order % kp if kp else order
    return pair_idx, triplets[pair_idx, rank], v[order], rank
