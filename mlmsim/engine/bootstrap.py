"""Parametric bootstrap of a fitted model (lme4's ``bootMer(use.u = FALSE)``) and the
parametric-bootstrap likelihood-ratio test (pbkrtest's ``PBmodcomp``).

Each bootstrap data set is y* = X gamma-hat + Z_j U*_j + R*, U*_j ~ N(0, T-hat),
R* ~ N(0, sigma2-hat I) on the fit's own design (:meth:`FitResult.simulate`), refitted by
the fit's method in one batched pass per chunk (:mod:`mlmsim.engine.chunked`: chunk i
draws from the i-th child of ``SeedSequence(rng)``, so every result is the same for any
``n_jobs``).

Intervals: percentile (q_{a/2}, q_{1-a/2}) of the bootstrap estimates, and basic
(2 theta-hat - q_{1-a/2}, 2 theta-hat - q_{a/2}); quantiles by numpy's default (R's
type 7). Parameters: the fixed effects, the variances and sigma^2, and each covariance
as a correlation (the rows of :meth:`FitResult.confint`). A refit that failed (did not
converge, or gave non-finite estimates) is left out and counted; singular refits are
kept (they are draws of the estimator) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlmsim.engine.batch import fit_arrays
from mlmsim.engine.chunked import chunk_sizes, run_chunks

__all__ = ["Bootstrap", "bootstrap", "bootstrap_lrt", "reported"]


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def reported(fixed: np.ndarray, phi: np.ndarray, cs) -> np.ndarray:
    """(fixed effects, phi with covariances as correlations): the rows of ``confint``.
    phi (..., m) in ``covparms`` order; a covariance T_ab becomes T_ab / sqrt(T_aa T_bb),
    in [-1, 1]."""
    out = np.array(phi, dtype=float, copy=True)
    diag = {int(r): k for k, (r, c) in enumerate(zip(cs.rows, cs.cols, strict=True)) if r == c}
    for k, (r, c) in enumerate(zip(cs.rows, cs.cols, strict=True)):
        if r != c:
            with np.errstate(divide="ignore", invalid="ignore"):
                rho = phi[..., k] / np.sqrt(phi[..., diag[int(r)]] * phi[..., diag[int(c)]])
            out[..., k] = np.clip(rho, -1.0, 1.0)  # a singular T gives |rho| = 1 + rounding
    return np.concatenate((fixed, out), axis=-1)


def _refit_chunk(design, fit_method: str, ys: np.ndarray, bounded: bool, control=None):
    d = design
    return fit_arrays(ys, d.X, d.Z, d.group_codes, method=fit_method,
                      fixed_names=d.fixed_names, random_names=d.random_names, blocks=d.blocks,
                      n_groups=d.ngroups, bounded=bounded, control=control)


def _refit_of(fit) -> tuple:
    """How a bootstrap refits the model of ``fit``: its design, method, bounds and the
    optimiser settings it was fitted with."""
    control = fit.optsum.control if fit.optsum is not None else None
    return (fit.design, fit.method, fit.bounded, control)


def _chunk(fit, refit_designs, seed: np.random.SeedSequence, size: int) -> list[dict]:
    """Simulate ``size`` responses from ``fit`` and refit each model of ``refit_designs``
    ((design, method, bounded, optimiser control) of a fit) to them; per model: params,
    deviance, flags."""
    ys = fit.simulate(size, np.random.default_rng(seed))
    out = []
    for design, method, bounded, control in refit_designs:
        b = _refit_chunk(design, method, ys, bounded, control)
        est = b.estimates
        ok = np.asarray(est.converged, bool) & np.all(np.isfinite(b.params), axis=1)
        if b.errors:
            ok &= np.array([e is None for e in b.errors])
        out.append({"beta": est.beta, "phi": est.phi, "deviance": np.asarray(est.deviance),
                    "ok": ok, "singular": np.asarray(est.singular, bool)})
    return out


def _run(fit, nsim: int, rng, n_jobs: int, progress, label: str, refit_designs):
    """The chunks of a bootstrap, in order (:func:`mlmsim.engine.chunked.run_chunks`),
    concatenated per refitted model."""
    if fit.design is None:
        raise ValueError("the bootstrap needs the fit's design (a fit from mlmsim.fit)")
    parts = run_chunks(_chunk, chunk_sizes(nsim), rng, n_jobs=n_jobs, progress=progress,
                       label=label, args=(fit, refit_designs))
    return [{key: np.concatenate([p[i][key] for p in parts]) for key in parts[0][i]}
            for i in range(len(refit_designs))]


@dataclass(frozen=True)
class Bootstrap:
    """A parametric bootstrap of a fit.

    ``estimate``: the fit's parameters (fixed effects, variances and sigma^2,
    correlations for covariances); ``samples`` (nsim rows, the same columns): the refits'
    estimates, NaN for a failed refit; ``scale`` says what each column is; ``n_failed``
    and ``n_singular`` count failed and singular refits."""

    estimate: pd.Series
    samples: pd.DataFrame = field(repr=False)
    scale: pd.Series = field(repr=False)
    nsim: int
    n_failed: int
    n_singular: int

    def confint(self, level: float = 0.95, type: str = "perc") -> pd.DataFrame:  # noqa: A002
        """Percentile (``type="perc"``) or basic (``"basic"``) intervals at ``level``,
        each parameter from its own finite bootstrap values (column ``n``: a correlation
        is undefined, NaN, in a refit of an unbounded fit with a variance <= 0, which
        leaves that refit's other parameters in)."""
        _check_level(level)
        if type not in ("perc", "basic"):
            raise ValueError(f"type must be 'perc' or 'basic', got {type!r}")
        a = (1.0 - level) / 2.0
        n = self.samples.notna().sum()
        if not n.any():
            raise ValueError("no bootstrap refit succeeded")
        qlo = self.samples.quantile(a).to_numpy()
        qhi = self.samples.quantile(1.0 - a).to_numpy()
        est = self.estimate.to_numpy()
        lo, hi = (qlo, qhi) if type == "perc" else (2 * est - qhi, 2 * est - qlo)
        return pd.DataFrame({"estimate": est, "lower": lo, "upper": hi,
                             "scale": self.scale.to_numpy(), "at_bound": "",
                             "n": n.to_numpy()},
                            index=self.estimate.index.rename("parameter"))

    def summary(self) -> str:
        return (f"parametric bootstrap: {self.nsim} refits, {self.n_failed} failed, "
                f"{self.n_singular} singular")


def bootstrap(fit, nsim: int = 1000, rng=None, *, n_jobs: int = 1,
              progress: bool | None = None) -> Bootstrap:
    """Parametric bootstrap of ``fit`` (see the module docstring): ``nsim`` data sets
    simulated from the fit and refitted, reproducible from ``rng``, in parallel over
    chunks with ``n_jobs``; a progress bar when nsim exceeds one chunk (``progress``
    False: none).

    >>> import mlmsim
    >>> fit = mlmsim.fit("math ~ homework + (1 | school)", mlmsim.datasets.load("nels88"))
    >>> b = fit.bootstrap(nsim=200, rng=1)
    >>> b.samples.shape, b.n_failed
    ((200, 4), 0)
    """
    res = _run(fit, nsim, rng, n_jobs, progress, "bootstrap", [_refit_of(fit)])[0]
    cs = fit.cov_structure
    names = list(fit.fixed_names) + list(fit.covparm_names)
    est = reported(fit.fixef.to_numpy(), np.asarray(fit.phi, dtype=float), cs)
    with np.errstate(invalid="ignore"):
        vals = reported(res["beta"], res["phi"], cs)
    vals[~res["ok"]] = np.nan
    scale = (["fixed"] * len(fit.fixed_names)
             + ["variance" if v else "correlation" for v in cs.is_variance])
    return Bootstrap(
        estimate=pd.Series(est, index=names, name="estimate"),
        samples=pd.DataFrame(vals, columns=names),
        scale=pd.Series(scale, index=names, name="scale"),
        nsim=int(nsim),
        n_failed=int((~res["ok"]).sum()),
        n_singular=int((res["singular"] & res["ok"]).sum()),
    )


def bootstrap_lrt(fit0, fit1, statistic: float, nsim: int, rng, n_jobs: int,
                  progress: bool | None) -> tuple[float, np.ndarray, int]:
    """The parametric-bootstrap reference distribution of the LRT statistic d_0 - d_1:
    data simulated from the null fit ``fit0``, both models refitted to each; the p-value
    (1 + #{LRT* >= LRT}) / (1 + n), n the refit pairs that both succeeded (pbkrtest's
    ``PBmodcomp``). Returns (p, the LRT* sample, the number of failed pairs)."""
    if fit1.design is None:
        raise ValueError("the bootstrap needs the fits' designs (fits from mlmsim.fit)")
    r0, r1 = _run(fit0, nsim, rng, n_jobs, progress, "bootstrap LRT",
                  [_refit_of(fit0), _refit_of(fit1)])
    ok = r0["ok"] & r1["ok"]
    ref = np.maximum(r0["deviance"][ok] - r1["deviance"][ok], 0.0)
    p = (1.0 + np.count_nonzero(ref >= statistic)) / (1.0 + ref.size)
    return float(p), ref, int((~ok).sum())
