"""Likelihood profiles and profile-likelihood intervals (lme4's ``profile`` / ``confint``).

For a parameter psi (a fixed effect, a standard deviation of T, a correlation of T or
sigma) the profile is

    d_psi(v) = min { criterion(params) : psi = v },
    zeta(v) = sign(v - psi_hat) sqrt(d_psi(v) - d_hat),

the other parameters re-optimised at each v (lme4's zeta). The level-L interval is
{ v : |zeta(v)| <= z }, z = sqrt(chi2_1^{-1}(L)): each limit is the root of
d_psi(v) - d_hat - z^2, found by bracketing and Brent's method, so it is exact to the
optimiser's precision (lme4 interpolates a spline through a grid of profile points).
Where the profile does not reach z before the parameter space ends (a standard
deviation at 0, a correlation at +-1) the limit is that end, and ``at_bound`` says so.

Which criterion. The covariance parameters are profiled on the fit's own criterion:
-2 log L for ML fits, the REML criterion -2 log L_R for REML fits (the restricted
likelihood-ratio interval, which contains the REML estimate). REML has no likelihood for
the fixed effects, so they are always profiled on -2 log L (lme4 does the same). lme4's
``profile`` refits a REML model by ML and profiles everything on -2 log L;
``criterion="ML"`` reproduces that.

The inner minimisation is over lme4's scale (standard deviations, correlations, sigma),
with the bounds sd >= 0, -1 <= rho <= 1, by L-BFGS-B with the analytic gradient in phi
carried through the chain rule, then polished by Newton steps with the analytic Hessian
(docs/math.md (6.2), (6.3)). An interval for a standard deviation is the interval for
the variance, squared: the profile is invariant to the monotone map sd -> sd^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize as spo
from scipy import stats as sps

from mlmsim.engine import inference, phi_kernel
from mlmsim.engine.bootstrap import reported
from mlmsim.engine.evaluate import evaluate
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.stats import centred_group_stats, flat_arrays, group_stats

__all__ = ["ParameterProfile", "profile", "profile_confint"]

# |zeta| up to which ``profile`` traces a curve by default: lme4's alphamax = 0.01 for one
# parameter, sqrt(chi2_1^{-1}(0.99)).
_ZETA_MAX = float(np.sqrt(sps.chi2.ppf(0.99, 1)))


class _Criterion:
    """-2 log L (ML) or -2 log L_R (REML) of one data set in phi, with its gradient and
    Hessian (docs/math.md (6.1)-(6.3)); phi from lme4's scale par = (sd's and
    correlations in ``covparms`` order, sigma), with the chain rule for both."""

    def __init__(self, y, X, Z, codes, J, blocks, reml: bool):
        q = Z.shape[1]
        self.cs = inference.CovStructure.from_blocks(q, blocks)
        self.reml = reml
        self.qc = qtoken(q)
        has_one = X.shape[1] > 0 and bool(np.any(np.all(X == 1.0, axis=0)))
        st = (centred_group_stats(y, X, Z, codes, J)[0] if has_one
              else group_stats(y, X, Z, codes, J))
        self.st = Stats(*flat_arrays(st.select(None)))
        rows, cols = self.cs.rows, self.cs.cols
        self.is_var = rows == cols
        var_of = {int(r): k for k, r in enumerate(rows) if rows[k] == cols[k]}
        self.pair = np.array([(var_of[int(r)], var_of[int(c)]) for r, c in zip(rows, cols,
                                                                                strict=True)])
        self.m = rows.shape[0] + 1

    def phi(self, par: np.ndarray) -> np.ndarray:
        """T's elements (sd^2 or rho sd_a sd_b) and sigma^2 from lme4's scale."""
        s = par[:-1]
        out = np.where(self.is_var, s * s, s * s[self.pair[:, 0]] * s[self.pair[:, 1]])
        return np.append(out, par[-1] ** 2)

    def par(self, phi: np.ndarray) -> np.ndarray:
        """lme4's scale from phi (T positive semi-definite)."""
        sd = np.sqrt(np.clip(phi[:-1], 0.0, None))
        out = sd.copy()
        for k in np.flatnonzero(~self.is_var):
            a, b = self.pair[k]
            den = sd[a] * sd[b]
            out[k] = np.clip(phi[k] / den, -1.0, 1.0) if den > 0 else 0.0
        return np.append(out, np.sqrt(phi[-1]))

    def at_phi(self, phi: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        f, g, H = phi_kernel.phi_many(self.st, self.cs.rows, self.cs.cols, phi[None],
                                      self.reml, False, 0, self.qc)[:3]
        return float(f[0]), g[0], H[0]

    def at_par(self, par: np.ndarray, hessian: bool = False):
        """The criterion, its gradient and (optionally) Hessian in lme4's scale."""
        f, g, H = self.at_phi(self.phi(par))
        if not np.isfinite(f):
            return np.inf, np.full(self.m, np.nan), None
        Jac = self._jacobian(par)
        grad = Jac.T @ g
        if not hessian:
            return f, grad, None
        Hp = Jac.T @ H @ Jac
        for k in range(self.m - 1):
            if self.is_var[k]:
                Hp[k, k] += 2.0 * g[k]
            else:
                a, b = self.pair[k]
                Hp[k, a] += g[k] * par[b]
                Hp[a, k] += g[k] * par[b]
                Hp[k, b] += g[k] * par[a]
                Hp[b, k] += g[k] * par[a]
                Hp[a, b] += g[k] * par[k]
                Hp[b, a] += g[k] * par[k]
        Hp[-1, -1] += 2.0 * g[-1]
        return f, grad, Hp

    def _jacobian(self, par: np.ndarray) -> np.ndarray:
        """d phi / d par."""
        m = self.m
        Jac = np.zeros((m, m))
        for k in range(m - 1):
            if self.is_var[k]:
                Jac[k, k] = 2.0 * par[k]
            else:
                a, b = self.pair[k]
                Jac[k, k] = par[a] * par[b]
                Jac[k, a] += par[k] * par[b]
                Jac[k, b] += par[k] * par[a]
        Jac[-1, -1] = 2.0 * par[-1]
        return Jac

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.where(self.is_var, 0.0, -1.0)
        hi = np.where(self.is_var, np.inf, 1.0)
        return np.append(lo, 0.0), np.append(hi, np.inf)

    def minimise(self, par0: np.ndarray, free: np.ndarray, scale: np.ndarray
                 ) -> tuple[float, np.ndarray]:
        """min over par[free] (the rest held), from par0: L-BFGS-B in par / scale, then
        Newton steps with the exact Hessian while no bound is active.

        A standard deviation at (or next to) 0 has a zero gradient in sd (d sd^2 / d sd =
        0), so an optimiser started there cannot tell whether the variance should grow:
        such a start is tried twice, just inside the bound and at half the parameter's
        scale, and the lower minimum is kept."""
        lo, hi = self.bounds()
        par = np.clip(par0.astype(float), lo, hi)
        if not free.any():
            return self.at_par(par)[0], par
        par[-1] = max(par[-1], 1e-8 * scale[-1])
        low = free & self.is_var_full & (par <= 1e-3 * scale)
        par[low] = np.maximum(par[low], 1e-3 * scale[low])
        best = self._minimise_from(par, free, scale, lo, hi)
        if low.any():
            other = par.copy()
            other[low] = 0.5 * scale[low]
            alt = self._minimise_from(other, free, scale, lo, hi)
            if alt[0] < best[0]:
                best = alt
        return best

    def _minimise_from(self, par, free, scale, lo, hi) -> tuple[float, np.ndarray]:
        par = par.copy()
        s = scale[free]

        def fun(x):
            p = par.copy()
            p[free] = x * s
            f, g, _ = self.at_par(p)
            if not np.isfinite(f):
                return 1e300, np.zeros_like(x)
            return f, g[free] * s

        bnds = list(zip(lo[free] / s, hi[free] / s, strict=True))
        res = spo.minimize(fun, par[free] / s, jac=True, method="L-BFGS-B", bounds=bnds,
                           options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 500})
        par[free] = res.x * s
        f = self.at_par(par)[0]
        for _ in range(6):
            inside = (par[free] > lo[free] + 1e-9 * s) & (par[free] < hi[free] - 1e-9)
            if not inside.all():
                break
            f0, g, Hp = self.at_par(par, hessian=True)
            if Hp is None or not np.isfinite(f0):  # T not PSD there (q >= 3): keep L-BFGS-B's
                break
            gf, Hf = g[free], Hp[np.ix_(free, free)]
            try:
                step = -np.linalg.solve(Hf, gf)
            except np.linalg.LinAlgError:
                break
            if not np.all(np.isfinite(step)) or gf @ step >= 0:
                break
            t = 1.0
            while t > 1e-4:
                trial = par.copy()
                trial[free] = par[free] + t * step
                if np.all(trial >= lo) and np.all(trial <= hi):
                    f1 = self.at_par(trial)[0]
                    if f1 <= f0:
                        break
                t *= 0.5
            else:
                break
            par, f = trial, f1
            if f0 - f1 <= 1e-13 * max(1.0, abs(f0)):
                break
        return f, par

    @property
    def is_var_full(self) -> np.ndarray:
        return np.append(self.is_var, False)


