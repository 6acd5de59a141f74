"""The certified path of the exact decoder: top-K without the dense S x P x O tensor.

Let u(i, j, k) = sum_r phi_s,r(i) phi_p,r(j) phi_o,r(k) (numerator of eq. 5).

a. tau, a lower bound on the true K-th best score (:mod:`.bounds`).
b. Pairwise bounds by three small matmuls (:func:`~.bounds.pairwise_upper_bounds`):
   u(i, j, k) <= h_ik(i, k) = sum_r phi_s,r(i) max(phi_p,r) phi_o,r(k), and likewise h_ij, h_kj.
   The prior psi_u equals floor = 1/(total + S P O) off its support, so an off-support triplet can
   reach tau only if all three bounds reach tau - log floor (list A); a support triplet t only if
   log min(h_ik, h_ij, h_kj) + log psi_u(t) >= tau (list B). List B is opened cell by cell (the
   support indexed by (subject, object) cell, :class:`~.prior_tables.PriorTables`), so the cost
   does not grow with the support size.
c. Those candidates are scored exactly (log space); they contain every triplet scoring >= tau, so
   their top-K is the exact top-K. Pairs with more than ``max_fraction`` S P O candidates (flat
   logits) are found by the mask counts, before any scoring, and left to the dense fallback.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import common
from .bounds import block_side, pairwise_upper_bounds, peak_lower_bound, prior_lower_bound
from .common import pair_chunks, row_positions
from .prior_tables import SEED_CELL_WIDTH, SEED_TOP_PRIOR, PriorTables

__all__ = ["certified_topk", "PRIOR_SEED_CANDIDATES"]

# pairs whose CP peaks leave more than this many candidates per wanted triplet (a quick upper
# bound) also seed tau from the prior's strongest entries (prior_lower_bound), then re-prune
PRIOR_SEED_CANDIDATES = 16
# cells with more support entries than this are cut to the prefix that can pass, by a search
_PREFIX_SEARCH_MIN = 4


class _OpenCells(NamedTuple):
    """The pruning of one chunk of pairs at thresholds tau (see :func:`_open_cells`)."""

    low: Tensor  # [c] tau minus the rounding margin, float64
    need: Tensor  # [c] the same relative to exp(top) and the prior's floor, linear
    open_pair: Tensor  # [Q] pair of each open (subject, object) cell
    open_cell: Tensor  # [Q] its flat cell id (subject O + object)
    mask_ij: Tensor  # [c, S, P] (subject, predicate) passing h_ij
    mask_kj: Tensor  # [c, O, P] (object, predicate) passing h_kj
    in_list_a: Tensor  # [Q] open cells whose off-support triplets may pass (list A)
    in_list_b: Tensor  # [Q] open cells whose support entries may pass (list B)
    support_start: Tensor  # [Q] the open cell's support entries: [start, end) in the tables
    support_end: Tensor
    cells_a: Tensor  # [c] cells of list A per pair
    entries_b: Tensor  # [c] support entries of list B per pair
    num_candidates: Tensor  # [c] quick upper bound on list A + entries_b


def _open_cells(tau, scale, eps, top, h_ik, h_ij, h_kj, tables) -> _OpenCells:
    """The cells and masks a triplet must pass to reach tau (the pruning of step b)."""
    c = tau.shape[0]
    S, P = h_ij.shape[1], h_ij.shape[2]
    dev = tau.device
    log_floor = tables.log_floor if tables is not None else 0.0
    low = (tau - eps * scale).to(torch.float64)  # margin: rounding must not drop a tie with tau
    # relative to exp(top) and to the floor; 0 if tau = -inf
    need = (low - top - log_floor).clamp(max=700.0).exp().to(h_ik.dtype)
    h_cell = h_ik * tables.cell_bound_ratio if tables is not None else h_ik
    open_pair, open_cell = (h_cell >= need[:, None]).nonzero().unbind(1)  # for A or B
    mask_ij = h_ij >= need[:, None, None]
    mask_kj = h_kj >= need[:, None, None]
    open_bound = h_ik.view(-1).index_select(0, open_pair * h_ik.shape[1] + open_cell)
    open_need = need.index_select(0, open_pair)
    in_list_a = open_bound >= open_need
    entries_b = torch.zeros(c, dtype=torch.long, device=dev)
    if tables is not None:
        # support entries of the cell with w h_ik >= need: a prefix (w descending in a cell)
        support_start = tables.cell_ptr.index_select(0, open_cell)
        some = open_bound * tables.cell_max_ratio.index_select(0, open_cell) >= open_need
        support_end = torch.where(some, tables.cell_ptr.index_select(0, open_cell + 1), support_start)
        # a search only where some but not all entries may pass (w >= 1: all pass if h_ik >=
        # need) and the cell holds enough entries to be worth it (list B tests each one anyway)
        partial = some & (open_bound < open_need)
        partial &= support_end - support_start > _PREFIX_SEARCH_MIN
        partial = partial.nonzero().squeeze(1)
        min_log_ratio = (
            open_need.index_select(0, partial).to(torch.float64).log()
            - open_bound.index_select(0, partial).to(torch.float64).log()
        )
        support_end[partial] = tables.support_prefix_end(open_cell.index_select(0, partial), min_log_ratio)
        in_list_b = support_end > support_start
        entries_b.index_add_(0, open_pair, (support_end - support_start) * in_list_b)
    else:
        in_list_b = support_start = support_end = None
    cells_a = torch.zeros(c, dtype=torch.long, device=dev).index_add_(0, open_pair, in_list_a.long())
    # list A of a cell (i, k) holds at most min(#j passing h_ij(i, .), #j passing h_kj(k, .))
    O = mask_kj.shape[1]
    per_subject = mask_ij.sum(2).view(-1)
    per_object = mask_kj.sum(2).view(-1)
    subject, obj = torch.div(open_cell, O, rounding_mode="floor"), open_cell % O
    width_a = torch.minimum(
        per_subject.index_select(0, open_pair * S + subject),
        per_object.index_select(0, open_pair * O + obj),
    )
    entries_a = torch.zeros(c, dtype=torch.long, device=dev).index_add_(0, open_pair, width_a * in_list_a)
    return _OpenCells(
        low,
        need,
        open_pair,
        open_cell,
        mask_ij,
        mask_kj,
        in_list_a,
        in_list_b,
        support_start,
        support_end,
        cells_a,
        entries_b,
        entries_a + entries_b,
    )


def certified_topk(s_s, s_p, s_o, kk: int, tables: Optional[PriorTables], max_fraction: float):
    """Certified top-kk for all pairs. Returns (scores [N,kk] (unnormalized: log u + log psi_u),
    flat ids [N,kk], certified [N]).

    1. tau: a lower bound on the kk-th best score (:func:`~.bounds.peak_lower_bound`, and
       :func:`~.bounds.prior_lower_bound` where the peaks leave many candidates).
    2. u(i, j, k) <= exp(top) min(h_ik(i, k), h_ij(i, j), h_kj(k, j))
       (:func:`~.bounds.pairwise_upper_bounds`). A
       triplet off the prior's support scores log floor + log u, so it can reach tau only if all
       three bounds reach need = exp(tau - top) / floor (list A: the passing (subject, object)
       cells crossed with the predicates passing the two other bounds); a support triplet t
       only if w(t) min(h_ik, h_ij, h_kj) >= need, w = psi_u / floor (list B). List B is built
       cell by cell: only cells with h_ik(i, k) max_t w(t) >= need are opened (one test per
       cell, both lists share it through max(1, max_t w)), then their support entries are tested
       one by one. Both lists are scored exactly; they hold every triplet scoring >= tau, so
       their top-kk is the exact top-kk.
    Pairs needing more than max_fraction * S P O candidates (flat logits) are left uncertified
    for the dense fallback; finding that costs one small matmul per pair.
    """
    n, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    dev, dt = s_s.device, s_s.dtype
    log_floor = tables.log_floor if tables is not None else 0.0
    tables_min_log = min(0.0, tables.min_log_prior) if tables is not None else 0.0  # for the margin
    eps = torch.finfo(dt).eps * 64
    scores = torch.full((n, kk), -math.inf, dtype=dt, device=dev)
    flat_ids = torch.zeros((n, kk), dtype=torch.long, device=dev)
    certified = torch.zeros(n, dtype=torch.bool, device=dev)
    max_candidates = max_fraction * S * P * O
    m = block_side(kk, (S, P, O))
    seed_cost = 2 * r * min(m**3, S * P * O) + 3 * r * r * kk
    if tables is not None:
        seed_cost += r * (m * m * SEED_CELL_WIDTH + SEED_TOP_PRIOR * kk)
    per_pair = 4 * S * O + 3 * P * (S + O) + 3 * r * (S + P + O) + seed_cost
    for a, b in pair_chunks(n, per_pair):
        xs, xp, xo = s_s[a:b], s_p[a:b], s_o[a:b]
        c = b - a
        h_ik, h_ij, h_kj, top = pairwise_upper_bounds(xs, xp, xo)
        scale = (xs.amax(2) + xp.amax(2) + xo.amax(2)).abs().amax(1) + 1.0 - tables_min_log
        tau = peak_lower_bound(xs, xp, xo, kk, tables)
        opened = _open_cells(tau, scale, eps, top, h_ik, h_ij, h_kj, tables)
        if tables is not None:
            # the prior's own peaks, only where the CP peaks leave many candidates
            weak = (opened.num_candidates > PRIOR_SEED_CANDIDATES * kk).nonzero().squeeze(1)
            if weak.numel():
                tau[weak] = torch.maximum(tau[weak], prior_lower_bound(xs[weak], xp[weak], xo[weak], kk, tables))
                opened = _open_cells(tau, scale, eps, top, h_ik, h_ij, h_kj, tables)
        low, need, open_pair, open_cell, mask_ij, mask_kj = opened[:6]
        in_list_a, in_list_b, support_start, support_end, cells_a, entries_b = opened[6:12]
        num_candidates = opened.num_candidates
        big = (num_candidates > max_candidates).nonzero().squeeze(1)
        if big.numel():
            # exact count of (i, j, k) passing all three bounds, a boolean "triangle count":
            # sum_ik mask_ik(i, k) (mask_ij @ mask_kj^T)(i, k); one float32 matmul per pair,
            # far cheaper than the dense fallback it may avoid (exact below 2^24 per entry)
            mask_ik = h_ik[big] >= need[big, None]
            tri = torch.bmm(mask_ij[big].float(), mask_kj[big].float().transpose(1, 2))
            num_candidates[big] = (tri.flatten(1) * mask_ik).sum(1).long() + entries_b[big]
        ok = (num_candidates <= max_candidates) & torch.isfinite(tau)
        if not bool(ok.any()):
            continue
        low_dt = low.to(dt)
        xs_t = xs.transpose(1, 2).reshape(c * S, r)  # rows (pair, class): contiguous gathers
        xp_t = xp.transpose(1, 2).reshape(c * P, r)
        xo_t = xo.transpose(1, 2).reshape(c * O, r)

        def exact(p, ci, cj, ck):
            lu = xs_t.index_select(0, p * S + ci) + xp_t.index_select(0, p * P + cj) + xo_t.index_select(0, p * O + ck)
            return lu.logsumexp(1) if r > 1 else lu[:, 0]

        # score a few pairs at a time: memory ~ their candidates x R, plus the boolean
        # [open cells, P] filter of list A
        cost = ((num_candidates * (r + 4) + cells_a * P) * ok).cumsum(0)
        grp = torch.div(cost - 1, common.GROUP_ELEMENTS, rounding_mode="floor").clamp_(min=0)
        cuts = [0] + (torch.nonzero(grp[1:] != grp[:-1]).squeeze(1) + 1).tolist() + [c]
        for group_start, group_end in zip(cuts[:-1], cuts[1:]):
            group_size = group_end - group_start
            open_keep = ok.index_select(0, open_pair)
            if len(cuts) > 2:
                open_keep &= (open_pair >= group_start) & (open_pair < group_end)
            # list A: off-support triplets of the open cells passing the two other bounds. Memory
            # ~ cells x P booleans, bounded by max_fraction S P O per pair (or the triangle count)
            sel = (in_list_a & open_keep).nonzero().squeeze(1)
            p_a, ik_a = open_pair.index_select(0, sel), open_cell.index_select(0, sel)
            ci, ck = ik_a // O, ik_a % O
            keep = mask_ij.view(c * S, P).index_select(0, p_a * S + ci) & mask_kj.view(c * O, P).index_select(
                0, p_a * O + ck
            )
            q, cj = keep.nonzero().unbind(1)  # still sorted by pair
            p_a, ci, ck = p_a.index_select(0, q), ci.index_select(0, q), ck.index_select(0, q)
            fid_a = (ci * P + cj) * O + ck
            score_a = exact(p_a, ci, cj, ck)
            if tables is not None:
                score_a = (score_a + log_floor).masked_fill_(tables.is_support(fid_a), -math.inf)
            pos_a, cnt = row_positions(p_a - group_start, group_size)
            if tables is not None:
                # list B: the support entries of the open cells, tested one by one
                sel = (in_list_b & open_keep).nonzero().squeeze(1)
                p_b, ik_b, lo = (
                    open_pair.index_select(0, sel),
                    open_cell.index_select(0, sel),
                    support_start.index_select(0, sel),
                )
                per = support_end.index_select(0, sel) - lo
                rep = torch.repeat_interleave(per)  # open cell of each support entry
                e = torch.arange(rep.numel(), device=dev) + (lo - (per.cumsum(0) - per)).index_select(0, rep)
                p_b, ik_b = p_b.index_select(0, rep), ik_b.index_select(0, rep)
                ci, ck, cj = ik_b // O, ik_b % O, tables.predicate.index_select(0, e)
                if r == 1:
                    # the exact score costs no more than the bound: filter on it directly
                    score_b = exact(p_b, ci, cj, ck) + tables.log_prior.index_select(0, e)
                    sel = (score_b >= low_dt.index_select(0, p_b)).nonzero().squeeze(1)
                    p_b, e, score_b = (x.index_select(0, sel) for x in (p_b, e, score_b))
                else:
                    bound = torch.minimum(
                        torch.minimum(
                            h_ik.view(-1).index_select(0, p_b * (S * O) + ik_b),
                            h_ij.view(-1).index_select(0, (p_b * S + ci) * P + cj),
                        ),
                        h_kj.view(-1).index_select(0, (p_b * O + ck) * P + cj),
                    ) * tables.ratio.index_select(0, e)
                    sel = (bound >= need.index_select(0, p_b)).nonzero().squeeze(1)
                    p_b, ci, cj, ck, e = (x.index_select(0, sel) for x in (p_b, ci, cj, ck, e))
                    score_b = exact(p_b, ci, cj, ck) + tables.log_prior.index_select(0, e)
                pos_b, cnt_b = row_positions(p_b - group_start, group_size)
                pos_b = pos_b + cnt.index_select(0, p_b - group_start)
                cnt = cnt + cnt_b
            # per-pair top-kk: scatter into a [pairs, width] table padded with -inf
            w = max(kk, int(cnt.max()))
            pad_v = torch.full((group_size * w,), -math.inf, dtype=dt, device=dev)
            pad_f = torch.zeros(group_size * w, dtype=torch.long, device=dev)
            pad_v.scatter_(0, (p_a - group_start) * w + pos_a, score_a)
            pad_f.scatter_(0, (p_a - group_start) * w + pos_a, fid_a)
            if tables is not None:
                pad_v.scatter_(0, (p_b - group_start) * w + pos_b, score_b)
                pad_f.scatter_(0, (p_b - group_start) * w + pos_b, tables.flat_id.index_select(0, e))
            top_v, top_i = pad_v.view(group_size, w).topk(kk, dim=1)
            good = (
                ok[group_start:group_end]
                & torch.isfinite(top_v[:, -1])
                & (top_v[:, -1] >= low_dt[group_start:group_end])
            )
            dst = good.nonzero().squeeze(1)
            scores[a + group_start + dst] = top_v[dst]
            flat_ids[a + group_start + dst] = pad_f.view(group_size, w).gather(1, top_i)[dst]
            certified[a + group_start + dst] = True
    return scores, flat_ids, certified
