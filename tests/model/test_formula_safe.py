"""Formulas from study definitions, specs and files are read with a restricted grammar:
column names, numbers, operators and a few functions; anything else is refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmsim.methods import FormulaMethod
from mlmsim.model.formula_safe import UnsafeFormulaError, check_formula

ALLOWED = [
    "y ~ x + (1 | g)",
    "mathach ~ cses + female*minority + (1 + cses || school)",
    "y ~ I(x**2) + log(z) + C(f) + center(x) + (1|g)",
    "y ~ 0 + x + (0 + x | g)",
    "y ~ x - 1 + (1|g)",
    "y ~ C(f, Treatment('b')) + C(h, contr.sum) + C(k, levels=['a', 'b']) + (1|g)",
    "y ~ (x + z)^2 + (1|g)",
    "y ~ x:z + `odd name` + (1|g)",
    "y ~ I(-x / 2 + sqrt(z)) + scale(x) + exp(log10(z)) + (1 | g)",
    "y ~ 1e-3 + x + (1|g)",
]

REFUSED = {
    "a formula that writes a file": (
        "y ~ I(x.__array__.__globals__['__builtins__']['open'](path, 'w').write('1') + x)"
        " + (1 | g)", "x.__array__"),
    "formulaic's Python quoting": ("y ~ {x**2} + (1|g)", "'{'"),
    "an attribute": ("y ~ x.y + (1|g)", "`x.y`"),
    "another function": ("y ~ open('f') + (1|g)", "function 'open'"),
    "a subscript": ("y ~ I(x[0]) + (1|g)", "'['"),
    "a dunder name": ("y ~ __import__ + (1|g)", "'__import__'"),
    "a lambda": ("y ~ I(lambda: 1) + (1|g)", "'lambda'"),
    "a call in C()": ("y ~ C(f, open('x')) + (1|g)", "in C()"),
    "a string": ("y ~ 'abc' + (1|g)", "\"'abc'\""),
    "a statement": ("y ~ x; import os", "';'"),
    "a huge power": ("y ~ I(9**99999999) + (1|g)", "power"),
}


@pytest.mark.parametrize("formula", ALLOWED)
def test_plain_formulas_pass(formula):
    assert check_formula(formula) == formula


@pytest.mark.parametrize("case", list(REFUSED))
def test_code_in_a_formula_is_refused_in_one_line(case):
    formula, named = REFUSED[case]
    with pytest.raises(UnsafeFormulaError) as info:
        check_formula(formula)
    message = str(info.value)
    assert "\n" not in message and named in message, message


def test_a_study_definition_runs_no_code_through_its_formula(tmp_path):
    """A FormulaMethod (as a study definition read from someone else's file holds it)
    refuses the formula that would write a file, before anything runs."""
    target = tmp_path / "written"
    formula = (f"y ~ I(x.__array__.__globals__['__builtins__']['open']({str(target)!r}, 'w')"
               ".write('1') + x) + (1 | g)")
    with pytest.raises(ValueError, match="is refused"):
        FormulaMethod(formula, "REML")
    assert not target.exists()


def test_the_formulas_of_specs_and_package_studies_pass():
    from mlmsim.generate.predictors import Categorical, Continuous, Level2Continuous
    from mlmsim.generate.spec import ModelSpec

    spec = ModelSpec(predictors=[Continuous("x"), Level2Continuous("z"),
                                 Categorical("f", levels=["a", "b", "c"])],
                     gamma={"Intercept": 1.0, "x": 0.5, "z": 0.3, "x:z": 0.2,
                            "f[T.b]": 0.1},
                     random=["Intercept", "x"], T=[[1.0, 0.1], [0.1, 0.5]], sigma2=1.0)
    assert check_formula(spec.formula) == spec.formula


_PIECES = st.sampled_from(["x", "y", "g", "1", "0", "2.5", "~", "+", "-", "*", "/", ":",
                           "^", "**", "|", "||", "(", ")", ",", "I(", "C(", "log(", "open(",
                           "x.y", "__class__", "[", "]", "'a'", "{", "}", "`q r`", ".", "=",
                           "lambda", " "])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=25))
def test_any_text_is_accepted_or_refused_in_one_line_never_anything_else(pieces):
    text = " ".join(pieces)
    try:
        check_formula(text)
    except UnsafeFormulaError as exc:
        assert "\n" not in str(exc)
        return
    for bad in ("__", "[", "{", "open(", "x.y", "lambda", "'"):
        assert bad not in text, text