@dataclass(frozen=True)
class ParameterProfile:
    """The profile of one parameter: ``points`` has the parameter's value, ``zeta`` and
    the re-optimised other parameters (lme4's scale) at each point, sorted by value;
    ``estimate`` and ``scale`` ("fixed", "sd", "cor", "sigma") say what was profiled."""

    parameter: str
    scale: str
    estimate: float
    criterion: str
    points: pd.DataFrame

    def plot(self, ax=None, level: float = 0.95):
        """zeta against the parameter (lme4's ``xyplot(profile)``), with +-z at ``level``."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 3.5))
        z = float(np.sqrt(sps.chi2.ppf(level, 1)))
        ax.plot(self.points["value"], self.points["zeta"], marker="o", ms=3)
        for v in (-z, z):
            ax.axhline(v, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel(f"{self.parameter} ({self.scale})")
        ax.set_ylabel("zeta")
        return ax


class _Profiler:
    """The fit's data, criteria and optimum; profiles one parameter at a time."""

    def __init__(self, fit, criterion: str | None):
        d = fit.design
        if d is None:
            raise ValueError("profiling needs the fit's design (a fit from mlmsim.fit)")
        if not fit.bounded:
            raise ValueError("profile intervals are for a bounded fit (variances >= 0); "
                             "refit with bounded=True, or use confint('boot') or 'wald'")
        crit = (criterion or fit.method).upper()
        if crit not in ("ML", "REML"):
            raise ValueError(f"criterion must be 'ML' or 'REML', got {criterion!r}")
        self.fit = fit
        # in the fit's units (mlmsim.engine.units: y, X and Z scaled by powers of 2 where
        # they are far from 1); the limits are mapped back by ``unit``
        if fit.units is not None:
            d = fit.units.design(d)
        self.d = d
        self.cov = _Criterion(d.y, d.X, d.Z, d.group_codes, d.ngroups, d.blocks, crit == "REML")
        self.cov_name = crit
        self.fixed_names = list(d.fixed_names)
        self.cov_names = list(fit.covparm_names)
        c = fit._covparm_scale()
        D = fit._fixef_scale()
        # lme4's scale: sd and sigma scale by sqrt(c), correlations by 1, gamma by D
        self.unit = {"fixed": D, "cov": np.where(np.append(self.cov.is_var, True),
                                                np.sqrt(c), 1.0)}
        self.fixef_se = fit.fixef_se.to_numpy() / D
        par_hat = self.cov.par(np.asarray(fit.phi, dtype=float) / c)
        self.scale = self._scales(par_hat)
        # the fit's own optimum, polished on this criterion (the same point for the fit's
        # criterion; the ML optimum when a REML fit is profiled by ML)
        free = np.ones(par_hat.shape[0], bool)
        self.d_hat, self.par_hat = self.cov.minimise(par_hat, free, self.scale)
        self._ml = None

    def _scales(self, par: np.ndarray) -> np.ndarray:
        """The optimiser's unit of each parameter: an sd's estimate, but at least
        0.05 sigma / rms(z) in its own units (y over its Z column's), so that an sd at 0
        gets a sensible scale whatever the units; 1 for a correlation; sigma-hat."""
        sigma = par[-1]
        rms = np.sqrt(np.mean(self.d.Z ** 2, axis=0))
        rms = np.where(rms > 0, rms, 1.0)
        floor = np.ones(par.shape[0])
        rows = self.cov.cs.rows
        for k in np.flatnonzero(self.cov.is_var):
            floor[k] = 0.05 * sigma / rms[rows[k]]
        return np.where(self.cov.is_var_full, np.maximum(par, floor),
                        np.append(np.ones(par.shape[0] - 1), sigma))

    # ---- covariance parameters ----------------------------------------------------
    def cov_point(self, w: int, v: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        par = start.copy()
        par[w] = v
        free = np.ones(par.shape[0], bool)
        free[w] = False
        return self.cov.minimise(par, free, self.scale)

    # ---- fixed effects: always -2 log L ----------------------------------------------
    @property
    def ml(self) -> tuple[_Criterion, float, np.ndarray, np.ndarray]:
        if self._ml is None:
            d = self.d
            crit = (self.cov if not self.cov.reml else
                    _Criterion(d.y, d.X, d.Z, d.group_codes, d.ngroups, d.blocks, False))
            free = np.ones(self.par_hat.shape[0], bool)
            f, par = crit.minimise(self.par_hat, free, self.scale)
            beta = _gls_beta(crit, par, d)
            self._ml = (crit, f, par, beta)
        return self._ml

    def fixed_point(self, j: int, b: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        d = self.d
        keep = np.arange(d.X.shape[1]) != j
        crit = _Criterion(d.y - b * d.X[:, j], d.X[:, keep], d.Z, d.group_codes, d.ngroups,
                          d.blocks, False)
        free = np.ones(start.shape[0], bool)
        return crit.minimise(start, free, self.scale)

    # ---- one parameter -----------------------------------------------------------
    def parameter(self, name: str):
        """(kind, estimate, first step, lower bound, upper bound, the profile point
        function (value, start) -> (criterion, parameters), the criterion's minimum, the
        parameters there), on lme4's scale in the fit's units."""
        if name in self.fixed_names:
            j = self.fixed_names.index(name)
            _, d_ml, par_ml, beta = self.ml
            se = float(self.fixef_se[j])
            return ("fixed", beta[j], se, -np.inf, np.inf,
                    lambda v, s: self.fixed_point(j, v, s), d_ml, par_ml)
        if name in self.cov_names:
            w = self.cov_names.index(name)
            lo, hi = self.cov.bounds()
            est = self.par_hat[w]
            kind = ("sigma" if w == len(self.cov_names) - 1 else
                    "sd" if self.cov.is_var[w] else "cor")
            step = self._step(w)
            return (kind, est, step, lo[w], hi[w], lambda v, s: self.cov_point(w, v, s),
                    self.d_hat, self.par_hat)
        raise ValueError(f"no parameter {name!r}: choose from {self.fixed_names + self.cov_names}")

    def _unit_of(self, name: str) -> float:
        """A natural unit of a parameter on lme4's scale, for a first step where its
        curvature gives none: the optimiser's scale of a covariance parameter, or
        sigma-hat / rms(x_j) of a fixed effect."""
        if name in self.cov_names:
            return float(self.scale[self.cov_names.index(name)])
        x = self.d.X[:, self.fixed_names.index(name)]
        rms = float(np.sqrt(np.mean(x * x)))
        return float(self.par_hat[-1] / rms) if rms > 0 else 1.0

    def to_data(self, name: str, v: float) -> float:
        """A value on lme4's scale in the fit's units -> the data's units."""
        if name in self.fixed_names:
            return float(v * self.unit["fixed"][self.fixed_names.index(name)])
        return float(v * self.unit["cov"][self.cov_names.index(name)])

    def _step(self, w: int) -> float:
        """A first step ~ one standard error on lme4's scale, from the curvature."""
        f, g, Hp = self.cov.at_par(self.par_hat, hessian=True)
        h = Hp[w, w] if Hp is not None else np.nan
        if np.isfinite(h) and h > 0:
            return float(np.sqrt(2.0 / h))
        return float(0.1 * self.scale[w])

    def limit(self, name: str, side: int, z: float, record: list) -> tuple[float, bool]:
        """The limit on ``side`` (-1, +1) where d - d_hat = z^2, or the bound."""
        kind, est, step, lo, hi, point, d0, start = self.parameter(name)
        bound = lo if side < 0 else hi
        target = z * z

        def excess(v, s):
            f, par = point(v, s)
            record.append((v, f, par))
            return f - d0 - target, par

        inner_v, inner_par = est, start
        if not (np.isfinite(step) and step > 0):
            step = 0.1 * max(abs(est), self._unit_of(name))
        h = step
        v = est + side * z * h
        for _ in range(60):
            if (side < 0 and v <= bound) or (side > 0 and v >= bound):
                e_b, par_b = excess(bound, inner_par)
                if e_b <= 0:
                    return float(bound), True
                outer_v = bound
                break
            e, par = excess(v, inner_par)
            if e > 0:
                outer_v = v
                break
            inner_v, inner_par = v, par
            h *= 2.0
            v = est + side * z * h
        else:
            return float("nan"), False
        if inner_v == outer_v:
            return float(inner_v), False

        def root_fn(x):
            best = min(record, key=lambda r: abs(r[0] - x))
            return excess(x, best[2])[0]

        width = abs(outer_v - inner_v)
        root = spo.brentq(root_fn, min(inner_v, outer_v), max(inner_v, outer_v),
                          xtol=1e-10 * width, rtol=4 * np.finfo(float).eps)
        return float(root), False


def _gls_beta(crit: _Criterion, par: np.ndarray, d) -> np.ndarray:
    """GLS fixed effects at lme4-scale ``par`` (the fit's order), via :func:`evaluate`'s
    kernel on the uncentred design."""
    return evaluate(d, phi=crit.phi(par), method="REML" if crit.reml else "ML").fixef.to_numpy()


def _to_reported(kind: str, v: float) -> float:
    """lme4's scale -> the reported one: variances and sigma^2 are squares."""
    return v * v if kind in ("sd", "sigma") else v


_REPORTED = {"fixed": "fixed", "sd": "variance", "sigma": "variance", "cor": "correlation"}


def profile_confint(fit, parm=None, level: float = 0.95, criterion: str | None = None,
                    n_jobs: int = 1) -> pd.DataFrame:
    """Profile-likelihood intervals (see the module docstring) for ``parm`` (names of
    fixed effects and of ``covparms``; default all). Returns one row per parameter:
    ``estimate``, ``lower``, ``upper`` on the reported scale (fixed effects; variances
    and sigma^2; correlations for covariances), ``scale``, and ``at_bound`` ("lower",
    "upper", "both" or "") where a limit is the end of the parameter space rather than
    the cut-off. ``estimate`` is the fit's own (for a REML fit's fixed effects, whose
    profile is by ML, the interval is about the ML estimate). ``n_jobs`` != 1 profiles
    the parameters in parallel (joblib processes; worth it where one profile takes
    seconds, e.g. three random effects); the limits do not depend on it."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    names = fit._parm(parm)
    if n_jobs == 1 or len(names) == 1:
        rows = _limits(fit, names, level, criterion)
    else:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=n_jobs)(delayed(_limits)(fit, [name], level, criterion)
                                        for name in names)
        rows = [r for part in parts for r in part]
    everything = list(fit.fixed_names) + list(fit.covparm_names)
    fit_est = reported(fit.fixef.to_numpy(), np.asarray(fit.phi, dtype=float),
                       fit.cov_structure)
    for name, row in zip(names, rows, strict=True):
        row["estimate"] = fit_est[everything.index(name)]
    return pd.DataFrame(rows, index=pd.Index(names, name="parameter"))[
        ["estimate", "lower", "upper", "scale", "at_bound"]]


def _limits(fit, names: list[str], level: float, criterion: str | None) -> list[dict]:
    """The profile limits of ``names``, one dict each (lower, upper, scale, at_bound)."""
    z = float(np.sqrt(sps.chi2.ppf(level, 1)))
    pr = _Profiler(fit, criterion)
    rows = []
    for name in names:
        kind = pr.parameter(name)[0]
        record: list = []
        lo, lo_b = pr.limit(name, -1, z, record)
        hi, hi_b = pr.limit(name, +1, z, record)
        lo, hi = pr.to_data(name, lo), pr.to_data(name, hi)
        if kind in ("sd", "sigma"):
            lo, hi = max(lo, 0.0), max(hi, 0.0)
        flag = "both" if lo_b and hi_b else "lower" if lo_b else "upper" if hi_b else ""
        rows.append({"lower": _to_reported(kind, lo), "upper": _to_reported(kind, hi),
                     "scale": _REPORTED[kind], "at_bound": flag})
    return rows


def profile(fit, parm: str, *, level: float = 0.99, n: int = 21,
            criterion: str | None = None) -> ParameterProfile:
    """The profile of one parameter on lme4's scale (sd's, correlations, sigma; fixed
    effects): ``n`` points evenly spaced between the level-``level`` limits (lme4 traces
    to alphamax = 0.01), each with zeta and the re-optimised other parameters."""
    names = fit._parm(parm)
    if len(names) != 1:
        raise ValueError("profile takes one parameter")
    name = names[0]
    z = float(np.sqrt(sps.chi2.ppf(level, 1)))
    pr = _Profiler(fit, criterion)
    kind, est, _, _, _, point, d0, start = pr.parameter(name)
    record: list = []
    lo = pr.limit(name, -1, z, record)[0]
    hi = pr.limit(name, +1, z, record)[0]
    cov_cols = [f"par:{c}" for c in fit.covparm_names]
    out = []
    for v in np.unique(np.append(np.linspace(lo, hi, n), est)):
        best = min(record, key=lambda r: abs(r[0] - v))[2] if record else start
        f, par = (d0, start) if v == est else point(v, best)
        record.append((v, f, par))
        zeta = np.sign(v - est) * np.sqrt(max(f - d0, 0.0))
        out.append([pr.to_data(name, v), zeta, *(par * pr.unit["cov"])])
    pts = pd.DataFrame(out, columns=["value", "zeta", *cov_cols])
    scale = {"fixed": "fixed", "sd": "sd", "sigma": "sigma", "cor": "cor"}[kind]
    return ParameterProfile(name, scale, pr.to_data(name, est),
                            "ML" if kind == "fixed" else pr.cov_name, pts)
