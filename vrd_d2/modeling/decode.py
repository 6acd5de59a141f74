"""Exact top-K decoding of the CP triplet distribution (pure torch).

The test-time score of triplet t = (i, j, k) in pair n is (in log space)

    score_n(t) = log psi_c,n(t) + log psi_u(t) + w_n

with psi_c = y of eq. 5 (normalized by Z of eq. 6), psi_u the optional :class:`TripletPrior` and
w_n an optional per-pair log weight (log P(sel) + log detector box scores). The decoders here
return exactly what sorting the dense S x P x O score tensor returns (up to ties) without building
it in the common case:

1. *Bound path* (no dense tensor; :func:`_bound_path`). Let u(i, j, k) = sum_r phi_s,r(i)
   phi_p,r(j) phi_o,r(k) (numerator of eq. 5).
   a. tau, a lower bound on the true K-th best score: the K-th best exact score among K distinct
      triplets (for each rank, the K best of its own term in the block of its top-m classes,
      duplicates removed; with a prior also the K support triplets of largest bound).
   b. Pairwise bounds by three small matmuls: u(i, j, k) <= h_ik(i, k) = sum_r phi_s,r(i)
      max(phi_p,r) phi_o,r(k), and likewise h_ij, h_kj. The prior psi_u equals
      floor = 1/(total + S P O) off its support, so an off-support triplet can reach tau only if
      all three bounds reach tau - log floor; a support triplet t only if log h_ik + log psi_u(t)
      >= tau.
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
memory is linear in N R (S + P + O) plus the prior's support, plus one bounded chunk of working
tensors (pairwise bound tables, candidates, or the dense tensor of pairs that fall back).
Device-agnostic (CPU / CUDA); gradients are not tracked (decoding is inference only).
"""

from __future__ import annotations

