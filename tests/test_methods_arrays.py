"""Simulated arrays straight to batched formula fits: FromSpec.draw, SimBatch inputs to
fit_batch, and the runner choosing that route only when every method takes arrays."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mlmsim.engine.batch import fit_batch
from mlmsim.generate.predictors import Categorical, Continuous
from mlmsim.generate.simulate import SimBatch
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FormulaMethod, FromSpec
from mlmsim.simstudy import Study
from mlmsim.simstudy.conditions import Condition


def slope_spec() -> ModelSpec:
    return ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                     random=["Intercept", "x"], T=[[1.0, 0.1], [0.1, 0.25]], sigma2=1.0)


def test_draw_is_the_frame_of_the_same_draws():
    gen = FromSpec(slope_spec(), 12, 5)
    cond = Condition(0, {})
    b = gen.draw(cond, np.random.default_rng(7))
    assert isinstance(b, SimBatch) and b.n_replicates == 1
    pd.testing.assert_frame_equal(b.frame(0), gen(cond, np.random.default_rng(7)))


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_fit_batch_on_arrays_equals_fit_batch_on_frames(method):
    gen = FromSpec(slope_spec(), 15, 6)
    cond = Condition(0, {})
    draws = [gen.draw(cond, np.random.default_rng(s)) for s in range(20)]
    a = fit_batch("y ~ x + (1 + x | g)", draws, method)
    f = fit_batch("y ~ x + (1 + x | g)", [d.frame(0) for d in draws], method)
    np.testing.assert_allclose(a.deviance, f.deviance, rtol=1e-12)
    np.testing.assert_allclose(a.params, f.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(a.singular, f.singular)
    assert a.param_names == f.param_names


def test_fit_batch_on_arrays_with_a_categorical_predictor_falls_back_to_frames():
    spec = ModelSpec(predictors=[Continuous("x"), Categorical("f", ["a", "b", "c"])],
                     gamma={"Intercept": 1.0, "x": 0.5, "f[T.b]": 0.3, "f[T.c]": -0.2},
                     random=["Intercept"], T=0.5, sigma2=1.0)
    gen = FromSpec(spec, 10, 6)
    cond = Condition(0, {})
    draws = [gen.draw(cond, np.random.default_rng(s)) for s in range(6)]
    formula = "y ~ x + f + (1 | g)"
    a = fit_batch(formula, draws, "REML")
    f = fit_batch(formula, [d.frame(0) for d in draws], "REML")
    assert a.fixed_names == ("Intercept", "x", "f[T.b]", "f[T.c]")
    np.testing.assert_allclose(a.params, f.params, rtol=1e-12)


class FrameOnly:
    """A user's method that expects a DataFrame (no ``takes_sim_batch``)."""

    seen: list = []

    def __call__(self, data):
        FrameOnly.seen.append(type(data))
        return {"n": float(len(data))}


class Recording(FormulaMethod):
    seen: list = []

    def _fit_batch(self, datasets):
        Recording.seen.extend(type(d) for d in datasets)
        return super()._fit_batch(datasets)


def test_runner_hands_arrays_only_when_every_method_takes_them():
    gen = FromSpec(slope_spec(), 10, 5)
    Recording.seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays = Study(None, gen, [Recording("y ~ x + (1 + x | g)", "ML", batch_size=8)],
                       n_reps=16, seed=3).run(progress=False).records
    assert set(Recording.seen) == {SimBatch}
    Recording.seen, FrameOnly.seen = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = Study(None, gen, {"ML": Recording("y ~ x + (1 + x | g)", "ML", batch_size=8),
                                  "n": FrameOnly()}, n_reps=16, seed=3).run(progress=False).records
    assert set(Recording.seen) == {pd.DataFrame}
    assert set(FrameOnly.seen) == {pd.DataFrame}
    # the same data either way: the same estimates
    a = arrays.set_index(["rep", "parameter"])["estimate"]
    m = mixed[mixed["method"] == "ML"].set_index(["rep", "parameter"])["estimate"]
    np.testing.assert_allclose(a.sort_index().to_numpy(), m.sort_index().to_numpy(),
                               rtol=1e-9)


def between_within_spec() -> ModelSpec:
    """x varies within groups, z only between them (a level-2 variable)."""
    return ModelSpec(predictors=[Continuous("x"), Continuous("z", var_between=1.0,
                                                             var_within=0.0)],
                     gamma={"Intercept": 1.0, "x": 0.5, "z": 0.3},
                     random=["Intercept", "x"], T=[[1.0, 0.1], [0.1, 0.25]], sigma2=1.0)


@pytest.mark.parametrize("kind", ["satterthwaite", "containment", "between-within",
                                  "residual"])
def test_ddf_on_arrays_equals_ddf_on_frames(kind):
    gen = FromSpec(between_within_spec(), 12, 6)
    cond = Condition(0, {})
    draws = [gen.draw(cond, np.random.default_rng(s)) for s in range(6)]
    formula = "y ~ x + z + (1 + x | g)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = fit_batch(formula, draws, "REML").ddf(kind)
        f = fit_batch(formula, [d.frame(0) for d in draws], "REML").ddf(kind)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, f, rtol=1e-9)
    if kind == "between-within":  # J - 2 for the intercept and z, N - J - 1 for x
        assert a[0].tolist() == [10.0, 59.0, 10.0]


def test_ddf_records_from_simulated_arrays_equal_single_fits():
    formula = "y ~ x + z + (1 + x | g)"
    gen = FromSpec(between_within_spec(), 12, 6)
    methods = {"batched": FormulaMethod(formula, "REML", ddf="between-within", batch_size=4),
               "single": FormulaMethod(formula, "REML", ddf="between-within", batch=False)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec = Study(None, gen, methods, n_reps=8, seed=5).run(progress=False).records
    b, s = (rec[rec.method == m].reset_index(drop=True) for m in ("batched", "single"))
    assert b.error.isna().all() and s.error.isna().all()
    fixed = b.parameter.isin(["Intercept", "x", "z"])
    assert (b.df[fixed] == s.df[fixed]).all() and b.df[~fixed].isna().all()
    np.testing.assert_allclose(b.p, s.p, rtol=1e-8)
    np.testing.assert_allclose(b.ci_lower, s.ci_lower, rtol=1e-8)
