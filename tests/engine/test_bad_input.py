"""Bad input: a clear ValueError naming the problem; missing values dropped and counted;
a rank-deficient fixed design reduced with a warning, as lme4 does."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlmsim
from mlmsim.model.formula import model_design


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    J, n = 15, 6
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    y = 1.0 + 0.5 * x + rng.normal(size=J)[g] + rng.normal(size=J * n)
    return pd.DataFrame({"g": g, "x": x, "z": rng.normal(size=J * n), "y": y,
                         "h": rng.integers(0, 3, J * n), "note": "ok"})


def _fit_quiet(formula, data, method="ML"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mlmsim.fit(formula, data, method=method)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("formula,missing", [
    ("y ~ w + (1 | g)", "w"),
    ("y ~ x + (1 + w | g)", "w"),
    ("resp ~ x + (1 | g)", "resp"),
    ("y ~ x + (1 | school)", "school"),
    ("y ~ x * w + (1 | g)", "w"),
])
def test_missing_column(df, formula, missing):
    with pytest.raises(ValueError, match=f"'{missing}'") as err:
        mlmsim.fit(formula, df)
    assert "not in the data" in str(err.value)


@pytest.mark.parametrize("column", [
    pd.Series(["a", "b", "c"] * 30),
    pd.Series(["1.5", "2.0", "3"] * 30, dtype=object),
    pd.Series([True, False, True] * 30),
])
def test_non_numeric_response(df, column):
    data = df.assign(score=column.to_numpy())
    with pytest.raises(ValueError, match="score") as err:
        mlmsim.fit("score ~ x + (1 | g)", data)
    assert "numeric" in str(err.value)


@pytest.mark.parametrize("label", [1, "only"])
def test_one_group_only(df, label):
    with pytest.raises(ValueError, match="'g'") as err:
        mlmsim.fit("y ~ x + (1 | g)", df.assign(g=label))
    assert "group" in str(err.value)


def test_one_group_left_after_dropping_missing(df):
    data = df.copy()
    data.loc[data.g != 0, "y"] = np.nan
    with pytest.warns(UserWarning, match="dropped"), pytest.raises(ValueError, match="group"):
        mlmsim.fit("y ~ x + (1 | g)", data)


def test_as_many_groups_as_observations(df):
    with pytest.raises(ValueError, match="group"):
        mlmsim.fit("y ~ x + (1 | g)", df.assign(g=np.arange(len(df))))


@pytest.mark.parametrize("formula", [
    "y ~ x +* z + (1 | g)",
    "y ~ x + (1 | g",
    "y ~ x + (1 | g))",
    "y ~ x + ((1 | g)",
    "y ~ x + ( | g)",
    "y ~ x + (1 | )",
    "y ~ x z + (1 | g)",
    "y x + (1 | g)",
    "~ x + (1 | g)",
    "y ~ x",
    "",
])
def test_formula_syntax_error(df, formula):
    with pytest.raises(ValueError, match="formula|group|term|column"):
        mlmsim.fit(formula, df)


def test_formula_not_a_string(df):
    with pytest.raises(ValueError, match="formula"):
        mlmsim.fit(None, df)


@pytest.mark.parametrize("data", [
    pd.DataFrame(),
    pd.DataFrame({"g": [], "x": [], "y": []}),
])
def test_empty_data_frame(data):
    with pytest.raises(ValueError, match="empty|no rows"):
        mlmsim.fit("y ~ x + (1 | g)", data)


def test_data_not_a_data_frame(df):
    with pytest.raises(ValueError, match="DataFrame"):
        mlmsim.fit("y ~ x + (1 | g)", df.to_numpy())


@pytest.mark.parametrize("formula", [
    "y ~ x + (1 | g) + (1 | h)",
    "y ~ x + (1 | g) + (0 + x | h)",
    "y ~ x + (1 | g/h)",
    "y ~ x + (1 | g:h)",
])
def test_second_grouping_factor_is_out_of_scope(df, formula):
    with pytest.raises(ValueError, match="out of scope|one grouping factor"):
        mlmsim.fit(formula, df)


def test_unknown_method(df):
    with pytest.raises(ValueError, match="ML"):
        mlmsim.fit("y ~ x + (1 | g)", df, method="GEE")


def test_same_random_effect_in_two_bars(df):
    with pytest.raises(ValueError, match="Intercept"):
        mlmsim.fit("y ~ x + (1 | g) + (1 + x | g)", df)


def test_saturated_fixed_design(df):
    data = df.assign(obs=np.arange(len(df)))
    with pytest.raises(ValueError, match="(?i)fixed|observations") as err:
        _fit_quiet("y ~ C(obs) + (1 | g)", data)
    assert not isinstance(err.value, np.linalg.LinAlgError)  # (a ValueError subclass)


def test_constant_response(df):
    with pytest.raises(ValueError, match="(?i)constant|variance|residual") as err:
        mlmsim.fit("y ~ 1 + (1 | g)", df.assign(y=3.0))
    assert not isinstance(err.value, np.linalg.LinAlgError)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_as_many_random_effects_as_observations(method):
    """lme4: 'number of observations (=24) <= number of random effects (=24) for term
    (1 + x1 + x2 | g); the random-effects parameters and the residual variance (or scale
    parameter) are probably unidentifiable' (an error by default)."""
    rng = np.random.default_rng(1)
    J, n = 8, 3
    g = np.repeat(np.arange(J), n)
    data = pd.DataFrame({"g": g, "x1": rng.normal(size=J * n), "x2": rng.normal(size=J * n)})
    data["y"] = 1 + data.x1 + data.x2 + rng.normal(size=J)[g] + rng.normal(size=J * n)
    with pytest.raises(ValueError, match="(?i)random effects|observations") as err:
        _fit_quiet("y ~ x1 + x2 + (1 + x1 + x2 | g)", data, method=method)
    assert not isinstance(err.value, np.linalg.LinAlgError)


