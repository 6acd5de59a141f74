"""Exact top-K decoding of the CP triplet distribution (pure torch).

The test-time score of triplet t = (i, j, k) in pair n is (in log space)

    score_n(t) = log psi_c,n(t) + log psi_u(t) + w_n

with psi_c = y of eq. 5 (normalized by Z of eq. 6), psi_u the optional :class:`TripletPrior` and
w_n an optional per-pair log weight (log P(sel) + log detector box scores). The decoders here
return exactly what sorting the dense S x P x O score tensor returns (up to ties) without building
it in the common case:

1. *Bound path* (no dense tensor; :func:`_bound_path`). Let u(i, j, k) = sum_r phi_s,r(i)
   phi_p,r(j) phi_o,r(k) (numerator of eq. 5).
   a. tau, a lower bound on the true K-th best score: the K-th largest lower estimate of the
      scores of K distinct triplets (:func:`_seed_tau`: each rank's block of its top-m classes,
      with a prior also the support predicates of each rank's top (subject, object) cells and
      the support triplets of largest psi_u; for R > 1 also an exact merge across ranks).
   b. Pairwise bounds by three small matmuls: u(i, j, k) <= h_ik(i, k) = sum_r phi_s,r(i)
      max(phi_p,r) phi_o,r(k), and likewise h_ij, h_kj. The prior psi_u equals
      floor = 1/(total + S P O) off its support, so an off-support triplet can reach tau only if
      all three bounds reach tau - log floor (list A); a support triplet t only if
      log min(h_ik, h_ij, h_kj) + log psi_u(t) >= tau (list B). List B is opened cell by cell:
      the support is indexed by (subject, object) cell once per prior (:class:`_PriorTables`,
      cached), and only cells with h_ik + the cell's largest log psi_u >= tau are expanded, so
      the cost does not grow with the support size.
   c. Those candidates are scored exactly (log space); they contain every triplet scoring >= tau,
      so their top-K is the exact top-K. Pairs with more than ``max_enumerate_fraction`` S P O
      candidates (flat logits) are detected by the mask counts, cheaply and before any scoring,
      and go to
2. *Dense linear-space fallback*: u = sum_r phi_s,r (x) phi_p,r (x) phi_o,r as one batched matmul
   (a Khatri-Rao product [S P, R] @ [R, O]) in float64, with factors shifted by their maxima. It is
   used when its K-th value is far above float64 underflow (e^-600 relative to the maximum), so
   ranks are reliable; the K winners are rescored exactly in log space. Otherwise
3. *Dense log-space fallback* (:func:`~vrd_d2.modeling.cp_triplet.dense_log_prob` style).

All paths are batched over pairs in chunks of a fixed element budget (``_CHUNK_ELEMENTS``), so
memory is linear in N R (S + P + O) plus the prior's tables (its support indexed by cell and, up
to ``_DENSE_PRIOR_MAX`` triplets, a dense log psi_u lookup), plus one bounded chunk of working
tensors (pairwise bound tables, candidates, or the dense tensor of pairs that fall back).
Device-agnostic (CPU / CUDA); gradients are not tracked (decoding is inference only).
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Optional, Tuple

import torch
from torch import Tensor

from .cp_triplet import (
    TripletPrior,
    _check_labels,
    _check_prior,
    _dense_log_unnormalized,
    _shape,
    check_factors,
    unravel_triplets,
)

__all__ = [
    "topk_triplets_per_pair",
    "topk_per_image",
    "topk_predicates_given_labels",
    "dense_topk_triplets",
]

_FILE = "vrd_d2/modeling/decode.py"
# elements per chunk of intermediate tensors (~64 MB of float64): bounds peak memory
_CHUNK_ELEMENTS = 1 << 23
# candidate elements scored at once by the bound path (a chunk's pairs are split into groups)
_GROUP_ELEMENTS = 4 * _CHUNK_ELEMENTS
# underflow guard of the linear-space fallback: float64 underflows near e^-708
_LINEAR_MIN_LOG = -600.0
# pairs decoded by each path in the last call of topk_triplets_per_pair (benchmarks, tests)
last_decode_stats = {"bound": 0, "linear": 0, "log": 0}


def _check_k(k, name: str, ctx: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"{ctx}: {name} must be a positive int, found {k!r}")
    return int(k)


def _check_weight(w, n: int, like: Tensor, ctx: str) -> Optional[Tensor]:
    if w is None:
        return None
    if not isinstance(w, Tensor) or w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"{ctx}: pair_log_weight must be a Tensor[N={n}], found {_shape(w)}")
    if not w.is_floating_point():
        raise ValueError(f"{ctx}: pair_log_weight must be floating, found dtype {w.dtype}")
    if w.device != like.device:
        raise ValueError(
            f"{ctx}: pair_log_weight is on {w.device} but the factors are on {like.device}"
        )
    # -inf is a legitimate log weight (a zero box score); NaN and +inf are not
    if w.numel() and (bool(torch.isnan(w).any()) or bool((w == math.inf).any())):
        raise ValueError(f"{ctx}: pair_log_weight {_shape(w)} contains NaN or +inf")
    return w.to(like.dtype)


def _prior_on(prior: TripletPrior, device: torch.device) -> TripletPrior:
    """The prior with its buffers on ``device``, without moving the caller's module (buffers are
    copied directly: a subclass may keep them out of its state_dict)."""
    if prior.support_index.device == device:
        return prior
    moved = TripletPrior(*prior.shape)
    for name in ("support_index", "support_log_prob", "log_floor"):
        setattr(moved, name, getattr(prior, name).to(device))
    return moved.to(device)


def _unravel(flat: Tensor, p: int, o: int) -> Tensor:
    """flat ids [...] -> [..., 3] (subject, predicate, object)."""
    return torch.stack(unravel_triplets(flat, p, o), dim=-1)


def _chunks(n: int, per_pair: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, per_pair))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _exact_log_u(s_s: Tensor, s_p: Tensor, s_o: Tensor, i: Tensor, j: Tensor, k: Tensor) -> Tensor:
    """Exact unnormalized log psi_c for per-pair candidate lists i, j, k: LongTensor[c, C] -> [c, C]."""
    r = s_s.shape[1]

    def g(x, idx):
        return x.gather(2, idx[:, None, :].expand(-1, r, -1))

    return (g(s_s, i) + g(s_p, j) + g(s_o, k)).logsumexp(1)


# --------------------------------------------------------------------------------------------
# the prior's lookup tables: built once per (prior state, device, dtype) and cached
# --------------------------------------------------------------------------------------------
# dense log psi_u lookup table up to this many triplets (VG150: 1.2M, 4.6 MB in float32); larger
# priors fall back to a binary search in the sorted support
_DENSE_PRIOR_MAX = 1 << 24
# support predicates kept per (subject, object) cell for the seed (largest psi_u first)
_SEED_CELL_WIDTH = 4
# the seed also scores the _SEED_TOP_PRIOR * k support triplets of largest psi_u
_SEED_TOP_PRIOR = 8
_TABLE_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class _PriorTables:
    """What the bound path needs of a prior, on one device, for logits of one dtype.

    * The support sorted by (subject, object) cell (then psi_u descending), with a CSR pointer
      ``cell_ptr [S O + 1]``: predicate ``j``, ratio ``w = psi_u / floor`` (= count + 1 for
      :meth:`TripletPrior.from_counts`; raised to >= 1, a larger ratio still bounds) in the
      bound's dtype, ``log_psi`` in the logits' dtype and the flat id ``flat``.
    * ``wsup_ik [S O]``: the largest w of each cell (0 where the cell has no support entry), so
      the support entries of a pair are pruned cell by cell, never one by one.
    * ``lookup(flat)`` / ``is_support(flat)``: log psi_u in the logits' dtype (bit-identical to
      the dense fallbacks) and support membership, by dense tables gathers (binary search in the
      support when S P O > ``_DENSE_PRIOR_MAX``).
    * ``cell_j``, ``cell_lp [S O, W]``: the (up to) W support predicates of largest psi_u of
      each cell and their log psi_u (-inf padded), and ``seed_flat``: the support triplets of
      largest psi_u first (:func:`_seed_tau`).
    """

    def __init__(self, prior: TripletPrior, bound_dtype: torch.dtype, dt: torch.dtype):
        S, P, O = prior.shape
        dev = prior.support_index.device
        idx = prior.support_index
        # tensors only, never the prior: the cache's values must not keep its weak keys alive
        self.dt = dt
        self.support_index = idx
        self.support_log_prob = prior.support_log_prob.to(dt)
        self.log_floor = float(prior.log_floor)
        lp = prior.support_log_prob.to(torch.float64)
        self.min_log = min([self.log_floor] + ([float(lp.min())] if lp.numel() else []))
        w = (lp - self.log_floor).exp().clamp_(min=1.0)
        si, sj, sk = unravel_triplets(idx, P, O)
        ik = si * O + sk
        order = w.argsort(descending=True, stable=True)
        self.seed_flat = idx[order]  # psi_u descending
        self.seed_ijk = torch.stack((si, sj, sk))[:, order]
        self.seed_lp = prior.support_log_prob[order].to(dt)
        order = order[ik[order].argsort(stable=True)]  # by cell, then psi_u descending
        cell = ik[order]
        self.flat = idx[order]
        self.j = (self.flat // O) % P
        self.w = w[order].to(bound_dtype)
        self.log_psi = prior.support_log_prob[order].to(dt)
        counts = torch.bincount(cell, minlength=S * O)
        self.cell_ptr = torch.zeros(S * O + 1, dtype=torch.long, device=dev)
        self.cell_ptr[1:] = counts.cumsum(0)
        self.wsup_ik = (
            torch.zeros(S * O, dtype=torch.float64, device=dev)
            .scatter_reduce_(0, ik, w, "amax")
            .to(bound_dtype)
        )
        self.wmax_ik = self.wsup_ik.clamp(min=1.0)  # off-support entries have w = 1
        width = _SEED_CELL_WIDTH
        self.cell_j = torch.zeros((S * O, width), dtype=torch.long, device=dev)
        self.cell_lp = torch.full((S * O, width), -math.inf, dtype=dt, device=dev)
        if idx.numel():
            pos, _ = _row_positions(cell, S * O)
            sel = pos < width
            self.cell_j[cell[sel], pos[sel]] = self.j[sel]
            self.cell_lp[cell[sel], pos[sel]] = self.log_psi[sel]
        self.dense_log = self.dense_flag = None
        if S * P * O <= _DENSE_PRIOR_MAX:
            self.dense_log = prior.to_dense(log=True).reshape(-1).to(dt)
            self.dense_flag = torch.zeros(S * P * O, dtype=torch.bool, device=dev)
            self.dense_flag[idx] = True

    def is_support(self, flat: Tensor) -> Tensor:
        """Whether flat ids (any shape) are in the support."""
        if self.dense_flag is not None:
            return self.dense_flag.take(flat)
        sup = self.support_index
        if sup.numel() == 0:
            return torch.zeros_like(flat, dtype=torch.bool)
        pos = torch.searchsorted(sup, flat).clamp_(max=sup.numel() - 1)
        return sup[pos] == flat

    def lookup(self, flat: Tensor) -> Tensor:
        """log psi_u of flat ids (any shape), in the logits' dtype."""
        if self.dense_log is not None:
            return self.dense_log.take(flat)
        out = torch.full(flat.shape, self.log_floor, dtype=self.dt, device=flat.device)
        sup = self.support_index
        if sup.numel():
            pos = torch.searchsorted(sup, flat).clamp_(max=sup.numel() - 1)
            hit = sup.take(pos) == flat
            out = torch.where(hit, self.support_log_prob.take(pos), out)
        return out


