"""Compiled small dense linear algebra: the primitives every per-group kernel uses.

The matrices of a two-level model's per-group algebra are q x q (q <= 4 or so) and
p x p; a LAPACK call costs more in overhead than the work, so these are written as plain
loops that numba compiles. All work in place and allocate nothing.

- :func:`ldl` factors a symmetric matrix as L S L' (L lower triangular, S = diag(+-1):
  the LDL' factorisation with Delta = S L_ii^2), without pivoting, and counts the
  negative pivots: for a positive definite matrix it is the Cholesky factorisation; for
  the signed
  M_j = Lambda' A_j Lambda + S of docs/math.md (3.2) the count decides validity (3.3).
- :func:`ldl_solve`, :func:`ldl_inverse` use that factor.
- :func:`lu_solve` solves a general square system by Gaussian elimination with partial
  pivoting (for small indefinite or non-symmetric systems).
- :func:`scaled_eigh` gives the eigenvalues of a symmetric matrix scaled by its diagonal
  (the correlation form D^{-1/2} H D^{-1/2}): invariant to the units of each parameter.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["add_outer", "ldl", "ldl_solve", "ldl_inverse", "ldl_at", "ldl_solve_at",
           "ldl_inverse_at", "ldl_solve_cols", "log_accumulate", "lu_solve", "matmul",
           "scaled_eigh", "scaled_inverse", "symmetrise"]

_BIG = 1e280


@njit(cache=True, error_model="numpy")
def matmul(O, X, Y, n, k, m):
    """O[:n, :m] = X[:n, :k] Y[:k, :m] for 2-d arrays, in place (no allocation). Kernels
    pass the sizes, so that their loop-free copies (:mod:`mlmsim.engine.unroll`), which
    put this body in place of the call, unroll the loops over q."""
    for a in range(n):
        for b in range(m):
            acc = 0.0
            for t in range(k):
                acc += X[a, t] * Y[t, b]
            O[a, b] = acc


@njit(cache=True, error_model="numpy")
def add_outer(W, P, Q, n):
    """W[i, a, t, b] += P[i, a] Q[t, b] for i, a, t, b < n (4-d W, in place). Sizes
    passed, as for :func:`matmul`."""
    for i in range(n):
        for a in range(n):
            x = P[i, a]
            for t in range(n):
                for b in range(n):
                    W[i, a, t, b] += x * Q[t, b]


@njit(cache=True, error_model="numpy")
def symmetrise(M):
    """M <- (M + M') / 2 in place (square M)."""
    n = M.shape[0]
    for i in range(n):
        for j in range(i):
            v = 0.5 * (M[i, j] + M[j, i])
            M[i, j] = v
            M[j, i] = v


@njit(cache=True, error_model="numpy")
def ldl_at(M, j, n):
    """Factor the symmetric M[j, :n, :n] (lower triangle read) in place as L S L' with L
    lower triangular with positive diagonal and S = diag(+-1) (the LDL' factorisation
    with Delta = S L_ii^2; for a positive definite M, S = I and L is its Cholesky factor).
    The strict lower triangle holds L, the diagonal s_i / L_ii (so that solves multiply
    and the sign travels with it). Returns (log_part, det_part, number of negative
    pivots) with log|det M| = log_part + log(det_part): the logarithm is left to the
    caller, so that a loop over groups takes one log for all of them (:func:`log_accumulate`);
    det_part is nan when a pivot is zero or not finite. (Indexed by j so that a loop over
    groups makes no array views.)"""
    prod = 1.0
    neg = 0
    for c in range(n):
        # while every pivot so far is positive (always, for a positive definite M) the
        # signs are all +1 and the sums are Cholesky's
        plain = neg == 0
        d = M[j, c, c]
        if plain:
            for k in range(c):
                d -= M[j, c, k] * M[j, c, k]
        else:
            for k in range(c):
                lk = M[j, c, k]
                d -= math.copysign(lk * lk, M[j, k, k])
        ad = abs(d)
        M[j, c, c] = math.copysign(1.0 / math.sqrt(ad), d)
        if d < 0.0:
            neg += 1
        prod *= ad
        for i in range(c + 1, n):
            s = M[j, i, c]
            if plain:
                for k in range(c):
                    s -= M[j, i, k] * M[j, c, k]
            else:
                for k in range(c):
                    s -= M[j, i, k] * M[j, c, k] * math.copysign(1.0, M[j, k, k])
            M[j, i, c] = s * M[j, c, c]
    logdet = 0.0
    if not (prod > 1.0 / _BIG and prod < _BIG):
        # rare: the product left the floating-point range, or a pivot is zero or not
        # finite (then 1 / sqrt|d| is inf, 0 or nan on the diagonal)
        prod = 1.0
        for c in range(n):
            r = abs(M[j, c, c])
            if r > 0.0 and r < math.inf:
                logdet -= 2.0 * math.log(r)
            else:
                prod = np.nan
    return logdet, prod, neg


@njit(cache=True, error_model="numpy")
def log_accumulate(acc_log, acc_prod, log_part, det_part):
    """Add log_part + log(det_part) to the running sum acc_log + log(acc_prod) without
    taking a log (only when the product leaves [1e-280, 1e280]); returns the new pair."""
    acc_log += log_part
    acc_prod *= det_part
    if acc_prod > _BIG or acc_prod < 1.0 / _BIG:
        acc_log += math.log(acc_prod)
        acc_prod = 1.0
    return acc_log, acc_prod


@njit(cache=True, error_model="numpy")
def ldl_solve_at(F, j, n, X, i0, m):
    """Solve (L S L') Y = X[i0, :n, :m] in place, with F[j] from :func:`ldl_at`:
    Y = L^{-T} S L^{-1} X."""
    ldl_solve_cols(F, j, n, X, i0, 0, m)


@njit(cache=True, error_model="numpy")
def ldl_solve_cols(F, j, n, X, i0, c0, c1):
    """:func:`ldl_solve_at` for the columns c0 <= col < c1 of X[i0]."""
    for col in range(c0, c1):
        for i in range(n):
            s = X[i0, i, col]
            for k in range(i):
                s -= F[j, i, k] * X[i0, k, col]
            X[i0, i, col] = s * abs(F[j, i, i])
        for i in range(n - 1, -1, -1):
            s = X[i0, i, col] * math.copysign(1.0, F[j, i, i])
            for k in range(i + 1, n):
                s -= F[j, k, i] * X[i0, k, col]
            X[i0, i, col] = s * abs(F[j, i, i])


@njit(cache=True, error_model="numpy")
def ldl_inverse_at(F, j, n, out, i0):
    """out[i0, :n, :n] = (L Delta L')^{-1}, F[j] from :func:`ldl_at`."""
    for a in range(n):
        for b in range(n):
            out[i0, a, b] = 1.0 if a == b else 0.0
    ldl_solve_at(F, j, n, out, i0, n)


@njit(cache=True)
def _as3(M):
    return M.reshape((1, M.shape[0], M.shape[1]))


@njit(cache=True, error_model="numpy")
def ldl(M, n):
    """:func:`ldl_at` of a 2-d (C-contiguous) M: returns (log|det M|, negative pivots),
    log|det M| nan when a pivot is zero or not finite."""
    lp, dp, neg = ldl_at(_as3(M), 0, n)
    return lp + math.log(dp), neg


@njit(cache=True, error_model="numpy")
def ldl_solve(F, n, X, m):
    """:func:`ldl_solve_at` of 2-d F and X."""
    ldl_solve_at(_as3(F), 0, n, _as3(X), 0, m)


@njit(cache=True, error_model="numpy")
def ldl_inverse(F, n, out):
    """:func:`ldl_inverse_at` of 2-d F and out."""
    ldl_inverse_at(_as3(F), 0, n, _as3(out), 0)


@njit(cache=True, error_model="numpy")
def lu_solve(M, X):
    """Solve M Y = X in place for square M and X with any number of columns: Gaussian
    elimination with partial pivoting on [M X], then back substitution (Y overwrites X;
    M is destroyed). False at an exactly zero pivot."""
    n, r = M.shape[0], X.shape[1]
    for k in range(n):
        best = k
        big = abs(M[k, k])
        for i in range(k + 1, n):
            if abs(M[i, k]) > big:
                big = abs(M[i, k])
                best = i
        if big == 0.0:
            return False
        if best != k:
            for t in range(k, n):
                tmp = M[k, t]
                M[k, t] = M[best, t]
                M[best, t] = tmp
            for t in range(r):
                tmp = X[k, t]
                X[k, t] = X[best, t]
                X[best, t] = tmp
        inv = 1.0 / M[k, k]
        M[k, k] = inv
        for i in range(k + 1, n):
            f = M[i, k] * inv
            for t in range(k + 1, n):
                M[i, t] -= f * M[k, t]
            for t in range(r):
                X[i, t] -= f * X[k, t]
    for i in range(n - 1, -1, -1):
        for t in range(r):
            acc = X[i, t]
            for l in range(i + 1, n):
                acc -= M[i, l] * X[l, t]
            X[i, t] = acc * M[i, i]
    return True


@njit(cache=True, error_model="numpy")
def scaled_eigh(H, d, w):
    """Eigenvalues (ascending, into ``w``) of D^{-1/2} H D^{-1/2}, D = diag(H), and
    d = diag(H)^{-1/2} into ``d``. Returns False (w all nan) when H is not finite or a
    diagonal element is not positive (then H is not positive definite)."""
    m = H.shape[0]
    for i in range(m):
        for j in range(m):
            if not math.isfinite(H[i, j]):
                w[:] = np.nan
                return False
        if not H[i, i] > 0.0:
            w[:] = np.nan
            return False
        d[i] = 1.0 / math.sqrt(H[i, i])
    Hs = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Hs[i, j] = H[i, j] * d[i] * d[j]
    if m == 2:
        # (a + c) / 2 -+ sqrt(((a - c) / 2)^2 + b^2), from the lower triangle as LAPACK
        # reads it: a random intercept's (tau^2, sigma^2) without LAPACK's overhead
        half = 0.5 * (Hs[0, 0] + Hs[1, 1])
        rad = math.hypot(0.5 * (Hs[0, 0] - Hs[1, 1]), Hs[1, 0])
        w[0] = half - rad
        w[1] = half + rad
        return True
    ev = np.linalg.eigvalsh(Hs)
    for i in range(m):
        w[i] = ev[i]
    return True


@njit(cache=True, error_model="numpy")
def scaled_inverse(H, d, c, out):
    """out = c H^{-1}, computed as c D^{-1/2} (D^{-1/2} H D^{-1/2})^{-1} D^{-1/2} with
    d = diag(H)^{-1/2} from :func:`scaled_eigh` (so a badly scaled H loses no digits).
    False at an exactly zero pivot."""
    m = H.shape[0]
    Hs = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Hs[i, j] = H[i, j] * d[i] * d[j]
            out[i, j] = c if i == j else 0.0
    if not lu_solve(Hs, out):
        return False
    for i in range(m):
        for j in range(m):
            out[i, j] *= d[i] * d[j]
    symmetrise(out)
    return True

