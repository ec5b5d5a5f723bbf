"""The study runner: records, error accounting, reproducibility across workers and chunks."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mlmsim.methods import FormulaMethod
from mlmsim.simstudy import RECORD_COLUMNS, Estimates, Study, replicate_rng


def normal_sample(cond, rng):
    """A sample of size cond.size from N(cond.mu, 1)."""
    return rng.normal(cond.mu, 1.0, size=cond.size)


def mean_with_se(data):
    m = float(np.mean(data))
    se = float(np.std(data, ddof=1) / np.sqrt(len(data)))
    return {"mu": {"estimate": m, "se": se, "ci_lower": m - 2 * se, "ci_upper": m + 2 * se}}


def median_or_fail(data):
    if data[0] > 1.8:
        raise ValueError("first draw too large")
    if data[0] < -2.2:
        warnings.warn("first draw very small", UserWarning, stacklevel=1)
    return {"mu": float(np.median(data)), "spread": float(np.ptp(data))}


def jitter(data, rng):
    """A method that uses its own random-number stream."""
    return {"mu": float(np.mean(data) + rng.normal(0.0, 0.01))}


def truth(cond):
    return {"mu": cond.mu}


def make_study(n_reps=40, seed=2024, **kw):
    methods = kw.pop("methods", {"mean": mean_with_se, "median": median_or_fail,
                                 "jitter": jitter})
    return Study({"size": [5, 20], "mu": [0.0, 1.0]}, normal_sample, methods, truth=truth,
                 n_reps=n_reps, seed=seed, **kw)


def strip(records: pd.DataFrame) -> pd.DataFrame:
    """Records without wall-clock time, the one column that differs between runs."""
    return records.drop(columns="seconds")


@pytest.fixture(scope="module")
def reference():
    return make_study().run(progress=False).records


def test_record_layout(reference):
    rec = reference
    cols = list(rec.columns)
    assert cols[:3] == ["condition", "size", "mu"]
    assert cols[3:] == list(RECORD_COLUMNS[1:])
    # 4 conditions x 40 reps x (mean: 1, median: 2 or error rows, jitter: 1) parameters
    fits = rec.drop_duplicates(["condition", "rep", "method"])
    assert len(fits) == 4 * 40 * 3
    assert rec["method"].unique().tolist() == ["mean", "median", "jitter"]
    assert rec["seed"].dtype == np.uint64
    assert str(rec["converged"].dtype) == "boolean"
    assert (rec.loc[rec.method == "mean", "truth"] == rec.loc[rec.method == "mean", "mu"]).all()
    assert rec.loc[rec.parameter == "spread", "truth"].isna().all()
    mean = rec[rec.method == "mean"]
    assert np.allclose(mean.ci_upper - mean.ci_lower, 4 * mean.se)


def test_errors_are_recorded_not_dropped(reference):
    rec = reference
    med = rec[rec.method == "median"]
    failed = med[med.error.notna()]
    assert len(failed) > 0
    assert failed.error.str.startswith("method: ValueError: first draw too large").all()
    # a failed fit gives one row per declared estimand, with no estimate
    assert set(failed.parameter) == {"mu"}
    assert failed.estimate.isna().all()
    # every replicate is present for every method: nothing dropped, nothing redrawn
    per = rec.drop_duplicates(["condition", "rep", "method"]).groupby("method").size()
    assert (per == 160).all()
    warned = med[med.messages.str.contains("first draw very small", na=False)]
    assert len(warned) > 0
    assert warned.messages.str.startswith("UserWarning").all()


def test_replicate_regenerates_alone(reference):
    study = make_study()
    row = reference[(reference.condition == 3) & (reference.rep == 17)].iloc[0]
    cond = study._conds[3]
    # from the seed recorded in the row alone
    data = normal_sample(cond, replicate_rng(int(row.seed)))
    assert np.array_equal(data, study.regenerate(3, 17))
    assert study.replicate_seed(3, 17) == int(row.seed)
    expected = reference[(reference.condition == 3) & (reference.rep == 17)]
    alone = study.run_replicate(3, 17)
    pd.testing.assert_frame_equal(strip(alone), strip(expected).reset_index(drop=True))


@pytest.mark.parametrize("chunk_size", [1, 7, 40])
def test_chunk_size_does_not_change_records(reference, chunk_size):
    rec = make_study().run(chunk_size=chunk_size, progress=False).records
    pd.testing.assert_frame_equal(strip(rec), strip(reference))


def test_n_jobs_2_is_bit_identical(reference):
    rec = make_study().run(n_jobs=2, chunk_size=9, progress=False).records
    pd.testing.assert_frame_equal(strip(rec), strip(reference))


def test_dask_local_cluster_is_bit_identical(reference):
    """backend="dask" without a scheduler starts a LocalCluster (2 worker processes)."""
    pytest.importorskip("distributed")
    rec = make_study().run(backend="dask", n_jobs=2, chunk_size=11, progress=False).records
    pd.testing.assert_frame_equal(strip(rec), strip(reference))


@pytest.mark.slow
def test_dask_given_scheduler_address_or_client(reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        rec = make_study(n_reps=10).run(backend="dask", scheduler=cluster.scheduler_address,
                                        progress=False).records
        expected = reference[reference.rep < 10].reset_index(drop=True)
        pd.testing.assert_frame_equal(strip(rec), strip(expected))
        with distributed.Client(cluster) as client:
            rec = make_study().run(backend="dask", scheduler=client, chunk_size=7,
                                   progress=False).records
            assert not client.status == "closed"  # a client we were given stays open
        pd.testing.assert_frame_equal(strip(rec), strip(reference))


def test_more_replicates_extend_the_same_streams(reference):
    short = make_study(n_reps=15).run(progress=False).records
    expected = reference[reference.rep < 15].reset_index(drop=True)
    pd.testing.assert_frame_equal(strip(short), strip(expected))


def test_generation_errors():
    def generate(cond, rng):
        x = rng.normal(size=3)
        if x[0] > 1.0:
            raise RuntimeError("bad draw")
        return x

    study = Study({"k": [1]}, generate, {"a": lambda d: {"b": float(d[0])}},
                  truth={"b": 0.0, "c": 1.0}, n_reps=60, seed=3)
    rec = study.run(progress=False).records
    bad = rec[rec.error.notna()]
    assert len(bad) > 0
    assert bad.error.str.startswith("generate: RuntimeError: bad draw").all()
    # one row per declared estimand for a failed replicate
    assert sorted(bad.groupby("rep").parameter.apply(list).iloc[0]) == ["b", "c"]
    assert rec.drop_duplicates("rep").shape[0] == 60


def test_result_forms():
    frame = pd.DataFrame({"estimate": [1.0, 2.0], "se": [0.1, 0.2]}, index=["p", "q"])

    class FakeFit:
        params = pd.Series({"x": 1.0, "var(Intercept)": 2.0, "sigma2": 3.0})
        fixef_se = pd.Series({"x": 0.5})
        covparms = pd.DataFrame({"se": [1.0, np.nan]}, index=["var(Intercept)", "sigma2"])
        converged, singular, hessian_pd, identifiable = True, False, False, True
        messages = ("Hessian not positive definite",)

    methods = {
        "number": lambda d: 1.5,
        "npnumber": lambda d: np.float64(2.5),
        "series": lambda d: pd.Series({"p": 1.0}),
        "frame": lambda d: frame,
        "estimates": lambda d: Estimates({"p": 3.0}, se={"p": 0.3}, converged=False,
                                         messages=["note"]),
        "fit": lambda d: FakeFit(),
        "bad": lambda d: "not an estimate",
    }
    rec = Study(None, lambda c, r: None, methods, truth={"p": 1.0}, n_reps=2,
                seed=1).run(progress=False).records
    r0 = rec[rec.rep == 0].set_index(["method", "parameter"])
    assert r0.loc[("number", "p"), "estimate"] == 1.5
    assert r0.loc[("npnumber", "p"), "estimate"] == 2.5
    assert r0.loc[("frame", "q"), "se"] == 0.2
    est = r0.loc[("estimates", "p")]
    assert (est.estimate, est.se, est.converged, est.messages) == (3.0, 0.3, False, "note")
    fit = r0.loc["fit"]
    assert fit.index.tolist() == ["x", "var(Intercept)", "sigma2"]
    assert fit.se.tolist()[:2] == [0.5, 1.0] and np.isnan(fit.se.iloc[2])
    z = 1.959963984540054
    assert np.isclose(fit.loc["x", "ci_upper"], 1.0 + z * 0.5)
    assert not fit.hessian_pd.any() and fit.converged.all()
    assert fit.messages.iloc[0] == "Hessian not positive definite"
    assert r0.loc[("bad", "p"), "error"].startswith("result: TypeError")


def test_scalar_needs_one_estimand():
    rec = Study(None, lambda c, r: None, {"m": lambda d: 1.0}, truth={"a": 0.0, "b": 0.0},
                n_reps=1, seed=1).run(progress=False).records
    assert rec.error.str.contains("single number").all()
    rec = Study(None, lambda c, r: None, {"m": lambda d: 1.0}, n_reps=1,
                seed=1).run(progress=False).records
    assert rec.parameter.tolist() == ["value"] and np.isnan(rec.truth.iloc[0])


class BatchMean:
    """A method object fitting whole chunks at once (the batched engine path)."""

    name = "bmean"

    def __init__(self, batch=True):
        self.batch = batch

    def __call__(self, data):
        return {"mu": float(np.mean(data))}

    def fit_batch(self, datasets):
        out = []
        for d in datasets:
            if d[0] > 1.8:
                out.append(ValueError("first draw too large"))
            else:
                out.append({"mu": float(np.mean(d))})
        return out

    def descriptor(self):
        return {"batch": self.batch}


def test_batched_method_matches_per_replicate_path():
    def single(data):
        if data[0] > 1.8:
            raise ValueError("first draw too large")
        return {"mu": float(np.mean(data))}

    base = make_study(methods={"bmean": single, "mean": mean_with_se}).run(
        progress=False).records
    for chunk_size in (3, 40):
        rec = make_study(methods={"bmean": BatchMean(), "mean": mean_with_se}).run(
            chunk_size=chunk_size, progress=False).records
        pd.testing.assert_frame_equal(strip(rec), strip(base))
    calls = []

    class Spy(BatchMean):
        def fit_batch(self, datasets):
            calls.append(len(datasets))
            return super().fit_batch(datasets)

    make_study(n_reps=10, methods={"b": Spy()}).run(chunk_size=5, progress=False)
    assert calls == [5] * 8
    calls.clear()
    make_study(n_reps=10, methods={"b": Spy(batch=False)}).run(chunk_size=5, progress=False)
    assert calls == []


def test_formula_method_batch_switch():
    fm = FormulaMethod("y ~ x + (1 | g)", "ML")
    assert fm.name == "ML" and not fm.takes_rng and fm.batch_size == 256
    assert fm.fit_batch is not None  # the engine's batched path
    off = FormulaMethod("y ~ x + (1 | g)", "ML", batch=False)
    assert off.fit_batch is None
    assert off.descriptor() != fm.descriptor()
    with pytest.raises(ValueError):
        FormulaMethod("y ~ x", "OLS")
    with pytest.raises(ValueError):
        FormulaMethod("y ~ x + (1 | g)", batch_size=0)


class Sized(BatchMean):
    """A batched method with a batch size, recording the batches it is given."""

    def __init__(self, batch_size, calls):
        super().__init__()
        self.batch_size = batch_size
        self.calls = calls

    def fit_batch(self, datasets):
        self.calls.append(len(datasets))
        return super().fit_batch(datasets)


def test_batches_follow_the_batch_size_and_chunks_fall_anywhere():
    """Batches hold at most ``batch_size`` replicates, consecutive within the chunk (no
    alignment to multiples of it); the records are those of the unbatched method, whatever
    the chunk size, and one replicate computed again alone equals the run's."""
    def single(data):
        if data[0] > 1.8:
            raise ValueError("first draw too large")
        return {"mu": float(np.mean(data))}

    base = make_study(n_reps=24, methods={"b": single}).run(progress=False).records
    for chunk_size, expected in ((7, ([4, 3] * 3 + [3]) * 4), (24, [4] * 6 * 4)):
        calls = []
        study = make_study(n_reps=24, methods={"b": Sized(4, calls)})
        rec = study.run(chunk_size=chunk_size, progress=False).records
        assert calls == expected
        pd.testing.assert_frame_equal(strip(rec), strip(base))
    alone = study.run_replicate(2, 13)
    expected = base[(base.condition == 2) & (base.rep == 13)]
    pd.testing.assert_frame_equal(strip(alone), strip(expected).reset_index(drop=True))