# ---------------------------------------------------------------------------
# Missing and non-finite values
# ---------------------------------------------------------------------------

@given(
    cells=st.lists(st.tuples(st.integers(0, 89), st.sampled_from(["y", "x", "g", "z"]),
                             st.sampled_from([np.nan, np.inf, -np.inf])),
                   min_size=1, max_size=12),
    method=st.sampled_from(["ML", "REML"]),
)
@settings(max_examples=40, deadline=None)
def test_non_finite_rows_are_dropped_and_counted(df, cells, method):
    data = df.astype({"g": float})
    for i, col, val in cells:
        data.loc[i, col] = val if col != "g" else np.nan
    used = ["y", "x", "g"]  # z is not in the model: its missing values drop nothing
    bad = ~np.isfinite(data[used].to_numpy()).all(axis=1)
    formula = "y ~ x + (1 + x | g)"
    if bad.any():
        with pytest.warns(UserWarning, match=f"{bad.sum()} row"):
            res = mlmsim.fit(formula, data, method=method)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = mlmsim.fit(formula, data, method=method)
    assert res.n_dropped == bad.sum()
    assert res.nobs == len(df) - bad.sum()
    assert res.fitted.shape == res.resid.shape == (res.nobs,)
    if bad.any():
        assert any(f"{bad.sum()} observation" in m for m in res.messages)
    clean = mlmsim.fit(formula, data.loc[~bad].reset_index(drop=True), method=method)
    assert clean.n_dropped == 0
    assert res.deviance == pytest.approx(clean.deviance, rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(res.fixef, clean.fixef, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.T, clean.T, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res.fitted, clean.fitted, rtol=1e-9, atol=1e-10)
    # fitted and resid are labelled by the input rows they belong to
    assert res.fitted.index.equals(data.index[~bad])
    assert res.resid.index.equals(data.index[~bad])


def test_fitted_and_resid_align_with_the_input_rows(df):
    """As statsmodels' fittedvalues: a Series on the input's own index, so that
    y - fitted - resid is 0 row by row, also after dropped rows and with a shuffled,
    non-integer index; ``.reindex`` puts NaN where a row was not used."""
    data = df.sample(frac=1.0, random_state=3)
    data.index = [f"row{i}" for i in range(len(data))]
    data.iloc[5, data.columns.get_loc("x")] = np.nan
    with pytest.warns(UserWarning, match="1 row"):
        res = mlmsim.fit("y ~ x + (1 + x | g)", data, method="REML")
    assert "row5" not in res.fitted.index
    used = data.drop(index="row5")
    np.testing.assert_allclose((used["y"] - res.fitted - res.resid).to_numpy(), 0.0, atol=1e-10)
    assert np.isnan(res.fitted.reindex(data.index)["row5"])
    assert list(res.hessian.index) == list(res.covparms.index)
    assert list(res.hessian.columns) == list(res.covparms.index)


def test_missing_in_categorical_and_group_labels(df):
    data = df.assign(f=np.where(df.x > 0, "hi", "lo"), g=df.g.map("s{}".format)).astype(
        {"f": object, "g": object})
    data.loc[[3, 4], "f"] = None
    data.loc[[10], "g"] = None
    with pytest.warns(UserWarning, match="3 row"):
        res = mlmsim.fit("y ~ f + (1 | g)", data, method="ML")
    assert res.n_dropped == 3
    clean = mlmsim.fit("y ~ f + (1 | g)", data.drop(index=[3, 4, 10]), method="ML")
    assert res.deviance == pytest.approx(clean.deviance, rel=1e-12)
    assert list(res.fixef.index) == ["Intercept", "f[T.lo]"]


def test_missing_value_in_unused_column_drops_nothing(df):
    data = df.copy()
    data.loc[[1, 2, 3], "z"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = mlmsim.fit("y ~ x + (1 | g)", data)
    assert res.n_dropped == 0 and res.nobs == len(df)


def test_all_rows_missing(df):
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no rows"):
        mlmsim.fit("y ~ x + (1 | g)", df.assign(y=np.nan))


# ---------------------------------------------------------------------------
# Rank-deficient fixed design (lme4: "fixed-effect model matrix is rank deficient so
# dropping k columns / coefficients"; the later, dependent columns go)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra,formula,dropped,kept", [
    ({"x2": lambda d: 2.0 * d.x}, "y ~ x + x2 + (1 | g)", ["x2"], "y ~ x + (1 | g)"),
    ({"x2": lambda d: 2.0 * d.x}, "y ~ x2 + x + (1 | g)", ["x"], "y ~ x2 + (1 | g)"),
    ({"d": lambda d: d.x - 3.0 * d.z + 1.0}, "y ~ x + z + d + (1 | g)", ["d"],
     "y ~ x + z + (1 | g)"),
    ({"c1": lambda d: 5.0 + 0 * d.x}, "y ~ x + c1 + (1 | g)", ["c1"], "y ~ x + (1 | g)"),
    ({"zero": lambda d: 0 * d.x}, "y ~ x + zero + (1 | g)", ["zero"], "y ~ x + (1 | g)"),
    ({"a": lambda d: d.x, "b": lambda d: -d.x}, "y ~ x + a + z + b + (1 | g)", ["a", "b"],
     "y ~ x + z + (1 | g)"),
])
@pytest.mark.parametrize("method", ["ML", "REML"])
def test_rank_deficient_fixed_design(df, extra, formula, dropped, kept, method):
    data = df.assign(**{k: f(df) for k, f in extra.items()})
    with pytest.warns(UserWarning, match="rank deficient") as rec:
        res = mlmsim.fit(formula, data, method=method)
    text = " ".join(str(w.message) for w in rec)
    for name in dropped:
        assert name in text
        assert name not in res.fixef.index
        assert any("rank deficient" in m and name in m for m in res.messages)
    assert len(res.fixef) == len(model_design(kept, data).fixed_names)
    ref = mlmsim.fit(kept, data, method=method)
    assert list(res.fixef.index) == list(ref.fixef.index)
    assert res.deviance == pytest.approx(ref.deviance, rel=1e-10)
    np.testing.assert_allclose(res.fixef, ref.fixef, rtol=1e-7, atol=1e-10)
    # lme4 counts only the estimable coefficients in AIC
    assert res.aic == pytest.approx(ref.aic, rel=1e-10)


def test_rank_deficient_dummies(df):
    """A level-1 dummy and its complement next to the intercept: the later one goes."""
    data = df.assign(female=(df.x > 0).astype(float))
    data["male"] = 1.0 - data.female
    with pytest.warns(UserWarning, match="male"):
        res = mlmsim.fit("y ~ female + male + (1 | g)", data, method="ML")
    assert list(res.fixef.index) == ["Intercept", "female"]
