"""Workers end with their parent: after SIGKILL of a run with n_jobs=2 (loky), no worker
(nor loky's resource tracker) is alive 10 s later."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RUN = textwrap.dedent("""
    import sys, time
    import numpy as np
    from mlmsim.simstudy import Study

    def slow(cond, rng):
        time.sleep(0.05)
        return rng.normal(size=5)

    def mean(x):
        return {"m": float(np.mean(x))}

    if __name__ == "__main__":
        Study({"k": [1, 2]}, slow, {"m": mean}, n_reps=2000, seed=1).run(
            sys.argv[1], n_jobs=2, chunk_size=10, progress=False)
""")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry)] = (int(fields[1]), fields[0])
    return out


def _descendants(pid: int, table: dict[int, tuple[int, str]]) -> list[int]:
    kids = [p for p, (parent, _) in table.items() if parent == pid]
    return kids + [d for k in kids for d in _descendants(k, table)]


@pytest.mark.skipif(not Path("/proc").is_dir() or sys.platform != "linux",
                    reason="reads /proc")
def test_loky_workers_end_within_10_s_of_a_killed_parent(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until both workers have written chunks
            chunks = list((tmp_path / "out" / "chunks").glob("c*.parquet")) \
                if (tmp_path / "out" / "chunks").exists() else []
            workers = _descendants(parent.pid, _processes())
            if len(chunks) >= 4 and len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the run did not start its workers"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        alive = workers
        while alive and time.monotonic() - killed < 10:
            time.sleep(0.2)
            table = _processes()
            alive = [p for p in workers if p in table and table[p][1] != "Z"]
        seconds = time.monotonic() - killed
        assert not alive, f"still alive {seconds:.1f} s after the parent was killed: {alive}"
        print(f"every worker ended {seconds:.1f} s after the parent was killed")
    finally:
        if parent.poll() is None:
            parent.kill()
        table = _processes()
        for p in workers:
            if p in table:
                os.kill(p, signal.SIGKILL)
