"""Compiled profiled deviance, its gradient in theta, and the read-out at an optimum.

Every function here runs the one GLS core of :mod:`mlmsim.engine.gls` (docs/math.md
section 3) and adds what its quantity needs:

- :func:`deviance_one` -- the profiled deviance d(theta) (ML, docs/math.md (4.1)) or
  REML criterion d_R(theta) (4.2), and its analytic gradient in theta (5.1)-(5.4);
- :func:`estimates_many` -- everything a fit reports at its optimum: estimates, the
  Hessian in phi (:mod:`mlmsim.engine.phi_kernel`), the flags of docs/math.md
  section 9, and the EBLUPs.

Statistics travel as a :class:`mlmsim.engine.gls.Stats` namedtuple (batched: a leading
replicate axis R); ``rows``, ``cols`` (k,) say where theta sits in Lambda.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from mlmsim.engine.gls import (
    gls_finish,
    gls_pass,
    lambda_theta,
    q_of,
    replicate,
    workspace,
)
from mlmsim.engine.linalg import (
    ldl,
    ldl_inverse_at,
    ldl_solve_at,
    ldl_solve_cols,
    lu_solve,
    matmul,
    scaled_eigh,
    scaled_inverse,
)
from mlmsim.engine.phi_kernel import no_info, phi_terms, phi_workspace
from mlmsim.engine.tolerances import DEPENDENT_EIG, GRAD_CHECK, HESSIAN_PD
from mlmsim.engine.unroll import by_q, specialise

__all__ = ["deviance_one", "deviance_many", "estimates_many", "singular_one", "acov_many"]

_LOG2PI = math.log(2.0 * math.pi)


@njit(cache=True, error_model="numpy")
def deviance_one_any(theta, st, rows, cols, reml, want_grad, g_out, w, qc):
    """d(theta) (ML, docs/math.md (4.1)) or d_R(theta) (REML, (4.2)) for one replicate;
    with ``want_grad`` the gradient in theta ((5.4)) is written to ``g_out`` (k,).
    ``w``: a :func:`mlmsim.engine.gls.workspace`; ``qc``: :func:`mlmsim.engine.gls.qtoken`.
    Returns nan where some M_j or XtVX is not positive definite, or r2 <= 0."""
    B, c = st.B, st.c
    J, p = B.shape[0], B.shape[2]
    q = q_of(qc, B.shape[1])
    L = w.L
    lambda_theta(theta, rows, cols, L, w.s)
    logdetM, ok = gls_pass(st, L, w.s, w, want_grad, qc)
    if not ok:
        return np.nan
    ldX, r2 = gls_finish(st, w)
    if math.isnan(r2) or math.isnan(ldX):
        return np.nan
    nu = st.N - p if reml else st.N
    d = logdetM + nu * (1.0 + _LOG2PI + math.log(r2 / nu))
    if reml:
        d += ldX
    if not want_grad:
        return d
    beta, S = w.beta, w.S
    # (5.4): gL = (5.1) + (nu / r2) (5.2) [+ (5.3)], with C = XtVX^{-1}
    C = np.empty((1, p, p))
    if reml:
        ldl_inverse_at(w.XV, 0, p, C, 0)
    gL = np.zeros((q, q))
    u = np.empty(q)
    Pu = np.empty(q)
    Gu = np.empty(q)
    Minv = np.empty((1, q, q))
    GB = np.empty((q, p))
    SC = np.empty((q, p))
    wt = nu / r2
    AL, F = w.AL, w.F
    for j in range(J):
        # u_j = c_j - B_j beta, P_j u_j = S_jc - S_jB beta
        for a in range(q):
            s = c[j, a]
            t = S[j, a, p]
            for b in range(p):
                s -= B[j, a, b] * beta[0, b, 0]
                t -= S[j, a, b] * beta[0, b, 0]
            u[a] = s
            Pu[a] = t
        # G_j u_j = u_j - A_j Lambda P_j u_j = u_j - A_j D_j u_j
        for a in range(q):
            s = u[a]
            for t in range(q):
                s -= AL[j, a, t] * Pu[t]
            Gu[a] = s
        ldl_inverse_at(F, j, q, Minv, 0)
        # (5.1) 2 A_j Lambda M_j^{-1}  and  (5.2) -2 (G_j u_j)(P_j u_j)', the lower
        # triangle only: theta sits there (Lambda is lower triangular, ThetaMap)
        for a in range(q):
            for b in range(a + 1):
                s = 0.0
                for t in range(q):
                    s += AL[j, a, t] * Minv[0, t, b]
                gL[a, b] += 2.0 * s - 2.0 * wt * Gu[a] * Pu[b]
        if reml:
            # (5.3) -2 (G_j B_j) C (P_j B_j)', P_j B_j = S_jB, G_j B_j = B_j - A_j Lambda S_jB
            for a in range(q):
                for b in range(p):
                    s = B[j, a, b]
                    for t in range(q):
                        s -= AL[j, a, t] * S[j, t, b]
                    GB[a, b] = s
                    acc = 0.0
                    for t in range(p):
                        acc += S[j, a, t] * C[0, t, b]
                    SC[a, b] = acc
            for a in range(q):
                for b in range(a + 1):
                    s = 0.0
                    for t in range(p):
                        s += GB[a, t] * SC[b, t]
                    gL[a, b] -= 2.0 * s
    for i in range(rows.shape[0]):
        g_out[i] = gL[rows[i], cols[i]]
    return d


deviance_one_q2 = specialise(deviance_one_any, {"q": 2}, "deviance_one_q2", (),
                             (ldl_inverse_at, ldl_solve_at, ldl_solve_cols))
deviance_one = by_q(deviance_one_any, deviance_one_q2, "deviance_one")


@njit(cache=True, error_model="numpy")
def deviance_many(theta, st, rows, cols, reml, want_grad, qc):
    """:func:`deviance_one` for R replicates at P points each: theta (R, P, k), batched
    statistics. Returns d (R, P) and the gradient (R, P, k).
    (docs/math.md (4.1), (5.4))"""
    R, P, k = theta.shape
    J, q, p = st.B.shape[1], st.B.shape[2], st.B.shape[3]
    w = workspace(J, q, p)
    d = np.empty((R, P))
    g = np.zeros((R, P, k))
    for r in range(R):
        one = replicate(st, r)
        for i in range(P):
            d[r, i] = deviance_one(theta[r, i], one, rows, cols, reml, want_grad, g[r, i], w,
                                   qc)
    return d, g


@njit(cache=True, error_model="numpy")
def singular_one(L, A, N):
    """docs/math.md (9.2): the smallest eigenvalue of T (Z'Z / N) / sigma^2 = Lambda Lambda'
    (Z'Z / N) on the column space of Z (Z'Z = sum_j A_j); T-hat is singular when it is below
    SINGULAR. Invariant to the units of y and to any linear recoding of Z's columns.

    Computed from Lambda, not from T (whose rounding, after a shift of a predictor, can
    exceed the quantity itself), as the squared smallest singular value of W Lambda with
    W'W = Z'Z / N: W the transposed Cholesky factor, or, where Z's columns are dependent
    (intercept + female + male), diag(ev_r)^{1/2} E_r' from the eigenvalues ev_r of Z'Z / N
    above DEPENDENT_EIG times the largest."""
    J, q = A.shape[0], A.shape[1]
    ZZ = np.zeros((q, q))
    for j in range(J):
        for a in range(q):
            for b in range(q):
                ZZ[a, b] += A[j, a, b] / N
    F = ZZ.copy()
    ld, neg = ldl(F, q)
    full = not math.isnan(ld) and neg == 0
    if full:
        for a in range(q):
            if not 1.0 / F[a, a] ** 2 > DEPENDENT_EIG * ZZ[a, a]:
                full = False
    if full:
        # W = L', L the Cholesky factor in F (1 / L_ii on the diagonal)
        W = np.zeros((q, q))
        for a in range(q):
            for b in range(a, q):
                W[a, b] = 1.0 / F[a, a] if a == b else F[b, a]
    else:
        ev, E = np.linalg.eigh(ZZ)
        top = max(ev[q - 1], 1e-300)
        nr = 0
        for e in range(q):
            if ev[e] > DEPENDENT_EIG * top:
                nr += 1
        if nr == 0:
            return np.nan
        W = np.zeros((nr, q))
        for a in range(nr):
            e = q - nr + a
            for b in range(q):
                W[a, b] = math.sqrt(ev[e]) * E[b, e]
    if full and q == 1:
        v = W[0, 0] * L[0, 0]  # the 1 x 1 case of the SVD below
        return v * v
    if full and q == 2:
        # M = W Lambda (2 x 2): sigma_max^2 = (|M|_F^2 + sqrt(|M|_F^4 - 4 det^2)) / 2 and
        # sigma_min^2 = det^2 / sigma_max^2, with det = det(W) det(Lambda) (no
        # cancellation: W is triangular); as the SVD gives it, without LAPACK's overhead
        fro = 0.0
        for a in range(2):
            for b in range(2):
                v = W[a, 0] * L[0, b] + W[a, 1] * L[1, b]
                fro += v * v
        det = W[0, 0] * W[1, 1] * (L[0, 0] * L[1, 1] - L[0, 1] * L[1, 0])
        top = 0.5 * (fro + math.sqrt(max(fro * fro - 4.0 * det * det, 0.0)))
        return det * det / top if top > 0.0 else 0.0
    WL = np.zeros((W.shape[0], q))
    matmul(WL, W, L, W.shape[0], q, q)
    sv = np.linalg.svd(WL)[1]
    return sv[sv.shape[0] - 1] ** 2


@njit(cache=True, error_model="numpy")
def estimates_many(theta, st, rows, cols, cs_rows, cs_cols, reml, grad, hess, want_ranef, qc):
    """Everything a fit reports at its optimum theta (R, k), per replicate
    (:mod:`mlmsim.engine.estimates`), from one pass of the GLS core and one loop over the
    groups (:func:`mlmsim.engine.phi_kernel.phi_terms` at Lambda from theta, sigma^2
    profiled): beta, vcov = sigma^2 XtVX^{-1} (8.1), sigma2 (4.3), T = sigma^2 Lambda
    Lambda', phi (T's elements ``cs_rows``/``cs_cols``, then sigma^2), the Hessian H in phi
    (6.3) with the eigenvalues of its correlation form, positive definiteness (9.1) and
    Acov = 2 H^{-1} (6.5) (nan unless positive definite); the gradient ``grad`` scaled by
    the Hessian in theta ``hess`` (H_theta^{-1} g, or g where that is singular), with
    theta's rows scaled by the root mean square of Z's columns, theta~_k = theta_k
    sqrt(zscale[rows[k]]), so that the check (9.4) does not depend on the units of Z (a
    diagonal scaling, not the full standardisation of (7.1)) and whether its largest
    magnitude is within GRAD_CHECK; ``zscale`` = diag(Z'Z) / N;
    the smallest eigenvalue of T (Z'Z/N) / sigma^2 (9.2); and with ``want_ranef`` the
    EBLUPs U_j = D_j u_j and D_j (8.2)."""
    R, J, q, p = st.B.shape[0], st.B.shape[1], st.B.shape[2], st.B.shape[3]
    K = cs_rows.shape[0]
    m = K + 1
    k = rows.shape[0]
    betas = np.full((R, p), np.nan)
    vcov = np.full((R, p, p), np.nan)
    sigma2 = np.full(R, np.nan)
    T = np.full((R, q, q), np.nan)
    phi = np.full((R, m), np.nan)
    H = np.full((R, m, m), np.nan)
    eig = np.full((R, m), np.nan)
    pd = np.zeros(R, dtype=np.bool_)
    acov = np.full((R, m, m), np.nan)
    scaled = np.empty((R, k))
    grad_ok = np.empty(R, dtype=np.bool_)
    zscale = np.zeros((R, q))
    smallest = np.full(R, np.nan)
    U = np.full((R, J, q) if want_ranef else (R, 0, q), np.nan)
    V = np.full((R, J, q, q) if want_ranef else (R, 0, q, q), np.nan)
    pw = phi_workspace(J, q, p, K)
    none = no_info(m, p)
    L = pw.gls.L
    d = np.empty(m)
    Mk = np.empty((k, k))
    gk = np.empty((k, 1))
    f = np.empty(1)
    g = np.empty(m)
    C = np.empty((p, p))
    dC = np.empty((0, p, p))
    for r in range(R):
        one = replicate(st, r)
        for i in range(k):
            gk[i, 0] = grad[r, i]
            for j in range(k):
                Mk[i, j] = hess[r, i, j]
        ok = lu_solve(Mk, gk)
        for a in range(q):
            for j in range(J):
                zscale[r, a] += one.A[j, a, a]
            zscale[r, a] /= one.N
        top = 0.0
        for i in range(k):
            v = gk[i, 0]
            z = zscale[r, rows[i]]
            scaled[r, i] = (v if ok and math.isfinite(v) else grad[r, i]) * (
                math.sqrt(z) if z > 0 else 1.0)
            top = max(top, abs(scaled[r, i]))
        grad_ok[r] = top <= GRAD_CHECK
        lambda_theta(theta[r], rows, cols, L, pw.gls.s)
        s2 = phi_terms(one, cs_rows, cs_cols, np.nan, reml, False, pw, f, g, H[r], C,
                       dC, U[r] if want_ranef else pw.U[:0], none, qc)
        if math.isnan(s2):
            continue
        sigma2[r] = s2
        for a in range(p):
            betas[r, a] = pw.wp[5][a]
            for b in range(p):
                vcov[r, a, b] = 0.5 * (C[a, b] + C[b, a])
        for a in range(q):
            for b in range(q):
                t = 0.0
                for e in range(q):
                    t += L[a, e] * L[b, e]
                T[r, a, b] = s2 * t
        for i in range(K):
            phi[r, i] = T[r, cs_rows[i], cs_cols[i]]
        phi[r, K] = s2
        if want_ranef:
            for j in range(J):
                for a in range(q):
                    for b in range(q):
                        V[r, j, a, b] = pw.D[j, a, b]
        pd[r] = acov_one(H[r], d, eig[r], acov[r])
        smallest[r] = singular_one(L, one.A, one.N)
    return (betas, vcov, sigma2, T, phi, H, eig, pd, acov, scaled, grad_ok, zscale, smallest,
            U, V)


@njit(cache=True, error_model="numpy")
def acov_one(H, d, w, out):
    """docs/math.md (9.1) and (6.5): whether H is positive definite (the smallest eigenvalue
    of its correlation form D^{-1/2} H D^{-1/2} exceeds HESSIAN_PD; the eigenvalues into
    ``w``, diag(H)^{-1/2} into ``d``), and where it is, 2 H^{-1} into ``out``, computed in
    that form (left as it is otherwise)."""
    if not scaled_eigh(H, d, w) or not w[0] > HESSIAN_PD:
        return False
    scaled_inverse(H, d, 2.0, out)
    return True


@njit(cache=True, error_model="numpy")
def acov_many(H):
    """:func:`acov_one` for each H (R, m, m): 2 H^{-1} (R, m, m) (NaN where H is not
    positive definite in its correlation form), the eigenvalues of that form (R, m) and
    whether it is positive definite (R,)."""
    R, m = H.shape[0], H.shape[1]
    out = np.full((R, m, m), np.nan)
    eig = np.full((R, m), np.nan)
    pd = np.zeros(R, dtype=np.bool_)
    d = np.empty(m)
    for r in range(R):
        pd[r] = acov_one(H[r], d, eig[r], out[r])
    return out, eig, pd
