"""Likelihood-ratio tests: the statistic, the boundary mixture and the refusals."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import mlmsim

REF = {(e["model"], e["reml"]): e for e in json.loads(
    (Path(__file__).parents[1] / "data" / "hsb_lme4.json").read_text())}


@pytest.fixture(scope="module")
def hsb():
    return mlmsim.datasets.load("hsb")


def test_random_slope_lrt_matches_lme4_deviances(hsb):
    f0 = mlmsim.fit("mathach ~ cses + (1 | school)", hsb, method="ML")
    f1 = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb, method="ML")
    res = mlmsim.lrt(f0, f1)
    expected = REF[("ri_cses", False)]["minus2ll"] - REF[("ris_cses", False)]["minus2ll"]
    assert res.statistic == pytest.approx(expected, abs=1e-3)
    assert res.df == 2
    assert res.p_value == pytest.approx(sps.chi2.sf(res.statistic, 2))
    mix = 0.5 * sps.chi2.sf(res.statistic, 1) + 0.5 * sps.chi2.sf(res.statistic, 2)
    assert res.p_mixture == pytest.approx(mix)
    assert res.p_mixture < res.p_value
    assert res.added_random == ("cses",)
    # order of the arguments does not matter
    assert mlmsim.lrt(f1, f0).statistic == pytest.approx(res.statistic)
    assert "boundary mixture" in res.summary()


def test_reml_fits_with_different_fixed_effects_are_refused(hsb):
    f0 = mlmsim.fit("mathach ~ cses + (1 | school)", hsb, method="REML")
    f1 = mlmsim.fit("mathach ~ cses + female + (1 | school)", hsb, method="REML")
    with pytest.raises(ValueError, match="REML"):
        mlmsim.lrt(f0, f1)


def test_ml_versus_reml_is_refused(hsb):
    f0 = mlmsim.fit("mathach ~ cses + (1 | school)", hsb, method="ML")
    f1 = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb, method="REML")
    with pytest.raises(ValueError, match="ML"):
        mlmsim.lrt(f0, f1)


def test_non_nested_fits_are_refused(hsb):
    f0 = mlmsim.fit("mathach ~ cses + (1 | school)", hsb, method="ML")
    f1 = mlmsim.fit("mathach ~ female + minority + (1 | school)", hsb, method="ML")
    with pytest.raises(ValueError, match="nested"):
        mlmsim.lrt(f0, f1)


def test_fixed_effect_lrt_by_ml_has_no_mixture(hsb):
    f0 = mlmsim.fit("mathach ~ cses + (1 | school)", hsb, method="ML")
    f1 = mlmsim.fit("mathach ~ cses + female + (1 | school)", hsb, method="ML")
    res = mlmsim.lrt(f0, f1)
    assert res.df == 1
    assert np.isnan(res.p_mixture)
    assert res.statistic == pytest.approx(f0.deviance - f1.deviance)


@pytest.mark.slow
def test_mixture_p_values_are_uniform_under_the_null():
    """Random intercept truth; test a random slope for x by ML. Under the null the
    boundary-corrected p-value is close to uniform (generous KS level), while the
    plain chi-square p-value is conservative (too large)."""
    rng = np.random.default_rng(20261125)
    J, n, R = 60, 10, 300
    g = np.repeat(np.arange(J), n)
    p_mix, p_plain = [], []
    for _ in range(R):
        x = rng.standard_normal(J * n)
        y = 1 + 0.5 * x + rng.normal(0, 1.0, J)[g] + rng.standard_normal(J * n)
        d = pd.DataFrame({"y": y, "x": x, "g": g})
        f0 = mlmsim.fit("y ~ x + (1 | g)", d, method="ML")
        f1 = mlmsim.fit("y ~ x + (1 + x | g)", d, method="ML")
        res = mlmsim.lrt(f0, f1)
        p_mix.append(res.p_mixture)
        p_plain.append(res.p_value)
    p_mix, p_plain = np.array(p_mix), np.array(p_plain)
    assert sps.kstest(p_mix, "uniform").pvalue > 1e-3
    assert p_plain.mean() > p_mix.mean()


EXACT = {t["id"]: t for t in json.loads(
    (Path(__file__).parents[1] / "data" / "exact_lrt_reference.json").read_text())["tests"]}


@pytest.mark.parametrize("case,nsim,tol", [("dyestuff_rlrt", 1_000_000, 1e-3),
                                           ("dyestuff_lrt", 1_000_000, 1e-3),
                                           ("hsb_rlrt", 100_000, 4 * 7.7e-4),
                                           ("hsb_lrt", 100_000, 4 * 7.7e-4)])
def test_exact_lrt_matches_rlrsim(case, nsim, tol):
    """mlmsim.exact_lrt on a fit: RLRsim's statistic (exactRLRT / exactLRT) to 1e-6 and
    its p-value (2e6 draws) within 1e-3, or within 4 Monte Carlo SEs at HSB size with
    1e5 draws here (SE sqrt(p (1 - p) / 1e5) = 7.7e-4)."""
    t = EXACT[case]
    d = pd.read_csv(Path(__file__).parents[2] / t["dataset"], dtype={"g": str})
    fit = mlmsim.fit(t["formula"], d, method="REML" if t["reml"] else "ML")
    res = mlmsim.exact_lrt(fit, nsim=nsim, rng=20261204)
    assert res.statistic == pytest.approx(t["statistic"], rel=1e-6)
    assert res.deviance_null == pytest.approx(t["criterion_null"], rel=1e-10)
    assert res.p_exact == pytest.approx(t["p_value"], abs=tol)
    assert res.method == "exact" and res.reference.size == nsim
    assert "exact null" in res.summary()


def test_exact_lrt_refuses_more_than_one_random_effect(hsb):
    fit = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb)
    with pytest.raises(ValueError, match="one variance component"):
        mlmsim.exact_lrt(fit)
