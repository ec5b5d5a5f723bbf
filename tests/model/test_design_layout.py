"""A design's layout comes from the formula's terms: what each column is made of, for the
containment df and the model plots, without reading column names back."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mlmsim
from mlmsim.model.formula import model_design, stacked_design
from mlmsim.model.layout import Column, DesignLayout, Part


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    n = 80
    return pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n),
                         "z": rng.normal(size=n), "f": rng.choice(list("abc"), n),
                         "h": rng.choice(list("uv"), n),
                         "g": np.repeat(np.arange(10), 8)})


def test_columns_are_read_from_the_terms(data):
    lay = model_design("y ~ x * z + f + x:f + log(z + 5) + (1 + x | g)", data).layout
    by = {c.name: c for c in lay.fixed}
    assert by["Intercept"] == Column("Intercept", frozenset(), True, (), ())
    assert by["x:z"] == Column("x:z", frozenset({"x", "z"}), True, ("x", "z"),
                               (Part("x", "x"), Part("z", "z")), frozenset({"x", "z"}))
    assert by["f[T.b]"].variables == {"f"} and not by["f[T.b]"].plain
    assert by["f[T.b]"].parts == (Part("f[T.b]", "f", "level", ("a", "b", "c"),
                                       (0.0, 1.0, 0.0)),)
    assert [p.name for p in by["x:f[T.b]"].parts] == ["x", "f[T.b]"]
    assert by["x:f[T.b]"].variables == {"x", "f"}
    log = by["log(z + 5)"]
    assert log.variables == {"log(z + 5)"} and not log.plain and log.inputs == {"z"}
    assert log.parts == (Part("log(z + 5)", "log(z + 5)", "transform"),)
    assert lay.random_names == ("Intercept", "x") and lay.blocks == ((0, 1),)
    assert lay.column("x") == by["x"]
    with pytest.raises(KeyError):
        lay.column("w")


def test_uncorrelated_terms_give_a_block_each(data):
    lay = model_design("y ~ x + (1 + x || g)", data).layout
    assert lay.blocks == ((0,), (1,))


@pytest.mark.parametrize("formula", ["y ~ x * z + (1 + x | g)", "y ~ x + z + (1 | g)",
                                     "y ~ x + (1 + x || g)"])
def test_stacked_and_single_designs_have_one_layout(data, formula):
    assert stacked_design(formula, [data, data]).layout == model_design(formula, data).layout


@pytest.mark.parametrize("formula", ["y ~ x * z + f + log(z + 5) + (1 + x | g)",
                                     "y ~ x:f + C(f) + (1 | g)", "y ~ x + (0 + z | g)"])
def test_names_alone_give_the_same_variables(data, formula):
    """Arrays fitted without a formula carry only names; the layout read from them agrees
    with the terms' on every column's variables and plainness."""
    lay = model_design(formula, data).layout
    named = DesignLayout.from_names(lay.fixed_names, lay.random_names, lay.blocks)

    def read(layout):
        return [(c.name, c.variables, c.plain, c.factors, [(p.name, p.variable, p.kind)
                                                           for p in c.parts])
                for c in (*layout.fixed, *layout.random)]

    assert read(named) == read(lay) and named.blocks == lay.blocks


SOURCE = {"C(h, contr.sum)": "h", "C(f)": "f", "C(f, contr.sum)": "f",
          "C(f, contr.custom([[1, 0], [0, 1], [2, 5]]))": "f",
          "C(f, contr.custom([[1, 0], [0, 1], [2, 6]]))": "f"}


@pytest.mark.parametrize("formula", [
    "y ~ x * z + f + x:f + (1 + x | g)", "y ~ 0 + f + x:f + (1 | g)",
    "y ~ C(h, contr.sum) + f + x:h + (1 + f | g)", "y ~ x:f + C(f) + (0 + h | g)",
    "y ~ C(f, contr.sum) * x + (1 | g)", "y ~ f:h:x + (1 + h || g)",
    "y ~ C(f, contr.custom([[1, 0], [0, 1], [2, 5]])) + (1 | g)",
    "y ~ C(f, contr.custom([[1, 0], [0, 1], [2, 6]])) + (1 | g)"])
def test_parts_rebuild_every_column(data, formula):
    """Each column equals the product of its parts: data columns as they are, a level's
    column its coding's value at each row's level (treatment, sum and full-rank codings,
    products of two factors, custom codings that differ in one value), so the generator
    can draw it from level codes."""
    d = model_design(formula, data)
    for names, M in ((d.fixed_names, d.X), (d.random_names, d.Z)):
        for k, name in enumerate(names):
            col = d.layout.column(name)
            assert col.parts or name == "Intercept"
            value = np.ones(len(data))
            for p in col.parts:
                if p.kind == "level":
                    source = data[SOURCE.get(p.variable, p.variable)]
                    coding = dict(zip(p.levels, p.coding, strict=True))
                    value = value * source.map(coding).to_numpy()
                else:
                    assert p.kind == "data"
                    value = value * data[p.name].to_numpy()
            np.testing.assert_array_equal(M[:, k], value)


def test_a_transform_of_several_columns_has_no_parts(data):
    lay = model_design("y ~ poly(x, 2) + (1 | g)", data).layout
    assert [c.parts for c in lay.fixed[1:]] == [(), ()]
    assert all(c.inputs == {"x"} for c in lay.fixed[1:])


def test_a_dropped_collinear_column_leaves_the_layout(data):
    d = data.assign(x2=2.0 * data["x"])
    with pytest.warns(UserWarning, match="rank deficient"):
        des = model_design("y ~ x + x2 + (1 | g)", d)
    assert des.layout.fixed_names == des.fixed_names == ("Intercept", "x")


def test_containment_df_reads_the_layout(data):
    """Containment df of a fit and of a batch (from the stacked layout, or from names for
    arrays) agree."""
    formula = "y ~ x * z + (1 + x | g)"
    single = mlmsim.fit(formula, data, method="REML").ddf("containment")
    batch = mlmsim.fit_batch(formula, [data, data], method="REML")
    assert batch.layout == model_design(formula, data).layout
    np.testing.assert_array_equal(batch.ddf("containment")[0], single)
    d = model_design(formula, data)
    arrays = mlmsim.fit_arrays(d.y[None], d.X, d.Z, d.group_codes, method="REML",
                               fixed_names=d.fixed_names, random_names=d.random_names)
    assert arrays.layout is None
    np.testing.assert_array_equal(arrays.ddf("containment")[0], single)


def test_the_generator_and_the_fit_read_one_layout():
    """A ModelSpec compiles its generator from the layout its formula gives
    (formula_layout), the one the fit of its data reads."""
    spec = mlmsim.ModelSpec(
        predictors=[mlmsim.Continuous("x"), mlmsim.Categorical("f", ["a", "b", "c"]),
                    mlmsim.Level2Continuous("z")],
        gamma={"Intercept": 1.0, "x": 0.5, "f[T.b]": 0.2, "x:f[T.c]": 0.3, "x:z": 0.1},
        random=["Intercept", "x"], T=[[1.0, 0.1], [0.1, 0.25]], sigma2=1.0)
    data = mlmsim.simulate(spec, 12, 8, rng=np.random.default_rng(2))
    fitted = model_design(spec.formula, data).layout
    assert (spec.layout.fixed_names, spec.layout.random_names) == (fitted.fixed_names,
                                                                   fitted.random_names)
    parts = {p for c in (*fitted.fixed, *fitted.random) for p in c.parts}
    assert spec.layout == fitted and set(spec.compiled.variables) == parts

