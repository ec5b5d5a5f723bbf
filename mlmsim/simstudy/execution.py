"""Running a study's replicates: one chunk in a worker, and chunks across workers.

A chunk is (condition, start, stop): replicates [start, stop) of one condition, and one
task and one file. :func:`run_chunk` computes its records from the :class:`Plan` alone
(the same records in any process: seeds come from the replicate's number), so
:func:`execute` may run chunks in any order on any backend: in this process, in joblib's
loky workers (each ends when its parent does, :func:`watch_parent`) or on a
``dask.distributed`` cluster. :func:`chunk_tasks` splits what is left to do into chunks.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mlmsim.simstudy.conditions import Condition
from mlmsim.simstudy.protocols import DrawsArrays, MethodEntry, TakesArrays, batch_spec
from mlmsim.simstudy.records import RecordBuffer, error_text
from mlmsim.simstudy.seeds import method_rng, replicate_rngs, replicate_seeds

__all__ = ["MAX_CHUNK", "Plan", "chunk_tasks", "execute", "n_workers", "run_chunk",
           "watch_parent"]

#: the most replicates in one chunk (one task, one file)
MAX_CHUNK = 10_000
_NAN = float("nan")


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to compute the records of any chunk (pickled once per task)."""

    root: int
    conditions: tuple[Condition, ...]
    cond_schema: pa.Schema
    generate: Callable
    methods: tuple[MethodEntry, ...]
    truths: tuple[dict[str, float], ...]


def _warning_texts(log: list, start: int) -> list[str]:
    texts = [f"{w.category.__name__}: {w.message}" for w in log[start:]]
    del log[start:]
    return texts


def run_chunk(plan: Plan, condition: int, start: int, stop: int) -> pa.Table:
    """Records of replicates [start, stop) of one condition, as an Arrow table.

    For each replicate r with seed s = seed(condition, r): data = generate(condition,
    default_rng(s)); then every method on data (method k with its own stream if it asks
    for one). Exceptions are recorded, never raised; warnings become messages.

    One loop for every study: the replicates go in consecutive blocks of the largest
    batched method's ``batch_size`` (the chunk, when a batched method has none); a study
    without batched methods is a study of blocks of one, so only one data set is held at
    a time. Where the blocks fall changes no record (the promise of
    :class:`~mlmsim.simstudy.protocols.BatchedMethod`).
    """
    cond = plan.conditions[condition]
    seeds = replicate_seeds(plan.root, condition, np.arange(start, stop))
    rec = RecordBuffer(condition, cond, plan.cond_schema, plan.truths[condition],
                       [m.name for m in plan.methods])
    batched = [batch_spec(m) for m in plan.methods]
    sizes = [spec[1] for spec in batched if spec is not None]
    block = (max(sizes) if all(sizes) else stop - start) if sizes else 1
    # the generator's arrays straight to the methods when every method takes them
    draw = plan.generate
    if (sizes and isinstance(draw, DrawsArrays)
            and all(isinstance(m.fn, TakesArrays) and m.fn.takes_sim_batch
                    for m in plan.methods)):
        draw = draw.draw
    rngs = replicate_rngs(seeds)  # built in bulk, used one block at a time
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        a = start
        while a < stop:
            b = min(stop, a + block)
            _run_block(plan, draw, cond, seeds[a - start:b - start], rngs, rec, batched, log,
                       offset=a - start)
            a = b
    return rec.table(start, seeds)


