"""Minimise the profiled deviance over theta, for one data set or R at once.

The optimiser is a damped Newton method run in lock-step over replicates:
each iteration evaluates, in one vectorised call, the deviance and analytic
gradient at theta and at theta +- h e_i, which gives a central-difference
Hessian H of the analytic gradient. The step is p = -|H|^{-1} g, with |H| the
Hessian whose eigenvalues are replaced by their absolute values (floored), so
that a saddle is left rather than approached; a backtracking line search
(Armijo) keeps every accepted step a descent step. Replicates that have
converged are frozen and leave the batch.

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

from mlmsim.engine.deviance import Packed, ThetaMap, _inv_logdet, _pairs, deviance_grad
from mlmsim.engine.stats import GroupStats

__all__ = ["OptResult", "minimize_theta", "moment_start", "canonical_theta", "take",
           "near_singular", "SINGULAR_EIG"]


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
    return Packed(stats, sel(pk.Av), sel(pk.Aq), sel(pk.Af), sel(pk.BC))


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


def _fd_hessian(pk: Packed, theta: np.ndarray, tmap: ThetaMap, reml: bool):
    """Deviance, gradient and forward-difference Hessian of the analytic gradient.

    pk has batch shape (R,); theta (R, k). One vectorised evaluation at k + 1
    points per replicate: H_i = (g(theta + h_i e_i) - g(theta)) / h_i, symmetrised,
    with h_i = 1e-6 (1 + |theta_i|). The optimiser needs H only to steer its
    steps and to tell a minimum from a saddle, for which O(h) accuracy suffices;
    reported Hessians (in phi) are computed separately and more accurately.
    """
    R, k = theta.shape
    h = 1e-6 * (1.0 + np.abs(theta))
    t = theta[:, None, :]
    pts = np.concatenate((t, t + h[:, None, :] * np.eye(k)), axis=1)
    st = take(pk, np.arange(R), expand=1)
    d, g, _ = deviance_grad(st, pts, tmap, reml)
    H = (g[:, 1:, :] - g[:, :1, :]) / h[:, :, None]
    H = 0.5 * (H + np.swapaxes(H, -1, -2))
    return d[:, 0], g[:, 0, :], H


def _curvature(H: np.ndarray):
    """Split an exact Hessian into the positive definite |H| (eigenvalues by absolute
    value, floored at 1e-8 of the largest) used for steps, and its most negative
    curvature: the smallest eigenvalue (absolute, and relative to the largest) and
    its eigenvector (R, k)."""
    w, V = np.linalg.eigh(H)
    scale = np.maximum(np.abs(w).max(axis=-1, keepdims=True), 1e-300)
    w_mod = np.maximum(np.abs(w), 1e-8 * scale)
    Habs = np.einsum("rik,rk,rjk->rij", V, w_mod, V)
    return Habs, w[..., 0] / scale[..., 0], w[..., 0], V[..., 0]


def _direction(g: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quasi-Newton step p = -B^{-1} g for positive definite B, and the decrement g'B^{-1}g."""
    p = -np.linalg.solve(B, g[..., None])[..., 0]
    return p, -np.einsum("rk,rk->r", g, p)


def _vech_outer(d: np.ndarray, q: int) -> np.ndarray:
    """vech of d d' for d (..., q): the scaling of vech(A) to a correlation matrix."""
    a, b = _pairs(q)
    return d[..., a] * d[..., b]


def _group_inverses(pk: Packed, d: np.ndarray, q: int):
    """A_j^{-1} (R, J, q, q) where A_j is well conditioned (det of the correlation-scaled
    A_j above 1e-8, and n_j >= q), else 0; and that mask (R, J). Closed form for q <= 3."""
    st = pk.stats
    if q <= 3:
        Ainv_s, logdet = _inv_logdet(pk.Av / _vech_outer(d, q), q)
    else:
        w, V = np.linalg.eigh(st.A / (d[..., :, None] * d[..., None, :]))
        w_safe = np.maximum(w, 1e-300)
        Ainv_s = np.einsum("rjab,rjb,rjcb->rjac", V, 1.0 / w_safe, V)
        logdet = np.log(w_safe).sum(-1)
    okj = np.nan_to_num(logdet, nan=-np.inf) > np.log(1e-8)
    okj &= st.n >= q
    Ainv = np.where(okj[..., None, None], Ainv_s / (d[..., :, None] * d[..., None, :]), 0.0)
    return Ainv, okj


