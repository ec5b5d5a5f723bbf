"""The small checks every part of a spec runs on its values: names, numbers,
probabilities, whole numbers, with ValueErrors that name the value; and the plain data a
part of a spec is written as."""

from __future__ import annotations

import keyword
import math
from dataclasses import fields
from typing import Any

import numpy as np

__all__ = [
    "check_name",
    "number",
    "nonneg",
    "probability",
    "whole_number",
    "MAX_COUNT",
    "digits",
    "set_field",
    "kind_dict",
    "plain",
]


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii() \
            or keyword.iskeyword(name):
        raise ValueError(f"{what} must be a plain column name (letters, digits, underscores, "
                         f"not starting with a digit), got {name!r}")
    if name == "Intercept":
        raise ValueError(f"{what} may not be called 'Intercept' (the name of the intercept column)")
    return name


def number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # a whole number beyond the largest float, about 1.8e308
        raise ValueError(f"{what} must be a finite number, got a whole number too large for a "
                         f"float ({digits(value)} digits)") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


def nonneg(value: Any, what: str) -> float:
    value = number(value, what)
    if value < 0:
        raise ValueError(f"{what} is a variance and must be >= 0, got {value!r}")
    return value


def probability(value: Any, what: str) -> float:
    value = number(value, what)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} is a probability and must lie in [0, 1], got {value!r}")
    return value


def whole_number(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` as an int in [minimum, 2^63 - 1], else a ValueError naming ``what``
    (a bool is not a whole number here)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    if value > MAX_COUNT:
        raise ValueError(f"{what} must be at most 2**63 - 1, got a whole number of "
                         f"{digits(value)} digits")
    return value


MAX_COUNT = 2**63 - 1
"""Largest count (of groups, of units in a group): the largest 64-bit integer."""


def digits(value: int) -> int:
    """The number of decimal digits of a whole number (without converting it to text,
    which Python refuses beyond 4300 digits)."""
    n = abs(int(value))
    if n == 0:
        return 1
    d = math.floor((n.bit_length() - 1) * math.log10(2)) + 1  # n >= 2**(bits - 1)
    return d + 1 if n >= 10**d else d


def set_field(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__``."""
    object.__setattr__(obj, name, value)


def plain(value: Any) -> Any:
    """A field's value as plain data: tuples as lists (nested too), the rest as it is."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def kind_dict(obj: Any) -> dict[str, Any]:
    """A part of a spec (a small frozen dataclass with a ``kind``) as plain data:
    ``{"kind": ..., field: value, ...}``, what spec files hold."""
    out: dict[str, Any] = {"kind": obj.kind}
    for f in fields(obj):
        out[f.name] = plain(getattr(obj, f.name))
    return out
