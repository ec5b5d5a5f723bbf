"""The batch path fits each replicate exactly as the single-fit path does."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlmsim
from mlmsim.engine.batch import fit_arrays, fit_batch
from mlmsim.model.formula import stacked_design


def _replicates(seed: int, R: int, J: int, n: int, slope_sd: float, icc_sd: float):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.standard_normal((R, J * n))
    u0 = rng.normal(0, icc_sd, (R, J))
    u1 = rng.normal(0, slope_sd, (R, J))
    y = 1 + 0.5 * x + u0[:, g] + u1[:, g] * x + rng.standard_normal((R, J * n))
    return g, x, y


def _single(g, x, y, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlmsim.fit("y ~ x + (1 + x | g)", pd.DataFrame({"y": y, "x": x, "g": g}),
                          method=method)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    J=st.integers(4, 12),
    n=st.integers(3, 8),
    slope_sd=st.sampled_from([0.0, 0.05, 0.5]),
    icc_sd=st.sampled_from([0.0, 0.3, 1.0]),
    method=st.sampled_from(["ML", "REML"]),
)
def test_batched_fits_equal_single_fits(seed, J, n, slope_sd, icc_sd, method):
    R = 6
    g, x, y = _replicates(seed, R, J, n, slope_sd, icc_sd)
    X = np.stack([np.ones_like(x), x], axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = fit_arrays(y, X, X, g, method=method, fixed_names=("Intercept", "x"),
                       random_names=("Intercept", "x"))
    for r in range(R):
        f = _single(g, x[r], y[r], method)
        # the batch may only be better (lower) than the single fit, never worse
        assert b.deviance[r] <= f.deviance + 1e-6 * abs(f.deviance)
        if b.deviance[r] > f.deviance - 1e-6 * abs(f.deviance):
            single = np.concatenate([f.fixef.to_numpy(), f.covparms["estimate"].to_numpy()])
            scale = np.maximum(np.abs(single), 1e-3 * np.sqrt(f.sigma2))
            np.testing.assert_array_less(np.abs(b.params[r] - single) / scale, 1e-5)
            assert b.singular[r] == f.singular
            assert b.hessian_pd[r] == f.hessian_pd
            assert b.converged[r] == f.converged
            assert b.identifiable[r] == f.identifiable


def test_fit_batch_from_data_frames_pads_unequal_groups():
    rng = np.random.default_rng(7)
    frames = []
    for J in (8, 12, 15):
        g = np.repeat(np.arange(J), 6)
        x = rng.standard_normal(J * 6)
        y = 2 + x + rng.normal(0, 1, J)[g] + rng.standard_normal(J * 6)
        frames.append(pd.DataFrame({"y": y, "x": x, "g": g}))
    b = fit_batch("y ~ x + (1 | g)", frames, method="REML")
    for r, d in enumerate(frames):
        f = mlmsim.fit("y ~ x + (1 | g)", d, method="REML")
        assert b.deviance[r] == pytest.approx(f.deviance, rel=1e-9)
        np.testing.assert_allclose(b.params[r], f.params.to_numpy(), rtol=1e-6)
    frame = b.to_frame()
    assert len(frame) == 3 * len(b.param_names)
    assert list(b.param_names) == list(f.params.index)


def test_fit_batch_refuses_mixed_layouts():
    d1 = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 6], "f": list("aabbaa"), "g": [0, 0, 1, 1, 2, 2]})
    d2 = d1.assign(f=list("abcabc"))
    with pytest.raises(ValueError, match="layout"):
        fit_batch("y ~ f + (1 | g)", [d1, d2])


def test_nonconverged_replicates_are_refitted_alone():
    """A replicate that does not converge within ``control.max_iter`` is refitted alone
    from Lambda = I with 5 times the iterations; the refit is kept where it converged or
    reached a lower deviance."""
    from mlmsim.engine.batch import fit_stats
    from mlmsim.engine.control import FitControl
    from mlmsim.engine.deviance import ThetaMap
    from mlmsim.engine.optimize import minimize_theta
    from mlmsim.engine.stats import group_stats

    g, x, y = _replicates(3, 4, 10, 5, 0.5, 1.0)
    X = np.stack([np.ones_like(x), x], axis=-1)
    stats = group_stats(y, X, X, g, 10)
    names = (("Intercept", "x"), ("Intercept", "x"))
    full = fit_stats(stats, ((0, 1),), "REML", *names)
    assert not full.refitted.any() and full.converged.all()
    tmap = ThetaMap.from_blocks(2, ((0, 1),))
    for max_iter in (1, 2):
        control = {"max_iter": max_iter}
        b = fit_stats(stats, ((0, 1),), "REML", *names, control=control)
        assert b.refitted.all()
        assert all("refitted alone" in m[0] for m in b.messages)
        batch = minimize_theta(stats, tmap, True, None, control)
        for r in range(4):
            alone = minimize_theta(stats.select(np.array([r])), tmap, True,
                                   tmap.start()[None, :], FitControl(max_iter=5 * max_iter))
            keep = alone.converged[0] or alone.deviance[0] < batch.deviance[r]
            expected = alone.theta[0] if keep else batch.theta[r]
            np.testing.assert_allclose(b.estimates.theta[r], expected, rtol=1e-12, atol=1e-14)
            assert b.converged[r] == (alone.converged[0] if keep else batch.converged[r])
    # a FitControl does as its dict; an unknown setting is refused
    c = fit_stats(stats, ((0, 1),), "REML", *names, control=FitControl(max_iter=2))
    np.testing.assert_array_equal(c.estimates.theta, b.estimates.theta)
    with pytest.raises(ValueError, match="maxiter"):
        fit_stats(stats, ((0, 1),), "REML", *names, control={"maxiter": 2})


def test_control_reaches_the_optimiser_from_fit_batch_and_fit_arrays():
    g, x, y = _replicates(4, 3, 10, 5, 0.5, 1.0)
    frames = [pd.DataFrame({"y": y[r], "x": x[r], "g": g}) for r in range(3)]
    X = np.stack([np.ones_like(x), x], axis=-1)
    few = {"max_iter": 1}
    b = fit_batch("y ~ x + (1 + x | g)", frames, "REML", control=few)
    a = fit_arrays(y, X, X, g, method="REML", fixed_names=("Intercept", "x"),
                   random_names=("Intercept", "x"), control=few)
    assert b.refitted.all() and a.refitted.all()
    assert not fit_batch("y ~ x + (1 + x | g)", frames, "REML").refitted.any()
    with pytest.raises(ValueError, match="unknown FitControl"):
        fit_batch("y ~ x + (1 + x | g)", frames, "REML", control={"iterations": 5})


DDF_KINDS = ["satterthwaite", "containment", "between-within", "residual"]


def _assert_ddf_equal_to_single_fits(b, formula, frames, method, rtol=1e-8):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        singles = [mlmsim.fit(formula, d, method=method) for d in frames]
    for kind in DDF_KINDS:
        df = b.ddf(kind)
        assert df.shape == (len(frames), len(b.fixed_names))
        expected = np.array([f.ddf(kind) for f in singles])
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(df, expected, rtol=rtol, err_msg=kind)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_ddf_equal_single_fits_fast_lane(method):
    """A level-2 predictor z (constant within groups), a level-1 x and their product:
    every kind of df differs between them."""
    formula = "y ~ x * z + (1 + x | g)"
    frames = _frames_with(11)
    assert stacked_design(formula, frames) is not None
    b = fit_batch(formula, frames, method)
    _assert_ddf_equal_to_single_fits(b, formula, frames, method)
    bw = b.ddf("between-within")
    assert bw[0, 1] != bw[0, 2]  # x varies within groups, z does not


def test_ddf_equal_single_fits_per_data_set_designs():
    """Unequal numbers of groups (padded statistics) and a categorical predictor: the
    designs are built one data set at a time."""
    rng = np.random.default_rng(12)
    frames = []
    for J in (8, 11, 14):
        g = np.repeat(np.arange(J), 6)
        x = rng.standard_normal(J * 6)
        f = rng.choice(["a", "b", "c"], J * 6)
        y = 2 + x + (f == "b") + rng.normal(0, 1, J)[g] + rng.standard_normal(J * 6)
        frames.append(pd.DataFrame({"y": y, "x": x, "f": f, "g": g}))
    formula = "y ~ x + f + (1 | g)"
    assert stacked_design(formula, frames) is None
    b = fit_batch(formula, frames, "REML")
    assert b.fixed_names == ("Intercept", "x", "f[T.b]", "f[T.c]")
    _assert_ddf_equal_to_single_fits(b, formula, frames, "REML")


def test_ddf_of_fit_arrays_with_shared_and_stacked_designs():
    g, x, y = _replicates(9, 3, 10, 5, 0.5, 1.0)
    frames = [pd.DataFrame({"y": y[r], "x": x[r], "g": g}) for r in range(3)]
    X = np.stack([np.ones_like(x), x], axis=-1)
    names = {"fixed_names": ("Intercept", "x"), "random_names": ("Intercept", "x")}
    b = fit_arrays(y, X, X, g, method="ML", **names)
    _assert_ddf_equal_to_single_fits(b, "y ~ x + (1 + x | g)", frames, "ML")
    shared = fit_arrays(y, X[0], X[0], g, method="ML", **names)
    assert shared.ddf("between-within").shape == (3, 2)
    np.testing.assert_array_equal(shared.ddf("between-within"), b.ddf("between-within"))


def test_ddf_of_an_unfitted_replicate_is_nan_and_kinds_are_checked():
    frames = _frames_with(13)
    frames[1] = frames[1].assign(y=1.0)  # a constant response: cannot be fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = fit_batch("y ~ x + (1 | g)", frames, "REML")
    assert b.errors[1] is not None
    for kind in DDF_KINDS + ["kenward-roger"]:
        df = b.ddf(kind.upper())
        assert np.isnan(df[1]).all() and np.isfinite(df[[0, 2]]).all(), kind
    with pytest.raises(ValueError, match="satterthwaite, kenward-roger, containment"):
        b.ddf("kenward")
    from mlmsim.engine.batch import fit_stats
    from mlmsim.engine.stats import group_stats

    g, x, y = _replicates(3, 2, 10, 5, 0.5, 1.0)
    X = np.stack([np.ones_like(x), x], axis=-1)
    alone = fit_stats(group_stats(y, X, X[..., :1], g, 10), ((0,),), "ML",
                      ("Intercept", "x"), ("Intercept",))
    assert alone.ddf("residual").tolist() == [[48.0, 48.0]] * 2
    with pytest.raises(ValueError, match="fixed design"):
        alone.ddf("between-within")


def _frames_with(seed: int, R: int = 3, J: int = 9, n: int = 6):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    frames = []
    for _ in range(R):
        x, z = rng.standard_normal(J * n), rng.standard_normal(J)[g]
        y = 2 + x + 0.5 * z + 0.3 * x * z + rng.normal(0, 1, J)[g] \
            + rng.normal(0, 0.4, J)[g] * x + rng.standard_normal(J * n)
        frames.append(pd.DataFrame({"y": y, "x": x, "z": z, "g": g}))
    return frames


def _assert_equal_to_single_fits(formula, frames, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = fit_batch(formula, frames, method=method)
        singles = [mlmsim.fit(formula, d, method=method) for d in frames]
    for r, f in enumerate(singles):
        assert b.deviance[r] == pytest.approx(f.deviance, rel=1e-9)
        assert list(b.param_names) == list(f.params.index)
        np.testing.assert_allclose(b.params[r], f.params.to_numpy(), rtol=1e-5, atol=1e-8)
    return b


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_fast_lane_products_and_slopes_equal_single_fits(method):
    """A cross-level product term and a random slope, read as terms over the variables
    (no design matrix formed), give each data set's single fit."""
    _assert_equal_to_single_fits("y ~ x * z + (1 + x | g)", _frames_with(1), method)


