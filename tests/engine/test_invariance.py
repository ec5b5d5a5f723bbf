"""Invariances of the ML/REML fit (hypothesis): row order, group labels, the scale of y,
shifts of y within the span of X, and affine recoding of a covariate.

Each property compares two fits of equivalent data; the expected relation is exact
mathematics (e.g. sigma^2 and T scale by c^2 when y does by c), so the tolerances only
allow for where the optimiser stops on a flat optimum.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mlmsim
from mlmsim.engine import fit_design, inference
from mlmsim.engine.deviance import ThetaMap
from mlmsim.engine.stats import group_stats
from mlmsim.model.formula import model_design

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

FORMULAS = {
    1: "y ~ x1 + x2 + (1 | g)",
    2: "y ~ x1 + x2 + (1 + x1 | g)",
    3: "y ~ x1 + x2 + (1 + x1 + x2 | g)",
}


@st.composite
def datasets(draw, simulate):
    q = draw(st.sampled_from([1, 2, 2, 3]))
    J = draw(st.integers(8, 20))
    if draw(st.booleans()):
        sizes = [draw(st.integers(q + 1, 8))] * J
    else:
        sizes = draw(st.lists(st.integers(1, 12), min_size=J, max_size=J))
        # lme4 refuses N <= J q (random effects and residual not identifiable); keep a margin
        while sum(sizes) < J * (q + 1):
            sizes[int(np.argmin(sizes))] += 3
    seed = draw(st.integers(0, 2**32 - 1))
    df = simulate(np.random.default_rng(seed), sizes, q=q, p_extra=2)
    return df, FORMULAS[q]


def _at_minimum(res, formula, df, method) -> bool:
    """The fit is no worse than a refit from lme4's start (Lambda = I)."""
    d = model_design(formula, df)
    alt = fit_design(d, method, theta0=ThetaMap.from_blocks(d.Z.shape[1], d.blocks).start())
    return res.converged and res.deviance <= alt.deviance + 1e-6


def fit_pair(formula, df_a, df_b, method):
    """Fits of two equivalent data sets. Examples where the optimiser does not converge or
    stops short of the minimum are set aside: that is a defect of its own (the optimiser
    regressions in test_deviance.py), not a broken invariance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = mlmsim.fit(formula, df_a, method=method)
        b = mlmsim.fit(formula, df_b, method=method)
        assume(_at_minimum(a, formula, df_a, method) and _at_minimum(b, formula, df_b, method))
    return a, b


def assert_close(actual, expected, atol):
    """|actual - expected| <= atol elementwise (atol may be an array)."""
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    err = np.abs(actual - expected)
    assert np.all(err <= atol), f"max error {err.max():.3g}:\n{actual}\n{expected}"


def assert_same_fit(a: mlmsim.FitResult, b: mlmsim.FitResult):
    """Two fits of the same model to equivalent data: equal to the optimiser's precision."""
    assert a.deviance == pytest.approx(b.deviance, rel=1e-10, abs=1e-8)
    se = b.fixef_se.to_numpy()
    assert_close(a.fixef.to_numpy(), b.fixef.to_numpy(), 1e-4 * se)
    np.testing.assert_allclose(a.fixef_se.to_numpy(), se, rtol=1e-4)
    scale = np.abs(b.T.to_numpy()).max() + b.sigma2
    np.testing.assert_allclose(a.T.to_numpy(), b.T.to_numpy(), rtol=0, atol=1e-4 * scale)
    assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-5)
    assert (a.nobs, a.ngroups) == (b.nobs, b.ngroups)


