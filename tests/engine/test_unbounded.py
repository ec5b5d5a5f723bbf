"""Unbounded variance estimates (SAS NOBOUND), docs/math.md (6.7).

Expected values come from closed forms (the one-way ANOVA estimator) and from a dense
n x n likelihood optimised by scipy; nothing here is a recorded mlmsim output.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

import mlmsim


def _one_way(seed: int, J: int, n: int, tau: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    return pd.DataFrame({"y": tau * rng.normal(size=J)[g] + rng.normal(size=J * n), "g": g})


@pytest.mark.parametrize("seed", range(6))
def test_balanced_one_way_reml_is_the_anova_estimate(seed):
    J, n = 10, 4
    df = _one_way(seed, J, n, tau=0.3)
    y, g = df.y.to_numpy(), df.g.to_numpy()
    ybar = df.groupby("g").y.mean().to_numpy()
    msb = n * np.sum((ybar - y.mean()) ** 2) / (J - 1)
    msw = np.sum((y - ybar[g]) ** 2) / (J * (n - 1))
    res = mlmsim.fit("y ~ 1 + (1 | g)", df, bounded=False)
    assert res.converged and not res.bounded
    assert res.phi[0] == pytest.approx((msb - msw) / n, rel=1e-7, abs=1e-10)
    assert res.phi[1] == pytest.approx(msw, rel=1e-7)
    if msb < msw:
        assert res.phi[0] < 0 and res.singular and np.isnan(res.theta).all()
        assert any("Estimated G matrix is not positive definite" in m for m in res.messages)
        bounded = mlmsim.fit("y ~ 1 + (1 | g)", df)
        assert res.deviance < bounded.deviance


def test_some_seeds_give_a_negative_anova_estimate():
    """The parametrised test above exercises the negative branch (MSB < MSW)."""
    neg = [s for s in range(6) if mlmsim.fit("y ~ 1 + (1 | g)", _one_way(s, 10, 4, 0.3),
                                             bounded=False).phi[0] < 0]
    assert len(neg) >= 1


def test_interior_optimum_is_the_bounded_one():
    hsb = mlmsim.datasets.load("hsb")
    for f in ("mathach ~ cses + (1 + cses | school)", "mathach ~ cses + (1 | school)"):
        a = mlmsim.fit(f, hsb)
        b = mlmsim.fit(f, hsb, bounded=False)
        np.testing.assert_allclose(b.phi, a.phi, rtol=1e-6)
        np.testing.assert_allclose(b.fixef, a.fixef, rtol=1e-6)
        np.testing.assert_allclose(b.ddf(), a.ddf(), rtol=1e-6)
        np.testing.assert_allclose(b.theta, a.theta, rtol=1e-6, atol=1e-10)
        assert b.deviance == pytest.approx(a.deviance, abs=1e-6)
        assert b.converged and b.hessian_pd and not b.singular


def _small_slope_data(seed: int) -> pd.DataFrame:
    """J = 8 groups of 4 with small level-2 variances: the bounded optimum is often on the
    boundary, and the unbounded criterion often has no interior minimum."""
    rng = np.random.default_rng(seed)
    J, n = 8, 4
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = 1 + 0.5 * x + 0.2 * rng.normal(size=J)[g] + 0.2 * rng.normal(size=J)[g] * x \
        + rng.normal(size=J * n)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def _dense_criterion(phi, X, Z, g, y, rows, cols, reml):
    """-2 log L (ML) or -2 log L_R (REML) with V built densely; inf where V is not PD."""
    q = Z.shape[1]
    T = np.zeros((q, q))
    T[rows, cols] = phi[:-1]
    T[cols, rows] = phi[:-1]
    same = g[:, None] == g[None, :]
    V = (Z @ T @ Z.T) * same + phi[-1] * np.eye(len(y))
    try:
        Lc = np.linalg.cholesky(V)
        Vi = np.linalg.inv(V)
        XVX = X.T @ Vi @ X
        beta = np.linalg.solve(XVX, X.T @ Vi @ y)
    except np.linalg.LinAlgError:  # V (numerically) singular: outside the region
        return np.inf
    r = y - X @ beta
    n, p = X.shape
    nu = n - p if reml else n
    f = nu * np.log(2 * np.pi) + 2 * np.log(np.diag(Lc)).sum() + r @ Vi @ r
    if reml:
        f += np.linalg.slogdet(XVX)[1]
    return f


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), method=st.sampled_from(["REML", "ML"]),
       slope=st.booleans())
def test_unbounded_criterion_equals_a_dense_brute_force_optimum(seed, method, slope):
    df = _small_slope_data(seed)
    formula = "y ~ x + (1 + x | g)" if slope else "y ~ x + (1 | g)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = mlmsim.fit(formula, df, method=method)
        res = mlmsim.fit(formula, df, method=method, bounded=False)
    d, cs = res.design, res.cov_structure
    crit = lambda p: _dense_criterion(p, d.X, d.Z, d.group_codes, d.y, cs.rows, cs.cols,  # noqa: E731
                                      method == "REML")
    assert res.deviance <= bounded.deviance + 1e-8 * abs(bounded.deviance)
    if not res.converged:
        # no interior optimum: the iterations ran towards a V_j that is singular (where a
        # dense evaluation loses its digits), and the fit says so
        assert _smallest_V_eigenvalue(res.phi, res) < 1e-6 * res.sigma2
        assert any("NOBOUND" in m for m in res.messages)
        return
    assert crit(res.phi) == pytest.approx(res.deviance, abs=1e-8)
    nm = {"xatol": 1e-10, "fatol": 1e-12, "maxiter": 40000, "maxfev": 40000}
    # a brute-force search started next to the estimate finds nothing lower: a minimum
    local = optimize.minimize(crit, np.asarray(res.phi) * (1 + 1e-3) + 1e-4,
                              method="Nelder-Mead", options=nm)
    assert res.deviance == pytest.approx(local.fun, abs=1e-6)
    assert res.deviance <= local.fun + 1e-8
    # Powell from there, and the brute force from the bounded estimate, reach the same
    # minimum, or else run to the edge of the region (a V_j singular), where the criterion
    # has no lower bound (test_the_criterion_has_no_lower_bound_at_the_edge); Powell's line
    # searches can leap there from the minimum itself
    start = np.asarray(bounded.phi, dtype=float)
    simplex = np.vstack([start, start + 0.2 * start[-1] * np.eye(start.size)])
    brute = optimize.minimize(crit, start, method="Nelder-Mead",
                              options={**nm, "initial_simplex": simplex})
    for x in (local.x, brute.x):
        found = optimize.minimize(crit, x, method="Powell",
                                  options={"xtol": 1e-10, "ftol": 1e-14, "maxiter": 40000})
        if abs(found.fun - res.deviance) > 1e-6:
            assert found.fun < res.deviance
            assert _smallest_V_eigenvalue(found.x, res) < 1e-8 * found.x[-1]


def test_the_criterion_has_no_lower_bound_at_the_edge():
    """The draw that showed it (seed 1837, ML, random slope): the unbounded fit converges
    to an interior minimum, and from there the ML criterion first rises, then falls
    without bound as one V_j turns singular (like log of its smallest eigenvalue), so a
    search that reaches the edge finds values below any interior minimum."""
    df = _small_slope_data(1837)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mlmsim.fit("y ~ x + (1 + x | g)", df, method="ML", bounded=False)
    assert res.converged and any("NOBOUND" in m for m in res.messages)
    d, cs = res.design, res.cov_structure
    phi = np.asarray(res.phi, dtype=float)
    assert _dense_criterion(phi, d.X, d.Z, d.group_codes, d.y, cs.rows, cs.cols,
                            False) == pytest.approx(res.deviance, abs=1e-8)
    # move cov(x, Intercept) towards the value where V_3 is singular
    edge = phi.copy()
    edge[1] = optimize.brentq(lambda c: _smallest_V_eigenvalue(
        np.r_[phi[0], c, phi[2:]], res), phi[1], -0.05)
    values, eigen = [], []
    for t in (0.0, 0.5, 0.99, 0.9999, 0.999999):
        p = phi + t * (edge - phi)
        values.append(_dense_criterion(p, d.X, d.Z, d.group_codes, d.y, cs.rows, cs.cols,
                                       False))
        eigen.append(_smallest_V_eigenvalue(p, res))
    assert values[1] > values[0]                          # a minimum inside
    assert values[2] > values[3] > values[4] and values[4] < values[0] - 5
    assert eigen[4] < 1e-5 * eigen[0]


def _smallest_V_eigenvalue(phi, res) -> float:
    """min over groups of the smallest eigenvalue of V_j = Z_j T Z_j' + sigma^2 I."""
    d, cs = res.design, res.cov_structure
    T = cs.T(np.asarray(phi, dtype=float))
    g = d.group_codes
    return min(np.linalg.eigvalsh(d.Z[g == j] @ T @ d.Z[g == j].T
                                  + phi[-1] * np.eye(int(np.sum(g == j))))[0]
               for j in np.unique(g))


