"""Model specifications: the true two-level model that a simulation draws data from.

A :class:`ModelSpec` states, in the seed's notation, everything a data-generating
mechanism needs: the predictors (level-1 and level-2, how each is drawn), the fixed
effects gamma, which columns carry a random coefficient and their covariance T, the
residual variance sigma^2, the distributions of U_j and R_ij, and the group sizes::

    Level 1:  Y_ij = beta_0j + sum_k beta_kj x_kij + R_ij,      var(R_ij) = sigma^2
    Level 2:  beta_kj = gamma_k0 + sum_l gamma_kl z_lj + U_kj,   cov(U_j) = T
    Matrix:   Y_j = X_j gamma + Z_j U_j + R_j

The spec is data, validated when it is built (a ValueError names the problem), and it
reads and writes YAML or JSON with a safe loader and strict key and type checks. It
knows its own truth: :attr:`ModelSpec.formula` (the lme4 formula of the true model)
and :attr:`ModelSpec.truth` (gamma, T and sigma^2 named as the engine names its
estimates). Drawing data from it is :mod:`mlmsim.generate.simulate`'s job.
"""

from __future__ import annotations

import json
import keyword
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import yaml

from mlmsim import datasets
from mlmsim.model.covparms import covparm_names as phi_names
from mlmsim.model.terms import term_matrix

__all__ = [
    "ModelSpec", "Truth", "DUMMY_COLUMN", "whole_number",
    "Continuous", "Binary", "Categorical", "Values", "Complement", "Indicator", "GroupMean",
    "GroupCentered", "Level2Continuous", "Level2Binary",
    "Normal", "StudentT", "ChiSquare", "Discrete",
    "SizeList", "PoissonSizes", "UniformSizes",
    "T_from_sd_corr", "tau0_sq_from_icc", "factor_T", "covparm_names",
]

# relative tolerances for T (times max |T| or its largest eigenvalue): symmetry, positive
# semi-definiteness, and the rank of its factor (smaller eigenvalues count as 0)
SYMMETRY_TOL = 1e-10
PSD_TOL = 1e-10
RANK_TOL = 1e-10

# Bounds on a spec read from a file or text (YAML or JSON), checked before any object is
# built from it. A spec is a page of text (the annotated example is 2 KiB, 5 levels deep,
# about 60 values); these refuse only input made to exhaust memory or time: a YAML alias
# bomb ("billion laughs", whose aliases expand 500 bytes into 10^9 values), an alias that
# contains itself (an endless expansion), nesting that overflows the parser's stack, a file
# of megabytes. Each refusal is a one-line ValueError naming the limit and its value.
MAX_SPEC_BYTES = 256 * 1024
"""Largest spec file or text, in bytes of UTF-8: 256 KiB."""
MAX_SPEC_DEPTH = 32
"""Deepest nesting of lists and mappings in a spec (a plain value counts as a level, the
document itself is level 1), counted through YAML aliases."""
MAX_SPEC_NODES = 100_000
"""Most values in a spec (scalars, lists and mappings, and the keys of mappings) once its
YAML aliases are expanded: every alias counts the whole value it stands for."""


# ---------------------------------------------------------------------------
# small checks
# ---------------------------------------------------------------------------

def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii() \
            or keyword.iskeyword(name):
        raise ValueError(f"{what} must be a plain column name (letters, digits, underscores, "
                         f"not starting with a digit), got {name!r}")
    if name == "Intercept":
        raise ValueError(f"{what} may not be called 'Intercept' (the name of the intercept column)")
    return name


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # a whole number beyond the largest float, about 1.8e308
        raise ValueError(f"{what} must be a finite number, got a whole number too large for a "
                         f"float ({_digits(value)} digits)") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return value


def _nonneg(value: Any, what: str) -> float:
    value = _number(value, what)
    if value < 0:
        raise ValueError(f"{what} is a variance and must be >= 0, got {value!r}")
    return value


def _probability(value: Any, what: str) -> float:
    value = _number(value, what)
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
    if value > _MAX_COUNT:
        raise ValueError(f"{what} must be at most 2**63 - 1, got a whole number of "
                         f"{_digits(value)} digits")
    return value


_MAX_COUNT = 2**63 - 1
"""Largest count (of groups, of units in a group): the largest 64-bit integer."""


def _digits(value: int) -> int:
    """The number of decimal digits of a whole number (without converting it to text,
    which Python refuses beyond 4300 digits)."""
    n = abs(int(value))
    if n == 0:
        return 1
    d = math.floor((n.bit_length() - 1) * math.log10(2)) + 1  # n >= 2**(bits - 1)
    return d + 1 if n >= 10**d else d