@SETTINGS
@given(data=st.data(), method=st.sampled_from(["ML", "REML"]))
def test_row_permutation(simulate, data, method):
    df, formula = data.draw(datasets(simulate))
    perm = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(len(df))
    a, b = fit_pair(formula, df, df.iloc[perm].reset_index(drop=True), method)
    assert_same_fit(b, a)
    # per-row outputs follow the rows; per-group outputs follow the labels
    sd = np.sqrt(a.sigma2)
    np.testing.assert_allclose(b.fitted, a.fitted[perm], rtol=0, atol=1e-4 * sd)
    np.testing.assert_allclose(b.resid, a.resid[perm], rtol=0, atol=1e-4 * sd)
    np.testing.assert_allclose(b.ranef.loc[a.ranef.index].to_numpy(), a.ranef.to_numpy(),
                               rtol=0, atol=1e-4 * sd)


@SETTINGS
@given(data=st.data(), method=st.sampled_from(["ML", "REML"]),
       kind=st.sampled_from(["str", "int", "float", "category"]))
def test_group_relabelling(simulate, data, method, kind):
    df, formula = data.draw(datasets(simulate))
    J = df.g.nunique()
    if kind == "str":
        labels = data.draw(st.lists(st.text(min_size=1, max_size=6), min_size=J, max_size=J,
                                    unique=True))
    else:
        labels = data.draw(st.lists(st.integers(-10**6, 10**6), min_size=J, max_size=J,
                                    unique=True))
    mapping = dict(zip(sorted(df.g.unique()), labels, strict=True))
    new = df.assign(g=df.g.map(mapping))
    if kind == "float":
        new["g"] = new.g.astype(float)
    elif kind == "category":
        new["g"] = new.g.astype("category")
    a, b = fit_pair(formula, df, new, method)
    assert_same_fit(b, a)
    assert set(b.ranef.index) == set(new.g.unique())
    sd = np.sqrt(a.sigma2)
    for old, lab in mapping.items():
        np.testing.assert_allclose(b.ranef.loc[lab].to_numpy(), a.ranef.loc[old].to_numpy(),
                                   rtol=0, atol=1e-4 * sd)
    np.testing.assert_allclose(b.fitted, a.fitted, rtol=0, atol=1e-4 * sd)


@SETTINGS
@given(data=st.data(), method=st.sampled_from(["ML", "REML"]),
       log_c=st.floats(-6.0, 6.0), negative=st.booleans())
def test_scaling_the_response(simulate, data, method, log_c, negative):
    df, formula = data.draw(datasets(simulate))
    c = float(np.exp(log_c)) * (-1.0 if negative else 1.0)
    a, b = fit_pair(formula, df, df.assign(y=c * df.y), method)
    N, p = a.nobs, len(a.fixef)
    shift = 2.0 * (N - p if method == "REML" else N) * np.log(abs(c))
    assert b.deviance == pytest.approx(a.deviance + shift, rel=1e-10, abs=1e-7)
    assert b.sigma2 == pytest.approx(c**2 * a.sigma2, rel=1e-5)
    scale = np.abs(a.T.to_numpy()).max() + a.sigma2
    np.testing.assert_allclose(b.T.to_numpy() / c**2, a.T.to_numpy(), rtol=0, atol=1e-4 * scale)
    se = a.fixef_se.to_numpy()
    assert_close(b.fixef.to_numpy() / c, a.fixef.to_numpy(), 1e-4 * se)
    np.testing.assert_allclose(b.fixef_se.to_numpy() / abs(c), se, rtol=1e-4)
    np.testing.assert_allclose(b.theta, a.theta, rtol=0, atol=1e-3 * (1 + np.abs(a.theta).max()))
    sd = np.sqrt(a.sigma2)
    np.testing.assert_allclose(b.ranef.to_numpy() / c, a.ranef.to_numpy(), rtol=0, atol=1e-4 * sd)
    # covariance-parameter table: estimates scale by c^2, their z values do not change
    np.testing.assert_allclose(b.covparms["estimate"] / c**2, a.covparms["estimate"], rtol=0,
                               atol=1e-4 * scale)
    if a.hessian_pd and b.hessian_pd:
        np.testing.assert_allclose(b.covparms["se"] / c**2, a.covparms["se"], rtol=1e-3,
                                   atol=1e-6 * scale)
    assert b.singular == a.singular or min(a.theta.min(), b.theta.min()) < 1e-3