def _merge(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    if a and b:
        return a + b
    return a or b


def _run_block(plan: Plan, draw: Callable, cond: Condition, seeds: np.ndarray,
               rngs: Iterator[np.random.Generator], rec: RecordBuffer,
               batched: list[tuple | None], log: list, offset: int = 0) -> None:
    """A block of replicates (seeds ``seeds``, their streams the next of
    ``rngs``): draw all (``draw``: the generator, or its arrays), fit each method
    (batched where it can), record in replicate order (at ``offset`` within the chunk).

    A batched method gets the replicates whose generation succeeded, in consecutive
    batches of its ``batch_size`` (all of them without one). A batch that raises, or
    returns the wrong number of results, is fitted one replicate at a time.
    """
    clock = time.perf_counter
    n = len(seeds)
    datas: list[Any] = [None] * n
    gen_error: dict[int, str] = {}
    gen_notes: list[list[str] | None] = [None] * n
    for i in range(n):
        rng = next(rngs)
        try:
            datas[i] = draw(cond, rng)
        except Exception as exc:  # noqa: BLE001
            gen_error[i] = f"generate: {error_text(exc)}"
        gen_notes[i] = [f"generate: {t}" for t in _warning_texts(log, 0)] if log else None
    ok = [i for i in range(n) if i not in gen_error]
    # outcomes[k][i] = (result or exception, seconds, notes)
    outcomes: list[list[tuple | None]] = []
    for k, m in enumerate(plan.methods):
        column: list[tuple | None] = [None] * n
        spec = batched[k]
        singles = list(ok)
        if spec is not None and ok:
            fit_batch, size = spec
            singles = []
            step = size or len(ok)
            blocks = [ok[a:a + step] for a in range(0, len(ok), step)]
            for block in blocks:
                t0 = clock()
                try:
                    results = list(fit_batch([datas[i] for i in block]))
                    if len(results) != len(block):
                        raise ValueError(f"fit_batch returned {len(results)} results for "
                                         f"{len(block)} data sets")
                except Exception:  # noqa: BLE001 - fall back to fitting one at a time
                    _warning_texts(log, 0)
                    singles.extend(block)
                    continue
                seconds = (clock() - t0) / len(block)
                notes = _warning_texts(log, 0) if log else None
                for i, r in zip(block, results, strict=True):
                    column[i] = (r, seconds, notes)
        for i in sorted(singles):
            t0 = clock()
            try:
                r = m.fn(datas[i], method_rng(seeds[i], k)) if m.takes_rng else m.fn(datas[i])
            except Exception as exc:  # noqa: BLE001
                r = exc
            column[i] = (r, clock() - t0, _warning_texts(log, 0) if log else None)
        outcomes.append(column)
    datas.clear()
    for i in range(n):
        for k in range(len(plan.methods)):
            if i in gen_error:
                rec.error(offset + i, k, gen_error[i], _NAN, gen_notes[i])
                continue
            r, seconds, notes = outcomes[k][i]
            notes = _merge(gen_notes[i], notes)
            if isinstance(r, BaseException):
                rec.error(offset + i, k, f"method: {error_text(r)}", seconds, notes)
            else:
                rec.ok(offset + i, k, r, seconds, notes)


def _run_task(plan: Plan, task: tuple[int, int, int]) -> tuple[tuple[int, int, int], pa.Table]:
    return task, run_chunk(plan, *task)


def _run_watched_task(plan: Plan, task: tuple[int, int, int], parent: int
                      ) -> tuple[tuple[int, int, int], pa.Table]:
    """:func:`_run_task` in a loky worker, which first makes sure it ends with ``parent``
    (:func:`watch_parent`; also installed as the executor's initializer)."""
    watch_parent(parent)
    return _run_task(plan, task)


_WATCHDOG = "mlmsim-parent-watchdog"
_WATCH_INTERVAL = 0.5  # seconds between looks at the parent


def watch_parent(parent: int) -> None:
    """End this process (``os._exit``) within about half a second of ``parent`` ending.

    loky's workers outlive a parent killed with SIGKILL (which runs no clean-up): they
    wait for work that never comes, holding their memory (and, through their pipes, loky's
    resource trackers alive too). Each worker therefore runs a daemon thread that looks
    every half second whether its parent process is still there: the process it was
    started from is no longer its parent (it was adopted by init or a subreaper), or
    ``parent`` no longer exists. At most one such thread per process (found by its name,
    so that no module state is kept); a no-op in the parent itself.
    """
    if os.getpid() == parent or any(t.name == _WATCHDOG for t in threading.enumerate()):
        return
    started_by = os.getppid()

    def gone() -> bool:
        if os.getppid() != started_by:
            return True
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, owned by another user
            return False
        return False

    def watch() -> None:
        while not gone():
            time.sleep(_WATCH_INTERVAL)
        os._exit(1)

    threading.Thread(target=watch, name=_WATCHDOG, daemon=True).start()


def n_workers(n_jobs: int, backend: str, scheduler: Any) -> int:
    """The workers a run uses: ``n_jobs`` (joblib's convention: -1 = all cores), or the
    cores here for a dask ``scheduler`` given with ``n_jobs`` < 1."""
    if backend == "dask" and scheduler is not None:
        return max(1, n_jobs if n_jobs > 0 else os.cpu_count() or 1)
    if n_jobs is None or n_jobs == 0:
        raise ValueError("n_jobs must be a non-zero integer")
    if n_jobs < 0:
        return max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return n_jobs


def chunk_tasks(n_conditions: int, n_reps: int, chunk_size: int,
           done: list[tuple[int, int, int]]) -> tuple[list[tuple[int, int, int]], int]:
    """Chunks (condition, start, stop) covering the replicates not in ``done``.

    Chunk boundaries are multiples of ``chunk_size`` (within the gaps left by finished
    files). Returns the tasks and the number of finished replicates below ``n_reps``.
    """
    covered: dict[int, list[tuple[int, int]]] = {}
    n_done = 0
    for c, a, b in done:
        if c < n_conditions:
            covered.setdefault(c, []).append((a, b))
            n_done += max(0, min(b, n_reps) - a)
    tasks = []
    for c in range(n_conditions):
        pos = 0
        for a, b in sorted(covered.get(c, [])) + [(n_reps, n_reps)]:
            gap_end = min(a, n_reps)
            while pos < gap_end:
                stop = min(gap_end, (pos // chunk_size + 1) * chunk_size)
                tasks.append((c, pos, stop))
                pos = stop
            pos = max(pos, b)
            if pos >= n_reps:
                break
    return tasks, n_done


def execute(plan: Plan, tasks: list, n_jobs: int, backend: str, scheduler: Any,
             workers: int) -> Iterator[tuple[tuple[int, int, int], pa.Table]]:
    """Run tasks and yield ((condition, start, stop), table) as each finishes."""
    if not tasks:
        return
    if backend == "dask":
        yield from _execute_dask(plan, tasks, scheduler, workers)
    elif workers == 1:
        for task in tasks:
            yield _run_task(plan, task)
    else:
        import joblib
        from joblib import Parallel, delayed

        # results in completion order (joblib >= 1.4), else in submission order
        version = tuple(int(v) for v in joblib.__version__.split(".")[:2] if v.isdigit())
        order = "generator_unordered" if version >= (1, 4) else "generator"
        parent = os.getpid()
        kwargs = {"initializer": watch_parent, "initargs": (parent,)} \
            if version >= (1, 3) else {}
        parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as=order, **kwargs)
        yield from parallel(delayed(_run_watched_task)(plan, task, parent) for task in tasks)


def _execute_dask(plan: Plan, tasks: list, scheduler: Any,
                  workers: int) -> Iterator[tuple[tuple[int, int, int], pa.Table]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('backend="dask" needs dask.distributed: '
                          'pip install "mlmsim[dask]"') from exc
    cluster = client = None
    own_client = not isinstance(scheduler, Client)
    try:
        if scheduler is None:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        elif isinstance(scheduler, Client):
            client = scheduler
        else:
            client = Client(scheduler)
        [plan_future] = client.scatter([plan], broadcast=True, hash=False)
        futures = [client.submit(_run_task, plan_future, task, pure=False) for task in tasks]
        for future in as_completed(futures):
            result = future.result()
            future.release()
            yield result
    finally:
        if own_client and client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
