"""A study's conditions: the table of data-generating parameters, one row each.

:func:`conditions_frame` builds the table (a DataFrame as given, or the full grid of a
dict of lists); a :class:`Condition` is one of its rows as the generator and the
methods see it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlmsim.simstudy.records import RESERVED

__all__ = ["Condition", "conditions_frame", "scalar"]


class Condition(Mapping):
    """One row of the conditions table, read-only: ``cond["n_groups"]`` or ``cond.n_groups``.

    ``index`` is the row's position in the table (the condition's number in the records).
    """

    __slots__ = ("index", "_values")

    def __init__(self, index: int, values: Mapping[str, Any]):
        object.__setattr__(self, "index", int(index))
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"condition has no variable {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Condition is read-only")

    def __reduce__(self):
        return (Condition, (self.index, self._values))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Condition({self.index}: {inner})"


def scalar(value: Any) -> Any:
    """A numpy scalar as the Python number it holds; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def conditions_frame(conditions: Mapping | pd.DataFrame | None) -> pd.DataFrame:
    """The conditions table: a DataFrame as given, or the full grid of a dict of lists.

    For a dict, the grid is ``itertools.product`` of the values in key order: the first
    variable varies slowest. A scalar value is a one-level factor.
    """
    if conditions is None:
        return pd.DataFrame(index=pd.RangeIndex(1))
    if isinstance(conditions, pd.DataFrame):
        frame = conditions.reset_index(drop=True).copy()
    elif isinstance(conditions, Mapping):
        keys = list(conditions)
        levels = []
        for key in keys:
            value = conditions[key]
            if isinstance(value, str) or not isinstance(value, Iterable):
                value = [value]
            levels.append([scalar(v) for v in value])
        rows = list(itertools.product(*levels))
        frame = pd.DataFrame(rows, columns=keys)
    else:
        raise TypeError("conditions must be a dict of lists, a DataFrame, or None")
    if len(frame) == 0:
        raise ValueError("the study has no conditions")
    for col in frame.columns:
        if not isinstance(col, str):
            raise TypeError(f"condition variable names must be strings, got {col!r}")
        if col in RESERVED:
            raise ValueError(f"condition variable {col!r} clashes with a column of the "
                             f"records or of the summary; reserved: {sorted(RESERVED)}")
    return frame