@SETTINGS
@given(data=st.data(), method=st.sampled_from(["ML", "REML"]),
       shift=st.lists(st.floats(-10.0, 10.0), min_size=3, max_size=3))
def test_shifting_the_response_within_the_fixed_design(simulate, data, method, shift):
    """y + X a gives fixed effects beta + a and leaves T, sigma^2 and the criterion alone."""
    df, formula = data.draw(datasets(simulate))
    a0, a1, a2 = shift
    a, b = fit_pair(formula, df, df.assign(y=df.y + a0 + a1 * df.x1 + a2 * df.x2), method)
    assert b.deviance == pytest.approx(a.deviance, rel=1e-10, abs=1e-7)
    se = a.fixef_se.to_numpy()
    assert_close(b.fixef.to_numpy() - shift, a.fixef.to_numpy(),
                 1e-4 * se + 1e-12 * np.abs(shift).max())
    scale = np.abs(a.T.to_numpy()).max() + a.sigma2
    np.testing.assert_allclose(b.T.to_numpy(), a.T.to_numpy(), rtol=0, atol=1e-4 * scale)


@SETTINGS
@given(data=st.data(), method=st.sampled_from(["ML", "REML"]),
       centre=st.floats(-5.0, 5.0), log_s=st.floats(-2.0, 2.0))
def test_affine_recoding_of_a_random_slope_covariate(simulate, data, method, centre, log_s):
    """x1 -> s (x1 - m) with x1 in the fixed and random parts: the same model, so the
    same criterion (REML: up to the Jacobian p log s^2 of the fixed-effect map), the slope
    scales by 1/s and T transforms as A T A' with A the map of (intercept, slope)."""
    df, formula = data.draw(datasets(simulate))
    s = float(np.exp(log_s))
    new = df.assign(x1=s * (df.x1 - centre))
    a, b = fit_pair(formula, df, new, method)
    # beta_x1 (new) = beta_x1 / s; the REML criterion picks up log|det B|^2 of the
    # fixed-effect reparametrisation (det B = 1/s for the x1 coefficient)
    jac = 2.0 * np.log(s) if method == "REML" else 0.0
    # (u0_new, u1_new): u0 + u1 x1 = u0_new + u1_new s (x1 - m)  =>  u1_new = u1 / s,
    # u0_new = u0 + u1 m, so T_new = A T A'
    q = a.T.shape[0]
    A = np.eye(q)
    if q >= 2:
        A[0, 1] = centre
        A[1, 1] = 1.0 / s
    # the criterion as a function is invariant: each fit's estimate, mapped into the other
    # parametrisation, has the other criterion (exactly, no optimiser involved)
    reml = method == "REML"
    obj_a, cs_a = _phi_objective(formula, df, reml)
    obj_b, cs_b = _phi_objective(formula, new, reml)
    Ainv = np.linalg.inv(A)
    at_b = obj_a(cs_a.phi(Ainv @ b.T.to_numpy() @ Ainv.T, b.sigma2))
    at_a = obj_b(cs_b.phi(A @ a.T.to_numpy() @ A.T, a.sigma2))
    assert at_a == pytest.approx(a.deviance + jac, rel=1e-9, abs=1e-7)
    assert at_b == pytest.approx(b.deviance - jac, rel=1e-9, abs=1e-7)
    # the likelihood can have two local minima (one on the boundary), and which one an
    # optimiser reaches depends on the parametrisation (lme4's too): compare the estimates
    # only where both fits found the same one
    assume(abs(b.deviance - a.deviance - jac) < 1e-6)
    assert b.sigma2 == pytest.approx(a.sigma2, rel=1e-4)
    se = a.fixef_se["x1"]
    assert b.fixef["x1"] * s == pytest.approx(a.fixef["x1"], abs=1e-4 * se)
    assert b.fixef["x2"] == pytest.approx(a.fixef["x2"], abs=1e-4 * a.fixef_se["x2"])
    expected = A @ a.T.to_numpy() @ A.T
    scale = np.abs(expected).max() + a.sigma2
    np.testing.assert_allclose(b.T.to_numpy(), expected, rtol=0, atol=1e-3 * scale)


