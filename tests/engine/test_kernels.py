"""The compiled building blocks against plain numpy on random data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlmsim
from mlmsim.engine.stats import centred_group_stats, group_stats


def _numpy_sums(y, X, Z, codes, J):
    """The statistics by plain numpy: one-hot group sums of cross-products."""
    onehot = (codes[:, None] == np.arange(J)[None, :]).astype(float)      # (N, J)
    return dict(
        A=np.einsum("nj,rna,rnb->rjab", onehot, Z, Z),
        B=np.einsum("nj,rna,rnb->rjab", onehot, Z, X),
        c=np.einsum("nj,rna,rn->rja", onehot, Z, y),
        XtX=np.einsum("rna,rnb->rab", X, X),
        Xty=np.einsum("rna,rn->ra", X, y),
        yty=(y**2).sum(-1),
    )


def _assert_stats(got, want):
    for name, value in want.items():
        np.testing.assert_allclose(getattr(got, name), value, rtol=1e-12, atol=1e-11,
                                   err_msg=name)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), R=st.integers(1, 4), J=st.integers(2, 9),
       p=st.integers(1, 4), q=st.integers(1, 3), shuffled=st.booleans(),
       empty=st.booleans())
def test_group_stats_equal_numpy_sums(seed, R, J, p, q, shuffled, empty):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, J)
    if empty:
        sizes[rng.integers(J)] = 0            # a group with no rows
    codes = np.repeat(np.arange(J), sizes)
    if shuffled:
        codes = rng.permutation(codes)
    N = codes.size
    y = rng.normal(3.0, 2.0, (R, N))
    X = rng.normal(1.0, 1.0, (R, N, p))
    Z = rng.normal(size=(R, N, q))
    got = group_stats(y, X, Z, codes, J)
    _assert_stats(got, _numpy_sums(y, X, Z, codes, J))
    np.testing.assert_array_equal(got.n[0], np.bincount(codes, minlength=J))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), R=st.integers(1, 3), shuffled=st.booleans(),
       intercept_at=st.integers(0, 2))
def test_centred_stats_are_those_of_the_centred_data(seed, R, shuffled, intercept_at):
    """Centred about each replicate's intercept column (wherever it sits); its map
    sends the centred fixed effects back to the raw ones exactly (X gamma = X_c gamma_c +
    ybar for gamma = L gamma_c + offset)."""
    rng = np.random.default_rng(seed)
    J = 6
    codes = np.repeat(np.arange(J), rng.integers(1, 6, J))
    if shuffled:
        codes = rng.permutation(codes)
    N = codes.size
    X = np.insert(rng.normal(5.0, 1.0, (R, N, 2)), intercept_at, 1.0, axis=-1)
    Z = X[..., :2]
    y = rng.normal(40.0, 2.0, (R, N))
    got, cen = centred_group_stats(y, X, Z, codes, J)
    m = X.mean(axis=1)
    m[:, intercept_at] = 0.0
    yc, Xc = y - y.mean(axis=1, keepdims=True), X - m[:, None, :]
    _assert_stats(got, _numpy_sums(yc, Xc, Z, codes, J))
    gamma_c = rng.normal(size=(R, 3))
    lhs = np.einsum("rnk,rk->rn", X, cen.beta(gamma_c))
    rhs = np.einsum("rnk,rk->rn", Xc, gamma_c) + y.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_no_intercept_means_no_shift():
    rng = np.random.default_rng(3)
    codes = np.repeat(np.arange(4), 5)
    X = rng.normal(2.0, 1.0, (1, 20, 2))
    y = rng.normal(size=(1, 20))
    got, cen = centred_group_stats(y, X, X, codes, 4)
    _assert_stats(got, _numpy_sums(y, X, X, codes, 4))
    np.testing.assert_array_equal(cen.L[0], np.eye(2))
    np.testing.assert_array_equal(cen.offset, 0.0)


def test_terms_are_products_of_variables():
    """Design columns given as terms over variables equal the formed X and Z: an intercept,
    single variables and a two-way product."""
    rng = np.random.default_rng(4)
    R, N, J = 2, 30, 5
    codes = rng.permutation(np.repeat(np.arange(J), 6))
    V = rng.normal(size=(R, N, 2))
    y = rng.normal(size=(R, N))
    fixed = np.array([[-1, -1], [0, -1], [1, -1], [0, 1]])
    random = np.array([[-1, -1], [1, -1]])
    one = np.ones((R, N))
    X = np.stack([one, V[..., 0], V[..., 1], V[..., 0] * V[..., 1]], axis=-1)
    Z = np.stack([one, V[..., 1]], axis=-1)
    got = group_stats(y, V, V, codes, J, fixed_terms=fixed, random_terms=random)
    _assert_stats(got, _numpy_sums(y, X, Z, codes, J))


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_hsb_fit_converges_at_the_rounding_floor(hsb, method):
    """Near the optimum the deviance is at its rounding floor (|d| ~ 5e4), where a failed
    Newton step counts as convergence: the fit must say converged, with a gradient that is
    zero to the deviance's precision."""
    res = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb, method=method)
    assert res.converged and not res.singular
    assert res.iterations <= 15
    assert np.abs(res.optsum.final_gradient).max() < 1e-3
    assert res.optsum.converged and res.optsum.evaluations >= res.iterations