def test_conditions_grid_and_validation():
    study = Study({"a": [1, 2], "b": ["x", "y", "z"], "c": 0.5}, lambda c, r: None,
                  {"m": lambda d: 1.0}, n_reps=1)
    grid = study.conditions
    assert grid.shape == (6, 3)
    assert grid.a.tolist() == [1, 1, 1, 2, 2, 2] and grid.b.tolist()[:3] == ["x", "y", "z"]
    cond = study._conds[4]
    assert cond.a == 2 and cond["b"] == "y" and cond.index == 4
    with pytest.raises(AttributeError):
        cond.a = 3
    frame = pd.DataFrame({"n_groups": [10, 30], "icc": [0.1, 0.2]})
    assert Study(frame, lambda c, r: None, {"m": lambda d: 1.0}).conditions.equals(frame)
    for bad in ({"rep": [1]}, {"n": [1]}, {"estimate": [1]}):
        with pytest.raises(ValueError, match="clashes"):
            Study(bad, lambda c, r: None, {"m": lambda d: 1.0})
    with pytest.raises(ValueError, match="duplicate"):
        Study(None, lambda c, r: None, [FormulaMethod("y ~ 1 + (1|g)", "ML")] * 2)
    with pytest.raises(ValueError):
        Study(None, lambda c, r: None, {"m": lambda d: 1.0}, n_reps=0)
    with pytest.raises(ValueError, match="entries"):
        Study({"a": [1, 2]}, lambda c, r: None, {"m": lambda d: 1.0}, truth=[{"p": 1}])


