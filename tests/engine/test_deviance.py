"""The fast profiled deviance against a dense, brute-force multivariate-normal likelihood.

For random small data sets (q = 1, 2, 3; balanced and unbalanced; correlated and
diagonal T) and random theta -- not only at the optimum -- the per-group
sufficient-statistic formulas of docs/math.md sections 3-4 must equal

    ML:    -2 log N(y; X beta, V) at beta = beta_GLS, sigma^2 = r'V0^{-1}r / N
    REML:  log|V| + log|X'V^{-1}X| + r'V^{-1}r + (N - p) log 2pi,  sigma^2 = r'V0^{-1}r / (N - p)

with V = sigma^2 V0, V0 = blockdiag(Z_j Lambda Lambda' Z_j' + I), computed here with
dense N x N matrices and scipy.stats.multivariate_normal. The analytic gradient is
checked against central differences, and the objective in phi (inference.phi_objective)
against the same dense likelihood at given (T, sigma^2).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import linalg
from scipy.stats import multivariate_normal

import mlmsim
from mlmsim.engine import inference
from mlmsim.engine.deviance import ThetaMap, deviance, deviance_grad
from mlmsim.engine.stats import group_stats
from mlmsim.model.formula import model_design

LOG2PI = np.log(2.0 * np.pi)
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# random-effect structures: formula's bar part, q
STRUCTURES = [
    ("(1 | g)", 1),
    ("(0 + x1 | g)", 1),
    ("(1 + x1 | g)", 2),
    ("(1 + x1 || g)", 2),
    ("(1 + x1 + x2 | g)", 3),
    ("(1 + x1 | g) + (0 + x2 | g)", 3),
    ("(1 + x1 + x2 || g)", 3),
]


@st.composite
def problems(draw):
    """A small data set, a formula, and a random theta for it."""
    bars, q = draw(st.sampled_from(STRUCTURES))
    J = draw(st.integers(3, 7))
    balanced = draw(st.booleans())
    if balanced:
        sizes = [draw(st.integers(2, 6))] * J
    else:
        sizes = draw(st.lists(st.integers(1, 7), min_size=J, max_size=J))
    n_fixed = draw(st.integers(0, 2))  # covariates beyond the intercept
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    N = sum(sizes)
    if N < J + n_fixed + 3:
        sizes[0] += J + n_fixed + 3 - N
        N = sum(sizes)
    g = np.repeat(np.arange(J), sizes)
    df = pd.DataFrame({"g": g, "x1": rng.normal(size=N), "x2": rng.normal(1.0, 2.0, N),
                       "x3": rng.normal(size=N)})
    df["y"] = (2.0 + df.x1 + rng.normal(size=J)[g] + rng.normal(size=J)[g] * df.x1
               + rng.normal(size=N))
    fixed = " + ".join(["1", "x1", "x3"][: n_fixed + 1])
    formula = f"y ~ {fixed} + {bars}"
    design = model_design(formula, df)
    tmap = ThetaMap.from_blocks(design.Z.shape[1], design.blocks)
    theta = np.array(draw(st.lists(
        st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False),
        min_size=tmap.size, max_size=tmap.size)))
    # sometimes put a diagonal element exactly on the boundary
    if draw(st.booleans()):
        k = draw(st.sampled_from(list(np.flatnonzero(tmap.diagonal))))
        theta[k] = 0.0
    return design, tmap, theta, q


def _dense(design):
    y, X, Z, codes = design.y, design.X, design.Z, design.group_codes
    return y, X, Z, codes


def _blockdiag_V0(Z, codes, Lambda):
    """V0 = blockdiag(Z_j Lambda Lambda' Z_j' + I) as a dense N x N matrix."""
    G = Lambda @ Lambda.T
    same = codes[:, None] == codes[None, :]
    return np.where(same, Z @ G @ Z.T, 0.0) + np.eye(Z.shape[0])


def _gls(X, y, V):
    Vi_X = np.linalg.solve(V, X)
    XtViX = X.T @ Vi_X
    beta = np.linalg.solve(XtViX, Vi_X.T @ y)
    return beta, XtViX


def dense_profiled(design, theta, tmap, reml: bool) -> float:
    """The profiled deviance by brute force: beta and sigma^2 at their optimum given theta."""
    y, X, Z, codes = _dense(design)
    N, p = X.shape
    V0 = _blockdiag_V0(Z, codes, tmap.Lambda(theta))
    beta, _ = _gls(X, y, V0)
    r = y - X @ beta
    r2 = r @ np.linalg.solve(V0, r)
    sigma2 = r2 / (N - p if reml else N)
    return dense_criterion(y, X, sigma2 * V0, beta, reml)


def dense_criterion(y, X, V, beta, reml: bool) -> float:
    """-2 log L (ML) at beta, or the REML criterion (beta = GLS), for y ~ N(X beta, V)."""
    m2ll = -2.0 * multivariate_normal(mean=X @ beta, cov=V, allow_singular=False).logpdf(y)
    if not reml:
        return float(m2ll)
    p = X.shape[1]
    _, XtViX = _gls(X, y, V)
    return float(m2ll + np.linalg.slogdet(XtViX)[1] - p * LOG2PI)


def _stats(design):
    st_ = group_stats(design.y, design.X, design.Z, design.group_codes, design.ngroups)
    return st_, st_


@SETTINGS
@given(problem=problems(), reml=st.booleans())
def test_deviance_equals_dense_likelihood(problem, reml):
    design, tmap, theta, _ = problem
    _, pk = _stats(design)
    fast = float(deviance(pk, theta, tmap, reml))
    ref = dense_profiled(design, theta, tmap, reml)
    assert fast == pytest.approx(ref, rel=1e-10, abs=1e-8)
    # the gradient routine returns the same value
    d, _ = deviance_grad(pk, theta, tmap, reml)
    assert float(d) == pytest.approx(ref, rel=1e-10, abs=1e-8)


@SETTINGS
@given(problem=problems(), reml=st.booleans())
def test_profiled_sigma2_is_the_minimum(problem, reml):
    """The profile over sigma^2 is a minimum: moving sigma^2 off r2/N (r2/(N-p)) raises
    the dense criterion."""
    design, tmap, theta, _ = problem
    y, X, Z, codes = _dense(design)
    N, p = X.shape
    V0 = _blockdiag_V0(Z, codes, tmap.Lambda(theta))
    beta, _ = _gls(X, y, V0)
    r = y - X @ beta
    s2 = (r @ np.linalg.solve(V0, r)) / (N - p if reml else N)
    best = dense_criterion(y, X, s2 * V0, beta, reml)
    for f in (0.97, 1.03):
        assert dense_criterion(y, X, f * s2 * V0, beta, reml) > best
    _, pk = _stats(design)
    assert float(deviance(pk, theta, tmap, reml)) == pytest.approx(best, rel=1e-10, abs=1e-8)


def _central(fun, x, h):
    g = np.empty_like(x)
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = h[k]
        g[k] = (fun(x + e) - fun(x - e)) / (2.0 * h[k])
    return g


def _richardson_grad(fun, x, h):
    """Central differences with one Richardson step (error O(h^4))."""
    g1 = _central(fun, x, h)
    g2 = _central(fun, x, h / 2.0)
    return (4.0 * g2 - g1) / 3.0


@SETTINGS
@given(problem=problems(), reml=st.booleans())
def test_gradient_matches_finite_differences(problem, reml):
    design, tmap, theta, _ = problem
    _, pk = _stats(design)
    _, grad = deviance_grad(pk, theta, tmap, reml)
    fd = _richardson_grad(lambda t: float(deviance(pk, t, tmap, reml)), theta,
                          np.full(theta.size, 1e-3))
    scale = max(1.0, np.abs(fd).max())
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * scale)


@SETTINGS
@given(problem=problems(), reml=st.booleans(),
       log_s2=st.floats(-1.5, 1.5), negate_cov=st.booleans())
def test_phi_objective_equals_dense_likelihood(problem, reml, log_s2, negate_cov):
    """f(phi) (beta profiled, T and sigma^2 given) against the dense -2 log L."""
    design, tmap, theta, _ = problem
    stats, _ = _stats(design)
    sigma2 = float(np.exp(log_s2))
    Lam = tmap.Lambda(theta)
    T = Lam @ Lam.T
    if negate_cov:  # D T D with D = diag(1, -1, 1): other covariance signs, still PSD
        D = np.diag([1.0, -1.0, 1.0][: T.shape[0]])
        T = D @ T @ D
    cs = inference.CovStructure.from_blocks(T.shape[0], design.blocks)
    phi = cs.phi(T, sigma2)
    np.testing.assert_allclose(cs.T(phi), T * _block_mask(design), rtol=1e-15, atol=0)
    T = cs.T(phi)
    y, X, Z, codes = _dense(design)
    same = codes[:, None] == codes[None, :]
    V = np.where(same, Z @ T @ Z.T, 0.0) + sigma2 * np.eye(y.size)
    beta, _ = _gls(X, y, V)
    ref = dense_criterion(y, X, V, beta, reml)
    got = float(inference.phi_objective(stats, cs, phi, reml))
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-8)


def _block_mask(design):
    q = design.Z.shape[1]
    m = np.zeros((q, q))
    for b in design.blocks:
        m[np.ix_(b, b)] = 1.0
    return m


@SETTINGS
@given(problem=problems(), reml=st.booleans(), log_s2=st.floats(-1.0, 1.0))
def test_phi_gradient_matches_finite_differences(problem, reml, log_s2):
    design, tmap, theta, _ = problem
    stats, _ = _stats(design)
    Lam = tmap.Lambda(theta)
    sigma2 = float(np.exp(log_s2))
    # keep T comfortably positive definite so that V stays PD under the steps
    T = Lam @ Lam.T + 0.1 * np.eye(Lam.shape[0])
    cs = inference.CovStructure.from_blocks(T.shape[0], design.blocks)
    phi = cs.phi(T * _block_mask(design), sigma2)
    g = inference.phi_gradient(stats, cs, phi, reml)
    fd = _richardson_grad(lambda x: float(inference.phi_objective(stats, cs, x, reml)), phi,
                          np.full(phi.size, 1e-3))
    scale = max(1.0, np.abs(fd).max())
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * scale)


# ---------------------------------------------------------------------------
# At the optimum: FitResult.deviance is the dense -2 log L at the reported estimates
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("bars", ["(1 | g)", "(1 + x1 | g)", "(1 + x1 || g)",
                                  "(1 + x1 + x2 | g)"])
@pytest.mark.parametrize("sizes", [[6] * 12, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3, 2]])
def test_fit_deviance_is_dense_likelihood_at_estimates(simulate, method, bars, sizes):
    rng = np.random.default_rng(len(bars) * 7 + len(sizes) + sum(sizes))
    df = simulate(rng, sizes, q=3, p_extra=2)
    formula = f"y ~ x1 + x2 + {bars}"
    res = mlmsim.fit(formula, df, method=method)
    d = model_design(formula, df)
    T = res.T.to_numpy()
    same = d.group_codes[:, None] == d.group_codes[None, :]
    V = np.where(same, d.Z @ T @ d.Z.T, 0.0) + res.sigma2 * np.eye(d.nobs)
    beta = res.fixef.to_numpy()
    reml = method == "REML"
    assert res.deviance == pytest.approx(dense_criterion(d.y, d.X, V, beta, reml), rel=1e-10)
    # the reported fixed effects are GLS at the reported V, their vcov (X'V^{-1}X)^{-1}
    gls, XtViX = _gls(d.X, d.y, V)
    np.testing.assert_allclose(beta, gls, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.vcov.to_numpy(), linalg.inv(XtViX), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(res.fixef_se.to_numpy(), np.sqrt(np.diag(linalg.inv(XtViX))),
                               rtol=1e-7)
    # EBLUPs: U_j = T Z_j' V_j^{-1} (y_j - X_j beta)
    r = d.y - d.X @ beta
    for j in range(d.ngroups):
        rows = d.group_codes == j
        Zj = d.Z[rows]
        Vj = V[np.ix_(rows, rows)]
        u = T @ Zj.T @ np.linalg.solve(Vj, r[rows])
        np.testing.assert_allclose(res.ranef.iloc[j].to_numpy(), u, rtol=1e-6,
                                   atol=1e-8 * (1 + np.abs(u).max()))
    np.testing.assert_allclose(res.fitted, d.X @ beta + np.einsum(
        "nq,nq->n", d.Z, res.ranef.to_numpy()[d.group_codes]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.resid, d.y - res.fitted, rtol=0, atol=1e-12)
    # ML variance estimate: sigma^2 = r'V0^{-1}r / N at the optimum (REML: / (N - p))
    N, p = d.X.shape
    r2 = r @ np.linalg.solve(V / res.sigma2, r)
    assert res.sigma2 == pytest.approx(r2 / (N - p if reml else N), rel=1e-9)


# ---------------------------------------------------------------------------
# The optimiser reaches the minimum (checked with scipy's BFGS on the same deviance)
# ---------------------------------------------------------------------------

def _scipy_min(pk, tmap, reml, starts):
    from scipy.optimize import minimize

    best = np.inf
    for s in starts:
        o = minimize(lambda t: float(deviance(pk, t, tmap, reml)), np.asarray(s, dtype=float),
                     jac=lambda t: deviance_grad(pk, t, tmap, reml)[1], method="BFGS",
                     options={"gtol": 1e-9, "maxiter": 2000})
        best = min(best, float(o.fun))
    return best


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), q=st.sampled_from([1, 2, 3]),
       J=st.integers(6, 25), reml=st.booleans())
def test_fit_reaches_the_minimum(simulate, seed, q, J, reml):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 12, J)
    sizes[: max(1, J // 2)] += q  # keep N comfortably above J q
    df = simulate(rng, sizes, q=q, p_extra=2)
    bars = {1: "(1 | g)", 2: "(1 + x1 | g)", 3: "(1 + x1 + x2 | g)"}[q]
    formula = f"y ~ x1 + x2 + {bars}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = mlmsim.fit(formula, df, method="REML" if reml else "ML")
    assert res.converged
    d = model_design(formula, df)
    _, pk = _stats(d)
    tmap = ThetaMap.from_blocks(d.Z.shape[1], d.blocks)
    best = _scipy_min(pk, tmap, reml, [tmap.start(), res.theta])
    assert res.deviance <= best + 1e-7 * (1.0 + abs(best))


def test_no_false_convergence_warning():
    rng = np.random.default_rng(857468802)
    sizes = np.array([2, 1, 11, 9, 12, 5, 3, 6, 3, 3, 9, 12, 4])
    J, N = sizes.size, int(sizes.sum())
    g = np.repeat(np.arange(J), sizes)
    X = rng.standard_normal((N, 2))
    A = rng.standard_normal((2, 2))
    U = rng.multivariate_normal(np.zeros(2), 0.25 * A @ A.T + 0.2 * np.eye(2), size=J)
    y = 1 + X.sum(1) + U[g, 0] + U[g, 1] * X[:, 0] + rng.standard_normal(N)
    df = pd.DataFrame({"g": g, "y": y, "x1": X[:, 0], "x2": X[:, 1]})
    formula = "y ~ x1 + x2 + (1 + x1 | g)"
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = mlmsim.fit(formula, df, method="REML")
    # the fit is at the minimum (scipy's BFGS cannot improve it) ...
    d = model_design(formula, df)
    _, pk = _stats(d)
    tmap = ThetaMap.from_blocks(2, d.blocks)
    assert res.converged
    assert res.deviance <= _scipy_min(pk, tmap, True, [tmap.start()]) + 1e-8
    # ... so there is nothing to warn about
    assert not any("failed to converge" in str(w.message) for w in rec)
    assert not any("failed to converge" in m for m in res.messages)


# Regressions found by the property tests, with lme4 1.1-31's criterion on the same data
# (computed with R from the data written at full precision; lme4 gives no warning on any).

def test_no_false_boundary_optimum(simulate):
    cases = [([1] * 6 + [2] * 4 + [10] * 4, 24, "ML", 163.61603545),
             ([1] * 10 + [2] + [9, 12, 12], 19, "REML", 128.59944723),
             # found by test_fit_reaches_the_minimum (seed 5799270, J = 6): mlmsim 107.052
             # on one boundary, lme4 106.624 on another
             (None, 5799270, "ML", 106.6235794164)]
    for sizes, seed, method, lme4 in cases:
        rng = np.random.default_rng(seed)
        if sizes is None:
            sizes = rng.integers(1, 12, 6)
            sizes[:3] += 2
        df = simulate(rng, sizes, q=2, p_extra=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = mlmsim.fit("y ~ x1 + x2 + (1 + x1 | g)", df, method=method)
        assert res.converged
        assert res.deviance <= lme4 + 1e-6, (sizes, seed, method, res.deviance, lme4)


SINGLETONS = pd.DataFrame({
    "g": [0, 1, 2, 3] + [4] * 9 + [5] * 12 + [6, 6, 7, 8, 9, 10, 11, 12] + [13] * 12,
    "y": [3.138014, -1.041859, -1.013394, 5.152237, 1.745744, 3.112743, -1.476033, -0.204253,
          3.364517, 1.690957, -0.675155, 2.969556, 4.040855, 0.739418, 0.147259, 1.464520,
          1.253236, 2.291447, 1.696724, -1.532135, -0.854325, -0.232253, 0.385707, -1.041771,
          -0.425527, -1.287004, 0.441781, 1.240305, 0.959511, 1.166659, 1.002392, -0.544818,
          -0.582869, 2.287219, 1.703079, 3.531823, 5.166119, 2.574007, 4.586385, 1.515285,
          1.570391, 1.607323, 3.978079, 0.681191, -0.144027],
    "x1": [0.929572, -0.144156, 1.463546, 1.754738, -0.310191, 0.752034, -0.435606, -0.121688,
           0.659492, 0.590317, -0.474053, 0.591923, 1.517774, 0.449590, 0.493095, 0.846897,
           0.370921, 0.192698, -0.035104, -1.138159, 0.751966, -0.016951, -0.610124, -0.642290,
           -0.218690, -1.101551, -1.101192, -0.703585, -0.107783, 0.252993, -1.585458,
           -0.954937, 0.519029, 1.593093, 0.017981, 0.509790, 1.558991, 0.283274, 0.446691,
           0.074720, 0.131644, 0.197064, -0.157103, -0.338324, -1.610779],
    "x2": [0.870188, -0.435176, -0.552430, -0.227158, 1.095313, -0.362077, -1.767169, -0.389462,
           1.262957, -0.391533, -0.558168, 0.485578, -0.649614, 1.083606, -0.014992, 0.046716,
           -0.730317, 0.797941, 0.019147, -0.883378, -1.643162, -1.564838, 0.235215, -1.379582,
           0.052185, 0.233908, 0.205103, -0.672631, 0.850358, -1.135690, -0.975253, 0.965262,
           -1.400155, -0.144076, -0.089671, -0.064215, 0.841237, 1.193379, 1.884560, -1.104538,
           0.766167, 0.111266, 1.173939, -0.588108, 0.191568],
})


def test_recovers_from_a_poor_start():
    for method, lme4 in (("ML", 131.2648646986), ("REML", 134.0030159057)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            res = mlmsim.fit("y ~ x1 + x2 + (1 + x1 | g)", SINGLETONS, method=method)
        assert res.converged
        assert res.deviance == pytest.approx(lme4, abs=1e-6)
