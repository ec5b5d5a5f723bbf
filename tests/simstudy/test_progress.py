"""What a running study prints while it runs: lines off a terminal, the block's name on
the bar, "resuming", the first-compile note; and a report of a folder with more
replicates than the run asked for."""

from __future__ import annotations

import io
import types

import numpy as np
import pandas as pd
import pytest

from mlmsim import Continuous, FormulaMethod, FromSpec, ModelSpec, progress
from mlmsim.engine import compiled
from mlmsim.progress import LineProgress
from mlmsim.simstudy import Study, load_study


def _generate(cond, rng):
    return rng.normal(0.0, 1.0, size=cond["size"])


def _mean(data):
    return {"mu": float(np.mean(data))}


def _study(n_reps: int) -> Study:
    return Study({"size": [4, 8]}, _generate, {"mean": _mean}, truth={"mu": 0.0},
                 n_reps=n_reps, seed=5)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_every_interval_and_at_the_end():
    clock, stream = _Clock(), io.StringIO()
    bar = LineProgress(100, 20, "bias/slope", interval=10.0, stream=stream, clock=clock)
    clock.t = 4.0
    bar.update(10)                      # before the interval: nothing
    assert stream.getvalue() == ""
    clock.t = 12.0
    bar.update(10)                      # 40 of 100 after 12 s; 20 ran -> 36 s left
    clock.t = 15.0
    bar.update(10)                      # 3 s after the last line: nothing
    clock.t = 30.0
    bar.update(50)
    bar.close()                         # the last line is not repeated
    lines = stream.getvalue().splitlines()
    assert lines == ["bias/slope: 40 of 100 replicates (40%), 12 s elapsed, about 36 s left",
                     "bias/slope: 100 of 100 replicates (100%), 30 s elapsed"]


def test_line_progress_says_nothing_when_nothing_ran():
    stream = io.StringIO()
    bar = LineProgress(10, 10, "x", stream=stream, clock=_Clock())
    bar.close()
    assert stream.getvalue() == ""


def test_long_durations_in_minutes_and_hours():
    clock, stream = _Clock(), io.StringIO()
    bar = LineProgress(1000, 0, "b", interval=1.0, stream=stream, clock=clock)
    clock.t = 600.0
    bar.update(50)
    assert stream.getvalue().strip() == ("b: 50 of 1000 replicates (5%), 10.0 min "
                                         "elapsed, about 3.2 h left")


def test_a_run_shorter_than_the_interval_prints_nothing():
    clock, stream = _Clock(), io.StringIO()
    bar = LineProgress(10, 0, "x", interval=10.0, stream=stream, clock=clock)
    clock.t = 3.0
    bar.update(10)
    bar.close()
    assert stream.getvalue() == ""
    clock.t, stream = 0.0, io.StringIO()
    bar = LineProgress(10, 0, "x", interval=10.0, stream=stream, clock=clock)
    clock.t = 11.0
    bar.close()                          # nothing ran
    assert stream.getvalue() == ""


def test_off_a_terminal_a_run_prints_lines_named_by_its_label(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compiled, "kernels_cached", lambda: True)
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    _study(6).run(tmp_path / "s", label="demo/block")
    err = capsys.readouterr().err
    assert "demo/block: 12 of 12 replicates (100%)" in err
    assert "\r" not in err                           # no bar's carriage returns
    _study(6).run(tmp_path / "t")                    # default label: the folder's name
    assert "t: 12 of 12 replicates" in capsys.readouterr().err


def test_progress_false_prints_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compiled, "kernels_cached", lambda: False)
    _study(3).run(tmp_path / "s", progress=False)
    _study(6).run(tmp_path / "s", progress=False)    # a resume, and uncached kernels
    assert capsys.readouterr().err == ""


def test_the_bar_carries_the_label(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compiled, "kernels_cached", lambda: True)
    _study(3).run(tmp_path / "s", progress=True, label="bias/intercept")
    assert "bias/intercept:" in capsys.readouterr().err


