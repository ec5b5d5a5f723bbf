"""Parametric bootstrap and bootstrap LRT against lme4's ``bootMer`` and pbkrtest's
``PBmodcomp`` (tests/data/boot_reference.json, made by make_profile_reference.R).

Both sides are Monte Carlo estimates from independent draws, so they are compared within
Monte Carlo error: for the a-quantile of n draws with SD s, the normal approximation
SE = s sqrt(a (1 - a) / n) / phi(z_a); for a mean s / sqrt(n); for an SD s / sqrt(2n);
for a p-value sqrt(p (1 - p) / n). The difference of two independent estimates has sqrt(2)
(or the root of the sum of both variances) times that SE; each check allows 4 of them.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import mlmsim

ROOT = Path(__file__).parents[2]
REF = json.loads((Path(__file__).parents[1] / "data" / "boot_reference.json").read_text())
NAMES = {"(Intercept)": "Intercept", "cses": "cses", "var((Intercept))": "var(Intercept)",
         "var(cses)": "var(cses)", "sigma2": "sigma2",
         "cor((Intercept),cses)": "cov(cses,Intercept)"}


def _hsb():
    d = pd.read_csv(ROOT / "mlmsim" / "datasets" / "hsb.csv")
    d["cses"] = d["ses"] - d["meanses"]
    return d


@pytest.fixture(scope="module")
def hsb():
    return _hsb()


@pytest.mark.parametrize("entry", REF["bootstrap"], ids=lambda e: e["id"])
def test_bootstrap_distribution_matches_bootmer(hsb, entry):
    fit = mlmsim.fit(entry["formula"], hsb, method="REML" if entry["reml"] else "ML")
    n = entry["nsim"]
    boot = fit.bootstrap(nsim=n, rng=20261204, progress=False)
    assert boot.n_failed == 0 and boot.n_singular < 0.05 * n
    ci = boot.confint(0.95)
    a = 0.025
    k = 4 * np.sqrt(2)
    se_q = np.sqrt(a * (1 - a) / n) / sps.norm.pdf(sps.norm.ppf(a))
    for rname, name in NAMES.items():
        ref = entry["boot"][rname]
        s = boot.samples[name].std()
        assert ref["sd"] == pytest.approx(s, abs=k * s / np.sqrt(2 * n)), rname
        assert ref["mean"] == pytest.approx(boot.samples[name].mean(), abs=k * s / np.sqrt(n))
        for side in ("lower", "upper"):
            assert ref[side] == pytest.approx(ci.loc[name, side], abs=k * se_q * s), (rname,
                                                                                      side)


@pytest.mark.parametrize("entry", REF["pbmodcomp"], ids=lambda e: e["id"])
def test_bootstrap_lrt_matches_pbmodcomp(hsb, entry):
    data = hsb if entry["csv"].endswith("hsb.csv") else pd.read_csv(ROOT / entry["csv"])
    f0 = mlmsim.fit(entry["small"], data, method="ML")
    f1 = mlmsim.fit(entry["large"], data, method="ML")
    n = entry["nsim"]
    res = mlmsim.lrt(f0, f1, "boot", nsim=n, rng=7, progress=False)
    assert res.statistic == pytest.approx(entry["lrt"], rel=1e-6)
    assert res.p_value == pytest.approx(entry["p_chisq"], rel=1e-5)
    p_r, n_r = entry["p_pb"], entry["nsim_used"]
    p = 0.5 * (p_r + res.p_boot)
    se = np.sqrt(p * (1 - p) * (1 / n + 1 / n_r))
    assert res.p_boot == pytest.approx(p_r, abs=4 * se)
    assert res.n_failed <= 0.01 * n
