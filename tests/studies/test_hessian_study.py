"""The hessian study: its quick version end to end, the exact zero-variance probabilities
and the accounting of failed fits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlmsim.generate.sizes import SizeList
from mlmsim.simstudy import load_study, summarise
from mlmsim.studies import RunOptions, hessian


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("hessian")
    hessian.run(out, RunOptions(quick=True, progress=False))
    return out


def test_quick_run_writes_the_report(quick):
    text = (quick / "report.md").read_text()
    assert text.startswith(f"# {hessian.TITLE}")
    for word in ("singular", "non-PD", "not converged", "failed", "exact", "MCSE"):
        assert word in text
    for name in ("fit_rates.csv", "zero_variance.csv", "ri_zero_variance.png",
                 "slope_nonpd_hessian.png", "slope_singular.png", "discrete_rates.png",
                 "level2_rates.png"):
        assert (quick / name).is_file(), name
    for block in hessian.BLOCKS:
        assert (quick / "records" / block / "manifest.json").is_file()
    # the report is rebuilt from the saved records alone
    (quick / "report.md").unlink()
    hessian.report(quick)
    assert (quick / "report.md").read_text() == text


def test_zero_variance_rates_match_the_exact_probabilities(quick):
    zero = pd.read_csv(quick / "zero_variance.csv")
    assert len(zero) == 2 * len(hessian.RI_CONDITIONS) >= 12
    assert set(zero.method) == {"ML", "REML"}
    R = hessian.QUICK_REPS["ri"]
    assert (zero.n_fits == R).all() and (zero.n_errors == 0).all()
    # a generous band for 300 replicates: 4 binomial SDs at the exact probability
    band = 4 * np.sqrt(zero.exact * (1 - zero.exact) / R)
    assert ((zero.simulated - zero.exact).abs() <= band).all()
    # the fit's singular flag is the closed-form event, replicate by replicate
    assert (zero.flag_agrees_anova == R).all()
    assert (zero.anova_rate == zero.simulated).all()
    assert zero.exact.min() < 0.1 and zero.exact.max() > 0.5
    # ML's threshold is larger: more zero estimates than REML, exactly and in the runs
    wide = zero.pivot_table(index=["n_groups", "group_size", "ratio"], columns="method",
                            values="exact")
    assert (wide.ML > wide.REML).all()


def test_nonidentifiable_models_have_a_nonpd_hessian(quick):
    rates = pd.read_csv(quick / "fit_rates.csv")
    nonid = rates[rates.method.isin(hessian.NON_IDENTIFIABLE)]
    assert set(nonid.method) == set(hessian.NON_IDENTIFIABLE)
    assert (nonid.nonpd_hessian_rate >= 0.95).all()
    assert (nonid.nonidentifiable_rate == 1).all()
    ident = rates[~rates.method.isin(hessian.NON_IDENTIFIABLE)]
    assert (ident.n_nonidentifiable == 0).all()
    # identifiable fits are non-PD only at the boundary (T-hat singular) in these runs
    assert (ident.n_nonpd_nonsingular == 0).all()
    model1 = ident[ident.block == "level2"]
    assert (model1.nonpd_hessian_rate == 0).all()


def test_every_fit_is_counted(quick):
    rates = pd.read_csv(quick / "fit_rates.csv")
    for block in hessian.BLOCKS:
        res = load_study(quick / "records" / block)
        fits = hessian.fit_flags(res)
        part = rates[rates.block == block]
        n_methods = len([m for m in res.methods if m != hessian.ANOVA])
        assert len(part) == len(res.conditions) * n_methods
        assert (part.n_fits == hessian.QUICK_REPS[block]).all()
        assert part.n_errors.sum() == fits[fits.method != hessian.ANOVA].error.notna().sum()
    text = (quick / "report.md").read_text()
    assert "0 failed" in text


def test_a_failed_fit_is_counted_not_dropped(quick):
    rec = load_study(quick / "records" / "level2").records.copy()
    hit = (rec.condition == 0) & (rec.rep == 3) & (rec.method == "Model 1 REML")
    rec.loc[hit, "error"] = "method: LinAlgError: injected"
    rec.loc[hit, ["converged", "singular", "hessian_pd", "identifiable"]] = pd.NA
    rec.loc[hit, "estimate"] = np.nan
    table = hessian._fit_table(summarise(rec), hessian.fit_flags(rec), "level2")
    row = table[(table.condition == 0) & (table.method == "Model 1 REML")].iloc[0]
    assert row.n_fits == hessian.QUICK_REPS["level2"] and row.n_errors == 1
    assert row.error_rate == pytest.approx(1 / hessian.QUICK_REPS["level2"])
    assert "1 failed" in hessian._sum_line(table)


def test_exact_zero_probability():
    # Monte Carlo of the two mean squares: MSB / MSW ~ (1 + n ratio) F(J - 1, J(n - 1))
    rng = np.random.default_rng(7)
    J, n, ratio, draws = 10, 5, 0.2, 400_000
    msb = (1 + n * ratio) * rng.chisquare(J - 1, draws) / (J - 1)
    msw = rng.chisquare(J * (n - 1), draws) / (J * (n - 1))
    for method, threshold in (("REML", 1.0), ("ML", J / (J - 1))):
        p = hessian.exact_zero_probability(J, n, ratio, method)
        sim = np.mean(msb <= threshold * msw)
        assert abs(sim - p) < 4 * np.sqrt(p * (1 - p) / draws)
    # with tau0^2 = 0 and many level-1 df the REML probability tends to Pr(F(J-1, inf) < 1)
    assert hessian.exact_zero_probability(5, 1000, 0.0, "REML") == pytest.approx(0.59, abs=0.01)
    with pytest.raises(ValueError):
        hessian.exact_zero_probability(5, 5, 0.1, "MINQUE")


def test_anova_zero_on_a_small_data_set():
    # groups (1, 3), (2, 2), (5, 7): means 2, 2, 6; grand mean 10/3
    data = pd.DataFrame({"g": [0, 0, 1, 1, 2, 2], "y": [1.0, 3.0, 2.0, 2.0, 5.0, 7.0]})
    out = hessian.anova_zero(data)
    ssb = 2 * ((2 - 10 / 3) ** 2 * 2 + (6 - 10 / 3) ** 2)
    msb, msw = ssb / 2, 4 / 3
    assert out["F"] == pytest.approx(msb / msw)
    assert out["zero_REML"] == 0.0 and out["zero_ML"] == 0.0
    flat = pd.DataFrame({"g": [0, 0, 1, 1], "y": [0.0, 2.0, 0.1, 2.0]})
    assert hessian.anova_zero(flat) == {"F": pytest.approx(0.0025 / 1.9025), "zero_REML": 1.0,
                                        "zero_ML": 1.0}


def test_specs_and_layouts():
    assert hessian.group_layout("hsb", 160).sizes == SizeList.from_dataset("hsb").sizes
    assert len(hessian.group_layout("hsb", 23).sizes) == 23
    nels = hessian.group_layout("nels88", 160).sizes
    assert len(nels) == 160 and nels[:23] == nels[23:46]
    slope = hessian.conditions("slope")
    assert len(slope) == 28 and set(slope.n_groups) == {10, 23, 50, 160}
    assert (slope[slope.tau1_sq == 0]["corr"] == 0).all()
    spec = hessian.slope_spec(slope.iloc[-1])
    assert np.linalg.matrix_rank(spec.T) == 1  # corr 1: the true T is singular
    d = hessian.discrete_spec(hessian.conditions("discrete").iloc[0])
    assert d.formula == hessian.DISCRETE_FORMULAS["(b)"]
    m1 = hessian.level2_spec(hessian.conditions("level2").iloc[0])
    assert m1.formula == hessian.LEVEL2_FORMULAS["Model 1"]
    ri = hessian.ri_spec({"ratio": 0.2, "group_size": 5})
    assert ri.truth.params["var(Intercept)"] == pytest.approx(0.2)
