"""Shared pieces of the decoders: memory budgets, pair chunks, exact scoring of listed triplets.

Conventions (as in :mod:`vrd_d2.modeling.cp_triplet`): log-factors ``s_s [N, R, S]``,
``s_p [N, R, P]``, ``s_o [N, R, O]``; a flat triplet id is ``(subject * P + predicate) * O +
object``; "log u" is the log of the numerator of eq. 5, log sum_r phi_s,r(i) phi_p,r(j) phi_o,r(k).

The budgets are module attributes read at call time, so tests can shrink them (monkeypatch) to
exercise the chunked code paths on small inputs.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from ..cp_checks import unravel_triplets
from ..triplet_prior import TripletPrior

__all__ = [
    "CHUNK_ELEMENTS",
    "GROUP_ELEMENTS",
    "pair_chunks",
    "triplet_rows",
    "exact_log_numerator",
    "row_positions",
    "rescore_sorted",
]

# elements per chunk of intermediate tensors (~64 MB of float64): bounds peak memory
CHUNK_ELEMENTS = 1 << 23
# candidate elements scored at once by the certified path (a chunk's pairs are split into groups)
GROUP_ELEMENTS = 4 * CHUNK_ELEMENTS


def pair_chunks(n: int, per_pair: int) -> Iterator[Tuple[int, int]]:
    """Half-open ranges ``[a, b)`` of pairs whose working tensors hold ~``CHUNK_ELEMENTS``
    elements, given ``per_pair`` elements per pair (at least one pair per chunk)."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_pair))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def triplet_rows(flat: Tensor, num_predicates: int, num_objects: int) -> Tensor:
    """Flat ids [...] -> LongTensor[..., 3] rows (subject, predicate, object)."""
    return torch.stack(unravel_triplets(flat, num_predicates, num_objects), dim=-1)


def exact_log_numerator(s_s: Tensor, s_p: Tensor, s_o: Tensor, subj: Tensor, pred: Tensor, obj: Tensor) -> Tensor:
    """Exact log u for per-pair candidate lists: ``subj``, ``pred``, ``obj`` LongTensor[c, C]
    (ids into the factors of the c pairs) -> Tensor[c, C]."""
    rank = s_s.shape[1]

    def gather(x, idx):
        return x.gather(2, idx[:, None, :].expand(-1, rank, -1))

    return (gather(s_s, subj) + gather(s_p, pred) + gather(s_o, obj)).logsumexp(1)


def row_positions(rows: Tensor, n_rows: int, width: int = 1) -> Tuple[Tensor, Tensor]:
    """For row ids sorted ascending [Q]: the position of each within its row (times ``width``)
    and the per-row counts [n_rows] (times ``width``)."""
    counts = torch.bincount(rows, minlength=n_rows)
    starts = counts.cumsum(0) - counts
    positions = torch.arange(rows.numel(), device=rows.device) - starts.index_select(0, rows)
    return positions * width, counts * width


def rescore_sorted(
    s_s: Tensor, s_p: Tensor, s_o: Tensor, flat: Tensor, prior: Optional[TripletPrior]
) -> Tuple[Tensor, Tensor]:
    """Exact log u (+ log psi_u) of flat ids [c, K], re-sorted descending: (scores, flat ids)."""
    P, O = s_p.shape[2], s_o.shape[2]
    score = exact_log_numerator(s_s, s_p, s_o, *unravel_triplets(flat, P, O))
    if prior is not None:
        score = score + prior.log_prob_flat(flat).to(score)
    score, order = score.sort(dim=1, descending=True)
    return score, flat.gather(1, order)
