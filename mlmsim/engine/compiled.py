"""Whether numba's on-disk cache already holds the engine's compiled kernels.

The kernels are compiled by numba on their first call and cached on disk
(``cache=True``, in ``__pycache__`` beside the modules or under ``NUMBA_CACHE_DIR``). The
first fit after an install therefore waits for the compiler (:data:`FIRST_COMPILE`),
later processes load the machine code in about a second. :func:`kernels_cached` lets a
run say so before it starts, instead of sitting silent.

It reads numba's cache index of the kernels every fit calls (the Newton optimiser and
the estimates pass); the index is numba's own record, keyed by the source file's
modification time and size, so an edited or reinstalled module counts as not cached.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["FIRST_COMPILE", "compile_note", "kernels_cached"]

#: what the first fit's compilation costs on a 2-core machine (measured: see the README)
FIRST_COMPILE = "about 45 s on 2 cores"

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