def _prior_tables(prior: TripletPrior, device: torch.device, dt: torch.dtype) -> _PriorTables:
    """Cached :class:`_PriorTables` of ``prior`` (keyed by the identity and version counters of its
    buffers, so :meth:`TripletPrior.set_counts`, ``load_state_dict`` or in-place edits rebuild)."""
    bound_dtype = torch.float32 if dt == torch.float32 else torch.float64
    bufs = (prior.support_index, prior.support_log_prob, prior.log_floor)
    state = tuple((id(b), b._version) for b in bufs)
    per_prior = _TABLE_CACHE.setdefault(prior, {})
    key = (str(device), dt)
    hit = per_prior.get(key)
    if hit is not None and hit[0] == state and all(x is y for x, y in zip(hit[1], bufs)):
        return hit[2]
    tables = _PriorTables(_prior_on(prior, device), bound_dtype, dt)
    per_prior[key] = (state, bufs, tables)
    return tables


# --------------------------------------------------------------------------------------------
# path 1: certified bound
# --------------------------------------------------------------------------------------------
def _seed_tau(s_s, s_p, s_o, kk: int, tables: Optional[_PriorTables]):
    """A lower bound tau [c] on the true kk-th best score (log u + log psi_u): the kk-th largest
    of lower estimates of the scores of kk distinct triplets. Each source below lists distinct
    triplets with lower estimates of their scores; tau is the largest of their kk-th values.
    term_r(t) = s_s,r(i) + s_p,r(j) + s_o,r(k) <= log u(t), so term_r + log psi_u <= score.

    * block: for each rank r, the block of its top-m classes of each factor (m^3 >= kk,
      m ~ 2 kk^1/3), estimated by term_r + the smallest log psi_u;
    * cells (with a prior): for each rank, its top-m subjects x top-m objects with the support
      predicates of largest psi_u of each cell (``_PriorTables.cell_j``), estimated by
      term_r + log psi_u: strong prior entries whose predicate is not among the rank's top ones;
    * top prior (with a prior): the ``_SEED_TOP_PRIOR * kk`` support triplets of largest psi_u,
      scored exactly (flat factors: the prior decides the winners);
    * R > 1: the kk triplets of largest term_r of every rank's block, merged, deduplicated and
      scored exactly (+ log psi_u), so the seed follows every rank's peaks together.
    Rounding of the estimates is covered by the margin the caller subtracts from tau.
    """
    c, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    m = max(1, 2 * math.ceil(kk ** (1.0 / 3.0)))
    while min(m, S) * min(m, P) * min(m, O) < kk:
        m += 1
    v_s, i_s = s_s.topk(min(m, S), dim=2)  # [c, R, ms]
    v_p, i_p = s_p.topk(min(m, P), dim=2)
    v_o, i_o = s_o.topk(min(m, O), dim=2)
    ms, mp, mo = i_s.shape[2], i_p.shape[2], i_o.shape[2]
    term = (v_s[..., :, None, None] + v_p[..., None, :, None] + v_o[..., None, None, :]).reshape(
        c, r, -1
    )
    # the smallest psi_u stands in for each triplet's own (the exact merge below adds it; a
    # per-triplet lookup costs more than it gains: the cells below hold the prior's peaks)
    low_est = term + tables.min_log if tables is not None else term
    top_v, best = low_est.topk(kk, dim=2)  # [c, R, kk] in each rank's block
    tau = top_v[..., -1].amax(1)
    if tables is not None and ms * mo * tables.cell_j.shape[1] >= kk:
        cells = (i_s * O)[..., :, None] + i_o[..., None, :]  # [c, R, ms, mo]
        flat_cells = cells.reshape(-1)
        cj = tables.cell_j.index_select(0, flat_cells).view(cells.shape + (-1,))
        lp = tables.cell_lp.index_select(0, flat_cells).view(cj.shape)  # -inf: padding
        vp = s_p.gather(2, cj.reshape(c, r, -1)).reshape(cj.shape)
        est = ((v_s[..., :, None, None] + v_o[..., None, :, None]) + vp + lp).reshape(c, r, -1)
        tau = torch.maximum(tau, est.topk(kk, dim=2).values[..., -1].amax(1))
    if tables is not None and tables.seed_flat.numel() >= kk:
        # the support triplets of largest psi_u: when the CP factors are flat, the prior decides
        # the winners and neither block above holds them
        t = _SEED_TOP_PRIOR * kk
        i, j, k = tables.seed_ijk[:, :t]

        def rows(x, idx):  # class-major rows: fast gathers [T, c, R]
            return x.permute(2, 0, 1).reshape(x.shape[2], c * r).index_select(0, idx)

        lu = (rows(s_s, i) + rows(s_p, j) + rows(s_o, k)).view(-1, c, r)
        lu = lu.logsumexp(2) if r > 1 else lu[..., 0]
        score = (lu + tables.seed_lp[:t, None]).t()
        tau = torch.maximum(tau, score.topk(kk, dim=1).values[:, -1])
    if r > 1:
        ci = i_s.gather(2, best // (mp * mo)).reshape(c, -1)
        cj = i_p.gather(2, (best // mo) % mp).reshape(c, -1)
        ck = i_o.gather(2, best % mo).reshape(c, -1)
        fid = (ci * P + cj) * O + ck
        # blocks of different ranks overlap: a duplicate would overstate tau
        fid, perm = fid.sort(dim=1)
        ci, cj, ck = ci.gather(1, perm), cj.gather(1, perm), ck.gather(1, perm)
        score = _exact_log_u(s_s, s_p, s_o, ci, cj, ck)
        if tables is not None:
            score = score + tables.lookup(fid)
        dup = torch.zeros_like(fid, dtype=torch.bool)
        dup[:, 1:] = fid[:, 1:] == fid[:, :-1]
        score = score.masked_fill(dup, -math.inf)
        tau = torch.maximum(tau, score.topk(kk, dim=1).values[:, -1])
    return tau


def _pair_bound(s_s, s_p, s_o) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
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


def _row_positions(rows: Tensor, n_rows: int, width: int = 1) -> Tuple[Tensor, Tensor]:
    """For row ids sorted ascending [Q]: position of each within its row (times ``width``) and
    the per-row counts (times ``width``)."""
    counts = torch.bincount(rows, minlength=n_rows)
    starts = counts.cumsum(0) - counts
    return (
        torch.arange(rows.numel(), device=rows.device) - starts.index_select(0, rows)
    ) * width, counts * width


def _bound_path(s_s, s_p, s_o, kk: int, tables: Optional[_PriorTables], max_fraction: float):
    """Certified top-kk for all pairs. Returns (scores [N,kk] (unnormalized: log u + log psi_u),
    flat ids [N,kk], certified [N]).

    1. tau: a lower bound on the kk-th best score (:func:`_seed_tau`).
    2. u(i, j, k) <= exp(top) min(h_ik(i, k), h_ij(i, j), h_kj(k, j)) (:func:`_pair_bound`). A
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
    tables_min_log = min(0.0, tables.min_log) if tables is not None else 0.0  # for the margin
    eps = torch.finfo(dt).eps * 64
    scores = torch.full((n, kk), -math.inf, dtype=dt, device=dev)
    fids = torch.zeros((n, kk), dtype=torch.long, device=dev)
    certified = torch.zeros(n, dtype=torch.bool, device=dev)
    max_cand = max_fraction * S * P * O
    m = 2 * math.ceil(kk ** (1.0 / 3.0)) + 1  # the seed's block side (see _seed_tau)
    seed_cost = 2 * r * min(m**3, S * P * O) + 3 * r * r * kk
    if tables is not None:
        seed_cost += r * (m * m * _SEED_CELL_WIDTH + _SEED_TOP_PRIOR * kk)
    per_pair = 4 * S * O + 3 * P * (S + O) + 3 * r * (S + P + O) + seed_cost
    for a, b in _chunks(n, per_pair):
        xs, xp, xo = s_s[a:b], s_p[a:b], s_o[a:b]
        c = b - a
        tau = _seed_tau(xs, xp, xo, kk, tables)
        h_ik, h_ij, h_kj, top = _pair_bound(xs, xp, xo)
        scale = (xs.amax(2) + xp.amax(2) + xo.amax(2)).abs().amax(1) + 1.0 - tables_min_log
        low = (tau - eps * scale).to(torch.float64)  # margin: rounding must not drop a tie with tau
        # relative to exp(top) and to the floor; 0 if tau = -inf
        need = (low - top - log_floor).clamp(max=700.0).exp().to(h_ik.dtype)
        h_cell = h_ik * tables.wmax_ik if tables is not None else h_ik
        pq, ikq = (h_cell >= need[:, None]).nonzero().unbind(1)  # cells open for A or B
        mask_ij = h_ij >= need[:, None, None]  # [c, S, P]
        mask_kj = h_kj >= need[:, None, None]  # [c, O, P]
        h_q = h_ik.view(-1).index_select(0, pq * (S * O) + ikq)
        need_q = need.index_select(0, pq)
        in_a = h_q >= need_q  # cells of list A
        if tables is not None:
            in_b = h_q * tables.wsup_ik.index_select(0, ikq) >= need_q
            lo_b, hi_b = tables.cell_ptr.index_select(0, ikq), tables.cell_ptr.index_select(
                0, ikq + 1
            )
            n_b = torch.zeros(c, dtype=torch.long, device=dev).index_add_(
                0, pq, (hi_b - lo_b) * in_b
            )
        else:
            n_b = torch.zeros(c, dtype=torch.long, device=dev)
        n_a = torch.zeros(c, dtype=torch.long, device=dev).index_add_(0, pq, in_a.long())
        n_cand = n_a * P + n_b  # quick upper bound on the candidates
        big = (n_cand > max_cand).nonzero().squeeze(1)
        if big.numel():
            # exact count of (i, j, k) passing all three bounds, a boolean "triangle count":
            # sum_ik mask_ik(i, k) (mask_ij @ mask_kj^T)(i, k); one float32 matmul per pair,
            # far cheaper than the dense fallback it may avoid (exact below 2^24 per entry)
            mask_ik = h_ik[big] >= need[big, None]
            tri = torch.bmm(mask_ij[big].float(), mask_kj[big].float().transpose(1, 2))
            n_cand[big] = (tri.flatten(1) * mask_ik).sum(1).long() + n_b[big]
        ok = (n_cand <= max_cand) & torch.isfinite(tau)
        if not bool(ok.any()):
            continue
        low_dt = low.to(dt)
        xs_t = xs.transpose(1, 2).reshape(c * S, r)  # rows (pair, class): contiguous gathers
        xp_t = xp.transpose(1, 2).reshape(c * P, r)
        xo_t = xo.transpose(1, 2).reshape(c * O, r)

        def exact(p, ci, cj, ck):
            lu = (
                xs_t.index_select(0, p * S + ci)
                + xp_t.index_select(0, p * P + cj)
                + xo_t.index_select(0, p * O + ck)
            )
            return lu.logsumexp(1) if r > 1 else lu[:, 0]

        # score a few pairs at a time: memory ~ their candidates x R, plus the boolean
        # [open cells, P] filter of list A
        cost = ((n_cand * (r + 4) + n_a * P) * ok).cumsum(0)
        grp = torch.div(cost - 1, _GROUP_ELEMENTS, rounding_mode="floor").clamp_(min=0)
        cuts = [0] + (torch.nonzero(grp[1:] != grp[:-1]).squeeze(1) + 1).tolist() + [c]
        for g0, g1 in zip(cuts[:-1], cuts[1:]):
            ng = g1 - g0
            keep_q = ok.index_select(0, pq)
            if len(cuts) > 2:
                keep_q &= (pq >= g0) & (pq < g1)
            # list A: off-support triplets of the open cells passing the two other bounds. Memory
            # ~ cells x P booleans, bounded by max_fraction S P O per pair (or the triangle count)
            sel = (in_a & keep_q).nonzero().squeeze(1)
            p_a, ik_a = pq.index_select(0, sel), ikq.index_select(0, sel)
            ci, ck = ik_a // O, ik_a % O
            keep = mask_ij.view(c * S, P).index_select(0, p_a * S + ci) & mask_kj.view(
                c * O, P
            ).index_select(0, p_a * O + ck)
            q, cj = keep.nonzero().unbind(1)  # still sorted by pair
            p_a, ci, ck = p_a.index_select(0, q), ci.index_select(0, q), ck.index_select(0, q)
            fid_a = (ci * P + cj) * O + ck
            score_a = exact(p_a, ci, cj, ck)
            if tables is not None:
                score_a = (score_a + log_floor).masked_fill_(tables.is_support(fid_a), -math.inf)
            pos_a, cnt = _row_positions(p_a - g0, ng)
            if tables is not None:
                # list B: the support entries of the open cells, tested one by one
                sel = (in_b & keep_q).nonzero().squeeze(1)
                p_b, ik_b, lo = (
                    pq.index_select(0, sel),
                    ikq.index_select(0, sel),
                    lo_b.index_select(0, sel),
                )
                per = hi_b.index_select(0, sel) - lo
                rep = torch.repeat_interleave(per)  # open cell of each support entry
                e = torch.arange(rep.numel(), device=dev) + (
                    lo - (per.cumsum(0) - per)
                ).index_select(0, rep)
                p_b, ik_b = p_b.index_select(0, rep), ik_b.index_select(0, rep)
                ci, ck, cj = ik_b // O, ik_b % O, tables.j.index_select(0, e)
                if r == 1:
                    # the exact score costs no more than the bound: filter on it directly
                    score_b = exact(p_b, ci, cj, ck) + tables.log_psi.index_select(0, e)
                    sel = (score_b >= low_dt.index_select(0, p_b)).nonzero().squeeze(1)
                    p_b, e, score_b = (x.index_select(0, sel) for x in (p_b, e, score_b))
                else:
                    bound = torch.minimum(
                        torch.minimum(
                            h_ik.view(-1).index_select(0, p_b * (S * O) + ik_b),
                            h_ij.view(-1).index_select(0, (p_b * S + ci) * P + cj),
                        ),
                        h_kj.view(-1).index_select(0, (p_b * O + ck) * P + cj),
                    ) * tables.w.index_select(0, e)
                    sel = (bound >= need.index_select(0, p_b)).nonzero().squeeze(1)
                    p_b, ci, cj, ck, e = (x.index_select(0, sel) for x in (p_b, ci, cj, ck, e))
                    score_b = exact(p_b, ci, cj, ck) + tables.log_psi.index_select(0, e)
                pos_b, cnt_b = _row_positions(p_b - g0, ng)
                pos_b = pos_b + cnt.index_select(0, p_b - g0)
                cnt = cnt + cnt_b
            # per-pair top-kk: scatter into a [pairs, width] table padded with -inf
            w = max(kk, int(cnt.max()))
            pad_v = torch.full((ng * w,), -math.inf, dtype=dt, device=dev)
            pad_f = torch.zeros(ng * w, dtype=torch.long, device=dev)
            pad_v.scatter_(0, (p_a - g0) * w + pos_a, score_a)
            pad_f.scatter_(0, (p_a - g0) * w + pos_a, fid_a)
            if tables is not None:
                pad_v.scatter_(0, (p_b - g0) * w + pos_b, score_b)
                pad_f.scatter_(0, (p_b - g0) * w + pos_b, tables.flat.index_select(0, e))
            top_v, top_i = pad_v.view(ng, w).topk(kk, dim=1)
            good = ok[g0:g1] & torch.isfinite(top_v[:, -1]) & (top_v[:, -1] >= low_dt[g0:g1])
            dst = good.nonzero().squeeze(1)
            scores[a + g0 + dst] = top_v[dst]
            fids[a + g0 + dst] = pad_f.view(ng, w).gather(1, top_i)[dst]
            certified[a + g0 + dst] = True
    return scores, fids, certified


# --------------------------------------------------------------------------------------------
# paths 2 and 3: dense fallbacks (only for the pairs the bound cannot certify)
# --------------------------------------------------------------------------------------------
def _linear_topk(s_s, s_p, s_o, kk: int, prior_dense: Optional[Tensor]):
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
    floor = math.exp(_LINEAR_MIN_LOG) * (
        float(prior_dense.max()) if prior_dense is not None else 1.0
    )
    return top_i, top_v[:, -1] > floor


def _log_dense_topk(s_s, s_p, s_o, kk: int, prior_log_dense: Optional[Tensor]):
    """Dense in log space: (scores [c,kk] unnormalized log u + log psi_u, flat ids [c,kk])."""
    lu = _dense_log_unnormalized(s_s, s_p, s_o).flatten(1)
    if prior_log_dense is not None:
        lu = lu + prior_log_dense
    return lu.topk(kk, dim=1)


@functools.lru_cache(maxsize=32)
def _dominance_positions(kk: int, ms: int, mp: int, mo: int) -> Tensor:
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


def _rank1_topk(s_s, s_p, s_o, kk: int, prior: Optional[TripletPrior] = None) -> Tensor:
    """Flat ids [n, kk] of the exact top kk at rank 1: among the dominance candidates (see
    _dominance_positions) and, with a prior, every triplet of its support. Off the support psi_u is
    one constant, so an off-support triplet is beaten or tied by every triplet dominating it, and
    the dominance argument still holds; support triplets are all scored."""
    S, P, O = s_s.shape[2], s_p.shape[2], s_o.shape[2]
    a, b, c = s_s[:, 0], s_p[:, 0], s_o[:, 0]
    ms, mp, mo = min(kk, S), min(kk, P), min(kk, O)
    pos = _dominance_positions(kk, ms, mp, mo).to(a.device)
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


def _rescore(s_s, s_p, s_o, fid: Tensor, prior: Optional[TripletPrior]):
    """Exact log u (+ log psi_u) of flat ids [c, kk]; re-sorted descending."""
    P, O = s_p.shape[2], s_o.shape[2]
    score = _exact_log_u(s_s, s_p, s_o, *unravel_triplets(fid, P, O))
    if prior is not None:
        score = score + prior.log_prob_flat(fid).to(score)
    score, order = score.sort(dim=1, descending=True)
    return score, fid.gather(1, order)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
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
    Returns:
        (log_scores Tensor[N, k'], triplets LongTensor[N, k', 3] (subject, predicate, object)).
    """
    ctx = f"{_FILE}:topk_triplets_per_pair"
    n, r, S, P, O = check_factors(s_s, s_p, s_o, where="topk_triplets_per_pair")
    k = _check_k(k, "k", ctx)
    tables = None
    if prior is not None:
        _check_prior(prior, (S, P, O), ctx)
        if method in ("auto", "bound"):
            tables = _prior_tables(prior, s_s.device, s_s.dtype)
        prior = _prior_on(prior, s_s.device)
    w = _check_weight(pair_log_weight, n, s_s, ctx)
    if method not in ("auto", "bound", "linear", "log"):
        raise ValueError(
            f"{ctx}: method must be 'auto', 'bound', 'linear' or 'log', found {method!r}"
        )
    total = S * P * O
    kk = min(k, total)
    dev, dt = s_s.device, s_s.dtype
    scores = torch.full((n, kk), -math.inf, dtype=dt, device=dev)
    fids = torch.zeros((n, kk), dtype=torch.long, device=dev)
    if n == 0:
        return scores, _unravel(fids, P, O)
    s_s, s_p, s_o = s_s.detach(), s_p.detach(), s_o.detach()
    done = torch.zeros(n, dtype=torch.bool, device=dev)

    if r == 1 and method == "auto" and total > dense_threshold:
        width = len(_dominance_positions(kk, min(kk, S), min(kk, P), min(kk, O)))
        width += prior.num_support if prior is not None else 0
        for a, b in _chunks(n, 8 * width):
            f = _rank1_topk(s_s[a:b], s_p[a:b], s_o[a:b], kk, prior)
            scores[a:b], fids[a:b] = _rescore(s_s[a:b], s_p[a:b], s_o[a:b], f, prior)
        done[:] = True
    use_bound = not bool(done.all()) and (method == "bound" or (method == "auto" and total > dense_threshold))
    if use_bound:
        v, f, ok = _bound_path(s_s, s_p, s_o, kk, tables, max_enumerate_fraction)
        scores[ok], fids[ok], done = v[ok], f[ok], ok
    last_decode_stats["bound"] = int(done.sum())  # rank-1 dominance path counted here too
    last_decode_stats["linear"] = last_decode_stats["log"] = 0
    todo = (~done).nonzero().squeeze(1)
    if todo.numel() and method in ("auto", "bound", "linear"):
        prior_dense = (
            prior.to_dense().reshape(-1).to(dev, torch.float64) if prior is not None else None
        )
        for a, b in _chunks(todo.numel(), 2 * total + r * (S * P + S + P + O)):
            idx = todo[a:b]
            f, ok = _linear_topk(s_s[idx], s_p[idx], s_o[idx], kk, prior_dense)
            if not bool(ok.any()):
                continue
            sel = idx[ok]
            sc, fs = _rescore(s_s[sel], s_p[sel], s_o[sel], f[ok], prior)
            scores[sel], fids[sel], done[sel] = sc, fs, True
        last_decode_stats["linear"] = int(done.sum()) - last_decode_stats["bound"]
        todo = (~done).nonzero().squeeze(1)
    last_decode_stats["log"] = int(todo.numel())
    if todo.numel():
        prior_log = prior.to_dense(log=True).reshape(-1).to(dev, dt) if prior is not None else None
        for a, b in _chunks(todo.numel(), 3 * total):
            idx = todo[a:b]
            v, f = _log_dense_topk(s_s[idx], s_p[idx], s_o[idx], kk, prior_log)
            scores[idx], fids[idx] = v, f

    # normalize by Z (eq. 6) and add the per-pair weights: neither changes a pair's ranking
    a_s, a_p, a_o = s_s.logsumexp(-1), s_p.logsumexp(-1), s_o.logsumexp(-1)
    scores = scores - (a_s + a_p + a_o).logsumexp(-1)[:, None]
    if w is not None:
        scores = scores + w[:, None]
    return scores, _unravel(fids, P, O)


def dense_topk_triplets(
    s_s: Tensor,
    s_p: Tensor,
    s_o: Tensor,
    k: int,
    prior: Optional[TripletPrior] = None,
    pair_log_weight: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Reference: same contract as :func:`topk_triplets_per_pair`, by materializing the dense
    log-space score tensor (normalized by its own sum, not eq. 6). Chunked over pairs."""
    ctx = f"{_FILE}:dense_topk_triplets"
    n, r, S, P, O = check_factors(s_s, s_p, s_o, where="dense_topk_triplets")
    k = _check_k(k, "k", ctx)
    if prior is not None:
        _check_prior(prior, (S, P, O), ctx)
    w = _check_weight(pair_log_weight, n, s_s, ctx)
    total = S * P * O
    kk = min(k, total)
    prior_log = (
        prior.to_dense(log=True).reshape(-1).to(s_s.device, s_s.dtype)
        if prior is not None
        else None
    )
    out_v, out_f = [], []
    for a, b in _chunks(n, 3 * total):
        lu = _dense_log_unnormalized(
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
    return v, _unravel(f, P, O)


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
    ctx = f"{_FILE}:topk_predicates_given_labels"
    n, r, S, P, O = check_factors(s_s, s_p, s_o, where="topk_predicates_given_labels")
    _check_labels(subject, object, n, S, O, s_s.device, ctx)
    k = _check_k(k, "k", ctx)
    if prior is not None:
        _check_prior(prior, (S, P, O), ctx)
        prior = _prior_on(prior, s_s.device)
    w = _check_weight(pair_log_weight, n, s_s, ctx)
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
    ctx = f"{_FILE}:topk_per_image"
    if (
        not isinstance(log_scores, Tensor)
        or log_scores.dim() != 2
        or not log_scores.is_floating_point()
    ):
        raise ValueError(
            f"{ctx}: log_scores must be a floating Tensor[N, k'], found {_shape(log_scores)}"
        )
    if (
        not isinstance(triplets, Tensor)
        or triplets.dim() != 3
        or tuple(triplets.shape) != tuple(log_scores.shape) + (3,)
    ):
        raise ValueError(
            f"{ctx}: triplets must be a LongTensor[N, k', 3] matching log_scores {_shape(log_scores)}, "
            f"found {_shape(triplets)}"
        )
    if triplets.is_floating_point():
        raise ValueError(f"{ctx}: triplets must be an integer tensor, found dtype {triplets.dtype}")
    if bool(torch.isnan(log_scores).any()):
        raise ValueError(f"{ctx}: log_scores {_shape(log_scores)} contains NaN")
    topk = _check_k(topk, "topk", ctx)
    if k_per_pair is None or (
        not isinstance(k_per_pair, bool) and isinstance(k_per_pair, int) and k_per_pair == 0
    ):
        kp = log_scores.shape[1]
    else:
        kp = min(_check_k(k_per_pair, "k_per_pair (0 or None = free)", ctx), log_scores.shape[1])
    v = log_scores[:, :kp].reshape(-1)
    t = min(topk, v.numel())
    # stable sort: ties keep (pair, rank) order, so results are deterministic
    order = v.sort(descending=True, stable=True).indices[:t]
    pair_idx = torch.div(order, kp, rounding_mode="floor") if kp else order
    rank = order % kp if kp else order
    return pair_idx, triplets[pair_idx, rank], v[order], rank
