"""How much of its rank a CP distribution uses (pure torch; diagnostics, not the model).

psi_c(i, j, k) = sum_r phi_s,r(i) phi_p,r(j) phi_o,r(k) / Z is a mixture of R rank-1 components,
component r with mass Z_r = sum phi_s,r * sum phi_p,r * sum phi_o,r. Two views of how many of them
a trained net uses:

* :func:`component_shares`: Z_r / Z per pair. One share near 1 = one live component.
* :func:`rank1_divergence`: KL(psi_c || product of its three marginals) per pair, in nats. 0 for
  any rank-1 distribution (also for R identical components); what a rank-1 model cannot
  represent otherwise. Dense per pair: O(S P O) memory, for small class counts only.
"""

from torch import Tensor

from .cp_triplet import check_factors, dense_log_prob, log_marginals

__all__ = ["component_shares", "rank1_divergence"]


def component_shares(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tensor:
    """Z_r / Z of each component: Tensor[N, R], rows summing to 1.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
    """
    check_factors(s_s, s_p, s_o, where="component_shares")
    log_mass = s_s.logsumexp(-1) + s_p.logsumexp(-1) + s_o.logsumexp(-1)
    return log_mass.softmax(-1)


def rank1_divergence(s_s: Tensor, s_p: Tensor, s_o: Tensor) -> Tensor:
    """KL(psi_c || p_s x p_p x p_o) per pair in nats, p_* psi_c's marginals: Tensor[N] >= 0.

    Args:
        s_s: Tensor[N, R, S], s_p: Tensor[N, R, P], s_o: Tensor[N, R, O] log-factors.
    """
    lp = dense_log_prob(s_s, s_p, s_o)  # [N, S, P, O]
    ls, lpp, lo = log_marginals(s_s, s_p, s_o)
    l1 = ls[:, :, None, None] + lpp[:, None, :, None] + lo[:, None, None, :]
    return (lp.exp() * (lp - l1)).flatten(1).sum(1).clamp(min=0.0)
