"""Dense decoding: the fallbacks for the pairs the certified path leaves, and the reference.

* :func:`linear_dense_tensor`: u = sum_r phi_s,r (x) phi_p,r (x) phi_o,r for a chunk of pairs as
  one batched matrix product (a Khatri-Rao product [S P, R] @ [R, O]), factors shifted by their
  maxima.
* :func:`selected_dense_topk` (first fallback): that tensor in float32, the winners found among
  the rows of largest maxima (no full sort), with proven rounding margins; the caller rescores
  the candidates exactly in log space. Near-ties or underflow mark a pair unreliable, then
* :func:`linear_dense_topk`: the same tensor in float64 and a full top-K (reliable when its K-th
  value is far above float64 underflow, e^-600 relative to the maximum), then
* :func:`log_dense_topk`: the same in log space (never underflows; slowest).
* :func:`dense_topk_triplets`: the public reference, the dense log-space tensor of every pair.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..cp_triplet import TripletPrior, dense_log_unnormalized
from .checks import check_decode_arguments
from .common import pair_chunks, triplet_rows

__all__ = [
    "linear_dense_tensor",
    "selected_dense_topk",
    "linear_dense_topk",
    "log_dense_topk",
    "dense_topk_triplets",
    "LINEAR_MIN_LOG",
    "dense_predicates_given_labels",
]

# underflow guard of the linear-space fallback: float64 underflows near e^-708
LINEAR_MIN_LOG = -600.0
# the float32 selection bounds rounding for terms above e^-_LOW of the largest (float32 normal
# numbers reach e^-87)
_LOW = 60.0


def linear_dense_tensor(s_s: Tensor, s_p: Tensor, s_o: Tensor, dtype: torch.dtype) -> Tensor:
    """u / exp(top) for every triplet of c pairs: Tensor[c, S P, O] in ``dtype``, row (i P + j),
    column k, so ``.reshape(c, -1)`` is indexed by flat triplet id.

    One batched matrix product, the Khatri-Rao product [S P, R] @ [R, O] of the factors shifted by
    their maxima (each rank's weight on the subject factor), so the largest entry is in (0, R].
    The shifts are taken in float64 (exact for float32 logits) before the cast to ``dtype``.
    """
    c, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    x = [t.detach().to(torch.float64) for t in (s_s, s_p, s_o)]
    mx = [t.amax(2, keepdim=True) for t in x]
    rank_log = mx[0] + mx[1] + mx[2]  # [c, R, 1] log of each rank's largest term
    shift_s = (x[0] - mx[0]) + (rank_log - rank_log.amax(1, keepdim=True))
    a = shift_s.to(dtype).exp_()
    b = (x[1] - mx[1]).to(dtype).exp_()
    o = (x[2] - mx[2]).to(dtype).exp_()
    kr = (a[:, :, :, None] * b[:, :, None, :]).reshape(c, r, S * P)
    return torch.bmm(kr.transpose(1, 2), o)


def linear_dense_topk(s_s, s_p, s_o, kk: int, prior_dense: Optional[Tensor]):
    """Dense in float64 linear space. Returns (flat ids [c,kk], reliable [c])."""
    c = s_s.shape[0]
    u = linear_dense_tensor(s_s, s_p, s_o, torch.float64).reshape(c, -1)
    if prior_dense is not None:
        u.mul_(prior_dense)
    top_v, top_i = u.topk(kk, dim=1)
    floor = math.exp(LINEAR_MIN_LOG) * (float(prior_dense.max()) if prior_dense is not None else 1.0)
    return top_i, top_v[:, -1] > floor


def _float32_margin(v: Tensor, rank: int) -> Tensor:
    """The smallest float32 value an entry of true value >= the true K-th may take, given the
    computed K-th value ``v``. Computed entries are within ``rel`` relative plus ``slack``
    absolute of the true ones: entries above e^-LOW of the largest term carry rounding of their
    shifted logits (|shift| <= LOW each, 2^-24 relative), of three exps and of the rank-R dot
    product; terms below e^-LOW (underflow included) sum to at most ``slack``."""
    rel = (4 * _LOW + 8 * rank + 32) * 2.0**-24
    slack = 2 * rank * math.exp(-_LOW)
    return (v - slack) * ((1 - rel) / (1 + rel)) - slack


def selected_dense_topk(
    s_s, s_p, s_o, kk: int, prior_scaled: Optional[Tensor], margin: int = 32
) -> Tuple[Tensor, Tensor]:
    """Candidates for the exact top-kk from the float32 dense tensor, at BLAS speed.

    The tensor is one batched matrix product (:func:`linear_dense_tensor`), times the prior
    scaled to max 1 (``prior_scaled`` Tensor[S P O] float32 or None). No full sort: the K-th
    largest row maximum (row = (subject, predicate), over objects) lower-bounds the K-th entry,
    so the winners lie in the rows of largest maxima; the top ``kk + margin`` rows are gathered
    and their top ``kk + margin`` entries taken. Rounding is covered by :func:`_float32_margin`:
    a pair is reliable when the first row and the first entry left out are below the margin of
    the K-th value (else near-ties or underflow: the caller uses float64).

    Returns:
        (flat ids LongTensor[c, K'] with K' >= kk holding every true top-kk triplet of a reliable
        pair (to be rescored exactly), reliable BoolTensor[c]).
    """
    c, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    u = linear_dense_tensor(s_s, s_p, s_o, torch.float32)  # [c, S P, O]
    if prior_scaled is not None:
        u.mul_(prior_scaled.view(1, S * P, O))
    ok = torch.ones(c, dtype=torch.bool, device=u.device)
    n_rows = S * P
    if kk + margin < n_rows:
        row_v, rows = u.amax(2).topk(kk + margin + 1, dim=1)
        # K rows hold K distinct entries >= their maxima: the K-th row maximum <= the K-th entry
        ok &= row_v[:, -1] < _float32_margin(row_v[:, kk - 1], r)
        rows = rows[:, :-1]
        u = u.gather(1, rows[:, :, None].expand(-1, -1, O))
    else:
        rows = torch.arange(n_rows, device=u.device).expand(c, -1)
    u = u.reshape(c, -1)
    if kk + margin < u.shape[1]:
        top_v, top_i = u.topk(kk + margin + 1, dim=1)
        ok &= top_v[:, -1] < _float32_margin(top_v[:, kk - 1], r)
        top_v, top_i = top_v[:, :-1], top_i[:, :-1]
    else:
        top_v, top_i = u.topk(u.shape[1], dim=1)
    # far below the largest term the slack dominates: no reliable order there
    ok &= _float32_margin(top_v[:, kk - 1], r) > 0
    flat = rows.gather(1, torch.div(top_i, O, rounding_mode="floor")) * O + top_i % O
    return flat, ok


def log_dense_topk(s_s, s_p, s_o, kk: int, prior_log_dense: Optional[Tensor]):
    """Dense in log space: (scores [c,kk] unnormalized log u + log psi_u, flat ids [c,kk])."""
    lu = dense_log_unnormalized(s_s, s_p, s_o).flatten(1)
    if prior_log_dense is not None:
        lu = lu + prior_log_dense
    return lu.topk(kk, dim=1)


def dense_topk_triplets(
    s_s: Tensor,
    s_p: Tensor,
    s_o: Tensor,
    k: int,
    prior: Optional[TripletPrior] = None,
    pair_log_weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Reference: same contract as :func:`~.api.topk_triplets_per_pair`, by materializing the
    dense log-space score tensor (normalized by its own sum, not eq. 6). Chunked over pairs."""
    n, _, S, P, O, k, w = check_decode_arguments(s_s, s_p, s_o, k, prior, pair_log_weight, "dense_topk_triplets")
    total = S * P * O
    kk = min(k, total)
    prior_log = prior.to_dense(log=True).reshape(-1).to(s_s.device, s_s.dtype) if prior is not None else None
    out_v, out_f = [], []
    for a, b in pair_chunks(n, 3 * total):
        lu = dense_log_unnormalized(s_s[a:b].detach(), s_p[a:b].detach(), s_o[a:b].detach()).flatten(1)
        lp = lu - lu.logsumexp(1, keepdim=True)
        if prior_log is not None:
            lp = lp + prior_log
        v, f = lp.topk(kk, dim=1)
        out_v.append(v)
        out_f.append(f)
    if n == 0:
        v = s_s.new_zeros((0, kk))
        f = torch.zeros((0, kk), dtype=torch.long, device=s_s.device)
    else:
        v, f = torch.cat(out_v), torch.cat(out_f)
    if w is not None:
        v = v + w[:, None]
    return v, triplet_rows(f, P, O)


def dense_predicates_given_labels(
    s_s: Tensor,
    s_p: Tensor,
    s_o: Tensor,
    subject: Tensor,
    object: Tensor,
    k: int,
    prior=None,
    pair_log_weight: Optional[Tensor] = None,
    *,
    normalize: bool = False,
) -> Tuple[Tensor, Tensor]:
    """The paper's dense predcls decoding, same contract as
    :func:`~vrd_d2.modeling.decode.topk_predicates_given_labels`: the dense log psi_c (normalized
    by the sum of the dense tensor) plus log psi_u for every triplet of each pair, read at the
    given labels, then top-k predicates. Chunked over pairs."""
    n, _, S, P, O, k, w = check_decode_arguments(
        s_s, s_p, s_o, k, prior, pair_log_weight, "dense_predicates_given_labels"
    )
    prior_log = prior.to_dense(log=True).to(s_s.device, s_s.dtype) if prior is not None else None
    scores = [s_s.new_zeros((0, P))]
    for a, b in pair_chunks(n, 3 * S * P * O):
        lu = dense_log_unnormalized(s_s[a:b].detach(), s_p[a:b].detach(), s_o[a:b].detach())
        lp = lu - lu.flatten(1).logsumexp(1)[:, None, None, None]
        if prior_log is not None:
            lp = lp + prior_log
        scores.append(lp[torch.arange(b - a, device=lp.device), subject[a:b].long(), :, object[a:b].long()])
    score = torch.cat(scores)
    if normalize:
        score = score - score.logsumexp(1, keepdim=True)
    if w is not None:
        score = score + w[:, None]
    v, j = score.topk(min(k, P), dim=1)
    sub, obj = subject.long()[:, None].expand_as(j), object.long()[:, None].expand_as(j)
    return v, torch.stack((sub, j, obj), dim=-1)
