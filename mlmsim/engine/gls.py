"""The per-group GLS core, written once: docs/math.md section 3.

Every quantity of the engine that involves V_j^{-1} (the profiled deviance and its
gradient, the read-out of estimates and EBLUPs, the objective, gradient and Hessian in
phi, the df) goes through :func:`gls_pass` and :func:`gls_finish`:

    Psi = T / sigma^2 = Lambda S Lambda'                                   (3.1)
    M_j = Lambda' A_j Lambda + S = L_j Delta_j L_j'                        (3.2)
    V_j positive definite  <=>  M_j has the inertia of S                    (3.3)
    D_j = Lambda M_j^{-1} Lambda' = (I + Psi A_j)^{-1} Psi                  (3.4)
    XtVX = X'X - sum_j R_jB' S_jB, ...,  R_j = Lambda'[B_j c_j], S_j = M_j^{-1} R_j   (3.5)
    beta = XtVX^{-1} XtVy,  r2 = ytVy - beta' XtVy                          (3.6)

S = I when Lambda comes from theta (:func:`lambda_theta`, lower triangular); for any
symmetric Psi (an unbounded T) :func:`lambda_psi` gives a full Lambda and signs S from
Psi's eigendecomposition. The statistics of one replicate travel as one
:class:`Stats` namedtuple; a batch has the same fields with a leading replicate axis
(:func:`replicate` takes one out).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from mlmsim.engine.linalg import (
    ldl_at,
    ldl_solve_at,
    ldl_solve_cols,
    log_accumulate,
)
from mlmsim.engine.unroll import by_q, specialise

__all__ = ["Stats", "Work", "replicate", "workspace", "lambda_theta", "lambda_psi",
           "gls_pass", "gls_finish", "group_D", "q_of", "qtoken"]

Stats = namedtuple("Stats", ["A", "B", "c", "XtX", "Xty", "yty", "N", "n"])
Stats.__doc__ = """Sufficient statistics of one replicate (docs/math.md (2.1)): A (J, q, q),
B (J, q, p), c (J, q), XtX (p, p), Xty (p,), yty, N (floats), n (J,) int64 group sizes.
Batched: the same fields with a leading replicate axis."""

Work = namedtuple("Work", ["L", "s", "F", "AL", "S", "R", "corr", "XV", "XtVy", "beta"])
Work.__doc__ = """Work arrays of the GLS pass for J groups: Lambda L (q, q), signs s (q,),
the factors of M_j F (J, q, q), A_j Lambda AL (J, q, q), S_j = M_j^{-1} R_j S (J, q, p+1),
R_j R (q, p+1), sum_j R_j' S_j corr (p+1, p+1), the factor of XtVX XV (1, p, p),
XtVy (p,) and beta (1, p, 1) (a leading axis of 1, so that the primitives of
:mod:`mlmsim.engine.linalg` take them as they are)."""


@njit(cache=True)
def replicate(st, r):
    """Replicate r of batched statistics, as a :class:`Stats` of one replicate."""
    return Stats(st.A[r], st.B[r], st.c[r], st.XtX[r], st.Xty[r], st.yty[r], st.N[r], st.n[r])


@njit(cache=True)
def workspace(J, q, p):
    """A :class:`Work` for J groups, q random effects and p fixed effects."""
    m = p + 1
    return Work(np.empty((q, q)), np.ones(q), np.empty((J, q, q)), np.empty((J, q, q)),
                np.empty((J, q, m)), np.empty((q, m)), np.empty((m, m)), np.empty((1, p, p)),
                np.empty(p), np.empty((1, p, 1)))


@njit(cache=True, error_model="numpy")
def lambda_theta(theta, rows, cols, L, s):
    """Lambda from theta (docs/math.md (1.3)): L[rows[k], cols[k]] = theta[k], zero
    elsewhere; signs s = 1 (S = I)."""
    q = L.shape[0]
    for a in range(q):
        s[a] = 1.0
        for b in range(q):
            L[a, b] = 0.0
    for i in range(theta.shape[0]):
        L[rows[i], cols[i]] = theta[i]


@njit(cache=True, error_model="numpy")
def lambda_psi(Psi, L, s):
    """A signed root of the symmetric Psi (docs/math.md (3.1)): Psi = L diag(s) L' with
    L = V |w|^{1/2}, s = sign(w) (+1 for w = 0) from Psi = V diag(w) V', the columns in
    descending order of w: with the +1 columns first, the LDL' of M_j without pivoting
    cannot meet a zero pivot at a valid point (docs/math.md (3.3))."""
    q = Psi.shape[0]
    w, V = np.linalg.eigh(Psi)
    for b in range(q):
        e = q - 1 - b
        r = math.sqrt(abs(w[e]))
        s[b] = -1.0 if w[e] < 0.0 else 1.0
        for a in range(q):
            L[a, b] = V[a, e] * r


@njit(cache=True, error_model="numpy")
def gls_pass_any(st, L, s, w, keep_AL, qc):
    """The loop over groups of docs/math.md (3.2), (3.3) and (3.5): for every group j
    forms M_j = Lambda' A_j Lambda + S and its factor (into w.F[j]), R_j = Lambda'[B_j c_j]
    and S_j = M_j^{-1} R_j (into w.S[j]), and accumulates sum_j R_j' S_j (lower triangle,
    into w.corr). With ``keep_AL`` A_j Lambda is kept in w.AL[j] (else w.AL[0] is scratch).
    ``tri``: Lambda is lower triangular (loops skip its zeros); ``qc``: :func:`qtoken`.
    Returns (sum_j log|det M_j|, valid): valid is False, and the sum nan, where some M_j is
    singular or lacks the inertia of S (then some V_j is not positive definite)."""
    A, B, c = st.A, st.B, st.c
    J, p = B.shape[0], B.shape[2]
    q = q_of(qc, B.shape[1])
    m = p + 1
    nneg = 0
    for a in range(q):
        if s[a] < 0.0:
            nneg += 1
    # Lambda lower triangular (always so from theta): the sums below skip its zeros
    tri = lower_triangular(L, q)
    corr, R, AL, F, S = w.corr, w.R, w.AL, w.F, w.S
    for a in range(m):
        for b in range(m):
            corr[a, b] = 0.0
    logdet = 0.0
    detprod = 1.0
    for j in range(J):
        jj = j if keep_AL else 0
        for a in range(q):
            for b in range(q):
                acc = 0.0
                for t in range(b if tri else 0, q):
                    acc += A[j, a, t] * L[t, b]
                AL[jj, a, b] = acc
        for a in range(q):
            for b in range(a + 1):
                acc = s[a] if a == b else 0.0
                for t in range(a if tri else 0, q):
                    acc += L[t, a] * AL[jj, t, b]
                F[j, a, b] = acc
        lp, dp, neg = ldl_at(F, j, q)
        if math.isnan(dp) or neg != nneg:
            return np.nan, False
        logdet, detprod = log_accumulate(logdet, detprod, lp, dp)
        for col in range(m):
            for a in range(q):
                acc = 0.0
                if col < p:
                    for t in range(a if tri else 0, q):
                        acc += L[t, a] * B[j, t, col]
                else:
                    for t in range(a if tri else 0, q):
                        acc += L[t, a] * c[j, t]
                R[a, col] = acc
                S[j, a, col] = acc
        ldl_solve_cols(F, j, q, S, j, 0, m)
        for r in range(m):
            for col in range(r + 1):
                acc = 0.0
                for a in range(q):
                    acc += R[a, r] * S[j, a, col]
                corr[r, col] += acc
    return logdet + math.log(detprod), True


@njit(cache=True)
def lower_triangular(L, q):
    """True when Lambda (q, q) has no non-zero above its diagonal."""
    for a in range(q):
        for b in range(a + 1, q):
            if L[a, b] != 0.0:
                return False
    return True


@njit(cache=True, error_model="numpy")
def gls_finish(st, w):
    """After :func:`gls_pass`: XtVX = X'X - corr_XX (factored into w.XV), XtVy = X'y -
    corr_Xy (w.XtVy), beta = XtVX^{-1} XtVy (w.beta) and r2 = ytVy - beta' XtVy
    (docs/math.md (3.5), (3.6)). Returns (log|XtVX|, r2): nan first when XtVX is not
    positive definite, r2 nan when it is not positive."""
    p = st.B.shape[2]
    corr, XV, XtVy, beta = w.corr, w.XV, w.XtVy, w.beta
    for a in range(p):
        for b in range(a + 1):
            XV[0, a, b] = st.XtX[a, b] - corr[a, b]
            XV[0, b, a] = XV[0, a, b]
        XtVy[a] = st.Xty[a] - corr[p, a]
        beta[0, a, 0] = XtVy[a]
    ytVy = st.yty - corr[p, p]
    lp, dp, neg = ldl_at(XV, 0, p)
    if math.isnan(dp) or neg > 0:
        return np.nan, np.nan
    ldX = lp + math.log(dp)
    ldl_solve_at(XV, 0, p, beta, 0, 1)
    r2 = ytVy
    for a in range(p):
        r2 -= beta[0, a, 0] * XtVy[a]
    if not r2 > 0.0:
        return ldX, np.nan
    return ldX, r2


@njit(cache=True, error_model="numpy")
def group_D_any(F, j, L, X, D, qc):
    """D_j = Lambda M_j^{-1} Lambda' (docs/math.md (3.4)) into D[j] (q, q), from the factor
    F[j] of M_j; X (1, q, q) is scratch."""
    q = q_of(qc, L.shape[0])
    for a in range(q):
        for b in range(q):
            X[0, a, b] = L[b, a]
    ldl_solve_at(F, j, q, X, 0, q)
    for a in range(q):
        for b in range(q):
            acc = 0.0
            for t in range(q):
                acc += L[a, t] * X[0, t, b]
            D[j, a, b] = acc
    for a in range(q):
        for b in range(a):
            v = 0.5 * (D[j, a, b] + D[j, b, a])
            D[j, a, b] = v
            D[j, b, a] = v


@njit(cache=True)
def q_of(qc, q):
    """q as a compile-time constant where the token ``qc`` carries it (:func:`qtoken`),
    else the run-time ``q``."""
    return len(qc) if len(qc) > 0 else q


def qtoken(q: int) -> tuple:
    """The token that compiles the per-group loops for a fixed q (a tuple of q zeros, for
    q = 1 and 2: random intercept, intercept and slope), or for any q (the empty tuple).
    The kernels are written once, for any q. With the token of q = 1, numba compiles a
    copy in which q is a constant; with that of q = 2 the kernels run their loop-free
    copies, generated from the same source by :mod:`mlmsim.engine.unroll`."""
    return (0,) * q if q <= 2 else ()


group_D_q2 = specialise(group_D_any, {"q": 2}, "group_D_q2", (),
                        (ldl_solve_at, ldl_solve_cols))
# the q = 2 copy keeps every product: its loops unroll into registers either way
gls_pass_q2 = specialise(gls_pass_any, {"q": 2, "tri": False}, "gls_pass_q2", (),
                         (ldl_at, ldl_solve_cols))
# the kernels that compiled code calls: the q = 2 copy or the general code
group_D = by_q(group_D_any, group_D_q2, "group_D")
gls_pass = by_q(gls_pass_any, gls_pass_q2, "gls_pass")
