"""The small_groups study: its quick version end to end (through the command line), the
tables' cells and their MCSEs, the two methods it defines, and findings that follow the
numbers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import mlmsim
from mlmsim.cli import main
from mlmsim.studies import small_groups as sg

QUICK_CELLS = {b: int(np.prod([len(v) for v in g.values()])) for b, g in sg.QUICK.items()}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("small_groups")
    assert main(["study", "run", "small_groups", "--quick", "--jobs", "2", "--out",
                 str(out)]) == 0
    return out


def test_quick_run_writes_the_report_tables_and_figures(quick):
    text = (quick / "report.md").read_text()
    assert text.startswith(f"# {sg.TITLE}")
    assert "quick (reduced) run" in text.split("## Design (ADEMP)")[0]
    for word in ("## Findings", "MCSE", "singular", "not converged", "failed",
                 "Run time:", "Kenward-Roger t", "Satterthwaite t", "Wald z", "profile",
                 "bootstrap", "REML unbounded"):
        assert word in text, word
    for name in ("fixed_effects.csv", "variance_coverage.csv", "variance_bias.csv",
                 "fits.csv", "type1_treatment.csv", "type1_ri.png", "type1_rs.png",
                 "power_ri.png", "cover_fixed_rs.png", "cover_variances_ri.png",
                 "cover_variances_rs.png", "relbias_rs.png", "singular.png"):
        assert (quick / name).is_file(), name
        assert f"({name})" in text or name.endswith(".csv"), name
    for block in sg.QUICK:
        assert (quick / "records" / block / "manifest.json").is_file()
    # rebuilt from the saved records alone, identically
    (quick / "report.md").unlink()
    sg.report(quick)
    assert (quick / "report.md").read_text() == text


def test_every_cell_has_its_mcse_and_a_row_per_procedure(quick):
    fixed = pd.read_csv(quick / "fixed_effects.csv")
    for model in ("ri", "rs"):
        part = fixed[fixed.model == model]
        # conditions x tested effects x procedures x (rejection, cover)
        assert len(part) == QUICK_CELLS[model] * len(sg.FIXED[model]) * len(sg.TESTS) * 2
        assert set(part.procedure) == set(sg.TESTS.values())
        assert (part.n_fits == sg.QUICK_REPS[model]).all()
    inner = fixed[(fixed.estimate > 0) & (fixed.estimate < 1)]
    assert np.isfinite(inner.mcse).all() and (inner.mcse > 0).all()
    assert np.allclose(inner.mcse, np.sqrt(inner.estimate * (1 - inner.estimate) / inner.n))
    var = pd.read_csv(quick / "variance_coverage.csv")
    for model in ("ri", "rs"):
        part = var[var.model == model]
        n_cells = QUICK_CELLS[f"{model}_intervals"]
        variances = [p for p in sg.COVPARMS[model] if not p.startswith("cov(")]
        covs = len(sg.COVPARMS[model]) - len(variances)
        assert len(part) == n_cells * (len(variances) * 4 + covs * 2)
    assert var.mcse.notna().all() and (var.n > 0).all()
    bias = pd.read_csv(quick / "variance_bias.csv")
    assert set(bias.estimator) == set(sg.ESTIMATORS.values())
    assert np.isfinite(bias[bias.measure == "bias"].mcse).all()


def test_kenward_roger_type_one_error_of_the_treatment_is_a_rate(quick):
    t1 = pd.read_csv(quick / "type1_treatment.csv")
    assert len(t1) == QUICK_CELLS["ri_intervals"] * len(sg.TESTS)
    kr = t1[t1.procedure == "Kenward-Roger t"]
    assert len(kr) == QUICK_CELLS["ri_intervals"]
    assert np.isfinite(kr.estimate).all() and ((kr.estimate >= 0) & (kr.estimate <= 1)).all()
    assert (kr.n > 0).all() and np.isfinite(kr.mcse).all()
    # the report prints each of them with its MCSE (or its Wilson interval at 0 or 1)
    text = (quick / "report.md").read_text()
    for r in kr.itertuples():
        assert sg._p(r.estimate, r.mcse, r.n) in text


def test_the_records_hold_what_the_tables_say(quick):
    rec = mlmsim.load_study(quick / "records" / "ri").records
    w = rec[(rec.parameter == "W") & (rec.method == "REML KR") & (rec.gamma == 0)
            & rec.p.notna()]
    rate = (w.p <= sg.ALPHA).groupby([w.n_groups]).mean()
    t1 = pd.read_csv(quick / "type1_treatment.csv")
    kr = t1[t1.procedure == "Kenward-Roger t"].set_index("n_groups").estimate
    assert np.allclose(rate.sort_index().to_numpy(), kr.sort_index().to_numpy())
    # profile and bootstrap record intervals of the variances; never of the covariance
    rs = mlmsim.load_study(quick / "records" / "rs_intervals").records
    cov = rs[rs.parameter == "cov(X,Intercept)"]
    assert cov.ci_lower.isna().all()
    var = rs[rs.parameter == "var(X)"]
    assert var.ci_lower.notna().mean() > 0.5


def test_profile_of_the_variances_only_matches_confint():
    from mlmsim.methods import FormulaMethod

    spec = sg.ri_spec({"icc": 0.2, "gamma": 0.0})
    data = mlmsim.simulate(spec, 10, 5, rng=np.random.default_rng(3))
    method = FormulaMethod(spec.formula, "REML", intervals="profile",
                           parm=["var(Intercept)", "sigma2"])
    out = method(data)
    ci = mlmsim.fit(spec.formula, data, method="REML").confint("profile")
    for p in ("var(Intercept)", "sigma2"):
        assert out.ci_lower[p] == pytest.approx(ci.loc[p, "lower"])
        assert out.ci_upper[p] == pytest.approx(ci.loc[p, "upper"])
    assert np.isnan(out.ci_lower["W"])
    assert method.descriptor()["parm"] == ["var(Intercept)", "sigma2"]
    with pytest.raises(ValueError, match="parm goes with"):
        FormulaMethod(spec.formula, parm=["sigma2"])


def _treat(kr: float, sat: float, n: int = 1000) -> pd.DataFrame:
    rows = []
    for J in (5, 10, 20):
        for proc, est in (("Wald z", 0.12 if J == 5 else 0.09), ("containment t", 0.06),
                          ("Satterthwaite t", sat), ("Kenward-Roger t", kr)):
            mcse = np.sqrt(est * (1 - est) / n)
            rows.append({"n_groups": J, "group_size": 5, "icc": 0.2, "procedure": proc,
                         "estimate": est, "mcse": mcse, "n": n, "n_fits": n,
                         "z": (est - 0.05) / mcse})
    return pd.DataFrame(rows)


def test_findings_say_where_kenward_roger_misses_the_nominal_level():
    ok = "\n".join(sg._treatment_findings(_treat(kr=0.052, sat=0.055)))
    assert "Kenward-Roger t: the type I error of W lies within 3 MCSE of 0.05 in all 2" in ok
    assert "Wald z rejects W more often than Kenward-Roger" in ok
    assert re.search(r"at 3 of 3 J \(J = 5, 10, 20\)", ok)
    # 0.08 over 1000 replicates is 3.5 MCSE above 0.05: said, with where and by how much
    bad = "\n".join(sg._treatment_findings(_treat(kr=0.08, sat=0.05)))
    assert ("Kenward-Roger t: the type I error of W is within 3 MCSE of 0.05 in 0 of 2 "
            "cells with J >= 10; not in 2: J = 10, n = 5, ICC = 0.2: 0.08 (0.0086), 0.03 "
            "above 0.05") in bad
    assert "Satterthwaite t: the type I error of W lies within 3 MCSE" in bad


def test_design_text_states_the_full_design():
    doc = " ".join(sg.__doc__.split())
    assert f"on every condition with {sg.FULL_REPS['ri']} replicates per cell" in doc
    assert sg.FULL_REPS["ri"] == sg.FULL_REPS["rs"]
    assert (f"with {sg.FULL_REPS['ri_intervals']} (`ri`) and {sg.FULL_REPS['rs_intervals']}"
            " (`rs`) replicates per cell") in doc
    assert f"{sg.NSIM} refits per replicate" in doc
    assert f"at most {sg.UNBOUNDED_MAX_ITER} Newton steps" in doc
    for block, grid in sg.FULL.items():
        assert grid["n_groups"] == sg.N_GROUPS and grid["icc"] == sg.ICCS
        assert grid["group_size"] == sg.GROUP_SIZES
        assert grid["gamma"] == ([0.0] if "intervals" in block
                                 else [0.0, sg.EFFECT[block]])
    truth = sg.ri_spec({"icc": 0.2, "gamma": 0.5}).truth.params
    assert truth["var(Intercept)"] + truth["sigma2"] == pytest.approx(1.0)
    assert truth["W"] == 0.5
