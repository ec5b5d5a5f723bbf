"""Numba's on-disk cache of the engine's kernels: whether it holds them, and filling it
on two cores at once.

The kernels are compiled by numba on their first call and cached on disk
(``cache=True``, in ``__pycache__`` beside the modules or under ``NUMBA_CACHE_DIR``). The
first fit after an install therefore waits for the compiler (:data:`FIRST_COMPILE`),
later processes load the machine code in about a second. :func:`kernels_cached` lets a
run say so before it starts, instead of sitting silent; it reads numba's cache index of
the kernels every fit calls (the Newton optimiser and the estimates pass), numba's own
record, keyed by the source file's modification time and size, so an edited or
reinstalled module counts as not cached.

A fit compiles two halves one after the other: the optimiser (``minimize_many``, about
14 s on one core of the reference machine) and then what is read out at the optimum
(``estimates_many``, ``dependence_screen``, ``acov_many``) and the pass in phi
(``phi_many``, for unbounded fits, Kenward-Roger and profiles), together about 20 s.
The second half does not depend on the first's results, only on the types of its
arguments, which are fixed but for the number q of random effects. So
:func:`compiling_alongside`, wrapped around the optimiser's first call, starts a second
process that compiles the second half from those type signatures (it runs nothing) into
numba's cache, while this process compiles the optimiser; afterwards this process waits
for it and loads the kernels from the cache. The machine code is numba's own for the
same signatures, so results are identical with or without the helper; if the helper
fails, the fit compiles the kernels itself, as without it. A lock file in numba's cache
directory (holding the helper's process id) keeps to one helper at a time, and lets
other processes that need the same kernels (a study's parallel workers) wait for it
rather than compile them again. ``MLMSIM_NO_WARM_UP=1`` turns the helper off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numba import typeof

from mlmsim.engine import kernels, newton, phi_kernel, sums
from mlmsim.engine.gls import Stats, qtoken

__all__ = ["FIRST_COMPILE", "compile_note", "kernels_cached", "compiling_alongside",
           "warm_up"]

#: what the first fit's compilation costs on a 2-core machine (measured: see the README)
FIRST_COMPILE = "about 25 s on 2 cores"

#: the kernels every fit calls
_ENTRY_POINTS = (newton.minimize_many, kernels.estimates_many)

#: the kernels the helper compiles, in the order a fit first calls them
_AFTER_OPTIMISER = (kernels.estimates_many, sums.dependence_screen, kernels.acov_many,
                    phi_kernel.phi_many)

#: the environment variable that turns the helper off
NO_WARM_UP = "MLMSIM_NO_WARM_UP"
#: seconds after which a lock file counts as left behind, whatever it says
_STALE = 900.0
#: seconds a fit waits for the helper at most
_PATIENCE = 600.0
_LOCK_NAME = "mlmsim-warm-up.lock"
#: the helper's program
_HELPER = "import sys; from mlmsim.engine.compiled import warm_up; warm_up(*sys.argv[1:])"

#: the q whose warm-up this process has considered (the kernels are per process)
_considered: set[int] = set()
#: the helper processes this process started, to be reaped
_helpers: list[subprocess.Popen] = []


def _has_cached_code(dispatcher) -> bool:
    """Whether numba's cache index for ``dispatcher`` lists at least one compiled
    signature whose source stamp matches the module as it is now."""
    cache = getattr(dispatcher, "_cache", None)
    index_file = getattr(cache, "_cache_file", None)
    load = getattr(index_file, "_load_index", None)
    if load is None:  # not cached, or numba's internals changed: nothing to say
        return True
    try:
        return len(load()) > 0
    except Exception:  # an unreadable index: numba recompiles
        return False


def kernels_cached() -> bool:
    """True when numba's cache holds every entry kernel (so the next fit compiles nothing
    of them); True also when the cache cannot be inspected, so no false message is
    printed."""
    return all(_has_cached_code(d) for d in _ENTRY_POINTS)


def compile_note() -> str | None:
    """The line to print before a first fit, or None when the kernels are cached."""
    if kernels_cached():
        return None
    return (f"numba's cache holds no compiled mlmsim kernels yet: the first fit compiles "
            f"them, once ({FIRST_COMPILE}); later runs load them from the cache")


def _signatures(q: int) -> list[tuple[object, tuple]]:
    """(dispatcher, argument types) of each kernel in ``_AFTER_OPTIMISER``, as a fit with
    q random effects calls it: the types of small arrays of the dtypes and dimensions the
    engine passes (:func:`mlmsim.engine.stats.flat_arrays`, :func:`kernel_array`)."""
    f = [np.zeros((1,) * d) for d in range(5)]
    i1, i2 = np.zeros(1, dtype=np.int64), np.zeros((1, 1), dtype=np.int64)
    st = Stats(f[4], f[4], f[3], f[3], f[2], f[1], f[1], i2)
    qc = qtoken(q)
    args = ((f[2], st, i1, i1, i1, i1, True, f[2], f[3], True, qc),  # estimates_many
            (f[4], i2),                                                # dependence_screen
            (f[3],),                                                   # acov_many
            (st, i1, i1, f[2], True, True, 0, qc))                     # phi_many
    return [(d, tuple(typeof(a) for a in a_)) for d, a_ in zip(_AFTER_OPTIMISER, args,
                                                                 strict=True)]


def _lock_path() -> Path | None:
    """The lock file beside numba's cache of the kernels (None: not cached on disk)."""
    cache = getattr(_AFTER_OPTIMISER[0], "_cache", None)
    path = getattr(cache, "_cache_path", None)
    return None if path is None else Path(path) / _LOCK_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _held(lock: Path) -> bool:
    """Whether ``lock`` exists and its helper is still at work; removes a lock left by a
    helper that died, or older than ``_STALE``."""
    try:
        text = lock.read_text().strip()
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False
    # empty: its starter is writing the pid; anything but a pid: left behind
    if age < _STALE and (not text or (text.isdigit() and _alive(int(text)))):
        return True
    lock.unlink(missing_ok=True)
    return False


