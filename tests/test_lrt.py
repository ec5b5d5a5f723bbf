"""Likelihood-ratio tests: the statistic, the boundary mixture and the refusals."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import mlmsim

REF = {(e["model"], e["reml"]): e for e in json.loads(
    (Path(__file__).parent / "data" / "hsb_lme4.json").read_text())}


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
