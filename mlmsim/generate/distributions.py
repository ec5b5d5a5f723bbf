"""The distributions of U_j and R_ij, standardised (mean 0, variance 1): normal, Student's
t, chi-square, and a discrete distribution on given points. ``DISTRIBUTIONS`` maps each
kind, as spec files name it, to its class."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mlmsim.generate.checks import kind_dict, number, probability, set_field

__all__ = [
    "Distribution",
    "Normal",
    "StudentT",
    "ChiSquare",
    "Discrete",
    "DISTRIBUTIONS",
]


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
        return kind_dict(self)


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
        df = number(self.df, "df of the t distribution")
        if df <= 2:
            raise ValueError(f"df of the t distribution must exceed 2 (finite variance), "
                             f"got {df!r}")
        set_field(self, "df", df)

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
        df = number(self.df, "df of the chi-square distribution")
        if df <= 0:
            raise ValueError(f"df of the chi-square distribution must be positive, got {df!r}")
        set_field(self, "df", df)

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
        pts = tuple(number(v, "a support point") for v in self.points)
        probs = (tuple(probability(v, "a support-point probability") for v in self.probs)
                 if self.probs is not None else None)
        if probs is not None:
            if len(probs) != len(pts):
                raise ValueError(f"{len(pts)} support points but {len(probs)} probabilities")
            if abs(sum(probs) - 1.0) > 1e-9:
                raise ValueError(f"support-point probabilities must sum to 1, got {sum(probs)!r}")
        set_field(self, "points", pts)
        set_field(self, "probs", probs)
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
