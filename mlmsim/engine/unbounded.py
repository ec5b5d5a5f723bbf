"""Unbounded variance estimates (SAS PROC MIXED ``NOBOUND``; the fixed point of MLwiN's
(R)IGLS): the ML or REML criterion minimised over phi = (T's distinct elements, sigma^2)
with T any symmetric matrix such that every V_j = Z_j T Z_j' + sigma^2 I is positive
definite, so that a variance may be estimated below zero. docs/math.md (6.7).

The objective, gradient and observed Hessian in phi are those of docs/math.md (6.1)-(6.3)
(:func:`mlmsim.engine.phi_kernel.phi_many`, the one GLS core, defined for any symmetric T
with every V_j positive definite). The bounded fit is the start: where it is interior it
is already the unbounded optimum (the gradient in phi is 0 there), so the two agree; on the
boundary the iterations leave it. Newton steps p = -|H|^{-1} g, with |H| the Hessian whose
eigenvalues (in its correlation form, so that nothing depends on the units of the data)
are replaced by their absolute values, floored at CURVATURE_FLOOR of the largest; a
backtracking line search (Armijo) keeps each step inside the region where every V_j is
positive definite (a trial point outside has a NaN criterion and is halved). Converged
when the Newton decrement g'|H|^{-1}g falls below ``tol`` (FitControl), or at the
rounding floor of the criterion; a last full Newton step then takes phi from about 1e-6
of a standard error of the optimum to rounding (the one-way ANOVA estimate is reproduced
to about 1e-12).

Where the likelihood has no maximum with every V_j positive definite (the criterion keeps
falling towards a point where some V_j is singular, e.g. a one-way design whose group
means agree exactly), the iterations stop at the iteration limit or when no step lowers
the criterion; the last point is reported, flagged not converged, never an error. The criterion can
also have an interior local minimum and still no lower bound near the edge of the region
(it falls without limit as some V_j becomes singular): the iterations from the bounded
estimate stop at the interior minimum, as SAS's NOBOUND does; that is the estimate
reported.
All replicates of a batch are iterated together (one compiled pass per iteration).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mlmsim.engine import kernels, phi_kernel, tolerances
from mlmsim.engine.control import FitControl, StopReason
from mlmsim.engine.deviance import ThetaMap
from mlmsim.engine.estimates import Estimates
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.inference import CovStructure
from mlmsim.engine.stats import GroupStats, flat_arrays

__all__ = ["minimize_phi", "unbounded_estimates", "not_positive_definite"]


def _pass(st: Stats, cs: CovStructure, phi: np.ndarray, reml: bool) -> tuple[np.ndarray, ...]:
    """f, g, H, C, beta, U at phi (R, m) (nan where some V_j is not positive definite)."""
    f, g, H, C, _, beta, U, _ = phi_kernel.phi_many(st, cs.rows, cs.cols, phi, bool(reml),
                                                    False, 0, qtoken(cs.q))[:8]
    return f, g, H, C, beta, U


def _abs_newton(g: np.ndarray, H: np.ndarray) -> np.ndarray:
    """p = -|H|^{-1} g per replicate, |H| from the eigenvalues of H's correlation form
    (absolute values floored at CURVATURE_FLOOR of the largest); nan where H is not
    finite."""
    R, m = g.shape
    p = np.full((R, m), np.nan)
    for r in range(R):
        h = H[r]
        if not np.all(np.isfinite(h)) or not np.all(np.isfinite(g[r])):
            continue
        s = 1.0 / np.sqrt(np.maximum(np.abs(np.diag(h)), 1e-300))
        w, V = np.linalg.eigh(h * s[:, None] * s[None, :])
        a = np.abs(w)
        a = np.maximum(a, tolerances.CURVATURE_FLOOR * a.max(initial=0.0) + 1e-300)
        p[r] = -s * (V @ ((V.T @ (s * g[r])) / a))
    return p


def minimize_phi(stats: GroupStats, cs: CovStructure, phi0: np.ndarray, reml: bool,
                 control: FitControl | dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise f(phi) (ML) or f_R(phi) (REML), (6.1), without bounds, from phi0 (R, m) for
    statistics with batch shape (R,). Returns phi (R, m), the stop code (R,) of
    :class:`~mlmsim.engine.control.StopReason` and the iterations (R,)."""
    control = FitControl.coerce(control)
    phi = np.array(phi0, dtype=float, copy=True)
    R = phi.shape[0]
    st = Stats(*flat_arrays(stats, (R,)))
    f, g, H = _pass(st, cs, phi, reml)[:3]
    stop = np.full(R, -1, dtype=np.int64)
    stop[~np.isfinite(f)] = StopReason.NOT_FINITE
    iters = np.zeros(R, dtype=np.int64)
    for _ in range(int(control.max_iter)):
        active = np.flatnonzero(stop < 0)
        if active.size == 0:
            break
        p = _abs_newton(g[active], H[active])
        dec = -np.einsum("rk,rk->r", g[active], p)
        done = ~(dec >= control.tol)        # decrement small (or nan: nothing to do)
        stop[active[done]] = StopReason.DECREMENT
        active, p, dec = active[~done], p[~done], dec[~done]
        if active.size == 0:
            break
        iters[active] += 1
        t = np.ones(active.size)
        pending = np.ones(active.size, dtype=bool)
        floor = tolerances.ROUNDING_FLOOR * np.abs(f[active])
        for _ in range(tolerances.MAX_HALVINGS):
            idx = np.flatnonzero(pending)
            if idx.size == 0:
                break
            trial = phi[active[idx]] + t[idx, None] * p[idx]
            sub = stats.select(active[idx])
            ft, gt, Ht = _pass(Stats(*flat_arrays(sub, (idx.size,))), cs, trial, reml)[:3]
            ok = np.isfinite(ft) & (ft <= f[active[idx]]
                                    - tolerances.ARMIJO * t[idx] * dec[idx])
            acc = active[idx[ok]]
            phi[acc], f[acc], g[acc], H[acc] = trial[ok], ft[ok], gt[ok], Ht[ok]
            pending[idx[ok]] = False
            t[idx[~ok]] *= 0.5
        failed = active[pending]
        # no step lowered the criterion: at its rounding floor (converged) or stuck
        at_floor = dec[pending] <= floor[pending]
        stop[failed[at_floor]] = StopReason.ROUNDING_FLOOR
        stop[failed[~at_floor]] = StopReason.LINE_SEARCH
    stop[stop < 0] = StopReason.MAX_ITER
    # one last Newton step where converged: the decrement test leaves phi about 1e-6 of a
    # standard error from the optimum; a full step inside the quadratic region removes that
    # (kept where the criterion does not rise beyond its rounding floor)
    fin = np.flatnonzero(stop == StopReason.DECREMENT)
    if fin.size:
        p = _abs_newton(g[fin], H[fin])
        trial = phi[fin] + p
        sub = stats.select(fin)
        ft = _pass(Stats(*flat_arrays(sub, (fin.size,))), cs, trial, reml)[0]
        ok = np.isfinite(ft) & (ft <= f[fin] + tolerances.ROUNDING_FLOOR * np.abs(f[fin]))
        phi[fin[ok]] = trial[ok]
    return phi, stop, iters


