"""Design columns as products of variables, without forming the design matrix.

A term of an lme4 formula with plain numeric columns is the intercept, a column,
or a product of columns (``x:z``). Given the variables of R data sets as one array
V (R, N, k), a design of t columns is a (t, s) integer matrix ``terms``: column c
is

    X[r, i, c] = prod_{f in terms[c], f >= 0} V[r, i, f]

(-1 pads a row; a row of -1 alone is the intercept, a column of ones). The
statistics kernel (:func:`mlmsim.engine.kernels.group_sums_one`) and the
generator read designs in this form, so a stack of replicates never carries X and
Z, only the few variables they are made of.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

__all__ = ["identity_terms", "term_matrix", "variable_array", "term_products", "fill_terms",
           "column_max_abs", "max_abs_by_column", "unit_powers", "UNITS_NEAR_ONE"]


def column_max_abs(X: np.ndarray) -> np.ndarray:
    """max_i |X[i, c]| for each column c of a design (N, p), N > 0; NaN where the column
    holds a NaN. (numpy reduces a tall C-ordered array along its rows about 15 times
    slower than along a contiguous axis; one pass over the rows instead.)"""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] == 0:
        return np.abs(X).max(axis=0)
    return max_abs_by_column(X)


@njit(cache=True)
def max_abs_by_column(X):
    """:func:`column_max_abs` of a 2-d array with N > 0, for compiled callers."""
    N, p = X.shape
    out = np.zeros(p)
    total = np.zeros(p)  # sum of |X_ic|: NaN exactly where the column holds a NaN
    for i in range(N):   # row by row, as a design is laid out (C order)
        for c in range(p):
            a = abs(X[i, c])
            total[c] += a
            if a > out[c]:
                out[c] = a
    for c in range(p):
        if total[c] != total[c]:
            out[c] = np.nan
    return out


UNITS_NEAR_ONE = 24
"""A design column whose largest |value| lies in [2^-24, 2^25) is in units near 1."""


def unit_powers(big: np.ndarray) -> np.ndarray:
    """Per column, the power of 2 that brings its largest |value| ``big`` into [1, 2):
    2^(1 - e) for its binary exponent e, where it lies outside [2^-UNITS_NEAR_ONE,
    2^(UNITS_NEAR_ONE + 1)); 1 where it lies inside, or is 0 or not finite. Multiplying by
    a power of 2 is exact in floating point."""
    big = np.asarray(big, dtype=float)
    ok = np.isfinite(big) & (big > 0)
    e = np.frexp(np.where(ok, big, 1.0))[1]
    far = ok & ((e - 1 > UNITS_NEAR_ONE) | (e - 1 < -UNITS_NEAR_ONE))
    return np.ldexp(1.0, np.where(far, 1 - e, 0))


def identity_terms(k: int) -> np.ndarray:
    """Terms (k, 1) that take k variables as they are: design column c is variable c."""
    return np.arange(k, dtype=np.int64)[:, None]


def term_matrix(factors: Sequence[Sequence[int]]) -> np.ndarray:
    """Each term's variable indices (an empty list for the intercept) as a (t, s) int64
    matrix padded with -1."""
    width = max([1] + [len(f) for f in factors])
    out = np.full((len(factors), width), -1, dtype=np.int64)
    for c, f in enumerate(factors):
        out[c, :len(f)] = f
    return out


def variable_array(values: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Variables, each of ``shape``, as one array ``shape + (k,)`` (a view when k = 1)."""
    if len(values) == 1:
        return values[0][..., None]
    return np.stack(values, axis=-1) if values else np.empty(shape + (0,))


def term_products(variables: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """The design columns (..., N, t) of ``terms`` over ``variables`` (..., N, k), formed
    (for inspection and for callers that need the matrix)."""
    out = np.ones(variables.shape[:-1] + (terms.shape[0],))
    for c, row in enumerate(terms):
        for f in row[row >= 0]:
            out[..., c] *= variables[..., f]
    return out


@njit(cache=True, error_model="numpy")
def fill_terms(W, row0, V, terms, order, ordered):
    """W[row0 + c, i] = prod_s V[order[i], terms[c, s]] over the factors terms[c, s] >= 0:
    one data set's design columns (variables V (N, k)), one per row of W (N columns),
    with the data rows taken in ``order``. ``ordered``: order is the identity, so the
    rows are read in place."""
    N = W.shape[1]
    for c in range(terms.shape[0]):
        w = W[row0 + c]
        for i in range(N):
            w[i] = 1.0
        for s in range(terms.shape[1]):
            f = terms[c, s]
            if f < 0:
                break
            if ordered:
                for i in range(N):
                    w[i] *= V[i, f]
            else:
                for i in range(N):
                    w[i] *= V[order[i], f]
