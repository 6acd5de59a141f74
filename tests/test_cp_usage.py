"""component_shares and rank1_divergence against hand-worked mixtures and a numpy brute force."""

import numpy as np
import pytest
import torch

from vrd_d2.modeling.cp_usage import component_shares, rank1_divergence


def _numpy_kl(s_s, s_p, s_o):
    """KL of the dense CP tensor to the product of its marginals, summed term by term."""
    a, b, c = (x.double().exp().numpy() for x in (s_s, s_p, s_o))
    out = []
    for n in range(a.shape[0]):
        t = np.einsum("ri,rj,rk->ijk", a[n], b[n], c[n])
        t /= t.sum()
        m = np.einsum("i,j,k->ijk", t.sum((1, 2)), t.sum((0, 2)), t.sum((0, 1)))
        out.append(sum(t.flat[q] * np.log(t.flat[q] / m.flat[q]) for q in range(t.size) if t.flat[q] > 0))
    return np.array(out)


def test_two_disjoint_components_of_equal_mass():
    # component 0: (subject 0, predicate 0, object 0); component 1: (1, 1, 1); equal masses
    big, small = 0.0, -60.0
    s = torch.full((1, 2, 2), small)
    s[0, 0, 0] = s[0, 1, 1] = big
    shares = component_shares(s, s, s)
    torch.testing.assert_close(shares, torch.tensor([[0.5, 0.5]]))
    # psi_c = 1/2 on (0,0,0) and (1,1,1); marginals uniform: KL = sum 1/2 log(1/2 / 1/8) = log 4
    assert float(rank1_divergence(s.double(), s.double(), s.double())) == pytest.approx(np.log(4.0), rel=1e-9)


def test_rank1_and_identical_components_have_no_divergence():
    g = torch.Generator().manual_seed(0)
    f = [torch.randn(3, 1, d, generator=g, dtype=torch.float64) for d in (4, 5, 6)]
    assert torch.all(rank1_divergence(*f).abs() < 1e-12)
    torch.testing.assert_close(component_shares(*f), torch.ones(3, 1, dtype=torch.float64))
    twice = [torch.cat([x, x], 1) for x in f]  # two equal components: still a rank-1 tensor
    assert torch.all(rank1_divergence(*twice).abs() < 1e-12)
    torch.testing.assert_close(component_shares(*twice), torch.full((3, 2), 0.5, dtype=torch.float64))


def test_random_mixtures_match_the_brute_force():
    g = torch.Generator().manual_seed(1)
    f = [2.0 * torch.randn(5, 3, d, generator=g, dtype=torch.float64) for d in (4, 3, 5)]
    np.testing.assert_allclose(rank1_divergence(*f).numpy(), _numpy_kl(*f), rtol=1e-9, atol=1e-12)
    mass = np.stack([x.exp().sum(-1).numpy() for x in f]).prod(0)  # [N, R]
    np.testing.assert_allclose(component_shares(*f).numpy(), mass / mass.sum(1, keepdims=True), rtol=1e-12)
