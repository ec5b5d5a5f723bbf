"""What the identity of a study definition captures (mlmsim.simstudy.identity)."""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest

from mlmsim.generate.predictors import Continuous
from mlmsim.generate.spec import ModelSpec
from mlmsim.simstudy.identity import (
    DefinitionError,
    canonical,
    changed_parts,
    digest,
    identity_parts,
)


class Rate:
    RATE = 0.3

    def __call__(self, cond, rng):
        return rng.normal(self.RATE, 1.0, size=3)


def test_class_attributes_and_library_functions():
    before = digest(Rate())
    Rate.RATE = 0.4
    try:
        assert digest(Rate()) != before
    finally:
        Rate.RATE = 0.3
    assert digest(Rate()) == before
    # installed packages by name: numpy's functions and ufuncs
    assert "numpy" in json.dumps(canonical(np.mean)) and "code" not in canonical(np.mean)
    assert digest(np.log) != digest(np.exp)
    assert "numpy" in json.dumps(canonical(np.log))


def test_partials_wrappers_and_specs():
    def f(x, k=1):
        return x * k

    assert digest(functools.partial(f, k=2)) != digest(functools.partial(f, k=3))
    cached = functools.lru_cache(maxsize=None)(f)
    assert digest(cached) == digest(functools.lru_cache(maxsize=None)(f))
    a = ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                  random=["Intercept"], T=[[1.0]], sigma2=9.0)
    b = ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                  random=["Intercept"], T=[[1.0]], sigma2=1.0)
    assert digest(a) != digest(b)
    changed = changed_parts(identity_parts("spec", a, depth=4),
                            identity_parts("spec", b, depth=4))
    assert changed == ["spec.fields.sigma2"]


def test_uncapturable_values_are_refused_not_skipped():
    for value in (io.StringIO("x"), np.random.default_rng(1), (i for i in range(3))):
        with pytest.raises(DefinitionError, match="cannot be captured"):
            canonical({"value": value})

    class Opaque:
        __slots__ = ()

    with pytest.raises(DefinitionError, match="no readable state"):
        canonical(Opaque())
