"""The compiled optimiser of the profiled deviance and its method-of-moments start.

docs/math.md section 7; the strategy is described in :mod:`mlmsim.engine.optimize`. Every
evaluation is :func:`mlmsim.engine.kernels.deviance_one`. The optimiser works in the
standardised parameterisation of docs/math.md (7.1): Z~ = Z U^{-T} with U U' = Z'Z / N
block by block (U upper triangular, so Lambda~ = U' Lambda stays lower triangular), so
that theta, the step bound, the edge and the gradient tolerance mean the same whatever
the units of the random-effect predictors and wherever their origin; theta, the gradient
and the Hessian are mapped back at the end. Counters (evaluations, halvings) and the stop reason
(:class:`mlmsim.engine.control.StopReason` codes) are returned per replicate.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from mlmsim.engine.gls import Stats, q_of, replicate, workspace
from mlmsim.engine.kernels import deviance_one
from mlmsim.engine.linalg import (
    ldl,
    ldl_at,
    ldl_inverse_at,
    ldl_solve,
    ldl_solve_at,
    ldl_solve_cols,
    lu_solve,
    symmetrise,
)
from mlmsim.engine.tolerances import (
    ARMIJO,
    BFGS_CURVATURE,
    CURVATURE_FLOOR,
    DEPENDENT_EIG,
    FD_STEP,
    FLOOR_HALVINGS,
    FULL_RESTART_GROUPS,
    MAX_HALVINGS,
    PROBES,
    RESTART_MARGIN,
    ROUNDING_FLOOR,
    ROUNDING_NOISE,
    SADDLE,
    SINGULAR,
    START_CLIP,
    START_DET,
)
from mlmsim.engine.unroll import by_q, specialise

__all__ = ["moment_start_one", "minimize_one", "minimize_many", "standardising_map",
           "transformed_stats", "theta_map"]

# StopReason codes (mlmsim.engine.control.StopReason)
_DECREMENT, _GRADIENT, _FLOOR, _MAX_ITER, _LINE_SEARCH, _NOT_FINITE = 0, 1, 2, 3, 4, 5
# counters: evaluations, halvings
_EVALS, _HALVINGS = 0, 1


@njit(cache=True, error_model="numpy")
def moment_start_one_any(st, rows, cols, theta0, qc):
    """A method-of-moments start for theta, written to ``theta0`` (k,) (docs/math.md (7.3)).

    With OLS residual effects u_j = c_j - B_j beta_OLS and, for groups whose
    correlation-scaled A_j has determinant above START_DET and n_j >= q, the per-group
    least-squares coefficients b_j = A_j^{-1} u_j (covariance about T + sigma^2 A_j^{-1}):

        sigma0^2 = (r'r - sum_j u_j' b_j) / (N - q #groups used)
        T0       = cov_j(b_j) - sigma0^2 mean_j(A_j^{-1})    (zero outside T's blocks)

    theta0 is read off the Cholesky factor of T0 / sigma0^2 with its eigenvalues clipped
    to [1 / START_CLIP, START_CLIP] (a start, not an estimate). Where fewer than two
    groups qualify, or the result is not finite: lme4's start, Lambda = I.
    """
    A, B, c, n = st.A, st.B, st.c, st.n
    J, p = B.shape[0], B.shape[2]
    q = q_of(qc, B.shape[1])
    k = rows.shape[0]
    for i in range(k):
        theta0[i] = 1.0 if rows[i] == cols[i] else 0.0
    XL = st.XtX.copy()
    beta = np.empty((p, 1))
    for a in range(p):
        beta[a, 0] = st.Xty[a]
    ld, neg = ldl(XL, p)
    if math.isnan(ld) or neg > 0:
        return
    ldl_solve(XL, p, beta, 1)
    rr = st.yty
    for a in range(p):
        rr -= beta[a, 0] * st.Xty[a]
    b = np.zeros((J, q))
    ok = np.zeros(J, dtype=np.bool_)
    Ainv_sum = np.zeros((q, q))
    Cs = np.empty((1, q, q))
    Ci = np.empty((1, q, q))
    d = np.empty(q)
    u = np.empty(q)
    ub = 0.0
    nok = 0
    for j in range(J):
        if n[j] < q:
            continue
        for a in range(q):
            d[a] = math.sqrt(max(A[j, a, a], 1e-300))
        for a in range(q):
            for t in range(q):
                Cs[0, a, t] = A[j, a, t] / (d[a] * d[t])
        # |Cs| = dp exp(lp) <= 1 (a correlation matrix): lp = 0 unless it underflowed
        lp, dp, neg = ldl_at(Cs, 0, q)
        if not (neg == 0 and lp == 0.0 and dp > START_DET):
            continue
        ldl_inverse_at(Cs, 0, q, Ci, 0)
        for a in range(q):
            s = c[j, a]
            for t in range(p):
                s -= B[j, a, t] * beta[t, 0]
            u[a] = s
        for a in range(q):
            s = 0.0
            for t in range(q):
                v = Ci[0, a, t] / (d[a] * d[t])
                Ainv_sum[a, t] += v
                s += v * u[t]
            b[j, a] = s
            ub += u[a] * s
        ok[j] = True
        nok += 1
    if nok < 2:
        return
    dof = max(st.N - q * nok, 1.0)
    s2 = max((rr - ub) / dof, 1e-12 * max(rr, 1e-300) / max(st.N, 1.0))
    bm = np.zeros(q)
    for j in range(J):
        if ok[j]:
            for a in range(q):
                bm[a] += b[j, a] / nok
    T0 = np.zeros((q, q))
    for j in range(J):
        if ok[j]:
            for a in range(q):
                for t in range(q):
                    T0[a, t] += (b[j, a] - bm[a]) * (b[j, t] - bm[t])
    block = np.zeros((q, q), dtype=np.bool_)
    for i in range(k):
        block[rows[i], cols[i]] = True
        block[cols[i], rows[i]] = True
    for a in range(q):
        for t in range(q):
            v = T0[a, t] / (nok - 1) - s2 * Ainv_sum[a, t] / nok
            T0[a, t] = v / s2 if block[a, t] else 0.0
    w, V = np.linalg.eigh(T0)
    for a in range(q):
        w[a] = min(max(w[a], 1.0 / START_CLIP), START_CLIP)
    rel = np.zeros((q, q))
    for a in range(q):
        for t in range(q):
            s = 0.0
            for e in range(q):
                s += V[a, e] * w[e] * V[t, e]
            rel[a, t] = s
    ld, neg = ldl(rel, q)
    if math.isnan(ld) or neg > 0:
        return
    # the Cholesky factor of rel (:func:`ldl` keeps 1 / L_ii on the diagonal)
    for i in range(k):
        r, cc = rows[i], cols[i]
        v = 1.0 / rel[cc, cc] if r == cc else rel[r, cc]
        if not math.isfinite(v):
            for i2 in range(k):
                theta0[i2] = 1.0 if rows[i2] == cols[i2] else 0.0
            return
        theta0[i] = v


@njit(cache=True, error_model="numpy")
def _fd_hessian(theta, f_g, st, rows, cols, reml, H, w, cnt, qc):
    """Forward differences of the analytic gradient: H_i = (g(theta + h_i e_i) - g) / h_i,
    h_i = FD_STEP (1 + |theta_i|), symmetrised. Returns d(theta) and writes g to ``f_g``.
    (docs/math.md (7.2))"""
    k = theta.shape[0]
    f = deviance_one(theta, st, rows, cols, reml, True, f_g, w, qc)
    gt = np.empty(k)
    t = theta.copy()
    for i in range(k):
        h = FD_STEP * (1.0 + abs(theta[i]))
        t[i] = theta[i] + h
        deviance_one(t, st, rows, cols, reml, True, gt, w, qc)
        t[i] = theta[i]
        for j in range(k):
            H[i, j] = (gt[j] - f_g[j]) / h
    cnt[_EVALS] += k + 1
    symmetrise(H)
    return f


@njit(cache=True, error_model="numpy")
def _curvature(H, Babs, v_neg):
    """|H| (eigenvalues by absolute value, floored at CURVATURE_FLOOR of the largest) into
    ``Babs``, the eigenvector of the smallest eigenvalue into ``v_neg``; returns
    (lam_min / scale, lam_min). A non-finite H gives the identity and (0, 0).
    (docs/math.md (7.2))"""
    k = H.shape[0]
    for i in range(k):
        for j in range(k):
            if not math.isfinite(H[i, j]):
                for a in range(k):
                    for b in range(k):
                        Babs[a, b] = 1.0 if a == b else 0.0
                    v_neg[a] = 0.0
                return 0.0, 0.0
    w, V = np.linalg.eigh(H)
    scale = 1e-300
    for i in range(k):
        scale = max(scale, abs(w[i]))
    for a in range(k):
        for b in range(k):
            s = 0.0
            for e in range(k):
                s += V[a, e] * max(abs(w[e]), CURVATURE_FLOOR * scale) * V[b, e]
            Babs[a, b] = s
        v_neg[a] = V[a, 0]
    return w[0] / scale, w[0]


@njit(cache=True, error_model="numpy")
def _direction(g, Bm, p):
    """p = -B^{-1} g for positive definite B; returns the decrement g'B^{-1}g (inf when B
    is not positive definite).
    (docs/math.md (7.2))"""
    k = g.shape[0]
    Lc = Bm.copy()
    ld, neg = ldl(Lc, k)
    if math.isnan(ld) or neg > 0:
        for i in range(k):
            p[i] = -g[i]
        return np.inf
    X = np.empty((k, 1))
    for i in range(k):
        X[i, 0] = g[i]
    ldl_solve(Lc, k, X, 1)
    dec = 0.0
    for i in range(k):
        p[i] = -X[i, 0]
        dec += g[i] * X[i, 0]
    return dec


@njit(cache=True, error_model="numpy")
def _stationary(g, dec, tol, gtol):
    """The stop code when the point is stationary (decrement or gradient test), else -1."""
    if dec < tol:
        return _DECREMENT
    gmax = 0.0
    for i in range(g.shape[0]):
        gmax = max(gmax, abs(g[i]))
    return _GRADIENT if gmax < gtol else -1


@njit(cache=True, error_model="numpy")
def _near_edge(theta, rows, cols, edge):
    for i in range(theta.shape[0]):
        if rows[i] == cols[i] and abs(theta[i]) < edge:
            return True
    return False


@njit(cache=True, error_model="numpy")
def _canonical(theta, rows, cols, g, H):
    """Reflect columns of Lambda with a negative diagonal (Lambda Lambda' is unchanged);
    the gradient and Hessian transform as D g and D H D, D = diag(signs).
    (docs/math.md (7.2))"""
    k = theta.shape[0]
    sign = np.ones(k)
    for i in range(k):
        if rows[i] == cols[i] and theta[i] < 0.0:
            for i2 in range(k):
                if cols[i2] == cols[i]:
                    sign[i2] = -1.0
    for i in range(k):
        theta[i] *= sign[i]
        g[i] *= sign[i]
        for j in range(k):
            H[i, j] *= sign[i] * sign[j]


@njit(cache=True, error_model="numpy")
def _minimize(theta, st, rows, cols, reml, max_iter, tol, gtol, max_step, edge, g_out, H_out,
              w, cnt, qc):
    """Minimise from ``theta`` (updated in place); returns (deviance, iterations, stop code)
    and writes the gradient and Hessian (exact where last recomputed, else BFGS) there.
    (docs/math.md (7.2))"""
    k = theta.shape[0]
    g = np.empty(k)
    H = np.empty((k, k))
    Bm = np.empty((k, k))
    v_neg = np.empty(k)
    p = np.empty(k)
    trial = np.empty(k)
    g_new = np.empty(k)
    f = _fd_hessian(theta, g, st, rows, cols, reml, H, w, cnt, qc)
    it = 0
    if not math.isfinite(f):
        for i in range(k):
            g_out[i] = np.nan
            for j in range(k):
                H_out[i, j] = np.nan
        return f, it, _NOT_FINITE
    lam_rel, lam_min = _curvature(H, Bm, v_neg)
    exact = True
    stop = _MAX_ITER
    while True:
        dec = _direction(g, Bm, p)
        code = _stationary(g, dec, tol, gtol)
        if code >= 0 and not exact and _near_edge(theta, rows, cols, edge):
            # near the edge judge convergence on the exact Hessian, never on BFGS
            f = _fd_hessian(theta, g, st, rows, cols, reml, H, w, cnt, qc)
            lam_rel, lam_min = _curvature(H, Bm, v_neg)
            exact = True
            dec = _direction(g, Bm, p)
            code = _stationary(g, dec, tol, gtol)
        saddle = code >= 0 and exact and lam_rel < SADDLE
        if code < 0 and exact and dec < ROUNDING_NOISE * max(abs(f), 1.0):
            # a decrease below the deviance's rounding noise: no line search can verify it
            # (on the exact Hessian only: the last Newton step from there is quadratic,
            # from a BFGS matrix it would leave digits that lme4 and SAS print)
            code = _FLOOR
        if code >= 0 and not saddle:
            stop = code
            if (code == _DECREMENT or code == _FLOOR) and dec > 0.0:
                # the last Newton step, taken when it does not raise the deviance: one
                # evaluation that takes the estimate from ~1e-6 of a standard error of the
                # optimum to rounding level on the exact Hessian (quadratic), to about 1e-8
                # on a BFGS matrix (superlinear; measured against fits run to the rounding
                # floor), both far below the digits that lme4 and SAS print. The exact
                # Hessian here would cost k + 1 evaluations more per fit (+27% of the time
                # of a random slope fit, J = 30, n = 10): not spent.
                for i in range(k):
                    trial[i] = theta[i] + p[i]
                ft = deviance_one(trial, st, rows, cols, reml, True, g_new, w, qc)
                cnt[_EVALS] += 1
                # (within the deviance's rounding, so that the same fit in other units,
                # equal to rounding, takes the same decision)
                if math.isfinite(ft) and ft <= f + 1e-14 * abs(f):
                    f = ft
                    for i in range(k):
                        theta[i] = trial[i]
                        g[i] = g_new[i]
            break
        if it == max_iter:
            stop = _MAX_ITER
            break
        slope = 0.0
        if saddle:
            # at a saddle step along the direction of negative curvature
            gv = 0.0
            for i in range(k):
                gv += g[i] * v_neg[i]
            sgn = -1.0 if gv > 0.0 else 1.0
            for i in range(k):
                p[i] = sgn * v_neg[i]
            slope = min(sgn * gv, 0.5 * lam_min)
        else:
            for i in range(k):
                slope += g[i] * p[i]
        big = 0.0
        for i in range(k):
            big = max(big, abs(p[i]))
        shrink = min(1.0, max_step / max(big, 1e-300))
        for i in range(k):
            p[i] *= shrink
        slope *= shrink
        alpha = 1.0
        accepted = False
        f_new = f
        # at the deviance's rounding floor (decrement below ROUNDING_FLOOR |f|) a Newton step
        # is taken whole or not at all: halving it further only spends evaluations on
        # noise. Near the edge, where the boundary optimum is approached slowly and a BFGS
        # decrement can understate the distance, only on the exact Hessian.
        floor_tol = ROUNDING_FLOOR * max(abs(f), 1.0)
        floor = dec < floor_tol and not saddle and (
            exact or not _near_edge(theta, rows, cols, edge))
        halvings = FLOOR_HALVINGS if floor else MAX_HALVINGS
        for ls in range(halvings):
            for i in range(k):
                trial[i] = theta[i] + alpha * p[i]
            ft = deviance_one(trial, st, rows, cols, reml, True, g_new, w, qc)
            cnt[_EVALS] += 1
            if ls > 0:
                cnt[_HALVINGS] += 1
            if math.isfinite(ft) and ft <= f + ARMIJO * alpha * slope:
                accepted = True
                f_new = ft
                for i in range(k):
                    theta[i] = trial[i]
                break
            alpha *= 0.5
        it += 1
        if accepted and not exact and alpha < 0.5**FLOOR_HALVINGS:
            # a step accepted only after many halvings: the BFGS matrix points badly (near
            # the edge its direction can be far too long and never improve, since so short
            # a step teaches BFGS nothing); continue from the exact Hessian at the new point
            f = _fd_hessian(theta, g, st, rows, cols, reml, H, w, cnt, qc)
            lam_rel, lam_min = _curvature(H, Bm, v_neg)
            exact = True
        elif accepted:
            # BFGS update: B + yy'/y's - Bs s'B / s'Bs
            sy = 0.0
            sBs = 0.0
            yy = 0.0
            Bs = np.empty(k)
            for i in range(k):
                s_i = alpha * p[i]
                y_i = g_new[i] - g[i]
                sy += s_i * y_i
                yy += y_i * y_i
            for i in range(k):
                v = 0.0
                for j in range(k):
                    v += Bm[i, j] * alpha * p[j]
                Bs[i] = v
                sBs += alpha * p[i] * v
            if sy > BFGS_CURVATURE * math.sqrt(sBs * yy) and sBs > 0.0:
                for i in range(k):
                    for j in range(k):
                        Bm[i, j] += ((g_new[i] - g[i]) * (g_new[j] - g[j]) / sy
                                     - Bs[i] * Bs[j] / sBs)
            f = f_new
            for i in range(k):
                g[i] = g_new[i]
            exact = False
        elif exact or floor:
            # no descent step at the numerical floor of the deviance: with a small
            # decrement that is convergence (near the edge, where saddles arise, only
            # once the exact Hessian has confirmed the decrement)
            stop = _FLOOR if dec < floor_tol else _LINE_SEARCH
            break
        else:
            # a failed line search on the BFGS matrix is retried with the exact Hessian
            f = _fd_hessian(theta, g, st, rows, cols, reml, H, w, cnt, qc)
            lam_rel, lam_min = _curvature(H, Bm, v_neg)
            exact = True
    for i in range(k):
        g_out[i] = g[i]
        for j in range(k):
            H_out[i, j] = H[i, j] if exact else Bm[i, j]
    _canonical(theta, rows, cols, g_out, H_out)
    return f, it, stop


@njit(cache=True, error_model="numpy")
def _near_singular(theta, rows, cols):
    """The scaled Lambda Lambda' has an eigenvalue below SINGULAR, or a diagonal element of
    Lambda is below sqrt(SINGULAR): the restart rule of :func:`minimize_one`."""
    q = 0
    for i in range(rows.shape[0]):
        q = max(q, rows[i] + 1)
    L = np.zeros((q, q))
    for i in range(rows.shape[0]):
        L[rows[i], cols[i]] = theta[i]
        if rows[i] == cols[i] and abs(theta[i]) < math.sqrt(SINGULAR):
            return True
    # smallest eigenvalue of L L' below SINGULAR  <=>  L L' - SINGULAR I not positive definite
    M = np.empty((1, q, q))
    for a in range(q):
        for b in range(q):
            acc = -SINGULAR if a == b else 0.0
            for t in range(q):
                acc += L[a, t] * L[b, t]
            M[0, a, b] = acc
    lp, dp, neg = ldl_at(M, 0, q)
    return neg > 0 or math.isnan(dp)


@njit(cache=True, error_model="numpy")
def standardising_map(st, rows, cols, Ut):
    """docs/math.md (7.1): the lower-triangular Ut = U' with U U' = Z'Z / N (an "upper-lower"
    Cholesky factor, taken block by block of T's structure), so that Z~ = Z U^{-T} has
    Z~'Z~ / N = I within each block and Lambda~ = U' Lambda stays lower triangular and
    block-diagonal: the optimiser's parameters then do not depend on the units of the
    random-effect predictors, nor on shifts of them (x + a is a linear recoding of [1, x]).
    A block whose Z'Z is not positive definite (dependent or empty columns) falls back to
    the diagonal root mean squares (1 for an empty column)."""
    A = st.A
    J, q = A.shape[0], A.shape[1]
    ZZ = np.zeros((q, q))
    for j in range(J):
        for a in range(q):
            for b in range(q):
                ZZ[a, b] += A[j, a, b]
    for a in range(q):
        for b in range(q):
            ZZ[a, b] = ZZ[a, b] / st.N if st.N > 0 else 0.0
            Ut[a, b] = 0.0
    same = np.zeros((q, q), dtype=np.bool_)
    for i in range(rows.shape[0]):
        same[rows[i], cols[i]] = True
        same[cols[i], rows[i]] = True
    done = np.zeros(q, dtype=np.bool_)
    for a0 in range(q):
        if done[a0]:
            continue
        idx = np.empty(q, dtype=np.int64)
        nb = 0
        for b in range(q):
            if same[a0, b] or b == a0:
                idx[nb] = b
                nb += 1
                done[b] = True
        # reversed Cholesky of the block: P_rev = L L', U = rev(L); U' = rev(L')
        P = np.empty((nb, nb))
        for i in range(nb):
            for t in range(nb):
                P[i, t] = ZZ[idx[nb - 1 - i], idx[nb - 1 - t]]
        ok = True
        for i in range(nb):
            for t in range(nb):
                if not math.isfinite(P[i, t]):
                    ok = False
        if ok:
            diag = np.empty(nb)
            for i in range(nb):
                diag[i] = P[i, i]
            ld, neg = ldl(P, nb)
            ok = not math.isnan(ld) and neg == 0
            if ok:
                # a pivot L_ii^2 tiny against its own diagonal (1 - R^2 of that column on
                # the ones before it): dependent columns
                for i in range(nb):
                    if not 1.0 / P[i, i] ** 2 > DEPENDENT_EIG * diag[i]:
                        ok = False
        if ok:
            # L: the Cholesky factor in P (1 / L_ii on the diagonal); U = J L J
            for i in range(nb):
                for t in range(nb):
                    ri, rt = nb - 1 - i, nb - 1 - t
                    if rt > ri:
                        continue
                    lv = 1.0 / P[rt, rt] if ri == rt else P[ri, rt]
                    # L[ri, rt] with ri >= rt; U = J L J: U[i, t] = L[ri, rt] (i <= t)
                    Ut[idx[t], idx[i]] = lv
        else:
            for i in range(nb):
                v = math.sqrt(ZZ[idx[i], idx[i]]) if ZZ[idx[i], idx[i]] > 0.0 else 1.0
                Ut[idx[i], idx[i]] = v if math.isfinite(v) and v > 0.0 else 1.0


@njit(cache=True, error_model="numpy")
def transformed_stats_any(st, Ut, qc, out):
    """The statistics of Z~ = Z U^{-T} (U = Ut'): A~ = U^{-1} A U^{-T}, B~ = U^{-1} B,
    c~ = U^{-1} c, by triangular solves with the upper-triangular U (into out.A, out.B,
    out.c; the other statistics are st's).
    (docs/math.md (7.1))"""
    A, B, c = st.A, st.B, st.c
    J, p = B.shape[0], B.shape[2]
    q = q_of(qc, B.shape[1])
    As, Bs, cs = out.A, out.B, out.c
    X = np.empty((q, q + p + 1))
    Y = np.empty((q, q))
    for j in range(J):
        for a in range(q):
            for b in range(q):
                X[a, b] = A[j, a, b]
            for b in range(p):
                X[a, q + b] = B[j, a, b]
            X[a, q + p] = c[j, a]
        _solve_upper(Ut, X, q + p + 1, qc)
        # A~ = U^{-1} (U^{-1} A)' = U^{-1} A U^{-T}: solve again on the transpose
        for a in range(q):
            for b in range(q):
                Y[a, b] = X[b, a]
        _solve_upper(Ut, Y, q, qc)
        for a in range(q):
            for b in range(q):
                As[j, a, b] = 0.5 * (Y[a, b] + Y[b, a])
            for b in range(p):
                Bs[j, a, b] = X[a, q + b]
            cs[j, a] = X[a, q + p]
    return Stats(As, Bs, cs, st.XtX, st.Xty, st.yty, st.N, st.n)


@njit(cache=True, error_model="numpy")
def _solve_upper(Ut, X, m, qc):
    """X <- U^{-1} X for U = Ut' upper triangular (X (q, >= m), first m columns)."""
    q = q_of(qc, Ut.shape[0])
    for col in range(m):
        for i in range(q - 1, -1, -1):
            s = X[i, col]
            for t in range(i + 1, q):
                s -= Ut[t, i] * X[t, col]
            X[i, col] = s / Ut[i, i]


@njit(cache=True, error_model="numpy")
def theta_map(Ut, rows, cols):
    """K (k, k) with theta~ = K theta for Lambda~ = U' Lambda (Ut = U' lower triangular):
    column i is theta~ of the Lambda with theta = e_i.
    (docs/math.md (7.1))"""
    k = rows.shape[0]
    K = np.zeros((k, k))
    for i in range(k):
        # Lambda = E_{rows[i], cols[i]}: (U' Lambda)[a, b] = Ut[a, rows[i]] [b = cols[i]]
        for e in range(k):
            if cols[e] == cols[i]:
                K[e, i] = Ut[rows[e], rows[i]]
    return K


@njit(cache=True, error_model="numpy", inline="always")
def _lower_toward_start(theta, f, st, rows, cols, reml, w, cnt, qc):
    """Whether d at theta + a (theta_I - theta), a in PROBES, falls below f (by the
    restart margin), theta_I being lme4's start Lambda = I; one evaluation per point."""
    k = theta.shape[0]
    t = np.empty(k)
    g = np.empty(k)
    margin = RESTART_MARGIN * abs(f)
    for a in PROBES:
        for i in range(k):
            t[i] = theta[i] + a * ((1.0 if rows[i] == cols[i] else 0.0) - theta[i])
        fp = deviance_one(t, st, rows, cols, reml, False, g, w, qc)
        cnt[_EVALS] += 1
        if fp < f - margin:
            return True
    return False


@njit(cache=True, error_model="numpy", inline="always")
def minimize_one(st, rows, cols, reml, theta0, use_start, max_iter, tol, gtol, max_step, edge,
                 restart, theta, g, H, info, w, ts, qc):
    """Fit one replicate: writes theta, gradient and Hessian (in the original units);
    returns the deviance. ``info`` (6,) int64 receives (iterations, stop code,
    evaluations, halvings, restarts, start: 0 moment, 1 Lambda = I, 2 given).

    With ``use_start`` the optimiser starts at ``theta0`` and that is all. Otherwise it
    starts from :func:`moment_start_one`, and (with ``restart``) a fit that ends singular
    or not converged is fitted again from lme4's start (Lambda = I); the lower deviance is
    kept (or the converged fit, at an equal deviance). All in the scaled parameterisation
    of docs/math.md (7.1). ``w`` (a :func:`mlmsim.engine.gls.workspace`) and ``ts`` (a
    :class:`Stats` whose A, B, c receive the transformed statistics) are work space.
    """
    k = rows.shape[0]
    q = st.A.shape[1]
    Ut = np.empty((q, q))
    standardising_map(st, rows, cols, Ut)
    ss = transformed_stats(st, Ut, qc, ts)
    K = theta_map(Ut, rows, cols)
    cnt = np.zeros(2, dtype=np.int64)
    if use_start:
        for i in range(k):
            acc = 0.0
            for t in range(k):
                acc += K[i, t] * theta0[t]
            theta[i] = acc
    else:
        moment_start_one(ss, rows, cols, theta, qc)
    f, it, stop = _minimize(theta, ss, rows, cols, reml, max_iter, tol, gtol, max_step, edge,
                            g, H, w, cnt, qc)
    start = 2 if use_start else 0
    restarts = 0
    conv = stop <= _FLOOR
    again = not use_start and restart and not (conv and not _near_singular(theta, rows, cols))
    if again and conv and math.isfinite(f) and st.A.shape[0] >= FULL_RESTART_GROUPS:
        # a converged boundary fit of many groups: look along the segment to lme4's start
        # first, and refit from there only where some point of it lies below (PROBES
        # evaluations instead of a second fit; docs/math.md (7.2))
        again = _lower_toward_start(theta, f, ss, rows, cols, reml, w, cnt, qc)
    if again:
        t2 = np.empty(k)
        for i in range(k):
            t2[i] = 1.0 if rows[i] == cols[i] else 0.0
        g2 = np.empty(k)
        H2 = np.empty((k, k))
        f2, it2, stop2 = _minimize(t2, ss, rows, cols, reml, max_iter, tol, gtol, max_step,
                                   edge, g2, H2, w, cnt, qc)
        restarts = 1
        it += it2
        conv2 = stop2 <= _FLOOR
        margin = RESTART_MARGIN * abs(f)
        if (not math.isfinite(f) and math.isfinite(f2)) or f2 < f - margin or (
                conv2 and not conv and f2 <= f + margin):
            f, stop, start = f2, stop2, 1
            for i in range(k):
                theta[i] = t2[i]
                g[i] = g2[i]
                for j in range(k):
                    H[i, j] = H2[i, j]
    # back to the original parameters: theta = K^{-1} theta~, g = K' g~, H = K' H~ K
    Kc = K.copy()
    tt = np.empty((k, 1))
    for i in range(k):
        tt[i, 0] = theta[i]
    lu_solve(Kc, tt)
    gk = np.zeros(k)
    HK = np.zeros((k, k))
    for i in range(k):
        for t in range(k):
            gk[i] += K[t, i] * g[t]
            for j in range(k):
                HK[i, j] += H[i, t] * K[t, j]
    for i in range(k):
        theta[i] = tt[i, 0]
        g[i] = gk[i]
        for j in range(k):
            acc = 0.0
            for t in range(k):
                acc += K[t, i] * HK[t, j]
            H[i, j] = acc
    symmetrise(H)
    info[0] = it
    info[1] = stop
    info[2] = cnt[_EVALS]
    info[3] = cnt[_HALVINGS]
    info[4] = restarts
    info[5] = start
    return f


@njit(cache=True, error_model="numpy")
def minimize_many(st, rows, cols, reml, theta0, use_start, max_iter, tol, gtol, max_step, edge,
                  restart, qc):
    """:func:`minimize_one` for each of R replicates (batched statistics; theta0 (R, k)).
    Returns theta (R, k), deviance (R,), gradient (R, k), Hessian (R, k, k) and info
    (R, 6).
    (docs/math.md (7.2))"""
    R, J, q, p = st.B.shape
    k = rows.shape[0]
    w = workspace(J, q, p)
    ts = Stats(np.empty((J, q, q)), np.empty((J, q, p)), np.empty((J, q)), st.XtX[0], st.Xty[0],
               0.0, 0.0, st.n[0])
    theta = np.empty((R, k))
    dev = np.empty(R)
    g = np.empty((R, k))
    H = np.empty((R, k, k))
    info = np.zeros((R, 6), dtype=np.int64)
    for r in range(R):
        dev[r] = minimize_one(replicate(st, r), rows, cols, reml, theta0[r], use_start,
                              max_iter, tol, gtol, max_step, edge, restart, theta[r], g[r],
                              H[r], info[r], w, ts, qc)
    return theta, dev, g, H, info


# loop-free copies for q = 2 (mlmsim.engine.unroll)
_solve_upper_q2 = specialise(_solve_upper, {"q": 2}, "_solve_upper_q2")
transformed_stats_q2 = specialise(transformed_stats_any, {"q": 2}, "transformed_stats_q2",
                                  (_solve_upper_q2,))
moment_start_one_q2 = specialise(moment_start_one_any, {"q": 2}, "moment_start_one_q2",
                                 (), (ldl_at, ldl_inverse_at, ldl_solve_at, ldl_solve_cols))
# the kernels that compiled code calls: the q = 2 copy or the general code
transformed_stats = by_q(transformed_stats_any, transformed_stats_q2, "transformed_stats")
moment_start_one = by_q(moment_start_one_any, moment_start_one_q2, "moment_start_one")