def moment_start(pk: Packed, tmap: ThetaMap) -> np.ndarray:
    """A method-of-moments start for theta (R, k), from the per-group statistics.

    With OLS residual effects u_j = c_j - B_j beta_OLS, the per-group least-squares
    coefficients b_j = A_j^+ u_j have covariance about T + sigma^2 E[A_j^{-1}], so

        sigma0^2 = (r'r - sum_j u_j' A_j^+ u_j) / (N - sum_j rank A_j)
        T0       = cov_j(b_j) - sigma0^2 mean_j(A_j^+),  eigenvalues floored at 1e-2 sigma0^2

    and theta0 is read off the Cholesky factor of T0 / sigma0^2 (within T's
    blocks). Costs O(J q^3); it saves the Newton iterations spent far from the
    optimum when starting from Lambda = I.
    """
    st = pk.stats
    q = st.q
    beta = np.linalg.solve(st.XtX, st.Xty[..., None])[..., 0]
    u = st.c - np.einsum("rjqp,rp->rjq", st.B, beta)
    # A_j^{-1} in closed form (q <= 3) for groups whose A_j is well conditioned
    # (det of the correlation-scaled A_j above 1e-8); other groups are left out
    d = np.sqrt(np.maximum(np.einsum("rjii->rji", st.A), 1e-300))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        Ainv, okj = _group_inverses(pk, d, q)
    b = np.einsum("rjab,rjb->rja", Ainv, u)
    rr = st.yty - np.einsum("rp,rp->r", beta, st.Xty)
    dof = np.maximum(st.N - q * okj.sum(axis=-1), 1)
    s2 = np.maximum((rr - np.einsum("rja,rja->r", u, b)) / dof, 1e-12 * np.maximum(rr, 1e-300)
                    / np.maximum(st.N, 1))
    full = okj
    nfull = np.maximum(full.sum(-1), 1)
    bm = (b * full[..., None]).sum(-2) / nfull[:, None]
    dev = (b - bm[:, None, :]) * full[..., None]
    T0 = np.einsum("rja,rjb->rab", dev, dev) / np.maximum(nfull - 1, 1)[:, None, None]
    T0 -= s2[:, None, None] * (Ainv * full[..., None, None]).sum(-3) / nfull[:, None, None]
    block = np.zeros((q, q), dtype=bool)
    block[tmap.rows, tmap.cols] = True
    block |= block.T
    T0 = np.where(block, T0, 0.0)
    wt, Vt = np.linalg.eigh(T0 / s2[:, None, None])
    # a start, not an estimate: keep T0 / sigma0^2 within [1e-2, 1e2] (tiny sigma0^2
    # from many singleton groups can make it huge, and Newton steps from there crawl)
    wt = np.clip(wt, 1e-2, 1e2)
    rel = np.einsum("rab,rb,rcb->rac", Vt, wt, Vt)
    L = np.linalg.cholesky(rel)
    theta0 = tmap.theta(L)
    bad = ~np.all(np.isfinite(theta0), axis=-1) | (nfull < 2)
    theta0[bad] = tmap.start()
    return theta0


