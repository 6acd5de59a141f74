"""Argument checks and the flat triplet id convention of the CP maths (pure torch).

Every public entry of :mod:`.cp_triplet`, :mod:`.triplet_prior` and :mod:`.decode` checks its
arguments here and names them in the error, with the expected and the found value.
A flat triplet id is ``(subject * P + predicate) * O + object`` (row-major over ``[S, P, O]``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "unravel_triplets",
    "describe_shape",
    "check_factors",
    "check_index",
    "check_range",
    "check_triplets",
    "check_labels",
]

# the public CP functions call these checks: errors name them, in cp_triplet.py
_FILE = "vrd_d2/modeling/cp_triplet.py"


def unravel_triplets(flat: Tensor, P: int, O: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Flat triplet ids (any shape; id = (subject P + predicate) O + object) -> (subject,
    predicate, object) ids of the same shape: the inverse of :meth:`TripletPrior.flat_index`.

    Raises:
        ValueError if ``P`` or ``O`` is not a positive int, ``flat`` not an integer tensor, or an
        id is negative (floor division would silently wrap it to another triplet).
    """
    ctx = "vrd_d2/modeling/cp_checks.py:unravel_triplets"
    for name, size in (("P", P), ("O", O)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{ctx}: {name} must be a positive int, found {size!r}")
    if not isinstance(flat, Tensor) or flat.is_floating_point() or flat.is_complex():
        raise ValueError(
            f"{ctx}: flat must be an integer tensor of triplet ids, found "
            f"{flat.dtype if isinstance(flat, Tensor) else type(flat).__name__}"
        )
    if flat.numel() and int(flat.min()) < 0:
        raise ValueError(f"{ctx}: flat triplet ids must be >= 0, found {int(flat.min())}")
    return flat // (P * O), (flat // O) % P, flat % O


def describe_shape(t) -> str:
    """The shape of a tensor as a tuple string, or the type name of anything else (for errors)."""
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_factors(s_s: Tensor, s_p: Tensor, s_o: Tensor, *, where: str = "") -> Tuple[int, int, int, int, int]:
    """Validate CP log-factors; return ``(N, R, S, P, O)``.

    Args:
        s_s: Tensor[N, R, S] subject log-factors; s_p: Tensor[N, R, P]; s_o: Tensor[N, R, O].
            Same floating dtype and device, finite (no NaN / inf).
    Raises:
        ValueError naming the argument, the expected and the found shape / dtype.
    """
    ctx = f"{_FILE}:{where or 'check_factors'}"
    for name, t in (("s_s", s_s), ("s_p", s_p), ("s_o", s_o)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{ctx}: {name} must be a torch.Tensor [N, R, C], found {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{ctx}: {name} must be 3-D [N, R, C], found shape {describe_shape(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{ctx}: {name} must be a floating tensor, found dtype {t.dtype}")
    if not (s_s.shape[0] == s_p.shape[0] == s_o.shape[0]):
        raise ValueError(
            f"{ctx}: s_s, s_p, s_o must have the same number of pairs N (dim 0), found shapes "
            f"{describe_shape(s_s)}, {describe_shape(s_p)}, {describe_shape(s_o)}"
        )
    if not (s_s.shape[1] == s_p.shape[1] == s_o.shape[1]):
        raise ValueError(
            f"{ctx}: s_s, s_p, s_o must have the same rank R (dim 1), found shapes "
            f"{describe_shape(s_s)}, {describe_shape(s_p)}, {describe_shape(s_o)}"
        )
    if s_s.shape[1] < 1 or min(s_s.shape[2], s_p.shape[2], s_o.shape[2]) < 1:
        raise ValueError(
            f"{ctx}: rank R and class counts must be >= 1, found shapes "
            f"{describe_shape(s_s)}, {describe_shape(s_p)}, {describe_shape(s_o)}"
        )
    if not (s_s.dtype == s_p.dtype == s_o.dtype):
        raise ValueError(f"{ctx}: s_s, s_p, s_o dtypes differ: {s_s.dtype}, {s_p.dtype}, {s_o.dtype}")
    if not (s_s.device == s_p.device == s_o.device):
        raise ValueError(f"{ctx}: s_s, s_p, s_o devices differ: {s_s.device}, {s_p.device}, {s_o.device}")
    for name, t in (("s_s", s_s), ("s_p", s_p), ("s_o", s_o)):
        if t.numel() and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{ctx}: {name} {describe_shape(t)} contains NaN or inf logits")
    if s_s.numel():
        _check_log_partition_finite(s_s.detach(), s_p.detach(), s_o.detach(), ctx)
    n, r, s = s_s.shape
    return n, r, s, s_p.shape[2], s_o.shape[2]


def _check_log_partition_finite(s_s: Tensor, s_p: Tensor, s_o: Tensor, ctx: str) -> None:
    """Finite logits can still overflow log Z (eq. 6): e.g. float32 logits of 3e38 give
    logsumexp sums of inf, then NaN probabilities. Refuse them, naming the largest factor."""
    sums = (s_s.logsumexp(-1), s_p.logsumexp(-1), s_o.logsumexp(-1))
    terms = sums[0] + sums[1] + sums[2]  # [N, R]
    bad = ~torch.isfinite(terms)
    if not bool(bad.any()):
        return
    n, r = (int(x) for x in bad.nonzero()[0])
    values = {name: float(a[n, r]) for name, a in zip(("s_s", "s_p", "s_o"), sums)}
    # a sum of three overflows only if one term reaches a third of the largest float
    third = torch.finfo(s_s.dtype).max / 3
    worst = [name for name, v in values.items() if not abs(v) < third]
    found = ", ".join(f"{name} {v:.3g}" for name, v in values.items())
    raise ValueError(
        f"{ctx}: log Z (eq. 6) is not finite in {s_s.dtype} at pair {n}, rank {r}: the logits of "
        f"{', '.join(worst)} are too large (logsumexp per factor: {found}); scale the logits "
        "down or use float64"
    )


def check_index(name: str, t, shape_desc: str, ndim: int, last: Optional[int], ctx: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{ctx}: {name} must be a torch.Tensor {shape_desc}, found {type(t).__name__}")
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"{ctx}: {name} must be an integer (long) tensor {shape_desc}, found dtype {t.dtype}")
    if t.dim() != ndim or (last is not None and t.shape[-1] != last):
        raise ValueError(f"{ctx}: {name} must have shape {shape_desc}, found {describe_shape(t)}")


def check_range(name: str, t: Tensor, high: int, what: str, ctx: str) -> None:
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= high:
        raise ValueError(f"{ctx}: {name} ids must be in [0, {high}) ({what}), found range [{lo}, {hi}]")


def check_triplets(triplets, pair_index, n, s, p, o, device, ctx) -> None:
    check_index("triplets", triplets, "[M, 3] (subject, predicate, object)", 2, 3, ctx)
    check_index("pair_index", pair_index, "[M]", 1, None, ctx)
    if pair_index.shape[0] != triplets.shape[0]:
        raise ValueError(
            f"{ctx}: pair_index {describe_shape(pair_index)} must have one entry per row of triplets {describe_shape(triplets)}"
        )
    for name, t in (("triplets", triplets), ("pair_index", pair_index)):
        if t.device != device:
            raise ValueError(f"{ctx}: {name} is on {t.device} but the factors are on {device}")
    check_range("triplets[:, 0]", triplets[:, 0], s, "subject classes S", ctx)
    check_range("triplets[:, 1]", triplets[:, 1], p, "predicate classes P", ctx)
    check_range("triplets[:, 2]", triplets[:, 2], o, "object classes O", ctx)
    check_range("pair_index", pair_index, n, "pairs N", ctx)


def check_labels(subject, object_, n, s, o, device, ctx) -> None:
    """Validate per-pair class ids: ``subject`` LongTensor[n] in [0, s), ``object_`` in [0, o)."""
    for name, t, high, what in (
        ("subject", subject, s, "subject classes S"),
        ("object", object_, o, "object classes O"),
    ):
        check_index(name, t, f"[N={n}]", 1, None, ctx)
        if t.shape[0] != n:
            raise ValueError(f"{ctx}: {name} must have shape [N={n}], found {describe_shape(t)}")
        if t.device != device:
            raise ValueError(f"{ctx}: {name} is on {t.device} but the factors are on {device}")
        check_range(name, t, high, what, ctx)
