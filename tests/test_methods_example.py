"""The README's study: the true random-slope model, 2 conditions x 200 replicates, ML and
REML, generated from a ModelSpec and summarised in one table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlmsim.generate.predictors import Continuous
from mlmsim.generate.simulate import simulate
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FormulaMethod, FromSpec
from mlmsim.simstudy import FIT_PARAMETER, Study, summary_table

SPEC = ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 10.0, "x": 2.0},
                 random=["Intercept", "x"], T=[[4.0, 0.5], [0.5, 1.0]], sigma2=9.0)


def readme_study(n_reps: int = 200) -> Study:
    """As in the README (one command: build, run, print the summary table)."""
    return Study({"n_groups": [10, 50]}, FromSpec(SPEC, n_groups="n_groups", group_size=5),
                 [FormulaMethod(SPEC.formula, "ML"), FormulaMethod(SPEC.formula, "REML")],
                 n_reps=n_reps, seed=2024)


@pytest.fixture(scope="module")
def result():
    return readme_study().run(progress=False)


def test_truth_comes_from_the_spec():
    study = readme_study()
    assert study.truths[0] == SPEC.truth.params.to_dict()
    seed = study.replicate_seed(1, 7)
    data = simulate(SPEC, 50, 5, rng=np.random.default_rng(seed))
    pd.testing.assert_frame_equal(study.regenerate(1, 7), data)


def test_readme_study_runs_and_prints(result, capsys):
    rec = result.records
    assert rec.error.isna().all()
    assert len(rec) == 2 * 200 * 2 * 6
    summary = result.summarise()
    table = summary_table(summary)
    print(table.to_string())
    out = capsys.readouterr().out
    assert "var(Intercept)" in out and "cover" in out
    assert table.shape[0] == 2 * 2 * 6
    s = summary.set_index(["n_groups", "method", "parameter", "measure"])
    for J in (10, 50):
        for method in ("ML", "REML"):
            for p in ("Intercept", "x"):
                bias, mcse = s.loc[(J, method, p, "bias"), ["estimate", "mcse"]]
                assert abs(bias) < 4 * mcse
            assert s.loc[(J, method, FIT_PARAMETER, "n_fits"), "estimate"] == 200
    # the textbook contrast: ML underestimates the intercept variance with few groups
    ml = s.loc[(10, "ML", "var(Intercept)", "bias"), "estimate"]
    reml = s.loc[(10, "REML", "var(Intercept)", "bias"), "estimate"]
    assert ml < reml
