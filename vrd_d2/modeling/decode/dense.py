"""Dense decoding: the fallbacks for the pairs the certified path leaves, and the reference.

* :func:`linear_dense_topk`: u = sum_r phi_s,r (x) phi_p,r (x) phi_o,r as one batched matmul (a
  Khatri-Rao product [S P, R] @ [R, O]) in float64, with factors shifted by their maxima. Its
  ranks are reliable when its K-th value is far above float64 underflow (e^-600 relative to the
  maximum); the caller rescores the K winners exactly in log space.
* :func:`log_dense_topk`: the same in log space (never underflows; slower).
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

__all__ = ["linear_dense_topk", "log_dense_topk", "dense_topk_triplets", "LINEAR_MIN_LOG"]

# underflow guard of the linear-space fallback: float64 underflows near e^-708
LINEAR_MIN_LOG = -600.0


def linear_dense_topk(s_s, s_p, s_o, kk: int, prior_dense: Optional[Tensor]):
    """Dense in float64 linear space (Khatri-Rao matmul). Returns (flat ids [c,kk], reliable [c])."""
    c, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    x = [t.detach().to(torch.float64) for t in (s_s, s_p, s_o)]
    mx = [t.amax(2, keepdim=True) for t in x]
    rank_log = (mx[0] + mx[1] + mx[2])[..., 0]  # [c, R] log of each rank's largest term
    coef = (rank_log - rank_log.amax(1, keepdim=True)).exp()  # <= 1
    a = (x[0] - mx[0]).exp() * coef[..., None]
    b = (x[1] - mx[1]).exp()
    o = (x[2] - mx[2]).exp()
    kr = (a[:, :, :, None] * b[:, :, None, :]).reshape(c, r, S * P)  # Khatri-Rao product
    u = torch.bmm(kr.transpose(1, 2), o).reshape(c, S * P * O)  # max entry in (0, R]
    if prior_dense is not None:
        u.mul_(prior_dense)
    top_v, top_i = u.topk(kk, dim=1)
    floor = math.exp(LINEAR_MIN_LOG) * (
        float(prior_dense.max()) if prior_dense is not None else 1.0
    )
    return top_i, top_v[:, -1] > floor


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
    n, _, S, P, O, k, w = check_decode_arguments(
        s_s, s_p, s_o, k, prior, pair_log_weight, "dense_topk_triplets"
    )
    total = S * P * O
    kk = min(k, total)
    prior_log = (
        prior.to_dense(log=True).reshape(-1).to(s_s.device, s_s.dtype)
        if prior is not None
        else None
    )
    out_v, out_f = [], []
    for a, b in pair_chunks(n, 3 * total):
        lu = dense_log_unnormalized(
            s_s[a:b].detach(), s_p[a:b].detach(), s_o[a:b].detach()
        ).flatten(1)
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