def _group_D(M: np.ndarray, Psi: np.ndarray) -> np.ndarray:
    """D_j = M_j^{-1} Psi for M_j = I + Psi A_j (..., q, q); NaN for a group whose M_j is
    singular (an unbounded fit that ran to a singular V_j)."""
    try:
        return np.linalg.solve(M, Psi)
    except np.linalg.LinAlgError:
        out = np.full(M.shape, np.nan)
        for idx in np.ndindex(*M.shape[:-2]):
            try:
                out[idx] = np.linalg.solve(M[idx], Psi[idx])
            except np.linalg.LinAlgError:
                pass
        return out


def not_positive_definite(T: np.ndarray, sigma2: np.ndarray, zscale: np.ndarray) -> np.ndarray:
    """(R,) the smallest eigenvalue of T (Z'Z/N) / sigma^2 in the scaling diag(zscale)
    (T_ab sqrt(zz_a zz_b) / sigma^2), whose sign says whether T-hat is positive
    definite; dimensionless, as (9.2)."""
    sz = np.sqrt(np.where(zscale > 0, zscale, 1.0))
    Ts = T * sz[:, :, None] * sz[:, None, :] / sigma2[:, None, None]
    with np.errstate(invalid="ignore"):
        return np.array([np.linalg.eigvalsh(t)[0] if np.all(np.isfinite(t)) else np.nan
                         for t in Ts])