def _phi_objective(formula, df, reml):
    d = model_design(formula, df)
    stats = group_stats(d.y, d.X, d.Z, d.group_codes, d.ngroups)
    cs = inference.CovStructure.from_blocks(d.Z.shape[1], d.blocks)
    return (lambda phi: float(inference.phi_objective(stats, cs, phi, reml))), cs


# ---------------------------------------------------------------------------
# Numerical robustness: large means (lme4 1.1-31 fits all of these cleanly, to the same
# criterion as the centred data: checked with R for the seeds below)
# ---------------------------------------------------------------------------

def test_covariate_with_a_large_mean_is_kept(simulate):
    for seed in (0, 1, 2):
        df = simulate(np.random.default_rng(seed), [8] * 20, q=2, p_extra=2)
        a = mlmsim.fit(FORMULAS[2], df, method="REML")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # convergence: the test above
            b = mlmsim.fit(FORMULAS[2], df.assign(x2=df.x2 + 1e4), method="REML")
        assert list(b.fixef.index) == ["Intercept", "x1", "x2"]
        assert b.deviance == pytest.approx(a.deviance, abs=1e-4)
        assert b.fixef["x2"] == pytest.approx(a.fixef["x2"], rel=1e-5)


@pytest.mark.parametrize("q", [1, 2])
def test_large_means_fit_cleanly(simulate, q):
    """A response or a fixed-only covariate with a large mean (1e3 residual SDs) fits as the
    unshifted data do: the engine centres y and X's non-intercept columns before forming
    its sums of squares (an exact reparameterisation of the fixed effects)."""
    for seed in (0, 1, 2):
        df = simulate(np.random.default_rng(seed), [8] * 20, q=q, p_extra=2)
        a = mlmsim.fit(FORMULAS[q], df, method="REML")
        for shifted in (df.assign(y=df.y + 1e3), df.assign(x2=df.x2 + 1e3)):
            with warnings.catch_warnings():
                warnings.simplefilter("error", UserWarning)
                b = mlmsim.fit(FORMULAS[q], shifted, method="REML")
            assert b.converged, (q, seed)
            assert b.deviance == pytest.approx(a.deviance, abs=1e-6)
            assert b.fixef["x1"] == pytest.approx(a.fixef["x1"], rel=1e-6)


def test_large_mean_in_a_random_slope_fits_cleanly(simulate):
    """A random slope on a covariate with a large mean (x2 + 1e3 in Z, about 1e3 residual
    SDs): T-hat is nearly singular in the raw parameterisation, but the optimiser works in
    the standardised one (docs/math.md (7.1)), where the shift is a linear recoding."""
    for seed in (0, 1, 2):
        df = simulate(np.random.default_rng(seed), [8] * 20, q=3, p_extra=2)
        a = mlmsim.fit(FORMULAS[3], df, method="REML")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            b = mlmsim.fit(FORMULAS[3], df.assign(x2=df.x2 + 1e3), method="REML")
        assert b.converged, seed
        assert b.deviance == pytest.approx(a.deviance, abs=1e-6)


def test_fit_does_not_modify_the_data(simulate):
    df = simulate(np.random.default_rng(3), [5] * 10, q=2, p_extra=2)
    before = df.copy()
    mlmsim.fit(FORMULAS[2], df, method="ML")
    pd.testing.assert_frame_equal(df, before)


def test_refit_is_deterministic(simulate):
    df = simulate(np.random.default_rng(4), [1, 3, 5, 7, 9, 2, 4, 6, 8, 10], q=3, p_extra=2)
    a = mlmsim.fit(FORMULAS[3], df, method="REML")
    b = mlmsim.fit(FORMULAS[3], df, method="REML")
    assert a.deviance == b.deviance
    np.testing.assert_array_equal(a.theta, b.theta)
