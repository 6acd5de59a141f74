"""Rank 1: the exact top-K from dominance candidates, without bounds or a dense tensor."""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor

from ..cp_checks import unravel_triplets
from ..triplet_prior import TripletPrior

__all__ = ["dominance_positions", "rank1_topk"]


@functools.lru_cache(maxsize=32)
def dominance_positions(kk: int, ms: int, mp: int, mo: int) -> Tensor:
    """Positions (i, j, k) in per-factor descending order with (i+1)(j+1)(k+1) <= kk: LongTensor[C, 3].

    At rank 1 the score is a sum of one term per factor, so the triplet at sorted positions
    (i, j, k) is beaten or tied by the (i+1)(j+1)(k+1) - 1 triplets at smaller-or-equal positions;
    with a larger product it cannot be needed in a top kk. C is about kk (ln kk)^2 / 2 (1.1K for
    kk = 100), and at least kk whenever kk <= ms mp mo."""
    rows = []
    for i in range(min(ms, kk)):
        for j in range(min(mp, kk // (i + 1))):
            for k in range(min(mo, kk // ((i + 1) * (j + 1)))):
                rows.append((i, j, k))
    return torch.tensor(rows, dtype=torch.long)


def rank1_topk(s_s, s_p, s_o, kk: int, prior: Optional[TripletPrior] = None) -> Tensor:
    """Flat ids [n, kk] of the exact top kk at rank 1: among the dominance candidates (see
    _dominance_positions) and, with a prior, every triplet of its support. Off the support psi_u is
    one constant, so an off-support triplet is beaten or tied by every triplet dominating it, and
    the dominance argument still holds; support triplets are all scored."""
    S, P, O = s_s.shape[2], s_p.shape[2], s_o.shape[2]
    a, b, c = s_s[:, 0], s_p[:, 0], s_o[:, 0]
    ms, mp, mo = min(kk, S), min(kk, P), min(kk, O)
    pos = dominance_positions(kk, ms, mp, mo).to(a.device)
    ti, tj, tk = a.topk(ms, dim=1).indices, b.topk(mp, dim=1).indices, c.topk(mo, dim=1).indices
    i = ti.index_select(1, pos[:, 0])
    j = tj.index_select(1, pos[:, 1])
    k = tk.index_select(1, pos[:, 2])
    ids = (i * P + j) * O + k
    value = a.gather(1, i) + b.gather(1, j) + c.gather(1, k)
    if prior is not None and prior.num_support:
        sup = prior.support_index
        at = torch.searchsorted(sup, ids).clamp_(max=sup.numel() - 1)
        value = value.masked_fill(sup[at] == ids, -math.inf)  # scored below, with the support
        si, sj, sk = unravel_triplets(sup, P, O)
        sup_value = a.index_select(1, si) + b.index_select(1, sj) + c.index_select(1, sk)
        sup_value = sup_value + (prior.support_log_prob - prior.log_floor).to(a.dtype)
        value = torch.cat((value, sup_value), 1)
        ids = torch.cat((ids, sup.expand(ids.shape[0], -1)), 1)
    top = value.topk(kk, dim=1).indices
    return ids.gather(1, top)
