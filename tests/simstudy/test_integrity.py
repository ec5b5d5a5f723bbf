"""Study integrity: a changed study never mixes with old records, a lost chunk is never
silent, overlapping chunks are never summed, an edited manifest is refused."""

from __future__ import annotations

import functools
import importlib
import json
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlmsim.generate.predictors import Continuous
from mlmsim.generate.simulate import simulate
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FormulaMethod
from mlmsim.simstudy import (
    DefinitionError,
    IncompleteStudyWarning,
    Study,
    StudyDirectoryError,
    load_study,
)
from mlmsim.simstudy.storage import MANIFEST, OverlappingChunksWarning

SPEC = ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                 random=["Intercept"], T=[[1.0]], sigma2=9.0)


def generate(cond, rng):
    """A generator that names a module-level spec (as a user's script does)."""
    return simulate(SPEC, cond.n_groups, 4, rng=rng)


def mean_y(data, scale=1.0):
    return {"sigma2": float(np.var(data["y"], ddof=1)) * scale}


def strip(records: pd.DataFrame) -> pd.DataFrame:
    return records.drop(columns="seconds")


@contextmanager
def spec_set_to(spec: ModelSpec):
    """The module-level SPEC replaced for the duration (an edit of the user's script)."""
    old = globals()["SPEC"]
    globals()["SPEC"] = spec
    try:
        yield
    finally:
        globals()["SPEC"] = old


def variance_study(n_reps: int = 8, seed: int = 5, **kw) -> Study:
    return Study({"n_groups": [5, 8]}, generate, {"var": mean_y},
                 truth={"sigma2": 9.0}, n_reps=n_reps, seed=seed, **kw)


# ---------------------------------------------------------------------------
# 1. a changed study is refused on resume
# ---------------------------------------------------------------------------


def test_a_module_level_spec_is_part_of_the_identity(tmp_path):
    """sigma^2 9 -> 1 in a spec the generator names at module level: the resume is
    refused, naming the generator's global, instead of mixing 8.7 and 0.99."""
    variance_study(n_reps=4).run(tmp_path, progress=False)
    edited = ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                       random=["Intercept"], T=[[1.0]], sigma2=1.0)
    with spec_set_to(edited):
        with pytest.raises(StudyDirectoryError, match=r"generate \(generate\.globals\.SPEC"):
            variance_study(n_reps=8).run(tmp_path, progress=False)
    # unchanged, it resumes (and extends)
    res = variance_study(n_reps=8).run(tmp_path, progress=False)
    assert len(res.records) == 2 * 8


def _import(path: Path, name: str, source: str):
    path.write_text(source)
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return importlib.import_module(name)


def test_a_helper_in_another_module_is_part_of_the_identity(tmp_path, monkeypatch):
    """The generator lives in one module of the user's code and calls a helper of
    another: editing the helper changes the identity, and the resume is refused."""
    monkeypatch.syspath_prepend(str(tmp_path))
    helper = "def noise(rng, n):\n    return rng.normal(0.0, {sd}, size=n)\n"
    gen = ("from mlmsim_test_helper import noise\n\n"
           "def gen(cond, rng):\n    return noise(rng, cond.size)\n")
    _import(tmp_path / "mlmsim_test_helper.py", "mlmsim_test_helper", helper.format(sd=3.0))
    module = _import(tmp_path / "mlmsim_test_gen.py", "mlmsim_test_gen", gen)

    def build(mod):
        return Study({"size": [5]}, mod.gen, {"sd": lambda x: {"s": float(np.std(x))}},
                     n_reps=4, seed=1)

    out = tmp_path / "study"
    build(module).run(out, progress=False)
    _import(tmp_path / "mlmsim_test_helper.py", "mlmsim_test_helper", helper.format(sd=1.0))
    module = _import(tmp_path / "mlmsim_test_gen.py", "mlmsim_test_gen", gen)
    with pytest.raises(StudyDirectoryError, match=r"generate \(generate\.globals\.noise"):
        build(module).run(out, progress=False)
    for name in ("mlmsim_test_helper", "mlmsim_test_gen"):
        sys.modules.pop(name, None)


