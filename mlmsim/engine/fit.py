"""The fit pipeline: formula -> design -> statistics -> optimiser -> FitResult.

Each stage is a public function usable alone (as lme4's ``lFormula`` ->
``mkLmerDevfun`` -> ``optimizeLmer`` -> ``mkMerMod``):
:func:`mlmsim.model.formula.model_design`, :func:`mlmsim.engine.stats.group_stats`,
:func:`mlmsim.engine.optimize.minimize_theta`, and :func:`result_from_theta`,
which reads everything off the optimum. :func:`fit` runs them in order.
Diagnostics live in :func:`mlmsim.engine.estimates.messages` and speak in plain words.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from mlmsim.engine import inference
from mlmsim.engine.control import FitControl
from mlmsim.engine.deviance import ThetaMap, method_name
from mlmsim.engine.estimates import estimates_and_ranef, notes
from mlmsim.engine.optimize import OptResult, minimize_theta
from mlmsim.engine.result import FitArrays, FitResult
from mlmsim.engine.stats import Centering, GroupStats, centred_group_stats, residual_check
from mlmsim.engine.unbounded import unbounded_estimates
from mlmsim.engine.units import UnitScale, unit_scale
from mlmsim.model.covparms import covparm_names
from mlmsim.model.formula import Design, model_design

__all__ = ["fit", "fit_design", "result_from_theta", "Centering"]


def fit(formula: str, data: pd.DataFrame, method: str = "REML", *,
        control: FitControl | dict | None = None, bounded: bool = True) -> FitResult:
    """Fit a two-level linear mixed model by ML or REML from an lme4 formula.

    ``method``: "ML" or "REML" (any case). ``control``: optimiser settings
    (:class:`~mlmsim.engine.control.FitControl`, or a dict of its fields), as lme4's
    ``control = lmerControl(...)``; the result's ``optsum`` says how the optimisation went.
    ``bounded=False`` is SAS's ``NOBOUND`` (and MLwiN's (R)IGLS): T may be any symmetric
    matrix with every V_j positive definite, so a variance may be estimated below zero
    (:mod:`mlmsim.engine.unbounded`; Satterthwaite df then in phi, ``theta`` NaN where
    T-hat is not positive semi-definite).

    >>> from mlmsim import datasets
    >>> res = fit("mathach ~ cses + (1 + cses | school)", datasets.load("hsb"), method="ML")
    >>> round(res.deviance, 3)
    46710.98
    """
    method = method_name(method)
    control = FitControl.coerce(control)
    design = model_design(formula, data)
    return fit_design(design, method, control=control, bounded=bounded)


def fit_design(design: Design, method: str = "REML", theta0: np.ndarray | None = None, *,
               control: FitControl | dict | None = None, bounded: bool = True) -> FitResult:
    """Fit from a :class:`~mlmsim.model.formula.Design` (formula already turned into matrices).

    The statistics are computed from the centred y and X (:class:`Centering`), in units
    near 1 where a column's are far from them (:mod:`mlmsim.engine.units`), and the
    estimates mapped back.
    """
    method = method_name(method)
    reml = method == "REML"
    scale = unit_scale(design)
    d = design if scale.identity else scale.design(design)
    stats, centering = centred_group_stats(d.y, d.X, d.Z, d.group_codes, d.ngroups)
    problem = residual_check(stats)
    if problem.item() is not None:
        raise ValueError(problem.item())
    tmap = ThetaMap.from_blocks(design.Z.shape[1], design.blocks)
    start = None if theta0 is None else np.atleast_2d(
        scale.theta_fit(np.asarray(theta0, dtype=float), tmap.rows))
    opt = minimize_theta(stats.select(None), tmap, reml, start, control)
    return result_from_theta(design, stats, tmap, opt, method, centering, bounded=bounded,
                             scale=scale)


def result_from_theta(design: Design, stats: GroupStats, tmap: ThetaMap, opt: OptResult,
                      method: str, centering: Centering | None = None, *,
                      bounded: bool = True, scale: UnitScale | None = None) -> FitResult:
    """Read the estimates, inference and diagnostics off a single fit's optimum (R = 1).

    ``stats`` are those the optimum was found from (of the centred data when
    ``centering`` is given; the fixed effects are then mapped back). With ``bounded``
    False the optimum is the start of the unbounded fit
    (:func:`mlmsim.engine.unbounded.unbounded_estimates`). ``scale``: the
    :class:`~mlmsim.engine.units.UnitScale` the statistics' data were multiplied by (the
    estimates are mapped back to ``design``'s units).
    """
    p = stats.p
    centering = centering or Centering.identity(p)
    fit_centering = centering  # the lazy inference works in the fit's units (df invariant)
    if scale is not None and not scale.identity:
        centering = scale.centering(centering)
    else:
        scale = None
    reml = method == "REML"
    one = stats.select(None)
    cs = inference.CovStructure.from_blocks(stats.q, design.blocks)
    # with the EBLUPs U_j = Lambda M_j^{-1} Lambda' u_j and their conditional covariance
    # sigma^2 Lambda M_j^{-1} Lambda'
    est, Us, LMLt = estimates_and_ranef(one, tmap, cs, opt, reml, True)
    if not bounded:
        est, Us, LMLt = unbounded_estimates(one, cs, tmap, est, reml, opt.control)
    rnames = list(design.random_names)
    theta, U, sigma2, T = est.theta[0], Us[0], float(est.sigma2[0]), est.T[0]
    condvar = sigma2 * LMLt[0]
    phi, H, acov, dev = est.phi[0], est.hessian[0], est.acov[0], float(est.deviance[0])
    acov_fit = None
    if scale is not None:  # back to the data's units (mlmsim.engine.units)
        with np.errstate(all="ignore"):  # estimates beyond floats: refused below
            kz, ky = scale.z, scale.y
            zz = np.outer(kz, kz) / ky ** 2
            c = scale.covparms(cs.rows, cs.cols)
            theta, U, T = scale.theta(theta, tmap.rows), U * kz / ky, T * zz
            sigma2, condvar = sigma2 / ky ** 2, condvar * zz
            acov_fit = acov
            phi, H, acov = phi * c, H / np.outer(c, c), acov_fit * np.outer(c, c)
            dev = scale.deviance(dev, float(stats.N), reml)
    beta = centering.beta(est.beta[0])
    se = None
    if scale is None:
        vcov = centering.cov(est.vcov[0])
    else:
        scale.check_finite(design, {"sigma2": sigma2, "T": T}, beta)
        # the SEs from the fit's units, so that an SE whose square has no float is given
        vcov_fit = fit_centering.cov(est.vcov[0])
        D = scale.gamma
        se = np.sqrt(np.diag(vcov_fit)) * D
        with np.errstate(all="ignore"):
            vcov = vcov_fit * np.outer(D, D)
    npar = stats.p + tmap.size + 1
    names, sas = covparm_names(rnames, cs.rows, cs.cols)
    fit_notes = notes(est, 0, rnames, design.dropped_fixed, design.n_dropped, bounded)
    for note in fit_notes:
        if note.warn:
            warnings.warn(note.text, stacklevel=3)
    N = int(stats.N)
    return FitResult(
        formula=design.formula.formula,
        method=method,
        fixed_names=tuple(design.fixed_names),
        random_names=tuple(rnames),
        covparm_names=tuple(names),
        covparm_sas=tuple(sas),
        sigma2=sigma2,
        theta=theta.copy(),
        deviance=dev,
        loglik=-0.5 * dev,
        aic=dev + 2.0 * npar,
        bic=float(dev + np.log(N) * npar),
        nobs=N,
        ngroups=design.ngroups,
        converged=bool(est.converged[0]),
        singular=bool(est.singular[0]),
        hessian_eigenvalues=est.hessian_eigenvalues[0],
        hessian_pd=bool(est.hessian_pd[0]),
        identifiable=bool(est.identifiable[0]),
        phi=phi,
        arrays=FitArrays(beta=beta, vcov=vcov, se=se, T=T,
                         hessian=H, acov=acov, acov_fit=acov_fit, U=U, condvar=condvar),
        group_labels=design.group_labels,
        n_dropped=design.n_dropped,
        messages=tuple(n.text for n in fit_notes),
        optsum=opt.summary(0),
        bounded=bool(bounded),
        design=design,
        stats=stats,
        cov_structure=cs,
        theta_map=tmap,
        fixed_map=fit_centering.L,
        units=scale,
    )
