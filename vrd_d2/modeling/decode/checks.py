"""Argument checks of the public decoders, in one place: every error is a ValueError that names
the function and the argument, with the expected and the found value."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ..cp_checks import check_factors, describe_shape
from ..triplet_prior import check_prior

__all__ = [
    "METHODS",
    "DecodeArguments",
    "check_positive_int",
    "check_pair_log_weight",
    "check_decode_arguments",
    "check_method",
    "check_ranked_lists",
]

FILE = "vrd_d2/modeling/decode"
METHODS = ("auto", "bound", "linear", "log")


def where(function: str) -> str:
    """The error prefix of a public decoder."""
    return f"{FILE}:{function}"


def check_positive_int(value, name: str, ctx: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{ctx}: {name} must be a positive int, found {value!r}")
    return int(value)


def check_pair_log_weight(weight, n: int, like: Tensor, ctx: str) -> Optional[Tensor]:
    """``weight`` None or a floating Tensor[n] on the factors' device, no NaN / +inf (-inf is a
    legitimate log weight: a zero box score); returned in the factors' dtype."""
    if weight is None:
        return None
    if not isinstance(weight, Tensor) or weight.dim() != 1 or weight.shape[0] != n:
        raise ValueError(f"{ctx}: pair_log_weight must be a Tensor[N={n}], found {describe_shape(weight)}")
    if not weight.is_floating_point():
        raise ValueError(f"{ctx}: pair_log_weight must be floating, found dtype {weight.dtype}")
    if weight.device != like.device:
        raise ValueError(f"{ctx}: pair_log_weight is on {weight.device} but the factors are on {like.device}")
    if weight.numel() and (bool(torch.isnan(weight).any()) or bool((weight == math.inf).any())):
        raise ValueError(f"{ctx}: pair_log_weight {describe_shape(weight)} contains NaN or +inf")
    return weight.to(like.dtype)


class DecodeArguments(NamedTuple):
    """Validated sizes and arguments shared by the decoders."""

    num_pairs: int
    rank: int
    num_subjects: int
    num_predicates: int
    num_objects: int
    k: int
    pair_log_weight: Optional[Tensor]


def check_decode_arguments(s_s, s_p, s_o, k, prior, pair_log_weight, function: str) -> DecodeArguments:
    """The checks every decoder runs: the factors (:func:`check_factors`), ``k`` a positive int,
    ``prior`` None or a TripletPrior of shape (S, P, O), ``pair_log_weight`` as above."""
    ctx = where(function)
    n, r, S, P, O = check_factors(s_s, s_p, s_o, where=function)
    k = check_positive_int(k, "k", ctx)
    if prior is not None:
        check_prior(prior, (S, P, O), ctx)
    weight = check_pair_log_weight(pair_log_weight, n, s_s, ctx)
    return DecodeArguments(n, r, S, P, O, k, weight)


def check_method(method, ctx: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{ctx}: method must be 'auto', 'bound', 'linear' or 'log', found {method!r}")
    return method


def check_ranked_lists(log_scores, triplets, ctx: str) -> None:
    """``log_scores`` a floating Tensor[N, k'] without NaN, ``triplets`` an integer
    Tensor[N, k', 3]."""
    if not isinstance(log_scores, Tensor) or log_scores.dim() != 2 or not log_scores.is_floating_point():
        raise ValueError(f"{ctx}: log_scores must be a floating Tensor[N, k'], found {describe_shape(log_scores)}")
    if (
        not isinstance(triplets, Tensor)
        or triplets.dim() != 3
        or tuple(triplets.shape) != tuple(log_scores.shape) + (3,)
    ):
        raise ValueError(
            f"{ctx}: triplets must be a LongTensor[N, k', 3] matching log_scores "
            f"{describe_shape(log_scores)}, found {describe_shape(triplets)}"
        )
    if triplets.is_floating_point():
        raise ValueError(f"{ctx}: triplets must be an integer tensor, found dtype {triplets.dtype}")
    if bool(torch.isnan(log_scores).any()):
        raise ValueError(f"{ctx}: log_scores {describe_shape(log_scores)} contains NaN")
