"""The formula method: mlmsim.fit (and its batched path) inside the study runner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlmsim import fit
from mlmsim.study import FormulaMethod, Study, summarise

FORMULA = "y ~ 1 + x + (1 + x | g)"
TRUTH = {"Intercept": 1.0, "x": 0.5, "var(Intercept)": 0.5, "cov(x,Intercept)": 0.1,
         "var(x)": 0.2, "sigma2": 1.0}


def random_slopes(cond, rng):
    """Random intercept and slope model: J = cond.n_groups groups of 6."""
    J, m = cond.n_groups, 6
    g = np.repeat(np.arange(J), m)
    x = rng.normal(size=J * m)
    T = np.array([[0.5, 0.1], [0.1, 0.2]])
    U = rng.multivariate_normal(np.zeros(2), T, size=J)
    y = 1.0 + 0.5 * x + U[g, 0] + U[g, 1] * x + rng.normal(size=J * m)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def study(batch=True, n_reps=40):
    methods = [FormulaMethod(FORMULA, "ML", batch=batch),
               FormulaMethod(FORMULA, "REML", batch=batch)]
    return Study({"n_groups": [8, 25]}, random_slopes, methods, truth=TRUTH, n_reps=n_reps,
                 seed=42)


def strip(records):
    return records.drop(columns="seconds")


@pytest.fixture(scope="module")
def batched():
    return study().run(progress=False).records


def test_records_follow_fit_result(batched):
    rec = batched
    one = rec[(rec.condition == 1) & (rec.rep == 3) & (rec.method == "REML")]
    assert one.parameter.tolist() == list(TRUTH)
    data = study().regenerate(1, 3)
    res = fit(FORMULA, data, method="REML")
    np.testing.assert_allclose(one.estimate, res.params.to_numpy(), rtol=1e-9, atol=1e-12)
    se = pd.concat([res.fixef_se, res.covparms["se"]]).reindex(res.params.index)
    np.testing.assert_allclose(one.se, se.to_numpy(), rtol=1e-7, atol=1e-12)
    z = 1.959963984540054
    np.testing.assert_allclose(one.ci_upper - one.estimate, z * one.se, rtol=1e-12)
    row = one.iloc[0]
    assert (row.converged, row.singular, row.hessian_pd, row.identifiable) == (
        res.converged, res.singular, res.hessian_pd, res.identifiable)
    assert one.truth.tolist() == list(TRUTH.values())
    assert rec.error.isna().all()


def test_batched_path_matches_single_fits(batched):
    single = study(batch=False).run(progress=False).records
    for col in ("converged", "singular", "hessian_pd", "identifiable", "parameter"):
        assert (batched[col] == single[col]).all(), col
    np.testing.assert_allclose(batched.estimate, single.estimate, rtol=1e-8, atol=1e-10)
    ok = single.se.notna()
    assert (batched.se.notna() == ok).all()
    np.testing.assert_allclose(batched.se[ok], single.se[ok], rtol=1e-6, atol=1e-10)


def test_batched_records_do_not_depend_on_chunks_or_workers(batched):
    for kwargs in ({"chunk_size": 5}, {"chunk_size": 40, "n_jobs": 2}):
        rec = study().run(progress=False, **kwargs).records
        pd.testing.assert_frame_equal(strip(rec), strip(batched))


def test_summary_of_a_real_study(batched):
    s = summarise(batched).set_index(
        ["condition", "method", "parameter", "measure"])
    assert s.loc[(1, "REML", "x", "bias"), "n"] == 40
    assert s.loc[(1, "ML", "(fit)", "n_fits"), "estimate"] == 40
    assert 0 <= s.loc[(0, "ML", "(fit)", "singular_rate"), "estimate"] <= 1
