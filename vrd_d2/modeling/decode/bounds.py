"""Certified bounds of the exact decoder (:mod:`.certified`).

* :func:`peak_lower_bound`, :func:`prior_lower_bound`: tau, a lower bound on each pair's true
  K-th best score, from the scores of K distinct triplets (the peaks of each rank; the prior's
  strongest cells and entries).
* :func:`pairwise_upper_bounds`: u(i, j, k) <= min(h_ik, h_ij, h_kj), three tables of pairwise
  bounds, each one batched matrix product.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .common import exact_log_numerator
from .prior_tables import SEED_TOP_PRIOR, PriorTables

__all__ = ["block_side", "peak_lower_bound", "prior_lower_bound", "pairwise_upper_bounds"]


def block_side(kk: int, sizes) -> int:
    """The side m of each rank's seed block: its top-m classes of each factor, m^3 >= kk."""
    S, P, O = sizes
    m = max(1, math.ceil(kk ** (1.0 / 3.0)) + 1)
    while min(m, S) * min(m, P) * min(m, O) < kk and m < max(S, P, O):
        m += 1
    return m


def peak_lower_bound(s_s, s_p, s_o, kk: int, tables: Optional[PriorTables]) -> Tensor:
    """A lower bound tau [c] on the true kk-th best score (log u + log psi_u) from the peaks of
    each rank: the kk-th largest of lower estimates of the scores of kk distinct triplets.
    term_r(t) = s_s,r(i) + s_p,r(j) + s_o,r(k) <= log u(t), so term_r + log psi_u <= score.

    Each rank r's block is its top-m classes of each factor (:func:`block_side`).
    * R = 1: the kk-th largest term of the block + the smallest log psi_u;
    * R > 1: the 2 kk triplets of largest term_r over all ranks' blocks, deduplicated and scored
      exactly (+ log psi_u), so the seed follows every rank's peaks together.
    Rounding of the estimates is covered by the margin the caller subtracts from tau.
    """
    c, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    m = block_side(kk, (S, P, O))
    v_s, i_s = s_s.topk(min(m, S), dim=2)  # [c, R, ms]
    v_p, i_p = s_p.topk(min(m, P), dim=2)
    v_o, i_o = s_o.topk(min(m, O), dim=2)
    ms, mp, mo = i_s.shape[2], i_p.shape[2], i_o.shape[2]
    term = (v_s[..., :, None, None] + v_p[..., None, :, None] + v_o[..., None, None, :]).reshape(c, r, -1)
    if r == 1:
        # the smallest psi_u stands in for each triplet's own (prior_lower_bound covers the
        # prior's peaks)
        low_est = term[:, 0] + tables.min_log_prior if tables is not None else term[:, 0]
        return low_est.topk(kk, dim=1).values[:, -1]
    # the 2 kk largest terms over all ranks' blocks hold each rank's kk largest (a rank alone
    # gives kk triplets above its kk-th), with room for the triplets two ranks share
    block = term.shape[2]
    best = term.reshape(c, -1).topk(min(2 * kk, r * block), dim=1).indices
    rank, pos = torch.div(best, block, rounding_mode="floor"), best % block
    ci = i_s.reshape(c, -1).gather(1, rank * ms + torch.div(pos, mp * mo, rounding_mode="floor"))
    cj = i_p.reshape(c, -1).gather(1, rank * mp + torch.div(pos, mo, rounding_mode="floor") % mp)
    ck = i_o.reshape(c, -1).gather(1, rank * mo + pos % mo)
    fid = (ci * P + cj) * O + ck
    # blocks of different ranks overlap: a duplicate would overstate tau
    fid, perm = fid.sort(dim=1)
    ci, cj, ck = ci.gather(1, perm), cj.gather(1, perm), ck.gather(1, perm)
    score = exact_log_numerator(s_s, s_p, s_o, ci, cj, ck)
    if tables is not None:
        score = score + tables.lookup(fid)
    dup = torch.zeros_like(fid, dtype=torch.bool)
    dup[:, 1:] = fid[:, 1:] == fid[:, :-1]
    score = score.masked_fill(dup, -math.inf)
    tau = score.topk(min(kk, score.shape[1]), dim=1).values[:, -1]
    if score.shape[1] < kk:
        tau = torch.full_like(tau, -math.inf)
    short = (~torch.isfinite(tau)).nonzero().squeeze(1)
    if short.numel():
        # ranks sharing their peaks left fewer than kk distinct triplets: the kk-th term of the
        # best single rank's block (kk distinct triplets) + the smallest log psi_u
        est = term.index_select(0, short).topk(kk, dim=2).values[..., -1].amax(1)
        tau[short] = est + tables.min_log_prior if tables is not None else est
    return tau


