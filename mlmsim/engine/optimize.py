"""Minimise the profiled deviance over theta, for one data set or R at once.

The optimiser is a quasi-Newton method, compiled and run replicate by
replicate (:mod:`mlmsim.engine.kernels`). It starts from a method-of-moments
estimate with a forward-difference Hessian H of the analytic gradient, and
steps p = -|H|^{-1} g, with |H| the Hessian whose eigenvalues are replaced by
their absolute values (floored), so that a saddle is left rather than
approached; a backtracking line search (Armijo) keeps every accepted step a
descent step, and BFGS updates the working Hessian after each step. Where the
BFGS matrix cannot be trusted (a failed line search, or an apparent optimum
with a diagonal element of Lambda near 0, where saddles arise) the Hessian is
recomputed by differences and the decision taken on it.

The bound on Lambda's diagonal. The deviance is unchanged when a column of
Lambda changes sign (T = sigma^2 Lambda Lambda'), so the bound theta_ii >= 0
of lme4 is a symmetry, not a constraint: the optimiser works over all of
R^k and the result is reflected to the canonical form (diagonal >= 0). A
boundary fit (a variance estimated as 0) is then an interior minimum at
theta_ii = 0, which Newton's method reaches without the stalls of a bounded
optimiser at the edge (the reason lme4 needs ``restart_edge``). A theta with
a whole column exactly 0 is a stationary point by symmetry; the start
(Lambda = I, as lme4) and the saddle-avoiding step keep the iterates away
from it unless it is the minimum.

Convergence: the Newton decrement g'|H|^{-1}g falls below ``tol`` = 1e-12
(deviance units: each parameter within about 1e-6 of its standard error of
the optimum), or the gradient's largest element is below ``gtol``, or no
descent step exists on the exact Hessian with a decrement below 1e-6 (the
numerical floor of the deviance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlmsim.engine import kernels
from mlmsim.engine.deviance import Packed, ThetaMap
from mlmsim.engine.stats import GroupStats, flat_arrays

__all__ = ["OptResult", "minimize_theta", "moment_start", "canonical_theta", "take",
           "near_singular", "SINGULAR_EIG"]

SINGULAR_EIG = 1e-8
"""T-hat / sigma^2 with an eigenvalue below this is rank-deficient (singular)."""


@dataclass(frozen=True)
class OptResult:
    """Per replicate (leading dimension R): theta (R, k), deviance (R,), grad (R, k),
    hessian (R, k, k) of the deviance in theta, iterations (R,), converged (R,)."""

    theta: np.ndarray
    deviance: np.ndarray
    grad: np.ndarray
    hessian: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


def take(pk: Packed, idx: np.ndarray | None, expand: int = 0) -> Packed:
    """Select replicates ``idx`` of batched statistics (None adds a batch axis of 1),
    then insert ``expand`` unit axes after the batch axis (for trial points)."""

    if idx is not None and expand == 0 and idx.size == pk.Av.shape[0]:
        if np.array_equal(idx, np.arange(idx.size)):
            return pk

    def sel(a: np.ndarray) -> np.ndarray:
        out = a[None] if idx is None else a[idx]
        return out.reshape(out.shape[:1] + (1,) * expand + out.shape[1:])

    st = pk.stats
    stats = GroupStats(*(sel(getattr(st, f)) for f in GroupStats.__dataclass_fields__))
    return Packed(stats, sel(pk.Av), sel(pk.Aq), sel(pk.BC))


def canonical_theta(theta: np.ndarray, tmap: ThetaMap) -> tuple[np.ndarray, np.ndarray]:
    """Reflect columns of Lambda with a negative diagonal: theta with diagonal >= 0.

    Flipping the sign of a column of Lambda leaves Lambda Lambda' unchanged.
    Returns the reflected theta (R, k) and the signs applied (R, k), so that a
    gradient g and Hessian H transform as D g and D H D with D = diag(signs).
    """
    theta = np.array(theta, dtype=float, copy=True)
    signs = np.ones_like(theta)
    for k in np.flatnonzero(tmap.diagonal):
        in_col = tmap.cols == tmap.cols[k]
        flip = theta[..., k] < 0
        signs[..., in_col] = np.where(flip[..., None], -1.0, 1.0)
        theta[..., in_col] *= signs[..., in_col]
    return theta, signs


def moment_start(stats: GroupStats, tmap: ThetaMap) -> np.ndarray:
    """A method-of-moments start for theta (R, k), from the per-group statistics
    (:func:`mlmsim.engine.kernels.moment_start_one`)."""
    A, B, c, XtX, Xty, yty, N, n = flat_arrays(stats)
    out = np.empty((A.shape[0], tmap.size))
    for r in range(A.shape[0]):
        kernels.moment_start_one(A[r], B[r], c[r], XtX[r], Xty[r], yty[r], N[r], n[r],
                                 tmap.rows, tmap.cols, out[r])
    return out


def minimize_theta(
    stats: GroupStats,
    tmap: ThetaMap,
    reml: bool,
    theta0: np.ndarray | None = None,
    *,
    max_iter: int = 300,
    tol: float = 1e-12,
    gtol: float = 1e-8,
    max_step: float = 2.0,
    edge: float = 1e-2,
) -> OptResult:
    """Minimise d(theta) (ML) or d_R(theta) (REML) for each of R replicates.

    ``stats`` carry batch shape (R,) (use R = 1 for one data set); ``theta0`` is
    (R, k), or None for the moment start (:func:`moment_start`). A profiled
    likelihood can have more than one local minimum, typically one on the
    boundary (|corr| = 1 or a zero variance) and one inside. So, with the
    moment start, a replicate that ends singular (T-hat of rank < q) or not
    converged is fitted again from lme4's start, Lambda = I, and the lower
    deviance is kept. Each replicate is fitted by the compiled optimiser of
    :func:`mlmsim.engine.kernels.minimize_one` (module docstring above);
    ``tol`` bounds the Newton decrement, ``gtol`` the largest gradient element,
    ``max_step`` the largest change of a theta element in one step, and ``edge``
    how close to 0 a diagonal element of Lambda must be for convergence to be
    judged on the exact Hessian. Returns theta in canonical form (Lambda's
    diagonal >= 0) with the deviance, gradient and Hessian in theta there.
    """
    args = flat_arrays(stats)
    R, k = args[0].shape[0], tmap.size
    use_start = theta0 is not None
    start = (np.ascontiguousarray(np.broadcast_to(np.asarray(theta0, dtype=float), (R, k)))
             if use_start else np.zeros((R, k)))
    theta, dev, g, H, iters, conv = kernels.minimize_many(
        *args, tmap.rows, tmap.cols, bool(reml), start, use_start, int(max_iter), float(tol),
        float(gtol), float(max_step), float(edge), SINGULAR_EIG)
    return OptResult(theta, dev, g, H, iters, conv)


def near_singular(theta: np.ndarray, tmap: ThetaMap, tol: float = SINGULAR_EIG) -> np.ndarray:
    """(R,) bool: Lambda Lambda' = T / sigma^2 has an eigenvalue below ``tol``, or a
    diagonal element of Lambda is below sqrt(tol) = 1e-4 (lme4's isSingular rule)."""
    L = tmap.Lambda(theta)
    w = np.linalg.eigvalsh(L @ np.swapaxes(L, -1, -2))
    small_diag = (np.abs(theta[..., tmap.diagonal]) < np.sqrt(tol)).any(axis=-1)
    return small_diag | (w[..., 0] < tol)
