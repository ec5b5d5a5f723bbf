"""The warm-up helper of mlmsim.engine.compiled: while a fit compiles its optimiser, a
second process compiles the kernels that follow into numba's cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlmsim.engine import compiled

# A cold cache (a fresh NUMBA_CACHE_DIR): a REML fit with a random slope (q = 2), its
# Satterthwaite and Kenward-Roger df, and an unbounded fit (phi_many); then what numba
# says of each kernel the helper compiles, and the estimates, as exact reprs.
_FIT = """
import json, sys
import numpy as np, pandas as pd
import mlmsim
from mlmsim.engine import compiled
rng = np.random.default_rng(4)
g = np.repeat(np.arange(12), 6)
x = rng.normal(size=72)
y = 1 + 0.5 * x + rng.normal(size=12)[g] + 0.3 * rng.normal(size=12)[g] * x \
    + rng.normal(size=72)
data = pd.DataFrame({"y": y, "x": x, "g": g})
f = mlmsim.fit("y ~ x + (1 + x | g)", data)
u = mlmsim.fit("y ~ x + (1 + x | g)", data, bounded=False)
out = {"stats": {d.py_func.__name__: [sum(d.stats.cache_hits.values()),
                                      sum(d.stats.cache_misses.values())]
                 for d in compiled._AFTER_OPTIMISER},
       "lock": compiled._lock_path().exists(),
       "params": [repr(float(v)) for v in list(f.params) + list(u.params)],
       "df": [repr(float(v)) for v in list(f.ddf("satterthwaite"))
              + list(f.ddf("kenward-roger"))]}
print(json.dumps(out))
"""


def _cold_fit(tmp_path, **env) -> dict:
    """_FIT in a fresh process with an empty numba cache, run from a folder that holds
    another package named mlmsim (as the repository holds one when the README's command
    runs there): the helper must compile the package the fit imported, not that one."""
    cache, decoy = tmp_path / "numba-cache", tmp_path / "mlmsim"
    cache.mkdir(parents=True)
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the package in the cwd')\n")
    root = str(Path(compiled.__file__).resolve().parents[2])
    run = subprocess.run([sys.executable, "-P", "-c", _FIT], capture_output=True, text=True,
                         env={**os.environ, "NUMBA_CACHE_DIR": str(cache),
                              "PYTHONPATH": root, **env},
                         cwd=tmp_path, timeout=900, check=False)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_a_cold_first_fit_loads_what_the_helper_compiled(tmp_path):
    """Every kernel after the optimiser comes from the cache the helper filled (a hit, no
    miss): its signatures are those the engine calls with. The lock is gone after."""
    out = _cold_fit(tmp_path)
    for name, (hits, misses) in out["stats"].items():
        assert misses == 0, f"{name} was compiled by the fit itself"
        assert hits >= 1, f"{name} was not loaded from the cache"
    assert not out["lock"]


@pytest.mark.slow
def test_the_helper_changes_no_digit(tmp_path):
    """The same fits with the helper turned off (every kernel compiled in the fitting
    process) give the same estimates and df, bit for bit."""
    with_helper = _cold_fit(tmp_path / "a")
    without = _cold_fit(tmp_path / "b", **{compiled.NO_WARM_UP: "1"})
    assert all(h == 0 for h, _ in without["stats"].values())   # it compiled them itself
    assert with_helper["params"] == without["params"]
    assert with_helper["df"] == without["df"]


def test_a_lock_of_a_dead_helper_or_too_old_is_removed(tmp_path):
    lock = tmp_path / "l"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(str(dead.pid))
    assert not compiled._held(lock)
    assert not lock.exists()
    lock.write_text(str(os.getpid()))                 # alive: held
    assert compiled._held(lock)
    old = time.time() - compiled._STALE - 1
    os.utime(lock, (old, old))                        # alive, but left behind long ago
    assert not compiled._held(lock)
    assert not lock.exists()
    lock.write_text("")                               # being written by its starter
    assert compiled._held(lock)
    lock.write_text("not a pid")                      # garbage: left behind, not a crash
    assert not compiled._held(lock)
    assert not lock.exists()


def test_one_helper_at_a_time(tmp_path, monkeypatch):
    started = []

    class Proc:
        pid = os.getpid()

        def __init__(self, argv, **kw):
            started.append(argv)

        def poll(self):
            return None

    monkeypatch.setattr(compiled.subprocess, "Popen", Proc)
    monkeypatch.setattr(compiled, "_helpers", [])
    lock = tmp_path / "l"
    compiled._start_helper(2, lock)
    assert len(started) == 1 and started[0][-2:] == ["2", str(lock)]
    assert lock.read_text() == str(os.getpid())       # the helper's pid
    compiled._start_helper(2, lock)                   # held: no second helper
    assert len(started) == 1


def test_a_process_with_its_kernels_compiled_does_not_wait(tmp_path, monkeypatch):
    lock = tmp_path / "l"
    lock.write_text(str(os.getpid()))                 # a live helper holds it

    class Compiled:
        signatures = ["sig"]

    class Uncompiled:
        signatures = []

    def no_sleep(seconds):
        raise AssertionError("waited")

    monkeypatch.setattr(compiled.time, "sleep", no_sleep)
    compiled._await_helper(lock, [Compiled()])       # returns without waiting
    assert lock.exists()
    with pytest.raises(AssertionError, match="waited"):
        compiled._await_helper(lock, [Compiled(), Uncompiled()])
