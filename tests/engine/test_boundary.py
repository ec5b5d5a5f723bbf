"""Boundary, singular and non-identifiable fits against lme4 (tests/data/lme4_boundary.json,
described in tests/data/lme4_boundary.md), plus simulated singular truths (hypothesis)
checked against the nested models they contain."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, REPO, lme4_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlmsim
from mlmsim.engine.deviance import ThetaMap
from mlmsim.model.formula import model_design

_PATH = DATA / "lme4_boundary.json"
BOUNDARY = json.loads(_PATH.read_text()) if _PATH.exists() else []
IDS = [f"{e['id']}-{e['formula']}-{'REML' if e['reml'] else 'ML'}" for e in BOUNDARY]

_CACHE: dict = {}


def _data(entry) -> pd.DataFrame:
    path = entry["dataset"]
    if path.startswith("mlmsim/datasets/"):
        return mlmsim.datasets.load("nels88")  # adds private = 1 - public (data_note)
    return pd.read_csv(REPO / path)


def _fit(entry) -> mlmsim.FitResult:
    key = (entry["dataset"], entry["formula"], entry["reml"])
    if key not in _CACHE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # convergence notes are checked below
            _CACHE[key] = mlmsim.fit(entry["formula"], _data(entry),
                                     method="REML" if entry["reml"] else "ML")
    return _CACHE[key]


def _identifiable(entry) -> bool:
    """lme4_boundary.md: (1 + female + male | g) and the NELS random slope of the level-2
    `private` are not identifiable (T lies on a ridge); everything else is."""
    f = entry["formula"]
    return "female + male" not in f.replace("0 + female + male", "") and "+ private |" not in f


def _best_lme4(entry) -> float:
    return min([entry["minus2ll"]] + [a["minus2ll"] for a in entry["alt_optimizers"]])


pytestmark = pytest.mark.skipif(not BOUNDARY, reason="lme4_boundary.json not produced yet")


@pytest.mark.parametrize("entry", BOUNDARY, ids=IDS)
def test_fits_and_reaches_lme4_criterion(entry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = mlmsim.fit(entry["formula"], _data(entry),
                         method="REML" if entry["reml"] else "ML")  # no exception
    assert res.converged
    assert res.nobs == entry["nobs"] and res.ngroups == entry["ngroups"]
    # no higher than lme4 (or its bobyqa / Nelder-Mead refits), and not absurdly lower:
    # lme4_boundary.md puts lme4's optimum within ~1e-6
    assert res.deviance <= _best_lme4(entry) + 1e-8
    assert res.deviance >= _best_lme4(entry) - 1e-5
    assert res.loglik == pytest.approx(-0.5 * res.deviance, rel=1e-14)
    assert res.aic - res.deviance == pytest.approx(entry["aic"] - entry["minus2ll"], abs=1e-8)
    assert res.bic - res.deviance == pytest.approx(entry["bic"] - entry["minus2ll"], abs=1e-7)


@pytest.mark.parametrize("entry", BOUNDARY, ids=IDS)
def test_fixed_effects_and_sigma2(entry):
    """Unique even where T is not: fixed effects, their SEs and sigma2 (lme4_boundary.md)."""
    res = _fit(entry)
    assert list(res.fixef.index) == [lme4_name(k) for k in entry["fixef"]]
    for k, v in entry["fixef"].items():
        assert res.fixef[lme4_name(k)] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    for k, v in entry["se"].items():
        assert res.fixef_se[lme4_name(k)] == pytest.approx(v, rel=1e-3), k
    assert res.sigma2 == pytest.approx(entry["sigma2"], rel=1e-4)


@pytest.mark.parametrize("entry", [e for e in BOUNDARY if _identifiable(e)],
                         ids=[i for i, e in zip(IDS, BOUNDARY, strict=True) if _identifiable(e)])
def test_T_theta_and_ranef_where_identifiable(entry):
    res = _fit(entry)
    assert res.identifiable
    names = [lme4_name(n) for n in entry["T"]["names"]]
    assert list(res.T.index) == names
    Tref = np.asarray(entry["T"]["matrix"])
    scale = np.abs(Tref).max() + 1e-3 * entry["sigma2"]
    np.testing.assert_allclose(res.T.to_numpy(), Tref, rtol=0, atol=1e-3 * scale)
    np.testing.assert_allclose(res.theta, entry["theta"], rtol=0, atol=1e-3)
    U = np.column_stack([v["value"] for v in entry["ranef"]["values"]])
    ours = res.ranef.copy()
    ours.index = ours.index.astype(str)
    ours = ours.loc[entry["ranef"]["groups"], [lme4_name(v["name"]) for v in
                                               entry["ranef"]["values"]]].to_numpy()
    uscale = np.abs(U).max() + 1e-3 * np.sqrt(entry["sigma2"])
    np.testing.assert_allclose(ours, U, rtol=0, atol=1e-3 * uscale)


@pytest.mark.parametrize("entry", BOUNDARY, ids=IDS)
def test_singular_flag(entry):
    res = _fit(entry)
    assert res.singular is bool(entry["singular"])
    T = res.T.to_numpy()
    w = np.linalg.eigvalsh(T)
    if res.singular:
        # T-hat is rank-deficient (a variance at 0, or |corr| = 1)
        assert w[0] <= 1e-6 * max(w[-1], res.sigma2)
        assert any("singular" in m for m in res.messages)
    elif _identifiable(entry):
        assert w[0] > 0
        assert not any("singular" in m for m in res.messages)


@pytest.mark.parametrize("entry", BOUNDARY, ids=IDS)
def test_identifiability_and_hessian_flags(entry):
    res = _fit(entry)
    assert res.identifiable is _identifiable(entry)
    if not _identifiable(entry):
        assert not res.hessian_pd
        assert any("not identifiable" in m for m in res.messages)
    elif not entry["singular"]:
        assert res.hessian_pd


def _satterthwaite_cases(singular: bool):
    out = []
    for i, e in zip(IDS, BOUNDARY, strict=True):
        if e.get("satterthwaite_df") and _identifiable(e) and bool(e["singular"]) is singular:
            out.append(pytest.param(e, id=i))
    return out


@pytest.mark.parametrize("entry", _satterthwaite_cases(singular=False))
def test_satterthwaite_df_interior_fits(entry):
    ct = _fit(entry).coef_table("satterthwaite")
    for k, v in entry["satterthwaite_df"].items():
        assert ct.loc[lme4_name(k), "df"] == pytest.approx(v, rel=1e-2), k


@pytest.mark.parametrize("entry", _satterthwaite_cases(singular=True))
def test_satterthwaite_df_singular_fits(entry):
    ct = _fit(entry).coef_table("satterthwaite")
    for k, v in entry["satterthwaite_df"].items():
        assert ct.loc[lme4_name(k), "df"] == pytest.approx(v, rel=1e-2), k


# ---------------------------------------------------------------------------
# Equivalent parameterisations in the reference set
# ---------------------------------------------------------------------------

def _entries(id_, reml):
    return [e for e in BOUNDARY if e["id"] == id_ and e["reml"] == reml]


@pytest.mark.parametrize("reml,crit", [(False, 1268.9529), (True, 1272.8431)])
def test_dummy_parameterisations_reach_the_same_fit(reml, crit):
    fits = [_fit(e) for e in _entries("dummies", reml)]
    assert len(fits) == 3
    for res in fits:
        assert res.deviance == pytest.approx(crit, abs=1e-4)
        np.testing.assert_allclose(res.fixef, fits[1].fixef, rtol=1e-6)
        np.testing.assert_allclose(res.fixef_se, fits[1].fixef_se, rtol=1e-5)
        assert res.sigma2 == pytest.approx(fits[1].sigma2, rel=1e-6)
    redundant = fits[0]
    assert list(redundant.T.index) == ["Intercept", "female", "male"]
    assert not redundant.identifiable and not redundant.hessian_pd
    # the redundant T implies the same marginal covariance: Var(U0 + U1) for women and
    # Var(U0 + U2) for men equal those of the (0 + female + male | g) fit
    T3 = redundant.T.to_numpy()
    T2 = fits[2].T.to_numpy()  # (female, male)
    a_f = np.array([1.0, 1.0, 0.0])
    a_m = np.array([1.0, 0.0, 1.0])
    assert a_f @ T3 @ a_f == pytest.approx(T2[0, 0], rel=1e-4)
    assert a_m @ T3 @ a_m == pytest.approx(T2[1, 1], rel=1e-4)
    assert a_f @ T3 @ a_m == pytest.approx(T2[0, 1], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("reml", [False, True])
def test_double_bar_equals_two_bars(reml):
    entries = _entries("slope_diag", reml)
    a = _fit(next(e for e in entries if "||" in e["formula"]))
    b = _fit(next(e for e in entries if "(0 + x | g)" in e["formula"]))
    full = _fit(next(e for e in entries if "(1 + x | g)" in e["formula"]))
    assert a.deviance == pytest.approx(b.deviance, rel=1e-12)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-8)
    assert a.theta.shape == (2,)
    assert a.T.loc["x", "Intercept"] == 0.0 == b.T.loc["x", "Intercept"]
    assert full.deviance <= a.deviance


# ---------------------------------------------------------------------------
# Simulated singular truths: fit without exception, and never worse than the nested
# models (a boundary point of the bigger model)
# ---------------------------------------------------------------------------

TRUTHS = {
    "slope variance 0": np.array([[1.0, 0.0], [0.0, 0.0]]),
    "correlation 1": np.array([[1.0, 0.5], [0.5, 0.25]]),
    "correlation -1": np.array([[0.5, -0.5], [-0.5, 0.5]]),
    "all zero": np.zeros((2, 2)),
}


@st.composite
def singular_data(draw):
    name = draw(st.sampled_from(sorted(TRUTHS)))
    J = draw(st.integers(6, 30))
    sizes = draw(st.lists(st.integers(3, 10), min_size=J, max_size=J))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), sizes)
    N = g.size
    x = rng.normal(size=N)
    U = rng.multivariate_normal(np.zeros(2), TRUTHS[name], size=J, check_valid="ignore")
    y = 1.0 + 0.5 * x + U[g, 0] + U[g, 1] * x + rng.normal(size=N)
    return pd.DataFrame({"g": g, "x": x, "y": y})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(df=singular_data(), method=st.sampled_from(["ML", "REML"]))
def test_singular_truths_fit_and_dominate_nested_models(df, method):
    formulas = ["y ~ x + (1 + x | g)", "y ~ x + (1 + x || g)", "y ~ x + (1 | g)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no convergence warnings either
        full, diag, ri = (mlmsim.fit(f, df, method=method) for f in formulas)
    assert full.converged and diag.converged and ri.converged
    tol = 1e-7 * abs(ri.deviance) + 1e-8
    assert full.deviance <= diag.deviance + tol
    assert diag.deviance <= ri.deviance + tol
    for formula, res in zip(formulas, (full, diag, ri), strict=True):
        T = res.T.to_numpy()
        w = np.linalg.eigvalsh(T)
        assert w[0] >= -1e-10 * max(1.0, np.abs(T).max())  # PSD
        assert np.all(np.diag(T) >= 0) and res.sigma2 > 0
        d = model_design(formula, df)
        tmap = ThetaMap.from_blocks(d.Z.shape[1], d.blocks)
        assert np.all(res.theta[tmap.diagonal] >= 0)  # lme4's canonical form
        assert res.singular is bool(np.any(res.theta[tmap.diagonal] < 1e-4))
        if not res.singular:
            assert w[0] > 0
        if w[0] <= 1e-10 * max(w[-1], res.sigma2):  # T-hat rank-deficient
            assert res.singular


def test_near_boundary_fit_is_flagged_singular():
    # (J, group sizes, seed, lme4 REML criterion); lme4: isSingular TRUE for all three
    cases = [
        (14, [5, 5, 4, 7, 8, 4, 4, 4, 8, 3, 5, 4, 9, 4], 2682039687, 202.1413677157),
        (23, [3, 10, 7, 8, 8, 3, 3, 7, 3, 5, 5, 9, 4, 3, 7, 4, 6, 8, 7, 8, 6, 4, 9], 2665342823,
         370.1649469883),
        (12, [6, 6, 10, 4, 5, 3, 5, 7, 10, 10, 6, 10], 1426332399, 223.9439121578),
    ]
    for J, sizes, seed, lme4 in cases:
        rng = np.random.default_rng(seed)
        g = np.repeat(np.arange(J), sizes)
        x = rng.normal(size=g.size)
        U = rng.multivariate_normal(np.zeros(2), np.zeros((2, 2)), size=J, check_valid="ignore")
        y = 1.0 + 0.5 * x + U[g, 0] + U[g, 1] * x + rng.normal(size=g.size)
        res = mlmsim.fit("y ~ x + (1 + x | g)", pd.DataFrame({"g": g, "x": x, "y": y}),
                         method="REML")
        assert res.deviance <= lme4 + 1e-8
        w = np.linalg.eigvalsh(res.T.to_numpy())
        assert w[0] <= 1e-8 * w[-1]  # T-hat is rank-deficient ...
        assert res.singular, (seed, res.theta)  # ... so the fit is singular