def test_a_resumed_run_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compiled, "kernels_cached", lambda: True)
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    _study(5).run(tmp_path / "s", label="b")
    assert "resuming" not in capsys.readouterr().err
    _study(8).run(tmp_path / "s", label="b")
    err = capsys.readouterr().err
    assert "b: resuming: 10 of 16 replicates done" in err
    assert "b: 16 of 16 replicates (100%)" in err
    _study(8).run(tmp_path / "s", label="b")         # nothing left to run
    err = capsys.readouterr().err
    assert err.strip() == "b: resuming: 16 of 16 replicates done"


class _Announcing:
    """A method with a note for the start of a run (the AnnouncesRun protocol)."""

    def __init__(self, note):
        self.note = note

    def __call__(self, data):
        return _mean(data)

    def run_note(self):
        return self.note


def test_a_methods_note_is_shown_once_before_the_run(tmp_path, capsys):
    methods = {"a": _Announcing("warming up"), "b": _Announcing("warming up"),
               "c": _Announcing(None), "d": _mean}
    study = Study({"size": [4]}, _generate, methods, n_reps=2, seed=5)
    study.run(tmp_path / "a", label="s")
    assert capsys.readouterr().err.count("s: warming up") == 1
    study.run(tmp_path / "a", label="s")             # nothing left to run: no note
    assert "warming up" not in capsys.readouterr().err
    study.run(tmp_path / "b", label="s", progress=False)
    assert capsys.readouterr().err == ""
    _study(2).run(tmp_path / "c", label="s")       # a study that fits no model says nothing
    assert "compile" not in capsys.readouterr().err


def test_the_first_compile_is_announced_once_per_cache_state(tmp_path, capsys, monkeypatch):
    def fit_study():
        spec = ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                         random=["Intercept"], T=[[0.2]], sigma2=1.0)
        return Study(None, FromSpec(spec, 10, 5), {"REML": FormulaMethod("y ~ x + (1 | g)")},
                     n_reps=2, seed=5)

    monkeypatch.setattr(compiled, "kernels_cached", lambda: False)
    fit_study().run(tmp_path / "a", label="b")
    assert capsys.readouterr().err.count("the first fit compiles them, once") == 1
    monkeypatch.setattr(compiled, "kernels_cached", lambda: True)
    fit_study().run(tmp_path / "c", label="b")
    assert "compiles" not in capsys.readouterr().err


def _dispatcher(index):
    """An object shaped like a numba dispatcher whose cache index holds ``index``."""
    cache_file = types.SimpleNamespace(_load_index=lambda: index)
    return types.SimpleNamespace(_cache=types.SimpleNamespace(_cache_file=cache_file))


def test_reading_numba_cache_index():
    assert compiled._has_cached_code(_dispatcher({("sig",): "file"}))
    assert not compiled._has_cached_code(_dispatcher({}))
    assert compiled._has_cached_code(types.SimpleNamespace())   # nothing to inspect

    def broken():
        raise EOFError("truncated index")

    assert not compiled._has_cached_code(types.SimpleNamespace(_cache=types.SimpleNamespace(
        _cache_file=types.SimpleNamespace(_load_index=broken))))


def test_the_real_kernels_report_their_cache_state():
    """After a fit in this process numba has written (or loaded) the entry kernels, so
    the cache holds them: the note is not printed again."""
    import mlmsim

    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(10), 5)
    y = rng.normal(size=50) + rng.normal(size=10)[g]
    mlmsim.fit("y ~ 1 + (1 | g)", pd.DataFrame({"y": y, "g": g}))
    assert compiled.kernels_cached()
    assert compiled.compile_note() is None


