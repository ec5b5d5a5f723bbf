"""The predictors of a spec and how each is drawn: level 1 (continuous, binary,
categorical, given values; and those derived from others: complement, indicator, group
mean, group-centred) and level 2 (continuous, binary). ``PREDICTORS`` maps each kind, as
spec files name it, to its class."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mlmsim.generate.checks import (
    check_name,
    kind_dict,
    nonneg,
    number,
    probability,
    set_field,
)

__all__ = [
    "Predictor",
    "Continuous",
    "Binary",
    "Categorical",
    "Values",
    "Complement",
    "Indicator",
    "GroupMean",
    "GroupCentered",
    "Level2Continuous",
    "Level2Binary",
    "PREDICTORS",
]


class Predictor:
    """Base of the predictor kinds. ``level`` is 1 (varies within groups) or 2
    (constant within a group); ``kind`` is the name used in spec files."""

    kind: ClassVar[str] = ""
    level: ClassVar[int] = 1
    numeric: ClassVar[bool] = True
    derived: ClassVar[bool] = False
    name: str

    def to_dict(self) -> dict:
        return kind_dict(self)


@dataclass(frozen=True)
class Continuous(Predictor):
    """Level-1 continuous predictor x_ij = mean + b_j + w_ij, b_j ~ N(0, var_between),
    w_ij ~ N(0, var_within), independent: group means vary (so centering matters) and
    the intraclass correlation of x is var_between / (var_between + var_within)."""

    name: str
    mean: float = 0.0
    var_between: float = 0.0
    var_within: float = 1.0
    kind: ClassVar[str] = "continuous"

    def __post_init__(self) -> None:
        check_name(self.name, "a predictor name")
        set_field(self, "mean", number(self.mean, f"mean of {self.name!r}"))
        set_field(self, "var_between", nonneg(self.var_between, f"var_between of {self.name!r}"))
        set_field(self, "var_within", nonneg(self.var_within, f"var_within of {self.name!r}"))


@dataclass(frozen=True)
class Binary(Predictor):
    """Level-1 0/1 predictor: x_ij ~ Bernoulli(p_j). With ``p_sd = 0`` every group has
    p_j = p; otherwise p_j ~ Beta with mean p and standard deviation p_sd across groups
    (p_sd^2 < p (1 - p))."""

    name: str
    p: float = 0.5
    p_sd: float = 0.0
    kind: ClassVar[str] = "binary"

    def __post_init__(self) -> None:
        check_name(self.name, "a predictor name")
        p = probability(self.p, f"p of {self.name!r}")
        sd = number(self.p_sd, f"p_sd of {self.name!r}")
        if sd < 0:
            raise ValueError(f"p_sd of {self.name!r} is a standard deviation and must be >= 0, "
                             f"got {sd!r}")
        if sd > 0 and not sd * sd < p * (1.0 - p):
            raise ValueError(
                f"p_sd of {self.name!r} must satisfy p_sd^2 < p (1 - p) = {p * (1 - p):.6g} for "
                f"a Beta distribution of the group probabilities, got p_sd = {sd!r}")
        set_field(self, "p", p)
        set_field(self, "p_sd", sd)

    def beta_parameters(self) -> tuple[float, float]:
        """(a, b) of the Beta distribution of p_j: mean p, variance p_sd^2."""
        p, v = self.p, self.p_sd ** 2
        kappa = p * (1.0 - p) / v - 1.0
        return p * kappa, (1.0 - p) * kappa


_LEVEL = re.compile(r"[^:\[\]\s]+")


@dataclass(frozen=True)
class Categorical(Predictor):
    """Level-1 categorical predictor with k levels, each unit's level drawn with
    ``probs`` (default equal). In the formula it enters as treatment dummies named as
    formulaic names them, ``name[T.level]`` for every level but the first (or
    ``name[level]`` for all levels where formulaic uses full coding, as in ``(0 + f | g)``)."""

    name: str
    levels: tuple[str, ...]
    probs: tuple[float, ...] | None = None
    kind: ClassVar[str] = "categorical"
    numeric: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_name(self.name, "a predictor name")
        if isinstance(self.levels, str) or not isinstance(self.levels, Sequence):
            raise ValueError(f"levels of {self.name!r} must be a list of strings")
        levels = tuple(self.levels)
        if len(levels) < 2:
            raise ValueError(f"categorical {self.name!r} needs at least 2 levels, got {levels}")
        for lv in levels:
            if not isinstance(lv, str) or not _LEVEL.fullmatch(lv):
                raise ValueError(f"level {lv!r} of {self.name!r} must be a non-empty string "
                                 "without spaces, ':', '[' or ']'")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels of {self.name!r} repeat: {levels}")
        set_field(self, "levels", levels)
        if self.probs is not None:
            if len(tuple(self.probs)) != len(levels):
                raise ValueError(f"{self.name!r} has {len(levels)} levels but "
                                 f"{len(tuple(self.probs))} probabilities")
            probs = tuple(probability(v, f"probability of level {lv!r} of {self.name!r}")
                          for v, lv in zip(self.probs, levels, strict=True))
            if abs(sum(probs) - 1.0) > 1e-9:
                raise ValueError(f"the level probabilities of {self.name!r} must sum to 1, "
                                 f"got {sum(probs)!r}")
            set_field(self, "probs", probs)

    @property
    def probabilities(self) -> tuple[float, ...]:
        k = len(self.levels)
        return self.probs if self.probs is not None else (1.0 / k,) * k


@dataclass(frozen=True)
class Values(Predictor):
    """Level-1 values supplied by the user. ``per="position"``: unit i of every group
    gets ``values[i mod len(values)]`` (e.g. measurement occasions 0, 1, 2, 3);
    ``per="row"``: the whole column, whose length must equal the number of rows drawn."""

    name: str
    values: tuple[float, ...]
    per: str = "position"
    kind: ClassVar[str] = "values"

    def __post_init__(self) -> None:
        check_name(self.name, "a predictor name")
        if isinstance(self.values, str | bytes) or not isinstance(self.values,
                                                                  Sequence | np.ndarray):
            raise ValueError(f"values of {self.name!r} must be a list of numbers")
        vals = tuple(number(v, f"a value of {self.name!r}") for v in self.values)
        if not vals:
            raise ValueError(f"values of {self.name!r} is empty")
        if self.per not in ("position", "row"):
            raise ValueError(f"per of {self.name!r} must be 'position' or 'row', got {self.per!r}")
        set_field(self, "values", vals)


@dataclass(frozen=True)
class _Derived(Predictor):
    """A column computed from another predictor (``of``) of the same data set."""

    name: str
    of: str
    derived: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_name(self.name, "a predictor name")
        check_name(self.of, f"'of' of {self.name!r}")


@dataclass(frozen=True)
class Complement(_Derived):
    """1 - x for a binary predictor x (level 1 or 2): a redundant coding such as
    ``male = 1 - female``, for the seed's model (a) ``(1 + female + male | g)``."""

    kind: ClassVar[str] = "complement"


