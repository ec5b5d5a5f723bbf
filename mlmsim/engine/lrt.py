"""Likelihood-ratio tests of nested two-level models, with the boundary correction.

chi2 = d_0 - d_1 (the deviances, -2 log L, of the null and the alternative
fit) on df = k_1 - k_0 parameters. When the alternative adds one random
effect whose variance is 0 under the null (with its covariances), the null
lies on the boundary of the parameter space and chi2 follows the 50:50
mixture 0.5 chi2(df - 1) + 0.5 chi2(df) (Self and Liang 1987; Stram and Lee
1994); ``p_mixture`` reports it beside the plain chi-square p-value. With more
than one added random effect the mixture weights depend on the information
matrix; mlmsim then reports NaN for ``p_mixture`` and says so (the plain
p-value is conservative).

REML criteria are comparable only between fits with the same fixed effects,
so REML fits that differ in fixed effects are refused, as are ML vs REML pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mlmsim.engine.result import FitResult

__all__ = ["LRTResult", "lrt"]


@dataclass(frozen=True)
class LRTResult:
    """A likelihood-ratio test; ``p_mixture`` is the boundary-corrected p-value."""

    statistic: float
    df: int
    p_value: float
    p_mixture: float
    deviance_null: float
    deviance_alt: float
    added_random: tuple[str, ...]
    note: str

    def summary(self) -> str:
        lines = [
            f"Likelihood-ratio test: chi2 = {self.statistic:.4f} on {self.df} df",
            f"  -2LL null {self.deviance_null:.4f}, alternative {self.deviance_alt:.4f}",
            f"  p (chi-square)          = {self.p_value:.4g}",
        ]
        if np.isfinite(self.p_mixture):
            lines.append(f"  p (boundary mixture)    = {self.p_mixture:.4g}")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


def lrt(fit0: FitResult, fit1: FitResult) -> LRTResult:
    """Test the null fit ``fit0`` against the larger ``fit1`` (nested, same data).

    >>> import mlmsim
    >>> hsb = mlmsim.datasets.load("hsb")
    >>> f0 = mlmsim.fit("mathach ~ cses + (1 | school)", hsb, method="ML")
    >>> f1 = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb, method="ML")
    >>> round(lrt(f0, f1).statistic, 3)
    9.433
    """
    if fit0.method != fit1.method:
        raise ValueError(f"cannot compare a {fit0.method} fit with a {fit1.method} fit")
    if fit0.nobs != fit1.nobs or (
        fit0.design is not None and fit1.design is not None
        and not np.array_equal(fit0.design.y, fit1.design.y)
    ):
        raise ValueError("the two fits are not on the same observations (response or rows differ)")
    if fit0.npar > fit1.npar:
        fit0, fit1 = fit1, fit0
    fixed0, fixed1 = set(fit0.fixef.index), set(fit1.fixef.index)
    rand0, rand1 = set(fit0.random_names), set(fit1.random_names)
    if fit0.method == "REML" and fixed0 != fixed1:
        raise ValueError(
            "REML fits with different fixed effects cannot be compared by a likelihood-ratio "
            "test (their REML criteria are for different data transformations); refit by ML"
        )
    if not (fixed0 <= fixed1 and rand0 <= rand1):
        raise ValueError(
            "the fits are not nested: the smaller model's fixed and random effects must be a "
            "subset of the larger model's"
        )
    df = fit1.npar - fit0.npar
    if df <= 0:
        raise ValueError("the fits have the same number of parameters: nothing to test")
    stat = max(fit0.deviance - fit1.deviance, 0.0)
    p = float(sps.chi2.sf(stat, df))
    added = tuple(n for n in fit1.random_names if n not in rand0)
    note = ""
    p_mix = np.nan
    if len(added) == 1:
        # chi2(0) is a point mass at 0: P(chi2(0) >= stat) is 1 at stat = 0, else 0
        p_low = float(sps.chi2.sf(stat, df - 1)) if df > 1 else float(stat <= 0.0)
        p_mix = 0.5 * p_low + 0.5 * p
    elif len(added) > 1:
        note = ("more than one random effect added: the boundary mixture depends on the "
                "information matrix and is not reported; the chi-square p-value is conservative")
    return LRTResult(stat, int(df), p, p_mix, fit0.deviance, fit1.deviance, added, note)
