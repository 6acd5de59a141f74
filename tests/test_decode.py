"""Exactness of vrd_d2/modeling/decode/ against brute-force dense scoring (ties handled:
scores must match the dense top-k, and every returned triplet must carry its own dense score)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vrd_d2.modeling.cp_triplet import TripletPrior
from vrd_d2.modeling.decode import (
    DecodeStats,
    common,
    dense_topk_triplets,
    prior_tables,
    topk_per_image,
    topk_predicates_given_labels,
    topk_triplets_per_pair,
)

FAST = settings(max_examples=60, deadline=None)


def brute_scores(s_s, s_p, s_o, counts=None, weight=None):
    """Dense score [N, S, P, O] in float64: log y (eq. 5, normalized by the dense sum)
    + log((count + 1) / (total + SPO)) + weight, all written out independently of the module."""
    s_s, s_p, s_o = s_s.double(), s_p.double(), s_o.double()
    terms = s_s[:, :, :, None, None] + s_p[:, :, None, :, None] + s_o[:, :, None, None, :]
    lu = terms.logsumexp(1)
    out = lu - lu.flatten(1).logsumexp(1)[:, None, None, None]
    if counts is not None:
        c = counts.double()
        out = out + torch.log((c + 1) / (c.sum() + c.numel()))
    if weight is not None:
        out = out + weight.double()[:, None, None, None]
    return out


def assert_exact(scores, triplets, dense, k, tol):
    """scores [N,k'], triplets [N,k',3] vs dense [N,S,P,O] (float64)."""
    n = dense.shape[0]
    kk = min(k, dense[0].numel())
    assert scores.shape == (n, kk) and triplets.shape == (n, kk, 3)
    ref = dense.flatten(1).topk(kk, dim=1).values
    fin = torch.isfinite(ref)
    torch.testing.assert_close(scores.double()[fin], ref[fin], **tol)
    assert torch.equal(torch.isfinite(scores), fin)
    ar = torch.arange(n)[:, None]
    own = dense[ar, triplets[..., 0], triplets[..., 1], triplets[..., 2]]
    torch.testing.assert_close(own[fin], ref[fin], **tol)
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    flat = (triplets[..., 0] * dense.shape[2] + triplets[..., 1]) * dense.shape[3] + triplets[..., 2]
    for row in flat:
        assert row.unique().numel() == row.numel(), "a triplet returned twice"


def peaked(n, r, sizes, big=10.0, n_big=2, gen=None, dtype=torch.float64):
    """Trained-like logits: noise plus a few large entries per factor and rank."""
    out = []
    for c in sizes:
        x = torch.randn(n, r, c, generator=gen, dtype=torch.float64)
        idx = torch.rand(n, r, c, generator=gen).argsort(-1)[..., : min(n_big, c)]
        x.scatter_(2, idx, big + torch.rand(n, r, idx.shape[2], generator=gen, dtype=torch.float64))
        out.append(x.to(dtype))
    return out


def rand_counts(sizes, density, gen):
    c = (torch.rand(*sizes, generator=gen) < density).long() * torch.randint(1, 50, sizes, generator=gen)
    return c


TOL = {torch.float32: dict(rtol=2e-5, atol=2e-4), torch.float64: dict(rtol=1e-10, atol=1e-9)}


@FAST
@given(
    n=st.integers(1, 4),
    r=st.integers(1, 4),
    sizes=st.tuples(st.integers(1, 7), st.integers(1, 5), st.integers(1, 7)),
    k=st.integers(1, 300),
    method=st.sampled_from(["auto", "bound", "linear", "log"]),
    use_prior=st.booleans(),
    use_weight=st.booleans(),
    kind=st.sampled_from(["random", "peaked", "extreme", "ties"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    frac=st.sampled_from([1.0 / 32, 0.25, 2.0]),
    seed=st.integers(0, 10**6),
)
def test_topk_matches_dense(n, r, sizes, k, method, use_prior, use_weight, kind, dtype, frac, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        f = [torch.randn(n, r, c, generator=g, dtype=torch.float64).to(dtype) * 2 for c in sizes]
    elif kind == "peaked":
        f = peaked(n, r, sizes, gen=g, dtype=dtype)
    elif kind == "extreme":
        f = [torch.where(torch.rand(n, r, c, generator=g) < 0.3, 80.0, -80.0).to(dtype) for c in sizes]
    else:  # many exact ties
        f = [torch.randint(0, 2, (n, r, c), generator=g).to(dtype) for c in sizes]
    counts = rand_counts(sizes, 0.1, g) if use_prior else None
    prior = TripletPrior.from_counts(counts).to(dtype) if use_prior else None
    w = torch.randn(n, generator=g, dtype=torch.float64).to(dtype) if use_weight else None
    stats = DecodeStats()
    scores, trip = topk_triplets_per_pair(
        *f,
        k,
        prior=prior,
        pair_log_weight=w,
        method=method,
        max_enumerate_fraction=frac,
        stats=stats,
    )
    if method == "bound" and frac == 2.0:  # candidates never exceed 2 S P O: all certified
        assert stats.bound == n
    assert scores.dtype == dtype and trip.dtype == torch.long
    assert_exact(scores, trip, brute_scores(*f, counts, w), k, TOL[dtype])
    ref_s, ref_t = dense_topk_triplets(*f, k, prior=prior, pair_log_weight=w)
    torch.testing.assert_close(scores, ref_s, **TOL[dtype])


@pytest.mark.parametrize("use_prior", [False, True])
def test_peaked_outputs_are_certified_by_the_bound_without_dense(use_prior):
    g = torch.Generator().manual_seed(0)
    sizes = (60, 20, 60)
    f = peaked(6, 4, sizes, gen=g, dtype=torch.float32)
    counts = rand_counts(sizes, 0.01, g) if use_prior else None
    prior = TripletPrior.from_counts(counts) if use_prior else None
    stats = DecodeStats()
    scores, trip = topk_triplets_per_pair(*f, 100, prior=prior, stats=stats)
    assert stats.as_dict() == {"bound": 6, "linear": 0, "log": 0}
    assert_exact(scores, trip, brute_scores(*f, counts), 100, TOL[torch.float32])


def test_extreme_peaked_logits_certify_and_linear_underflow_falls_back_to_log():
    g = torch.Generator().manual_seed(1)
    sizes = (20, 9, 20)
    f = peaked(3, 3, sizes, big=80.0, n_big=1, gen=g)
    f = [torch.where(x > 50, x, x - 300) for x in f]  # all other logits near -300
    stats = DecodeStats()
    scores, trip = topk_triplets_per_pair(*f, 20, method="bound", max_enumerate_fraction=1.0, stats=stats)
    assert stats.bound == 3
    assert_exact(scores, trip, brute_scores(*f), 20, TOL[torch.float64])
    # the 200th value lies ~760 below the top: float64's linear range underflows, so the
    # forced linear path must hand these pairs to the log-space path
    scores2, trip2 = topk_triplets_per_pair(*f, 200, method="linear", stats=stats)
    assert stats.log == 3
    assert_exact(scores2, trip2, brute_scores(*f), 200, TOL[torch.float64])


def test_random_logits_fall_back_and_stay_exact():
    g = torch.Generator().manual_seed(2)
    f = [torch.randn(5, 5, c, generator=g) for c in (25, 10, 25)]
    stats = DecodeStats()
    scores, trip = topk_triplets_per_pair(*f, 100, stats=stats)
    assert stats.bound < 5  # the bound cannot certify flat logits
    assert_exact(scores, trip, brute_scores(*f), 100, TOL[torch.float32])


def test_k_larger_than_tensor_returns_everything_sorted():
    g = torch.Generator().manual_seed(3)
    f = [torch.randn(2, 2, c, generator=g, dtype=torch.float64) for c in (2, 3, 2)]
    for method in ("auto", "bound", "linear", "log"):
        scores, trip = topk_triplets_per_pair(*f, 1000, method=method)
        assert scores.shape == (2, 12)
        assert_exact(scores, trip, brute_scores(*f), 1000, TOL[torch.float64])
        torch.testing.assert_close(scores.exp().sum(1), torch.ones(2, dtype=torch.float64))


def test_pair_weight_minus_inf_allowed_and_empty_batch():
    f = [torch.randn(2, 2, c) for c in (3, 2, 3)]
    w = torch.tensor([0.0, -math.inf])
    scores, trip = topk_triplets_per_pair(*f, 4, pair_log_weight=w)
    assert torch.isinf(scores[1]).all() and torch.isfinite(scores[0]).all()
    scores, trip = topk_triplets_per_pair(*[x[:0] for x in f], 4)
    assert scores.shape == (0, 4) and trip.shape == (0, 4, 3)


def brute_per_image(scores, trip, k_per_pair, topk):
    rows = []
    for n in range(scores.shape[0]):
        for j in range(scores.shape[1] if not k_per_pair else min(k_per_pair, scores.shape[1])):
            rows.append((float(scores[n, j]), n, j))
    rows.sort(key=lambda x: -x[0])
    return rows[:topk]


@pytest.mark.parametrize("k_per_pair", [1, 10, 0, None])
def test_topk_per_image_matches_brute_force(k_per_pair):
    g = torch.Generator().manual_seed(4)
    f = [torch.randn(7, 3, c, generator=g, dtype=torch.float64) for c in (5, 4, 5)]
    scores, trip = topk_triplets_per_pair(*f, 100)
    pair_idx, t, v, rank = topk_per_image(scores, trip, k_per_pair, 100)
    expected = brute_per_image(scores, trip, k_per_pair, 100)
    assert v.shape[0] == len(expected)
    torch.testing.assert_close(v, torch.tensor([e[0] for e in expected], dtype=torch.float64))
    assert torch.equal(v, scores[pair_idx, rank])
    assert torch.equal(t, trip[pair_idx, rank])
    if k_per_pair:
        assert int(rank.max()) < k_per_pair
        assert int(torch.bincount(pair_idx).max()) <= k_per_pair


@pytest.mark.parametrize("use_prior", [False, True])
def test_topk_predicates_given_labels_matches_dense_slice(use_prior):
    g = torch.Generator().manual_seed(5)
    sizes = (5, 6, 4)
    f = [torch.randn(4, 3, c, generator=g, dtype=torch.float64) for c in sizes]
    counts = rand_counts(sizes, 0.2, g) if use_prior else None
    prior = TripletPrior.from_counts(counts).double() if use_prior else None
    sub, obj = torch.tensor([0, 4, 2, 2]), torch.tensor([3, 0, 1, 1])
    w = torch.randn(4, generator=g, dtype=torch.float64)
    dense = brute_scores(*f, counts, w)[torch.arange(4), sub, :, obj]  # [N, P]
    v, t = topk_predicates_given_labels(*f, sub, obj, 3, prior=prior, pair_log_weight=w)
    torch.testing.assert_close(v, dense.topk(3, dim=1).values)
    torch.testing.assert_close(dense.gather(1, t[..., 1]), v)
    assert torch.equal(t[..., 0], sub[:, None].expand(4, 3)) and torch.equal(t[..., 2], obj[:, None].expand(4, 3))
    v, t = topk_predicates_given_labels(*f, sub, obj, 10, prior=prior, normalize=True)
    assert v.shape == (4, 6)
    torch.testing.assert_close(v.exp().sum(1), torch.ones(4, dtype=torch.float64))


def test_bad_decode_inputs_raise_value_error():
    f = [torch.randn(3, 2, c) for c in (4, 3, 5)]
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            topk_triplets_per_pair(*f, k)
    with pytest.raises(ValueError, match=r"prior has shape \(4, 3, 6\)"):
        topk_triplets_per_pair(*f, 5, prior=TripletPrior(4, 3, 6))
    with pytest.raises(ValueError, match="pair_log_weight"):
        topk_triplets_per_pair(*f, 5, pair_log_weight=torch.zeros(2))
    with pytest.raises(ValueError, match="pair_log_weight"):
        topk_triplets_per_pair(*f, 5, pair_log_weight=torch.tensor([0.0, float("nan"), 0.0]))
    bad = f[1].clone()
    bad[0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match="s_p.*NaN or inf"):
        topk_triplets_per_pair(f[0], bad, f[2], 5)
    with pytest.raises(ValueError, match="number of pairs"):
        topk_triplets_per_pair(f[0], f[1][:1], f[2], 5)
    with pytest.raises(ValueError, match="method"):
        topk_triplets_per_pair(*f, 5, method="fast")
    with pytest.raises(ValueError, match="subject"):
        topk_predicates_given_labels(*f, torch.tensor([0, 1, 4]), torch.tensor([0, 1, 2]), 2)
    scores, trip = topk_triplets_per_pair(*f, 5)
    with pytest.raises(ValueError, match="triplets must be"):
        topk_per_image(scores, trip[:, :4], 1, 10)
    with pytest.raises(ValueError, match="topk"):
        topk_per_image(scores, trip, 1, 0)
    with pytest.raises(ValueError, match="k_per_pair"):
        topk_per_image(scores, trip, -2, 10)


def test_prior_on_another_device_is_not_moved():
    # the meta device stands in for a second device: decoding must copy, not move, the prior
    counts = torch.zeros(3, 2, 3)
    counts[1, 1, 2] = 4
    prior = TripletPrior.from_counts(counts)
    moved = prior_tables.prior_on_device(prior, torch.device("meta"))
    assert moved.support_index.device.type == "meta" and moved.num_support == 1
    assert prior.support_index.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(6)
    sizes = (30, 12, 30)
    f = peaked(8, 4, sizes, gen=g, dtype=torch.float32)
    f[0][4:] = torch.randn(4, 4, 30, generator=g)  # some pairs need the dense fallback
    counts = rand_counts(sizes, 0.01, g)
    prior = TripletPrior.from_counts(counts)
    scores, trip = topk_triplets_per_pair(*[x.cuda() for x in f], 50, prior=prior)
    assert scores.is_cuda and trip.is_cuda
    assert_exact(scores.cpu(), trip.cpu(), brute_scores(*f, counts), 50, TOL[torch.float32])


def _prior_holding(f, k, sizes, gen, extra_density=0.02):
    """A prior whose support holds the true top-k triplets of every pair (plus random entries),
    with large counts on some of them: the support list of the bound path must find them."""
    S, P, O = sizes
    dense = brute_scores(*f)
    counts = rand_counts(sizes, extra_density, gen)
    win = dense.flatten(1).topk(min(k, S * P * O), dim=1).indices.reshape(-1)
    flat = counts.reshape(-1)
    flat[win] = torch.randint(1, 2000, (win.numel(),), generator=gen)
    return counts


@FAST
@given(
    n=st.integers(1, 5),
    r=st.integers(1, 4),
    k=st.integers(1, 120),
    kind=st.sampled_from(["peaked", "random"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    dense_tables=st.booleans(),
    seed=st.integers(0, 10**6),
)
def test_prior_pruning_never_drops_a_true_winner(n, r, k, kind, dtype, dense_tables, seed):
    """The bound path prunes support entries cell by cell (max psi_u of each (subject, object)
    cell) and off-support triplets by the pairwise bounds; with the true winners (and more) in
    the support, it must still return exactly the dense top-k, with the dense psi_u tables or
    with the binary-search fallback for large priors."""
    g = torch.Generator().manual_seed(seed)
    sizes = (9, 6, 8)
    if kind == "peaked":
        f = peaked(n, r, sizes, gen=g, dtype=torch.float64)
    else:
        f = [torch.randn(n, r, c, generator=g, dtype=torch.float64) * 2 for c in sizes]
    counts = _prior_holding(f, k, sizes, g)
    f = [x.to(dtype) for x in f]
    prior = TripletPrior.from_counts(counts)
    old = prior_tables.DENSE_PRIOR_MAX
    prior_tables.DENSE_PRIOR_MAX = old if dense_tables else 0
    stats = DecodeStats()
    try:
        scores, trip = topk_triplets_per_pair(
            *f, k, prior=prior, method="bound", max_enumerate_fraction=2.0, stats=stats
        )
    finally:
        prior_tables.DENSE_PRIOR_MAX = old
    assert stats.bound == n
    assert_exact(scores, trip, brute_scores(*f, counts), k, TOL[dtype])


def test_prior_tables_follow_count_changes_and_small_chunks(monkeypatch):
    """The prior's decoding tables are cached per prior; set_counts must invalidate them. Tiny
    chunks split the candidate scoring into several groups of pairs."""
    g = torch.Generator().manual_seed(7)
    sizes = (40, 12, 40)
    f = peaked(6, 2, sizes, gen=g, dtype=torch.float32)
    counts = rand_counts(sizes, 0.02, g)
    prior = TripletPrior.from_counts(counts)
    stats = DecodeStats()
    scores, trip = topk_triplets_per_pair(*f, 50, prior=prior, stats=stats)
    assert stats.bound == 6
    assert_exact(scores, trip, brute_scores(*f, counts), 50, TOL[torch.float32])
    counts2 = _prior_holding([x.double() for x in f], 50, sizes, g)
    prior.set_counts(counts2)
    monkeypatch.setattr(common, "CHUNK_ELEMENTS", 1 << 16)
    monkeypatch.setattr(common, "GROUP_ELEMENTS", 1 << 10)
    scores, trip = topk_triplets_per_pair(*f, 50, prior=prior, stats=stats)
    assert stats.bound == 6
    assert_exact(scores, trip, brute_scores(*f, counts2), 50, TOL[torch.float32])
    # flat logits, every pair certified: many candidates, scored in several groups per chunk
    flat = [torch.randn(6, 2, c, generator=g) * 0.1 for c in sizes]
    for pr, cnt in ((None, None), (prior, counts2)):
        scores, trip = topk_triplets_per_pair(
            *flat, 50, prior=pr, method="bound", max_enumerate_fraction=2.0, stats=stats
        )
        assert stats.bound == 6
        assert_exact(scores, trip, brute_scores(*flat, cnt), 50, TOL[torch.float32])
    cpu = torch.device("cpu")
    cached = prior_tables.cached_prior_tables(prior, cpu, torch.float32)
    assert prior_tables.cached_prior_tables(prior, cpu, torch.float32) is cached  # unchanged: reused
    prior.support_log_prob.add_(0.0)  # an in-place edit also invalidates (version counter)
    rebuilt = prior_tables.cached_prior_tables(prior, cpu, torch.float32)
    assert rebuilt is not cached
    assert prior_tables.cached_prior_tables(prior, cpu, torch.float32) is rebuilt
    prior.set_counts(counts)  # the first counts again: the tables follow them
    tables = prior_tables.cached_prior_tables(prior, cpu, torch.float32)
    assert tables is not rebuilt
    flat = torch.arange(prior.numel)
    expected = TripletPrior.from_counts(counts).to_dense(log=True).reshape(-1).float()
    torch.testing.assert_close(tables.lookup(flat), expected)
    assert not torch.allclose(rebuilt.lookup(flat), expected)  # the counts2 tables were stale


def test_prior_tables_cache_does_not_keep_the_prior_alive():
    import gc
    import weakref

    g = torch.Generator().manual_seed(8)
    sizes = (6, 4, 6)
    f = peaked(2, 2, sizes, gen=g)
    prior = TripletPrior.from_counts(rand_counts(sizes, 0.2, g))
    topk_triplets_per_pair(*f, 5, prior=prior)
    ref = weakref.ref(prior)
    del prior
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("k", [1, 7, 100, 20 * 15 * 20])
@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize("with_prior", [False, True])
def test_rank1_dominance_path_matches_dense(k, kind, with_prior):
    """R = 1 uses the dominance candidates (plus the prior's support): the same scores as
    dense, and each returned triplet carries its own dense score (ties may swap triplets)."""
    g = torch.Generator().manual_seed(k)
    shape = [(5, 1, 20), (5, 1, 15), (5, 1, 20)]
    if kind == "ties":  # few distinct values: many exact ties
        s = [torch.randint(0, 3, sh, generator=g).double() for sh in shape]
    else:
        s = [torch.randn(sh, generator=g, dtype=torch.float64) * 3 for sh in shape]
    weight = torch.randn(5, generator=g, dtype=torch.float64)
    prior = None
    if with_prior:  # ~3% support, counts skewed
        counts = (torch.rand(20, 15, 20, generator=g) < 0.03).long() * torch.randint(1, 50, (20, 15, 20), generator=g)
        prior = TripletPrior.from_counts(counts)
    stats = DecodeStats()
    v, t = topk_triplets_per_pair(*s, k, prior=prior, pair_log_weight=weight, stats=stats)
    assert stats.bound == 5 and stats.log == 0
    dv, _ = dense_topk_triplets(*s, k, prior=prior, pair_log_weight=weight)
    torch.testing.assert_close(v, dv, rtol=0, atol=1e-10)
    ls = [x[:, 0].log_softmax(-1) for x in s]
    n = torch.arange(5)[:, None]
    own = ls[0][n, t[..., 0]] + ls[1][n, t[..., 1]] + ls[2][n, t[..., 2]] + weight[:, None]
    if prior is not None:
        own = own + prior.log_prob(t.reshape(-1, 3)).reshape(own.shape).to(own)
    torch.testing.assert_close(v, own, rtol=0, atol=1e-10)
    assert len({tuple(x) for x in t[0].tolist()}) == t.shape[1]  # no triplet twice


@FAST
@given(
    n=st.integers(1, 4),
    r=st.integers(1, 5),
    sizes=st.tuples(st.integers(2, 12), st.integers(1, 8), st.integers(1, 12)),
    k=st.integers(1, 120),
    margin=st.sampled_from([0, 2, 32]),
    kind=st.sampled_from(["flat", "random", "peaked", "ties"]),
    use_prior=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10**6),
)
def test_float32_dense_selection_holds_the_exact_top_k(n, r, sizes, k, margin, kind, use_prior, dtype, seed):
    """The float32 fallback (one batched matmul, rows of largest maxima, rounding margins): for
    every pair it calls reliable, its candidates rescored exactly give the brute-force top-k."""
    from vrd_d2.modeling.decode.common import rescore_sorted
    from vrd_d2.modeling.decode.dense import selected_dense_topk

    g = torch.Generator().manual_seed(seed)
    if kind == "flat":
        f = [torch.randn(n, r, c, generator=g, dtype=torch.float64) * 0.1 for c in sizes]
    elif kind == "random":
        f = [torch.randn(n, r, c, generator=g, dtype=torch.float64) * 2 for c in sizes]
    elif kind == "peaked":
        f = peaked(n, r, sizes, gen=g)
    else:
        f = [torch.randint(0, 2, (n, r, c), generator=g).double() for c in sizes]
    f = [x.to(dtype) for x in f]
    counts = rand_counts(sizes, 0.1, g) if use_prior else None
    prior = TripletPrior.from_counts(counts) if use_prior else None
    kk = min(k, sizes[0] * sizes[1] * sizes[2])
    scaled = None
    if prior is not None:
        dense_prior = prior.to_dense().reshape(-1)
        scaled = (dense_prior / dense_prior.max()).float()
    flat, ok = selected_dense_topk(*f, kk, scaled, margin=margin)
    assert flat.shape[0] == n and flat.shape[1] >= kk
    if kind in ("flat", "random") and not use_prior and margin == 32:
        assert bool(ok.all()), "continuous logits: no near-tie should defeat the margins"
    if not bool(ok.any()):
        return
    sel = ok.nonzero().squeeze(1)
    sub = [x[sel] for x in f]
    scores, ids = rescore_sorted(*sub, flat[sel], prior.to(dtype) if prior is not None else None)
    trip = torch.stack(unravel(ids[:, :kk], sizes), -1)
    # the rescored scores are log u + log psi_u; the dense reference is normalized by its sum
    a, b, c = (x.double() for x in sub)
    terms = a[:, :, :, None, None] + b[:, :, None, :, None] + c[:, :, None, None, :]
    log_z = terms.logsumexp(1).flatten(1).logsumexp(1)
    normalized = (scores[:, :kk].double() - log_z[:, None]).to(dtype)
    assert_exact(normalized, trip, brute_scores(*sub, counts), kk, TOL[dtype])


def unravel(flat, sizes):
    _, P, O = sizes
    return flat // (P * O), (flat // O) % P, flat % O
