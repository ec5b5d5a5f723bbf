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

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats as sps

from mlmsim.engine import exact_null as exact
from mlmsim.engine.bootstrap import bootstrap_lrt
from mlmsim.engine.chunked import check_nsim
from mlmsim.engine.result import FitResult

__all__ = ["LRTResult", "lrt", "exact_lrt"]


@dataclass(frozen=True)
class LRTResult:
    """A likelihood-ratio test; ``p_mixture`` is the boundary-corrected p-value.

    With ``method="boot"``, ``p_boot`` is the parametric-bootstrap p-value from
    ``nsim`` refit pairs (``n_failed`` of them failed and left out); with
    ``method="exact"`` (:func:`exact_lrt`), ``p_exact`` is the p-value from ``nsim``
    draws of the exact null distribution. ``reference`` holds the simulated null
    statistics (for plotting); NaN / None otherwise."""

    statistic: float
    df: int
    p_value: float
    p_mixture: float
    deviance_null: float
    deviance_alt: float
    added_random: tuple[str, ...]
    note: str
    method: str = "chisq"
    p_boot: float = float("nan")
    p_exact: float = float("nan")
    nsim: int = 0
    n_failed: int = 0
    reference: np.ndarray | None = field(default=None, repr=False, compare=False)

    def summary(self) -> str:
        lines = [
            f"Likelihood-ratio test: chi2 = {self.statistic:.4f} on {self.df} df",
            f"  -2LL null {self.deviance_null:.4f}, alternative {self.deviance_alt:.4f}",
            f"  p (chi-square)          = {self.p_value:.4g}",
        ]
        if np.isfinite(self.p_mixture):
            lines.append(f"  p (boundary mixture)    = {self.p_mixture:.4g}")
        if self.method == "exact":
            lines.append(f"  p (exact null, {self.nsim} draws) = {self.p_exact:.4g}")
        if self.method == "boot":
            lines.append(f"  p (parametric bootstrap) = {self.p_boot:.4g}  ({self.nsim} "
                         f"simulations, {self.n_failed} failed)")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


def lrt(fit0: FitResult, fit1: FitResult, method: str = "chisq", *, nsim: int = 1000,
        rng=None, n_jobs: int = 1, progress: bool | None = None) -> LRTResult:
    """Test the null fit ``fit0`` against the larger ``fit1`` (nested, same data).

    ``method="chisq"``: the chi-square p-value and, for one added random effect, the
    boundary mixture. ``method="boot"``: also the parametric-bootstrap p-value
    (pbkrtest's ``PBmodcomp``): ``nsim`` data sets simulated from the null fit, both
    models refitted to each (:func:`mlmsim.engine.bootstrap.bootstrap_lrt`),
    reproducible from ``rng``, ``n_jobs`` workers. It needs no mixture weights, so it
    also tests several variance components on the boundary at once.

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
    out = LRTResult(stat, int(df), p, p_mix, fit0.deviance, fit1.deviance, added, note)
    kind = method.lower() if isinstance(method, str) else method
    if kind == "chisq":
        return out
    if kind != "boot":
        raise ValueError(f"method must be 'chisq' or 'boot', got {method!r}")

    p_boot, ref, failed = bootstrap_lrt(fit0, fit1, stat, nsim, rng, n_jobs, progress)
    return replace(out, method="boot", p_boot=p_boot, nsim=int(nsim), n_failed=failed,
                   reference=ref)


def exact_lrt(fit: FitResult, nsim: int = 10000, rng=None, *, n_jobs: int = 1) -> LRTResult:
    """Test var(b) = 0 for the one random effect of ``fit`` (a random intercept, or a
    random slope alone: one column in Z) against the model without it, by the exact
    finite-sample null distribution of the statistic (Crainiceanu and Ruppert 2004;
    RLRsim's ``exactRLRT`` for a REML fit, ``exactLRT`` for an ML fit; see
    :mod:`mlmsim.engine.exact_null`). The statistic is d_0 - d_1: the REML criterion
    (REML) or -2 log L (ML) of the linear model y = X beta + e minus the fit's;
    ``p_exact`` is the share of ``nsim`` null draws at or above it, reproducible from
    ``rng``. The chi-square and 50:50 mixture p-values are reported beside it.

    >>> import mlmsim
    >>> fit = mlmsim.fit("math ~ homework + (1 | school)", mlmsim.datasets.load("nels88"))
    >>> r = exact_lrt(fit, nsim=2000, rng=1)
    >>> r.p_exact
    0.0
    """

    d = fit.design
    if d is None:
        raise ValueError("the exact test needs the fit's design (a fit from mlmsim.fit)")
    nsim = check_nsim(nsim)
    if d.Z.shape[1] != 1:
        raise ValueError(
            f"the exact test is for one variance component and no other random effect; "
            f"this fit has {d.Z.shape[1]} random-effect columns ({', '.join(fit.random_names)})"
            "; use lrt(..., method='boot')")
    reml = fit.method == "REML"
    dev0 = exact.ols_deviance(d.y, d.X, reml=reml)
    stat = max(dev0 - fit.deviance, 0.0)
    if fit.singular:
        stat = 0.0  # an estimate at the boundary: the statistic is 0 up to rounding
    z = d.Z[:, 0]
    slope = None if np.all(z == 1.0) else z
    sample = exact.null_sample(d.X, groups=d.group_codes, slope=slope, reml=reml,
                               nsim=nsim, rng=rng, n_jobs=n_jobs)
    p_chi = float(sps.chi2.sf(stat, 1))
    p_mix = 0.5 * p_chi + 0.5 * float(stat <= 0.0)
    return LRTResult(stat, 1, p_chi, p_mix, dev0, fit.deviance, tuple(fit.random_names),
                     "", method="exact", p_exact=exact.p_value(stat, sample), nsim=int(nsim),
                     reference=sample)
