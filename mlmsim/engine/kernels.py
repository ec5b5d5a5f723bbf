"""Compiled kernels: the profiled deviance, its gradient and the optimiser, per replicate.

A fit of a small two-level model is a few dozen evaluations of d(theta) on
q x q and p x p matrices per group. In vectorised numpy each evaluation costs
some sixty array operations of fixed overhead (~1 us each) whatever the data
size, so a single small fit was dominated by that overhead and a batch by the
temporaries. Here the same mathematics runs as loops over groups in numba-
compiled code: one evaluation of d and its gradient takes about 2 us for
J = 30, q = 2 (6 us for J = 160; q = 2 has its per-group algebra written out on
scalars), and the optimiser's whole loop runs compiled.

The formulas are those of :mod:`mlmsim.engine.deviance` (module docstring):
with Lambda from theta, per group M_j = Lambda' A_j Lambda + I,
R_j = Lambda'[B_j c_j], S_j = M_j^{-1} R_j, and

    XtVX = X'X - sum_j R_jB' S_jB,  XtVy = X'y - sum_j R_jB' S_jc,  ytVy = y'y - sum_j R_jc' S_jc
    beta = XtVX^{-1} XtVy,  r2 = ytVy - beta' XtVy
    ML    d(theta)   = sum_j log|M_j| + N (1 + log(2 pi r2 / N))
    REML  d_R(theta) = sum_j log|M_j| + log|XtVX| + (N - p)(1 + log(2 pi r2 / (N - p)))

and the gradient in Lambda, with u_j = c_j - B_j beta, P_j = M_j^{-1} Lambda',
G_j = I - Lambda P_j A_j, C = XtVX^{-1}:

    d log|M_j| / d Lambda  =  2 A_j Lambda M_j^{-1}
    d r2 / d Lambda        = -2 sum_j (G_j' u_j)(P_j u_j)'
    d log|XtVX| / d Lambda = -2 sum_j (G_j' B_j) C (P_j B_j)'

The optimiser (:func:`minimize_one`, documented in :mod:`mlmsim.engine.optimize`)
is a quasi-Newton method over all of R^k started from a method-of-moments
estimate (:func:`moment_start_one`), with a forward-difference Hessian of the
analytic gradient where the BFGS matrix cannot be trusted (at the start, near
the edge theta_ii = 0, after a failed line search). Every function here works
on one replicate; the ``*_many`` drivers loop over replicates.

Statistics arrays (one replicate): A (J, q, q), B (J, q, p), c (J, q),
XtX (p, p), Xty (p,), yty, N; n (J,) group sizes. ``rows``, ``cols`` (k,) say
where theta sits in Lambda: Lambda[rows[i], cols[i]] = theta[i].
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from mlmsim.engine.phi_kernel import _hessian_into, _solve, _workspace
from mlmsim.terms import fill_terms

__all__ = ["devgrad_one", "devgrad_many", "readout_many", "estimates_many", "moment_start_one",
           "minimize_one", "minimize_many", "group_sums_one",
           "dependence_screen"]

_LOG2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------
# small dense algebra (in place, no allocation)
# ---------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def _chol(M, n):
    """Cholesky factor of M[:n, :n] in place: the strict lower triangle holds the factor's,
    the diagonal holds the reciprocals of its diagonal (so that solves multiply). Returns
    log|M|, or nan when M is not positive definite."""
    prod = 1.0
    logdet = 0.0
    for j in range(n):
        s = M[j, j]
        for k in range(j):
            s -= M[j, k] * M[j, k]
        if not s > 0.0:
            return np.nan
        d = math.sqrt(s)
        r = 1.0 / d
        M[j, j] = r
        prod *= s
        if prod > 1e280 or prod < 1e-280:
            logdet += math.log(prod)
            prod = 1.0
        for i in range(j + 1, n):
            s = M[i, j]
            for k in range(j):
                s -= M[i, k] * M[j, k]
            M[i, j] = s * r
    return logdet + math.log(prod)


@njit(cache=True, error_model="numpy")
def _chol_solve(Lc, n, X, m):
    """Solve (Lc Lc') Y = X[:n, :m] in place, Lc from :func:`_chol`."""
    for col in range(m):
        for i in range(n):
            s = X[i, col]
            for k in range(i):
                s -= Lc[i, k] * X[k, col]
            X[i, col] = s * Lc[i, i]
        for i in range(n - 1, -1, -1):
            s = X[i, col]
            for k in range(i + 1, n):
                s -= Lc[k, i] * X[k, col]
            X[i, col] = s * Lc[i, i]


@njit(cache=True, error_model="numpy")
def _chol_inverse(Lc, n, out):
    """out[:n, :n] = (Lc Lc')^{-1}."""
    for i in range(n):
        for j in range(n):
            out[i, j] = 1.0 if i == j else 0.0
    _chol_solve(Lc, n, out, n)


@njit(cache=True, error_model="numpy")
def _chol2(m00, m10, m11):
    """:func:`_chol` of the 2 x 2 matrix [[m00, .], [m10, m11]] on scalars, with the same
    operations: returns the factor as (r0, f10, r1) (r_i the reciprocals of its diagonal)
    and |M| (nan when M is not positive definite)."""
    if not m00 > 0.0:
        return np.nan, np.nan, np.nan, np.nan
    r0 = 1.0 / math.sqrt(m00)
    f10 = m10 * r0
    s1 = m11 - f10 * f10
    if not s1 > 0.0:
        return np.nan, np.nan, np.nan, np.nan
    return r0, f10, 1.0 / math.sqrt(s1), m00 * s1


@njit(cache=True, error_model="numpy")
def _chol_solve2(r0, f10, r1, x0, x1):
    """:func:`_chol_solve` of one right-hand side (x0, x1) with a factor from :func:`_chol2`."""
    y0 = x0 * r0
    y1 = (x1 - f10 * y0) * r1
    z1 = y1 * r1
    return (y0 - f10 * z1) * r0, z1


# ---------------------------------------------------------------------------
# the profiled deviance and its gradient
# ---------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def _lambda(theta, rows, cols, q, L):
    for a in range(q):
        for b in range(q):
            L[a, b] = 0.0
    for i in range(theta.shape[0]):
        L[rows[i], cols[i]] = theta[i]


@njit(cache=True, error_model="numpy")
def _profile(theta, A, B, c, XtX, Xty, yty, rows, cols, want_minv, L, Minv, AL, S, XV, beta):
    """The profiled quantities at theta (module docstring): fills Lambda ``L`` (q, q),
    S_j = M_j^{-1} R_j into ``S`` (J, q, p + 1), M_j^{-1} into ``Minv`` and A_j Lambda
    into ``AL`` (both (J, q, q); else only AL[0] is used, as work space), the Cholesky
    factor of XtVX into ``XV`` (p, p + 1) (see :func:`_chol`) and beta into ``beta`` (p, 1).
    Returns (sum_j log|M_j|, log|XtVX|, r2), with nan first where a matrix that must be
    positive definite is not, or r2 <= 0."""
    J, q, p = B.shape[0], B.shape[1], B.shape[2]
    m = p + 1
    _lambda(theta, rows, cols, q, L)
    M = np.empty((q, q))
    Rj = np.empty((q, m))
    corr = np.zeros((m, m))
    logdetM = 0.0
    l00, l10, l11 = (L[0, 0], L[1, 0], L[1, 1]) if q == 2 else (0.0, 0.0, 0.0)
    for j in range(J):
        jj = j if want_minv else 0
        if q == 2:
            # the general branch below, written out on scalars (same operations, less
            # loop overhead): a quarter of the cost for random intercept and slope
            a00, a01, a10, a11 = A[j, 0, 0], A[j, 0, 1], A[j, 1, 0], A[j, 1, 1]
            al00 = a00 * l00 + a01 * l10
            al01 = a01 * l11
            al10 = a10 * l00 + a11 * l10
            al11 = a11 * l11
            AL[jj, 0, 0], AL[jj, 0, 1], AL[jj, 1, 0], AL[jj, 1, 1] = al00, al01, al10, al11
            r0, f10, r1, det = _chol2(l00 * al00 + l10 * al10 + 1.0, l11 * al10,
                                      l11 * al11 + 1.0)
            if math.isnan(det):
                return np.nan, np.nan, np.nan
            logdetM += math.log(det)
            for col in range(m):
                x0 = B[j, 0, col] if col < p else c[j, 0]
                x1 = B[j, 1, col] if col < p else c[j, 1]
                Rj[0, col] = l00 * x0 + l10 * x1
                Rj[1, col] = l11 * x1
                S[j, 0, col], S[j, 1, col] = _chol_solve2(r0, f10, r1, Rj[0, col], Rj[1, col])
            for r in range(m):
                for col in range(r + 1):
                    corr[r, col] += Rj[0, r] * S[j, 0, col] + Rj[1, r] * S[j, 1, col]
            if want_minv:
                Minv[j, 0, 0], Minv[j, 1, 0] = _chol_solve2(r0, f10, r1, 1.0, 0.0)
                Minv[j, 0, 1], Minv[j, 1, 1] = _chol_solve2(r0, f10, r1, 0.0, 1.0)
            continue
        # A_j Lambda, then M_j = Lambda' A_j Lambda + I (lower triangle is all we need)
        for a in range(q):
            for b in range(q):
                s = 0.0
                for t in range(q):
                    s += A[j, a, t] * L[t, b]
                AL[jj, a, b] = s
        for a in range(q):
            for b in range(a + 1):
                s = 0.0
                for t in range(q):
                    s += L[t, a] * AL[jj, t, b]
                M[a, b] = s + (1.0 if a == b else 0.0)
        ld = _chol(M, q)
        if math.isnan(ld):
            return np.nan, np.nan, np.nan
        logdetM += ld
        # R_j = Lambda' [B_j c_j]
        for a in range(q):
            for col in range(m):
                s = 0.0
                for t in range(a, q):
                    v = B[j, t, col] if col < p else c[j, t]
                    s += L[t, a] * v
                Rj[a, col] = s
                S[j, a, col] = s
        _chol_solve_group(M, q, S, j, m)
        for r in range(m):
            for col in range(r + 1):
                s = 0.0
                for a in range(q):
                    s += Rj[a, r] * S[j, a, col]
                corr[r, col] += s
        if want_minv:
            _chol_inverse_group(M, q, Minv, j)
    for a in range(p):
        for b in range(a + 1):
            XV[a, b] = XtX[a, b] - corr[a, b]
            XV[b, a] = XV[a, b]
    ytVy = yty - corr[p, p]
    XtVy = np.empty(p)
    for a in range(p):
        XtVy[a] = Xty[a] - corr[p, a]
        beta[a, 0] = XtVy[a]
    ldX = _chol(XV, p)
    if math.isnan(ldX):
        return np.nan, np.nan, np.nan
    _chol_solve(XV, p, beta, 1)
    r2 = ytVy
    for a in range(p):
        r2 -= beta[a, 0] * XtVy[a]
    if not r2 > 0.0:
        return np.nan, np.nan, np.nan
    return logdetM, ldX, r2


@njit(cache=True, error_model="numpy")
def devgrad_one(theta, A, B, c, XtX, Xty, yty, N, rows, cols, reml, want_grad, g_out):
    """d(theta) (ML) or d_R(theta) (REML) for one replicate; with ``want_grad`` the
    gradient in theta is written to ``g_out`` (k,). Returns nan where a matrix that must be
    positive definite is not (or r2 <= 0)."""
    J, q, p = B.shape[0], B.shape[1], B.shape[2]
    L = np.empty((q, q))
    Minv = np.empty((J if want_grad else 1, q, q))
    AL = np.empty((J if want_grad else 1, q, q))
    S = np.empty((J, q, p + 1))
    XV = np.empty((p, p + 1))
    beta = np.empty((p, 1))
    logdetM, ldX, r2 = _profile(theta, A, B, c, XtX, Xty, yty, rows, cols, want_grad, L, Minv,
                                AL, S, XV, beta)
    if math.isnan(logdetM):
        return np.nan
    nu = N - p if reml else N
    d = logdetM + nu * (1.0 + _LOG2PI + math.log(r2 / nu))
    if reml:
        d += ldX
    if not want_grad:
        return d
    # gradient in Lambda: gL = dlogdetM + (nu / r2) d_r2 [+ dlogdetX]
    C = np.empty((p, p))
    if reml:
        _chol_inverse(XV, p, C)
    gL = np.zeros((q, q))
    u = np.empty(q)
    Pu = np.empty(q)
    Wu = np.empty(q)
    Gu = np.empty(q)
    WB = np.empty((q, p))
    GB = np.empty((q, p))
    SC = np.empty((q, p))
    w = nu / r2
    l00, l10, l11 = (L[0, 0], L[1, 0], L[1, 1]) if q == 2 else (0.0, 0.0, 0.0)
    for j in range(J):
        if q == 2:
            # the general branch below, written out on scalars (same operations)
            u0, u1, P0, P1 = c[j, 0], c[j, 1], S[j, 0, p], S[j, 1, p]
            for b in range(p):
                u0 -= B[j, 0, b] * beta[b, 0]
                P0 -= S[j, 0, b] * beta[b, 0]
            for b in range(p):
                u1 -= B[j, 1, b] * beta[b, 0]
                P1 -= S[j, 1, b] * beta[b, 0]
            W0 = l00 * P0
            W1 = l10 * P0 + l11 * P1
            G0 = u0 - A[j, 0, 0] * W0 - A[j, 0, 1] * W1
            G1 = u1 - A[j, 1, 0] * W0 - A[j, 1, 1] * W1
            for a in range(2):
                Ga = G0 if a == 0 else G1
                for b in range(2):
                    s = AL[j, a, 0] * Minv[j, 0, b] + AL[j, a, 1] * Minv[j, 1, b]
                    gL[a, b] += 2.0 * s - 2.0 * w * Ga * (P0 if b == 0 else P1)
            if reml:
                for b in range(p):
                    WB[0, b] = l00 * S[j, 0, b]
                    WB[1, b] = l10 * S[j, 0, b] + l11 * S[j, 1, b]
                    for a in range(2):
                        GB[a, b] = B[j, a, b] - A[j, a, 0] * WB[0, b] - A[j, a, 1] * WB[1, b]
        else:
            for a in range(q):
                s = c[j, a]
                t = S[j, a, p]
                for b in range(p):
                    s -= B[j, a, b] * beta[b, 0]
                    t -= S[j, a, b] * beta[b, 0]
                u[a] = s
                Pu[a] = t
            for a in range(q):
                s = 0.0
                for t in range(q):
                    s += L[a, t] * Pu[t]
                Wu[a] = s
            for a in range(q):
                s = u[a]
                for t in range(q):
                    s -= A[j, a, t] * Wu[t]
                Gu[a] = s
            # 2 A_j Lambda M_j^{-1} - 2 w (G_j'u_j)(P_j u_j)'
            for a in range(q):
                for b in range(q):
                    s = 0.0
                    for t in range(q):
                        s += AL[j, a, t] * Minv[j, t, b]
                    gL[a, b] += 2.0 * s - 2.0 * w * Gu[a] * Pu[b]
            if reml:
                # with P_j B_j = S_jB: G_j'B_j = B_j - A_j Lambda S_jB
                for a in range(q):
                    for b in range(p):
                        s = 0.0
                        for t in range(q):
                            s += L[a, t] * S[j, t, b]
                        WB[a, b] = s
                for a in range(q):
                    for b in range(p):
                        s = B[j, a, b]
                        for t in range(q):
                            s -= A[j, a, t] * WB[t, b]
                        GB[a, b] = s
        if reml:
            # -2 (G_j'B_j) C (P_j B_j)'
            for a in range(q):
                for b in range(p):
                    s = 0.0
                    for t in range(p):
                        s += S[j, a, t] * C[t, b]
                    SC[a, b] = s
            for a in range(q):
                for b in range(q):
                    s = 0.0
                    for t in range(p):
                        s += GB[a, t] * SC[b, t]
                    gL[a, b] -= 2.0 * s
    for i in range(rows.shape[0]):
        g_out[i] = gL[rows[i], cols[i]]
    return d


@njit(cache=True, error_model="numpy")
def _chol_solve_group(Lc, n, S, j, m):
    """Solve (Lc Lc') Y = S[j, :n, :m] in place."""
    for col in range(m):
        for i in range(n):
            s = S[j, i, col]
            for k in range(i):
                s -= Lc[i, k] * S[j, k, col]
            S[j, i, col] = s * Lc[i, i]
        for i in range(n - 1, -1, -1):
            s = S[j, i, col]
            for k in range(i + 1, n):
                s -= Lc[k, i] * S[j, k, col]
            S[j, i, col] = s * Lc[i, i]


@njit(cache=True, error_model="numpy")
def _chol_inverse_group(Lc, n, out, j):
    """out[j] = (Lc Lc')^{-1}."""
    for a in range(n):
        for b in range(n):
            out[j, a, b] = 1.0 if a == b else 0.0
    _chol_solve_group(Lc, n, out, j, n)


@njit(cache=True, error_model="numpy")
def devgrad_many(theta, A, B, c, XtX, Xty, yty, N, rows, cols, reml, want_grad):
    """d and its gradient for R replicates: theta (R, P, k) at P points each; statistics with
    a leading replicate axis R. Returns d (R, P) and g (R, P, k)."""
    R, P, k = theta.shape
    d = np.empty((R, P))
    g = np.zeros((R, P, k))
    for r in range(R):
        for i in range(P):
            d[r, i] = devgrad_one(theta[r, i], A[r], B[r], c[r], XtX[r], Xty[r], yty[r], N[r],
                                  rows, cols, reml, want_grad, g[r, i])
    return d, g


@njit(cache=True, error_model="numpy")
def _ranef_q2(L, Minv, S, beta, U, V):
    """The EBLUPs U_j = Lambda P_j u_j into ``U`` (J, 2) and Lambda M_j^{-1} Lambda' into
    ``V`` (J, 2, 2) for q = 2: :func:`readout_many`'s general loop over groups written out
    on scalars, with the same operations (its own function: written inline in readout_many
    it made the read-out without EBLUPs about 0.1 us per replicate slower)."""
    J, p = S.shape[0], S.shape[2] - 1
    l00, l01, l10, l11 = L[0, 0], L[0, 1], L[1, 0], L[1, 1]
    for j in range(J):
        p0 = S[j, 0, p]
        for b in range(p):
            p0 -= S[j, 0, b] * beta[b, 0]
        p1 = S[j, 1, p]
        for b in range(p):
            p1 -= S[j, 1, b] * beta[b, 0]
        U[j, 0] = (0.0 + l00 * p0) + l01 * p1
        U[j, 1] = (0.0 + l10 * p0) + l11 * p1
        m00, m01, m10, m11 = Minv[j, 0, 0], Minv[j, 0, 1], Minv[j, 1, 0], Minv[j, 1, 1]
        lm00 = (0.0 + l00 * m00) + l01 * m10
        lm01 = (0.0 + l00 * m01) + l01 * m11
        lm10 = (0.0 + l10 * m00) + l11 * m10
        lm11 = (0.0 + l10 * m01) + l11 * m11
        V[j, 0, 0] = (0.0 + lm00 * l00) + lm01 * l01
        V[j, 0, 1] = (0.0 + lm00 * l10) + lm01 * l11
        V[j, 1, 0] = (0.0 + lm10 * l00) + lm11 * l01
        V[j, 1, 1] = (0.0 + lm10 * l10) + lm11 * l11


@njit(cache=True, error_model="numpy")
def readout_many(theta, A, B, c, XtX, Xty, yty, rows, cols, want_ranef):
    """What a fit reports at theta (R, k), per replicate: beta (R, p), C = XtVX^{-1}
    (R, p, p), r2 (R,) and, with ``want_ranef``, the EBLUPs in units of sigma
    U_j = Lambda M_j^{-1} Lambda' u_j (R, J, q), u_j = c_j - B_j beta, and
    Lambda M_j^{-1} Lambda' (R, J, q, q) (times sigma^2: their conditional covariance)."""
    R, J, q, p = B.shape[0], B.shape[1], B.shape[2], B.shape[3]
    betas = np.empty((R, p))
    C = np.empty((R, p, p))
    r2s = np.empty(R)
    U = np.zeros((R, J, q) if want_ranef else (R, 0, q))
    V = np.zeros((R, J, q, q) if want_ranef else (R, 0, q, q))
    L = np.empty((q, q))
    Minv = np.empty((J if want_ranef else 1, q, q))
    AL = np.empty((J if want_ranef else 1, q, q))
    S = np.empty((J, q, p + 1))
    XV = np.empty((p, p + 1))
    beta = np.empty((p, 1))
    Pu = np.empty(q)
    LM = np.empty((q, q))
    for r in range(R):
        _, _, r2 = _profile(theta[r], A[r], B[r], c[r], XtX[r], Xty[r], yty[r], rows, cols,
                            want_ranef, L, Minv, AL, S, XV, beta)
        r2s[r] = r2
        for a in range(p):
            betas[r, a] = beta[a, 0]
        _chol_inverse(XV, p, C[r])
        if not want_ranef:
            continue
        if q == 2:
            _ranef_q2(L, Minv, S, beta, U[r], V[r])
            continue
        for j in range(J):
            # P_j u_j = M_j^{-1} Lambda' u_j = S_jc - S_jB beta
            for a in range(q):
                t = S[j, a, p]
                for b in range(p):
                    t -= S[j, a, b] * beta[b, 0]
                Pu[a] = t
            for a in range(q):
                s = 0.0
                for t in range(q):
                    s += L[a, t] * Pu[t]
                U[r, j, a] = s
            for a in range(q):
                for b in range(q):
                    s = 0.0
                    for t in range(q):
                        s += L[a, t] * Minv[j, t, b]
                    LM[a, b] = s
            for a in range(q):
                for b in range(q):
                    s = 0.0
                    for t in range(q):
                        s += LM[a, t] * L[b, t]
                    V[r, j, a, b] = s
    return betas, C, r2s, U, V


@njit(cache=True, error_model="numpy")
def estimates_many(theta, A, B, c, XtX, Xty, yty, N, rows, cols, cs_rows, cs_cols, reml, grad,
                   hess, pd_rtol, singular_tol, want_ranef):
    """Everything a fit reports at its optimum theta (R, k), per replicate (see
    :mod:`mlmsim.engine.estimates` for the formulas): beta, vcov = sigma^2 XtVX^{-1},
    sigma2, T = sigma^2 Lambda Lambda', phi (T's elements ``cs_rows``/``cs_cols``, then
    sigma^2), the Hessian H in phi (:mod:`mlmsim.engine.phi_kernel`) with its eigenvalues,
    positive definiteness (smallest eigenvalue above ``pd_rtol`` times the largest absolute
    one) and Acov = 2 H^{-1} (nan unless positive definite); the gradient ``grad`` scaled by
    the Hessian in theta ``hess`` (H_theta^{-1} g, or g where that is singular); ``singular``
    (:func:`near_singular_one`); and with ``want_ranef`` the EBLUPs U_j and their
    conditional covariances sigma^2 Lambda M_j^{-1} Lambda'."""
    R, J, q, p = B.shape[0], B.shape[1], B.shape[2], B.shape[3]
    K = cs_rows.shape[0]
    m = K + 1
    k = rows.shape[0]
    betas, C, r2, U, V = readout_many(theta, A, B, c, XtX, Xty, yty, rows, cols, want_ranef)
    vcov = np.empty((R, p, p))
    sigma2 = np.empty(R)
    T = np.empty((R, q, q))
    phi = np.empty((R, m))
    H = np.empty((R, m, m))
    eig = np.empty((R, m))
    pd = np.zeros(R, dtype=np.bool_)
    acov = np.full((R, m, m), np.nan)
    scaled = np.empty((R, k))
    singular = np.empty(R, dtype=np.bool_)
    work = _workspace(J, q, p, K)
    L = np.empty((q, q))
    Hm = np.empty((m, m))
    X = np.empty((m, m))
    Mk = np.empty((k, k))
    gk = np.empty((k, 1))
    for r in range(R):
        s2 = r2[r] / (N[r] - p if reml else N[r])
        sigma2[r] = s2
        for a in range(p):
            for b in range(p):
                vcov[r, a, b] = s2 * 0.5 * (C[r, a, b] + C[r, b, a])
        _lambda(theta[r], rows, cols, q, L)
        for a in range(q):
            for b in range(q):
                t = 0.0
                for e in range(q):
                    t += L[a, e] * L[b, e]
                T[r, a, b] = s2 * t
        for i in range(K):
            phi[r, i] = T[r, cs_rows[i], cs_cols[i]]
        phi[r, K] = s2
        _hessian_into(A[r], B[r], c[r], XtX[r], Xty[r], yty[r], N[r], cs_rows, cs_cols, phi[r],
                      reml, work, H[r])
        finite = True
        for i in range(m):
            for j in range(m):
                if not math.isfinite(H[r, i, j]):
                    finite = False
        if finite:
            w = np.linalg.eigvalsh(H[r])
            big = 0.0
            for i in range(m):
                eig[r, i] = w[i]
                big = max(big, abs(w[i]))
            pd[r] = w[0] > pd_rtol * big
        else:
            for i in range(m):
                eig[r, i] = np.nan
        if pd[r]:
            for i in range(m):
                for j in range(m):
                    Hm[i, j] = H[r, i, j]
                    X[i, j] = 2.0 if i == j else 0.0
            if _solve(Hm, X):
                for i in range(m):
                    for j in range(m):
                        acov[r, i, j] = 0.5 * (X[i, j] + X[j, i])
        for i in range(k):
            gk[i, 0] = grad[r, i]
            for j in range(k):
                Mk[i, j] = hess[r, i, j]
        ok = _solve(Mk, gk)
        for i in range(k):
            v = gk[i, 0]
            scaled[r, i] = v if ok and math.isfinite(v) else grad[r, i]
        singular[r] = near_singular_one(theta[r], rows, cols, singular_tol)
    return (betas, vcov, sigma2, T, phi, H, eig, pd, acov, scaled, singular, U, V)


# ---------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def moment_start_one(A, B, c, XtX, Xty, yty, N, n, rows, cols, theta0):
    """A method-of-moments start for theta, written to ``theta0`` (k,).

    With OLS residual effects u_j = c_j - B_j beta_OLS and, for groups whose
    correlation-scaled A_j has determinant above 1e-8 and n_j >= q, the per-group
    least-squares coefficients b_j = A_j^{-1} u_j (covariance about T + sigma^2 A_j^{-1}):

        sigma0^2 = (r'r - sum_j u_j' b_j) / (N - q #groups used)
        T0       = cov_j(b_j) - sigma0^2 mean_j(A_j^{-1})    (zero outside T's blocks)

    theta0 is read off the Cholesky factor of T0 / sigma0^2 with its eigenvalues clipped
    to [1e-2, 1e2] (a start, not an estimate). Where fewer than two groups qualify, or the
    result is not finite: lme4's start, Lambda = I.
    """
    J, q, p = B.shape[0], B.shape[1], B.shape[2]
    k = rows.shape[0]
    for i in range(k):
        theta0[i] = 1.0 if rows[i] == cols[i] else 0.0
    XL = XtX.copy()
    beta = np.empty((p, 1))
    for a in range(p):
        beta[a, 0] = Xty[a]
    if math.isnan(_chol(XL, p)):
        return
    _chol_solve(XL, p, beta, 1)
    rr = yty
    for a in range(p):
        rr -= beta[a, 0] * Xty[a]
    b = np.zeros((J, q))
    ok = np.zeros(J, dtype=np.bool_)
    Ainv_sum = np.zeros((q, q))
    Cs = np.empty((q, q))
    Ci = np.empty((q, q))
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
                Cs[a, t] = A[j, a, t] / (d[a] * d[t])
        ld = _chol(Cs, q)
        if not ld > math.log(1e-8):
            continue
        _chol_inverse(Cs, q, Ci)
        for a in range(q):
            s = c[j, a]
            for t in range(p):
                s -= B[j, a, t] * beta[t, 0]
            u[a] = s
        for a in range(q):
            s = 0.0
            for t in range(q):
                v = Ci[a, t] / (d[a] * d[t])
                Ainv_sum[a, t] += v
                s += v * u[t]
            b[j, a] = s
            ub += u[a] * s
        ok[j] = True
        nok += 1
    if nok < 2:
        return
    dof = max(N - q * nok, 1.0)
    s2 = max((rr - ub) / dof, 1e-12 * max(rr, 1e-300) / max(N, 1.0))
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
        w[a] = min(max(w[a], 1e-2), 1e2)
    rel = np.zeros((q, q))
    for a in range(q):
        for t in range(q):
            s = 0.0
            for e in range(q):
                s += V[a, e] * w[e] * V[t, e]
            rel[a, t] = s
    if math.isnan(_chol(rel, q)):
        return
    for i in range(k):
        v = rel[rows[i], cols[i]]
        if rows[i] == cols[i]:
            v = 1.0 / v  # _chol keeps the reciprocal of the factor's diagonal
        if not math.isfinite(v):
            for i2 in range(k):
                theta0[i2] = 1.0 if rows[i2] == cols[i2] else 0.0
            return
        theta0[i] = v


# ---------------------------------------------------------------------------
# the optimiser
# ---------------------------------------------------------------------------


@njit(cache=True, error_model="numpy")
def _fd_hessian(theta, f_g, A, B, c, XtX, Xty, yty, N, rows, cols, reml, H):
    """Forward differences of the analytic gradient: H_i = (g(theta + h_i e_i) - g) / h_i,
    h_i = 1e-6 (1 + |theta_i|), symmetrised. Returns d(theta) and writes g to ``f_g``."""
    k = theta.shape[0]
    f = devgrad_one(theta, A, B, c, XtX, Xty, yty, N, rows, cols, reml, True, f_g)
    gt = np.empty(k)
    t = theta.copy()
    for i in range(k):
        h = 1e-6 * (1.0 + abs(theta[i]))
        t[i] = theta[i] + h
        devgrad_one(t, A, B, c, XtX, Xty, yty, N, rows, cols, reml, True, gt)
        t[i] = theta[i]
        for j in range(k):
            H[i, j] = (gt[j] - f_g[j]) / h
    for i in range(k):
        for j in range(i):
            v = 0.5 * (H[i, j] + H[j, i])
            H[i, j] = v
            H[j, i] = v
    return f


@njit(cache=True, error_model="numpy")
def _curvature(H, Babs, v_neg):
    """|H| (eigenvalues by absolute value, floored at 1e-8 of the largest) into ``Babs``, the
    eigenvector of the smallest eigenvalue into ``v_neg``; returns (lam_min / scale, lam_min).
    A non-finite H gives the identity and (0, 0)."""
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
                s += V[a, e] * max(abs(w[e]), 1e-8 * scale) * V[b, e]
            Babs[a, b] = s
        v_neg[a] = V[a, 0]
    return w[0] / scale, w[0]


@njit(cache=True, error_model="numpy")
def _direction(g, Bm, p):
    """p = -B^{-1} g for positive definite B; returns the decrement g'B^{-1}g (inf when B
    is not positive definite)."""
    k = g.shape[0]
    Lc = Bm.copy()
    if math.isnan(_chol(Lc, k)):
        for i in range(k):
            p[i] = -g[i]
        return np.inf
    X = np.empty((k, 1))
    for i in range(k):
        X[i, 0] = g[i]
    _chol_solve(Lc, k, X, 1)
    dec = 0.0
    for i in range(k):
        p[i] = -X[i, 0]
        dec += g[i] * X[i, 0]
    return dec


@njit(cache=True, error_model="numpy")
def _stationary(g, dec, tol, gtol):
    gmax = 0.0
    for i in range(g.shape[0]):
        gmax = max(gmax, abs(g[i]))
    return dec < tol or gmax < gtol


@njit(cache=True, error_model="numpy")
def _near_edge(theta, rows, cols, edge):
    for i in range(theta.shape[0]):
        if rows[i] == cols[i] and abs(theta[i]) < edge:
            return True
    return False


@njit(cache=True, error_model="numpy")
def _canonical(theta, rows, cols, g, H):
    """Reflect columns of Lambda with a negative diagonal (Lambda Lambda' is unchanged);
    the gradient and Hessian transform as D g and D H D, D = diag(signs)."""
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
def _minimize(theta, A, B, c, XtX, Xty, yty, N, rows, cols, reml, max_iter, tol, gtol,
              max_step, edge, g_out, H_out):
    """Minimise from ``theta`` (updated in place); returns (deviance, iterations, converged)
    and writes the gradient and Hessian (exact where last recomputed, else BFGS) there."""
    k = theta.shape[0]
    g = np.empty(k)
    H = np.empty((k, k))
    Bm = np.empty((k, k))
    v_neg = np.empty(k)
    p = np.empty(k)
    trial = np.empty(k)
    g_new = np.empty(k)
    f = _fd_hessian(theta, g, A, B, c, XtX, Xty, yty, N, rows, cols, reml, H)
    lam_rel, lam_min = _curvature(H, Bm, v_neg)
    exact = True
    converged = False
    it = 0
    while True:
        dec = _direction(g, Bm, p)
        stationary = _stationary(g, dec, tol, gtol)
        if stationary and not exact and _near_edge(theta, rows, cols, edge):
            # near the edge judge convergence on the exact Hessian, never on BFGS
            f = _fd_hessian(theta, g, A, B, c, XtX, Xty, yty, N, rows, cols, reml, H)
            lam_rel, lam_min = _curvature(H, Bm, v_neg)
            exact = True
            dec = _direction(g, Bm, p)
            stationary = _stationary(g, dec, tol, gtol)
        saddle = stationary and exact and lam_rel < -1e-5
        if stationary and not saddle:
            converged = True
            break
        if it == max_iter:
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
        # at the deviance's rounding floor (decrement below 1e-6, away from the edge
        # where the boundary optimum is approached slowly) a Newton step is taken whole
        # or not at all: halving it further only spends evaluations on noise
        floor = dec < 1e-6 and not saddle and not _near_edge(theta, rows, cols, edge)
        halvings = 3 if floor else 40
        for _ls in range(halvings):
            for i in range(k):
                trial[i] = theta[i] + alpha * p[i]
            ft = devgrad_one(trial, A, B, c, XtX, Xty, yty, N, rows, cols, reml, True, g_new)
            if math.isfinite(ft) and ft <= f + 1e-4 * alpha * slope:
                accepted = True
                f_new = ft
                for i in range(k):
                    theta[i] = trial[i]
                break
            alpha *= 0.5
        it += 1
        if accepted:
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
            if sy > 1e-10 * math.sqrt(sBs * yy) and sBs > 0.0:
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
            converged = dec < 1e-6
            break
        else:
            # a failed line search on the BFGS matrix is retried with the exact Hessian
            f = _fd_hessian(theta, g, A, B, c, XtX, Xty, yty, N, rows, cols, reml, H)
            lam_rel, lam_min = _curvature(H, Bm, v_neg)
            exact = True
    for i in range(k):
        g_out[i] = g[i]
        for j in range(k):
            H_out[i, j] = H[i, j] if exact else Bm[i, j]
    _canonical(theta, rows, cols, g_out, H_out)
    return f, it, converged


@njit(cache=True, error_model="numpy")
def near_singular_one(theta, rows, cols, tol):
    """Lambda Lambda' = T / sigma^2 has an eigenvalue below ``tol``, or a diagonal element
    of Lambda is below sqrt(tol) (lme4's isSingular rule)."""
    q = 0
    for i in range(rows.shape[0]):
        q = max(q, rows[i] + 1)
    L = np.empty((q, q))
    _lambda(theta, rows, cols, q, L)
    for i in range(rows.shape[0]):
        if rows[i] == cols[i] and abs(theta[i]) < math.sqrt(tol):
            return True
    LLt = L @ L.T
    w = np.linalg.eigvalsh(LLt)
    return w[0] < tol


@njit(cache=True, error_model="numpy")
def minimize_one(A, B, c, XtX, Xty, yty, N, n, rows, cols, reml, theta0, use_start, max_iter,
                 tol, gtol, max_step, edge, singular_tol, theta, g, H):
    """Fit one replicate: writes theta, gradient and Hessian; returns (deviance, iterations,
    converged).

    With ``use_start`` the optimiser starts at ``theta0`` and that is all. Otherwise it
    starts from :func:`moment_start_one`, and a fit that ends singular or not converged is
    fitted again from lme4's start (Lambda = I); the lower deviance is kept (or the
    converged fit, at an equal deviance).
    """
    k = rows.shape[0]
    if use_start:
        for i in range(k):
            theta[i] = theta0[i]
    else:
        moment_start_one(A, B, c, XtX, Xty, yty, N, n, rows, cols, theta)
    f, it, conv = _minimize(theta, A, B, c, XtX, Xty, yty, N, rows, cols, reml, max_iter,
                            tol, gtol, max_step, edge, g, H)
    if use_start or (conv and not near_singular_one(theta, rows, cols, singular_tol)):
        return f, it, conv
    t2 = np.empty(k)
    for i in range(k):
        t2[i] = 1.0 if rows[i] == cols[i] else 0.0
    g2 = np.empty(k)
    H2 = np.empty((k, k))
    f2, it2, conv2 = _minimize(t2, A, B, c, XtX, Xty, yty, N, rows, cols, reml, max_iter,
                               tol, gtol, max_step, edge, g2, H2)
    margin = 1e-10 * abs(f)
    if f2 < f - margin or (conv2 and not conv and f2 <= f + margin):
        for i in range(k):
            theta[i] = t2[i]
            g[i] = g2[i]
            for j in range(k):
                H[i, j] = H2[i, j]
        return f2, it2, conv2
    return f, it, conv


@njit(cache=True, error_model="numpy")
def minimize_many(A, B, c, XtX, Xty, yty, N, n, rows, cols, reml, theta0, use_start, max_iter,
                  tol, gtol, max_step, edge, singular_tol):
    """:func:`minimize_one` for each of R replicates (leading axis of every statistic;
    theta0 (R, k)). Returns theta (R, k), deviance (R,), gradient (R, k), Hessian
    (R, k, k), iterations (R,), converged (R,)."""
    R = A.shape[0]
    k = rows.shape[0]
    theta = np.empty((R, k))
    dev = np.empty(R)
    g = np.empty((R, k))
    H = np.empty((R, k, k))
    iters = np.empty(R, dtype=np.int64)
    conv = np.empty(R, dtype=np.bool_)
    for r in range(R):
        f, it, cv = minimize_one(A[r], B[r], c[r], XtX[r], Xty[r], yty[r], N[r], n[r], rows,
                                 cols, reml, theta0[r], use_start, max_iter, tol, gtol,
                                 max_step, edge, singular_tol, theta[r], g[r], H[r])
        dev[r] = f
        iters[r] = it
        conv[r] = cv
    return theta, dev, g, H, iters, conv


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _dot(u, v):
    """sum_i u[i] v[i] over two 1-d arrays (reassociated, so the compiler vectorises it)."""
    acc = 0.0
    for i in range(u.shape[0]):
        acc += u[i] * v[i]
    return acc


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _sum(u):
    """sum_i u[i] (reassociated, as :func:`_dot`)."""
    acc = 0.0
    for i in range(u.shape[0]):
        acc += u[i]
    return acc


@njit(cache=True, error_model="numpy")
def _all_ones(w):
    for i in range(w.shape[0]):
        if w[i] != 1.0:
            return False
    return True


@njit(cache=True, error_model="numpy")
def group_sums_one(y, VX, xterms, VZ, zterms, order, ordered, starts, centre, W, A, B, c, XtX,
                   Xty, m):
    """One data set's A_j = Z_j'Z_j, B_j = Z_j'X_j, c_j = Z_j'y_j, X'X, X'y and y'y.

    y (N,); the design columns are products of variables (:mod:`mlmsim.terms`): X's p
    columns of VX (N, kx) by ``xterms`` (p, s), Z's q columns of VZ (N, kz) by
    ``zterms`` (q, s) (a plain X is VX = X with xterms = [[0], [1], ...]).
    ``order`` (N,) lists the rows group by group, group j being order[starts[j]:
    starts[j + 1]] (``starts`` (J + 1,)); ``ordered``: order is the identity (rows
    already sorted by group). With ``centre``, the statistics are those of
    y - ybar and X - 1 m' (m = column means, 0 for the first all-ones column, the
    intercept; no shift at all without one): see :class:`mlmsim.engine.stats.Centering`.

    The columns [Z, X, y] are laid out once in the buffer W (q + p + 1, N) in group
    order, and every statistic is a dot product of two of its rows over a group's rows
    (or all rows), which vectorises: about N (q + p + 1)(q + p + 2) / 2 multiply-adds.
    Writes A (J, q, q),
    B (J, q, p), c (J, q), XtX (p, p), Xty (p,), m (p,); returns (y'y, ybar, i0), i0
    the intercept column (-1 when none, or without ``centre``).
    """
    N = y.shape[0]
    p = xterms.shape[0]
    q = zterms.shape[0]
    J = starts.shape[0] - 1
    fill_terms(W, 0, VZ, zterms, order, ordered)
    fill_terms(W, q, VX, xterms, order, ordered)
    ky = q + p
    wy = W[ky]
    for i in range(N):
        wy[i] = y[i] if ordered else y[order[i]]
    i0 = -1
    if centre:
        for t in range(p):
            if _all_ones(W[q + t]):
                i0 = t
                break
    ybar = 0.0
    for t in range(p):
        m[t] = 0.0
    if i0 >= 0:
        ybar = _sum(wy) / N
        for i in range(N):
            wy[i] -= ybar
        for t in range(p):
            if t != i0:
                w = W[q + t]
                m[t] = _sum(w) / N
                for i in range(N):
                    w[i] -= m[t]
    for j in range(J):
        s, e = starts[j], starts[j + 1]
        wy_j = wy[s:e]
        for a in range(q):
            wa = W[a, s:e]
            for b in range(a + 1):
                v = _dot(wa, W[b, s:e])
                A[j, a, b] = v
                A[j, b, a] = v
            for b in range(p):
                B[j, a, b] = _dot(wa, W[q + b, s:e])
            c[j, a] = _dot(wa, wy_j)
    for a in range(p):
        wa = W[q + a]
        for b in range(a + 1):
            v = _dot(wa, W[q + b])
            XtX[a, b] = v
            XtX[b, a] = v
        Xty[a] = _dot(wa, wy)
    return _dot(wy, wy), ybar, i0


@njit(cache=True, error_model="numpy")
def dependence_screen(A, n):
    """Per replicate: could the random-effect columns be dependent in every group? True when
    every group with n_j >= q (every non-empty group, if none has q rows) has a
    correlation-scaled A_j (unit diagonal, determinant in [0, 1]) with determinant below
    1e-6. A (R, J, q, q), n (R, J). Only these replicates need an eigen-decomposition."""
    R, J, q = A.shape[0], A.shape[1], A.shape[2]
    out = np.zeros(R, dtype=np.bool_)
    Cs = np.empty((q, q))
    d = np.empty(q)
    for r in range(R):
        any_big = False
        for j in range(J):
            if n[r, j] >= q:
                any_big = True
                break
        least = q if any_big else 1
        cand = False
        for j in range(J):
            if n[r, j] < least:
                continue
            for a in range(q):
                d[a] = math.sqrt(max(A[r, j, a, a], 1e-300))
            for a in range(q):
                for b in range(q):
                    Cs[a, b] = A[r, j, a, b] / (d[a] * d[b])
            ld = _chol(Cs, q)
            if not math.isnan(ld) and ld >= math.log(1e-6):
                cand = False
                break
            cand = True
        out[r] = cand
    return out