def test_progress_bar_only_when_asked(capsys):
    study = make_study(n_reps=3)
    study.run(progress=False)
    assert capsys.readouterr().err == ""
    study.run()  # not a terminal under pytest: quiet
    assert capsys.readouterr().err == ""
    study.run(progress=True)
    err = capsys.readouterr().err
    assert "12/12" in err and "rep" in err


def test_definition_hash_tracks_what_matters():
    base = make_study().definition_hash
    assert make_study(n_reps=999).definition_hash == base
    assert make_study(seed=1).definition_hash != base
    assert make_study(methods={"mean": mean_with_se}).definition_hash != base
    study = Study({"size": [5, 20], "mu": [0.0, 1.0]}, normal_sample,
                  {"mean": mean_with_se, "median": median_or_fail, "jitter": jitter},
                  truth=lambda c: {"mu": c.mu + 1}, n_reps=40, seed=2024)
    assert study.definition_hash != base

    def make(scale):
        return lambda cond, rng: rng.normal(0.0, scale, size=3)

    hashes = {Study(None, make(s), {"m": lambda d: 1.0}, seed=1).definition_hash
              for s in (1.0, 2.0)}
    assert len(hashes) == 2


def _as_written_before_df_and_p(out_dir):
    """Rewrite every chunk file of a study directory as mlmsim wrote them before the
    ``df`` and ``p`` columns existed (valid files: checksums and metadata in order)."""
    from mlmsim.simstudy.storage import StudyDirectory

    directory = StudyDirectory(out_dir)
    definition = directory.read_manifest()["definition_hash"]
    chunks = directory.chunk_files()
    assert chunks
    for chunk in chunks:
        table = directory.read_chunk(chunk, definition)
        old = table.drop_columns(["df", "p"])
        chunk.path.unlink()
        directory.write_chunk(old, chunk.condition, chunk.start, chunk.stop, definition)
    return definition