def _set(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__``."""
    object.__setattr__(obj, name, value)


# ---------------------------------------------------------------------------
# predictors
# ---------------------------------------------------------------------------

class Predictor:
    """Base of the predictor kinds. ``level`` is 1 (varies within groups) or 2
    (constant within a group); ``kind`` is the name used in spec files."""

    kind: ClassVar[str] = ""
    level: ClassVar[int] = 1
    numeric: ClassVar[bool] = True
    derived: ClassVar[bool] = False
    name: str

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            out[f.name] = _plain(getattr(self, f.name))
        return out


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
        _check_name(self.name, "a predictor name")
        _set(self, "mean", _number(self.mean, f"mean of {self.name!r}"))
        _set(self, "var_between", _nonneg(self.var_between, f"var_between of {self.name!r}"))
        _set(self, "var_within", _nonneg(self.var_within, f"var_within of {self.name!r}"))


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
        _check_name(self.name, "a predictor name")
        p = _probability(self.p, f"p of {self.name!r}")
        sd = _number(self.p_sd, f"p_sd of {self.name!r}")
        if sd < 0:
            raise ValueError(f"p_sd of {self.name!r} is a standard deviation and must be >= 0, "
                             f"got {sd!r}")
        if sd > 0 and not sd * sd < p * (1.0 - p):
            raise ValueError(
                f"p_sd of {self.name!r} must satisfy p_sd^2 < p (1 - p) = {p * (1 - p):.6g} for "
                f"a Beta distribution of the group probabilities, got p_sd = {sd!r}")
        _set(self, "p", p)
        _set(self, "p_sd", sd)

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
        _check_name(self.name, "a predictor name")
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
        _set(self, "levels", levels)
        if self.probs is not None:
            if len(tuple(self.probs)) != len(levels):
                raise ValueError(f"{self.name!r} has {len(levels)} levels but "
                                 f"{len(tuple(self.probs))} probabilities")
            probs = tuple(_probability(v, f"probability of level {lv!r} of {self.name!r}")
                          for v, lv in zip(self.probs, levels, strict=True))
            if abs(sum(probs) - 1.0) > 1e-9:
                raise ValueError(f"the level probabilities of {self.name!r} must sum to 1, "
                                 f"got {sum(probs)!r}")
            _set(self, "probs", probs)

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
        _check_name(self.name, "a predictor name")
        if isinstance(self.values, str | bytes) or not isinstance(self.values,
                                                                  Sequence | np.ndarray):
            raise ValueError(f"values of {self.name!r} must be a list of numbers")
        vals = tuple(_number(v, f"a value of {self.name!r}") for v in self.values)
        if not vals:
            raise ValueError(f"values of {self.name!r} is empty")
        if self.per not in ("position", "row"):
            raise ValueError(f"per of {self.name!r} must be 'position' or 'row', got {self.per!r}")
        _set(self, "values", vals)


@dataclass(frozen=True)
class _Derived(Predictor):
    """A column computed from another predictor (``of``) of the same data set."""

    name: str
    of: str
    derived: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_name(self.name, "a predictor name")
        _check_name(self.of, f"'of' of {self.name!r}")


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
        _check_name(self.name, "a predictor name")
        _set(self, "mean", _number(self.mean, f"mean of {self.name!r}"))
        _set(self, "var", _nonneg(self.var, f"var of {self.name!r}"))


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
        _check_name(self.name, "a predictor name")
        _set(self, "p", _probability(self.p, f"p of {self.name!r}"))
        if not isinstance(self.balanced, (bool, np.bool_)):
            raise ValueError(f"balanced of {self.name!r} must be true or false, got "
                             f"{self.balanced!r}")
        _set(self, "balanced", bool(self.balanced))

    def to_dict(self) -> dict:
        out = super().to_dict()
        if not self.balanced:  # the default stays out: specs written before keep their form
            out.pop("balanced")
        return out


PREDICTORS: dict[str, type] = {c.kind: c for c in (
    Continuous, Binary, Categorical, Values, Complement, Indicator, GroupMean, GroupCentered,
    Level2Continuous, Level2Binary)}


# ---------------------------------------------------------------------------
# distributions of U_j and R_ij (standardised: mean 0, variance 1)
# ---------------------------------------------------------------------------

class Distribution:
    """A standardised distribution e (E e = 0, var e = 1). U_j = F e_j with F F' = T and
    e_j's components iid, so cov(U_j) = T whatever the family; R_ij = sigma e_ij. Given
    per component of U_j (``ModelSpec(u_dist={name: ...})``), U_kj = sqrt(T_kk) e_kj for
    the non-normal components (see :attr:`ModelSpec.u_components`)."""

    kind: ClassVar[str] = ""

    def standard(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        raise NotImplementedError

    @property
    def kurtosis(self) -> float:
        """E e^4 (3 for the normal)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            out[f.name] = _plain(getattr(self, f.name))
        return out


@dataclass(frozen=True)
class Normal(Distribution):
    """The standard normal: U_j ~ N(0, T), R_ij ~ N(0, sigma^2) (the seed's model)."""

    kind: ClassVar[str] = "normal"

    def standard(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape)

    @property
    def kurtosis(self) -> float:
        return 3.0


@dataclass(frozen=True)
class StudentT(Distribution):
    """Student t with ``df`` > 2 degrees of freedom, scaled to variance 1:
    e = t sqrt((df - 2) / df); heavier tails than the normal (kurtosis 3 + 6/(df - 4))."""

    df: float
    kind: ClassVar[str] = "t"

    def __post_init__(self) -> None:
        df = _number(self.df, "df of the t distribution")
        if df <= 2:
            raise ValueError(f"df of the t distribution must exceed 2 (finite variance), "
                             f"got {df!r}")
        _set(self, "df", df)

    def standard(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_t(self.df, shape) * math.sqrt((self.df - 2.0) / self.df)

    @property
    def kurtosis(self) -> float:
        return 3.0 + 6.0 / (self.df - 4.0) if self.df > 4 else math.inf


@dataclass(frozen=True)
class ChiSquare(Distribution):
    """Skewed: a standardised chi-square, e = (c - df) / sqrt(2 df), c ~ chi^2(df);
    skewness sqrt(8 / df) (right skew), kurtosis 3 + 12 / df."""

    df: float
    kind: ClassVar[str] = "chisq"

    def __post_init__(self) -> None:
        df = _number(self.df, "df of the chi-square distribution")
        if df <= 0:
            raise ValueError(f"df of the chi-square distribution must be positive, got {df!r}")
        _set(self, "df", df)

    def standard(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return (rng.chisquare(self.df, shape) - self.df) / math.sqrt(2.0 * self.df)

    @property
    def kurtosis(self) -> float:
        return 3.0 + 12.0 / self.df


@dataclass(frozen=True)
class Discrete(Distribution):
    """A finite set of support points with probabilities, standardised to mean 0 and
    variance 1 (default: the two-point distribution on -1, +1). U_j = F e_j then takes
    finitely many values (2^r for two points and rank-r T)."""

    points: tuple[float, ...] = (-1.0, 1.0)
    probs: tuple[float, ...] | None = None
    kind: ClassVar[str] = "discrete"

    def __post_init__(self) -> None:
        pts = tuple(_number(v, "a support point") for v in self.points)
        probs = (tuple(_probability(v, "a support-point probability") for v in self.probs)
                 if self.probs is not None else None)
        if probs is not None:
            if len(probs) != len(pts):
                raise ValueError(f"{len(pts)} support points but {len(probs)} probabilities")
            if abs(sum(probs) - 1.0) > 1e-9:
                raise ValueError(f"support-point probabilities must sum to 1, got {sum(probs)!r}")
        _set(self, "points", pts)
        _set(self, "probs", probs)
        _, var = self._moments()
        if not var > 0:
            raise ValueError("a discrete distribution needs at least two support points with "
                             "positive probability (else its variance is 0)")

    def _p(self) -> np.ndarray:
        k = len(self.points)
        return np.asarray(self.probs if self.probs is not None else (1.0 / k,) * k)

    def _moments(self) -> tuple[float, float]:
        x, p = np.asarray(self.points), self._p()
        m = float(p @ x)
        return m, float(p @ (x - m) ** 2)

    @property
    def support(self) -> np.ndarray:
        """The standardised support points."""
        m, v = self._moments()
        return (np.asarray(self.points) - m) / math.sqrt(v)

    def standard(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        cum = np.cumsum(self._p())
        idx = np.searchsorted(cum[:-1] / cum[-1], rng.random(shape), side="right")
        return self.support[idx]

    @property
    def kurtosis(self) -> float:
        return float(self._p() @ self.support ** 4)


DISTRIBUTIONS: dict[str, type] = {c.kind: c for c in (Normal, StudentT, ChiSquare, Discrete)}


# ---------------------------------------------------------------------------
# group sizes
# ---------------------------------------------------------------------------

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
        _set(self, "sizes", sizes)

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
        return {"kind": self.kind, "sizes": list(self.sizes), "resample": self.resample}


@dataclass(frozen=True)
class PoissonSizes:
    """Random group sizes n_j = minimum + Poisson(mean - minimum), so E n_j = mean and
    n_j >= minimum >= 1."""

    mean: float
    minimum: int = 1
    kind: ClassVar[str] = "poisson"

    def __post_init__(self) -> None:
        minimum = whole_number(self.minimum, "the minimum group size")
        mean = _number(self.mean, "the mean group size")
        if mean < minimum:
            raise ValueError(f"the mean group size {mean!r} is below the minimum {minimum}")
        _set(self, "minimum", minimum)
        _set(self, "mean", mean)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean, "minimum": self.minimum}


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
        _set(self, "low", low)
        _set(self, "high", high)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "low": self.low, "high": self.high}


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


# ---------------------------------------------------------------------------
# helpers for T
# ---------------------------------------------------------------------------

def T_from_sd_corr(sd: Sequence[float], corr: Any = None) -> np.ndarray:  # noqa: N802
    """T = D C D with D = diag(sd), C the correlation matrix of U_j.

    ``corr`` is a q x q correlation matrix (symmetric, unit diagonal, entries in
    [-1, 1], positive semi-definite), a single correlation when q = 2, or None (the
    identity). A correlation of +-1 gives a singular T, which is allowed.

    >>> T_from_sd_corr([2.0, 0.5], -0.3)
    array([[ 4.  , -0.3 ],
           [-0.3 ,  0.25]])
    """
    sd = np.atleast_1d(np.asarray(sd, dtype=float))
    if sd.ndim != 1 or not np.isfinite(sd).all():
        raise ValueError(f"sd must be a list of finite numbers, got {sd!r}")
    if (sd < 0).any():
        raise ValueError(f"a standard deviation is negative: {sd.tolist()}")
    q = sd.shape[0]
    if corr is None:
        C = np.eye(q)
    elif np.ndim(corr) == 0:
        if q != 2:
            raise ValueError(f"a single correlation needs two sds, got {q}")
        r = _number(corr, "the correlation")
        C = np.array([[1.0, r], [r, 1.0]])
    else:
        C = np.asarray(corr, dtype=float)
    if C.shape != (q, q):
        raise ValueError(f"corr must be {q} x {q} to match sd, got shape {C.shape}")
    if not np.isfinite(C).all() or not np.allclose(C, C.T, rtol=0, atol=1e-12):
        raise ValueError("corr must be a symmetric matrix of finite numbers")
    if not np.allclose(np.diag(C), 1.0, rtol=0, atol=1e-12):
        raise ValueError(f"corr must have a unit diagonal, got {np.diag(C).tolist()}")
    if (np.abs(C) > 1.0 + 1e-12).any():
        raise ValueError("correlations must lie in [-1, 1]")
    lam = np.linalg.eigvalsh(C).min()
    if lam < -PSD_TOL * q:
        raise ValueError(f"corr is not positive semi-definite: its most negative eigenvalue is "
                         f"{lam:.6g}")
    return sd[:, None] * C * sd[None, :]


def factor_T(T: Any) -> np.ndarray:  # noqa: N802 - the seed's notation
    """An eigen factor F (q x r) of a symmetric positive semi-definite T: F F' = T.

    T = V diag(lambda) V'; F = V_+ diag(sqrt(lambda_+)) over the r eigenvalues above
    ``RANK_TOL`` times the largest (the rest count as 0), largest first, each column's
    largest-magnitude entry positive (a fixed sign, so draws do not depend on the
    eigen solver's). U = F e then lies exactly (to rounding) in T's column space.
    For a diagonal T, F is diag(sqrt(tau_k^2)) up to column order.

    >>> factor_T([[4.0, 0.0], [0.0, 0.0]])
    array([[2.],
           [0.]])
    """
    T = np.asarray(T, dtype=float)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square matrix, got shape {T.shape}")
    q = T.shape[0]
    if q == 0:
        return np.zeros((0, 0))
    lam, V = np.linalg.eigh(0.5 * (T + T.T))
    lam, V = lam[::-1], V[:, ::-1]
    top = max(float(lam[0]), 0.0)
    if lam[-1] < -PSD_TOL * max(top, float(np.abs(T).max())):
        raise ValueError(f"T is not positive semi-definite: its most negative eigenvalue is "
                         f"{lam[-1]:.6g}")
    keep = lam > RANK_TOL * top if top > 0 else np.zeros(q, dtype=bool)
    V = V[:, keep]
    if V.shape[1]:
        big = np.argmax(np.abs(V), axis=0)
        V = V * np.sign(V[big, np.arange(V.shape[1])])
    return V * np.sqrt(lam[keep])


def tau0_sq_from_icc(icc: float, sigma2: float) -> float:
    """The intercept variance tau0^2 giving intraclass correlation
    rho_I = tau0^2 / (tau0^2 + sigma^2) in a random intercept model:
    tau0^2 = sigma^2 rho_I / (1 - rho_I).

    >>> tau0_sq_from_icc(0.2, 8.0)
    2.0
    """
    icc = _number(icc, "icc")
    sigma2 = _number(sigma2, "sigma2")
    if not 0.0 <= icc < 1.0:
        raise ValueError(f"icc must lie in [0, 1), got {icc!r}")
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2!r}")
    return sigma2 * icc / (1.0 - icc)


def covparm_names(random_names: Sequence[str]) -> list[str]:
    """Covariance-parameter names of an unstructured T, as the engine names them: SAS's
    UN order (row-wise lower triangle, ``cov(a,b)`` with the row variable a first),
    then ``sigma2`` (:func:`mlmsim.model.covparms.covparm_names` for one full block).

    >>> covparm_names(["Intercept", "x"])
    ['var(Intercept)', 'cov(x,Intercept)', 'var(x)', 'sigma2']
    """
    rows, cols = np.tril_indices(len(random_names))
    return phi_names(list(random_names), rows, cols)[0]


# ---------------------------------------------------------------------------
# the truth
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Truth:
    """The true parameters, named as the engine names its estimates: ``gamma``
    (indexed as ``FitResult.fixef``), ``T`` (as ``FitResult.T``), ``sigma2``, and
    ``params`` (as ``FitResult.params``: gamma, then vech T in SAS's UN order, then
    sigma2)."""

    gamma: pd.Series
    T: pd.DataFrame
    sigma2: float

    @property
    def params(self) -> pd.Series:
        names = list(self.T.index)
        T = self.T.to_numpy()
        vals = [T[r, c] for r in range(len(names)) for c in range(r + 1)] + [self.sigma2]
        cov = pd.Series(vals, index=covparm_names(names), dtype=float)
        return pd.concat([self.gamma, cov]).rename("truth")


# ---------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------

#: a dummy-coded design column's name, ``var[T.level]`` or ``var[level]``
DUMMY_COLUMN = re.compile(r"(?P<var>[A-Za-z_][A-Za-z0-9_]*)\[(?P<t>T\.)?(?P<level>[^\]]+)\]")


class _ReadOnlyDict(dict):
    """A dict that refuses changes (a spec's gamma); pickles and compares as a dict."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a ModelSpec is immutable: use dataclasses.replace(spec, gamma=...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore
    __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return (_ReadOnlyDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


@dataclass(frozen=True)
class Layout:
    """How a spec's names map onto design columns (built once, when the spec is).

    ``fixed_names`` and ``random_names`` are in the order the engine gives them for
    :attr:`ModelSpec.formula`; ``random_order[k]`` is the position in ``spec.random``
    of ``random_names[k]``; ``gamma`` the true fixed effects in ``fixed_names`` order
    (0 for columns the formula makes that gamma does not name); ``factor`` F (q x r),
    :func:`factor_T` of T in ``random_names`` order. ``variables``: what the design
    columns are products of (predictor names, and dummies such as ``f[T.b]``), and
    ``fixed_terms`` / ``random_terms`` the two designs as terms over them
    (:mod:`mlmsim.model.terms`)."""

    formula: str
    fixed_names: tuple[str, ...]
    random_names: tuple[str, ...]
    random_order: tuple[int, ...]
    gamma: np.ndarray
    factor: np.ndarray
    variables: tuple[str, ...]
    fixed_terms: np.ndarray
    random_terms: np.ndarray

    def __setstate__(self, state: dict) -> None:
        # unpickled arrays come back writeable: a spec sent to a worker stays read-only
        # (and the compiled kernels it feeds see one array type, not two)
        self.__dict__.update(state)
        for a in (self.gamma, self.factor, self.fixed_terms, self.random_terms):
            a.setflags(write=False)


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """The true two-level model of a simulation (the seed's notation).

    Parameters
    ----------
    predictors
        The predictor columns, in order: level 1 (:class:`Continuous`, :class:`Binary`,
        :class:`Categorical`, :class:`Values`), level 2 (:class:`Level2Continuous`,
        :class:`Level2Binary`), and derived ones (:class:`Complement`,
        :class:`Indicator`, :class:`GroupMean`, :class:`GroupCentered`).
    gamma
        Fixed effects keyed by the names formulaic gives the columns: ``"Intercept"``
        (gamma_00), ``"x"`` (gamma_10), ``"z"`` (gamma_01), ``"x:z"`` (gamma_11, a
        cross-level interaction), ``"grade[T.b]"``. The true model has an intercept
        (gamma_00 = 0 when not named) and every term named here.
    random
        The columns with a random coefficient U_kj, e.g. ``("Intercept", "x")``;
        redundant codings are allowed (``("Intercept", "female", "male")``).
    T
        cov(U_j), q x q in the order of ``random``: symmetric positive semi-definite
        (singular allowed). A number is taken as the 1 x 1 matrix.
    sigma2
        The residual variance sigma^2 > 0.
    u_dist, r_dist
        Standardised distributions of U_j (via U_j = F e_j, F F' = T) and of
        R_ij = sigma e_ij: :class:`Normal` (default), :class:`StudentT`,
        :class:`ChiSquare` (skewed) or :class:`Discrete`. Each keeps cov(U_j) = T and
        var(R_ij) = sigma^2. ``u_dist`` may instead map random-effect names to
        distributions, one per component of U_j (names left out are normal), e.g.
        ``{"Intercept": Normal(), "x": Discrete()}`` for a normal random intercept and
        a two-point random slope; see :meth:`u_components` for which T allow it.
    group_sizes
        n for all groups, a list (:class:`SizeList`), :class:`PoissonSizes` or
        :class:`UniformSizes`; None means the size must be given to ``simulate``.
    n_groups
        Default number of groups J for ``simulate`` (None: give it there).
    group, response
        Column names of the group id and of y.

    >>> spec = ModelSpec(predictors=[Continuous("x", var_between=0.2)],
    ...                  gamma={"Intercept": 10.0, "x": 2.0}, random=["Intercept", "x"],
    ...                  T=[[4.0, 0.5], [0.5, 1.0]], sigma2=9.0)
    >>> spec.formula
    'y ~ 1 + x + (1 + x | g)'
    >>> spec.truth.params.to_dict()
    {'Intercept': 10.0, 'x': 2.0, 'var(Intercept)': 4.0, 'cov(x,Intercept)': 0.5,
     'var(x)': 1.0, 'sigma2': 9.0}
    """

    predictors: tuple[Predictor, ...]
    gamma: Mapping[str, float]
    random: tuple[str, ...]
    T: np.ndarray
    sigma2: float
    u_dist: Distribution | Mapping[str, Distribution] = Normal()
    r_dist: Distribution = Normal()
    group_sizes: GroupSizes | None = None
    n_groups: int | None = None
    group: str = "g"
    response: str = "y"

    # ---- validation -------------------------------------------------------
    def __post_init__(self) -> None:
        group = _check_name(self.group, "the group column name")
        response = _check_name(self.response, "the response column name")
        if group == response:
            raise ValueError(f"the group and response columns have the same name {group!r}")
        preds = self._check_predictors(group, response)
        _set(self, "predictors", preds)
        _set(self, "sigma2", self._check_sigma2())
        random = self._check_random(preds)
        _set(self, "random", random)
        _set(self, "T", self._check_T(random))
        _set(self, "gamma", self._check_gamma(preds))
        if isinstance(self.u_dist, Mapping):
            _set(self, "u_dist", self._check_u_mapping(random))
        for attr, what in (("u_dist", "U_j"), ("r_dist", "R_ij")):
            if attr == "u_dist" and isinstance(self.u_dist, Mapping):
                continue
            if not isinstance(getattr(self, attr), Distribution):
                also = (", or a mapping of random-effect names to them"
                        if attr == "u_dist" else "")
                raise ValueError(f"{attr} (the distribution of {what}) must be Normal(), "
                                 f"StudentT(df), ChiSquare(df) or Discrete(...){also}, "
                                 f"got {getattr(self, attr)!r}")
        if self.group_sizes is not None:
            _set(self, "group_sizes", group_sizes(self.group_sizes))
        if self.n_groups is not None:
            _set(self, "n_groups", whole_number(self.n_groups, "n_groups (the number of groups)"))
        _set(self, "_layout", self._build_layout())
        _set(self, "_u_components", self._check_u_components())

    def _check_u_mapping(self, random: tuple[str, ...]) -> _ReadOnlyDict:
        """``u_dist`` given per component: every key a random-effect name, every value a
        Distribution; the names left out are normal. Kept in the order of ``random``."""
        given = self.u_dist
        for key, dist in given.items():  # type: ignore[union-attr]
            if key not in random:
                raise ValueError(f"u_dist names {key!r}, which is not a random effect; the "
                                 f"random effects are {', '.join(random)}")
            if not isinstance(dist, Distribution):
                raise ValueError(f"u_dist[{key!r}] (the distribution of U_{key}) must be "
                                 f"Normal(), StudentT(df), ChiSquare(df) or Discrete(...), "
                                 f"got {dist!r}")
        return _ReadOnlyDict({name: given.get(name, Normal())  # type: ignore[union-attr]
                              for name in random})

    def _check_u_components(self) -> tuple[Distribution, ...] | None:
        """The per-component distributions in :attr:`random_names` order (None for one
        distribution of the whole vector), after checking that T allows them: a
        component whose distribution is not normal must have covariance 0 with every
        other component (relative tolerance ``SYMMETRY_TOL`` of max |T|)."""
        if not isinstance(self.u_dist, Mapping):
            return None
        names = self.random_names
        dists = tuple(self.u_dist[name] for name in names)
        T = self.T_engine
        scale = max(float(np.abs(T).max()), 1e-300)
        for k, dist in enumerate(dists):
            if isinstance(dist, Normal):
                continue
            for m in range(len(names)):
                if m != k and abs(T[k, m]) > SYMMETRY_TOL * scale:
                    cov = f"cov({names[max(k, m)]},{names[min(k, m)]})"  # the engine's name
                    raise ValueError(
                        f"u_dist gives {names[k]} a {dist.kind} distribution, but T has "
                        f"{cov} = {float(T[k, m])!r}: a component of "
                        "U_j with its own non-normal distribution must be uncorrelated with "
                        "every other component (it is drawn alone, as sqrt(T_kk) e_kj, so "
                        "that it keeps its distribution); set that covariance to 0, or give "
                        "one distribution for the whole vector U_j (u_dist=...), which "
                        "mixes the components through a factor of T")
        return dists

    @property
    def u_components(self) -> tuple[Distribution, ...] | None:
        """The distribution of each component of U_j, in :attr:`random_names` order, when
        ``u_dist`` is given per component (None when it is one distribution).

        With one distribution, U_j = F e_j with F F' = T and e_j's components iid of that
        distribution: cov(U_j) = T for any T, but unless F is diagonal each U_kj is a
        sum of several e's, so its distribution is not the one named (a two-point e
        gives U_kj up to 2^r values). Per component, each U_kj must have exactly the
        named distribution with variance T_kk, and cov(U_j) must still be T. That is
        possible when every non-normal component is uncorrelated with all the others
        (T block-diagonal: one block per non-normal component, one block of the normal
        ones): the non-normal U_kj = sqrt(T_kk) e_kj are drawn independently, and the
        normal block as F_N e_N with F_N F_N' = T_NN, which keeps it jointly normal with
        its own correlations. Any other T is refused when the spec is built, with a
        ValueError naming the offending covariance: with a correlated non-normal
        component there is in general no joint distribution with those marginals and
        that covariance that this construction could draw.
        """
        return self._u_components  # type: ignore[attr-defined]

    def _check_predictors(self, group: str, response: str) -> tuple[Predictor, ...]:
        preds = self.predictors
        if isinstance(preds, Predictor):
            preds = (preds,)
        if not isinstance(preds, Sequence):
            raise ValueError(f"predictors must be a list of predictors, got {preds!r}")
        preds = tuple(preds)
        names: dict[str, Predictor] = {}
        for p in preds:
            if not isinstance(p, Predictor):
                raise ValueError(f"{p!r} is not a predictor (Continuous, Binary, Categorical, ...)")
            if p.name in names:
                raise ValueError(f"two predictors are called {p.name!r}")
            if p.name in (group, response):
                raise ValueError(f"predictor {p.name!r} has the name of the "
                                 f"{'group' if p.name == group else 'response'} column")
            names[p.name] = p
        for p in preds:
            if not p.derived:
                continue
            src = names.get(p.of)  # type: ignore[attr-defined]
            if src is None:
                raise ValueError(f"{p.kind} {p.name!r} refers to an unknown predictor "
                                 f"{p.of!r}")  # type: ignore[attr-defined]
            ok = {
                "complement": isinstance(src, Binary | Level2Binary),
                "indicator": isinstance(src, Categorical),
                "group_mean": isinstance(src, Continuous | Binary | Values),
                "group_centered": isinstance(src, Continuous | Binary | Values),
            }[p.kind]
            if not ok:
                need = {"complement": "a binary predictor", "indicator": "a categorical predictor",
                        "group_mean": "a drawn level-1 numeric predictor",
                        "group_centered": "a drawn level-1 numeric predictor"}[p.kind]
                raise ValueError(f"{p.kind} {p.name!r} needs {need}, but {p.of!r} is "  # type: ignore[attr-defined]
                                 f"{src.kind}")
            if isinstance(p, Indicator) and p.category not in src.levels:  # type: ignore[attr-defined]
                raise ValueError(f"indicator {p.name!r}: {p.of!r} has no level {p.category!r} "
                                 f"(levels: {', '.join(src.levels)})")  # type: ignore[attr-defined]
        return preds

    def _check_sigma2(self) -> float:
        s2 = _number(self.sigma2, "sigma2 (the residual variance sigma^2)")
        if s2 <= 0:
            raise ValueError(f"sigma2 (the residual variance sigma^2) must be positive, got {s2!r}")
        return s2

    def columns(self) -> dict[str, str]:
        """Every column name a term may use, mapped to its formula term: the intercept,
        numeric predictors, and the dummies of categorical predictors."""
        out = {"Intercept": "1"}
        for p in self.predictors:
            if isinstance(p, Categorical):
                for i, lv in enumerate(p.levels):
                    if i:
                        out[f"{p.name}[T.{lv}]"] = p.name
                    out[f"{p.name}[{lv}]"] = p.name
            else:
                out[p.name] = p.name
        return out

    def _check_random(self, preds: tuple[Predictor, ...]) -> tuple[str, ...]:
        random = self.random
        if isinstance(random, str):
            random = (random,)
        if not isinstance(random, Sequence) or not random:
            raise ValueError("random must list at least one column with a random coefficient, "
                             "e.g. ['Intercept'] or ['Intercept', 'x']")
        random = tuple(random)
        known = self.columns()
        for name in random:
            if name not in known:
                raise ValueError(f"random names an unknown column {name!r}; known columns: "
                                 f"{', '.join(known)}")
        dup = sorted({r for r in random if random.count(r) > 1})
        if dup:
            raise ValueError(f"random lists {', '.join(dup)} more than once")
        return random

    def _check_T(self, random: tuple[str, ...]) -> np.ndarray:
        try:
            T = np.array(self.T, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"T must be a matrix of numbers, got {self.T!r}") from None
        q = len(random)
        if T.ndim == 0 and q == 1:
            T = T.reshape(1, 1)
        if T.ndim != 2 or T.shape != (q, q):
            raise ValueError(f"T has shape {T.shape} but there are {q} random effects "
                             f"({', '.join(random)}): T must be {q} x {q}")
        if not np.isfinite(T).all():
            raise ValueError("T has a missing or infinite element")
        scale = max(float(np.abs(T).max()), 1e-300)
        asym = np.abs(T - T.T)
        if asym.max() > SYMMETRY_TOL * scale:
            j, i = sorted(int(v) for v in np.unravel_index(int(np.argmax(asym)), asym.shape))
            raise ValueError(f"T is not symmetric: T[{i},{j}] = {float(T[i, j])!r} but "
                             f"T[{j},{i}] = {float(T[j, i])!r} (the covariance of {random[i]} "
                             f"and {random[j]})")
        T = 0.5 * (T + T.T)
        neg = np.flatnonzero(np.diag(T) < 0)
        if neg.size:
            k = int(neg[0])
            raise ValueError(f"T has a negative variance: var({random[k]}) = T[{k},{k}] = "
                             f"{float(T[k, k])!r}")
        lam = np.linalg.eigvalsh(T)
        if lam[0] < -PSD_TOL * scale:
            raise ValueError(f"T is not positive semi-definite: its most negative eigenvalue is "
                             f"{lam[0]:.6g} (eigenvalues {np.array2string(lam, precision=4)})")
        T.setflags(write=False)
        return T

    def _check_gamma(self, preds: tuple[Predictor, ...]) -> _ReadOnlyDict:
        if not isinstance(self.gamma, Mapping):
            raise ValueError(f"gamma must map column names to fixed effects, got {self.gamma!r}")
        known = self.columns()
        out = {}
        for key, value in self.gamma.items():
            if not isinstance(key, str):
                raise ValueError(f"gamma names must be strings, got {key!r}")
            factors = key.split(":")
            bad = [f for f in factors if f not in known or (f == "Intercept" and len(factors) > 1)]
            if bad:
                raise ValueError(f"gamma names an unknown term {key!r} ({bad[0]!r} is not a "
                                 f"column); known columns: {', '.join(known)}")
            out[key] = _number(value, f"gamma[{key!r}]")
        return _ReadOnlyDict(out)

    def _build_layout(self) -> Layout:
        from formulaic import model_matrix

        known = self.columns()
        terms: list[str] = []
        for key in self.gamma:
            if key != "Intercept":
                term = ":".join(known[f] for f in key.split(":"))
                if term not in terms:
                    terms.append(term)
        fixed = " + ".join(["1"] + terms)
        rterms = ["1" if "Intercept" in self.random else "0"]
        for key in self.random:
            if key != "Intercept" and known[key] not in rterms:
                rterms.append(known[key])
        rand = " + ".join(rterms)
        formula = f"{self.response} ~ {fixed} + ({rand} | {self.group})"
        sample = {}
        for p in self.predictors:
            if isinstance(p, Categorical):
                sample[p.name] = pd.Categorical([p.levels[0]] * 2, categories=list(p.levels))
            else:
                sample[p.name] = np.array([0.0, 1.0])
        frame = pd.DataFrame(sample, index=range(2))
        fixed_names = tuple(str(c) for c in model_matrix(fixed, frame).columns)
        random_names = tuple(str(c) for c in model_matrix(rand, frame).columns)
        for key in self.gamma:
            if key not in fixed_names:
                raise ValueError(
                    f"gamma names {key!r}, which the true model's fixed part {fixed!r} does not "
                    f"produce (its columns: {', '.join(fixed_names)})")
        if sorted(random_names) != sorted(self.random):
            raise ValueError(
                f"random {list(self.random)} cannot be written as one lme4 term: "
                f"({rand} | {self.group}) gives the columns {list(random_names)}; list exactly "
                "those, or use an Indicator predictor for a single dummy")
        order = tuple(self.random.index(r) for r in random_names)
        gamma = np.array([self.gamma.get(n, 0.0) for n in fixed_names])
        factor = factor_T(self.T[np.ix_(order, order)])
        variables: list[str] = []

        def terms(names: tuple[str, ...]) -> np.ndarray:
            factors = [[f for f in name.split(":") if f != "Intercept"] for name in names]
            for f in (f for fs in factors for f in fs if f not in variables):
                variables.append(f)
            return term_matrix([[variables.index(f) for f in fs] for fs in factors])

        fixed_terms, random_terms = terms(fixed_names), terms(random_names)
        for a in (gamma, factor, fixed_terms, random_terms):
            a.setflags(write=False)
        return Layout(formula, fixed_names, random_names, order, gamma, factor,
                      tuple(variables), fixed_terms, random_terms)

    # ---- derived ----------------------------------------------------------
    @property
    def layout(self) -> Layout:
        return self._layout  # type: ignore[attr-defined]

    @property
    def formula(self) -> str:
        """The lme4 formula of the true model, e.g. ``y ~ 1 + x + z + x:z + (1 + x | g)``."""
        return self.layout.formula

    @property
    def fixed_names(self) -> tuple[str, ...]:
        """Fixed-effect column names, in the engine's order for :attr:`formula`."""
        return self.layout.fixed_names

    @property
    def random_names(self) -> tuple[str, ...]:
        """Random-effect column names, in the engine's order for :attr:`formula`."""
        return self.layout.random_names

    @property
    def T_engine(self) -> np.ndarray:  # noqa: N802 - the seed's notation
        """T with rows and columns in :attr:`random_names` order."""
        o = list(self.layout.random_order)
        return self.T[np.ix_(o, o)]

    @property
    def truth(self) -> Truth:
        """The true gamma, T and sigma^2, named and ordered as the engine's estimates."""
        names = list(self.random_names)
        return Truth(
            gamma=pd.Series(self.layout.gamma, index=list(self.fixed_names), name="gamma"),
            T=pd.DataFrame(self.T_engine, index=names, columns=names),
            sigma2=self.sigma2,
        )

    def predictor(self, name: str) -> Predictor:
        for p in self.predictors:
            if p.name == name:
                return p
        raise KeyError(name)

    # ---- equality ---------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelSpec):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # ---- files ------------------------------------------------------------
    def to_dict(self) -> dict:
        """The spec as plain data (str, float, int, bool, list, dict): what files hold."""
        out: dict[str, Any] = {
            "response": self.response,
            "group": self.group,
            "predictors": [p.to_dict() for p in self.predictors],
            "gamma": dict(self.gamma),
            "random": list(self.random),
            "T": self.T.tolist(),
            "sigma2": self.sigma2,
            "u_dist": ({name: d.to_dict() for name, d in self.u_dist.items()}
                       if isinstance(self.u_dist, Mapping) else self.u_dist.to_dict()),
            "r_dist": self.r_dist.to_dict(),
        }
        if self.group_sizes is not None:
            gs = self.group_sizes
            out["group_sizes"] = gs if isinstance(gs, int) else gs.to_dict()
        if self.n_groups is not None:
            out["n_groups"] = self.n_groups
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        """Build a spec from plain data, refusing unknown keys and wrong types with a
        ValueError that names the key."""
        return _read_spec(raw)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None,
                              width=100)

    @classmethod
    def from_yaml(cls, text: str) -> ModelSpec:
        """Read a spec from YAML text (a safe loader: tags that build objects are refused).

        Text beyond :data:`MAX_SPEC_BYTES`, nesting beyond :data:`MAX_SPEC_DEPTH`, more
        than :data:`MAX_SPEC_NODES` values once aliases are expanded, and an alias that
        contains itself are refused with a ValueError before anything is built. Given a
        file's name instead of its text, the error says to use :meth:`load`."""
        raw = _load_yaml(text)
        if isinstance(raw, str) and _looks_like_path(raw):
            raise ValueError(f"from_yaml reads YAML text, and {raw!r} is the name of a file: "
                             "read a spec file with ModelSpec.load(path)")
        return _read_spec(raw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Read a spec from JSON text: a repeated key, text beyond
        :data:`MAX_SPEC_BYTES`, nesting beyond :data:`MAX_SPEC_DEPTH` and more than
        :data:`MAX_SPEC_NODES` values are refused with a ValueError."""
        def pairs(items: list[tuple[str, Any]]) -> dict:
            keys = [k for k, _ in items]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise ValueError(f"the spec repeats the key {dup[0]!r}")
            return dict(items)

        if not isinstance(text, str):
            raise ValueError(f"spec text must be a string, got {type(text).__name__}")
        _check_size(text)
        try:
            raw = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the spec is not valid JSON: {exc}") from None
        except RecursionError:  # the decoder recurses once per level of nesting
            raise ValueError(_depth_message()) from None
        _check_plain(raw)
        return _read_spec(raw)

    def save(self, path: str | Path) -> None:
        """Write the spec as JSON (``.json``) or YAML (any other suffix)."""
        path = Path(path)
        text = self.to_json() if path.suffix.lower() == ".json" else self.to_yaml()
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        """Read a spec file (UTF-8): JSON for ``.json``, YAML otherwise.

        A file larger than :data:`MAX_SPEC_BYTES` is refused with a ValueError after
        reading at most that many bytes (so a device or a growing file is refused too);
        the text then goes through :meth:`from_json` or :meth:`from_yaml`."""
        path = Path(path)
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
            if len(data) > MAX_SPEC_BYTES:
                size = os.fstat(fh.fileno()).st_size  # 0 for a device or a pipe
                raise ValueError(_size_message(size if size > MAX_SPEC_BYTES else None,
                                               f"the spec file {str(path)!r}"))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"the spec file {str(path)!r} is not UTF-8 text (byte "
                             f"{exc.start}: {data[exc.start:exc.start + 1]!r})") from None
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if path.suffix.lower() == ".json":
            return cls.from_json(text)
        return cls.from_yaml(text)

    @classmethod
    def example(cls) -> ModelSpec:
        """The annotated example of :meth:`example_yaml`: a random intercept and slope
        model with a cross-level interaction."""
        return cls.from_yaml(EXAMPLE_YAML)

    @staticmethod
    def example_yaml() -> str:
        """An annotated example spec file (YAML) to start from."""
        return EXAMPLE_YAML


EXAMPLE_YAML = """\
# An mlmsim model spec: the true two-level model a simulation draws from, in the
# seed's notation (random intercept and slope of x, level-2 z, cross-level x:z):
#   Level 1:  y_ij = beta_0j + beta_1j x_ij + R_ij,             var(R_ij) = sigma2
#   Level 2:  beta_0j = gamma_00 + gamma_01 z_j + U_0j
#             beta_1j = gamma_10 + gamma_11 z_j + U_1j,         cov(U_0j, U_1j) = T
response: y              # name of the response column
group: g                 # name of the group-id column
predictors:
  # level 1: x_ij = mean + b_j + w_ij, var(b_j) = var_between, var(w_ij) = var_within
  - {kind: continuous, name: x, mean: 0.0, var_between: 0.2, var_within: 1.0}
  # level 2, constant within a group (also: level2_continuous with mean and var)
  - {kind: level2_binary, name: z, p: 0.5}
  # other kinds: binary (p, p_sd), categorical (levels, probs), values (values, per),
  # complement (of), indicator (of, category), group_mean (of), group_centered (of)
gamma:                   # fixed effects, keyed by the column names formulaic gives
  Intercept: 10.0        # gamma_00
  x: 2.0                 # gamma_10
  z: 1.0                 # gamma_01
  x:z: 0.5               # gamma_11, the cross-level interaction
random: [Intercept, x]   # the columns with a random coefficient U_j
T:                       # cov(U_j), rows and columns in the order of random
  - [4.0, 0.5]           # tau0^2, tau10
  - [0.5, 1.0]           # tau10,  tau1^2
sigma2: 9.0              # residual variance sigma^2
u_dist: {kind: normal}   # or {kind: t, df: 5}, {kind: chisq, df: 4}, {kind: discrete};
                         # or per random effect (those left out normal), e.g.
                         # {x: {kind: discrete}}, if x is uncorrelated with the others in T
r_dist: {kind: normal}
group_sizes: 10          # or [8, 12, ...], {kind: poisson, mean: 10},
                         # {kind: uniform, low: 5, high: 15}, {kind: dataset, name: hsb}
"""


# ---------------------------------------------------------------------------
# reading plain data (strict)
# ---------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _size_message(n_bytes: int | None, what: str = "the spec") -> str:
    """``n_bytes`` None: the size is unknown (a device or a pipe), but over the limit."""
    size = f"{n_bytes} bytes" if n_bytes is not None else f"over {MAX_SPEC_BYTES} bytes"
    return (f"{what} is {size}, more than the limit MAX_SPEC_BYTES = {MAX_SPEC_BYTES} bytes "
            f"({MAX_SPEC_BYTES // 1024} KiB): a spec is a page of text")


def _depth_message(where: str = "") -> str:
    return (f"the spec nests lists and mappings deeper than the limit MAX_SPEC_DEPTH = "
            f"{MAX_SPEC_DEPTH} levels{where}")


def _nodes_message() -> str:
    return (f"the spec holds more than the limit MAX_SPEC_NODES = {MAX_SPEC_NODES} values once "
            "its aliases are expanded (a YAML alias counts the whole value it stands for)")


def _check_size(text: str) -> None:
    """Refuse text of more than :data:`MAX_SPEC_BYTES` bytes of UTF-8."""
    if len(text) > MAX_SPEC_BYTES:  # at least one byte per character: no need to encode it
        raise ValueError(_size_message(None, f"the spec ({len(text)} characters)"))
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_bytes > MAX_SPEC_BYTES:
        raise ValueError(_size_message(n_bytes))


def _check_plain(raw: Any) -> None:
    """Refuse parsed JSON nested deeper than :data:`MAX_SPEC_DEPTH` or holding more than
    :data:`MAX_SPEC_NODES` values (JSON has no aliases: this walk is as long as the text)."""
    count = 0

    def visit(value: Any, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_SPEC_NODES:
            raise ValueError(_nodes_message())
        if depth > MAX_SPEC_DEPTH:
            raise ValueError(_depth_message())
        if isinstance(value, dict):
            for k, v in value.items():
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(value, list):
            for v in value:
                visit(v, depth + 1)

    visit(raw, 1)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a number (YAML 1.2) as well.

    Nesting deeper than :data:`MAX_SPEC_DEPTH` is refused while the document is
    composed: the composer recurses once per level, so deep nesting would otherwise
    exhaust Python's stack before any check could run."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_SPEC_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ValueError(_depth_message(f" (line {line})"))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq",
                                                  "map")}
_INT_TAG = "tag:yaml.org,2002:int"
_MAX_INT_CHARS = 4300
"""Longest whole-number literal read (Python's default limit on converting text to an
int). Any number of more than 309 digits is beyond every float and count; those up to
this length reach the reader, which names the key, and longer ones are refused here."""


def _load_yaml(text: str) -> Any:
    """Parse YAML text as data only, refusing with a ValueError before anything is
    constructed: text over :data:`MAX_SPEC_BYTES`; nesting over :data:`MAX_SPEC_DEPTH`;
    more than :data:`MAX_SPEC_NODES` values with the aliases expanded (an alias bomb) or
    an alias inside the value it names (an endless expansion); any node whose tag is not a
    plain scalar, list or mapping (``!!python/object``, ``!!binary``, custom tags, dates),
    named by its key. The document is composed once and constructed from that."""
    if not isinstance(text, str):
        raise ValueError(f"spec text must be a string, got {type(text).__name__}")
    _check_size(text)
    loader = _SpecLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise ValueError(f"the spec is not valid YAML: {' '.join(str(exc).split())}"
                             ) from None
        if node is None:
            raise ValueError("the spec file is empty")
        _check_expansion(node)
        _check_nodes(node, "")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise ValueError(f"the spec is not valid YAML: {' '.join(str(exc).split())}"
                             ) from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a composed YAML document whose aliases expand beyond the limits.

    An alias is the very node of its anchor, so the document is a graph, and its
    expansion (what a walk over the constructed data visits) can be exponentially larger
    than the text. Each node's expanded size and height are computed once and reused
    wherever an alias repeats it, so this costs time in the size of the text, not of the
    expansion. Refused: more than :data:`MAX_SPEC_NODES` values in the expansion, nesting
    beyond :data:`MAX_SPEC_DEPTH`, and a node reachable from itself (``a: &a [*a]``).
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    open_nodes: set[int] = set()  # the nodes being measured, from the root down

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key not in measured:
            line = f" (line {node.start_mark.line + 1})"
            if depth > MAX_SPEC_DEPTH:
                raise ValueError(_depth_message(line))
            if key in open_nodes:
                raise ValueError("the spec has a YAML alias inside the value it names"
                                 f"{line}: its expansion never ends")
            open_nodes.add(key)
            count, height = 1, 1
            for child in _children(node):
                n, h = visit(child, depth + 1)
                count, height = count + n, max(height, h + 1)
                if count > MAX_SPEC_NODES:
                    raise ValueError(_nodes_message())
            open_nodes.discard(key)
            measured[key] = (count, height)
        count, height = measured[key]
        if depth + height - 1 > MAX_SPEC_DEPTH:
            raise ValueError(_depth_message(f" (line {node.start_mark.line + 1})"))
        return count, height

    visit(root, 1)


def _check_nodes(node: yaml.Node, path: str) -> None:
    where = f"spec key {path!r}" if path else "the spec"
    if node.tag not in _PLAIN_TAGS:
        raise ValueError(f"{where} has the YAML tag {node.tag!r}: a spec file is data, not code, "
                         "and tags that build Python objects (or any other objects) are refused")
    if node.tag == _INT_TAG and len(node.value) > _MAX_INT_CHARS:
        raise ValueError(f"{where} is a whole number of {len(node.value)} characters, too large "
                         "for any number in a spec (a float holds at most about 1.8e308, a "
                         "count at most 2**63 - 1)")
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else "?"
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(knode, yaml.ScalarNode) or knode.tag not in _PLAIN_TAGS:
                raise ValueError(f"{where} has a key that is not a plain string ({knode.tag})")
            if key in seen:
                raise ValueError(f"{where} repeats the key {key!r}")
            seen.add(key)
            _check_nodes(vnode, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_nodes(item, f"{path}[{i}]")


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "null"}.get(type(value),
                                                                        type(value).__name__)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` (plain data) against the annotation ``tp``; name ``key`` if not."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"spec key {key!r} must be a number, got {value!r} "
                             f"({_type_name(value)})")
        try:
            return float(value)
        except OverflowError:  # a whole number beyond the largest float, about 1.8e308
            raise ValueError(f"spec key {key!r} must be a finite number, got a whole number "
                             f"of {_digits(value)} digits, too large for a float") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"spec key {key!r} must be a whole number, got {value!r} "
                             f"({_type_name(value)})")
        if abs(value) > _MAX_COUNT:
            raise ValueError(f"spec key {key!r} must be a whole number of at most 2**63 - 1, "
                             f"got one of {_digits(value)} digits")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"spec key {key!r} must be a string, got {value!r} "
                             f"({_type_name(value)})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"spec key {key!r} must be true or false, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"spec key {key!r} must be a list, got {value!r} "
                             f"({_type_name(value)})")
        (item,) = (a for a in typing.get_args(tp) if a is not Ellipsis)
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"no reader for {tp!r}")  # pragma: no cover - a programming error


def _build(registry: dict[str, type], raw: Any, key: str, what: str) -> Any:
    """A small dataclass from ``{kind: ..., field: value, ...}``, strictly."""
    if not isinstance(raw, dict):
        raise ValueError(f"spec key {key!r} must be a mapping with a 'kind' ({what}), got "
                         f"{raw!r}")
    kind = raw.get("kind")
    if kind not in registry:
        raise ValueError(f"spec key {key + '.kind'!r} must be one of {', '.join(registry)}, "
                         f"got {kind!r}")
    cls = registry[kind]
    hints = typing.get_type_hints(cls)
    init = {f.name: f for f in fields(cls) if f.init}
    for k in raw:
        if k != "kind" and k not in init:
            raise ValueError(f"unknown key {key + '.' + str(k)!r} for a {kind} {what}; allowed: "
                             f"{', '.join(['kind', *init])}")
    for name, f in init.items():
        if name not in raw and f.default is MISSING:
            raise ValueError(f"spec key {key!r} ({kind} {what}) lacks the key {name!r}")
    kwargs = {k: _coerce(v, hints[k], f"{key}.{k}") for k, v in raw.items() if k != "kind"}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ValueError(f"spec key {key!r}: {exc}") from None


def _read_distribution(raw: Any, key: str) -> Any:
    """A distribution ``{kind: ..., ...}``; for ``u_dist`` also a mapping of random-effect
    names to distributions (told apart by ``kind``: a string in the first, absent or a
    mapping, for a random effect called ``kind``, in the second)."""
    if key == "u_dist" and isinstance(raw, dict) and raw and not isinstance(raw.get("kind"),
                                                                            str):
        return {_coerce(name, str, key): _build(DISTRIBUTIONS, value, f"{key}.{name}",
                                                "distribution")
                for name, value in raw.items()}
    return _build(DISTRIBUTIONS, raw, key, "distribution")


def _read_sizes(raw: Any) -> GroupSizes:
    key = "group_sizes"
    if isinstance(raw, bool):
        raise ValueError(f"spec key {key!r} must be a whole number, a list or a mapping, "
                         f"got {raw!r}")
    if isinstance(raw, int):
        try:
            return group_sizes(raw)
        except ValueError as exc:
            raise ValueError(f"spec key {key!r}: {exc}") from None
    if isinstance(raw, list):
        return _build(SIZES, {"kind": "list", "sizes": raw}, key, "group-size rule")
    if isinstance(raw, dict) and raw.get("kind") == "dataset":
        extra = set(raw) - {"kind", "name", "resample"}
        if extra:
            raise ValueError(f"unknown key {key + '.' + sorted(extra)[0]!r}; allowed: kind, "
                             "name, resample")
        name = _coerce(raw.get("name"), str, f"{key}.name")
        resample = _coerce(raw.get("resample", False), bool, f"{key}.resample")
        try:
            return SizeList.from_dataset(name, resample=resample)
        except ValueError as exc:
            raise ValueError(f"spec key {key + '.name'!r}: {exc}") from None
    return _build(SIZES, raw, key, "group-size rule")


_SPEC_KEYS = ("response", "group", "predictors", "gamma", "random", "T", "sigma2", "u_dist",
              "r_dist", "group_sizes", "n_groups")
_REQUIRED = ("gamma", "random", "T", "sigma2")


def _looks_like_path(text: str) -> bool:
    """A one-line string that names an existing file or ends in a spec file's suffix."""
    text = text.strip()
    if not text or "\n" in text:
        return False
    return text.lower().endswith((".yaml", ".yml", ".json")) or Path(text).is_file()


def _read_spec(raw: Any) -> ModelSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"a spec must be a mapping of keys to values, got {_type_name(raw)}")
    for k in raw:
        if k not in _SPEC_KEYS:
            raise ValueError(f"unknown key {k!r} in the spec; allowed keys: "
                             f"{', '.join(_SPEC_KEYS)}")
    for k in _REQUIRED:
        if k not in raw:
            raise ValueError(f"the spec lacks the key {k!r}")
    kw: dict[str, Any] = {}
    for k in ("response", "group"):
        if k in raw:
            kw[k] = _coerce(raw[k], str, k)
    preds = raw.get("predictors", [])
    if preds is None:
        preds = []
    if not isinstance(preds, list):
        raise ValueError(f"spec key 'predictors' must be a list, got {_type_name(preds)}")
    kw["predictors"] = tuple(_build(PREDICTORS, p, f"predictors[{i}]", "predictor")
                             for i, p in enumerate(preds))
    gamma = raw["gamma"]
    if not isinstance(gamma, dict):
        raise ValueError(f"spec key 'gamma' must be a mapping of column names to numbers, got "
                         f"{_type_name(gamma)}")
    kw["gamma"] = {_coerce(k, str, "gamma"): _coerce(v, float, f"gamma.{k}")
                   for k, v in gamma.items()}
    random = raw["random"]
    if isinstance(random, str):
        random = [random]
    kw["random"] = _coerce(random, tuple[str, ...], "random")
    T = raw["T"]
    if isinstance(T, dict):
        extra = set(T) - {"sd", "corr"}
        if extra or "sd" not in T:
            raise ValueError("spec key 'T' must be a matrix (a list of rows) or a mapping with "
                             "'sd' and optionally 'corr'")
        sd = _coerce(T["sd"], tuple[float, ...], "T.sd")
        corr = T.get("corr")
        if isinstance(corr, list):
            corr = [_coerce(row, tuple[float, ...], f"T.corr[{i}]") for i, row in enumerate(corr)]
        elif corr is not None:
            corr = _coerce(corr, float, "T.corr")
        try:
            kw["T"] = T_from_sd_corr(sd, corr)
        except ValueError as exc:
            raise ValueError(f"spec key 'T': {exc}") from None
    elif isinstance(T, list):
        rows = [_coerce(row if isinstance(row, list) else [row], tuple[float, ...], f"T[{i}]")
                for i, row in enumerate(T)]
        if len({len(r) for r in rows}) > 1:
            raise ValueError("spec key 'T': the rows of T have different lengths")
        kw["T"] = np.array(rows, dtype=float)
    else:
        kw["T"] = _coerce(T, float, "T")
    kw["sigma2"] = _coerce(raw["sigma2"], float, "sigma2")
    for k in ("u_dist", "r_dist"):
        if k in raw:
            kw[k] = _read_distribution(raw[k], k)
    if raw.get("group_sizes") is not None:
        kw["group_sizes"] = _read_sizes(raw["group_sizes"])
    if raw.get("n_groups") is not None:
        kw["n_groups"] = _coerce(raw["n_groups"], int, "n_groups")
    return ModelSpec(**kw)
