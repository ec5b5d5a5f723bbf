"""Closed forms that stand in for LAPACK calls on tiny matrices: the smallest singular value
of W Lambda for q = 1 and 2 (singular_one), and the eigenvalues of a 2 x 2 correlation
form (scaled_eigh). Each must give what the general path gives."""

from __future__ import annotations

import numpy as np
import pytest

from mlmsim.engine.kernels import singular_one
from mlmsim.engine.linalg import scaled_eigh


def _svd_reference(L: np.ndarray, A: np.ndarray, N: float) -> float:
    """sigma_min(W Lambda)^2 with W'W = sum_j A_j / N (W = the transposed Cholesky factor)."""
    W = np.linalg.cholesky(A.sum(axis=0) / N).T
    return float(np.linalg.svd(W @ L, compute_uv=False)[-1] ** 2)


@pytest.mark.parametrize("q", [1, 2])
def test_singular_one_closed_form_equals_the_svd(q):
    rng = np.random.default_rng(q)
    for case in range(300):
        J = int(rng.integers(2, 40))
        Z = rng.normal(size=(J, 5, q)) * np.exp(rng.normal(size=q) * 3)
        if q == 2:
            Z[:, :, 0] = 1.0
        A = np.einsum("jni,jnk->jik", Z, Z)
        L = np.tril(rng.normal(size=(q, q)))
        if case % 5 == 0:                       # near the boundary
            L[-1, -1] *= 1e-6
        got = singular_one(L, A, float(J * 5))
        want = _svd_reference(L, A, J * 5)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-14 * np.abs(L).max() ** 2), case


def test_singular_one_at_zero():
    A = np.ones((3, 1, 1)) * 5.0
    assert singular_one(np.zeros((1, 1)), A, 15.0) == 0.0


def test_scaled_eigh_2x2_equals_lapack():
    rng = np.random.default_rng(7)
    for case in range(500):
        s = np.exp(rng.normal(size=2) * 4)
        r = np.tanh(rng.normal() * 3)
        if case % 7 == 0:
            r = np.sign(r) * (1 - 10.0 ** -rng.uniform(3, 12))   # nearly singular
        H = np.array([[1.0, r], [r, 1.0]]) * np.outer(s, s)
        d, w = np.empty(2), np.empty(2)
        assert scaled_eigh(H, d, w)
        Hs = H * np.outer(d, d)
        want = np.linalg.eigvalsh(Hs)
        assert np.allclose(w, want, rtol=0, atol=4e-16 * 4), (case, w, want)
        assert w[0] <= w[1]
    # not positive definite: the smaller eigenvalue is negative, as LAPACK says
    d, w = np.empty(2), np.empty(2)
    assert scaled_eigh(np.array([[1.0, 2.0], [2.0, 1.0]]), d, w)
    assert np.allclose(w, [-1.0, 3.0])
    # a non-positive diagonal: False and nan, for every size
    for m in (2, 3):
        H = np.eye(m)
        H[0, 0] = -1.0
        d, w = np.empty(m), np.empty(m)
        assert not scaled_eigh(H, d, w)
        assert np.isnan(w).all()


def test_column_maxima_with_nan_inf_and_extreme_values():
    """terms.max_abs_by_column (the unit check's pass over X and Z): max |X_ic| per column,
    NaN exactly where the column holds a NaN, in C or Fortran order."""
    from mlmsim.model.terms import max_abs_by_column

    rng = np.random.default_rng(11)
    for trial in range(300):
        X = rng.normal(size=(int(rng.integers(1, 50)), int(rng.integers(1, 5))))
        X *= 10.0 ** float(rng.integers(-300, 300))
        if trial % 3 == 0:
            X[rng.integers(X.shape[0]), rng.integers(X.shape[1])] = np.nan
        if trial % 5 == 0:
            X[rng.integers(X.shape[0]), rng.integers(X.shape[1])] = -np.inf
        want = np.where(np.isnan(X).any(axis=0), np.nan,
                        np.abs(np.nan_to_num(X, nan=0.0, posinf=np.inf, neginf=-np.inf))
                        .max(axis=0))
        for A in (X, np.asfortranarray(X)):
            assert np.array_equal(max_abs_by_column(A), want, equal_nan=True), trial
