"""The fit pipeline: formula -> design -> statistics -> optimiser -> FitResult.

Each stage is a public function usable alone (as lme4's ``lFormula`` ->
``mkLmerDevfun`` -> ``optimizeLmer`` -> ``mkMerMod``):
:func:`mlmsim.formula.model_design`, :func:`mlmsim.engine.stats.group_stats`,
:func:`mlmsim.engine.optimize.minimize_theta`, and :func:`result_from_theta`,
which reads everything off the optimum. :func:`fit` runs them in order.
Diagnostics live in :func:`diagnose` and speak in plain words.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from mlmsim.engine import inference
from mlmsim.engine.deviance import ThetaMap, pack, profile, residual_effects
from mlmsim.engine.optimize import OptResult, minimize_theta, take
from mlmsim.engine.result import FitResult, covparm_names
from mlmsim.engine.stats import GroupStats, group_stats
from mlmsim.formula import Design, model_design

__all__ = ["fit", "fit_design", "result_from_theta", "random_dependence", "SINGULAR_TOL",
           "HESSIAN_PD_RTOL"]

SINGULAR_TOL = 1e-4
"""A diagonal element of Lambda below this is on the boundary (lme4's isSingular tol)."""

HESSIAN_PD_RTOL = 1e-6
"""H is positive definite when its smallest eigenvalue exceeds this times the largest."""

_METHODS = {"ML": "ML", "REML": "REML"}


def _method(method: str) -> str:
    m = str(method).upper()
    if m not in _METHODS:
        raise ValueError(f"method must be 'ML' or 'REML', got {method!r}")
    return m


def fit(formula: str, data: pd.DataFrame, method: str = "REML") -> FitResult:
    """Fit a two-level linear mixed model by ML or REML from an lme4 formula.

    >>> from mlmsim import datasets
    >>> res = fit("mathach ~ cses + (1 + cses | school)", datasets.load("hsb"), method="ML")
    >>> round(res.deviance, 3)
    46710.98
    """
    method = _method(method)
    design = model_design(formula, data)
    return fit_design(design, method)


def random_dependence(design: Design, stats: GroupStats) -> list[str]:
    """Random-effect columns that are linearly dependent within every group.

    A group's Z_j has dependent columns when A_j = Z_j'Z_j is singular; if that
    holds in every group with at least q rows (intercept + female + male; a
    random slope on a variable constant within groups), T is not identifiable.
    Returns the names of the columns involved (empty when identifiable).
    """
    A = stats.A
    q = A.shape[-1]
    if q < 2:
        return []
    scale = np.sqrt(np.maximum(np.einsum("jii->ji", A), 1e-300))
    C = A / (scale[:, :, None] * scale[:, None, :])
    w, V = np.linalg.eigh(C)
    big = stats.n >= q
    if not big.any():
        big = stats.n > 0
    dep = w[big, 0] < 1e-9 * np.maximum(w[big, -1], 1e-300)
    if not dep.all():
        return []
    involved = (np.abs(V[big, :, 0]) > 1e-6).any(axis=0)
    return [design.random_names[i] for i in np.flatnonzero(involved)]


def fit_design(design: Design, method: str = "REML", theta0: np.ndarray | None = None) -> FitResult:
    """Fit from a :class:`~mlmsim.formula.Design` (formula already turned into matrices)."""
    method = _method(method)
    reml = method == "REML"
    stats = group_stats(design.y, design.X, design.Z, design.group_codes, design.ngroups)
    pk = pack(stats)
    tmap = ThetaMap.from_blocks(design.Z.shape[1], design.blocks)
    start = None if theta0 is None else np.atleast_2d(theta0)
    opt = minimize_theta(take(pk, None), tmap, reml, start)
    return result_from_theta(design, stats, tmap, opt, 0, method)


def result_from_theta(design: Design, stats: GroupStats, tmap: ThetaMap, opt: OptResult,
                      r: int, method: str) -> FitResult:
    """Read the estimates, inference and diagnostics off replicate ``r`` of an optimum."""
    reml = method == "REML"
    theta = opt.theta[r]
    pk = pack(stats)
    pr = profile(pk, theta, tmap)
    N, p, q = int(stats.N), stats.p, stats.q
    sigma2 = float(pr.r2 / (N - p if reml else N))
    L = pr.Lambda
    Tm = sigma2 * (L @ L.T)
    beta = pr.beta
    C = np.linalg.inv(pr.XtVX)
    vcov = sigma2 * 0.5 * (C + C.T)
    fixed, rnames = list(design.fixed_names), list(design.random_names)
    # EBLUPs U_j = Lambda M_j^{-1} Lambda' u_j, conditional covariance
    # sigma^2 Lambda M_j^{-1} Lambda'
    _, Pu = residual_effects(pk, pr)
    U = (L @ Pu).T
    condvar = sigma2 * np.einsum("ab,jbc,dc->jad", L, pr.Minv, L)
    fitted = design.X @ beta + np.einsum("nq,nq->n", design.Z, U[design.group_codes])
    dev = float(opt.deviance[r])
    npar = p + tmap.size + 1
    # covariance parameters, Hessian in phi, COVTEST table
    cs = inference.CovStructure.from_blocks(q, design.blocks)
    phi = cs.phi(Tm, sigma2)
    H = inference.phi_hessian(pk, cs, phi, reml)
    eig = np.linalg.eigvalsh(H)
    hessian_pd = bool(eig[0] > HESSIAN_PD_RTOL * np.abs(eig).max())
    names, sas = covparm_names(rnames, cs.rows, cs.cols)
    if hessian_pd:
        acov = 2.0 * np.linalg.inv(H)
        acov = 0.5 * (acov + acov.T)
    else:
        acov = np.full(H.shape, np.nan)
    dependent = random_dependence(design, stats)
    singular_at = [rnames[tmap.rows[k]] for k in np.flatnonzero(tmap.diagonal)
                   if theta[k] < SINGULAR_TOL]
    messages = diagnose(
        converged=bool(opt.converged[r]), grad=opt.grad[r], hess_theta=opt.hessian[r],
        hessian_pd=hessian_pd, eig=eig, singular_at=singular_at, dependent=dependent,
        dropped_fixed=list(design.dropped_fixed), n_dropped=design.n_dropped,
    )
    for m in messages:
        if m.startswith(("Model failed", "The optimiser")):
            warnings.warn(m, stacklevel=3)
    return FitResult(
        formula=design.formula.formula,
        method=method,
        fixed_names=tuple(fixed),
        random_names=tuple(rnames),
        covparm_names=tuple(names),
        covparm_sas=tuple(sas),
        beta=beta,
        vcov_matrix=vcov,
        T_matrix=Tm,
        sigma2=sigma2,
        theta=theta.copy(),
        deviance=dev,
        loglik=-0.5 * dev,
        aic=dev + 2.0 * npar,
        bic=dev + np.log(N) * npar,
        nobs=N,
        ngroups=design.ngroups,
        converged=bool(opt.converged[r]),
        singular=bool(singular_at),
        hessian=H,
        hessian_eigenvalues=eig,
        hessian_pd=hessian_pd,
        identifiable=not dependent,
        phi=phi,
        acov=acov,
        group_labels=design.group_labels,
        U=U,
        ranef_condvar=condvar,
        fitted=fitted,
        resid=design.y - fitted,
        n_dropped=design.n_dropped,
        messages=tuple(messages),
        iterations=int(opt.iterations[r]),
        gradient=opt.grad[r].copy(),
        design=design,
        stats=stats,
        cov_structure=cs,
    )


def diagnose(*, converged: bool, grad: np.ndarray, hess_theta: np.ndarray, hessian_pd: bool,
             eig: np.ndarray, singular_at: list[str], dependent: list[str],
             dropped_fixed: list[str], n_dropped: int) -> list[str]:
    """Plain-language notes on a fit, in the spirit of SAS's and lme4's."""
    out = []
    if not converged:
        out.append("The optimiser stopped early: the iteration limit was reached before the "
                   "convergence criterion held")
    # lme4's check: the gradient scaled by the Hessian in theta
    try:
        scaled = np.linalg.solve(hess_theta, grad)
    except np.linalg.LinAlgError:
        scaled = grad
    if np.abs(scaled).max(initial=0.0) > 2e-3:
        out.append(f"Model failed to converge with max|grad| = {np.abs(grad).max():.3g} "
                   f"(scaled {np.abs(scaled).max():.3g}, tolerance 0.002)")
    if dependent:
        out.append("Random-effect columns " + ", ".join(dependent) + " are linearly dependent "
                   "within every group: T is not identifiable from these data")
    if not hessian_pd:
        out.append("Convergence criteria met but final Hessian is not positive definite "
                   f"(smallest eigenvalue {eig[0]:.3g}, largest {eig[-1]:.3g})")
    if singular_at:
        out.append("boundary (singular) fit: estimated T is singular (G matrix not positive "
                   "definite); at the boundary: " + ", ".join(singular_at))
    if dropped_fixed:
        out.append("fixed-effect model matrix is rank deficient so dropping "
                   f"{len(dropped_fixed)} column(s): " + ", ".join(dropped_fixed))
    if n_dropped:
        out.append(f"{n_dropped} observation(s) not used (missing or non-finite values)")
    return out