def test_fast_lane_falls_back_on_missing_values():
    """A NaN in one data set sends the batch to the per-data-set designs, where the row is
    dropped as in a single fit (its statistics would not be finite)."""
    frames = _frames_with(2)
    frames[1].loc[4, "x"] = np.nan
    b = _assert_equal_to_single_fits("y ~ x + (1 + x | g)", frames, "REML")
    assert np.isfinite(b.deviance).all()


def test_fast_lane_falls_back_on_a_collinear_column():
    """A fixed column that is a multiple of another is dropped as lme4 drops it (with the
    same warning), not fitted in the fast lane."""
    frames = [d.assign(x2=2.0 * d["x"]) for d in _frames_with(3)]
    with pytest.warns(UserWarning, match="rank deficient"):
        fit_batch("y ~ x + x2 + (1 | g)", frames, method="ML")
    b = _assert_equal_to_single_fits("y ~ x + x2 + (1 | g)", frames, "ML")
    assert "x2" not in b.param_names


@pytest.mark.parametrize("R", [1, 3])
def test_fast_lane_falls_back_on_a_missing_group(R):
    frames = [d.assign(g=d["g"].astype(float)) for d in _frames_with(4, R=R)]
    for d in frames:
        d.loc[7, "g"] = np.nan
    _assert_equal_to_single_fits("y ~ x + (1 | g)", frames, "ML")


