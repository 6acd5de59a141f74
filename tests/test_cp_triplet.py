"""Tests of vrd_d2/modeling/cp_triplet.py against brute-force dense computations and the paper's
closed-form gradient (computed here from the formula, independently of the module)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vrd_d2.modeling.cp_triplet import (
    TripletPrior,
    cp_nll_loss,
    dense_log_prob,
    log_marginals,
    log_partition,
    marginals,
    predicate_log_conditional,
    triplet_log_prob,
    triplet_log_score,
)

FAST = settings(max_examples=25, deadline=None)


def brute_log_y(s_s, s_p, s_o):
    """log y [N,S,P,O] from eq. 5 by brute force in float64: stack all R terms, normalize by the sum."""
    s_s, s_p, s_o = s_s.double(), s_p.double(), s_o.double()
    terms = s_s[:, :, :, None, None] + s_p[:, :, None, :, None] + s_o[:, :, None, None, :]
    lu = terms.logsumexp(1)
    return lu - lu.flatten(1).logsumexp(1)[:, None, None, None]


def rand_factors(n, r, s, p, o, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(n, r, c, generator=g, dtype=torch.float64) * scale).to(dtype) for c in (s, p, o))


def rand_targets(n, s, p, o, m, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    trip = torch.stack([torch.randint(c, (m,), generator=g) for c in (s, p, o)], 1)
    pair = torch.randint(n, (m,), generator=g)
    return trip, pair


sizes = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 5))


@FAST
@given(sizes=sizes, scale=st.sampled_from([0.1, 3.0, 30.0, 80.0]), seed=st.integers(0, 10**6))
def test_log_partition_and_triplet_log_prob_match_dense(sizes, scale, seed):
    n, r, s, p, o = sizes
    f = rand_factors(n, r, s, p, o, scale, seed=seed)
    ref = brute_log_y(*f)
    # eq. 6 against the dense sum of the unnormalized tensor
    terms = f[0][:, :, :, None, None] + f[1][:, :, None, :, None] + f[2][:, :, None, None, :]
    torch.testing.assert_close(log_partition(*f), terms.logsumexp(1).flatten(1).logsumexp(1), rtol=1e-12, atol=1e-9)
    trip, pair = rand_targets(n, s, p, o, 7, seed)
    torch.testing.assert_close(
        triplet_log_prob(*f, trip, pair),
        ref[pair, trip[:, 0], trip[:, 1], trip[:, 2]],
        rtol=1e-10,
        atol=1e-9,
    )
    torch.testing.assert_close(dense_log_prob(*f), ref, rtol=1e-10, atol=1e-9)


@FAST
@given(sizes=sizes, seed=st.integers(0, 10**6))
def test_marginals_and_predicate_conditional_match_dense(sizes, seed):
    n, r, s, p, o = sizes
    f = rand_factors(n, r, s, p, o, 4.0, seed=seed)
    y = brute_log_y(*f).exp()
    ps, pp, po = marginals(*f)
    torch.testing.assert_close(ps, y.sum((2, 3)), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(pp, y.sum((1, 3)), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(po, y.sum((1, 2)), rtol=1e-9, atol=1e-12)
    g = torch.Generator().manual_seed(seed)
    sub, obj = torch.randint(s, (n,), generator=g), torch.randint(o, (n,), generator=g)
    sl = y[torch.arange(n), sub, :, obj]  # [N, P]
    torch.testing.assert_close(
        predicate_log_conditional(*f, sub, obj).exp(),
        sl / sl.sum(1, keepdim=True),
        rtol=1e-9,
        atol=1e-12,
    )


def test_nll_loss_sums_multimodal_triplets_and_means_over_annotated_pairs():
    f = rand_factors(4, 3, 5, 4, 6, seed=3)
    ref = brute_log_y(*f)
    # pair 0: two triplets (multimodal), pair 2: one, pairs 1 and 3: none
    trip = torch.tensor([[0, 1, 2], [4, 3, 5], [1, 0, 0]])
    pair = torch.tensor([0, 0, 2])
    lp = [ref[0, 0, 1, 2], ref[0, 4, 3, 5], ref[2, 1, 0, 0]]
    per_pair = torch.tensor([-(lp[0] + lp[1]), 0.0, -lp[2], 0.0], dtype=torch.float64)
    torch.testing.assert_close(cp_nll_loss(*f, trip, pair, reduction="none"), per_pair)
    torch.testing.assert_close(cp_nll_loss(*f, trip, pair, reduction="sum"), per_pair.sum())
    torch.testing.assert_close(cp_nll_loss(*f, trip, pair), per_pair.sum() / 2)
    g = [x.clone().requires_grad_() for x in f]
    empty = cp_nll_loss(*g, trip[:0], pair[:0])
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    empty.backward()
    assert all(float(x.grad.abs().sum()) == 0.0 for x in g)


def test_r1_is_product_of_independent_softmaxes():
    f = rand_factors(3, 1, 5, 4, 6, seed=5)
    ind = (
        f[0][:, 0].log_softmax(-1)[:, :, None, None]
        + f[1][:, 0].log_softmax(-1)[:, None, :, None]
        + f[2][:, 0].log_softmax(-1)[:, None, None, :]
    )
    torch.testing.assert_close(dense_log_prob(*f), ind)
    ls, lp, lo = log_marginals(*f)
    torch.testing.assert_close(lp, f[1][:, 0].log_softmax(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_are_finite_and_match_float64(dtype):
    g = torch.Generator().manual_seed(7)
    f64 = tuple(
        torch.where(torch.rand(3, 2, c, generator=g) < 0.5, 80.0, -80.0).double()
        + torch.randn(3, 2, c, generator=g, dtype=torch.float64)
        for c in (6, 5, 7)
    )
    f = tuple(x.to(dtype) for x in f64)
    trip, pair = rand_targets(3, 6, 5, 7, 10, 7)
    lz = log_partition(*f)
    assert torch.isfinite(lz).all() and lz.dtype == dtype
    ref = brute_log_y(*f64)[pair, trip[:, 0], trip[:, 1], trip[:, 2]]
    tol = dict(rtol=1e-5, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(triplet_log_prob(*f, trip, pair).double(), ref, **tol)
    loss = cp_nll_loss(*[x.clone().requires_grad_() for x in f], trip, pair)
    assert torch.isfinite(loss)
    # the paper's plain exp would overflow here in float32
    if dtype == torch.float32:
        assert not torch.isfinite(f[0].exp().sum(-1) * f[1].exp().sum(-1) * f[2].exp().sum(-1)).all()


def closed_form_grad(s_s, s_p, s_o, triplets, pair_index):
    """d(sum over annotated triplets of -log y_ijk)/d s_a,r(x) from the paper's Training Loss section:
    -[exp(term_r(ijk)) / sum_r' exp(term_r'(ijk))] 1[x = index_a]
    + (prod_b sum_x' exp(s_b,r(x'))) / Z * softmax_x(s_a,r)."""
    fac = [s_s.detach().double(), s_p.detach().double(), s_o.detach().double()]
    grads = [torch.zeros_like(x) for x in fac]
    n, r = fac[0].shape[:2]
    sums = [x.exp().sum(-1) for x in fac]  # [N, R]
    prod = sums[0] * sums[1] * sums[2]  # [N, R]
    z = prod.sum(-1)  # eq. 6 in linear space: fine for the moderate logits used here
    for (i, j, k), nn_ in zip(triplets.tolist(), pair_index.tolist()):
        idx = (i, j, k)
        term = torch.stack([fac[0][nn_, q, i] + fac[1][nn_, q, j] + fac[2][nn_, q, k] for q in range(r)])
        resp = term.exp() / term.exp().sum()
        for a in range(3):
            soft = fac[a][nn_].exp() / sums[a][nn_][:, None]  # [R, C_a]
            grads[a][nn_] += (prod[nn_] / z[nn_])[:, None] * soft
            grads[a][nn_, :, idx[a]] -= resp
    return grads


@pytest.mark.parametrize("r", [1, 3])
def test_autograd_gradient_equals_paper_closed_form(r):
    f = [x.clone().requires_grad_() for x in rand_factors(3, r, 4, 3, 5, 1.5, seed=11 + r)]
    trip = torch.tensor([[0, 1, 2], [3, 2, 4], [1, 1, 1], [2, 0, 3]])
    pair = torch.tensor([0, 0, 1, 2])
    cp_nll_loss(*f, trip, pair, reduction="sum").backward()
    expected = closed_form_grad(*f, trip, pair)
    for got, exp in zip(f, expected):
        torch.testing.assert_close(got.grad, exp, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------- the prior
def test_prior_from_counts_matches_add_one_formula_and_is_sparse():
    counts = np.zeros((4, 3, 5), dtype=np.int64)
    counts[0, 1, 2] = 7
    counts[3, 2, 4] = 1
    counts[1, 0, 0] = 2
    prior = TripletPrior.from_counts(counts)
    assert prior.shape == (4, 3, 5) and prior.num_support == 3
    expected = (counts + 1) / (counts.sum() + counts.size)
    torch.testing.assert_close(prior.to_dense().double(), torch.from_numpy(expected), rtol=1e-6, atol=0)
    assert abs(float(prior.to_dense().sum()) - 1) < 1e-5
    trip = torch.tensor([[0, 1, 2], [2, 2, 2], [3, 2, 4]])
    torch.testing.assert_close(
        prior.log_prob(trip).double(),
        torch.log(torch.tensor([8.0, 1.0, 2.0], dtype=torch.float64) / 70),
        rtol=1e-6,
        atol=0,
    )
    empty = TripletPrior(4, 3, 5)
    torch.testing.assert_close(empty.to_dense(), torch.full((4, 3, 5), 1 / 60, dtype=torch.float64))


def test_prior_state_dict_round_trip_into_fresh_empty_prior():
    counts = torch.zeros(6, 4, 5, dtype=torch.long)
    counts[1, 2, 3], counts[5, 0, 0], counts[0, 3, 4] = 3, 9, 1
    prior = TripletPrior.from_counts(counts)
    holder = torch.nn.Sequential(prior)
    fresh = torch.nn.Sequential(TripletPrior(6, 4, 5))
    fresh.load_state_dict(holder.state_dict())
    torch.testing.assert_close(fresh[0].to_dense(), prior.to_dense())
    assert fresh[0].num_support == 3
    # and back into a prior with a different (larger) support
    other = TripletPrior.from_counts(torch.ones(6, 4, 5))
    other.load_state_dict(prior.state_dict())
    torch.testing.assert_close(other.to_dense(), prior.to_dense())
    with pytest.raises(ValueError, match="sizes"):
        TripletPrior(6, 4, 4).load_state_dict(prior.state_dict())


def test_triplet_log_score_adds_log_prior():
    f = rand_factors(2, 2, 4, 3, 5, seed=2)
    counts = torch.zeros(4, 3, 5)
    counts[0, 1, 2] = 5
    prior = TripletPrior.from_counts(counts)
    trip, pair = torch.tensor([[0, 1, 2], [1, 1, 1]]), torch.tensor([1, 0])
    expected = (
        brute_log_y(*f)[pair, trip[:, 0], trip[:, 1], trip[:, 2]]
        + prior.to_dense(log=True).double()[trip[:, 0], trip[:, 1], trip[:, 2]]
    )
    torch.testing.assert_close(triplet_log_score(*f, trip, pair, prior), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------- bad input
def test_bad_factor_inputs_raise_value_error_naming_argument():
    s_s, s_p, s_o = rand_factors(3, 2, 4, 3, 5)
    trip, pair = torch.tensor([[0, 1, 2]]), torch.tensor([0])
    with pytest.raises(ValueError, match=r"s_p.*\(3, 2\)"):
        log_partition(s_s, s_p[:, :, 0], s_o)
    with pytest.raises(ValueError, match="number of pairs"):
        log_partition(s_s, s_p[:2], s_o)
    with pytest.raises(ValueError, match="rank R"):
        log_partition(s_s, s_p[:, :1], s_o)
    bad = s_o.clone()
    bad[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="s_o.*NaN or inf"):
        cp_nll_loss(s_s, s_p, bad, trip, pair)
    bad[1, 0, 2] = float("inf")
    with pytest.raises(ValueError, match="s_o.*NaN or inf"):
        log_partition(s_s, s_p, bad)
    with pytest.raises(ValueError, match=r"triplets\[:, 1\].*\[0, 3\)"):
        triplet_log_prob(s_s, s_p, s_o, torch.tensor([[0, 3, 2]]), pair)
    with pytest.raises(ValueError, match=r"triplets\[:, 0\]"):
        triplet_log_prob(s_s, s_p, s_o, torch.tensor([[-1, 0, 2]]), pair)
    with pytest.raises(ValueError, match="pair_index"):
        triplet_log_prob(s_s, s_p, s_o, trip, torch.tensor([3]))
    with pytest.raises(ValueError, match="pair_index"):
        triplet_log_prob(s_s, s_p, s_o, trip, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"triplets.*\[M, 3\]"):
        triplet_log_prob(s_s, s_p, s_o, torch.tensor([[0, 1]]), pair)
    with pytest.raises(ValueError, match="integer"):
        triplet_log_prob(s_s, s_p, s_o, trip.float(), pair)
    with pytest.raises(ValueError, match="reduction"):
        cp_nll_loss(s_s, s_p, s_o, trip, pair, reduction="avg")
    with pytest.raises(ValueError, match="subject"):
        predicate_log_conditional(s_s, s_p, s_o, torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="object"):
        predicate_log_conditional(s_s, s_p, s_o, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="prior has shape"):
        triplet_log_score(s_s, s_p, s_o, trip, pair, TripletPrior(4, 3, 6))
    with pytest.raises(ValueError, match="counts"):
        TripletPrior.from_counts(-np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="counts"):
        TripletPrior.from_counts(np.ones((2, 2)))


@pytest.mark.parametrize("r", [1, 3])
def test_crf_log_normalizer_matches_dense_sum(r):
    """log sum_t psi_c psi_u, from the support only, equals the dense sum over all triplets."""
    from vrd_d2.modeling.cp_triplet import crf_log_normalizer, dense_log_prob

    g = torch.Generator().manual_seed(r)
    s = [torch.randn(6, r, d, generator=g, dtype=torch.float64) * 4 for d in (5, 4, 6)]
    counts = (torch.rand(5, 4, 6, generator=g) < 0.2).long() * torch.randint(1, 30, (5, 4, 6), generator=g)
    prior = TripletPrior.from_counts(counts)
    dense = (dense_log_prob(*s) + prior.to_dense(log=True)[None]).flatten(1).logsumexp(1)
    torch.testing.assert_close(crf_log_normalizer(*s, prior, pairs_per_chunk=4), dense, rtol=0, atol=1e-10)
    empty = TripletPrior.from_counts(torch.zeros(5, 4, 6))
    uniform = torch.full((6,), -torch.log(torch.tensor(120.0, dtype=torch.float64)).item(), dtype=torch.float64)
    torch.testing.assert_close(crf_log_normalizer(*s, empty), uniform)


def test_overflowing_log_partition_is_an_error_naming_the_argument():
    """Finite float32 logits of 3e38 overflow eq. 6 (logsumexp sums reach inf): every entry point
    refuses them, naming the factor, instead of returning NaN."""
    from vrd_d2.modeling.cp_triplet import crf_log_normalizer
    from vrd_d2.modeling.decode import topk_predicates_given_labels, topk_triplets_per_pair

    s_s, s_p, s_o = rand_factors(2, 2, 4, 3, 5, dtype=torch.float32)
    huge, big_o = s_p.clone(), s_o.clone()
    huge[1, 0, 2], big_o[1, 0, 3] = 3e38, 1e38  # log Z = 4e38: inf in float32
    assert bool(torch.isfinite(huge).all())
    trip, pair = torch.tensor([[0, 1, 2]]), torch.tensor([1])
    prior = TripletPrior.from_counts(np.ones((4, 3, 5), dtype=np.int64))
    calls = [
        lambda: log_partition(s_s, huge, big_o),
        lambda: triplet_log_prob(s_s, huge, big_o, trip, pair),
        lambda: cp_nll_loss(s_s, huge, big_o, trip, pair),
        lambda: log_marginals(s_s, huge, big_o),
        lambda: dense_log_prob(s_s, huge, big_o),
        lambda: crf_log_normalizer(s_s, huge, big_o, prior),
        lambda: topk_triplets_per_pair(s_s, huge, big_o, 5),
        lambda: topk_predicates_given_labels(s_s, huge, big_o, pair.repeat(2), pair.repeat(2), 2),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"log Z.*pair 1, rank 0: the logits of s_p are too"):
            call()
    # large but representable: still finite and equal to the float64 value
    big = s_p.clone()
    big[1, 0, 2] = 1e30
    torch.testing.assert_close(
        log_partition(s_s, big, s_o).double(),
        log_partition(s_s.double(), big.double(), s_o.double()),
    )
    # the sum of three large logsumexps overflows, each one finite: all three named
    third = [torch.full((1, 1, 2), 1.5e38) for _ in range(3)]
    with pytest.raises(ValueError, match="log Z.*logits of s_s, s_p, s_o are too large"):
        log_partition(*third)


def test_crf_log_normalizer_without_prior_is_a_value_error():
    from vrd_d2.modeling.cp_triplet import crf_log_normalizer

    s = rand_factors(2, 2, 4, 3, 5)
    with pytest.raises(ValueError, match="prior must be a TripletPrior.*NoneType"):
        crf_log_normalizer(*s, None)
    with pytest.raises(ValueError, match=r"prior has shape \(4, 3, 6\)"):
        crf_log_normalizer(*s, TripletPrior(4, 3, 6))


def test_unravel_triplets_refuses_negative_ids_and_empty_sizes():
    from vrd_d2.modeling.cp_triplet import unravel_triplets

    flat = torch.tensor([0, 5, 23])  # S, P, O = 2, 3, 4
    subj, pred, obj = unravel_triplets(flat, 3, 4)
    assert subj.tolist() == [0, 0, 1] and pred.tolist() == [0, 1, 2] and obj.tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match=">= 0, found -1"):
        unravel_triplets(torch.tensor([3, -1]), 3, 4)
    for p, o in ((0, 4), (3, 0), (-2, 4), (3, True), (3.0, 4)):
        with pytest.raises(ValueError, match="must be a positive int"):
            unravel_triplets(flat, p, o)
    with pytest.raises(ValueError, match="integer tensor"):
        unravel_triplets(flat.float(), 3, 4)
    empty = unravel_triplets(torch.zeros(0, dtype=torch.long), 3, 4)
    assert all(x.shape == (0,) for x in empty)


def test_prior_counts_must_be_finite_non_negative_integers():
    good = np.zeros((2, 3, 2))
    good[1, 2, 0] = 4.0  # integral floats load as before
    assert TripletPrior.from_counts(good).num_support == 1
    for value, shown in ((0.5, "0.5"), (-1.0, "-1.0"), (float("nan"), "nan"), (float("inf"), "inf")):
        bad = good.copy()
        bad[1, 0, 1] = value
        with pytest.raises(ValueError, match=rf"counts\[1, 0, 1\] = {shown}"):
            TripletPrior.from_counts(bad)
        with pytest.raises(ValueError, match=r"set_counts.*counts\[1, 0, 1\]"):
            TripletPrior(2, 3, 2).set_counts(torch.as_tensor(bad))