def unbounded_estimates(stats: GroupStats, cs: CovStructure, tmap: ThetaMap, est: Estimates,
                        reml: bool, control: FitControl | dict | None = None
                        ) -> tuple[Estimates, np.ndarray, np.ndarray]:
    """The unbounded fit (docs/math.md (6.7)) started from the bounded one ``est`` (batch
    axis R), as :class:`Estimates` with the EBLUPs U (R, J, q) and D_j = (I + Psi A_j)^{-1}
    Psi (R, J, q, q) (8.2). ``theta`` is lme4's theta of T / sigma^2 where T-hat is
    positive semi-definite, NaN elsewhere; ``singular`` says that T-hat is not positive
    definite (its smallest eigenvalue in the units of (9.2) below SINGULAR: a zero or
    negative variance, or an indefinite T); ``converged`` that the Newton iterations in phi
    converged (``stop`` why they stopped)."""
    R, m = est.phi.shape
    good = np.flatnonzero(np.all(np.isfinite(est.phi), axis=1))
    phi = est.phi.copy()
    stop = est.stop.copy()
    if good.size:
        sub = stats.select(good)
        phi_g, stop_g, _ = minimize_phi(sub, cs, est.phi[good], reml, control)
        phi[good], stop[good] = phi_g, stop_g
    st = Stats(*flat_arrays(stats, (R,)))
    f, g, H, C, beta, U = _pass(st, cs, phi, reml)
    T = cs.T(phi)
    sigma2 = phi[:, -1]
    acov, eig, pd_ = kernels.acov_many(np.ascontiguousarray(H))
    smallest = not_positive_definite(T, sigma2, est.zscale)
    Psi = T / sigma2[:, None, None]
    theta = np.full(est.theta.shape, np.nan)
    for r in range(R):
        t = tmap.theta_of(Psi[r]) if np.all(np.isfinite(Psi[r])) else None
        if t is not None:
            theta[r] = t
    A = np.asarray(stats.A, dtype=float).reshape(R, *np.shape(stats.A)[-3:])
    q = A.shape[-1]
    D = _group_D(np.eye(q) + Psi[:, None] @ A, np.broadcast_to(Psi[:, None], A.shape))
    p = _abs_newton(g, H)
    sd = np.sqrt(np.abs(np.einsum("rkk->rk", H)) / 2.0)
    scaled = p * sd                       # the last Newton step in standard errors
    converged = np.array([StopReason(int(c)).converged for c in stop])
    with np.errstate(invalid="ignore"):
        out = replace(
            est, theta=theta, beta=beta, vcov=C, sigma2=sigma2, T=T, phi=phi, hessian=H,
            hessian_eigenvalues=eig, hessian_pd=pd_, acov=acov, deviance=f,
            converged=converged,
            grad_ok=np.abs(scaled).max(axis=-1, initial=0.0) <= tolerances.GRAD_CHECK,
            scaled_grad=scaled, singular=~(smallest >= tolerances.SINGULAR),
            singular_value=smallest, stop=stop)
    return out, U, D
