"""The prior psi_u as the certified path needs it: lookup tables, indexed by (subject, object)
cell, built once per (prior state, device, dtype) and cached.

The cache is a weak-keyed memo (:func:`prior_tables`): it never keeps a prior alive, and a change
of the prior's buffers (``set_counts``, ``load_state_dict``, in-place edits) rebuilds its tables.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

from ..cp_checks import unravel_triplets
from ..triplet_prior import TripletPrior
from .common import row_positions

__all__ = ["PriorTables", "cached_prior_tables", "prior_on_device", "DENSE_PRIOR_MAX"]


def prior_on_device(prior: TripletPrior, device: torch.device) -> TripletPrior:
    """The prior with its buffers on ``device``, without moving the caller's module (buffers are
    copied directly: a subclass may keep them out of its state_dict)."""
    if prior.support_index.device == device:
        return prior
    moved = TripletPrior(*prior.shape)
    for name in ("support_index", "support_log_prob", "log_floor"):
        setattr(moved, name, getattr(prior, name).to(device))
    return moved.to(device)


# dense log psi_u lookup table up to this many triplets (VG150: 1.2M, 4.6 MB in float32); larger
# priors fall back to a binary search in the sorted support
DENSE_PRIOR_MAX = 1 << 24
# support predicates kept per (subject, object) cell for the seed (largest psi_u first)
SEED_CELL_WIDTH = 4
# the seed also scores the SEED_TOP_PRIOR * k support triplets of largest psi_u
SEED_TOP_PRIOR = 8
_TABLES_BY_PRIOR: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class PriorTables:
    """What the bound path needs of a prior, on one device, for logits of one dtype.

    * The support sorted by (subject, object) cell (then psi_u descending), with a CSR pointer
      ``cell_ptr [S O + 1]``: predicate ``predicate``, ratio ``ratio = psi_u / floor`` (= count + 1 for
      :meth:`TripletPrior.from_counts`; raised to >= 1, a larger ratio still bounds) in the
      bound's dtype, ``log_prior`` in the logits' dtype and the flat id ``flat_id``.
    * ``cell_max_ratio [S O]``: the largest w of each cell (0 where the cell has no support entry), so
      the support entries of a pair are pruned cell by cell, never one by one.
    * ``lookup(flat)`` / ``is_support(flat)``: log psi_u in the logits' dtype (bit-identical to
      the dense fallbacks) and support membership, by dense tables gathers (binary search in the
      support when S P O > ``DENSE_PRIOR_MAX``).
    * ``cell_top_predicates``, ``cell_top_log_prior [S O, W]``: the (up to) W support predicates of largest psi_u of
      each cell and their log psi_u (-inf padded), and ``by_prior_flat_id``: the support triplets of
      largest psi_u first (:func:`~.bounds.prior_lower_bound`); ``cell_key`` and
      :meth:`support_prefix_end`: a cell's entries with w above a threshold, by one search.
    """

    def __init__(self, prior: TripletPrior, bound_dtype: torch.dtype, dt: torch.dtype):
        S, P, O = prior.shape
        dev = prior.support_index.device
        idx = prior.support_index
        # tensors only, never the prior: the cache's values must not keep its weak keys alive
        self.dtype = dt
        self.support_index = idx
        self.support_log_prob = prior.support_log_prob.to(dt)
        self.log_floor = float(prior.log_floor)
        lp = prior.support_log_prob.to(torch.float64)
        self.min_log_prior = min([self.log_floor] + ([float(lp.min())] if lp.numel() else []))
        w = (lp - self.log_floor).exp().clamp_(min=1.0)
        si, sj, sk = unravel_triplets(idx, P, O)
        ik = si * O + sk
        order = w.argsort(descending=True, stable=True)
        self.by_prior_flat_id = idx[order]  # psi_u descending
        self.by_prior_ids = torch.stack((si, sj, sk))[:, order]
        self.by_prior_log_prior = prior.support_log_prob[order].to(dt)
        order = order[ik[order].argsort(stable=True)]  # by cell, then psi_u descending
        cell = ik[order]
        self.flat_id = idx[order]
        self.predicate = (self.flat_id // O) % P
        self.ratio = w[order].to(bound_dtype)
        self.log_prior = prior.support_log_prob[order].to(dt)
        counts = torch.bincount(cell, minlength=S * O)
        self.cell_ptr = torch.zeros(S * O + 1, dtype=torch.long, device=dev)
        self.cell_ptr[1:] = counts.cumsum(0)
        self.cell_max_ratio = (
            torch.zeros(S * O, dtype=torch.float64, device=dev).scatter_reduce_(0, ik, w, "amax").to(bound_dtype)
        )
        self.cell_bound_ratio = self.cell_max_ratio.clamp(min=1.0)  # off-support entries have w = 1
        # search keys: cell * stride + (max log w - log w), ascending (w descending in a cell), so
        # the entries of a cell with w >= a threshold are a prefix found by one searchsorted
        log_w = w[order].log()
        self.max_log_ratio = float(log_w.max()) if log_w.numel() else 0.0
        self.key_stride = self.max_log_ratio + 2.0
        self.cell_key = cell.to(torch.float64) * self.key_stride + (self.max_log_ratio - log_w)
        width = SEED_CELL_WIDTH
        self.cell_top_predicates = torch.zeros((S * O, width), dtype=torch.long, device=dev)
        self.cell_top_log_prior = torch.full((S * O, width), -math.inf, dtype=dt, device=dev)
        if idx.numel():
            pos, _ = row_positions(cell, S * O)
            sel = pos < width
            self.cell_top_predicates[cell[sel], pos[sel]] = self.predicate[sel]
            self.cell_top_log_prior[cell[sel], pos[sel]] = self.log_prior[sel]
        self.dense_log = self.dense_flag = None
        if S * P * O <= DENSE_PRIOR_MAX:
            self.dense_log = prior.to_dense(log=True).reshape(-1).to(dt)
            self.dense_flag = torch.zeros(S * P * O, dtype=torch.bool, device=dev)
            self.dense_flag[idx] = True

    def support_prefix_end(self, cell: Tensor, min_log_ratio: Tensor) -> Tensor:
        """For cells [Q] and thresholds [Q] (float64): the end of each cell's support entries
        with log w >= the threshold (widened by 1e-4: a superset), as an index into the
        by-cell tables; the entries are [cell_ptr[cell], end)."""
        offset = (self.max_log_ratio - min_log_ratio + 1e-4).clamp(-0.5, self.max_log_ratio + 0.5)
        query = cell.to(torch.float64) * self.key_stride + offset
        return torch.searchsorted(self.cell_key, query, right=True)

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
        out = torch.full(flat.shape, self.log_floor, dtype=self.dtype, device=flat.device)
        sup = self.support_index
        if sup.numel():
            pos = torch.searchsorted(sup, flat).clamp_(max=sup.numel() - 1)
            hit = sup.take(pos) == flat
            out = torch.where(hit, self.support_log_prob.take(pos), out)
        return out


def cached_prior_tables(prior: TripletPrior, device: torch.device, dt: torch.dtype) -> PriorTables:
    """Cached :class:`PriorTables` of ``prior`` (keyed by the identity and version counters of its
    buffers, so :meth:`TripletPrior.set_counts`, ``load_state_dict`` or in-place edits rebuild)."""
    bound_dtype = torch.float32 if dt == torch.float32 else torch.float64
    bufs = (prior.support_index, prior.support_log_prob, prior.log_floor)
    state = tuple((id(b), b._version) for b in bufs)
    per_prior = _TABLES_BY_PRIOR.setdefault(prior, {})
    key = (str(device), dt)
    hit = per_prior.get(key)
    if hit is not None and hit[0] == state and all(x is y for x, y in zip(hit[1], bufs)):
        return hit[2]
    tables = PriorTables(prior_on_device(prior, device), bound_dtype, dt)
    per_prior[key] = (state, bufs, tables)
    return tables
