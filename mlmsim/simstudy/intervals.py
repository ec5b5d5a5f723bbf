"""Confidence intervals for proportions: coverage, rejection and fit-flag rates.

A proportion p-hat = k / n over n replicates has the Monte Carlo SE
sqrt(p-hat (1 - p-hat) / n), which is 0 when k = 0 or k = n: "0 (0)" claims a certainty
that 25 replicates cannot give, and p-hat +- 1.96 MCSE leaves [0, 1] near the edges. The
intervals here are for the true proportion, stay inside [0, 1], and are not empty at
k = 0 or k = n:

- Wilson (score) interval, the default: the p solving |p-hat - p| = z sqrt(p (1 - p) / n),

      centre = (p-hat + z^2 / (2n)) / (1 + z^2 / n)
      half   = z / (1 + z^2 / n) sqrt(p-hat (1 - p-hat) / n + z^2 / (4 n^2))

  (Wilson 1927; Agresti and Coull 1998 show its coverage is close to nominal for any n).
  With k = 0 it is [0, z^2 / (n + z^2)].
- Clopper-Pearson ("exact") interval: the Beta quantiles
  [B(alpha/2; k, n - k + 1), B(1 - alpha/2; k + 1, n - k)], 0 for k = 0 and 1 for k = n;
  its coverage is at least nominal, so it is wider.

Every function is vectorised over k and n (arrays broadcast); n = 0 gives NaN.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
from scipy import special

__all__ = ["wilson_interval", "clopper_pearson_interval", "proportion_interval",
           "PROPORTION_MEASURES", "is_proportion"]

#: Measures of :func:`mlmsim.simstudy.summarise` that are proportions of replicates, plus the
#: names studies give derived ones (``noncover``, a relabelled ``rate``).
PROPORTION_MEASURES = frozenset({
    "cover", "becover", "rejection", "noncover", "rate", "error_rate", "nonconverged_rate",
    "singular_rate", "nonpd_hessian_rate", "nonidentifiable_rate"})


def is_proportion(measure: str) -> bool:
    """Whether a measure name is a proportion (in :data:`PROPORTION_MEASURES`, or ending
    in ``_rate``)."""
    return measure in PROPORTION_MEASURES or measure.endswith("_rate")


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return statistics.NormalDist().inv_cdf(0.5 + level / 2.0)


def _counts(k: Any, n: Any) -> tuple[np.ndarray, np.ndarray]:
    k, n = np.broadcast_arrays(np.asarray(k, dtype=float), np.asarray(n, dtype=float))
    with np.errstate(invalid="ignore"):
        bad = (k < 0) | (k > n) | (n < 0)
    if np.any(bad):
        raise ValueError("a proportion needs 0 <= k <= n")
    return k, n


def wilson_interval(k: Any, n: Any, level: float = 0.95, *, z: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval (lower, upper) for k successes in n trials, at
    confidence ``level`` (or for the normal quantile ``z`` when given)."""
    k, n = _counts(k, n)
    z = _z(level) if z is None else float(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.where(n > 0, n, np.nan)
        p = k / nn
        z2 = z * z
        denom = 1.0 + z2 / nn
        centre = (p + z2 / (2.0 * nn)) / denom
        half = z / denom * np.sqrt(np.maximum(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn), 0.0))
        lo = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        hi = np.where(k == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    nan = ~(n > 0)
    return np.where(nan, np.nan, lo), np.where(nan, np.nan, hi)


def clopper_pearson_interval(k: Any, n: Any, level: float = 0.95
                             ) -> tuple[np.ndarray, np.ndarray]:
    """The Clopper-Pearson (exact) interval (lower, upper) for k successes in n trials:
    the alpha/2 quantile of Beta(k, n - k + 1) and the 1 - alpha/2 quantile of
    Beta(k + 1, n - k) (the inverse regularised incomplete beta function, which
    ``scipy.stats.beta.ppf`` evaluates too)."""
    k, n = _counts(k, n)
    alpha = 1.0 - level
    _z(level)  # checks level
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, special.betaincinv(np.maximum(k, 1e-300), n - k + 1.0,
                                                alpha / 2.0), 0.0)
        hi = np.where(k < n, special.betaincinv(k + 1.0, np.maximum(n - k, 1e-300),
                                                1.0 - alpha / 2.0), 1.0)
    nan = ~(n > 0)
    return np.where(nan, np.nan, lo), np.where(nan, np.nan, hi)


def proportion_interval(estimate: Any, n: Any, level: float = 0.95, *,
                        method: str = "wilson", z: float | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The interval of a proportion given as an estimate k / n and its n (as
    :func:`mlmsim.simstudy.summarise` reports it): k = round(estimate n). ``method`` is
    "wilson" or "clopper-pearson"; ``z`` (Wilson only) overrides ``level``. A NaN
    estimate gives NaN."""
    est, n = np.broadcast_arrays(np.asarray(estimate, dtype=float),
                                 np.asarray(n, dtype=float))
    ok = np.isfinite(est) & np.isfinite(n) & (n > 0)
    k = np.where(ok, np.clip(np.round(np.where(ok, est, 0.0) * np.where(ok, n, 0.0)), 0.0,
                             np.where(ok, n, 0.0)), 0.0)
    nn = np.where(ok, n, 0.0)
    if method == "wilson":
        lo, hi = wilson_interval(k, nn, level, z=z)
    elif method in ("clopper-pearson", "exact"):
        if z is not None:
            raise ValueError("z applies to the Wilson interval only; give level")
        lo, hi = clopper_pearson_interval(k, nn, level)
    else:
        raise ValueError(f"method must be 'wilson' or 'clopper-pearson', got {method!r}")
    return np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)
