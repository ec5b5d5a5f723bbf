"""Checkpoints and resume: atomic chunk files, refusal of foreign studies, corrupt chunks,
and a run killed with SIGKILL part-way then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlmsim.simstudy import CorruptChunkWarning, Study, StudyDirectoryError, load_study
from mlmsim.simstudy.storage import (
    MANIFEST,
    StudyDirectory,
    describe_callable,
    digest,
    manifest_checksum,
)

REPO = Path(__file__).resolve().parents[2]
SLEEP = 0.0  # seconds per replicate; the killed subprocess sets it through the environment


def generate(cond, rng):
    delay = float(os.environ.get("MLMSIM_TEST_SLEEP", SLEEP))
    if delay:
        time.sleep(delay)
    x = rng.normal(size=cond.size)
    return x + cond.shift


def mean_se(data):
    if data[0] > 2.0:
        raise ValueError("outlier")
    return {"m": {"estimate": float(np.mean(data)),
                  "se": float(np.std(data, ddof=1) / np.sqrt(len(data)))}}


def build_study(n_reps: int = 30, seed: int = 11) -> Study:
    """The study of these tests (also run, and killed, in a subprocess)."""
    return Study({"size": [4, 9], "shift": [0.0, 0.5]}, generate,
                 {"mean": mean_se, "max": lambda d: {"m": float(np.max(d))}},
                 truth=lambda c: {"m": c.shift}, n_reps=n_reps, seed=seed)


def strip(records: pd.DataFrame) -> pd.DataFrame:
    return records.drop(columns="seconds")


@pytest.fixture(scope="module")
def reference():
    return build_study().run(progress=False).records


def chunk_paths(path: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (path / "chunks").glob("c*.parquet")}


def test_directory_holds_data_only_and_resumes(tmp_path, reference):
    res = build_study().run(tmp_path, chunk_size=8, progress=False)
    pd.testing.assert_frame_equal(strip(res.records), strip(reference))
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert MANIFEST in files
    assert all(f.endswith((".parquet", ".json")) for f in files)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["root_seed"] == "11"
    assert manifest["definition_hash"] == build_study().definition_hash
    assert manifest["mlmsim_version"]
    before = chunk_paths(tmp_path)
    assert len(before) == 4 * 4  # 4 conditions x ceil(30 / 8) chunks
    again = build_study().run(tmp_path, chunk_size=8, progress=False)
    assert chunk_paths(tmp_path) == before  # nothing recomputed or rewritten
    pd.testing.assert_frame_equal(strip(again.records), strip(reference))
    # reading back needs no code: manifest and Parquet only
    loaded = load_study(tmp_path, n_reps=30)
    pd.testing.assert_frame_equal(strip(loaded.records), strip(reference))
    assert loaded.missing().empty


def test_a_loaded_study_knows_its_replicates_and_names_a_deleted_chunk(tmp_path):
    build_study().run(tmp_path, chunk_size=8, progress=False)
    loaded = load_study(tmp_path)  # no n_reps: the manifest's 30
    assert loaded.expected_reps == 30
    assert loaded.missing().empty
    gone = sorted((tmp_path / "chunks").glob("c*.parquet"))[1]
    gone.unlink()
    missing = load_study(tmp_path).missing()
    # the second chunk of condition 0 held replicates 8..15
    assert missing.to_dict("list") == {"condition": [0] * 8, "rep": list(range(8, 16))}


def test_resume_with_other_chunk_size_and_more_replicates(tmp_path, reference):
    build_study(n_reps=12).run(tmp_path, chunk_size=5, progress=False)
    files = sorted((tmp_path / "chunks").glob("c*.parquet"))
    files[1].unlink()  # a chunk that never finished
    res = build_study(n_reps=30).run(tmp_path, chunk_size=7, progress=False)
    rec = res.records
    pd.testing.assert_frame_equal(strip(rec), strip(reference))
    assert not rec.duplicated(["condition", "rep", "method", "parameter"]).any()
    fewer = build_study(n_reps=10).run(tmp_path, progress=False).records
    pd.testing.assert_frame_equal(
        strip(fewer), strip(reference[reference.rep < 10].reset_index(drop=True)))


def test_other_definition_is_refused(tmp_path):
    build_study(n_reps=4).run(tmp_path, chunk_size=4, progress=False)
    with pytest.raises(StudyDirectoryError, match=r"differs \(changed: seed\)"):
        build_study(n_reps=4, seed=12).run(tmp_path, progress=False)
    other = Study({"size": [4, 9], "shift": [0.0, 0.5]}, generate, {"mean": mean_se},
                  truth=lambda c: {"m": c.shift}, n_reps=4, seed=11)
    with pytest.raises(StudyDirectoryError, match="methods"):
        other.run(tmp_path, progress=False)
    conds = Study({"size": [4, 9], "shift": [0.0, 1.5]}, generate,
                  {"mean": mean_se, "max": lambda d: {"m": float(np.max(d))}},
                  truth=lambda c: {"m": c.shift}, n_reps=4, seed=11)
    with pytest.raises(StudyDirectoryError, match="conditions"):
        conds.run(tmp_path, progress=False)
    # the refused runs wrote nothing
    assert len(chunk_paths(tmp_path)) == 4
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["mlmsim_version"] = "0.0.1"  # as another mlmsim writes it: checksum and all
    manifest["checksum"] = manifest_checksum(manifest)
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StudyDirectoryError, match="mlmsim 0.0.1"):
        build_study(n_reps=4).run(tmp_path, progress=False)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(StudyDirectoryError, match="no manifest"):
        build_study(n_reps=4).run(tmp_path, progress=False)


def test_corrupt_and_truncated_chunks_are_recomputed(tmp_path, reference):
    build_study().run(tmp_path, chunk_size=10, progress=False)
    files = sorted((tmp_path / "chunks").glob("c*.parquet"))
    truncated, flipped, misnamed = files[0], files[5], files[7]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    # a valid file (hash matches its name) claiming another replicate range
    victim = files[8]
    wrong = victim.name.replace("-r000000020-000000030-", "-r000000010-000000020-")
    assert wrong != victim.name
    misnamed.unlink()
    (tmp_path / "chunks" / wrong).write_bytes(victim.read_bytes())
    # a temporary file left by a killed writer
    (tmp_path / "chunks" / ".tmp-123-abc.part").write_bytes(b"partial")

    with pytest.warns(CorruptChunkWarning) as caught:
        loaded = load_study(tmp_path, n_reps=30)
        assert len(loaded.missing()) > 0
    assert len(caught) >= 3
    with pytest.warns(CorruptChunkWarning) as caught:
        res = build_study().run(tmp_path, chunk_size=10, progress=False)
    reasons = " ".join(str(w.message) for w in caught)
    assert "content hash" in reasons and "metadata does not match" in reasons
    pd.testing.assert_frame_equal(strip(res.records), strip(reference))
    assert len(list((tmp_path / "chunks").glob("*.corrupt"))) == 3
    assert not list((tmp_path / "chunks").glob(".tmp-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pd.testing.assert_frame_equal(strip(load_study(tmp_path).records), strip(reference))


def test_overlapping_identical_chunks_resume_and_differing_ones_are_refused(tmp_path,
                                                                             reference):
    build_study(n_reps=10).run(tmp_path, chunk_size=5, progress=False)
    directory = StudyDirectory(tmp_path)
    study = build_study(n_reps=10)
    from mlmsim.simstudy.execution import run_chunk

    extra = run_chunk(study._plan(), 0, 3, 8)  # the same records (but seconds) again
    directory.write_chunk(extra, 0, 3, 8, study.definition_hash)
    res = build_study(n_reps=10).run(tmp_path, progress=False)  # resumes, reads one copy
    expected = strip(reference[reference.rep < 10].reset_index(drop=True))
    pd.testing.assert_frame_equal(strip(res.records), expected)
    # a copy whose records differ: which one is right cannot be known
    import pyarrow as pa

    other = run_chunk(study._plan(), 0, 4, 8)
    estimate = other.column("estimate").to_numpy().copy()
    estimate[0] += 1.0
    other = other.set_column(other.column_names.index("estimate"), "estimate",
                             pa.array(estimate))
    changed = directory.write_chunk(other, 0, 4, 8, study.definition_hash)
    with pytest.raises(StudyDirectoryError, match="hold different records") as info:
        build_study(n_reps=10).run(tmp_path, progress=False)
    assert changed.path.name in str(info.value)
    with pytest.raises(StudyDirectoryError, match="hold different records"):
        load_study(tmp_path)


def test_overlapping_chunks_warn_when_loaded(tmp_path, capsys):
    """Chunk files copied in from another run of the same study, so that two files hold
    some replicates: load_study and `mlmsim study report` say how many records repeat
    and which files overlap, and read every replicate once."""
    from mlmsim import cli
    from mlmsim.simstudy.storage import OverlappingChunksWarning

    out, other = tmp_path / "study", tmp_path / "other"
    build_study(n_reps=12).run(out, chunk_size=4, progress=False)
    build_study(n_reps=12).run(other, chunk_size=6, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = load_study(out).records  # no overlap, no warning
    copied = sorted((other / "chunks").glob("c000001-r000000000-*.parquet"))
    assert len(copied) == 1  # condition 1, replicates [0, 6): overlaps [0, 4) and [4, 8)
    (out / "chunks" / copied[0].name).write_bytes(copied[0].read_bytes())
    with pytest.warns(OverlappingChunksWarning) as record:
        loaded = load_study(out)
    rec = loaded.records
    assert len(record) == 1
    message = str(record[0].message)
    key = ["condition", "rep", "method", "parameter"]
    pd.testing.assert_frame_equal(strip(rec), strip(clean))  # each replicate once
    n_dup = len(clean[(clean.condition == 1) & (clean.rep < 6)])
    assert f"{n_dup} records" in message, message
    count = loaded.replicate_count()
    assert (count.duplicated, count.duplicated_records, count.missing) == (6, n_dup, 0)
    names = {p.name for p in (out / "chunks").glob("c000001-*.parquet")}
    overlapping = sorted(n for n in names if "r000000008" not in n)
    assert len(overlapping) == 3 and all(n in message for n in overlapping), message
    # replicates below n_reps only: below 4, only the copied file's [0, 4) repeats
    with pytest.warns(OverlappingChunksWarning, match="records") as record:
        rec4 = load_study(out, n_reps=4).records
    assert not rec4.duplicated(key).any()
    assert f"{len(clean[(clean.condition == 1) & (clean.rep < 4)])} records" in str(
        record[0].message)
    # the command prints the warning as one line, says so at the top, and still reports
    status = cli.main(["study", "report", str(out)])
    captured = capsys.readouterr()
    assert status == 0
    lines = [line for line in captured.err.splitlines() if "duplicated" in line]
    assert len(lines) == 1 and f"{n_dup} records" in lines[0], captured.err
    assert captured.out.splitlines()[0].startswith("INCONSISTENT: 48 of 48 replicates"), \
        captured.out
    assert cli.main(["study", "report", "--strict", str(out)]) != 0


def test_identity_of_callables():
    def f(x, k=1):
        return x + k

    def g(x, k=2):
        return x + k

    assert describe_callable(f) != describe_callable(g)
    scale = 2.0

    def h(x):
        return x * scale

    d1 = digest(h)
    scale = 3.0  # noqa: F841 - the closure sees the new value
    assert digest(h) != d1
    assert digest(np.arange(3)) != digest(np.arange(3.0))


def _load(path: Path, source: str, name: str):
    import importlib.util

    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.k


def test_identity_ignores_comments_and_layout(tmp_path):
    k1 = _load(tmp_path / "a.py", "def k(x):\n    return x + 1  # one\n", "mod_a")
    k2 = _load(tmp_path / "b.py", "def k(x):\n\n    # two\n    return (x + 1)\n", "mod_b")
    k3 = _load(tmp_path / "c.py", "def k(x):\n    return x + 2\n", "mod_c")
    assert digest(k1) == digest(k2)
    assert digest(k1) != digest(k3)
    # without source (exec), the bytecode identifies the function
    ns1, ns2 = {}, {}
    exec(compile("def k(x):\n    return x + 1\n", "<a>", "exec"), ns1)
    exec(compile("def k(x):\n    return x + 2\n", "<b>", "exec"), ns2)
    assert digest(ns1["k"]) != digest(ns2["k"])


def test_sigkill_part_way_then_resume(tmp_path, reference):
    out = tmp_path / "study"
    env = dict(os.environ, MLMSIM_TEST_SLEEP="0.02",
               PYTHONPATH=os.pathsep.join([str(REPO), str(Path(__file__).parent)]))
    code = ("import test_storage as t; "
            f"t.build_study().run({str(out)!r}, chunk_size=3, n_jobs=1, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if out.exists() and len(list((out / "chunks").glob("c*.parquet"))) >= 4:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = list((out / "chunks").glob("c*.parquet"))
    assert 4 <= len(done) < 4 * 10  # killed part-way: 4 conditions x 10 chunks in all
    res = build_study().run(out, chunk_size=3, progress=False)
    rec = res.records
    assert not rec.duplicated(["condition", "rep", "method", "parameter"]).any()
    assert res.missing().empty
    assert not list((out / "chunks").glob(".tmp-*"))
    assert rec.drop_duplicates(["condition", "rep"]).shape[0] == 4 * 30
    pd.testing.assert_frame_equal(strip(rec), strip(reference))
    # the files written before the kill were kept, not recomputed
    assert {p.name for p in done} <= {p.name for p in (out / "chunks").glob("c*.parquet")}


# Reading then exiting at once, in fresh processes. pq.read_table (Arrow's dataset scanner)
# left work on Arrow's thread pools after it returned, and a process that exited right
# after a read died of SIGABRT now and then ("terminate called without an active
# exception"; about 1 run in 40 on the reader alone). The reader alone is
# mlmsim/simstudy/storage.py loaded by its path (it imports no other part of mlmsim), so a
# process starts in under a second; the slow tests also run the whole package.
READ_AND_EXIT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("storage", sys.argv[1])
storage = importlib.util.module_from_spec(spec)
sys.modules["storage"] = storage
spec.loader.exec_module(storage)
d = storage.StudyDirectory(sys.argv[2])
for chunk in d.chunk_files():
    d.read_chunk(chunk)
"""
LOAD_AND_EXIT = ("import sys; from mlmsim.simstudy import load_study; "
                 "load_study(sys.argv[1]).records")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("exit") / "study"
    build_study().run(out, chunk_size=3, progress=False)
    return out


def _failed_exits(code: str, args: list[str], runs: int) -> list[str]:
    """Run ``python -c code *args`` ``runs`` times; the exit status and stderr of each run
    that did not exit with 0."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    failed = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code, *args], env=env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            failed.append(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return failed


def test_reading_chunks_then_exiting_never_aborts(study_dir):
    storage = REPO / "mlmsim" / "simstudy" / "storage.py"
    assert len(list((study_dir / "chunks").glob("c*.parquet"))) == 40
    assert _failed_exits(READ_AND_EXIT, [str(storage), str(study_dir)], 16) == []


@pytest.mark.slow
def test_reading_chunks_then_exiting_never_aborts_300_runs(study_dir):
    storage = REPO / "mlmsim" / "simstudy" / "storage.py"
    assert _failed_exits(READ_AND_EXIT, [str(storage), str(study_dir)], 300) == []


@pytest.mark.slow
def test_load_study_records_then_exiting_never_aborts_30_runs(study_dir):
    assert _failed_exits(LOAD_AND_EXIT, [str(study_dir)], 30) == []
