"""The model at given parameters: lme4's ``devfun`` / MixedModels.jl's ``objective!(m, theta)``.

:func:`evaluate` takes a fitted model (or a design) and either theta (sigma^2 profiled
out: the profiled criterion of docs/math.md (4.1)/(4.2)) or phi = (T's distinct elements,
sigma^2) (the criterion in phi, (6.1)), and returns everything the one GLS core gives there:
the criterion, the GLS fixed effects and their covariance, the EBLUPs, the gradient and
observed Hessian in phi, Acov = 2 H^{-1}, and Satterthwaite's df. T in phi may be any
symmetric matrix with every V_j = Z_j T Z_j' + sigma^2 I positive definite (a negative
variance, as SAS's NOBOUND allows); where some V_j is not, the result says so
(``valid`` False) and its numbers are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlmsim.engine import inference, phi_kernel
from mlmsim.engine.deviance import ThetaMap, method_name
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.stats import centred_group_stats, flat_arrays
from mlmsim.model.covparms import covparm_names
from mlmsim.model.formula import Design

if TYPE_CHECKING:  # evaluate takes a FitResult without importing it: result imports this
    from mlmsim.engine.result import FitResult

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    """A two-level model evaluated at given parameters.

    criterion : float
        At theta: the profiled deviance d(theta) (ML) or REML criterion d_R(theta)
        (docs/math.md (4.1), (4.2)); at phi: -2 log L (ML) or -2 log L_R (REML) with the
        fixed effects at their GLS estimate (6.1). NaN where ``valid`` is False.
    valid : bool
        Every V_j and X'V^{-1}X is positive definite.
    phi : pd.Series
        T's distinct elements and sigma^2 (at theta: sigma^2 profiled, (4.3)).
    theta : np.ndarray | None
        The theta given; at phi, lme4's theta of T / sigma^2 when T is positive
        semi-definite (a start for a refit), else None.
    fixef, vcov : GLS fixed effects (X'V^{-1}X)^{-1} X'V^{-1}y and (X'V^{-1}X)^{-1}.
    T : pd.DataFrame
        T from phi, labelled by the random-effect names.
    ranef : pd.DataFrame
        U_j = D_j (c_j - B_j gamma) = T Z_j'V_j^{-1}(y_j - X_j gamma) (8.2).
    gradient, hessian : the gradient (6.2) and observed Hessian (6.3) in phi.
    hessian_pd : bool
        The Hessian's correlation form is positive definite (9.1).
    acov : pd.DataFrame
        2 H^{-1} (6.5), NaN unless ``hessian_pd``.
    df : pd.Series
        Satterthwaite df of each fixed effect in phi (10.3) (equal to lmerTest's inside the
        parameter space); NaN where H is not positive definite.
    """

    method: str
    criterion: float
    valid: bool
    phi: pd.Series
    theta: np.ndarray | None
    fixef: pd.Series
    vcov: pd.DataFrame
    T: pd.DataFrame = field(repr=False)
    ranef: pd.DataFrame = field(repr=False)
    gradient: pd.Series = field(repr=False)
    hessian: pd.DataFrame = field(repr=False)
    hessian_pd: bool = False
    acov: pd.DataFrame = field(default=None, repr=False)
    df: pd.Series = field(default=None)

    @property
    def sigma2(self) -> float:
        return float(self.phi["sigma2"])

    @property
    def covparm_se(self) -> pd.Series:
        """SEs of phi from 2 H^{-1} (SAS's COVTEST), NaN where H is not positive definite."""
        return pd.Series(np.sqrt(np.diag(self.acov.to_numpy())), index=self.phi.index,
                         name="se")


def evaluate(model: FitResult | Design, *, theta: np.ndarray | None = None,
             phi: np.ndarray | None = None, method: str | None = None) -> Evaluation:
    """Evaluate ``model`` (a :class:`FitResult`, or a :class:`~mlmsim.model.formula.Design`)
    at ``theta`` (lme4's order; sigma^2 profiled) or at ``phi`` (T's distinct elements in
    ``covparms`` order, then sigma^2). ``method`` defaults to the fit's (REML for a design).
    The criterion is docs/math.md (4.1)/(4.2) at theta, (6.1) at phi.

    >>> import mlmsim
    >>> fit = mlmsim.fit("math ~ homework + (1 | school)", mlmsim.datasets.load("nels88"),
    ...                  method="ML")
    >>> ev = mlmsim.evaluate(fit, phi=fit.phi)
    >>> round(ev.criterion - fit.deviance, 6)
    0.0
    """
    if (theta is None) == (phi is None):
        raise ValueError("give exactly one of theta= and phi=")
    if isinstance(model, Design):
        design = model
        method = method_name(method or "REML")
    elif isinstance(getattr(model, "design", None), Design):  # a FitResult
        design = model.design
        method = method_name(method or model.method)
    else:
        raise ValueError(f"evaluate takes a FitResult or a Design, got {type(model).__name__}")
    reml = method == "REML"
    stats, centering = centred_group_stats(design.y, design.X, design.Z, design.group_codes,
                                           design.ngroups)
    q = design.Z.shape[1]
    tmap = ThetaMap.from_blocks(q, design.blocks)
    cs = inference.CovStructure.from_blocks(q, design.blocks)
    one = stats.select(None)
    st = Stats(*flat_arrays(one))
    if theta is not None:
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (tmap.size,):
            raise ValueError(f"theta must have {tmap.size} elements, got shape {theta.shape}")
        f, g, H, C, dC, beta_c, U, phi_v = phi_kernel.phi_at_theta_many(
            theta[None], tmap.rows, tmap.cols, st, cs.rows, cs.cols, reml, True, 0,
            qtoken(q))[:8]
    else:
        phi_v = np.asarray(phi, dtype=float)
        if phi_v.shape != (cs.size,):
            raise ValueError(f"phi must have {cs.size} elements (T's distinct elements, then "
                             f"sigma^2), got shape {phi_v.shape}")
        if not np.all(np.isfinite(phi_v)) or not phi_v[-1] > 0:
            raise ValueError("phi must be finite, with sigma^2 > 0")
        f, g, H, C, dC, beta_c, U, phi_v = phi_kernel.phi_many(
            st, cs.rows, cs.cols, phi_v[None], reml, True, 0, qtoken(q))[:8]
    f, g, H, C, dC, phi_v = f[0], g[0], H[0], C[0], dC[0], phi_v[0]
    valid = bool(np.isfinite(f))
    criterion = float(f) if valid else np.nan
    s2 = phi_v[-1]
    Psi = cs.T(phi_v) / s2
    acov = inference.psi_acov(H)
    hpd = bool(np.isfinite(acov).all())
    Lm = centering.L
    vcov = Lm @ C @ Lm.T
    df = inference.satterthwaite_df(vcov, Lm @ dC @ Lm.T, acov)
    beta = centering.beta(beta_c[0])
    names, _ = covparm_names(list(design.random_names), cs.rows, cs.cols)
    fixed = list(design.fixed_names)
    return Evaluation(
        method=method,
        criterion=criterion,
        valid=valid,
        phi=pd.Series(phi_v, index=names, name="estimate"),
        theta=tmap.theta_of(Psi) if theta is None else theta.copy(),
        fixef=pd.Series(beta, index=fixed, name="estimate"),
        vcov=pd.DataFrame(vcov, index=fixed, columns=fixed),
        T=pd.DataFrame(Psi * s2, index=list(design.random_names),
                       columns=list(design.random_names)),
        ranef=pd.DataFrame(U[0], index=pd.Index(design.group_labels,
                                                name=design.formula.group),
                           columns=list(design.random_names)),
        gradient=pd.Series(g, index=names, name="gradient"),
        hessian=pd.DataFrame(H, index=names, columns=names),
        hessian_pd=hpd,
        acov=pd.DataFrame(acov, index=names, columns=names),
        df=pd.Series(df, index=fixed, name="df"),
    )