def test_no_interior_maximum_is_flagged_not_raised():
    """Group means exactly equal: the REML criterion falls towards tau^2 = -sigma^2 / n,
    where every V_j is singular; the fit reports the last point, not converged."""
    rng = np.random.default_rng(1)
    J, n = 12, 5
    g = np.repeat(np.arange(J), n)
    e = rng.normal(size=J * n)
    y = e - pd.Series(e).groupby(g).transform("mean").to_numpy() + 5.0
    df = pd.DataFrame({"y": y, "g": g})
    with pytest.warns(UserWarning, match="NOBOUND"):
        res = mlmsim.fit("y ~ 1 + (1 | g)", df, bounded=False)
    assert not res.converged and res.phi[0] < 0 and np.isfinite(res.deviance)
    assert res.phi[0] > -res.phi[1] / n        # still inside: every V_j positive definite
    b = mlmsim.fit_batch("y ~ 1 + (1 | g)", [df, _one_way(0, J, n, 0.3)], bounded=False)
    assert list(b.converged) == [False, True]
    assert any("NOBOUND" in m for m in b.messages[0])


def test_batched_unbounded_equals_single():
    sets = [_one_way(s, 10, 4, 0.3) for s in range(5)]
    b = mlmsim.fit_batch("y ~ 1 + (1 | g)", sets, bounded=False)
    assert not b.bounded
    for r, d in enumerate(sets):
        one = mlmsim.fit("y ~ 1 + (1 | g)", d, bounded=False)
        np.testing.assert_allclose(b.estimates.phi[r], one.phi, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b.ddf()[r], one.ddf(), rtol=1e-7)
        assert b.singular[r] == one.singular


def test_inference_of_an_unbounded_fit():
    df = _one_way(0, 10, 4, 0.3)
    res = mlmsim.fit("y ~ 1 + (1 | g)", df, bounded=False)
    for information in ("observed", "expected"):
        assert np.isfinite(res.covparms_table(information)["se"]).all()
    assert np.isfinite(res.coef_table("kenward-roger")["df"]).all()
    assert np.isfinite(res.coef_table("satterthwaite")["df"]).all()


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_small_random_slope_designs_never_raise(method):
    """20 small designs where many have no interior optimum (V_j runs to singular): each
    fit returns, converged or flagged (one of them once raised from a singular M_j)."""
    flagged = 0
    for seed in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = mlmsim.fit("y ~ x + (1 + x | g)", _small_slope_data(seed), method=method,
                             bounded=False)
        assert np.isfinite(res.deviance)
        if not res.converged:
            flagged += 1
            assert any("NOBOUND" in m for m in res.messages)
    assert 0 < flagged < 20