RNG = np.random.default_rng(1)
LOCK = threading.Lock()


def draws_from_a_shared_generator(cond, rng):
    return RNG.normal(size=3)


def locks(cond, rng):
    with LOCK:
        return rng.normal(size=3)


@pytest.mark.parametrize("gen, name", [(draws_from_a_shared_generator, "RNG"),
                                       (locks, "LOCK")])
def test_a_generator_whose_parameters_cannot_be_captured_is_refused(tmp_path, gen, name):
    study = Study(None, gen, {"m": lambda x: float(np.mean(x))}, n_reps=2, seed=1)
    with pytest.raises(DefinitionError, match=f"global {name!r}") as info:
        study.run(tmp_path, progress=False)
    assert "cannot be captured" in str(info.value)
    assert not (tmp_path / MANIFEST).exists()


class Shifted:
    """A generator with declared parameters: its state is not data, its parameters are."""

    def __init__(self, shift: float):
        self.shift = shift
        self._cache = threading.Lock()  # not a parameter

    def __mlmsim_params__(self):
        return {"shift": self.shift}

    def __call__(self, cond, rng):
        return rng.normal(self.shift, 1.0, size=3)


def test_declared_parameters_are_the_identity():
    a, b, c = (Study(None, Shifted(s), {"var": mean_y}, seed=1) for s in (1.0, 1.0, 2.0))
    assert a.definition_hash == b.definition_hash != c.definition_hash


def test_every_study_of_the_package_hashes():
    from mlmsim.studies import RunOptions, get, names

    hashed = 0
    for name in names():
        module = get(name)
        for builder in ("study", "build", "studies", "_studies"):
            build = getattr(module, builder, None)
            if build is None:
                continue
            studies = build(RunOptions(quick=True))
            if isinstance(studies, dict):
                studies = list(studies.values())
            for study in studies if isinstance(studies, list | tuple) else [studies]:
                assert len(study.definition_hash) == 64
                hashed += 1
    assert hashed >= 4


# the hypothesis test over random edits of a definition

_BASE = {"n_groups": (5, 8), "sigma2": 9.0, "gamma_x": 0.5, "tau": 1.0, "scale": 1.0,
         "level": 0.95, "reml": True, "truth": 9.0, "seed": 5}

_EDITS = st.one_of(
    st.just({}),
    st.builds(lambda v: {"n_groups": v},
              st.sampled_from([(5, 8), (5, 9), (8, 5), (5,), (5, 8, 11)])),
    st.builds(lambda v: {"sigma2": v}, st.sampled_from([9.0, 1.0, 9.000001, 4.0])),
    st.builds(lambda v: {"gamma_x": v}, st.sampled_from([0.5, 0.0, 2.0])),
    st.builds(lambda v: {"tau": v}, st.sampled_from([1.0, 0.25])),
    st.builds(lambda v: {"scale": v}, st.sampled_from([1.0, 2.0, 0.5])),
    st.builds(lambda v: {"level": v}, st.sampled_from([0.95, 0.9])),
    st.builds(lambda v: {"reml": v}, st.booleans()),
    st.builds(lambda v: {"truth": v}, st.sampled_from([9.0, 1.0])),
    st.builds(lambda v: {"seed": v}, st.sampled_from([5, 6, 2**40])),
)


def _edited(edit: dict) -> tuple[Study, ModelSpec]:
    p = {**_BASE, **edit}
    spec = ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0,
                                                          "x": p["gamma_x"]},
                     random=["Intercept"], T=[[p["tau"]]], sigma2=p["sigma2"])
    methods = {"var": functools.partial(mean_y, scale=p["scale"]),
               "fit": FormulaMethod("y ~ x + (1 | g)", "REML" if p["reml"] else "ML",
                                    level=p["level"], batch=False)}
    study = Study({"n_groups": list(p["n_groups"])}, generate, methods,
                  truth={"sigma2": p["truth"]}, n_reps=2, seed=p["seed"])
    return study, spec