def test_records_written_before_df_and_p_still_load_summarise_and_resume(tmp_path):
    """Old chunks have no df and p columns: they are read with both null, summarise as
    before, and a run resumes in their directory (the definition hash is unchanged) with
    new chunks next to them."""
    from mlmsim.simstudy import load_study, summarise

    out = tmp_path / "study"
    fresh = make_study(n_reps=20).run(progress=False).records
    make_study(n_reps=12).run(out, chunk_size=4, progress=False)
    definition = _as_written_before_df_and_p(out)
    old = load_study(out)
    assert old.definition_hash == definition == make_study().definition_hash
    rec = old.records
    assert list(rec.columns) == list(fresh.columns)
    assert rec.df.isna().all() and rec.p.isna().all()
    expected = fresh[fresh.rep < 12].reset_index(drop=True)
    pd.testing.assert_frame_equal(strip(rec), strip(expected))
    cols = ["condition", "method", "parameter", "measure", "estimate", "mcse", "n"]

    def measures(source):  # all but the wall-clock time
        out = summarise(source)
        return out.loc[out.measure != "mean_seconds", cols].reset_index(drop=True)

    pd.testing.assert_frame_equal(measures(old), measures(expected))
    # resume: the old chunks are kept (not recomputed), the new ones carry df and p
    import pyarrow.parquet as pq

    before = set((out / "chunks").glob("*.parquet"))
    result = make_study(n_reps=20).run(out, chunk_size=4, progress=False)
    after = set((out / "chunks").glob("*.parquet"))
    assert before < after and not list((out / "chunks").glob("*.corrupt"))
    for path in after:
        assert ("df" in pq.read_schema(path).names) == (path not in before)
    pd.testing.assert_frame_equal(strip(result.records), strip(fresh))
    pd.testing.assert_frame_equal(strip(load_study(out).records), strip(fresh))
    # and a records frame without the columns (saved by an older version) summarises
    pd.testing.assert_frame_equal(measures(expected.drop(columns=["df", "p"])),
                                  measures(expected))


