"""The exact null distribution of the (R)LRT of one variance component against RLRsim.

Expected values come only from tests/data/exact_lrt_reference.json (RLRsim 3.1-8's
exactRLRT / exactLRT with 2e6 simulations each, lme4 1.1-31; written by
tests/data/make_exact_lrt_reference.R on exact_lrt_dyestuff.csv and exact_lrt_hsb.csv),
and from closed forms (the point mass of the balanced one-way model is an F probability).

Monte Carlo tolerances: two independent samples of sizes N_R (RLRsim's, 2e6) and N
estimate the same probability P, so their difference has SE sqrt(P (1 - P) (1/N_R + 1/N));
a tolerance of 4 SE fails by chance with probability 6e-5. Where a fixed 1e-3 is used,
the SE it stands for is stated beside it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, REPO
from scipy import stats as sps

import mlmsim
from mlmsim.engine import exact_null as exact

REF = json.loads((DATA / "exact_lrt_reference.json").read_text())
BY_ID = {e["id"]: e for e in REF["tests"]}
N_R = REF["nsim"]
DYESTUFF = [e for e in REF["tests"] if e["id"].startswith("dyestuff")]
HSB = [e for e in REF["tests"] if e["id"].startswith("hsb")]

# Simulations on our side. Dyestuff-sized: 1e6 draws take well under a second (six
# groups, the balanced ones a single distinct eigenvalue). HSB-sized: 1e5 draws in the
# default run (about a second each), 2e6 in the slow one.
N_DYESTUFF = 1_000_000
N_HSB_QUICK = 100_000
N_HSB_SLOW = 2_000_000

_FITS: dict[str, tuple[mlmsim.FitResult, float]] = {}
_SAMPLES: dict[tuple[str, int], np.ndarray] = {}


def _two_sample_se(prob: float, n: int) -> float:
    return math.sqrt(prob * (1.0 - prob) * (1.0 / N_R + 1.0 / n))


def _data(entry) -> pd.DataFrame:
    return pd.read_csv(REPO / entry["dataset"], dtype={"g": str})


def _fit(entry) -> tuple[mlmsim.FitResult, float]:
    """mlmsim's fit of the alternative and the criterion of the null (a linear model)."""
    if entry["id"] not in _FITS:
        d = _data(entry)
        f = mlmsim.fit(entry["formula"], d, method="REML" if entry["reml"] else "ML")
        terms = entry["null_formula"].split("~")[1].split("+")
        names = ["Intercept" if t.strip() == "1" else t.strip() for t in terms]
        if "Intercept" not in names:
            names.insert(0, "Intercept")
        cols = [f.design.fixed_names.index(name) for name in names]
        crit0 = exact.ols_deviance(f.design.y, f.design.X[:, cols], reml=entry["reml"])
        _FITS[entry["id"]] = (f, crit0)
    return _FITS[entry["id"]]


def _sample(entry, nsim: int) -> np.ndarray:
    key = (entry["id"], nsim)
    if key not in _SAMPLES:
        f, _ = _fit(entry)
        d = f.design
        _SAMPLES[key] = exact.null_sample(d.X, groups=d.group_codes, reml=entry["reml"],
                                          q=entry["q"], nsim=nsim, rng=20240701)
    return _SAMPLES[key]


def _ids(entries):
    return [e["id"] for e in entries]


# ---------------------------------------------------------------------------
# the observed statistic
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("entry", REF["tests"], ids=_ids(REF["tests"]))
def test_observed_statistic_matches_rlrsim(entry):
    f, crit0 = _fit(entry)
    assert not f.singular and not entry["singular"]
    assert f.nobs == entry["nobs"] and len(f.design.fixed_names) == entry["p"]
    # the null model's criterion: lme4's REML convention (log det X'X) and -2 log L of lm
    assert crit0 == pytest.approx(entry["criterion_null"], rel=1e-12)
    assert f.deviance == pytest.approx(entry["criterion_alt"], rel=1e-10)
    assert crit0 - f.deviance == pytest.approx(entry["statistic"], rel=1e-6)


def test_ols_deviance_closed_forms():
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(12), rng.normal(size=12)])
    y = rng.normal(size=12)
    rss = float(np.sum((y - X @ np.linalg.lstsq(X, y, rcond=None)[0]) ** 2))
    assert exact.ols_deviance(y, X, reml=False) == pytest.approx(
        12 * math.log(2 * math.pi * rss / 12) + 12)
    assert exact.ols_deviance(y, X, reml=True) == pytest.approx(
        10 * math.log(2 * math.pi * rss / 10) + 10 + math.log(np.linalg.det(X.T @ X)))


# ---------------------------------------------------------------------------
# p-values
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("entry", DYESTUFF, ids=_ids(DYESTUFF))
def test_dyestuff_p_value_matches_rlrsim(entry):
    # p 0.026 and 0.051: SE of the difference 2.0e-4 and 2.7e-4, so 1e-3 is 5 and 3.7 SE
    f, crit0 = _fit(entry)
    p = exact.p_value(crit0 - f.deviance, _sample(entry, N_DYESTUFF))
    assert 0.01 < entry["p_value"] < 0.3
    assert p == pytest.approx(entry["p_value"], abs=1e-3)


