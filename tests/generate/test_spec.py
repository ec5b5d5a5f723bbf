"""ModelSpec: validation (a ValueError naming each problem), the true formula and
parameters in the engine's names, the seed's discrete-slope models, and spec files
(YAML/JSON round trips; files are data: unknown keys, wrong types and object tags refused)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import yaml
from formulaic import model_matrix

from mlmsim.generate.covariance import T_from_sd_corr, covparm_names, tau0_sq_from_icc
from mlmsim.generate.distributions import ChiSquare, Discrete, Normal, StudentT
from mlmsim.generate.predictors import (
    Binary,
    Categorical,
    Complement,
    Continuous,
    GroupCentered,
    GroupMean,
    Indicator,
    Level2Binary,
    Level2Continuous,
    Values,
)
from mlmsim.generate.sizes import PoissonSizes, SizeList, UniformSizes
from mlmsim.generate.spec import ModelSpec


def slope_spec(**changes) -> ModelSpec:
    """A random intercept and slope model with a cross-level interaction."""
    base = dict(
        predictors=(Continuous("x", var_between=0.3), Level2Continuous("z")),
        gamma={"Intercept": 1.0, "x": 0.5, "z": 0.2, "x:z": 0.1},
        random=("Intercept", "x"),
        T=[[1.0, 0.2], [0.2, 0.5]],
        sigma2=2.0,
        group_sizes=5,
    )
    base.update(changes)
    return ModelSpec(**base)


def hsb_like(random: tuple[str, ...], T) -> ModelSpec:
    """The seed's discrete-slope models: cses, meanses and female fixed; the random part
    given. (a): (Intercept, female, male); (b): (Intercept, female); (c): (female, male)."""
    return ModelSpec(
        predictors=(Continuous("ses", var_between=0.4, var_within=0.45),
                    GroupCentered("cses", of="ses"), GroupMean("meanses", of="ses"),
                    Binary("female", p=0.5, p_sd=0.15), Complement("male", of="female")),
        gamma={"Intercept": 13.0, "cses": 2.2, "meanses": 5.0, "female": -1.2},
        random=random, T=T, sigma2=36.0, group="school", response="math",
        group_sizes=SizeList.from_dataset("hsb"),
    )


# ---------------------------------------------------------------------------
# formula and truth
# ---------------------------------------------------------------------------

def test_formula_and_truth_of_a_slope_model():
    spec = slope_spec()
    assert spec.formula == "y ~ 1 + x + z + x:z + (1 + x | g)"
    truth = spec.truth
    assert list(truth.gamma.index) == ["Intercept", "x", "z", "x:z"]
    assert list(truth.T.index) == list(truth.T.columns) == ["Intercept", "x"]
    assert truth.sigma2 == 2.0
    assert truth.params.to_dict() == {
        "Intercept": 1.0, "x": 0.5, "z": 0.2, "x:z": 0.1, "var(Intercept)": 1.0,
        "cov(x,Intercept)": 0.2, "var(x)": 0.5, "sigma2": 2.0}


def test_truth_names_are_formulaics_and_T_follows_the_engine_order():
    spec = ModelSpec(
        predictors=(Categorical("grade", ("a", "b", "c"), probs=(0.5, 0.3, 0.2)),
                    Continuous("x"), Level2Binary("z", p=0.3)),
        gamma={"Intercept": 1.0, "grade[T.c]": 0.4, "x": -0.5, "z:x": 0.3, "grade[T.b]:x": 0.2},
        random=("x", "Intercept"),
        T=[[0.5, 0.1], [0.1, 2.0]], sigma2=1.0,
    )
    frame = pd.DataFrame({"grade": pd.Categorical(["a", "b", "c"]), "x": [0.0, 1.0, 2.0],
                          "z": [0.0, 1.0, 0.0]})
    fixed = spec.formula.split("~")[1].split("+ (")[0]
    assert list(model_matrix(fixed, frame).columns) == list(spec.fixed_names)
    assert list(spec.fixed_names) == ["Intercept", "grade[T.b]", "grade[T.c]", "x", "z:x",
                                      "grade[T.b]:x", "grade[T.c]:x"]
    gamma = spec.truth.gamma
    assert gamma["grade[T.b]"] == 0.0 and gamma["grade[T.c]"] == 0.4  # unnamed columns are 0
    # T was given in the order (x, Intercept); the truth is in the engine's order
    assert spec.random_names == ("Intercept", "x")
    np.testing.assert_array_equal(spec.truth.T.to_numpy(), [[2.0, 0.1], [0.1, 0.5]])
    assert list(spec.truth.params.index[-4:]) == ["var(Intercept)", "cov(x,Intercept)",
                                                  "var(x)", "sigma2"]


def test_covparm_names_sas_un_order():
    assert covparm_names(["Intercept", "female", "male"]) == [
        "var(Intercept)", "cov(female,Intercept)", "var(female)", "cov(male,Intercept)",
        "cov(male,female)", "var(male)", "sigma2"]


def test_seed_discrete_slope_models_as_specs():
    fixed = "math ~ 1 + cses + meanses + female"
    a = hsb_like(("Intercept", "female", "male"), np.diag([8.0, 1.0, 0.0]))
    b = hsb_like(("Intercept", "female"), [[8.0, -1.0], [-1.0, 1.0]])
    c = hsb_like(("female", "male"), [[7.0, 7.0], [7.0, 8.0]])
    assert a.formula == f"{fixed} + (1 + female + male | school)"
    assert b.formula == f"{fixed} + (1 + female | school)"
    assert c.formula == f"{fixed} + (0 + female + male | school)"
    assert list(c.truth.params.index[4:]) == ["var(female)", "cov(male,female)", "var(male)",
                                              "sigma2"]
    assert len(b.group_sizes.sizes) == 160 and sum(b.group_sizes.sizes) == 7185


def test_random_effects_must_be_one_lme4_term():
    # a single dummy of a three-level factor is not one lme4 term; an Indicator is
    with pytest.raises(ValueError, match=r"grade\[T.b\].*grade\[T.c\]"):
        ModelSpec(predictors=(Categorical("grade", ("a", "b", "c")),), gamma={},
                  random=("Intercept", "grade[T.b]"), T=np.eye(2), sigma2=1.0)
    spec = ModelSpec(predictors=(Categorical("grade", ("a", "b", "c")),
                                 Indicator("grade_b", of="grade", category="b")),
                     gamma={}, random=("Intercept", "grade_b"), T=np.eye(2), sigma2=1.0)
    assert spec.formula == "y ~ 1 + (1 + grade_b | g)"
    full = ModelSpec(predictors=(Categorical("grade", ("a", "b", "c")),), gamma={},
                     random=("grade[a]", "grade[b]", "grade[c]"), T=np.eye(3), sigma2=1.0)
    assert full.formula == "y ~ 1 + (0 + grade | g)"


def test_singular_T_and_scalar_T_are_allowed():
    spec = slope_spec(T=T_from_sd_corr([1.0, 0.5], 1.0))
    assert np.linalg.matrix_rank(spec.T) == 1
    one = ModelSpec(predictors=(), gamma={"Intercept": 3.0}, random=("Intercept",), T=0.5,
                    sigma2=1.0)
    assert one.T.shape == (1, 1) and one.formula == "y ~ 1 + (1 | g)"
    zero = ModelSpec(predictors=(), gamma={}, random=("Intercept",), T=0.0, sigma2=1.0)
    assert zero.truth.params["var(Intercept)"] == 0.0


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def test_T_from_sd_corr():
    T = T_from_sd_corr([2.0, 0.5, 1.0], [[1, -0.3, 0], [-0.3, 1, 0.5], [0, 0.5, 1]])
    np.testing.assert_allclose(np.sqrt(np.diag(T)), [2.0, 0.5, 1.0])
    np.testing.assert_allclose(T[0, 1], -0.3 * 2.0 * 0.5)
    np.testing.assert_array_equal(T_from_sd_corr([1.0, 3.0]), np.diag([1.0, 9.0]))
    with pytest.raises(ValueError, match="negative"):
        T_from_sd_corr([-1.0, 1.0])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        T_from_sd_corr([1.0, 1.0], 1.5)
    with pytest.raises(ValueError, match="positive semi-definite"):
        T_from_sd_corr([1, 1, 1], [[1, 0.9, -0.9], [0.9, 1, 0.9], [-0.9, 0.9, 1]])


def test_tau0_sq_from_icc():
    for icc in (0.0, 0.05, 0.2, 0.5, 0.9):
        tau0 = tau0_sq_from_icc(icc, 3.0)
        assert tau0 / (tau0 + 3.0) == pytest.approx(icc, abs=1e-15)
    with pytest.raises(ValueError, match="icc"):
        tau0_sq_from_icc(1.0, 1.0)
    with pytest.raises(ValueError, match="sigma2"):
        tau0_sq_from_icc(0.1, 0.0)


def test_distributions_are_standardised():
    dists = (Normal(), StudentT(7), ChiSquare(3), Discrete(), Discrete((0, 1, 5), (.2, .5, .3)))
    for dist in dists:
        rng = np.random.default_rng(0)
        if isinstance(dist, Discrete):  # exact moments of the support
            p = np.asarray(dist.probs or [0.5, 0.5])
            assert p @ dist.support == pytest.approx(0, abs=1e-12)
            assert p @ dist.support ** 2 == pytest.approx(1, abs=1e-12)
        e = dist.standard(rng, (4000,))
        assert e.shape == (4000,)
    assert StudentT(10).kurtosis == pytest.approx(4.0)
    assert ChiSquare(4).kurtosis == pytest.approx(6.0)
    assert Discrete().kurtosis == pytest.approx(1.0)
    with pytest.raises(ValueError, match="exceed 2"):
        StudentT(2)


# ---------------------------------------------------------------------------
# bad specs: a ValueError naming the problem
# ---------------------------------------------------------------------------

BAD_SPECS = {
    "T not symmetric": (dict(T=[[1.0, 0.2], [0.3, 0.5]]), ["not symmetric", "T[1,0] = 0.3"]),
    "T not PSD": (dict(T=[[1.0, 2.0], [2.0, 1.0]]),
                  ["not positive semi-definite", "most negative eigenvalue is -1"]),
    "negative variance": (dict(T=[[1.0, 0.0], [0.0, -0.5]]),
                          ["negative variance", "var(x)", "-0.5"]),
    "sigma2 zero": (dict(sigma2=0.0), ["sigma2", "positive"]),
    "sigma2 negative": (dict(sigma2=-1.0), ["sigma2", "positive"]),
    "gamma unknown term": (dict(gamma={"Intercept": 1.0, "w": 0.3}), ["unknown term 'w'"]),
    "gamma unknown interaction": (dict(gamma={"x:w": 0.3}), ["unknown term 'x:w'"]),
    "T size": (dict(T=np.eye(3)), ["shape (3, 3)", "2 random effects", "2 x 2"]),
    "zero groups": (dict(n_groups=0), ["n_groups", "at least 1", "got 0"]),
    "group size 0": (dict(group_sizes=0), ["group size", "at least 1", "got 0"]),
    "a listed group size 0": (dict(group_sizes=[4, 0, 3]), ["group size", "at least 1"]),
    "unknown random column": (dict(random=("Intercept", "w")), ["unknown column 'w'"]),
    "non-finite T": (dict(T=[[1.0, np.nan], [np.nan, 1.0]]), ["T", "missing or infinite"]),
}


@pytest.mark.parametrize("name", list(BAD_SPECS))
def test_bad_spec_raises_naming_the_problem(name):
    changes, words = BAD_SPECS[name]
    with pytest.raises(ValueError) as err:
        slope_spec(**changes)
    for w in words:
        assert w in str(err.value), (name, str(err.value))


@pytest.mark.parametrize("make, words", [
    (lambda: Binary("female", p=1.2), ["p of 'female'", "[0, 1]", "1.2"]),
    (lambda: Binary("female", p=-0.1), ["[0, 1]"]),
    (lambda: Level2Binary("z", p=2.0), ["p of 'z'", "[0, 1]"]),
    (lambda: Categorical("f", ("a", "b"), probs=(1.5, -0.5)), ["probability", "[0, 1]"]),
    (lambda: Categorical("f", ("a", "b"), probs=(0.5, 0.4)), ["sum to 1"]),
    (lambda: Discrete((0.0, 1.0), (0.5, 1.5)), ["probability", "[0, 1]"]),
    (lambda: Binary("female", p=0.5, p_sd=0.6), ["p_sd", "p (1 - p)"]),
    (lambda: Continuous("x", var_within=-1.0), ["var_within", ">= 0"]),
    (lambda: Level2Continuous("z", var=-1.0), ["var of 'z'", ">= 0"]),
    (lambda: Continuous("1x"), ["plain column name"]),
    (lambda: PoissonSizes(mean=3.0, minimum=5), ["below the minimum"]),
    (lambda: SizeList(()), ["zero groups"]),
    (lambda: UniformSizes(0, 3), ["low", "at least 1", "got 0"]),
    (lambda: UniformSizes(5, 3), ["high (3) is below low (5)"]),
])
def test_bad_parts_raise_naming_the_problem(make, words):
    with pytest.raises(ValueError) as err:
        make()
    for w in words:
        assert w in str(err.value), str(err.value)


def test_bad_predictor_references():
    with pytest.raises(ValueError, match="unknown predictor 'sex'"):
        slope_spec(predictors=(Continuous("x"), Complement("male", of="sex")))
    with pytest.raises(ValueError, match="needs a binary predictor"):
        slope_spec(predictors=(Continuous("x"), Complement("male", of="x")))
    with pytest.raises(ValueError, match="two predictors are called 'x'"):
        slope_spec(predictors=(Continuous("x"), Binary("x")))
    with pytest.raises(ValueError, match="name of the response"):
        slope_spec(predictors=(Continuous("x"), Continuous("y")))
    with pytest.raises(ValueError, match="has no level 'd'"):
        ModelSpec(predictors=(Categorical("f", ("a", "b")), Indicator("fd", of="f", category="d")),
                  gamma={}, random=("Intercept",), T=1.0, sigma2=1.0)


def test_spec_is_immutable_picklable_and_replaceable():
    spec = slope_spec()
    with pytest.raises(TypeError):
        spec.gamma["x"] = 3.0  # type: ignore[index]
    with pytest.raises(ValueError):
        spec.T[0, 0] = 3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.sigma2 = 3.0  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and hash(again) == hash(spec) and again.formula == spec.formula
    compiled = again.compiled  # as sent to a worker: its arrays stay read-only
    for a in (compiled.gamma, compiled.factor, compiled.fixed_terms,
              compiled.random_terms):
        with pytest.raises(ValueError):
            a[...] = 0
    other = dataclasses.replace(spec, sigma2=4.0)
    assert other.truth.sigma2 == 4.0 and other != spec


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

def full_spec() -> ModelSpec:
    """Every predictor kind, distribution and a size rule, for round trips."""
    return ModelSpec(
        predictors=(Continuous("x", mean=1.0, var_between=0.25, var_within=2.0),
                    Binary("female", p=0.4, p_sd=0.1), Complement("male", of="female"),
                    Categorical("grade", ("a", "b", "c"), probs=(0.2, 0.3, 0.5)),
                    Indicator("grade_c", of="grade", category="c"),
                    Values("t", (0.0, 1.0, 2.0)), GroupMean("xbar", of="x"),
                    GroupCentered("xc", of="x"), Level2Continuous("z", mean=-1.0, var=0.5),
                    Level2Binary("private", p=0.3)),
        gamma={"Intercept": 1.0, "xc": 0.5, "xbar": 1e-3, "female": -1.0, "grade[T.b]": 0.3,
               "t": 0.2, "z": 0.1, "xc:z": -0.2, "private": 0.7},
        random=("Intercept", "female", "male"),
        T=T_from_sd_corr([1.0, 0.5, 0.7], [[1, 0.2, 0.1], [0.2, 1, 0.3], [0.1, 0.3, 1]]),
        sigma2=1.5, u_dist=StudentT(5.0), r_dist=ChiSquare(4.0),
        group_sizes=PoissonSizes(8.0, minimum=2), n_groups=40, group="school", response="score",
    )


@pytest.mark.parametrize("spec", [full_spec(), ModelSpec.example(),
                                  slope_spec(u_dist=Discrete((-1, 0, 2), (0.3, 0.4, 0.3)),
                                             group_sizes=UniformSizes(3, 9)),
                                  slope_spec(group_sizes=SizeList((3, 4, 5), resample=True))])
def test_yaml_and_json_round_trips(spec, tmp_path):
    assert ModelSpec.from_yaml(spec.to_yaml()) == spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for name in ("spec.yaml", "spec.yml", "spec.json"):
        spec.save(tmp_path / name)
        loaded = ModelSpec.load(tmp_path / name)
        assert loaded == spec and loaded.formula == spec.formula
        pd.testing.assert_series_equal(loaded.truth.params, spec.truth.params)


def per_component_slope(**changes) -> ModelSpec:
    return slope_spec(T=[[1.0, 0.0], [0.0, 0.5]],
                      u_dist={"Intercept": StudentT(6.0), "x": Discrete((0.0, 1.0), (0.3, 0.7))},
                      **changes)


def test_per_component_u_dist_round_trips_through_files(tmp_path):
    spec = per_component_slope()
    assert spec.u_components == (StudentT(6.0), Discrete((0.0, 1.0), (0.3, 0.7)))
    raw = spec.to_dict()
    assert raw["u_dist"] == {"Intercept": {"kind": "t", "df": 6.0},
                             "x": {"kind": "discrete", "points": [0.0, 1.0],
                                   "probs": [0.3, 0.7]}}
    assert ModelSpec.from_yaml(spec.to_yaml()) == spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_dict(json.loads(json.dumps(raw))) == spec
    for name in ("spec.yaml", "spec.json"):
        spec.save(tmp_path / name)
        loaded = ModelSpec.load(tmp_path / name)
        assert loaded == spec and loaded.u_components == spec.u_components
    assert pickle.loads(pickle.dumps(spec)) == spec
    # written by hand: names left out are normal; a single distribution stays one
    text = spec.to_yaml().split("u_dist:")[0] + "u_dist: {x: {kind: discrete}}\n"
    short = ModelSpec.from_yaml(text)
    assert short.u_components == (Normal(), Discrete())
    assert short.u_dist == {"Intercept": Normal(), "x": Discrete()}
    assert slope_spec(u_dist=Discrete()).u_components is None
    assert ModelSpec.from_yaml(slope_spec(u_dist=Discrete()).to_yaml()).u_dist == Discrete()
    with pytest.raises(TypeError, match="immutable"):
        short.u_dist["x"] = Normal()  # type: ignore[index]


def test_per_component_u_dist_files_name_the_problem():
    raw = {**per_component_slope().to_dict()}
    bad = {**raw, "u_dist": {"x": {"kind": "t"}}}
    with pytest.raises(ValueError, match="'u_dist.x'.*lacks the key 'df'"):
        ModelSpec.from_dict(bad)
    with pytest.raises(ValueError, match="'z', which is not a random effect"):
        ModelSpec.from_dict({**raw, "u_dist": {"z": {"kind": "discrete"}}})
    with pytest.raises(ValueError, match=r"cov\(x,Intercept\) = 0\.2"):
        ModelSpec.from_dict({**raw, "T": [[1.0, 0.2], [0.2, 0.5]]})


def test_example_yaml_is_annotated_and_valid():
    text = ModelSpec.example_yaml()
    assert text.startswith("#") and "\n#" in text
    spec = ModelSpec.from_yaml(text)
    assert spec.formula == "y ~ 1 + x + z + x:z + (1 + x | g)"
    assert spec.random == ("Intercept", "x") and spec.T.shape == (2, 2)


def test_file_conveniences():
    text = "\n".join([
        "gamma: {Intercept: 1, x: 2.5e-1}",     # YAML 1.2 floats and ints read as numbers
        "random: Intercept",
        "T: {sd: [2.0]}",
        "sigma2: 1e-1",
        "predictors: [{kind: continuous, name: x}]",
        "group_sizes: {kind: dataset, name: hsb}",
    ])
    spec = ModelSpec.from_yaml(text)
    assert spec.gamma["x"] == 0.25 and spec.sigma2 == 0.1
    assert spec.T.tolist() == [[4.0]] and len(spec.group_sizes.sizes) == 160


BASE = {"gamma": {"Intercept": 1.0}, "random": ["Intercept"], "T": [[1.0]], "sigma2": 1.0}


@pytest.mark.parametrize("changes, words", [
    ({"sigma": 1.0}, ["unknown key 'sigma'"]),
    ({"predictors": [{"kind": "continuous", "name": "x", "sd": 1.0}]},
     ["unknown key 'predictors[0].sd'"]),
    ({"predictors": [{"kind": "gaussian", "name": "x"}]}, ["'predictors[0].kind'", "continuous"]),
    ({"predictors": [{"kind": "binary"}]}, ["'predictors[0]'", "lacks the key 'name'"]),
    ({"sigma2": "one"}, ["'sigma2'", "must be a number", "'one'"]),
    ({"sigma2": True}, ["'sigma2'", "must be a number"]),
    ({"T": [[1.0, "a"]]}, ["'T[0][1]'", "number"]),
    ({"random": 3}, ["'random'", "must be a list"]),
    ({"gamma": {"Intercept": [1.0]}}, ["'gamma.Intercept'", "number"]),
    ({"n_groups": 2.5}, ["'n_groups'", "whole number"]),
    ({"group_sizes": True}, ["'group_sizes'"]),
    ({"group_sizes": {"kind": "poisson", "mean": 5, "min": 1}}, ["'group_sizes.min'"]),
    ({"predictors": [{"kind": "binary", "name": "f", "p": "half"}]},
     ["'predictors[0].p'", "number"]),
    ({"predictors": [{"kind": "binary", "name": "f", "p": 1.5}]}, ["'predictors[0]'", "[0, 1]"]),
    ({"u_dist": {"kind": "t"}}, ["'u_dist'", "lacks the key 'df'"]),
])
def test_spec_files_refuse_unknown_keys_and_wrong_types(changes, words):
    raw = {**BASE, **changes}
    for text, read in ((json.dumps(raw), ModelSpec.from_json),
                       (yaml.safe_dump(raw), ModelSpec.from_yaml)):
        with pytest.raises(ValueError) as err:
            read(text)
        for w in words:
            assert w in str(err.value), str(err.value)


OK_YAML = {"gamma": "{Intercept: 1.0}", "random": "[Intercept]", "T": "[[1.0]]", "sigma2": "1.0"}


@pytest.mark.parametrize("key, value, where", [
    ("sigma2", "!!python/object/apply:os.system ['echo owned']", "'sigma2'"),
    ("gamma", "!!python/name:os.system", "'gamma'"),
    ("gamma", "{x: !!python/object/new:float [2.0]}", "'gamma.x'"),
    ("T", "!custom [[1.0]]", "'T'"),
    ("predictors", "[!!python/object:mlmsim.generate.spec.Continuous {name: x}]",
     "'predictors[0]'"),
    ("sigma2", "!!binary aGVsbG8=", "'sigma2'"),
])
def test_spec_files_refuse_object_tags(key, value, where):
    text = "\n".join(f"{k}: {value if k == key else v}" for k, v in {**OK_YAML, key: ""}.items())
    with pytest.raises(ValueError) as err:
        ModelSpec.from_yaml(text)
    msg = str(err.value)
    assert where in msg and "tag" in msg, msg


def test_spec_files_refuse_duplicate_keys_and_bad_syntax():
    with pytest.raises(ValueError, match="repeats the key 'sigma2'"):
        ModelSpec.from_yaml("sigma2: 1.0\nsigma2: 2.0\ngamma: {}\nrandom: [Intercept]\nT: 1.0\n")
    with pytest.raises(ValueError, match="repeats the key 'sigma2'"):
        ModelSpec.from_json('{"sigma2": 1.0, "sigma2": 2.0}')
    with pytest.raises(ValueError, match="not valid YAML"):
        ModelSpec.from_yaml("gamma: [1, 2\n  - oops: {\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelSpec.from_json("{")
    with pytest.raises(ValueError, match="lacks the key 'sigma2'"):
        ModelSpec.from_yaml("gamma: {}\nrandom: [Intercept]\nT: 1.0\n")
    with pytest.raises(ValueError, match="mapping"):
        ModelSpec.from_yaml("- 1\n- 2\n")


def test_from_yaml_given_a_file_name_says_to_use_load(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("gamma: {Intercept: 1.0}\nsigma2: 1.0\n")
    for text in ("spec.yaml", str(path)):
        with pytest.raises(ValueError, match=r"ModelSpec\.load\(path\)"):
            ModelSpec.from_yaml(text)
