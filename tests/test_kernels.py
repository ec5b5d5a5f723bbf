"""The compiled building blocks against plain numpy on random data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlmsim
from mlmsim.engine import kernels
from mlmsim.engine.stats import group_stats


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), R=st.integers(1, 4), J=st.integers(2, 9),
       p=st.integers(1, 4), q=st.integers(1, 3), shuffled=st.booleans())
def test_group_stats_equal_numpy_sums(seed, R, J, p, q, shuffled):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, J)
    codes = np.repeat(np.arange(J), sizes)
    if shuffled:
        codes = rng.permutation(codes)
    N = codes.size
    y = rng.normal(3.0, 2.0, (R, N))
    X = rng.normal(1.0, 1.0, (R, N, p))
    Z = rng.normal(size=(R, N, q))
    ys = rng.normal(size=R)
    Xs = rng.normal(size=(R, p))
    got = group_stats(y, X, Z, codes, J, ys, Xs)
    yc, Xc = y - ys[:, None], X - Xs[:, None, :]
    onehot = (codes[:, None] == np.arange(J)[None, :]).astype(float)      # (N, J)
    A = np.einsum("nj,rna,rnb->rjab", onehot, Z, Z)
    B = np.einsum("nj,rna,rnb->rjab", onehot, Z, Xc)
    c = np.einsum("nj,rna,rn->rja", onehot, Z, yc)
    np.testing.assert_allclose(got.A, A, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.B, B, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.c, c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.XtX, np.einsum("rna,rnb->rab", Xc, Xc), rtol=1e-12)
    np.testing.assert_allclose(got.Xty, np.einsum("rna,rn->ra", Xc, yc), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.yty, (yc**2).sum(-1), rtol=1e-12)
    np.testing.assert_array_equal(got.n[0], np.bincount(codes, minlength=J))


def test_column_means_and_the_ones_column():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 50))
    X = np.concatenate((rng.normal(size=(3, 50, 1)), np.ones((3, 50, 1)),
                        rng.normal(size=(3, 50, 1))), axis=-1)
    X[1, 7, 2] = 1.0
    ybar, m, ones = kernels.column_means_many(y, X)
    np.testing.assert_allclose(ybar, y.mean(-1), rtol=1e-13)
    np.testing.assert_allclose(m, X.mean(-2), rtol=1e-13)
    np.testing.assert_array_equal(ones, [False, True, False])


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_hsb_fit_converges_at_the_rounding_floor(hsb, method):
    """Near the optimum the deviance is at its rounding floor (|d| ~ 5e4), where a failed
    Newton step counts as convergence: the fit must say converged, with a gradient that is
    zero to the deviance's precision."""
    res = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb, method=method)
    assert res.converged and not res.singular
    assert res.iterations <= 15
    assert np.abs(res.gradient).max() < 1e-3
