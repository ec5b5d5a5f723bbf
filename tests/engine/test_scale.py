"""Boundary fits at scale: a variance estimated as 0 costs a few evaluations more than an
interior fit, not 100 times more (benchmarks/bench_scale.py measures the times).

The data that once took 34 s (J = 30,000 groups of 3: 600 iterations, 21,327 evaluations,
20,179 line-search halvings, not converged) and 525 s (J = 333,334) are fitted here and
their evaluation counts bounded; a study of large boundary fits records each fit's
evaluations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mlmsim
from mlmsim.methods import FormulaMethod
from mlmsim.simstudy import Study

FORMULA = "y ~ x + (1 + x | g)"


def _zero_slope(cond, rng):
    """J = cond["n_groups"] groups of 3: y = x + N(0, 1)[g] + N(0, 1), no random slope in
    the truth (with default_rng(5): the data of the old table)."""
    J = int(cond["n_groups"])
    g = np.repeat(np.arange(J), 3)
    x = rng.normal(size=g.size)
    y = x + rng.normal(size=J)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g})


@pytest.mark.parametrize("J", [10_000, 30_000])
def test_boundary_fits_cost_a_few_evaluations(J):
    data = _zero_slope({"n_groups": J}, np.random.default_rng(5))
    res = mlmsim.fit(FORMULA, data, method="ML")
    o = res.optsum
    assert res.converged and res.singular
    assert o.evaluations < 150 and o.halvings < 100 and o.iterations < 60, str(o)
    # the fit kept is not above the one from the moment start alone (no restart)
    alone = mlmsim.fit(FORMULA, data, method="ML", control={"restart": False})
    assert res.deviance <= alone.deviance + 1e-8 * abs(alone.deviance)


def _study(n_groups: int, n_reps: int) -> Study:
    return Study({"n_groups": [n_groups]}, _zero_slope,
                 [FormulaMethod(FORMULA, "ML", batch_size=8)],
                 truth={"Intercept": 0.0, "x": 1.0}, n_reps=n_reps, seed=11)


def _check(records: pd.DataFrame, n_reps: int) -> None:
    fits = records.drop_duplicates(["rep"])
    assert len(fits) == n_reps and records.error.isna().all()
    assert fits.evaluations.notna().all()
    assert fits.evaluations.max() < 200, fits.evaluations.describe()
    assert fits.converged.all()


def test_a_study_of_boundary_fits_records_evaluations():
    res = _study(20_000, 4).run(progress=False)
    _check(res.records, 4)


@pytest.mark.slow
def test_a_study_of_1000_large_boundary_fits_finishes(tmp_path):
    """1,000 replicates of J = 100,000 groups of 3 with a zero slope variance (about 3
    minutes on 2 cores)."""
    res = _study(100_000, 1000).run(tmp_path, n_jobs=2, progress=False)
    _check(res.records, 1000)