def test_statistics_refuse_shapes_that_do_not_fit_the_codes():
    """A response or design with other than N rows is an error naming it (the compiled
    kernel does no bounds checks, so the shapes are checked before it runs)."""
    rng = np.random.default_rng(5)
    codes = np.repeat(np.arange(5), 4)
    y, X = rng.normal(size=(2, 20)), rng.normal(size=(2, 20, 2))
    with pytest.raises(ValueError, match="y of a data set has shape"):
        group_stats(y[:, :16], X, X, codes, 5)
    with pytest.raises(ValueError, match="Z of a data set has shape"):
        group_stats(y, X, X[:, :17], codes, 5)
    with pytest.raises(ValueError, match=r"group codes must lie in 0\.\.4"):
        group_stats(y, X, X, codes + 1, 5)
    with pytest.raises(ValueError, match="integers"):
        group_stats(y, X, X, codes + 0.5, 5)


def test_statistics_take_nested_lists_and_lists_of_data_sets():
    rng = np.random.default_rng(6)
    codes = np.repeat(np.arange(4), 5)
    y, X = rng.normal(size=(3, 20)), rng.normal(size=(3, 20, 2))
    want = group_stats(y, X, X, codes, 4)
    for got in (group_stats(y.tolist(), X.tolist(), X.tolist(), codes.tolist(), 4),
                group_stats(list(y), list(X), list(X), codes, 4)):
        _assert_stats(got, {f: getattr(want, f) for f in ("A", "B", "c", "XtX", "Xty", "yty")})


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("q", [1, 2])
def test_q_specialised_kernels_equal_the_general_ones(q, reml):
    """The per-group algebra is written once; numba compiles a copy with q as a constant for
    q = 1 and 2 (``qtoken``). That copy must compute what the general code computes: the
    deviance and gradient, the optimiser's path, the phi pass and the read-out."""
    from mlmsim.engine import kernels, newton, phi_kernel
    from mlmsim.engine.gls import Stats, qtoken
    from mlmsim.engine.stats import flat_arrays

    assert qtoken(q) == (0,) * q and qtoken(3) == ()
    rng = np.random.default_rng(q)
    J, n = 25, 6
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = 1 + 0.5 * x + rng.normal(size=J)[g] + 0.4 * rng.normal(size=J)[g] * x \
        + rng.normal(size=J * n)
    formula = "y ~ x + (1 + x | g)" if q == 2 else "y ~ x + (1 | g)"
    import pandas as pd
    res = mlmsim.fit(formula, pd.DataFrame({"y": y, "x": x, "g": g}),
                     method="REML" if reml else "ML")
    st = Stats(*flat_arrays(res.stats.select(None)))
    tm, cs = res.theta_map, res.cov_structure
    theta = np.stack([res.theta, 1.3 * res.theta + 0.1])[None]
    spec = kernels.deviance_many(theta, st, tm.rows, tm.cols, reml, True, qtoken(q))
    gen = kernels.deviance_many(theta, st, tm.rows, tm.cols, reml, True, ())
    for a, b in zip(spec, gen, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    phi = np.asarray(res.phi)[None]
    for a, b in zip(phi_kernel.phi_many(st, cs.rows, cs.cols, phi, reml, True, 2, qtoken(q)),
                    phi_kernel.phi_many(st, cs.rows, cs.cols, phi, reml, True, 2, ()), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * np.abs(b).max())
    args = (st, tm.rows, tm.cols, reml, np.zeros((1, tm.size)), False, 300, 1e-12, 1e-8, 2.0,
            1e-2, True)
    a, b = newton.minimize_many(*args, qtoken(q)), newton.minimize_many(*args, ())
    np.testing.assert_allclose(a[0], b[0], rtol=1e-9, atol=1e-12)   # theta
    np.testing.assert_allclose(a[1], b[1], rtol=1e-13)              # deviance
    grad, hess = a[2], a[3]
    ea = kernels.estimates_many(a[0], st, tm.rows, tm.cols, cs.rows, cs.cols, reml, grad, hess,
                                True, qtoken(q))
    eb = kernels.estimates_many(a[0], st, tm.rows, tm.cols, cs.rows, cs.cols, reml, grad, hess,
                                True, ())
    for x_a, x_b in zip(ea, eb, strict=True):
        if x_a.dtype == bool:
            np.testing.assert_array_equal(x_a, x_b)
        else:
            np.testing.assert_allclose(x_a, x_b, rtol=1e-11, atol=1e-13)