@dataclass(frozen=True)
class Indicator(_Derived):
    """The 0/1 indicator of one level (``category``) of a categorical predictor, as a
    numeric column: any dummy coding (including redundant ones) can be asked for by name."""

    category: str = ""
    kind: ClassVar[str] = "indicator"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.category, str) or not self.category:
            raise ValueError(f"category of {self.name!r} must be a string (a level of "
                             f"{self.of!r}), got {self.category!r}")


@dataclass(frozen=True)
class GroupMean(_Derived):
    """The sample group mean of a level-1 predictor, x-bar_j (a level-2 variable)."""

    kind: ClassVar[str] = "group_mean"
    level: ClassVar[int] = 2


@dataclass(frozen=True)
class GroupCentered(_Derived):
    """A level-1 predictor centred on its sample group mean, x_ij - x-bar_j."""

    kind: ClassVar[str] = "group_centered"


@dataclass(frozen=True)
class Level2Continuous(Predictor):
    """Level-2 continuous predictor z_j ~ N(mean, var), constant within a group."""

    name: str
    mean: float = 0.0
    var: float = 1.0
    kind: ClassVar[str] = "level2_continuous"
    level: ClassVar[int] = 2

    def __post_init__(self) -> None:
        check_name(self.name, "a predictor name")
        set_field(self, "mean", number(self.mean, f"mean of {self.name!r}"))
        set_field(self, "var", nonneg(self.var, f"var of {self.name!r}"))


@dataclass(frozen=True)
class Level2Binary(Predictor):
    """Level-2 0/1 predictor z_j ~ Bernoulli(p), constant within a group.

    ``balanced=True``: exactly round(p J) of the J groups get z_j = 1, which ones drawn at
    random in each replicate (a balanced cluster-randomised design; with p = 0.5 and an
    even J, J/2 groups per arm)."""

    name: str
    p: float = 0.5
    balanced: bool = False
    kind: ClassVar[str] = "level2_binary"
    level: ClassVar[int] = 2

    def __post_init__(self) -> None:
        check_name(self.name, "a predictor name")
        set_field(self, "p", probability(self.p, f"p of {self.name!r}"))
        if not isinstance(self.balanced, (bool, np.bool_)):
            raise ValueError(f"balanced of {self.name!r} must be true or false, got "
                             f"{self.balanced!r}")
        set_field(self, "balanced", bool(self.balanced))

    def to_dict(self) -> dict:
        out = super().to_dict()
        if not self.balanced:  # the default stays out: specs written before keep their form
            out.pop("balanced")
        return out


PREDICTORS: dict[str, type] = {c.kind: c for c in (
    Continuous, Binary, Categorical, Values, Complement, Indicator, GroupMean, GroupCentered,
    Level2Continuous, Level2Binary)}