def test_fit_arrays_with_a_shared_design_equals_the_stacked_one():
    g, x, y = _replicates(8, 3, 10, 5, 0.5, 1.0)
    X1 = np.stack([np.ones(x.shape[1]), x[0]], axis=-1)            # one X for all
    names = {"fixed_names": ("Intercept", "x"), "random_names": ("Intercept", "x")}
    shared = fit_arrays(y, X1, X1, g, method="ML", **names)
    stacked = fit_arrays(y, np.broadcast_to(X1, (3,) + X1.shape), X1.tolist(), g, method="ML",
                         **names)
    np.testing.assert_allclose(shared.deviance, stacked.deviance, rtol=1e-12)
    np.testing.assert_allclose(shared.params, stacked.params, rtol=1e-9, atol=1e-12)


def test_fast_lane_with_the_grouping_factor_as_a_predictor():
    """A numeric grouping column may also be a fixed predictor (a trend over groups)."""
    _assert_equal_to_single_fits("y ~ x + g + (1 | g)", _frames_with(5), "ML")


def _batch_rows(b, rows):
    """What a replicate's batched fit reports: estimates, SEs, deviance, flags, messages,
    evaluations, error."""
    return [(np.asarray(b.params)[r].tobytes(), np.asarray(b.se)[r].tobytes(),
             float(b.deviance[r]), bool(b.converged[r]), bool(b.singular[r]),
             bool(b.hessian_pd[r]), bool(b.identifiable[r]), tuple(b.messages[r]),
             int(b.evaluations[r]), b.errors[r] if b.errors else None) for r in rows]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), unbalanced=st.booleans(), slope=st.booleans(),
       method=st.sampled_from(["ML", "REML"]), bounded=st.booleans(),
       cuts=st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True))