@pytest.mark.parametrize("entry", HSB, ids=_ids(HSB))
def test_hsb_p_value_matches_rlrsim_quickly(entry):
    f, crit0 = _fit(entry)
    p = exact.p_value(crit0 - f.deviance, _sample(entry, N_HSB_QUICK))
    assert p == pytest.approx(entry["p_value"], abs=4 * _two_sample_se(entry["p_value"],
                                                                        N_HSB_QUICK))


@pytest.mark.slow
@pytest.mark.parametrize("entry", HSB, ids=_ids(HSB))
def test_hsb_p_value_matches_rlrsim(entry):
    # p 0.063: SE of the difference 2.4e-4, so 1e-3 is 4.1 SE
    f, crit0 = _fit(entry)
    p = exact.p_value(crit0 - f.deviance, _sample(entry, N_HSB_SLOW))
    assert p == pytest.approx(entry["p_value"], abs=1e-3)


def test_p_value_is_the_share_at_or_above():
    sample = np.array([0.0, 0.0, 0.5, 1.0, 2.0])
    assert exact.p_value(1.0, sample) == 0.4
    assert exact.p_value(0.0, sample) == 1.0      # a statistic of 0 is never significant
    assert exact.p_value(-1e-9, sample) == 1.0
    assert exact.p_value(3.0, sample) == 0.0
    assert math.isnan(exact.p_value(float("nan"), sample))


# ---------------------------------------------------------------------------
# the shape of the distribution: point mass at 0 and quantiles
# ---------------------------------------------------------------------------

def _check_shape(entry, sample):
    n = sample.size
    assert np.all(sample >= 0.0) and np.all(np.isfinite(sample))
    zero = float(np.mean(sample == 0.0))
    z = entry["zero_share"]
    assert zero == pytest.approx(z, abs=4 * _two_sample_se(z, n) + 1e-12)
    for row in entry["sample_quantiles"]:
        if row["value"] > 0.0:
            below = float(np.mean(sample <= row["value"]))
            assert below == pytest.approx(row["prob"],
                                          abs=4 * _two_sample_se(row["prob"], n) + 1.0 / N_R)


@pytest.mark.parametrize("entry", DYESTUFF, ids=_ids(DYESTUFF))
def test_dyestuff_distribution_matches_rlrsim(entry):
    _check_shape(entry, _sample(entry, N_DYESTUFF))


@pytest.mark.parametrize("entry", HSB, ids=_ids(HSB))
def test_hsb_distribution_matches_rlrsim_quickly(entry):
    _check_shape(entry, _sample(entry, N_HSB_QUICK))


@pytest.mark.slow
@pytest.mark.parametrize("entry", HSB, ids=_ids(HSB))
def test_hsb_distribution_matches_rlrsim(entry):
    _check_shape(entry, _sample(entry, N_HSB_SLOW))


def test_point_mass_of_the_balanced_one_way_model_is_an_F_probability():
    # J groups of m, intercept only: mu = m (J - 1 times) and 0, xi = m (J times). A draw is
    # 0 when the value falls at the first grid point, i.e. (to O(exp(-10))) when its
    # slope at lambda = 0 is <= 0: RLRT (n-1) m W_b / (W_b + W_w) <= (J-1) m, LRT
    # n m W_b / (W_b + W_w) <= J m, W_b ~ chi2(J-1), W_w ~ chi2(n-J). So with
    # F = (W_b / (J-1)) / (W_w / (n-J)) ~ F(J-1, n-J): P(RLRT = 0) = P(F <= 1) and
    # P(LRT = 0) = P(F <= J / (J-1)) (0.5611 and 0.6610; RLRsim: 0.5612 and 0.6607).
    J, m = 6, 5
    n = J * m
    X = np.ones((n, 1))
    groups = np.repeat(np.arange(J), m)
    nsim = 400_000
    rlrt = exact.null_sample(X, groups=groups, reml=True, nsim=nsim, rng=11)
    lrt = exact.null_sample(X, groups=groups, reml=False, nsim=nsim, rng=12)
    p_rlrt = sps.f.cdf(1.0, J - 1, n - J)
    p_lrt = sps.f.cdf(J / (J - 1), J - 1, n - J)
    assert p_rlrt > 0.5
    for sample, prob in ((rlrt, p_rlrt), (lrt, p_lrt)):
        se = math.sqrt(prob * (1 - prob) / nsim)
        assert np.mean(sample == 0.0) == pytest.approx(prob, abs=4 * se)
        assert np.all(sample >= 0.0)
    for name, prob in (("dyestuff_rlrt", p_rlrt), ("dyestuff_lrt", p_lrt)):
        assert BY_ID[name]["zero_share"] == pytest.approx(
            prob, abs=4 * math.sqrt(prob * (1 - prob) / N_R))