def _minimize(
    pk: Packed,
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

    ``pk`` carries batch shape (R,) (use R = 1 for one data set); ``theta0``
    is (R, k) or None for lme4's start (Lambda = I). Quasi-Newton in lock-step:
    the Hessian starts as the central-difference Hessian of the analytic
    gradient and is updated by BFGS after each step. A saddle of the deviance
    arises (by the sign symmetry of Lambda's columns) only where a column of
    Lambda is near 0, so a replicate that looks converged with some diagonal
    |theta_ii| < ``edge`` has its Hessian recomputed exactly and convergence
    (and the absence of a saddle) judged on it; elsewhere the BFGS matrix,
    which approximates the Hessian closely at a superlinearly converging
    optimum, is kept. Returns theta in canonical form (Lambda's diagonal >= 0)
    with the deviance, gradient and Hessian (exact or BFGS) there.

    ``out_H`` reports the exact Hessian where it was last recomputed, else the
    BFGS matrix at the optimum.
    """
    R = pk.Av.shape[0]
    diag = np.flatnonzero(tmap.diagonal)
    theta = moment_start(pk, tmap) if theta0 is None else np.array(theta0, dtype=float)
    f, g, H = _fd_hessian(pk, theta, tmap, reml)
    B, lam_rel, lam_min, v_neg = _curvature(H)
    exact = np.ones(R, dtype=bool)
    iters = np.zeros(R, dtype=np.intp)
    converged = np.zeros(R, dtype=bool)
    out_f, out_g, out_H = f.copy(), g.copy(), H.copy()
    active = np.arange(R)
    for it in range(max_iter + 1):
        p, dec = _direction(g, B)
        stationary = (dec < tol) | (np.abs(g).max(axis=-1) < gtol)
        # a saddle can only arise by symmetry where a column of Lambda is near 0: there,
        # judge convergence on the exact Hessian, never on the BFGS approximation
        near_edge = (np.abs(theta[active][:, diag]) < edge).any(axis=-1)
        recheck = stationary & ~exact & near_edge
        if recheck.any():
            # judge convergence on the exact Hessian, never on the BFGS approximation
            ix = np.flatnonzero(recheck)
            fe, ge, He = _fd_hessian(take(pk, active[ix]), theta[active[ix]], tmap, reml)
            f[ix], g[ix], H[ix] = fe, ge, He
            B[ix], lam_rel[ix], lam_min[ix], v_neg[ix] = _curvature(He)
            exact[ix] = True
            p, dec = _direction(g, B)
            stationary = (dec < tol) | (np.abs(g).max(axis=-1) < gtol)
        saddle = stationary & exact & (lam_rel < -1e-5)
        done = stationary & ~saddle
        out_f[active], out_g[active] = f, g
        out_H[active] = np.where(exact[:, None, None], H, B)
        iters[active] = it
        converged[active[done]] = True
        # at a saddle (e.g. a whole column of Lambda at 0 by symmetry) step along
        # the direction of negative curvature; the model decrease is lam_min / 2
        sgn = np.where(np.einsum("rk,rk->r", g, v_neg) > 0, -1.0, 1.0)
        p[saddle] = sgn[saddle, None] * v_neg[saddle]
        slope = np.einsum("rk,rk->r", g, p)
        slope[saddle] = np.minimum(slope[saddle], 0.5 * lam_min[saddle])
        keep = ~done
        if it == max_iter:
            break
        active, f, g, H, B, p, slope, exact, lam_rel, lam_min, v_neg, dec = (
            a[keep] for a in (active, f, g, H, B, p, slope, exact, lam_rel, lam_min, v_neg, dec)
        )
        if active.size == 0:
            break
        big = np.abs(p).max(axis=-1)
        shrink = np.minimum(1.0, max_step / np.maximum(big, 1e-300))
        p *= shrink[:, None]
        slope *= shrink
        alpha = np.ones(active.size)
        searching = np.arange(active.size)
        f_new, g_new = f.copy(), g.copy()
        accepted = np.zeros(active.size, dtype=bool)
        for _ in range(40):
            idx = active[searching]
            trial = theta[idx] + alpha[searching, None] * p[searching]
            ft, gt, _ = deviance_grad(take(pk, idx), trial, tmap, reml)
            ok = np.isfinite(ft) & (ft <= f[searching] + 1e-4 * alpha[searching] * slope[searching])
            acc = searching[ok]
            theta[idx[ok]] = trial[ok]
            f_new[acc], g_new[acc] = ft[ok], gt[ok]
            accepted[acc] = True
            searching = searching[~ok]
            if searching.size == 0:
                break
            alpha[searching] *= 0.5
        # BFGS update of the working Hessian: B + yy'/y's - Bs s'B / s'Bs
        s = alpha[:, None] * p
        y = g_new - g
        sy = np.einsum("rk,rk->r", s, y)
        Bs = np.einsum("rij,rj->ri", B, s)
        sBs = np.einsum("rk,rk->r", s, Bs)
        upd = accepted & (sy > 1e-10 * np.sqrt(sBs * np.einsum("rk,rk->r", y, y))) & (sBs > 0)
        if upd.any():
            B[upd] += (
                np.einsum("ri,rj->rij", y[upd], y[upd]) / sy[upd, None, None]
                - np.einsum("ri,rj->rij", Bs[upd], Bs[upd]) / sBs[upd, None, None]
            )
        f, g = f_new, g_new
        # a failed line search on an approximate Hessian is retried with the exact one;
        # on the exact Hessian it means no further progress is possible: stop there
        stalled = ~accepted & exact
        # no descent step exists even on the exact Hessian: the numerical floor of the
        # deviance is reached; with a small decrement that is convergence
        converged[active[stalled & (dec < 1e-6)]] = True
        retry = np.flatnonzero(~accepted & ~exact)
        if retry.size:
            fe, ge, He = _fd_hessian(take(pk, active[retry]), theta[active[retry]], tmap, reml)
            f[retry], g[retry], H[retry] = fe, ge, He
            B[retry], lam_rel[retry], lam_min[retry], v_neg[retry] = _curvature(He)
        exact = ~accepted
        out_f[active], out_g[active] = f, g
        out_H[active] = np.where(exact[:, None, None], H, B)
        keep = ~stalled
        active, f, g, H, B, exact, lam_rel, lam_min, v_neg = (
            a[keep] for a in (active, f, g, H, B, exact, lam_rel, lam_min, v_neg)
        )
        if active.size == 0:
            break
    theta, flip = canonical_theta(theta, tmap)
    return OptResult(theta, out_f, out_g * flip, out_H * flip[:, :, None] * flip[:, None, :],
                     iters, converged)


def minimize_theta(
    pk: Packed,
    tmap: ThetaMap,
    reml: bool,
    theta0: np.ndarray | None = None,
    *,
    max_iter: int = 300,
    **options,
) -> OptResult:
    """Minimise d(theta) (ML) or d_R(theta) (REML) for each of R replicates.

    ``pk`` carries batch shape (R,) (use R = 1 for one data set); ``theta0``
    is (R, k), or None for the moment start (:func:`moment_start`). A profiled
    likelihood can have more than one local minimum, typically one on the
    boundary (|corr| = 1 or a zero variance) and one inside. So, with the
    moment start, a replicate that ends singular (T-hat of rank < q) or not
    converged is fitted again from lme4's start, Lambda = I, and the lower
    deviance is kept. The optimiser itself is :func:`_minimize`.
    """
    opt = _minimize(pk, tmap, reml, theta0, max_iter=max_iter, **options)
    if theta0 is not None:
        return opt
    again = np.flatnonzero(~opt.converged | near_singular(opt.theta, tmap))
    if again.size == 0:
        return opt
    start = np.tile(tmap.start(), (again.size, 1))
    alt = _minimize(take(pk, again), tmap, reml, start, max_iter=max_iter, **options)
    better = (alt.deviance < opt.deviance[again] - 1e-10 * np.abs(opt.deviance[again])) | (
        alt.converged & ~opt.converged[again] & (alt.deviance <= opt.deviance[again]
                                                 + 1e-10 * np.abs(opt.deviance[again])))
    if not better.any():
        return opt
    fields = {f: getattr(opt, f).copy() for f in OptResult.__dataclass_fields__}
    for f in fields:
        fields[f][again[better]] = getattr(alt, f)[better]
    return OptResult(**fields)


SINGULAR_EIG = 1e-8
"""T-hat / sigma^2 with an eigenvalue below this is rank-deficient (singular)."""


def near_singular(theta: np.ndarray, tmap: ThetaMap, tol: float = SINGULAR_EIG) -> np.ndarray:
    """(R,) bool: Lambda Lambda' = T / sigma^2 has an eigenvalue below ``tol``, or a
    diagonal element of Lambda is below sqrt(tol) = 1e-4 (lme4's isSingular rule)."""
    L = tmap.Lambda(theta)
    w = np.linalg.eigvalsh(L @ np.swapaxes(L, -1, -2))
    small_diag = (np.abs(theta[..., tmap.diagonal]) < np.sqrt(tol)).any(axis=-1)
    return small_diag | (w[..., 0] < tol)