def test_a_replicates_batched_fit_does_not_depend_on_its_batch(seed, unbalanced, slope,
                                                               method, bounded, cuts):
    """Bit for bit: every block of a partition of the data sets gives each replicate the
    fit the whole batch gives it (the fast lane of equal rows, the per-data-set designs of
    unequal ones, and a data set with a missing value, which sends its whole batch to the
    designs)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(9):
        J = int(rng.integers(4, 12))
        m = rng.integers(2, 7, size=J) if unbalanced else np.full(J, 4)
        g = np.repeat(np.arange(J), m)
        x = rng.standard_normal(g.size)
        u = rng.normal(0.0, [0.8, 0.4], size=(J, 2))
        y = 1.0 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.standard_normal(g.size)
        frames.append(pd.DataFrame({"y": y, "x": x, "g": g}))
    if seed % 3 == 0:
        frames[4].loc[2, "x"] = np.nan
    formula = "y ~ x + (1 + x | g)" if slope else "y ~ x + (1 | g)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = _batch_rows(fit_batch(formula, frames, method=method, bounded=bounded),
                            range(9))
        edges = [0, *sorted(cuts), 9]
        parts = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            part = fit_batch(formula, frames[a:b], method=method, bounded=bounded)
            parts += _batch_rows(part, range(b - a))
    assert parts == whole
