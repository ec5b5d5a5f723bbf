"""Read estimates, inference and flags off an optimum, for R replicates at once.

At theta-hat (R, k), from one profile evaluation:

    sigma2 = r2 / N (ML) or r2 / (N - p) (REML)
    gamma  = XtVX^{-1} XtVy,   vcov = sigma2 XtVX^{-1}
    T      = sigma2 Lambda Lambda'
    phi    = (T's distinct elements, sigma2);  H = Hessian of the objective in phi
    Acov   = 2 H^{-1} where H is positive definite (else NaN)

and the flags: ``singular`` (T-hat rank-deficient: an eigenvalue of
T / sigma^2 below 1e-8, or a diagonal element of Lambda below SINGULAR_TOL =
1e-4, lme4's isSingular rule), ``hessian_pd`` (smallest eigenvalue of H above
HESSIAN_PD_RTOL times the largest absolute one), ``identifiable`` (the
random-effect columns are not dependent within every group), and lme4's
convergence check (the gradient scaled by the Hessian in theta below 0.002).
Used by the single fit (R = 1) and the batch path alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlmsim.engine import inference, kernels
from mlmsim.engine.deviance import ThetaMap
from mlmsim.engine.optimize import OptResult, near_singular
from mlmsim.engine.stats import GroupStats, flat_arrays

__all__ = ["Estimates", "estimates", "messages", "dependent_columns", "SINGULAR_TOL",
           "HESSIAN_PD_RTOL", "GRAD_TOL"]

SINGULAR_TOL = 1e-4
"""A diagonal element of Lambda below this is on the boundary (lme4's isSingular tol)."""

HESSIAN_PD_RTOL = 1e-6
"""H is positive definite when its smallest eigenvalue exceeds this times the largest."""

GRAD_TOL = 2e-3
"""lme4's check.conv.grad tolerance on the Hessian-scaled gradient in theta."""


@dataclass(frozen=True)
class Estimates:
    """Batched estimates (leading dimension R); see the module docstring."""

    theta: np.ndarray
    beta: np.ndarray
    vcov: np.ndarray
    sigma2: np.ndarray
    T: np.ndarray
    phi: np.ndarray
    hessian: np.ndarray
    hessian_eigenvalues: np.ndarray
    hessian_pd: np.ndarray
    acov: np.ndarray
    deviance: np.ndarray
    converged: np.ndarray
    grad_ok: np.ndarray
    scaled_grad: np.ndarray
    singular: np.ndarray
    dependent: np.ndarray

    @property
    def beta_se(self) -> np.ndarray:
        return np.sqrt(np.diagonal(self.vcov, axis1=-2, axis2=-1))

    @property
    def phi_se(self) -> np.ndarray:
        return np.sqrt(np.diagonal(self.acov, axis1=-2, axis2=-1))

    @property
    def identifiable(self) -> np.ndarray:
        return ~self.dependent.any(axis=-1)


def dependent_columns(stats: GroupStats) -> np.ndarray:
    """(R, q) bool: random-effect columns involved in a dependence holding in every group.

    A group's Z_j has dependent columns when A_j = Z_j'Z_j is singular; if that
    holds in every group with at least q rows (intercept + female + male; a
    random slope on a variable constant within groups), T is not identifiable.
    """
    A = stats.A
    n = stats.n
    R, J, q, _ = A.shape
    out = np.zeros((R, q), dtype=bool)
    if q < 2:
        return out
    d = np.sqrt(np.maximum(np.einsum("rjii->rji", A), 1e-300))
    C = A / (d[..., :, None] * d[..., None, :])
    big = n >= q
    none_big = ~big.any(axis=-1)
    big[none_big] = (n > 0)[none_big]
    # screen with the determinant of the correlation-scaled A_j (in [0, 1]); only
    # replicates where every group looks singular need the eigen-decomposition
    det = np.linalg.det(C)
    cand = np.where(big, det < 1e-6, True).all(axis=-1) & big.any(axis=-1)
    for r in np.flatnonzero(cand):
        w, V = np.linalg.eigh(C[r][big[r]])
        if np.all(w[:, 0] < 1e-9 * np.maximum(w[:, -1], 1e-300)):
            out[r] = (np.abs(V[:, :, 0]) > 1e-6).any(axis=0)
    return out


def readout(stats: GroupStats, theta: np.ndarray, tmap: ThetaMap, ranef: bool):
    """beta (R, p), XtVX^{-1} (R, p, p), r2 (R,) at theta (R, k) and, with ``ranef``, the
    EBLUPs over sigma (R, J, q) and Lambda M_j^{-1} Lambda' (R, J, q, q)
    (:func:`mlmsim.engine.kernels.readout_many`)."""
    A, B, c, XtX, Xty, yty, _, _ = flat_arrays(stats)
    return kernels.readout_many(np.ascontiguousarray(theta, dtype=float), A, B, c, XtX, Xty,
                                yty, tmap.rows, tmap.cols, ranef)


def estimates(stats: GroupStats, tmap: ThetaMap, cs: inference.CovStructure, opt: OptResult,
              reml: bool) -> Estimates:
    """Everything a fit reports about its parameters, for each replicate (batch axis R)."""
    theta = opt.theta
    st = stats
    beta, C, r2, _, _ = readout(stats, theta, tmap, False)
    N = st.N.astype(float)
    p = st.p
    sigma2 = r2 / (N - p if reml else N)
    L = tmap.Lambda(theta)
    T = sigma2[:, None, None] * (L @ np.swapaxes(L, -1, -2))
    vcov = sigma2[:, None, None] * 0.5 * (C + np.swapaxes(C, -1, -2))
    phi = cs.phi(T, sigma2)
    H = inference.phi_hessian(stats, cs, phi, reml)
    eig = np.linalg.eigvalsh(H)
    pd = eig[:, 0] > HESSIAN_PD_RTOL * np.abs(eig).max(axis=-1)
    acov = np.full(H.shape, np.nan)
    if pd.any():
        inv = 2.0 * np.linalg.inv(H[pd])
        acov[pd] = 0.5 * (inv + np.swapaxes(inv, -1, -2))
    try:
        scaled = np.linalg.solve(opt.hessian, opt.grad[..., None])[..., 0]
    except np.linalg.LinAlgError:
        scaled = opt.grad.copy()
    scaled = np.where(np.isfinite(scaled), scaled, opt.grad)
    grad_ok = np.abs(scaled).max(axis=-1, initial=0.0) <= GRAD_TOL
    singular = near_singular(theta, tmap)
    return Estimates(
        theta=theta, beta=beta, vcov=vcov, sigma2=sigma2, T=T, phi=phi, hessian=H,
        hessian_eigenvalues=eig, hessian_pd=pd, acov=acov, deviance=opt.deviance,
        converged=opt.converged, grad_ok=grad_ok, scaled_grad=scaled, singular=singular,
        dependent=dependent_columns(stats),
    )


def messages(est: Estimates, r: int, tmap: ThetaMap, random_names, dropped_fixed=(),
             n_dropped: int = 0) -> list[str]:
    """Plain-language notes on replicate r's fit, in the spirit of SAS's and lme4's."""
    out = []
    if not est.converged[r]:
        out.append("The optimiser stopped early: the iteration limit was reached before the "
                   "convergence criterion held")
    if not est.grad_ok[r]:
        out.append(f"Model failed to converge with max|grad| = "
                   f"{np.abs(est.scaled_grad[r]).max():.3g} (gradient scaled by the Hessian in "
                   f"theta; tolerance {GRAD_TOL})")
    dep = [random_names[i] for i in np.flatnonzero(est.dependent[r])]
    if dep:
        out.append("Random-effect columns " + ", ".join(dep) + " are linearly dependent "
                   "within every group: T is not identifiable from these data")
    if not est.hessian_pd[r]:
        eig = est.hessian_eigenvalues[r]
        lead = ("Convergence criteria met but final" if est.converged[r] else "The final")
        out.append(f"{lead} Hessian is not positive definite "
                   f"(smallest eigenvalue {eig[0]:.3g}, largest {eig[-1]:.3g})")
    theta = est.theta[r]
    at = [random_names[tmap.rows[k]] for k in np.flatnonzero(tmap.diagonal)
          if theta[k] < SINGULAR_TOL]
    if est.singular[r] and not at:
        at = ["a combination of " + ", ".join(random_names)]
    if at:
        out.append("boundary (singular) fit: estimated T is singular (G matrix not positive "
                   "definite); a zero variance or a correlation of +-1 at: " + ", ".join(at))
    if dropped_fixed:
        out.append("fixed-effect model matrix is rank deficient so dropping "
                   f"{len(dropped_fixed)} column(s): " + ", ".join(dropped_fixed))
    if n_dropped:
        out.append(f"{n_dropped} observation(s) not used (missing or non-finite values)")
    return out
