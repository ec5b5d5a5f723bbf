"""One writer per study directory: a second run is refused at once, naming the holder; a
run killed with SIGKILL leaves no lock behind, and the next run resumes to the records of
an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from mlmsim.simstudy import StudyDirectoryError, load_study
from mlmsim.simstudy.storage import LOCK, StudyDirectory, StudyLockedError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parents[1]

# A runner in a fresh process: the study of test_storage (4 conditions x 30
# replicates, MLMSIM_TEST_SLEEP seconds per replicate), started when the file GO exists,
# so that two runners reach Study.run together. It prints one JSON line: what happened and
# how long run() took.
RUNNER = textwrap.dedent("""
    import json, os, sys, time
    import test_storage as t
    from mlmsim.simstudy import StudyDirectoryError
    out, go = sys.argv[1], sys.argv[2]
    study = t.build_study()
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    t0 = time.monotonic()
    try:
        study.run(out, chunk_size=3, n_jobs=1, progress=False)
    except StudyDirectoryError as exc:
        print(json.dumps({"refused": str(exc), "seconds": time.monotonic() - t0}), flush=True)
        sys.exit(3)
    print(json.dumps({"ran": True, "seconds": time.monotonic() - t0}), flush=True)
""")


def start_runner(out: Path, go: Path, sleep: float) -> subprocess.Popen:
    env = dict(os.environ, MLMSIM_TEST_SLEEP=str(sleep),
               PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(out), str(go)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stderr.read()


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference():
    import test_storage as t

    return t.build_study().run(progress=False).records


def strip(records: pd.DataFrame) -> pd.DataFrame:
    return records.drop(columns="seconds")


def test_two_runners_together_one_runs_one_is_refused_at_once(tmp_path, reference):
    out, go = tmp_path / "study", tmp_path / "go"
    procs = [start_runner(out, go, sleep=0.01) for _ in range(2)]
    try:
        for proc in procs:
            wait_ready(proc)
        go.touch()
        results = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            results.append((proc, json.loads(stdout.strip().splitlines()[-1]), stderr))
    finally:
        stop(*procs)
    codes = sorted(proc.returncode for proc, _, _ in results)
    assert codes == [0, 3], results
    (winner, ran, _), = [r for r in results if r[0].returncode == 0]
    (_, refused, _), = [r for r in results if r[0].returncode == 3]
    message = refused["refused"]
    assert "\n" not in message
    assert f"pid {winner.pid}" in message and socket.gethostname() in message, message
    assert ran["seconds"] > refused["seconds"]  # refused while the winner ran: no waiting
    print(f"runner pid {winner.pid} ran {ran['seconds']:.2f} s; the other was refused after "
          f"{refused['seconds'] * 1e3:.1f} ms: {message}")
    # the directory holds each replicate once: 4 conditions x 10 chunks of 3 replicates
    assert len(list((out / "chunks").glob("c*.parquet"))) == 4 * 10
    rec = load_study(out).records
    assert not rec.duplicated(["condition", "rep", "method", "parameter"]).any()
    pd.testing.assert_frame_equal(strip(rec), strip(reference))
    assert load_study(out, n_reps=30).missing().empty
    # a finished run leaves no holder named in the lock file
    assert StudyDirectory(out).lock_path.read_text() == ""


def test_sigkill_of_the_holder_never_blocks_the_next_run(tmp_path, reference):
    import test_storage as t

    out, go = tmp_path / "study", tmp_path / "go"
    go.touch()
    proc = start_runner(out, go, sleep=0.02)
    try:
        wait_ready(proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(list((out / "chunks").glob("c*.parquet"))) >= 4:
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read()
        # while it runs, the lock file names it and a run in this process is refused
        holder = json.loads((out / LOCK).read_text())
        assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()
        with pytest.raises(StudyLockedError, match=f"pid {proc.pid} on host"):
            t.build_study().run(out, chunk_size=3, progress=False)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL   # refused while the holder ran: no waiting
    done = {p.name for p in (out / "chunks").glob("c*.parquet")}
    assert 4 <= len(done) < 4 * 10
    # the dead holder's name is still in the file, but its lock died with it
    assert json.loads((out / LOCK).read_text())["pid"] == proc.pid
    res = t.build_study().run(out, chunk_size=3, progress=False)
    rec = res.records
    assert res.missing().empty
    assert not rec.duplicated(["condition", "rep", "method", "parameter"]).any()
    pd.testing.assert_frame_equal(strip(rec), strip(reference))
    assert done <= {p.name for p in (out / "chunks").glob("c*.parquet")}  # kept, resumed


def test_lock_in_process(tmp_path):
    import test_storage as t

    directory = StudyDirectory(tmp_path / "study")
    with directory.writing():
        holder = json.loads(directory.lock_path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["started"]
        other = StudyDirectory(tmp_path / "study")
        with pytest.raises(StudyLockedError, match=f"pid {os.getpid()} on host") as info:
            with other.writing():
                pass
        assert isinstance(info.value, StudyDirectoryError) and isinstance(info.value, ValueError)
        assert "\n" not in str(info.value)
        with pytest.raises(StudyLockedError):
            t.build_study(n_reps=3).run(directory.path, progress=False)
        # the refused run wrote nothing
        assert not list(directory.path.glob("chunks/c*.parquet"))
    # released at the end of the block, and again on an error inside it
    with pytest.raises(RuntimeError), directory.writing():
        raise RuntimeError("inside")
    with directory.writing():
        pass
    t.build_study(n_reps=3).run(directory.path, progress=False)
    assert load_study(directory.path, n_reps=3).missing().empty
