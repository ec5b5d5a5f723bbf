"""Compiled objective, gradient and observed Hessian in phi, and dC/dphi, per replicate.

phi = (T[rows[k], cols[k]] for k < K, sigma^2), E_k = dT/dphi_k (symmetric 0/1),
V_j = Z_j T Z_j' + sigma^2 I, any symmetric T with every V_j positive definite.
:func:`phi_pass` runs the one GLS core (:mod:`mlmsim.engine.gls`) with the signed root of
Psi = T / sigma^2 (docs/math.md (3.1)), which gives D_j (3.4), beta and C, then one more
loop over groups for the terms of

- the objective f(phi) / f_R(phi), docs/math.md (6.1);
- its gradient, (6.2);
- the observed Hessian H = -T1 + 2 T2 - 2 T3 [+ 2 T4 - T5 for REML], (6.3), reduced
  per group with G_j = I - A_j D_j and the power recursions of (6.4);
- and, on request, dC/dphi_k = C M_k C (10.2), the derivatives of the fixed effects'
  covariance C = (X'V^{-1}X)^{-1} that Satterthwaite's df need.

Per group, with u_j = c_j - B_j beta: Q_j = G_j A_j / sigma^2, s_j = G_j u_j / sigma^2,
F_j = G_j B_j / sigma^2 (Z_j'V_j^{-1}Z_j, Z_j'V_j^{-1}r_j, Z_j'V_j^{-1}X_j), and
Q2_j, s2_j, F2_j with G_j^2 / sigma^4. The T-T block of H is accumulated as
sum_j tr(P_j E_k Q_j E_l) with P_j = -Q_j + 2 s_j s_j' (+ 2 F_j C F_j' for REML).
Groups with n_j = 0 (padding) are skipped. Where some V_j or X'V^{-1}X is not positive
definite, every output is nan.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from mlmsim.engine.gls import (
    gls_finish,
    gls_pass,
    group_D,
    lambda_psi,
    q_of,
    replicate,
    workspace,
)
from mlmsim.engine.linalg import add_outer, ldl_inverse_at, matmul, symmetrise
from mlmsim.engine.unroll import by_q, specialise

__all__ = ["phi_pass", "phi_terms", "phi_workspace", "phi_many",
           "phi_at_theta_many"]

_LOG2PI = math.log(2.0 * math.pi)

PhiWork = namedtuple("PhiWork", ["gls", "D", "Psi", "wqq", "wqp", "wpp", "wp", "W4",
                                 "Wf", "FF", "W", "CM", "U", "W4E", "FQF", "FF2"])


PhiInfo = namedtuple("PhiInfo", ["HE", "MK", "QK"])
PhiInfo.__doc__ = """The second-order terms beyond the observed Hessian, for one replicate: the
expected Hessian HE (m, m) of docs/math.md (6.6), M_k = X'V^{-1}V_kV^{-1}X as MK (m, p, p)
and Q_kl = X'V^{-1}V_kV^{-1}V_lV^{-1}X as QK (m, m, p, p) (12.1). An array with a leading
size of 0 is not wanted (HE: no expected Hessian; QK: neither MK nor QK)."""


@njit(cache=True)
def no_info(m, p):
    """A :class:`PhiInfo` that asks for nothing."""
    return PhiInfo(np.empty((0, m)), np.empty((0, p, p)), np.empty((0, m, p, p)))


@njit(cache=True)
def phi_workspace(J, q, p, K):
    """Work arrays for :func:`phi_pass`, allocated once per call of a batch driver."""
    m = K + 1
    return PhiWork(workspace(J, q, p), np.empty((J, q, q)), np.empty((q, q)),
                   np.empty((9, q, q)), np.empty((5, q, p)),
                   np.empty((7, p, p)), np.empty((6, p)), np.empty((q, q, q, q)),
                   np.empty((q, p, q, 1)), np.empty((q, p, q, p)), np.empty((m, p)),
                   np.empty((m, p, p)), np.empty((J, q)), np.empty((q, q, q, q)),
                   np.empty((q, q, q, q, p, p)),
                   np.empty((q, q, p, p)))


@njit(cache=True, error_model="numpy")
def _pair(rows, cols, k, e):
    """The e-th (i, j) with E_k[i, j] = 1: (rows[k], cols[k]), then (cols[k], rows[k])."""
    if e == 0:
        return rows[k], cols[k]
    return cols[k], rows[k]


@njit(cache=True, error_model="numpy")
def _npairs(rows, cols, k):
    """Number of ones in E_k: 1 for a variance, 2 for a covariance."""
    return 1 if rows[k] == cols[k] else 2


@njit(cache=True, error_model="numpy")
def _trace_E(rows, cols, k, X):
    """tr(E_k X) = sum over E_k[i, j] = 1 of X[j, i]."""
    s = 0.0
    for e in range(_npairs(rows, cols, k)):
        i, j = _pair(rows, cols, k, e)
        s += X[j, i]
    return s


@njit(cache=True, error_model="numpy", inline="always")
def phi_pass(st, rows, cols, phi, reml, want_dC, pw, f_out, g_out, H, C, dC, U, info, qc):
    """At phi (K + 1,) for one replicate: the objective into f_out[0] (6.1), the gradient
    into g_out (K + 1,) (6.2), the observed Hessian into H (K + 1, K + 1) (6.3), C =
    (X'V^{-1}X)^{-1} into C (p, p) and, with ``want_dC``, dC/dphi_k = C M_k C into dC
    (K + 1, p, p) (10.2). Any symmetric T: Lambda and S come from the signed root of
    Psi = T / sigma^2 (3.1). With U (J, q) not empty the EBLUPs D_j u_j go there (8.2);
    ``info`` (:class:`PhiInfo`) receives the terms it asks for.
    Returns False (outputs nan) where some V_j or X'V^{-1}X is not positive definite or
    sigma^2 <= 0."""
    K = rows.shape[0]
    sigma2 = phi[K]
    if not sigma2 > 0.0:
        _fail(f_out, g_out, H, C, dC, info)
        return False
    Psi = pw.Psi
    Psi[:, :] = 0.0
    for k in range(K):
        Psi[rows[k], cols[k]] = phi[k] / sigma2
        Psi[cols[k], rows[k]] = phi[k] / sigma2
    lambda_psi(Psi, pw.gls.L, pw.gls.s)
    return phi_terms(st, rows, cols, sigma2, reml, want_dC, pw, f_out, g_out, H, C,
                     dC, U, info, qc) > 0.0


@njit(cache=True, error_model="numpy")
def phi_terms_any(st, rows, cols, sigma2, reml, want_dC, pw, f_out, g_out, H, C, dC, U,
                  info, qc):
    """:func:`phi_pass` from Lambda and S already in pw.gls (Psi = Lambda S Lambda'; from
    theta, Lambda is lower triangular and S = I). ``sigma2`` nan means sigma^2 profiled,
    r2 / N (ML) or r2 / (N - p) (REML) (4.3): then the point is the fit's phi at theta. With
    U (J, q) (not empty) the EBLUPs D_j u_j are written there (8.2), and ``info``
    (:class:`PhiInfo`) receives the expected Hessian (6.6) and the KR terms M_k, Q_kl
    (12.1) it asks for. Returns sigma^2, or nan (outputs nan) where some V_j or X'V^{-1}X
    is not positive definite."""
    A, B, c = st.A, st.B, st.c
    J, p = B.shape[0], B.shape[2]
    q = q_of(qc, B.shape[1])
    K = rows.shape[0]
    m = K + 1
    N = st.N
    w = pw.gls
    wqq, wqp, wpp, wp = pw.wqq, pw.wqp, pw.wpp, pw.wp
    D, W4, Wf, FF, W, CM = pw.D, pw.W4, pw.Wf, pw.FF, pw.W, pw.CM
    Ps, Gs, PsE = wqq[0], wqq[1], wqq[3]
    X = wqq[2:3]
    HE, MK, QK = info.HE, info.MK, info.QK
    W4E, FQF, FF2 = pw.W4E, pw.FQF, pw.FF2
    want_E = HE.shape[0] > 0
    want_K = QK.shape[0] > 0
    # per-group q x q and q-vectors (local: loop-free copies keep them in registers)
    G, GA, G2A, Q, P = (np.empty((q, q)), np.empty((q, q)), np.empty((q, q)),
                        np.empty((q, q)), np.empty((q, q)))
    Qw, G2Aw, PE, FCFw, G2BCFw = wqq[4], wqq[5], wqq[6], wqq[7], wqq[8]
    u, Du, Gu, G2u, s, s_2 = (np.empty(q), np.empty(q), np.empty(q), np.empty(q),
                              np.empty(q), np.empty(q))
    DB, GB, G2B, F, FC = wqp[0], wqp[1], wqp[2], wqp[3], wqp[4]
    GBDB, G2BDB, XK2X, XK3X, Mk, BtDB = wpp[0], wpp[1], wpp[2], wpp[3], wpp[4], wpp[5]
    XtVXinv = wpp[6:7]
    BGDu, XK2r, Xr, Cw, beta = wp[0], wp[2], wp[3], wp[4], wp[5]
    want_U = U.shape[0] > 0

    # the GLS core: D_j, beta, C (3.1)-(3.6)
    logdetM, ok = gls_pass(st, w.L, w.s, w, False, qc)
    if not ok:
        _fail(f_out, g_out, H, C, dC, info)
        return np.nan
    ldX, r2 = gls_finish(st, w)
    nu = N - p if reml else N
    if math.isnan(sigma2):
        sigma2 = r2 / nu
    if math.isnan(ldX) or not sigma2 > 0.0:
        _fail(f_out, g_out, H, C, dC, info)
        return np.nan
    v1, v2 = 1.0 / sigma2, 1.0 / sigma2**2
    v3 = 1.0 / sigma2**3
    for j in range(J):
        group_D(w.F, j, w.L, X, D, qc)
    ldl_inverse_at(w.XV, 0, p, XtVXinv, 0)
    for a in range(p):
        beta[a] = w.beta[0, a, 0]
        for b in range(p):
            C[a, b] = XtVXinv[0, a, b] * sigma2
            BtDB[a, b] = w.corr[max(a, b), min(a, b)]

    # (6.1): log|V| = N log sigma^2 + sum_j log|M_j|, r'V^{-1}r = r2 / sigma^2
    f = nu * _LOG2PI + N * math.log(sigma2) + logdetM + r2 * v1
    if reml:
        f += ldX - p * math.log(sigma2)
    f_out[0] = f

    # the sums over groups
    uDu = 0.0
    GuDu = 0.0
    G2uDu = 0.0
    trAD = 0.0
    trGAD = 0.0
    BGDu[:] = 0.0
    GBDB[:, :] = 0.0
    G2BDB[:, :] = 0.0
    Ps[:, :] = 0.0
    Gs[:, :] = 0.0
    W4[:, :, :, :] = 0.0
    Wf[:, :, :, :] = 0.0
    want_FF = reml or want_dC or want_K
    if want_FF:
        FF[:, :, :, :] = 0.0
    if want_E:
        W4E[:, :, :, :] = 0.0
        PsE[:, :] = 0.0
    if want_K:
        FQF[:, :, :, :, :, :] = 0.0
        FF2[:, :, :, :] = 0.0
    for j in range(J):
        if st.n[j] == 0:
            if want_U:
                for a in range(q):
                    U[j, a] = 0.0
            continue
        # G = I - A D, u = c - B beta
        for a in range(q):
            for b in range(q):
                acc = 1.0 if a == b else 0.0
                for t in range(q):
                    acc -= A[j, a, t] * D[j, t, b]
                G[a, b] = acc
            acc = c[j, a]
            for t in range(p):
                acc -= B[j, a, t] * beta[t]
            u[a] = acc
        # D u (the EBLUP, 8.2), G u = u - A D u; D B, G B; G A
        for a in range(q):
            acc = 0.0
            for t in range(q):
                acc += D[j, a, t] * u[t]
            Du[a] = acc
            if want_U:
                U[j, a] = acc
        for a in range(q):
            acc = u[a]
            for t in range(q):
                acc -= A[j, a, t] * Du[t]
            Gu[a] = acc
            for b in range(p):
                acc_d = 0.0
                acc_g = 0.0
                for t in range(q):
                    acc_d += D[j, a, t] * B[j, t, b]
                    acc_g += G[a, t] * B[j, t, b]
                DB[a, b] = acc_d
                GB[a, b] = acc_g
            for b in range(q):
                acc = 0.0
                for t in range(q):
                    acc += G[a, t] * A[j, t, b]
                GA[a, b] = acc
        # G^2 u, G^2 B, G^2 A
        for a in range(q):
            acc = 0.0
            for t in range(q):
                acc += G[a, t] * Gu[t]
            G2u[a] = acc
        matmul(G2B, G, GB, q, q, p)
        matmul(G2A, G, GA, q, q, q)
        # Q = G A / sigma^2 (symmetrised), s = G u / sigma^2, s_2 = G^2 u / sigma^4,
        # F = G B / sigma^2
        for a in range(q):
            for b in range(q):
                Q[a, b] = 0.5 * (GA[a, b] * v1 + GA[b, a] * v1)
            s[a] = Gu[a] * v1
            s_2[a] = G2u[a] * v2
            for b in range(p):
                F[a, b] = GB[a, b] * v1
        # scalars: u'Du, (Gu)'Du, (G^2 u)'Du, tr(A D), tr(G A D)
        for a in range(q):
            uDu += u[a] * Du[a]
            GuDu += Gu[a] * Du[a]
            G2uDu += G2u[a] * Du[a]
            for t in range(q):
                trAD += A[j, a, t] * D[j, t, a]
                trGAD += GA[a, t] * D[j, t, a]
        # (B + GB)'Du, (GB)'DB, (G^2 B)'DB
        for a in range(p):
            acc = 0.0
            for t in range(q):
                acc += (B[j, t, a] + GB[t, a]) * Du[t]
            BGDu[a] += acc
            for b in range(p):
                acc = 0.0
                acc_g = 0.0
                for t in range(q):
                    acc += GB[t, a] * DB[t, b]
                    acc_g += G2B[t, a] * DB[t, b]
                GBDB[a, b] += acc
                G2BDB[a, b] += acc_g
        # P = -Q + 2 s s' [+ 2 F C F'];  Ps += -Q2 + 2 s_2 s' [+ 2 F2 C F'];
        # gradient (6.2): Gs += Q - s s' [- F C F']
        for a in range(q):
            for b in range(q):
                P[a, b] = -Q[a, b] + 2.0 * s[a] * s[b]
                Ps[a, b] += -G2A[a, b] * v2 + 2.0 * s_2[a] * s[b]
                Gs[a, b] += Q[a, b] - s[a] * s[b]
        if want_E or want_K:
            # the terms asked for in ``info`` (the expected Hessian, the KR terms), in
            # functions of their own: the q = 2 copy does not unroll them
            for a in range(q):
                for b in range(q):
                    Qw[a, b] = Q[a, b]
                    G2Aw[a, b] = G2A[a, b]
        if reml:
            matmul(FC, F, C, q, p, p)
            for a in range(q):
                for b in range(q):
                    acc = 0.0
                    acc_2 = 0.0
                    for t in range(p):
                        acc += FC[a, t] * F[b, t]
                        acc_2 += G2B[a, t] * v2 * FC[b, t]
                    P[a, b] += 2.0 * acc
                    Ps[a, b] += 2.0 * acc_2
                    Gs[a, b] -= acc
                    if want_E:
                        FCFw[a, b] = acc
                        G2BCFw[a, b] = acc_2
        if want_E:
            _expected_group(Qw, G2Aw, FCFw, G2BCFw, v2, reml, PE, PsE, W4E, q)
        # W4[n, i, t, m] += P[n, i] Q[t, m],
        # FF[i, a, l, b] += F[i, a] F[l, b] (for M_k = sum_j F_j'E_k F_j), Wf[i, a, l] +=
        # F[i, a] s[l]
        add_outer(W4, P, Q, q)
        for i in range(q):
            for a in range(p):
                x = F[i, a]
                for t in range(q):
                    Wf[i, a, t, 0] += x * s[t]
                if want_FF:
                    for t in range(q):
                        for b in range(p):
                            FF[i, a, t, b] += x * F[t, b]
        if want_K:
            _kr_group(Qw, F, G2B, v2, FF2, FQF, q, p)

    # totals (6.4): r'K^m r, X'K^m r, X'K^m X, tr K^m, K = sigma^2 V^{-1}
    ee = float(st.yty)
    for a in range(p):
        acc = 0.0
        for b in range(p):
            acc += st.XtX[a, b] * beta[b]
        Xr[a] = st.Xty[a] - acc
        ee += -2.0 * beta[a] * st.Xty[a] + beta[a] * acc
    rK2r = ee - uDu - GuDu
    rK3r = rK2r - G2uDu
    for a in range(p):
        XK2r[a] = Xr[a] - BGDu[a]
        for b in range(p):
            XK2X[a, b] = st.XtX[a, b] - BtDB[a, b] - GBDB[a, b]
            XK3X[a, b] = XK2X[a, b] - G2BDB[a, b]
    trK = N - trAD
    trK2 = trK - trGAD

    # gradient (6.2)
    for k in range(K):
        i, t = _pair(rows, cols, k, 0)
        g_out[k] = Gs[i, t] * (1.0 if i == t else 2.0)
    gs = trK * v1 - rK2r * v2
    if reml:
        acc = 0.0
        for a in range(p):
            for b in range(p):
                acc += C[a, b] * XK2X[b, a]
        gs -= acc * v2
    g_out[K] = gs

    # -T1 + 2 T2 [+ 2 T4]
    trCK3 = 0.0
    if reml:
        for a in range(p):
            for b in range(p):
                trCK3 += C[a, b] * XK3X[b, a]
    _phi_block(rows, cols, W4, Ps, -trK2 * v2 + 2.0 * rK3r * v3 + 2.0 * trCK3 * v3, H)
    # the expected Hessian T1 [- 2 T4 + T5] (6.6)
    if want_E:
        _phi_block(rows, cols, W4E, PsE, trK2 * v2 - 2.0 * trCK3 * v3, HE)

    # -2 T3 = -2 W C W', W's rows w_k = sum_j F_j'E_k s_j and w_K = X'V^{-2}r
    for k in range(K):
        for a in range(p):
            acc = 0.0
            for e in range(_npairs(rows, cols, k)):
                i, t = _pair(rows, cols, k, e)
                acc += Wf[i, a, t, 0]
            W[k, a] = acc
    for a in range(p):
        W[K, a] = XK2r[a] * v2
    for k in range(m):
        for a in range(p):
            acc = 0.0
            for b in range(p):
                acc += C[a, b] * W[k, b]
            Cw[a] = acc
        for l in range(m):
            acc = 0.0
            for a in range(p):
                acc += W[l, a] * Cw[a]
            H[l, k] -= 2.0 * acc

    # C M_k, M_k = sum_j F_j'E_k F_j, M_K = X'V^{-2}X; REML: -T5 = -tr(C M_k C M_l)
    # (+T5 in the expected Hessian); Q_Kk = Q_kK', Q_KK = X'V^{-3}X
    if want_FF:
        for k in range(m):
            for a in range(p):
                for b in range(p):
                    if k < K:
                        acc = 0.0
                        for e in range(_npairs(rows, cols, k)):
                            i, t = _pair(rows, cols, k, e)
                            acc += FF[i, a, t, b]
                        Mk[a, b] = acc
                    else:
                        Mk[a, b] = XK2X[a, b] * v2
                    if want_K:
                        MK[k, a, b] = Mk[a, b]
            for a in range(p):
                for b in range(p):
                    acc = 0.0
                    for t in range(p):
                        acc += C[a, t] * Mk[t, b]
                    CM[k, a, b] = acc
    if reml:
        for k in range(m):
            for l in range(k + 1):
                acc = 0.0
                for a in range(p):
                    for b in range(p):
                        acc += CM[k, a, b] * CM[l, b, a]
                H[k, l] -= acc
                if l != k:
                    H[l, k] -= acc
                if want_E:
                    HE[k, l] += acc
                    if l != k:
                        HE[l, k] += acc
    if want_dC:
        for k in range(m):
            matmul(dC[k], CM[k], C, p, p, p)
            symmetrise(dC[k])

    if want_K:
        # Q_kl = sum over E_k[i, t] = 1, E_l[n, m] = 1 of FQF[i, t, n, m]; Q_kK from FF2
        for k in range(K):
            for a in range(p):
                for b in range(p):
                    for l in range(K):
                        QK[k, l, a, b] = _pair_sum(rows, cols, k, l, FQF[:, :, :, :, a, b],
                                                   False)
                    h = 0.0
                    for e in range(_npairs(rows, cols, k)):
                        i, t = _pair(rows, cols, k, e)
                        h += FF2[i, t, a, b]
                    QK[k, K, a, b] = h
                    QK[K, k, b, a] = h
        for a in range(p):
            for b in range(p):
                QK[K, K, a, b] = XK3X[a, b] * v3
    symmetrise(H)
    if want_E:
        symmetrise(HE)
    return sigma2


@njit(cache=True, error_model="numpy")
def _expected_group(Q, G2A, FCF, G2BCF, v2, reml, PE, PsE, W4E, q):
    """One group's share of the expected Hessian (6.6) in :func:`phi_terms_any`:
    P_E = Q [- 2 F C F'] into PE, PsE += Q2 [- 2 F2 C F'], W4E[n, i, t, m] += P_E[n, i]
    Q[t, m]; where ``reml``, FCF = F C F' and G2BCF = F2 C F' as the caller formed them
    for P and Ps."""
    for a in range(q):
        for b in range(q):
            PE[a, b] = Q[a, b]
            PsE[a, b] += G2A[a, b] * v2
    if reml:
        for a in range(q):
            for b in range(q):
                PE[a, b] -= 2.0 * FCF[a, b]
                PsE[a, b] -= 2.0 * G2BCF[a, b]
    add_outer(W4E, PE, Q, q)


@njit(cache=True, error_model="numpy")
def _kr_group(Q, F, G2B, v2, FF2, FQF, q, p):
    """One group's share of the KR terms (12.1) in :func:`phi_terms_any`:
    FQF[i, t, n, m] += F[i, :]' Q[t, n] F[m, :] and FF2[i, t] += F[i, :]' F2[t, :]
    (F2 = Z'V^{-2}X = G^2 B / sigma^4), reduced to Q_kl after the loop over groups."""
    for i in range(q):
        for t in range(q):
            for a in range(p):
                x = F[i, a]
                for b in range(p):
                    FF2[i, t, a, b] += x * G2B[t, b] * v2
                for n in range(q):
                    xq = x * Q[t, n]
                    for mm in range(q):
                        for b in range(p):
                            FQF[i, t, n, mm, a, b] += xq * F[mm, b]


@njit(cache=True, error_model="numpy")
def _pair_sum(rows, cols, k, l, X, n_first):
    """sum of X[i, t, n, m] over E_k[i, t] = 1 and E_l[n, m] = 1; with ``n_first``, of
    X[n, i, t, m] (the layout of W4: indexing, instead of a transposed view, spares the
    compiler numba's checks of ``transpose(axes)``, about 2 s of compile time)."""
    h = 0.0
    for e in range(_npairs(rows, cols, k)):
        i, t = _pair(rows, cols, k, e)
        for e2 in range(_npairs(rows, cols, l)):
            n, mm = _pair(rows, cols, l, e2)
            h += X[n, i, t, mm] if n_first else X[i, t, n, mm]
    return h


@njit(cache=True, error_model="numpy")
def _phi_block(rows, cols, W4, Ps, hKK, H):
    """The Hessian (6.3) or its expectation (6.6) from the sums over groups: H[k, l] for
    T's elements k, l = sum of W4[n, i, t, m] over E_k[i, t] = 1, E_l[m, n] = 1 (tr(E_k Q
    E_l P), summed over groups), H[k, K] = tr(E_k Ps), H[K, K] = hKK."""
    K = rows.shape[0]
    for k in range(K):
        for l in range(K):  # E_l is symmetric
            H[k, l] = _pair_sum(rows, cols, k, l, W4, True)
        h = _trace_E(rows, cols, k, Ps)
        H[k, K] = h
        H[K, k] = h
    H[K, K] = hKK


# (its calls of gls_pass and group_D go to their q = 2 copies through by_q)
phi_terms_q2 = specialise(phi_terms_any, {"q": 2}, "phi_terms_q2", (), (matmul, add_outer))
phi_terms = by_q(phi_terms_any, phi_terms_q2, "phi_terms")


@njit(cache=True, error_model="numpy")
def _fail(f_out, g_out, H, C, dC, info):
    f_out[0] = np.nan
    g_out[:] = np.nan
    H[:, :] = np.nan
    C[:, :] = np.nan
    dC[:, :, :] = np.nan
    info.HE[:, :] = np.nan
    info.MK[:, :, :] = np.nan
    info.QK[:, :, :, :] = np.nan


@njit(cache=True, error_model="numpy")
def phi_many(st, rows, cols, phi, reml, want_dC, want_info, qc):
    """:func:`phi_pass` for R replicates: batched statistics, phi (R, K + 1). Returns
    f (R,), g (R, m), H (R, m, m), C (R, p, p), dC (R, m, p, p) (empty without
    ``want_dC``), beta (R, p), the EBLUPs U (R, J, q), phi, m = K + 1, and the fields of
    :class:`PhiInfo` with a replicate axis: with ``want_info`` >= 1 the expected Hessian
    HE (R, m, m), with ``want_info`` = 2 also MK (R, m, p, p) and QK (R, m, m, p, p)
    (else empty)."""
    none = np.empty(0, dtype=np.intp)
    return _drive(st, rows, cols, phi.copy(), np.empty((phi.shape[0], 0)), none, none, False,
                  reml, want_dC, want_info, qc)


@njit(cache=True, error_model="numpy")
def phi_at_theta_many(theta, trows, tcols, st, rows, cols, reml, want_dC, want_info, qc):
    """:func:`phi_many` at the point of theta (R, k) with sigma^2 profiled (4.3): Lambda
    from theta (``trows``, ``tcols``), the objective equal to the profiled criterion
    (4.1)/(4.2). The returned ``phi`` (R, m) says which point that is."""
    phi = np.full((theta.shape[0], rows.shape[0] + 1), np.nan)
    return _drive(st, rows, cols, phi, theta, trows, tcols, True, reml, want_dC, want_info,
                  qc)


@njit(cache=True, error_model="numpy", inline="always")
def _drive(st, rows, cols, phi, theta, trows, tcols, at_theta, reml, want_dC, want_info, qc):
    """The replicate loop of :func:`phi_many` (``theta`` empty: at phi) and
    :func:`phi_at_theta_many` (at theta; ``phi`` is filled in)."""
    R, J, q, p = st.B.shape[0], st.B.shape[1], st.B.shape[2], st.B.shape[3]
    K = rows.shape[0]
    m = K + 1
    f = np.full(R, np.nan)
    g = np.full((R, m), np.nan)
    H = np.full((R, m, m), np.nan)
    C = np.full((R, p, p), np.nan)
    dC = np.full((R, m, p, p) if want_dC else (R, 0, p, p), np.nan)
    beta = np.full((R, p), np.nan)
    U = np.full((R, J, q), np.nan)
    HE = np.full((R if want_info >= 1 else 0, m, m), np.nan)
    nk = R if want_info >= 2 else 0
    MK = np.full((nk, m, p, p), np.nan)
    QK = np.full((nk, m, m, p, p), np.nan)
    none = no_info(m, p)
    scratch = np.empty((m, p, p))
    pw = phi_workspace(J, q, p, K)
    fo = np.empty(1)
    for r in range(R):
        out = dC[r] if want_dC else scratch
        one = replicate(st, r)
        info = PhiInfo(HE[r] if want_info >= 1 else none.HE,
                       MK[r] if want_info >= 2 else none.MK,
                       QK[r] if want_info >= 2 else none.QK)
        if at_theta:
            L = pw.gls.L
            for a in range(q):
                pw.gls.s[a] = 1.0
                for b in range(q):
                    L[a, b] = 0.0
            for i in range(trows.shape[0]):
                L[trows[i], tcols[i]] = theta[r, i]
            s2 = phi_terms(one, rows, cols, np.nan, reml, want_dC, pw, fo, g[r], H[r],
                           C[r], out, U[r], info, qc)
            if math.isnan(s2):
                continue
            for i in range(K):
                acc = 0.0
                for e in range(q):
                    acc += L[rows[i], e] * L[cols[i], e]
                phi[r, i] = s2 * acc
            phi[r, K] = s2
        elif not phi_pass(one, rows, cols, phi[r], reml, want_dC, pw, fo, g[r], H[r], C[r],
                            out, U[r], info, qc):
            continue
        f[r] = fo[0]
        for a in range(p):
            beta[r, a] = pw.wp[5][a]
    return f, g, H, C, dC, beta, U, phi, HE, MK, QK
