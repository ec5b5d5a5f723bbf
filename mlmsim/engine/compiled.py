"""Whether numba's on-disk cache already holds the engine's compiled kernels.

The kernels are compiled by numba on their first call and cached on disk
(``cache=True``, in ``__pycache__`` beside the modules or under ``NUMBA_CACHE_DIR``). The
first fit after an install therefore waits for the compiler (:data:`FIRST_COMPILE`),
later processes load the machine code in about a second. :func:`kernels_cached` lets a
run say so before it starts, instead of sitting silent.

It reads numba's cache index of the kernels every fit calls (the Newton optimiser and
the estimates pass); the index is numba's own record, keyed by the source file's
modification time and size, so an edited or reinstalled module counts as not cached.

Those two kernels take about the same time to compile and a fit calls them one after the
other, so a run on a fresh install can compile them side by side:
:func:`start_estimates_compiler` starts a process that compiles (and caches) the
estimates pass for q = 2 and then q = 1 (:func:`compile_estimates`) while the run itself
compiles the optimiser; when the run reaches the estimates pass, numba loads it from the
cache (measured: the README's quick study 44 -> S s after the install, 2 cores).
"""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

__all__ = ["FIRST_COMPILE", "compile_estimates", "compile_note", "kernels_cached",
           "start_estimates_compiler"]

#: what the first fit's compilation costs on a 2-core machine (measured: see the README)
FIRST_COMPILE = "about 20 to 45 s on 2 cores"

#: the kernels every fit calls, as (module, function)
_ENTRY_POINTS = (("mlmsim.engine.newton", "minimize_many"),
                 ("mlmsim.engine.kernels", "estimates_many"))


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
    return all(_has_cached_code(getattr(import_module(module), name))
               for module, name in _ENTRY_POINTS)


def compile_note() -> str | None:
    """The line to print before a first fit, or None when the kernels are cached."""
    if kernels_cached():
        return None
    return (f"numba's cache holds no compiled mlmsim kernels yet: the first fit compiles "
            f"them, once ({FIRST_COMPILE}); later runs load them from the cache")


def compile_estimates(q: int) -> None:
    """Compile (and cache) the estimates pass for q random effects, without the optimiser:
    it is evaluated once at theta = 1 on tiny data built as a fit builds its arrays, so
    numba compiles the signature every fit of q random effects calls."""
    import numpy as np

    from mlmsim.engine.control import FitControl
    from mlmsim.engine.deviance import ThetaMap
    from mlmsim.engine.estimates import estimates
    from mlmsim.engine.inference import CovStructure
    from mlmsim.engine.optimize import OptResult
    from mlmsim.engine.stats import centred_group_stats

    rng = np.random.default_rng(0)
    J, n = 6, 4
    codes = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    X = np.column_stack([np.ones(J * n), x])
    Z = np.column_stack([np.ones(J * n), x, x**2][:q])[:, :q] if q <= 3 else \
        rng.normal(size=(J * n, q))
    y = rng.normal(size=(1, J * n))
    stats, _ = centred_group_stats(y, X, Z, codes, J)
    blocks = (tuple(range(q)),)
    tmap, cs = ThetaMap.from_blocks(q, blocks), CovStructure.from_blocks(q, blocks)
    k = tmap.size
    opt = OptResult(np.ones((1, k)), np.zeros(1), np.zeros((1, k)), np.eye(k)[None],
                    np.zeros(1, dtype=np.int64), np.ones(1, dtype=bool),
                    np.zeros((1, 6), dtype=np.int64), FitControl())
    estimates(stats.select(np.arange(1)), tmap, cs, opt, True)


def start_estimates_compiler() -> subprocess.Popen | None:
    """Start :func:`compile_estimates` for q = 2, then q = 1, in a process of its own
    (output discarded), or None when the kernels are cached already. The caller stops it
    when its run ends (:meth:`subprocess.Popen.terminate`): numba writes each cache file
    whole, so a stopped compiler leaves nothing half-written that a later run would read."""
    if kernels_cached():
        return None
    code = ("from mlmsim.engine.compiled import compile_estimates\n"
            "compile_estimates(2)\ncompile_estimates(1)\n")
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:  # no second process: the run compiles everything itself
        return None
