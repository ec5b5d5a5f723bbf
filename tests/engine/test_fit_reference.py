"""The engine against lme4: the 16 HSB fits of tests/data/hsb_lme4.json and NELS-88.

Expected values come only from lme4 (the JSON file, and the NELS-88 numbers in
mlmsim/datasets/README.md); nothing here is a recorded mlmsim output.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import DATA, lme4_name, lme4_T

import mlmsim

HSB_REF = json.loads((DATA / "hsb_lme4.json").read_text())
HSB_IDS = [f"{e['model']}-{'REML' if e['reml'] else 'ML'}" for e in HSB_REF]

_FITS: dict[tuple, mlmsim.FitResult] = {}


def _fit(data, formula: str, method: str) -> mlmsim.FitResult:
    key = (formula, method, id(data))
    if key not in _FITS:
        _FITS[key] = mlmsim.fit(formula, data, method=method)
    return _FITS[key]


def _hsb_fit(hsb, entry) -> mlmsim.FitResult:
    return _fit(hsb, entry["formula"], "REML" if entry["reml"] else "ML")


@pytest.mark.parametrize("entry", HSB_REF, ids=HSB_IDS)
class TestHSBAgainstLme4:
    def test_criterion(self, hsb, entry):
        res = _hsb_fit(hsb, entry)
        assert res.method == ("REML" if entry["reml"] else "ML")
        # -2LL (ML) or the REML criterion: lme4's value within 1e-4, or lower. lme4's optimum
        # is good to ~1e-6, so anything much lower would be a wrong criterion, not a better fit.
        assert res.deviance <= entry["minus2ll"] + 1e-4
        assert res.deviance >= entry["minus2ll"] - 1e-3
        assert res.loglik == pytest.approx(entry["loglik"], abs=1e-4)
        assert res.aic == pytest.approx(entry["aic"], abs=1e-4)
        assert res.bic == pytest.approx(entry["bic"], abs=1e-4)
        # the parameter counts in AIC and BIC are exactly lme4's
        assert res.aic - res.deviance == pytest.approx(entry["aic"] - entry["minus2ll"], abs=1e-8)
        assert res.bic - res.deviance == pytest.approx(entry["bic"] - entry["minus2ll"], abs=1e-7)

    def test_counts_and_flags(self, hsb, entry):
        res = _hsb_fit(hsb, entry)
        assert res.nobs == entry["nobs"] == 7185
        assert res.ngroups == 160
        assert res.n_dropped == 0
        assert res.converged
        assert res.singular is entry["singular"] is False
        assert res.identifiable
        assert res.hessian_pd

    def test_fixed_effects(self, hsb, entry):
        res = _hsb_fit(hsb, entry)
        names = [lme4_name(k) for k in entry["fixef"]]
        assert list(res.fixef.index) == names
        assert list(res.fixef_se.index) == names
        for k, v in entry["fixef"].items():
            assert res.fixef[lme4_name(k)] == pytest.approx(v, rel=1e-5), k
        for k, v in entry["se"].items():
            assert res.fixef_se[lme4_name(k)] == pytest.approx(v, rel=1e-3), k

    def test_covariance_parameters(self, hsb, entry):
        res = _hsb_fit(hsb, entry)
        ref = lme4_T(entry)
        T = res.T
        names = sorted({a for a, _ in ref})
        assert sorted(T.index) == names and sorted(T.columns) == names
        for (a, b), v in ref.items():
            tol = 1e-3 * abs(v) if a == b else max(1e-3 * abs(v), 1e-4)
            assert abs(T.loc[a, b] - v) <= tol, (a, b, T.loc[a, b], v)
        np.testing.assert_array_equal(T.to_numpy(), T.to_numpy().T)
        assert res.sigma2 == pytest.approx(entry["sigma2"], rel=1e-3)


# ---------------------------------------------------------------------------
# NELS-88 (mlmsim/datasets/README.md: lme4 by ML, matching the seed's SAS tables)
# ---------------------------------------------------------------------------

NELS_DEVIANCE = [
    ("math ~ 1 + (1 | school)", 3800.776),
    ("math ~ homework + (1 | school)", 3730.494),
    ("math ~ homework + (1 + homework | school)", 3639.037),
]


@pytest.mark.parametrize("formula,ref", NELS_DEVIANCE)
def test_nels_deviance(nels, formula, ref):
    res = _fit(nels, formula, "ML")
    assert abs(res.deviance - ref) <= 1e-3
    assert res.nobs == 519 and res.ngroups == 23
    assert res.converged and res.hessian_pd and not res.singular


def _close(value, printed, rel=1e-5, digits=4):
    """``value`` agrees with lme4's ``printed`` (``digits`` decimals) to half a unit in the
    last printed digit plus ``rel`` relative (lme4's stopping noise on a flat optimum:
    its NLopt BOBYQA stops within ~1e-9 of the criterion, which moves T by ~1e-5)."""
    return abs(value - printed) <= 0.5 * 10.0**-digits + rel * abs(printed)


def test_nels_null_model(nels):
    res = _fit(nels, "math ~ 1 + (1 | school)", "ML")
    assert _close(res.T.loc["Intercept", "Intercept"], 24.8507, rel=1e-4)
    assert _close(res.sigma2, 81.2374, rel=1e-4)
    assert _close(res.fixef["Intercept"], 50.7574)  # the seed's SAS table


def test_nels_random_slope_model(nels):
    res = _fit(nels, "math ~ homework + (1 + homework | school)", "ML")
    T = res.T
    assert _close(T.loc["Intercept", "Intercept"], 59.2837, rel=1e-4)
    assert _close(T.loc["homework", "Intercept"], -26.1511, rel=1e-4)
    assert _close(T.loc["Intercept", "homework"], -26.1511, rel=1e-4)
    assert _close(T.loc["homework", "homework"], 16.7861, rel=1e-4)
    assert _close(res.sigma2, 53.2976, rel=1e-4)
    assert _close(res.fixef["Intercept"], 46.3225)
    assert _close(res.fixef["homework"], 1.9869)
    assert _close(res.fixef_se["Intercept"], 1.7195)
    assert _close(res.fixef_se["homework"], 0.9060)
    # correlation -0.83 as in the seed
    assert res.corr.loc["homework", "Intercept"] == pytest.approx(
        -26.1511 / math.sqrt(59.2837 * 16.7861), abs=1e-4)
