"""lme4 formula syntax -> design matrices, and the fits that different spellings give.

Expected designs are built here with numpy (products of columns, indicator
columns) or with formulaic's own ``model_matrix``; expected fits are fits of
the same model written another way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from formulaic import model_matrix

import mlmsim
from mlmsim.model.formula import model_design, parse_formula, top_level_pieces


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    rng = np.random.default_rng(20240611)
    J, n = 25, 8
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    z = rng.normal(1.0, 2.0, J * n)
    w = rng.normal(size=J * n)
    f = rng.choice(["b", "a", "c"], J * n)  # 'a' is the reference level though not first seen
    u0, u1 = rng.normal(size=J), 0.5 * rng.normal(size=J)
    eff = {"a": 0.0, "b": 0.4, "c": -0.3}
    y = (1.0 + 0.5 * x - 0.2 * z + 0.3 * x * z + np.vectorize(eff.get)(f) + u0[g] + u1[g] * x
         + rng.normal(size=J * n))
    return pd.DataFrame({"g": g, "x": x, "z": z, "w": w, "f": f, "y": y,
                         "k": rng.integers(0, 4, J * n)})


def _same_fit(a: mlmsim.FitResult, b: mlmsim.FitResult, rtol=1e-7):
    assert a.deviance == pytest.approx(b.deviance, rel=1e-10)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(a.fixef_se.to_numpy(), b.fixef_se.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(a.T.to_numpy(), b.T.to_numpy(), rtol=1e-5, atol=1e-8)
    assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-7)


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

def test_parse_splits_response_fixed_and_bars():
    p = parse_formula("y ~ x + z + (1 + x | g) + (0 + z || g)")
    assert p.response == "y"
    assert p.group == "g"
    assert [(t.expr, t.group, t.correlated) for t in p.random] == [
        ("1 + x", "g", True), ("0 + z", "g", False)]
    assert model_matrix(p.fixed, pd.DataFrame({"x": [1.0], "z": [2.0]})).columns.tolist() == [
        "Intercept", "x", "z"]


@pytest.mark.parametrize("formula", ["y ~ (1 | g)", "y ~ 1 + (1 | g)", "y~(1|g)"])
def test_intercept_only_fixed_part(df, formula):
    d = model_design(formula, df)
    assert d.fixed_names == ("Intercept",)
    np.testing.assert_array_equal(d.X, np.ones((len(df), 1)))
    assert d.random_names == ("Intercept",)
    np.testing.assert_array_equal(d.Z, np.ones((len(df), 1)))


def test_whitespace_and_term_position_do_not_matter(df):
    a = mlmsim.fit("y ~ x + (1 + x | g)", df, method="ML")
    b = mlmsim.fit("y~( 1+x |g )+x", df, method="ML")
    _same_fit(a, b, rtol=1e-12)


# ---------------------------------------------------------------------------
# Random part
# ---------------------------------------------------------------------------

def test_random_intercept(df):
    d = model_design("y ~ x + (1 | g)", df)
    assert d.random_names == ("Intercept",) and d.blocks == ((0,),)
    res = mlmsim.fit("y ~ x + (1 | g)", df, method="REML")
    assert res.theta.shape == (1,)
    assert list(res.covparms.index) == ["var(Intercept)", "sigma2"]
    assert list(res.covparms["sas"]) == ["UN(1,1)", "Residual"]


def test_random_slope_implicit_intercept(df):
    """``(x | g)`` means ``(1 + x | g)``, as in lme4."""
    a = model_design("y ~ x + (x | g)", df)
    b = model_design("y ~ x + (1 + x | g)", df)
    assert a.random_names == b.random_names == ("Intercept", "x")
    np.testing.assert_array_equal(a.Z, np.column_stack([np.ones(len(df)), df.x]))
    np.testing.assert_array_equal(a.Z, b.Z)
    assert a.blocks == b.blocks == ((0, 1),)
    _same_fit(mlmsim.fit("y ~ x + (x | g)", df, method="ML"),
              mlmsim.fit("y ~ x + (1 + x | g)", df, method="ML"), rtol=1e-12)


@pytest.mark.parametrize("bar", ["(0 + x | g)", "(x - 1 | g)", "(-1 + x | g)"])
def test_random_slope_without_intercept(df, bar):
    d = model_design(f"y ~ x + {bar}", df)
    assert d.random_names == ("x",)
    np.testing.assert_array_equal(d.Z[:, 0], df.x.to_numpy())
    res = mlmsim.fit(f"y ~ x + {bar}", df, method="ML")
    assert res.theta.shape == (1,)
    assert list(res.T.index) == ["x"]
    assert list(res.covparms.index) == ["var(x)", "sigma2"]


def test_uncorrelated_bars_give_diagonal_T(df):
    res = mlmsim.fit("y ~ x + (1 + x || g)", df, method="REML")
    assert res.theta.shape == (2,)
    assert res.T.loc["x", "Intercept"] == 0.0 and res.T.loc["Intercept", "x"] == 0.0
    assert res.T.loc["x", "x"] > 0 and res.T.loc["Intercept", "Intercept"] > 0
    assert list(res.covparms.index) == ["var(Intercept)", "var(x)", "sigma2"]
    assert list(res.covparms["sas"]) == ["UN(1,1)", "UN(2,2)", "Residual"]
    d = model_design("y ~ x + (1 + x || g)", df)
    assert d.blocks == ((0,), (1,))


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_several_bars_on_one_factor_equal_double_bar(df, method):
    a = mlmsim.fit("y ~ x + (1 + x || g)", df, method=method)
    b = mlmsim.fit("y ~ x + (1 | g) + (0 + x | g)", df, method=method)
    _same_fit(a, b, rtol=1e-10)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-8, atol=1e-12)
    assert b.T.loc["x", "Intercept"] == 0.0
    assert list(a.covparms.index) == list(b.covparms.index)
    # and the diagonal model is a different (restricted) model: the full one fits better
    full = mlmsim.fit("y ~ x + (1 + x | g)", df, method=method)
    assert full.deviance <= a.deviance + 1e-8
    assert full.theta.shape == (3,)


def test_three_random_effects_blocks(df):
    d = model_design("y ~ x + (1 + x | g) + (0 + z | g)", df)
    assert d.random_names == ("Intercept", "x", "z")
    assert d.blocks == ((0, 1), (2,))
    res = mlmsim.fit("y ~ x + (1 + x | g) + (0 + z | g)", df, method="ML")
    assert res.theta.shape == (4,)
    assert list(res.covparms.index) == [
        "var(Intercept)", "cov(x,Intercept)", "var(x)", "var(z)", "sigma2"]
    assert list(res.covparms["sas"]) == ["UN(1,1)", "UN(2,1)", "UN(2,2)", "UN(3,3)", "Residual"]
    T = res.T.to_numpy()
    assert T[2, 0] == T[2, 1] == T[0, 2] == T[1, 2] == 0.0


def test_categorical_random_slope(df):
    d = model_design("y ~ x + (1 + f | g)", df)
    assert d.random_names == ("Intercept", "f[T.b]", "f[T.c]")
    np.testing.assert_array_equal(d.Z[:, 1], (df.f == "b").to_numpy(float))
    np.testing.assert_array_equal(d.Z[:, 2], (df.f == "c").to_numpy(float))


# ---------------------------------------------------------------------------
# Fixed part
# ---------------------------------------------------------------------------

def _cols(df, *names):
    out = []
    for nm in names:
        if nm == "1":
            out.append(np.ones(len(df)))
        else:
            v = np.ones(len(df))
            for part in nm.split(":"):
                v = v * df[part].to_numpy(float)
            out.append(v)
    return np.column_stack(out)


@pytest.mark.parametrize("rhs,names", [
    ("x + z", ["Intercept", "x", "z"]),
    ("x * z", ["Intercept", "x", "z", "x:z"]),
    ("x + z + x:z", ["Intercept", "x", "z", "x:z"]),
    ("x:z", ["Intercept", "x:z"]),
    ("0 + x + z", ["x", "z"]),
    ("x + z - 1", ["x", "z"]),
    ("-1 + x * z", ["x", "z", "x:z"]),
    ("x * z * w", ["Intercept", "x", "z", "w", "x:z", "x:w", "z:w", "x:z:w"]),
    ("k + x:w", ["Intercept", "k", "x:w"]),
])
def test_fixed_part_operators(df, rhs, names):
    d = model_design(f"y ~ {rhs} + (1 | g)", df)
    assert list(d.fixed_names) == names
    expected = _cols(df, *["1" if n == "Intercept" else n for n in names])
    np.testing.assert_allclose(d.X, expected, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(d.y, df.y.to_numpy())


def test_minus_one_after_a_bar_term(df):
    d = model_design("y ~ x + (1 | g) - 1", df)
    assert d.fixed_names == ("x",)


def test_interaction_fit_equals_fit_on_product_column(df):
    a = mlmsim.fit("y ~ x * z + (1 + x | g)", df, method="REML")
    d2 = df.assign(xz=df.x * df.z)
    b = mlmsim.fit("y ~ x + z + xz + (1 + x | g)", d2, method="REML")
    assert list(a.fixef.index) == ["Intercept", "x", "z", "x:z"]
    _same_fit(a, b)


def test_categorical_column_treatment_dummies(df):
    d = model_design("y ~ x + f + (1 | g)", df)
    assert d.fixed_names == ("Intercept", "x", "f[T.b]", "f[T.c]")
    np.testing.assert_array_equal(d.X[:, 2], (df.f == "b").to_numpy(float))
    np.testing.assert_array_equal(d.X[:, 3], (df.f == "c").to_numpy(float))
    # the fit equals one on hand-made indicator columns
    res = mlmsim.fit("y ~ x + f + (1 | g)", df, method="ML")
    d2 = df.assign(fb=(df.f == "b").astype(float), fc=(df.f == "c").astype(float))
    ref = mlmsim.fit("y ~ x + fb + fc + (1 | g)", d2, method="ML")
    assert list(res.fixef.index) == ["Intercept", "x", "f[T.b]", "f[T.c]"]
    _same_fit(res, ref)


def test_categorical_without_intercept_is_full_dummy_coding(df):
    d = model_design("y ~ 0 + f + (1 | g)", df)
    assert d.fixed_names == ("f[a]", "f[b]", "f[c]")
    for i, lev in enumerate("abc"):
        np.testing.assert_array_equal(d.X[:, i], (df.f == lev).to_numpy(float))


def test_categorical_interaction(df):
    d = model_design("y ~ f * x + (1 | g)", df)
    assert d.fixed_names == ("Intercept", "f[T.b]", "f[T.c]", "x", "f[T.b]:x", "f[T.c]:x")
    np.testing.assert_allclose(d.X[:, 4], (df.f == "b").to_numpy(float) * df.x.to_numpy())


@pytest.mark.parametrize("rhs", ["x * z + w:x", "x * z * w - 1", "0 + z:x + w", "k * x"])
def test_fast_numeric_path_equals_formulaic(df, rhs):
    """The numpy fast path of the design builder gives formulaic's values and names."""
    d = model_design(f"y ~ {rhs} + (1 + x + z | g)", df)
    mm = model_matrix(rhs, df)
    assert list(d.fixed_names) == list(mm.columns)
    np.testing.assert_array_equal(d.X, np.asarray(mm, dtype=float))
    mz = model_matrix("1 + x + z", df)
    assert list(d.random_names) == list(mz.columns)
    np.testing.assert_array_equal(d.Z, np.asarray(mz, dtype=float))


def test_group_labels_and_codes(df):
    d2 = df.assign(g=df.g.map(lambda i: f"school-{i:03d}"))
    d = model_design("y ~ x + (1 | g)", d2)
    assert d.ngroups == df.g.nunique()
    assert d.nobs == len(df)
    np.testing.assert_array_equal(d.group_labels[d.group_codes], d2.g.to_numpy())


def test_top_level_pieces_split_on_plus_outside_parentheses():
    assert top_level_pieces("x + (1 + x | g) + log(z + 1) + x:f") == [
        "x", "(1 + x | g)", "log(z + 1)", "x:f"]
    assert top_level_pieces(" + x +  + ") == ["x"] and top_level_pieces("") == []
