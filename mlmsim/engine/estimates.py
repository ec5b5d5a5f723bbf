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
Used by the single fit (R = 1) and the batch path alike; computed in one compiled pass
over the replicates (:func:`mlmsim.engine.kernels.estimates_many`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlmsim.engine import inference, kernels
from mlmsim.engine.deviance import ThetaMap
from mlmsim.engine.optimize import SINGULAR_EIG, OptResult
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array

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
    # screen with the determinant of the correlation-scaled A_j (in [0, 1]); only
    # replicates where every group looks singular need the eigen-decomposition
    cand = kernels.dependence_screen(kernel_array(A, (R,), (J, q, q)),
                                     kernel_array(n, (R,), (J,), np.int64))
    if not cand.any():
        return out
    d = np.sqrt(np.maximum(np.einsum("rjii->rji", A), 1e-300))
    C = A / (d[..., :, None] * d[..., None, :])
    big = n >= q
    none_big = ~big.any(axis=-1)
    big[none_big] = (n > 0)[none_big]
    for r in np.flatnonzero(cand):
        w, V = np.linalg.eigh(C[r][big[r]])
        if np.all(w[:, 0] < 1e-9 * np.maximum(w[:, -1], 1e-300)):
            out[r] = (np.abs(V[:, :, 0]) > 1e-6).any(axis=0)
    return out


def estimates(stats: GroupStats, tmap: ThetaMap, cs: inference.CovStructure, opt: OptResult,
              reml: bool) -> Estimates:
    """Everything a fit reports about its parameters, for each replicate (batch axis R)."""
    return estimates_and_ranef(stats, tmap, cs, opt, reml, False)[0]


def estimates_and_ranef(stats: GroupStats, tmap: ThetaMap, cs: inference.CovStructure,
                        opt: OptResult, reml: bool, ranef: bool
                        ) -> tuple[Estimates, np.ndarray, np.ndarray]:
    """:func:`estimates`, and with ``ranef`` the EBLUPs over sigma (R, J, q) and
    Lambda M_j^{-1} Lambda' (R, J, q, q), whose sigma^2 multiple is their conditional
    covariance; computed in one compiled pass (:func:`mlmsim.engine.kernels.estimates_many`)."""
    A, B, c, XtX, Xty, yty, N, _ = flat_arrays(stats)
    R, k = A.shape[0], tmap.size
    theta = kernel_array(opt.theta, (R,), (k,))
    (beta, vcov, sigma2, T, phi, H, eig, pd, acov, scaled, singular, U, V
     ) = kernels.estimates_many(
        theta, A, B, c, XtX, Xty, yty, N, tmap.rows, tmap.cols, cs.rows, cs.cols, bool(reml),
        kernel_array(opt.grad, (R,), (k,)), kernel_array(opt.hessian, (R,), (k, k)),
        HESSIAN_PD_RTOL, SINGULAR_EIG, ranef)
    grad_ok = np.abs(scaled).max(axis=-1, initial=0.0) <= GRAD_TOL
    est = Estimates(
        theta=theta, beta=beta, vcov=vcov, sigma2=sigma2, T=T, phi=phi, hessian=H,
        hessian_eigenvalues=eig, hessian_pd=pd, acov=acov, deviance=opt.deviance,
        converged=opt.converged, grad_ok=grad_ok, scaled_grad=scaled, singular=singular,
        dependent=dependent_columns(stats),
    )
    return est, U, V


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