import math
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
    return torch.stack((flat // (p * o), (flat // o) % p, flat % o), dim=-1)


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
# path 1: certified bound
# --------------------------------------------------------------------------------------------
def _seed_tau(s_s, s_p, s_o, kk: int, prior: Optional[TripletPrior]):
    """A lower bound tau [c] on the true kk-th best score: the kk-th best exact score (log u +
    log psi_u) of kk distinct triplets. Candidates: for each rank r, the kk best triplets of the
    r-th term alone within the block of the top-m classes of each factor (m^3 >= kk, m ~ 2 kk^1/3),
    so the seed follows every rank's peaks; duplicates across ranks are removed."""
    c, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    m = max(1, 2 * math.ceil(kk ** (1.0 / 3.0)))
    while min(m, S) * min(m, P) * min(m, O) < kk:
        m += 1
    v_s, i_s = s_s.topk(min(m, S), dim=2)  # [c, R, ms]
    v_p, i_p = s_p.topk(min(m, P), dim=2)
    v_o, i_o = s_o.topk(min(m, O), dim=2)
    ms, mp, mo = i_s.shape[2], i_p.shape[2], i_o.shape[2]
    term = v_s[..., :, None, None] + v_p[..., None, :, None] + v_o[..., None, None, :]
    best = term.reshape(c, r, -1).topk(kk, dim=2).indices  # [c, R, kk] in the m^3 block
    ci = i_s.gather(2, best // (mp * mo)).reshape(c, -1)
    cj = i_p.gather(2, (best // mo) % mp).reshape(c, -1)
    ck = i_o.gather(2, best % mo).reshape(c, -1)
    fid = (ci * P + cj) * O + ck
    if r > 1:  # blocks of different ranks overlap: a duplicate would overstate tau
        fid, perm = fid.sort(dim=1)
        ci, cj, ck = ci.gather(1, perm), cj.gather(1, perm), ck.gather(1, perm)
    score = _exact_log_u(s_s, s_p, s_o, ci, cj, ck)
    if prior is not None:
        score = score + prior.log_prob_flat(fid).to(score)
    if r > 1:
        dup = torch.zeros_like(fid, dtype=torch.bool)
        dup[:, 1:] = fid[:, 1:] == fid[:, :-1]
        score = score.masked_fill(dup, -math.inf)
    return score.topk(kk, dim=1).values[:, -1]


def _pair_bound(s_s, s_p, s_o) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pairwise upper bounds on u(i, j, k) (numerator of eq. 5), in float64 linear space relative
    to exp(top): returns (h_ik [c, S O], h_ij [c, S, P], h_kj [c, O, P], top [c]) with
    u(i, j, k) <= exp(top) * min(h_ik(i, k), h_ij(i, j), h_kj(k, j)).

    h_ik(i, k) = sum_r phi_s,r(i) (max_j phi_p,r(j)) phi_o,r(k), one batched matmul [S, R] @ [R, O]
    with each factor shifted by its maximum (so h <= R); likewise h_ij and h_kj. Entries far below
    the maximum may underflow; adding R e^-700 (more than float64 can lose) keeps them upper
    bounds, and the factor 1 + 1e-9 covers the matmul's rounding (~1e-15 relative).
    float32 logits use float32 here (twice as fast; underflow below e^-80 relative, covered by a
    larger slack: thresholds that deep let every candidate pass, sending the pair to dense).
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
    return (torch.arange(rows.numel(), device=rows.device) - starts[rows]) * width, counts * width


class _Support:
    """The prior's support decoded once per call: flat ids, class ids, psi_u, log psi_u."""

    def __init__(self, prior: TripletPrior, P: int, O: int):
        self.flat = prior.support_index
        self.i, self.j, self.k = self.flat // (P * O), (self.flat // O) % P, self.flat % O
        self.ik = self.i * O + self.k
        self.ij = self.i * P + self.j
        self.kj = self.k * P + self.j
        self.log_psi = prior.support_log_prob.to(torch.float64)
        self.psi = self.log_psi.exp()
        self.psi32 = self.psi.float()
        self.u = self.flat.numel()

    def exact(self, xs, xp, xo, rows: Tensor, t: Tensor) -> Tensor:
        """Exact log u + log psi_u of support entries t for pairs rows (broadcastable index)."""
        lu = (xs[rows, :, self.i[t]] + xp[rows, :, self.j[t]] + xo[rows, :, self.k[t]]).logsumexp(
            -1
        )
        return lu + self.log_psi[t].to(lu)


def _bound_path(s_s, s_p, s_o, kk: int, prior: Optional[TripletPrior], max_fraction: float):
    """Certified top-kk for all pairs. Returns (scores [N,kk] (unnormalized: log u + log psi_u),
    flat ids [N,kk], certified [N]).

    1. tau: a lower bound on the kk-th best score: the kk-th best exact score of kk distinct
       triplets (:func:`_seed_tau`; with a prior also the kk support triplets of largest bound).
    2. u(i, j, k) <= exp(top) min(h_ik(i, k), h_ij(i, j), h_kj(k, j)) (:func:`_pair_bound`). A
       triplet off the prior's support scores log floor + log u, so it can reach tau only if all
       three bounds reach tau - log floor; a support triplet t only if log psi_u(t) + the bound
       reaches tau. Those candidates are scored exactly; they hold every triplet scoring >= tau,
       so their top-kk is the exact top-kk.
    Pairs needing more than max_fraction * S P O candidates (flat logits) are left uncertified
    for the dense fallback; finding that costs one small matmul per pair.
    """
    n, r, S = s_s.shape
    P, O = s_p.shape[2], s_o.shape[2]
    dev, dt = s_s.device, s_s.dtype
    sup = _Support(prior, P, O) if prior is not None and prior.num_support > 0 else None
    u = sup.u if sup is not None else 0
    log_floor = float(prior.log_floor) if prior is not None else 0.0
    eps = torch.finfo(dt).eps * 64
    scores = torch.full((n, kk), -math.inf, dtype=dt, device=dev)
    fids = torch.zeros((n, kk), dtype=torch.long, device=dev)
    certified = torch.zeros(n, dtype=torch.bool, device=dev)
    max_cand = max_fraction * S * P * O
    m = 2 * math.ceil(kk ** (1.0 / 3.0)) + 1  # the seed's block side (see _seed_tau)
    seed_cost = r * min(m**3, S * P * O) + 3 * r * r * kk
    for a, b in _chunks(n, 4 * S * O + 2 * P * (S + O) + r * (S + P + O) + seed_cost + 4 * u):
        xs, xp, xo = s_s[a:b], s_p[a:b], s_o[a:b]
        tau = _seed_tau(xs, xp, xo, kk, prior)
        h, h_ij, h_kj, top = _pair_bound(xs, xp, xo)
        if sup is not None:
            # psi_u(t) u(t) <= psi_u(t) exp(top) min(h_ik, h_ij, h_kj) at t's classes: [c, U]
            sup_bound = torch.minimum(
                torch.minimum(h.index_select(1, sup.ik), h_ij.flatten(1).index_select(1, sup.ij)),
                h_kj.flatten(1).index_select(1, sup.kj),
            ).mul_(sup.psi if h.dtype == torch.float64 else sup.psi32)
            if u >= kk:
                # with a strong prior the best triplets are support ones: score exactly the kk
                # support triplets of largest bound; their kk-th score is another lower bound
                t = sup_bound.topk(kk, dim=1).indices
                rows = torch.arange(t.shape[0], device=dev)[:, None]
                tau = torch.maximum(tau, sup.exact(xs, xp, xo, rows, t).amin(1))
        scale = (xs.amax(2) + xp.amax(2) + xo.amax(2)).abs().amax(1) + 1.0
        low = (tau - eps * scale).to(torch.float64)  # margin: rounding must not drop a tie with tau
        need = (low - top).clamp(max=700.0).exp()  # relative to exp(top); 0 if tau = -inf
        need_off = (need * math.exp(-log_floor)).to(h.dtype)[:, None]
        need = need.to(h.dtype)
        mask_ik = h >= need_off
        mask_ij = h_ij >= need_off[..., None]  # [c, S, P]
        mask_kj = h_kj >= need_off[..., None]  # [c, O, P]
        n_ik = mask_ik.sum(1)
        n_cand = n_ik * P  # quick upper bound on the off-support candidates
        big = (n_cand > max_cand).nonzero().squeeze(1)
        if big.numel():
            # exact count of (i, j, k) passing all three bounds, a boolean "triangle count":
            # sum_ik mask_ik(i, k) (mask_ij @ mask_kj^T)(i, k); one float32 matmul per pair,
            # far cheaper than the dense fallback it may avoid (exact below 2^24 per entry)
            tri = torch.bmm(mask_ij[big].float(), mask_kj[big].float().transpose(1, 2))
            n_cand[big] = (tri.flatten(1) * mask_ik[big]).sum(1).long()
        if sup is not None:
            mask_sup = sup_bound >= need[:, None]
            n_cand = n_cand + mask_sup.sum(1)
        ok = (n_cand <= max_cand) & torch.isfinite(tau)
        ok_idx = ok.nonzero().squeeze(1)
        # score the candidates of a few pairs at a time: memory ~ candidates x R (plus the
        # boolean [Q, P] filter of the passing (subject, object) classes)
        group_cost = (n_cand[ok_idx] * (r + 2) + n_ik[ok_idx] * P // 4).cumsum(0)
        group = torch.div(group_cost - 1, 4 * _CHUNK_ELEMENTS, rounding_mode="floor").tolist()
        start = 0
        while start < len(group):
            end = start
            while end < len(group) and group[end] == group[start]:
                end += 1
            gi = ok_idx[start:end]
            v, f, good = _score_group(
                xs,
                xp,
                xo,
                gi,
                (mask_ik, mask_ij, mask_kj),
                mask_sup if sup is not None else None,
                sup,
                kk,
                log_floor,
                low,
            )
            dst = a + gi[good]
            scores[dst], fids[dst], certified[dst] = v[good], f[good], True
            start = end
    return scores, fids, certified


def _score_group(xs, xp, xo, gi, masks, mask_sup, sup: Optional[_Support], kk, log_floor, low):
    """Exact scores of the candidates of pairs gi (rows of the chunk); their top-kk."""
    dev, dt = xs.device, xs.dtype
    O = xo.shape[2]
    P = xp.shape[2]
    mask_ik, mask_ij, mask_kj = masks
    n_ok = gi.numel()
    # list A: off-support triplets passing all three pairwise bounds
    row_a, ik = mask_ik[gi].nonzero().unbind(1)
    ci, ck = ik // O, ik % O
    pair = gi[row_a]
    keep = mask_ij[pair, ci] & mask_kj[pair, ck]  # [Q, P]
    q, cj = keep.nonzero().unbind(1)
    row_a, pair, ci, ck = row_a[q], pair[q], ci[q], ck[q]
    score_a = (xs[pair, :, ci] + xp[pair, :, cj] + xo[pair, :, ck]).logsumexp(1)
    fid_a = (ci * P + cj) * O + ck
    if sup is not None:
        pos = torch.searchsorted(sup.flat, fid_a).clamp_(max=sup.u - 1)
        score_a = score_a.masked_fill(sup.flat[pos] == fid_a, -math.inf)  # scored in list B
    score_a = score_a + log_floor
    pos_a, width = _row_positions(row_a, n_ok)
    cnt_a = width
    if sup is not None:
        # list B: support triplets that can still reach tau
        row_b, t = mask_sup[gi].nonzero().unbind(1)
        score_b = sup.exact(xs, xp, xo, gi[row_b], t)
        pos_b, cnt_b = _row_positions(row_b, n_ok)
        width = cnt_a + cnt_b
    w = max(kk, int(width.max()) if n_ok else 0)
    pad_v = torch.full((n_ok, w), -math.inf, dtype=dt, device=dev)
    pad_f = torch.zeros((n_ok, w), dtype=torch.long, device=dev)
    pad_v[row_a, pos_a] = score_a
    pad_f[row_a, pos_a] = fid_a
    if sup is not None:
        cols_b = cnt_a[row_b] + pos_b
        pad_v[row_b, cols_b] = score_b
        pad_f[row_b, cols_b] = sup.flat[t]
    top_v, top_i = pad_v.topk(kk, dim=1)
    good = torch.isfinite(top_v[:, -1]) & (top_v[:, -1] >= low[gi].to(dt))
    return top_v, pad_f.gather(1, top_i), good


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


def _rescore(s_s, s_p, s_o, fid: Tensor, prior: Optional[TripletPrior]):
    """Exact log u (+ log psi_u) of flat ids [c, kk]; re-sorted descending."""
    P, O = s_p.shape[2], s_o.shape[2]
    score = _exact_log_u(s_s, s_p, s_o, fid // (P * O), (fid // O) % P, fid % O)
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
    if prior is not None:
        _check_prior(prior, (S, P, O), ctx)
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

    use_bound = method == "bound" or (method == "auto" and total > dense_threshold)
    if use_bound:
        v, f, ok = _bound_path(s_s, s_p, s_o, kk, prior, max_enumerate_fraction)
        scores[ok], fids[ok], done = v[ok], f[ok], ok
    last_decode_stats["bound"] = int(done.sum())
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
