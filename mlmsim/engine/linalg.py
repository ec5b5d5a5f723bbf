"""Compiled small dense linear algebra: the primitives every per-group kernel uses.

The matrices of a two-level model's per-group algebra are q x q (q <= 4 or so) and
p x p; a LAPACK call costs more in overhead than the work, so these are written as plain
loops that numba compiles. All work in place and allocate nothing.

- :func:`ldl` factors a symmetric matrix as L Delta L' (unit lower L, diagonal Delta),
  without pivoting, and counts Delta's negative pivots: for a positive definite matrix
  it is the Cholesky factorisation without square roots; for the signed
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

__all__ = ["ldl", "ldl_solve", "ldl_inverse", "lu_solve", "scaled_eigh", "scaled_inverse"]

_BIG = 1e280


@njit(cache=True, error_model="numpy")
def ldl(M, n):
    """Factor the symmetric M[:n, :n] (lower triangle read) as L Delta L' in place: the
    strict lower triangle holds L, the diagonal holds Delta. Returns (log|det M|, number
    of negative pivots); log|det M| is nan when a pivot is zero or not finite."""
    prod = 1.0
    logdet = 0.0
    neg = 0
    for j in range(n):
        d = M[j, j]
        for k in range(j):
            d -= M[j, k] * M[j, k] * M[k, k]
        if not (d != 0.0 and math.isfinite(d)):
            return np.nan, neg
        M[j, j] = d
        if d < 0.0:
            neg += 1
        prod *= abs(d)
        if prod > _BIG or prod < 1.0 / _BIG:
            logdet += math.log(prod)
            prod = 1.0
        r = 1.0 / d
        for i in range(j + 1, n):
            s = M[i, j]
            for k in range(j):
                s -= M[i, k] * M[j, k] * M[k, k]
            M[i, j] = s * r
    return logdet + math.log(prod), neg


@njit(cache=True, error_model="numpy")
def ldl_solve(F, n, X, m):
    """Solve (L Delta L') Y = X[:n, :m] in place, with F from :func:`ldl`."""
    for col in range(m):
        for i in range(n):
            s = X[i, col]
            for k in range(i):
                s -= F[i, k] * X[k, col]
            X[i, col] = s
        for i in range(n):
            X[i, col] = X[i, col] / F[i, i]
        for i in range(n - 1, -1, -1):
            s = X[i, col]
            for k in range(i + 1, n):
                s -= F[k, i] * X[k, col]
            X[i, col] = s


@njit(cache=True, error_model="numpy")
def ldl_inverse(F, n, out):
    """out[:n, :n] = (L Delta L')^{-1}, F from :func:`ldl`."""
    for i in range(n):
        for j in range(n):
            out[i, j] = 1.0 if i == j else 0.0
    ldl_solve(F, n, out, n)


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
    for i in range(m):
        for j in range(i):
            v = 0.5 * (out[i, j] + out[j, i])
            out[i, j] = v
            out[j, i] = v
    return True