def prior_lower_bound(s_s, s_p, s_o, kk: int, tables: PriorTables) -> Tensor:
    """A lower bound tau [c] on the true kk-th best score from the prior's strongest entries,
    for pairs whose peaks leave too many candidates (-inf where a source has < kk triplets):

    * cells: for each rank, its top-m subjects x top-m objects with the support predicates of
      largest psi_u of each cell (``PriorTables.cell_top_predicates``), estimated by
      term_r + log psi_u: strong prior entries whose predicate is not among the rank's top ones;
    * top prior: the ``SEED_TOP_PRIOR * kk`` support triplets of largest psi_u, scored exactly
      (flat factors: the prior decides the winners).
    """
    c, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    m = block_side(kk, (S, P, O))
    v_s, i_s = s_s.topk(min(m, S), dim=2)  # [c, R, ms]
    v_o, i_o = s_o.topk(min(m, O), dim=2)
    ms, mo = i_s.shape[2], i_o.shape[2]
    tau = torch.full((c,), -math.inf, dtype=s_s.dtype, device=s_s.device)
    if tables is not None and ms * mo * tables.cell_top_predicates.shape[1] >= kk:
        cells = (i_s * O)[..., :, None] + i_o[..., None, :]  # [c, R, ms, mo]
        flat_cells = cells.reshape(-1)
        cj = tables.cell_top_predicates.index_select(0, flat_cells).view(cells.shape + (-1,))
        lp = tables.cell_top_log_prior.index_select(0, flat_cells).view(cj.shape)  # -inf: padding
        vp = s_p.gather(2, cj.reshape(c, r, -1)).reshape(cj.shape)
        est = ((v_s[..., :, None, None] + v_o[..., None, :, None]) + vp + lp).reshape(c, r, -1)
        tau = torch.maximum(tau, est.topk(kk, dim=2).values[..., -1].amax(1))
    if tables is not None and tables.by_prior_flat_id.numel() >= kk:
        # the support triplets of largest psi_u: when the CP factors are flat, the prior decides
        # the winners and neither block above holds them
        t = SEED_TOP_PRIOR * kk
        i, j, k = tables.by_prior_ids[:, :t]

        def rows(x, idx):  # class-major rows: fast gathers [T, c, R]
            return x.permute(2, 0, 1).reshape(x.shape[2], c * r).index_select(0, idx)

        lu = (rows(s_s, i) + rows(s_p, j) + rows(s_o, k)).view(-1, c, r)
        lu = lu.logsumexp(2) if r > 1 else lu[..., 0]
        score = (lu + tables.by_prior_log_prior[:t, None]).t()
        tau = torch.maximum(tau, score.topk(kk, dim=1).values[:, -1])
    return tau


def pairwise_upper_bounds(s_s, s_p, s_o) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pairwise upper bounds on u(i, j, k) (numerator of eq. 5), in float64 linear space relative
    to exp(top): returns (h_ik [c, S O], h_ij [c, S, P], h_kj [c, O, P], top [c]) with
    u(i, j, k) <= exp(top) * min(h_ik(i, k), h_ij(i, j), h_kj(k, j)).

    h_ik(i, k) = sum_r phi_s,r(i) (max_j phi_p,r(j)) phi_o,r(k), one batched matmul [S, R] @ [R, O]
    with each factor shifted by its maximum (so h <= R); likewise h_ij and h_kj. Entries far below
    the maximum may underflow; adding R e^-700 (more than float64 can lose) keeps them upper
    bounds, and the factor 1 + 1e-9 covers the matmul's rounding (~1e-15 relative).
    float32 logits use float32 here (twice as fast; underflow below e^-80 relative, covered by a
    larger slack: thresholds that deep let every candidate pass, sending the pair to dense; the
    factor 1 + 1e-4 also covers the rounding of the prior's ratio tables multiplied in later).
    """
    wide = s_s.dtype != torch.float32
    ft = torch.float64 if wide else torch.float32
    x_s, x_p, x_o = s_s.to(ft), s_p.to(ft), s_o.to(ft)
    mx_s, mx_p, mx_o = (
        x_s.amax(2, keepdim=True),
        x_p.amax(2, keepdim=True),
        x_o.amax(2, keepdim=True),
    )
    rank_log = (mx_s + mx_p + mx_o)[..., 0]  # [c, R]
    top = rank_log.amax(1)  # [c]
    coef = (rank_log - top[:, None]).exp()[..., None]  # [c, R, 1]
    e_s = (x_s - mx_s).exp_().mul_(coef)  # the rank weight rides on the subject factor
    e_p, e_o = (x_p - mx_p).exp_(), (x_o - mx_o).exp_()
    e_s_t = e_s.transpose(1, 2)
    if s_s.shape[1] == 1:  # outer products: cheaper than a matmul with inner size 1
        h_ik = (e_s_t * e_o).flatten(1)
        h_ij = e_s_t * e_p
        h_kj = e_o.transpose(1, 2) * (e_p * coef)
    else:
        h_ik = torch.bmm(e_s_t, e_o).flatten(1)
        h_ij = torch.bmm(e_s_t, e_p)
        h_kj = torch.bmm(e_o.transpose(1, 2), e_p * coef)
    slack = s_s.shape[1] * math.exp(-700.0 if wide else -80.0)
    grow = 1 + (1e-9 if wide else 1e-4)
    return tuple(h.mul_(grow).add_(slack) for h in (h_ik, h_ij, h_kj)) + (top.to(torch.float64),)