def test_testing_a_fixed_effect_too_removes_the_point_mass():
    entry = BY_ID["dyestuff_lrt_x"]
    assert entry["q"] == 1 and entry["zero_share"] == 0.0
    assert np.all(_sample(entry, N_DYESTUFF) > 0.0)


# ---------------------------------------------------------------------------
# the eigenvalues, the grid, reproducibility, refusals
# ---------------------------------------------------------------------------

def _indicators(codes: np.ndarray) -> np.ndarray:
    return (codes[:, None] == np.unique(codes)[None, :]).astype(float)


def test_spectrum_from_groups_equals_the_dense_one():
    d = pd.read_csv(DATA / "exact_lrt_dyestuff.csv", dtype={"g": str})
    X = np.column_stack([np.ones(len(d)), d["x"]])
    codes = d["g"].to_numpy()
    Z = _indicators(codes)
    for slope in (None, d["x"].to_numpy()):
        dense = Z if slope is None else Z * slope[:, None]
        mu_g, xi_g = exact.spectrum(X, groups=codes, slope=slope)
        mu_d, xi_d = exact.spectrum(X, dense)
        np.testing.assert_allclose(mu_g, mu_d, rtol=1e-10, atol=1e-10 * mu_d[0])
        np.testing.assert_allclose(xi_g, xi_d, rtol=1e-10)
    # balanced, intercept only: Z'P0Z = 5 I - 25/30 11' has eigenvalues 5 (5 times) and 0
    mu, xi = exact.spectrum(np.ones((30, 1)), groups=codes)
    np.testing.assert_allclose(mu, [5, 5, 5, 5, 5, 0], atol=1e-12)
    np.testing.assert_allclose(xi, [5] * 6)


def test_hsb_spectrum_from_groups_equals_the_dense_one():
    d = pd.read_csv(DATA / "exact_lrt_hsb.csv")
    X = np.column_stack([np.ones(len(d)), d["ses"]])
    codes = d["school"].to_numpy()
    mu_g, xi_g = exact.spectrum(X, groups=codes)
    mu_d, xi_d = exact.spectrum(X, _indicators(codes))
    assert mu_g.shape == (160,)
    np.testing.assert_allclose(mu_g, mu_d, rtol=1e-9, atol=1e-9 * mu_d[0])
    np.testing.assert_allclose(xi_g, xi_d, rtol=1e-12)
    assert sorted(xi_g) == sorted(np.bincount(np.unique(codes, return_inverse=True)[1]))


def test_dense_z_and_groups_give_the_same_sample():
    d = pd.read_csv(DATA / "exact_lrt_dyestuff.csv", dtype={"g": str})
    X = np.column_stack([np.ones(len(d)), d["x"]])
    codes = d["g"].to_numpy()
    for reml in (True, False):
        a = exact.null_sample(X, groups=codes, reml=reml, nsim=5000, rng=4)
        b = exact.null_sample(X, _indicators(codes), reml=reml, nsim=5000, rng=4)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_lambda_grid_is_rlrsims():
    grid = exact.lambda_grid()
    assert grid.shape == (200,) and grid[0] == 0.0
    assert grid[1] == pytest.approx(math.exp(-10)) and grid[-1] == pytest.approx(math.exp(8))
    np.testing.assert_allclose(np.diff(np.log(grid[1:])), 18 / 198)


def test_sample_is_reproducible_from_the_seed():
    X = np.ones((30, 1))
    groups = np.repeat(np.arange(6), 5)
    kw = dict(groups=groups, reml=True, nsim=20_000)
    a = exact.null_sample(X, rng=7, **kw)
    np.testing.assert_array_equal(a, exact.null_sample(X, rng=7, **kw))
    np.testing.assert_array_equal(a, exact.null_sample(X, rng=7, n_jobs=2, **kw))
    np.testing.assert_array_equal(a, exact.null_sample(X, rng=np.random.SeedSequence(7), **kw))
    assert not np.array_equal(a, exact.null_sample(X, rng=8, **kw))
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(exact.null_sample(X, rng=g1, **kw),
                                  exact.null_sample(X, rng=g2, **kw))


def test_refusals():
    X = np.ones((30, 1))
    groups = np.repeat(np.arange(6), 5)
    with pytest.raises(ValueError, match="q must"):
        exact.null_sample(X, groups=groups, reml=True, q=1, nsim=10, rng=1)
    with pytest.raises(ValueError, match="either Z or groups"):
        exact.null_sample(X, _indicators(groups), groups=groups, reml=True, nsim=10, rng=1)
    with pytest.raises(ValueError, match="full column rank"):
        exact.null_sample(np.column_stack([X, 2 * X]), groups=groups, reml=True, nsim=10,
                          rng=1)
    with pytest.raises(ValueError, match="not identified"):
        # a level-2 random intercept already in X: Z'P0Z = 0
        exact.null_sample(_indicators(groups), groups=groups, reml=True, nsim=10, rng=1)
