"""Compiled statistics: one pass over the rows gives every per-group sum (docs/math.md (2.1)).

:func:`group_sums_one` lays [Z, X, y] out once in group order and forms every sufficient
statistic as a dot product over a group's rows; :func:`dependence_screen` screens the
A_j for random-effect columns that may be dependent in every group (docs/math.md (9.3)).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from mlmsim.engine.linalg import ldl
from mlmsim.engine.tolerances import DEPENDENT_SCREEN
from mlmsim.model.terms import fill_terms

__all__ = ["group_sums_one", "dependence_screen"]


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

    y (N,); the design columns are products of variables (:mod:`mlmsim.model.terms`): X's p
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
    (docs/math.md (2.1))
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
    DEPENDENT_SCREEN. A (R, J, q, q), n (R, J). Only these replicates need an
    eigen-decomposition.
    (docs/math.md (9.3))"""
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
            ld, neg = ldl(Cs, q)
            if not math.isnan(ld) and neg == 0 and ld >= math.log(DEPENDENT_SCREEN):
                cand = False
                break
            cand = True
        out[r] = cand
    return out
