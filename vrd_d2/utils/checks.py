"""Range checks for config and command-line values, in one place, with one message style.

Every check raises ``ValueError("<where>: <name> must be <rule>, found <value!r>")`` so a user sees
which key or flag is wrong and what is expected. ``bool`` is never accepted as a number.
"""

import math
from numbers import Integral, Real
from typing import Optional

__all__ = ["check_int", "check_float", "is_finite_number"]


def is_finite_number(value) -> bool:
    """A real number (not a bool) that is finite as a float; False, not OverflowError, for an
    integer too large for a float (JSON's 10**400)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def check_int(value, name: str, *, low: Optional[int] = None, high: Optional[int] = None, where: str = "vrd_d2") -> int:
    """``value`` as an int in [low, high] (either bound optional); integral floats are not accepted."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{where}: {name} must be an integer, found {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{where}: {name} must be {_interval(low, high)}, found {value!r}")
    return value


def check_float(
    value, name: str, *, low: Optional[float] = None, high: Optional[float] = None, where: str = "vrd_d2"
) -> float:
    """``value`` as a finite float in [low, high] (either bound optional); NaN and inf are refused."""
    if not is_finite_number(value):
        raise ValueError(f"{where}: {name} must be a finite number, found {_short(value)}")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{where}: {name} must be {_interval(low, high)}, found {value!r}")
    return value


def _interval(low, high) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    return f">= {low}" if low is not None else f"<= {high}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"