def test_reps_below_the_folder_reports_the_runs_replicates(tmp_path):
    """A run with fewer replicates into a folder that holds more (item: '--reps 10 on a
    folder with 20 replicates reports all 20'): the folder is read as the run asked."""
    _study(20).run(tmp_path / "s", progress=False)
    _study(10).run(tmp_path / "s", progress=False)
    loaded = load_study(tmp_path / "s")
    assert loaded.n_reps == 10
    assert sorted(loaded.records.rep.unique()) == list(range(10))
    count = loaded.replicate_count()
    assert (count.expected, count.present, count.missing, count.beyond) == (20, 20, 0, 20)
    assert "20 more replicates in the directory, beyond 10 per condition" in count.describe()
    everything = load_study(tmp_path / "s", n_reps=20)
    assert sorted(everything.records.rep.unique()) == list(range(20))
    assert everything.replicate_count().beyond == 0


def test_cli_report_after_fewer_reps(tmp_path, capsys, register_study):
    """Through the CLI: 'study run --reps 10' on a 20-replicate folder; the report counts
    10 per condition and says that 10 more are there."""
    from mlmsim import cli

    def run(out_dir, options):
        _study(options.reps or 20).run(out_dir / "records", progress=False)

    register_study("tiny", "Tiny", run, lambda out_dir: None)
    out = tmp_path / "tiny"
    assert cli.main(["study", "run", "tiny", "--out", str(out)]) == 0
    assert cli.main(["study", "run", "tiny", "--reps", "10", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["study", "report", str(out), "--csv", str(tmp_path / "m.csv")]) == 0
    shown = capsys.readouterr().out
    assert "20 more replicates in the directory, beyond 10 per condition" in shown
    measures = pd.read_csv(tmp_path / "m.csv")
    n = measures.loc[(measures.parameter == "mu") & (measures.measure == "bias"), "n"]
    assert n.tolist() == [10, 10]



def test_runs_are_recorded_and_reported(tmp_path):
    """Each finished run appends its wall-clock time to the manifest; a report states the
    total (item: every report states its run time)."""
    from mlmsim.simstudy import summarise
    from mlmsim.simstudy.storage import StudyDirectory
    from mlmsim.studies._report import run_lines, wall_clock

    _study(5).run(tmp_path / "records", progress=False)
    _study(8).run(tmp_path / "records", progress=False)   # resumes: 3 more per condition
    _study(8).run(tmp_path / "records", progress=False)   # nothing to run: not a run
    runs = StudyDirectory(tmp_path / "records").read_manifest()["runs"]
    assert [r["replicates"] for r in runs] == [10, 6]
    assert all(r["seconds"] >= 0 and r["workers"] == 1 for r in runs)
    seconds, n_runs, n_ran, n_dirs = wall_clock(tmp_path)
    assert (n_runs, n_ran, n_dirs) == (2, 16, 1)
    assert seconds == pytest.approx(sum(r["seconds"] for r in runs))
    summary = summarise(load_study(tmp_path / "records"))
    lines, full = run_lines({"s": summary}, {"size": [4, 8]}, 8, "run it", tmp_path)
    assert full
    assert any(line.startswith("- Run time: ") and "2 runs (a resumed study), 16 replicates"
               in line for line in lines)
    lines, _ = run_lines({"s": summary}, {"size": [4, 8]}, 8, "run it")
    assert any(line.startswith("- Run time: not recorded") for line in lines)


def test_durations_for_people():
    from mlmsim.progress import duration

    assert [duration(s) for s in (0.4321, 4.0, 42.4, 210.0, 9000.0)] == \
        ["0.43 s", "4 s", "42 s", "3.5 min", "2.5 h"]


def test_blocks_run_once_are_not_a_resumed_study(tmp_path):
    """A study of two blocks (two record directories), each run once: one run of each,
    not "2 runs (a resumed study)"."""
    from mlmsim.simstudy import summarise
    from mlmsim.studies._report import run_lines

    for block in ("slope", "intercept"):
        _study(3).run(tmp_path / "records" / block, progress=False)
    summary = summarise(load_study(tmp_path / "records" / "slope"))
    lines, _ = run_lines({"slope": summary, "intercept": summary}, {"size": [4, 8]}, 3,
                         "run it", tmp_path)
    line = next(t for t in lines if t.startswith("- Run time: "))
    assert "one run of each of its 2 blocks, 12 replicates run" in line
    assert "resumed" not in line