def test_methods_may_record_df_and_p():
    methods = {
        "nested": lambda d: {"mu": {"estimate": 1.0, "se": 0.5, "df": 9.0, "p": 0.07}},
        "estimates": lambda d: Estimates({"mu": 1.0, "tau": 2.0}, se={"mu": 0.5},
                                         df={"mu": 4.0}, p={"mu": 0.2}),
        "frame": lambda d: pd.DataFrame({"estimate": [1.0], "df": [3.0]}, index=["mu"]),
        "plain": lambda d: {"mu": 1.0},
    }
    rec = Study(None, lambda c, r: None, methods, truth={"mu": 1.0}, n_reps=1,
                seed=1).run(progress=False).records.set_index(["method", "parameter"])
    assert (rec.loc[("nested", "mu"), "df"], rec.loc[("nested", "mu"), "p"]) == (9.0, 0.07)
    assert (rec.loc[("estimates", "mu"), "df"], rec.loc[("estimates", "mu"), "p"]) == (4.0, 0.2)
    assert np.isnan(rec.loc[("estimates", "tau"), "df"])
    assert rec.loc[("frame", "mu"), "df"] == 3.0 and np.isnan(rec.loc[("frame", "mu"), "p"])
    assert np.isnan(rec.loc[("plain", "mu"), "df"]) and np.isnan(rec.loc[("plain", "mu"), "p"])
    assert str(rec["df"].dtype) == "float64" and str(rec["p"].dtype) == "float64"