def _start_helper(q: int, lock: Path) -> None:
    """Take ``lock`` and start the helper that compiles ``_AFTER_OPTIMISER`` for q; does
    nothing when another helper holds the lock."""
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if _held(lock):
                return
        except OSError:  # the cache directory is not writable: numba will say so
            return
    else:
        return
    # the helper must compile this very package (numba's cache is per source file): its
    # root first on the path, and not the working directory (-P), which may hold a
    # checkout of another version (as when the README's command runs in the repository)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen([sys.executable, "-P", "-c", _HELPER, str(q), str(lock)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    except OSError:
        os.close(fd)
        lock.unlink(missing_ok=True)
        return
    os.write(fd, str(proc.pid).encode())
    os.close(fd)
    _helpers.append(proc)


def _await_helper(lock: Path, wanted: list) -> None:
    """Wait while a helper holds ``lock`` and this process has not compiled every kernel
    in ``wanted`` itself; reap the helpers this process started once they are done."""
    deadline = time.monotonic() + _PATIENCE
    waiting = any(not d.signatures for d in wanted)
    while True:
        _reap()
        if not (waiting and _held(lock) and time.monotonic() < deadline):
            return
        time.sleep(0.05)


def _reap() -> None:
    """Collect the exit of the helpers this process started (a helper that has exited but
    is not collected still counts as alive to :func:`_alive`)."""
    for proc in [p for p in _helpers if p.poll() is not None]:
        _helpers.remove(proc)


@contextmanager
def compiling_alongside(q: int) -> Iterator[None]:
    """Around the first call of the optimiser for q random effects in a process whose
    numba cache lacks the kernels that come after it: a helper process compiles those
    into the cache meanwhile (module docstring), and on leaving this waits for it. Does
    nothing else (and costs a set lookup) on later calls."""
    if q in _considered:
        yield
        return
    _considered.add(q)
    wanted = list(_AFTER_OPTIMISER)
    lock = _lock_path()
    if (lock is not None and os.environ.get(NO_WARM_UP) is None
            and not all(_has_cached_code(d) for d in wanted)):
        _start_helper(q, lock)
    try:
        yield
    finally:
        if lock is not None:
            _await_helper(lock, wanted)


def warm_up(q: int | str, lock: str | Path | None = None) -> None:
    """What the helper runs: compile (and so cache) the kernels that follow the optimiser
    for q random effects, then remove ``lock`` (if given)."""
    try:
        for dispatcher, sig in _signatures(int(q)):
            dispatcher.compile(sig)
    finally:
        if lock is not None:
            Path(lock).unlink(missing_ok=True)
