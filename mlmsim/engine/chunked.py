"""Simulations in independent chunks: reproducible from one seed, in parallel.

A run of ``n`` simulations is cut into chunks of a fixed size; chunk i draws from the
i-th child of ``SeedSequence(rng)``. The results are therefore the same for any number
of workers, and chunks run in parallel with joblib when ``n_jobs`` != 1, with a progress
bar (or a line every few seconds off a terminal) when there is more than one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlmsim.progress import progress_reporter

__all__ = ["CHUNK", "seeds", "check_nsim", "chunk_sizes", "run_chunks"]

CHUNK = 250
"""Simulations per chunk: per batched pass of the compiled kernels and per parallel task
(bootstrap refits, power replicates)."""


def seeds(rng, n: int) -> list[np.random.SeedSequence]:
    """``n`` child SeedSequences of ``rng`` (a Generator, SeedSequence, int or None)."""
    if isinstance(rng, np.random.Generator):
        root = np.random.SeedSequence(rng.integers(0, 2**63))
    elif isinstance(rng, np.random.SeedSequence):
        root = rng
    else:
        root = np.random.SeedSequence(rng)
    return root.spawn(n)


def check_nsim(n) -> int:
    """``n`` as the number of simulations: a positive integer, else a ValueError."""
    if isinstance(n, bool) or not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"nsim (the number of simulations) must be a positive integer, got "
                         f"{n!r}")
    return int(n)


def chunk_sizes(n: int, size: int = CHUNK) -> list[int]:
    """``n`` split into chunks of ``size`` (the last one smaller)."""
    n = check_nsim(n)
    return [min(size, n - i) for i in range(0, n, size)]


def run_chunks(task: Callable[..., Any], sizes: Sequence[int], rng, *, n_jobs: int = 1,
               progress: bool | None = None, label: str = "simulations",
               args: tuple = ()) -> list:
    """``[task(*args, seed_i, size_i) for each chunk i]`` in chunk order, in parallel with
    ``n_jobs`` joblib workers (``task`` and ``args`` must pickle)."""
    ss = seeds(rng, len(sizes))
    total = int(sum(sizes))
    bar = progress_reporter(total, 0, progress if len(sizes) > 1 else False, label)
    out = []
    try:
        if n_jobs == 1 or len(sizes) == 1:
            for s, k in zip(ss, sizes, strict=True):
                out.append(task(*args, s, k))
                bar.update(k)
        else:
            from joblib import Parallel, delayed

            par = Parallel(n_jobs=n_jobs, return_as="generator")
            for k, part in zip(sizes, par(delayed(task)(*args, s, k)
                                          for s, k in zip(ss, sizes, strict=True)),
                               strict=True):
                out.append(part)
                bar.update(k)
    finally:
        bar.close()
    return out
