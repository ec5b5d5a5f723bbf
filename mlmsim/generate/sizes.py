"""Group sizes: one size for all groups, a list of them, or a rule that draws them
(Poisson, uniform). ``SIZES`` maps each rule's kind, as spec files name it, to its class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlmsim import datasets
from mlmsim.generate.checks import kind_dict, number, set_field, whole_number

__all__ = [
    "SizeList",
    "PoissonSizes",
    "UniformSizes",
    "GroupSizes",
    "SIZES",
    "group_sizes",
]


@dataclass(frozen=True)
class SizeList:
    """Given group sizes n_1, ..., n_J (e.g. a real data set's, :meth:`from_dataset`).
    Used as they are, in order (the number of groups must then be len(sizes)); with
    ``resample=True`` each simulated data set draws its J sizes from the list with
    replacement, for any J."""

    sizes: tuple[int, ...]
    resample: bool = False
    kind: ClassVar[str] = "list"

    def __post_init__(self) -> None:
        if isinstance(self.sizes, str) or not isinstance(self.sizes, Sequence | np.ndarray):
            raise ValueError("sizes must be a list of group sizes")
        sizes = tuple(whole_number(v, "a group size") for v in self.sizes)
        if not sizes:
            raise ValueError("the list of group sizes is empty: zero groups")
        if not isinstance(self.resample, bool):
            raise ValueError(f"resample must be true or false, got {self.resample!r}")
        set_field(self, "sizes", sizes)

    @classmethod
    def from_data(cls, data: pd.DataFrame, group: str, resample: bool = False) -> SizeList:
        """The group sizes of a data set, in the order the groups first appear."""
        counts = data.groupby(group, sort=False).size()
        return cls(tuple(int(v) for v in counts.to_numpy()), resample=resample)

    @classmethod
    def from_dataset(cls, name: str, resample: bool = False) -> SizeList:
        """The group sizes of a packaged data set: ``"hsb"`` (160 schools) or ``"nels88"``."""
        return cls.from_data(datasets.load(name), "school", resample=resample)

    def to_dict(self) -> dict:
        return kind_dict(self)


@dataclass(frozen=True)
class PoissonSizes:
    """Random group sizes n_j = minimum + Poisson(mean - minimum), so E n_j = mean and
    n_j >= minimum >= 1."""

    mean: float
    minimum: int = 1
    kind: ClassVar[str] = "poisson"

    def __post_init__(self) -> None:
        minimum = whole_number(self.minimum, "the minimum group size")
        mean = number(self.mean, "the mean group size")
        if mean < minimum:
            raise ValueError(f"the mean group size {mean!r} is below the minimum {minimum}")
        set_field(self, "minimum", minimum)
        set_field(self, "mean", mean)

    def to_dict(self) -> dict:
        return kind_dict(self)


@dataclass(frozen=True)
class UniformSizes:
    """Random group sizes n_j uniform on the whole numbers low, ..., high (low >= 1)."""

    low: int
    high: int
    kind: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        low = whole_number(self.low, "the smallest group size (low)")
        high = whole_number(self.high, "the largest group size (high)")
        if high < low:
            raise ValueError(f"group sizes: high ({high}) is below low ({low})")
        set_field(self, "low", low)
        set_field(self, "high", high)

    def to_dict(self) -> dict:
        return kind_dict(self)


GroupSizes = int | SizeList | PoissonSizes | UniformSizes
SIZES: dict[str, type] = {c.kind: c for c in (SizeList, PoissonSizes, UniformSizes)}


def group_sizes(value: Any) -> GroupSizes:
    """Normalise a group-size specification: an int n (all groups of size n), a list of
    sizes (:class:`SizeList`), or one of the size types. Sizes below 1 raise."""
    if isinstance(value, SizeList | PoissonSizes | UniformSizes):
        return value
    if isinstance(value, bool):
        raise ValueError(f"a group size must be a whole number, got {value!r}")
    if isinstance(value, int | np.integer):
        return whole_number(value, "the group size")
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str):
        return SizeList(tuple(value))
    raise ValueError(f"group sizes must be a whole number, a list of them, or SizeList / "
                     f"PoissonSizes / UniformSizes, got {value!r}")
