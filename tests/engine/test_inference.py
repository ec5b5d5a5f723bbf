"""Inference in the covariance parameters and for the fixed effects.

References: SAS PROC MIXED (the seed's COVTEST standard errors and containment df,
METHOD=ML), lmerTest's Satterthwaite df (tests/data/hsb_lme4.json), and a
Richardson-extrapolated finite-difference Hessian of the objective in phi computed
here. The covparms/coef_table tests recompute each column from the others with scipy.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, lme4_name, simulate_two_level
from scipy import stats as sps

import mlmsim
from mlmsim.engine import inference
from mlmsim.engine.stats import group_stats
from mlmsim.model.formula import model_design

HSB_REF = json.loads((DATA / "hsb_lme4.json").read_text())
HSB_IDS = [f"{e['model']}-{'REML' if e['reml'] else 'ML'}" for e in HSB_REF]

_CACHE: dict = {}


def fit(data_name: str, data: pd.DataFrame, formula: str, method: str) -> mlmsim.FitResult:
    key = (data_name, formula, method)
    if key not in _CACHE:
        _CACHE[key] = mlmsim.fit(formula, data, method=method)
    return _CACHE[key]


def _data(request, name):
    return request.getfixturevalue(name)


# ---------------------------------------------------------------------------
# COVTEST standard errors against SAS PROC MIXED (METHOD=ML), the seed's tables
# ---------------------------------------------------------------------------

COVTEST = [
    ("hsb", "mathach ~ cses + (1 + cses | school)", [1.0684, 0.4024, 0.2780, 0.6257]),
    ("hsb", "mathach ~ cses * meanses + (1 + cses | school)", [0.3963, 0.2380, 0.2753, 0.6261]),
    ("hsb", "mathach ~ cses + female + minority + (1 + cses | school)",
     [0.8054, 0.3314, 0.2521, 0.6083]),
    ("nels", "math ~ homework + (1 | school)", [7.0708, 4.5172]),
    ("nels", "math ~ homework + (1 + homework | school)", [19.9598, 9.8467, 5.8301, 3.4665]),
    # two more of the seed's SAS tables
    ("nels", "math ~ 1 + (1 | school)", [8.4079, 5.1530]),
    ("nels", "math ~ homework + white + private + (1 + homework | school)",
     [18.0535, 9.2785, 5.5157, 3.4288]),
]


@pytest.mark.parametrize("name,formula,sas_se", COVTEST, ids=[c[1] for c in COVTEST])
def test_covtest_standard_errors_match_sas(request, name, formula, sas_se):
    res = fit(name, _data(request, name), formula, "ML")
    assert res.hessian_pd and res.identifiable and not res.singular
    se = res.covparms["se"].to_numpy()
    np.testing.assert_allclose(se, sas_se, rtol=5e-3)
    sas = ["UN(1,1)", "Residual"] if len(sas_se) == 2 else [
        "UN(1,1)", "UN(2,1)", "UN(2,2)", "Residual"]
    assert list(res.covparms["sas"]) == sas


@pytest.mark.parametrize("name,formula,_", COVTEST, ids=[c[1] for c in COVTEST])
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_covparms_table_is_consistent(request, name, formula, _, method):
    res = fit(name, _data(request, name), formula, method)
    cp = res.covparms
    assert list(cp.columns) == ["sas", "estimate", "se", "z", "p"]
    H = np.asarray(res.hessian)
    acov = res.covparms_cov.to_numpy()
    assert list(res.covparms_cov.index) == list(cp.index) == list(res.covparms_cov.columns)
    np.testing.assert_allclose(acov, 2.0 * np.linalg.inv(H), rtol=1e-10, atol=0)
    np.testing.assert_allclose(cp["se"], np.sqrt(np.diag(acov)), rtol=1e-12)
    np.testing.assert_allclose(cp["z"], cp["estimate"] / cp["se"], rtol=1e-12)
    isvar = np.array([n.startswith("var(") or n == "sigma2" for n in cp.index])
    expected_p = np.where(isvar, sps.norm.sf(cp["z"]), 2.0 * sps.norm.sf(np.abs(cp["z"])))
    np.testing.assert_allclose(cp["p"], expected_p, rtol=1e-10, atol=1e-300)
    # estimates are T's elements and sigma2
    T = res.T
    for nm, row in cp.iterrows():
        if nm == "sigma2":
            assert row.estimate == res.sigma2
        elif nm.startswith("var("):
            a = nm[4:-1]
            assert row.estimate == T.loc[a, a]
        else:
            a, b = nm[4:-1].split(",")
            assert row.estimate == T.loc[a, b]
    # params: fixed effects then covariance parameters
    params = res.params
    assert list(params.index) == list(res.fixef.index) + list(cp.index)
    np.testing.assert_array_equal(params.to_numpy(), np.concatenate([res.fixef, cp["estimate"]]))


def test_covparms_names_and_sas_labels(hsb):
    res = fit("hsb", hsb, "mathach ~ cses + (1 + cses | school)", "ML")
    assert list(res.covparms.index) == ["var(Intercept)", "cov(cses,Intercept)", "var(cses)",
                                        "sigma2"]
    assert list(res.covparms["sas"]) == ["UN(1,1)", "UN(2,1)", "UN(2,2)", "Residual"]
    # the covariance is two-sided: a small z gives p near 1 (SAS: 0.9003)
    assert res.covparms.loc["cov(cses,Intercept)", "p"] == pytest.approx(0.9003, abs=2e-3)
    assert res.covparms.loc["var(cses)", "p"] == pytest.approx(0.0073, abs=2e-4)  # one-sided


def test_covparms_names_four_random_effects(hsb):
    res = fit("hsb", hsb, HSB_REF[8]["formula"], "ML")
    assert list(res.covparms.index) == [
        "var(Intercept)",
        "cov(cses,Intercept)", "var(cses)",
        "cov(female,Intercept)", "cov(female,cses)", "var(female)",
        "cov(minority,Intercept)", "cov(minority,cses)", "cov(minority,female)", "var(minority)",
        "sigma2"]
    assert list(res.covparms["sas"]) == [
        "UN(1,1)", "UN(2,1)", "UN(2,2)", "UN(3,1)", "UN(3,2)", "UN(3,3)",
        "UN(4,1)", "UN(4,2)", "UN(4,3)", "UN(4,4)", "Residual"]


# ---------------------------------------------------------------------------
# Hessian not positive definite / not identifiable (the seed's two examples)
# ---------------------------------------------------------------------------

NOT_IDENTIFIABLE = [
    ("nels", "math ~ homework + white + private + (1 + homework + private | school)",
     ["private", "Intercept"]),
    ("hsb", "mathach ~ cses + female + (1 + female + male | school)",
     ["Intercept", "female", "male"]),
]


@pytest.mark.parametrize("name,formula,involved", NOT_IDENTIFIABLE,
                         ids=["nels-private-slope", "hsb-female-male"])
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_not_identifiable_models_are_flagged(request, name, formula, involved, method):
    res = fit(name, _data(request, name), formula, method)
    assert not res.hessian_pd
    assert not res.identifiable
    text = " ".join(res.messages)
    assert "not identifiable" in text
    assert "not positive definite" in text and "Hessian" in text
    for col in involved:
        assert col in text
    # no standard errors from a singular H
    assert res.covparms["se"].isna().all()
    assert np.isnan(res.covparms_cov.to_numpy()).all()
    # but the likelihood, fixed effects and their SEs are well defined
    assert np.isfinite(res.deviance)
    assert np.isfinite(res.fixef_se).all()


@pytest.mark.parametrize("entry", HSB_REF, ids=HSB_IDS)
def test_identifiable_hsb_models_have_pd_hessian(hsb, entry):
    res = fit("hsb", hsb, entry["formula"], "REML" if entry["reml"] else "ML")
    assert res.hessian_pd and res.identifiable
    assert np.all(res.hessian_eigenvalues > 0)
    # the eigenvalues of the correlation form D^{-1/2} H D^{-1/2} (units-free)
    d = 1.0 / np.sqrt(np.diag(res.hessian))
    np.testing.assert_allclose(np.sort(res.hessian_eigenvalues),
                               np.linalg.eigvalsh(res.hessian * np.outer(d, d)), rtol=1e-8)
    assert not any("not positive definite" in m for m in res.messages)


# ---------------------------------------------------------------------------
# Denominator degrees of freedom
# ---------------------------------------------------------------------------

CONTAINMENT = [
    ("hsb", "mathach ~ cses + (1 + cses | school)", [159, 159]),
    ("hsb", "mathach ~ cses + female + minority + (1 + cses | school)", [159, 159, 6863, 6863]),
    ("nels", "math ~ 1 + (1 | school)", [22]),
    ("nels", "math ~ homework + (1 | school)", [22, 495]),
    ("nels", "math ~ homework + (1 + homework | school)", [22, 22]),
    ("nels", "math ~ homework + white + private + (1 + homework | school)", [21, 22, 472, 472]),
]


@pytest.mark.parametrize("name,formula,sas_df", CONTAINMENT, ids=[c[1] for c in CONTAINMENT])
def test_containment_df_match_sas(request, name, formula, sas_df):
    res = fit(name, _data(request, name), formula, "ML")
    df = res.coef_table(ddf="containment")["df"].to_numpy()
    np.testing.assert_array_equal(df, np.asarray(sas_df, dtype=float))


@pytest.mark.parametrize("entry", HSB_REF, ids=HSB_IDS)
def test_satterthwaite_df_match_lmertest(hsb, entry):
    res = fit("hsb", hsb, entry["formula"], "REML" if entry["reml"] else "ML")
    df = res.coef_table(ddf="satterthwaite")["df"]
    for k, v in entry["satterthwaite_df"].items():
        assert df[lme4_name(k)] == pytest.approx(v, rel=1e-4), k


def test_satterthwaite_df_balanced_one_way_reml(simulate):
    """Balanced random-intercept model by REML: the intercept's Satterthwaite df is
    exactly J - 1 (its variance is a multiple of the between-group mean square)."""
    rng = np.random.default_rng(11)
    J = 12
    df = simulate(rng, [6] * J, q=1, T=np.array([[1.0]]), p_extra=1)
    res = mlmsim.fit("y ~ 1 + (1 | g)", df, method="REML")
    assert not res.singular
    assert res.coef_table()["df"]["Intercept"] == pytest.approx(J - 1, rel=1e-6)


def test_between_within_and_residual_df(hsb):
    res = fit("hsb", hsb, "mathach ~ cses + meanses + female + (1 + cses | school)", "ML")
    N, J = 7185, 160
    bw = res.coef_table(ddf="between-within")["df"]
    # between-group effects (constant within schools: Intercept, meanses) get J - 2;
    # within-group effects (cses, female) get N - J - 2
    assert bw["Intercept"] == bw["meanses"] == J - 2
    assert bw["cses"] == bw["female"] == N - J - 2
    resid = res.coef_table(ddf="residual")["df"]
    assert (resid == N - 4).all()


@pytest.mark.parametrize("ddf", ["satterthwaite", "containment", "between-within", "residual"])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_coef_table_columns_are_consistent(hsb, ddf, level):
    res = fit("hsb", hsb, "mathach ~ cses * meanses + (1 + cses | school)", "REML")
    ct = res.coef_table(ddf=ddf, level=level) if level != 0.95 else res.coef_table(ddf=ddf)
    assert list(ct.columns) == ["estimate", "se", "df", "t", "p", "ci_lower", "ci_upper"]
    assert list(ct.index) == list(res.fixef.index)
    np.testing.assert_array_equal(ct["estimate"], res.fixef)
    np.testing.assert_array_equal(ct["se"], res.fixef_se)
    np.testing.assert_array_equal(ct["df"], res.ddf(ddf))
    assert (ct["df"] > 0).all()
    np.testing.assert_allclose(ct["t"], ct["estimate"] / ct["se"], rtol=1e-14)
    np.testing.assert_allclose(ct["p"], 2.0 * sps.t.sf(np.abs(ct["t"]), ct["df"]), rtol=1e-10,
                               atol=1e-300)
    crit = sps.t.ppf(0.5 + level / 2.0, ct["df"])
    np.testing.assert_allclose(ct["ci_lower"], ct["estimate"] - crit * ct["se"], rtol=1e-12)
    np.testing.assert_allclose(ct["ci_upper"], ct["estimate"] + crit * ct["se"], rtol=1e-12)


def test_unknown_ddf_method(hsb):
    res = fit("hsb", hsb, "mathach ~ cses + (1 + cses | school)", "ML")
    with pytest.raises(ValueError, match="ddf|satterthwaite"):
        res.coef_table(ddf="kenward-roger-ish")


def test_fixed_effect_se_is_sqrt_of_vcov(hsb):
    res = fit("hsb", hsb, "mathach ~ cses * meanses + (1 + cses | school)", "REML")
    np.testing.assert_allclose(res.fixef_se, np.sqrt(np.diag(res.vcov)), rtol=1e-14)
    np.testing.assert_allclose(res.vcov, res.vcov.T, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# The Hessian in phi against a Richardson-extrapolated finite-difference reference
# ---------------------------------------------------------------------------

def _fd_hessian(f, x, h):
    m = x.size
    H = np.empty((m, m))
    f0 = f(x)
    E = np.diag(h)
    for i in range(m):
        H[i, i] = (f(x + E[i]) - 2.0 * f0 + f(x - E[i])) / h[i] ** 2
        for j in range(i):
            H[i, j] = H[j, i] = (f(x + E[i] + E[j]) - f(x + E[i] - E[j]) - f(x - E[i] + E[j])
                                 + f(x - E[i] - E[j])) / (4.0 * h[i] * h[j])
    return H


def richardson_hessian(f, x, h):
    """Central second differences at h, h/2, h/4 with two Richardson steps (error O(h^6))."""
    D = [_fd_hessian(f, x, h / 2.0**k) for k in range(3)]
    R = [(4.0 * D[k + 1] - D[k]) / 3.0 for k in range(2)]
    return (16.0 * R[1] - R[0]) / 15.0


def _phi_steps(cs, phi, rel=0.02):
    T = cs.T(phi)
    d = np.sqrt(np.abs(np.diag(T)))
    scale = np.maximum(np.abs(phi[:-1]), d[cs.rows] * d[cs.cols] + 0.05 * phi[-1])
    return rel * np.append(scale, phi[-1])


def _small_problem(bars, seed):
    df = simulate_two_level(np.random.default_rng(seed), [4, 5, 6, 7, 8, 9, 10, 6, 5, 4, 8, 9],
                            q=3, p_extra=2)
    formula = f"y ~ x1 + x2 + {bars}"
    d = model_design(formula, df)
    st = group_stats(d.y, d.X, d.Z, d.group_codes, d.ngroups)
    cs = inference.CovStructure.from_blocks(d.Z.shape[1], d.blocks)
    return df, formula, st, cs


def _assert_6_digits(H, ref):
    err = np.abs(H - ref)
    tol = 1e-6 * np.abs(ref) + 1e-8 * np.abs(ref).max()
    assert np.all(err <= tol), f"max rel err {np.max(err / np.abs(ref).max()):.3g}"


BARS = ["(1 | g)", "(1 + x1 | g)", "(1 + x1 || g)", "(1 + x1 | g) + (0 + x2 | g)",
        "(1 + x1 + x2 | g)"]


@pytest.mark.parametrize("bars", BARS)
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_fit_hessian_matches_richardson_finite_differences(bars, method):
    df, formula, st, cs = _small_problem(bars, seed=len(bars))
    res = mlmsim.fit(formula, df, method=method)
    H = np.asarray(res.hessian)
    phi = res.covparms["estimate"].to_numpy()
    assert H.shape == (phi.size, phi.size) == (cs.size, cs.size)
    np.testing.assert_array_equal(H, H.T)
    reml = method == "REML"
    ref = richardson_hessian(lambda x: float(inference.phi_objective(st, cs, x, reml)), phi,
                             _phi_steps(cs, phi))
    _assert_6_digits(H, ref)


@pytest.mark.parametrize("bars", BARS)
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_phi_hessian_matches_richardson_away_from_optimum(bars, method):
    df, formula, st, cs = _small_problem(bars, seed=100 + len(bars))
    rng = np.random.default_rng(5)
    q = cs.q
    A = rng.normal(size=(q, q))
    T = A @ A.T / q + 0.3 * np.eye(q)
    phi = cs.phi(T, 1.7)
    reml = method == "REML"
    H = inference.phi_hessian(st, cs, phi, reml)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=0)
    ref = richardson_hessian(lambda x: float(inference.phi_objective(st, cs, x, reml)), phi,
                             _phi_steps(cs, phi))
    _assert_6_digits(H, ref)


# ---------------------------------------------------------------------------
# Monte Carlo: 2 H^{-1} against the spread of estimates over replicates (slow)
# ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_asymptotic_se_matches_monte_carlo_spread(method):
    R, J, n = 1000, 150, 8
    T = np.array([[1.0, 0.3], [0.3, 0.5]])
    sigma2 = 1.5
    gamma = np.array([2.0, 0.7, -0.4])
    rng = np.random.default_rng(2024)
    est, se, fse, fest = [], [], [], []
    for _ in range(R):
        df = simulate_two_level(rng, [n] * J, q=2, T=T, sigma2=sigma2, p_extra=2, beta=gamma)
        res = mlmsim.fit("y ~ x1 + x2 + (1 + x1 | g)", df, method=method)
        assert res.converged and res.hessian_pd
        est.append(res.covparms["estimate"].to_numpy())
        se.append(res.covparms["se"].to_numpy())
        fest.append(res.fixef.to_numpy())
        fse.append(res.fixef_se.to_numpy())
    est, se, fest, fse = map(np.asarray, (est, se, fest, fse))
    # the spread of the estimates over replicates, and its Monte Carlo SE (about
    # sd / sqrt(2 (R - 1)) for near-normal estimates)
    for e, s in ((est, se), (fest, fse)):
        emp = e.std(axis=0, ddof=1)
        model = np.sqrt((s**2).mean(axis=0))
        mcse = emp / np.sqrt(2.0 * (R - 1))
        z = (model - emp) / mcse
        assert np.all(np.abs(z) < 4.0), (model, emp, z)
    # and the estimates are centred on the truth (ML variances: bias O(1/J), within 4 MCSE
    # plus that bias bound)
    truth = np.array([T[0, 0], T[1, 0], T[1, 1], sigma2])
    bias = est.mean(axis=0) - truth
    assert np.all(np.abs(bias) < 4.0 * est.std(axis=0, ddof=1) / np.sqrt(R) + 3.0 * truth.max()
                  / J)
    np.testing.assert_allclose(fest.mean(axis=0), gamma,
                               atol=4.0 * fest.std(axis=0, ddof=1).max() / np.sqrt(R))


def test_hessian_in_theta_sigma_matches_finite_differences():
    """H_psi = J' H_phi J + sum_e g_e d2phi_e, psi = (theta, sigma), against central
    second differences of the objective at a boundary fit (the case where the second
    term matters and where Satterthwaite df follow lmerTest's parameterisation)."""
    import json
    from pathlib import Path

    from mlmsim.engine import inference as inf

    ref = json.loads((Path(__file__).parents[1] / "data" / "lme4_boundary.json").read_text())
    entry = next(e for e in ref if e["id"] == "slope_var0" and not e["reml"])
    res = mlmsim.fit(entry["formula"], pd.read_csv(entry["dataset"]), method="ML")
    pk, cs, tm = res.stats, res.cov_structure, res.theta_map

    def objective(psi):
        L = tm.Lambda(psi[:-1])
        T = psi[-1] ** 2 * (L @ L.T)
        return float(inf.phi_objective(pk, cs, cs.phi(T, psi[-1] ** 2), False))

    psi0 = np.append(res.theta, np.sqrt(res.sigma2))
    k, h = psi0.size, 1e-4
    E = np.eye(k) * h
    numeric = np.array([[(objective(psi0 + E[i] + E[j]) - objective(psi0 + E[i] - E[j])
                          - objective(psi0 - E[i] + E[j]) + objective(psi0 - E[i] - E[j]))
                         / (4 * h * h) for j in range(k)] for i in range(k)])
    J, H2 = inf.theta_jacobians(cs, tm, res.theta, np.sqrt(res.sigma2))
    g = inf.phi_gradient(pk, cs, res.phi, False)
    analytic = J.T @ inf.phi_hessian(pk, cs, res.phi, False) @ J + np.einsum("e,eij->ij", g, H2)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-4 * np.abs(numeric).max())


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_evaluate_at_the_optimum_reproduces_the_fit(hsb, method):
    """mlmsim.evaluate at the fit's own phi, and at its theta, gives back the fit: the
    criterion, T, the fixed effects and their covariance, the EBLUPs, the Hessian and the
    Satterthwaite df (phi and lmerTest's psi parameterisation agree inside the space)."""
    res = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb, method=method)
    for ev in (mlmsim.evaluate(res, phi=res.phi), mlmsim.evaluate(res, theta=res.theta)):
        assert ev.valid and ev.hessian_pd
        assert ev.criterion == pytest.approx(res.deviance, rel=1e-12)
        np.testing.assert_allclose(ev.T.to_numpy(), res.T.to_numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(ev.fixef, res.fixef, rtol=1e-10)
        np.testing.assert_allclose(ev.vcov.to_numpy(), res.vcov.to_numpy(), rtol=1e-8)
        np.testing.assert_allclose(ev.ranef.to_numpy(), res.ranef.to_numpy(), rtol=1e-7,
                                   atol=1e-10)
        np.testing.assert_allclose(ev.hessian.to_numpy(), res.hessian.to_numpy(), rtol=1e-7,
                                   atol=1e-10 * np.abs(res.hessian.to_numpy()).max())
        np.testing.assert_allclose(ev.df, res.coef_table()["df"], rtol=1e-6)
    # a negative variance with every V_j positive definite is a valid point
    phi = res.phi.copy()
    phi[2] = -0.05
    assert mlmsim.evaluate(res, phi=phi).valid
    with pytest.raises(ValueError, match="exactly one"):
        mlmsim.evaluate(res)