@pytest.fixture(scope="module")
def base_directory(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    study, spec = _edited({})
    with spec_set_to(spec):
        records = study.run(out, progress=False).records
    return out, strip(records)


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(edit=_EDITS)
def test_every_edit_that_changes_a_record_is_refused_and_no_edit_resumes(base_directory,
                                                                         edit):
    out, base = base_directory
    study, spec = _edited(edit)
    with spec_set_to(spec):
        records = strip(pd.concat([study.run_replicate(c, r)
                                   for c in range(len(study.conditions))
                                   for r in range(study.n_reps)], ignore_index=True))
        changes_records = not records.equals(base)
        before = sorted(p.name for p in (out / "chunks").iterdir())
        if changes_records:
            with pytest.raises(StudyDirectoryError, match="differs"):
                study.run(out, progress=False)
        else:
            # the records are the same: the study is unchanged and resumes (nothing to do)
            assert edit == {} or all(_BASE[k] == v for k, v in edit.items()), edit
            resumed = study.run(out, progress=False).records
            pd.testing.assert_frame_equal(strip(resumed), base)
        assert sorted(p.name for p in (out / "chunks").iterdir()) == before


# ---------------------------------------------------------------------------
# 2. a deleted chunk is reported
# ---------------------------------------------------------------------------


def test_a_deleted_chunk_is_reported_by_summarise_and_study_report(tmp_path, capsys):
    from mlmsim import cli

    variance_study(n_reps=20).run(tmp_path, chunk_size=5, progress=False)
    sorted((tmp_path / "chunks").glob("c*.parquet"))[1].unlink()
    loaded = load_study(tmp_path)
    assert len(loaded.missing()) == 5
    count = loaded.replicate_count()
    assert (count.expected, count.present, count.missing, count.duplicated) == (40, 35, 5, 0)
    with pytest.warns(IncompleteStudyWarning, match="35 of 40 replicates present"):
        summary = loaded.summarise()
    assert summary.attrs["replicates"]["missing"] == 5
    assert cli.main(["study", "report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("INCOMPLETE: 35 of 40 replicates present"), out
    assert cli.main(["study", "report", "--strict", str(tmp_path)]) == 2
    assert "--strict" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# 3. overlapping chunks are never summed
# ---------------------------------------------------------------------------


def test_overlapping_chunks_are_not_summed(tmp_path):
    """Two runners' files for the same replicates: bias and n_fits as without them."""
    out, other = tmp_path / "study", tmp_path / "other"
    variance_study(n_reps=12).run(out, chunk_size=4, progress=False)
    variance_study(n_reps=12).run(other, chunk_size=6, progress=False)
    clean = load_study(out).summarise()
    for copied in (other / "chunks").glob("c*.parquet"):
        (out / "chunks" / copied.name).write_bytes(copied.read_bytes())
    with pytest.warns(OverlappingChunksWarning):
        loaded = load_study(out)
    summary = loaded.summarise()
    keep = summary.measure != "mean_seconds"
    pd.testing.assert_frame_equal(summary[keep], clean[clean.measure != "mean_seconds"])
    assert set(summary.loc[summary.measure == "n_fits", "estimate"]) == {12}
    assert summary.attrs["replicates"]["duplicated"] == 24


# ---------------------------------------------------------------------------
# 4. an edited manifest is refused
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("root_seed", "6"), ("n_reps", 3),
                                          ("truth", [{"sigma2": 1.0}, {"sigma2": 1.0}])])
def test_an_edited_manifest_is_refused(tmp_path, field, value):
    variance_study(n_reps=4).run(tmp_path, progress=False)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest[field] = value
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StudyDirectoryError, match="checksum"):
        load_study(tmp_path)
    with pytest.raises(StudyDirectoryError, match="checksum"):
        variance_study(n_reps=4).run(tmp_path, progress=False)


def test_a_manifest_without_checksum_is_trusted_only_when_it_agrees_with_itself(tmp_path):
    variance_study(n_reps=4).run(tmp_path, progress=False)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    del manifest["checksum"]  # as written before manifests had one
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_study(tmp_path).seed == 5
    manifest["root_seed"] = "6"
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StudyDirectoryError, match="root_seed"):
        load_study(tmp_path)
