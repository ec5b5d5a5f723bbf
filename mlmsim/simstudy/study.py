"""A simulation study: conditions x replicates x methods, with seeds, parallelism and resume.

This module owns the study in the ADEMP frame (Morris, White and Crowther 2019): a
:class:`Study` holds the conditions (the data-generating mechanisms' parameters, one row
per condition), a ``generate(condition, rng) -> data`` callable, the methods applied to
every replicate, the estimands with their true values, the number of replicates and one
root seed. :meth:`Study.run` runs every (condition, replicate) once, records one tidy
row per condition x replicate x method x parameter (:mod:`mlmsim.simstudy.records`), and
owns everything else: per-replicate seeds (:mod:`mlmsim.simstudy.seeds`), error
accounting (a replicate whose generation or fit raises is recorded with its error,
never dropped or redrawn), parallel execution over chunks of replicates
(:mod:`mlmsim.simstudy.execution`: joblib/loky, or a ``dask.distributed`` cluster),
checkpoints and resume (:mod:`mlmsim.simstudy.storage`) and a progress bar. Records are
bit-identical whatever ``n_jobs``, backend, chunk size or resume history, except the
``seconds`` column, which measures wall-clock time.

What the generator and the methods may be is said in :mod:`mlmsim.simstudy.protocols`:
a method is any callable ``method(data) -> estimates`` or ``method(data, rng) ->
estimates``, and :class:`mlmsim.methods.FormulaMethod` fits an lme4-style formula by ML
or REML, :class:`~mlmsim.methods.FromSpec` draws each replicate from a ``ModelSpec``.

A method object may offer ``fit_batch(datasets) -> list`` (one result or exception per
data set) to fit many replicates at once; the runner then uses it, unless the object's
``batch`` is False, in batches of up to its ``batch_size`` (the chunk without one). A
data set's result must not depend on the batch it is fitted in
(:class:`~mlmsim.simstudy.protocols.BatchedMethod`), as :class:`mlmsim.methods.FormulaMethod`'s
does not, bit for bit: so chunks fall anywhere.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlmsim import __version__
from mlmsim.progress import progress_reporter, say
from mlmsim.simstudy.conditions import Condition, conditions_frame, scalar
from mlmsim.simstudy.execution import (
    MAX_CHUNK,
    Plan,
    chunk_tasks,
    execute,
    n_workers,
    run_chunk,
)
from mlmsim.simstudy.identity import canonical, digest, form_digest, form_parts
from mlmsim.simstudy.protocols import AnnouncesRun, KnowsTruth, as_methods
from mlmsim.simstudy.records import RECORD_FORMAT, to_pandas
from mlmsim.simstudy.results import StudyResult
from mlmsim.simstudy.seeds import as_root_seed, replicate_rng, replicate_seed
from mlmsim.simstudy.storage import FORMAT, StudyDirectory

__all__ = ["Study"]


def _mapping(values: Any) -> dict[str, float]:
    if values is None:
        return {}
    if isinstance(values, pd.Series):
        values = values.to_dict()
    if not isinstance(values, Mapping):
        raise TypeError(f"true values must be a mapping parameter -> value, got {type(values)}")
    return {str(k): float(v) for k, v in values.items()}


class Study:
    """A simulation study: conditions, data generation, methods, estimands, replicates.

    Parameters
    ----------
    conditions : dict of lists (full factorial grid, first key slowest), DataFrame (one row
        per condition) or None (a single condition without variables).
    generate : ``generate(condition, rng) -> data``; ``condition`` is a read-only
        :class:`Condition` (``cond.n_groups`` or ``cond["n_groups"]``), ``rng`` a
        ``numpy.random.Generator`` that is the replicate's own stream.
    methods : a dict name -> method, a list of named methods, or one method. A method is
        ``method(data)`` or ``method(data, rng)`` returning estimates (module docstring),
        e.g. a :class:`mlmsim.methods.FormulaMethod`.
    truth : the estimands and their true values: a mapping parameter -> value (the same in
        every condition), a callable ``truth(condition) -> mapping``, or a sequence of
        mappings, one per condition. If None, ``generate.truth(condition)`` is used when
        ``generate`` has it; otherwise no estimands are declared (truth is NaN).
    n_reps : replicates per condition.
    seed : root seed (non-negative integer); None draws 128 random bits, kept in
        ``study.seed`` and in the manifest.

    Examples
    --------
    The sample mean of N(1, 1) samples of two sizes: 2 conditions x 200 replicates.

    >>> study = Study({"size": [10, 40]}, lambda cond, rng: rng.normal(1.0, 1.0, cond.size),
    ...               {"mean": lambda x: {"mu": x.mean()}}, truth={"mu": 1.0},
    ...               n_reps=200, seed=1)
    >>> res = study.run(progress=False)
    >>> res.records.shape
    (400, 21)
    >>> s = res.summarise()
    >>> s[s.measure == "empse"][["size", "estimate", "mcse", "n"]]
        size  estimate      mcse    n
    2     10  0.332413  0.016662  200
    24    40  0.155338  0.007786  200
    """

    def __init__(self, conditions: Mapping | pd.DataFrame | None, generate: Callable,
                 methods: Any, truth: Any = None, n_reps: int = 100,
                 seed: int | None = None):
        if not callable(generate):
            raise TypeError("generate must be a callable (condition, rng) -> data")
        n_reps = int(n_reps)
        if not 1 <= n_reps < 2**32:
            raise ValueError("n_reps must lie in [1, 2**32)")
        self.conditions = conditions_frame(conditions)
        if len(self.conditions) >= 10**6:
            raise ValueError("at most 999,999 conditions")
        self.generate = generate
        self._methods = as_methods(methods)
        self.n_reps = n_reps
        self.seed = as_root_seed(seed)
        self._conds = tuple(
            Condition(i, {k: scalar(v) for k, v in row.items()})
            for i, row in enumerate(self.conditions.to_dict(orient="records")))
        self.truths = tuple(self._truths(truth))
        self._cond_schema = pa.Schema.from_pandas(self.conditions, preserve_index=False) \
            .remove_metadata()

    def _truths(self, truth: Any) -> list[dict[str, float]]:
        if truth is None and isinstance(self.generate, KnowsTruth):
            truth = self.generate.truth
        if truth is None:
            return [{} for _ in self._conds]
        if callable(truth) and not isinstance(truth, Mapping | pd.Series):
            return [_mapping(truth(c)) for c in self._conds]
        if isinstance(truth, Mapping | pd.Series):
            one = _mapping(truth)
            return [dict(one) for _ in self._conds]
        truths = [_mapping(t) for t in truth]
        if len(truths) != len(self._conds):
            raise ValueError(f"truth has {len(truths)} entries for {len(self._conds)} "
                             "conditions")
        return truths

    @property
    def methods(self) -> dict[str, Callable]:
        """The methods, name -> callable, in the order they are applied."""
        return {m.name: m.fn for m in self._methods}

    # -- identity ---------------------------------------------------------
    def _identity(self) -> tuple[dict[str, str], dict[str, str]]:
        """(components, parts): the digest of each part of the study's identity, and of
        the pieces within them (a method, a global of the generator, a condition
        variable), which name what changed when a resume is refused."""
        forms = {
            "conditions": canonical(self.conditions),
            "generate": canonical(self.generate),
            "methods": [[m.name, canonical(m.fn)] for m in self._methods],
            "truth": canonical(list(self.truths)),
            "seed": canonical(str(self.seed)),
            "record_format": canonical(RECORD_FORMAT),
            "mlmsim": canonical(__version__),
        }
        components = {k: form_digest(v) for k, v in forms.items()}
        parts = dict(form_parts("generate", forms["generate"], depth=4))
        for name, form in forms["methods"]:
            parts.update(form_parts(f"methods.{name}", form, depth=3))
        for col in self.conditions.columns:
            parts[f"conditions.{col}"] = digest(self.conditions[col].tolist())
        parts["conditions.rows"] = digest(len(self.conditions))
        for i, truth in enumerate(self.truths):
            parts[f"truth.condition {i}"] = digest(truth)
        return components, parts

    def definition(self) -> dict[str, str]:
        """Hashes of the parts of the study's identity (:mod:`mlmsim.simstudy.identity`).

        Conditions, generate (with everything it uses: module-level specs, helper
        functions of other modules, closure values), methods and their options, truth,
        root seed, record format and the mlmsim version; not the number of replicates
        or the chunk size, which change neither seeds nor records. Raises
        :class:`~mlmsim.simstudy.identity.DefinitionError` (a ValueError) when the
        generator or a method uses an object whose value cannot be captured.
        """
        return self._identity()[0]

    @property
    def definition_hash(self) -> str:
        """SHA-256 of the study's identity (:meth:`definition`)."""
        return digest(self.definition())

    def _manifest(self) -> dict:
        components, parts = self._identity()
        return {
            "format": FORMAT,
            "mlmsim_version": __version__,
            "definition_hash": digest(components),
            "components": components,
            "parts": parts,
            "root_seed": str(self.seed),
            "n_reps": self.n_reps,
            "methods": [m.name for m in self._methods],
            "conditions": {"columns": list(self.conditions.columns),
                           "data": [[canonical(scalar(v)) for v in row]
                                    for row in self.conditions.itertuples(index=False)]},
            "truth": [dict(t) for t in self.truths],
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        }

    def _plan(self) -> Plan:
        return Plan(self.seed, self._conds, self._cond_schema, self.generate,
                     tuple(self._methods), self.truths)

    # -- single replicates -------------------------------------------------
    def replicate_seed(self, condition: int, rep: int) -> int:
        """The 64-bit seed of replicate ``rep`` of condition ``condition``."""
        return replicate_seed(self.seed, condition, rep)

    def regenerate(self, condition: int, rep: int) -> Any:
        """The data set of one replicate, drawn again alone: identical to the run's."""
        return self.generate(self._conds[condition],
                             replicate_rng(self.replicate_seed(condition, rep)))

    def run_replicate(self, condition: int, rep: int) -> pd.DataFrame:
        """The records of one replicate, computed again, alone: identical to the run's (but
        seconds)."""
        return to_pandas(run_chunk(self._plan(), condition, rep, rep + 1))

    # -- running ------------------------------------------------------------
    def run(self, out_dir: str | os.PathLike | None = None, *, n_jobs: int = 1,
            backend: str = "loky", chunk_size: int | None = None, scheduler: Any = None,
            progress: bool | None = None, label: str | None = None) -> StudyResult:
        """Run every replicate of every condition not already in ``out_dir``.

        Parameters
        ----------
        out_dir : study directory; finished chunks are written there as they complete,
            and a second run resumes (finished chunks are skipped; corrupt ones are set
            aside and recomputed). None keeps the records in memory.
        n_jobs : parallel workers (joblib convention, -1 = all cores).
        backend : "loky" (joblib processes) or "dask" (a ``dask.distributed`` cluster:
            ``scheduler`` is its address or a ``Client``; None starts a LocalCluster with
            ``n_jobs`` single-threaded worker processes).
        chunk_size : replicates per chunk (per task and per file); default
            ceil(total / max(16, 4 workers)), at most 10,000 and at most ``n_reps``.
        progress : None (default): a tqdm bar of replicates done on a terminal, else a
            plain line every few seconds (:mod:`mlmsim.progress`); True: the bar;
            False: nothing. Unless False, a resumed run first says how many replicates
            were already done, and a run on a fresh install says that numba compiles the
            kernels first.
        label : the name on the bar and the lines (default: ``out_dir``'s name, or
            "replicates").

        Warnings raised while generating or fitting become the record's ``messages``;
        they are caught per process, so give dask workers one thread each (as the
        LocalCluster started here does) or warnings may land on another replicate.

        ``out_dir`` is locked for the whole run (:meth:`StudyDirectory.writing`): a second
        run on the same directory while this one writes is refused at once with
        :class:`StudyLockedError` (a ValueError) naming this run's pid, host and start
        time. A killed run releases the lock with its process.
        """
        if backend not in ("loky", "dask"):
            raise ValueError(f"backend must be 'loky' or 'dask', got {backend!r}")
        if out_dir is None:
            return self._run(None, n_jobs, backend, chunk_size, scheduler, progress,
                             label or "replicates")
        directory = StudyDirectory(out_dir)
        with directory.writing():
            return self._run(directory, n_jobs, backend, chunk_size, scheduler, progress,
                             label or directory.path.name)

    def _run(self, directory: StudyDirectory | None, n_jobs: int, backend: str,
             chunk_size: int | None, scheduler: Any, progress: bool | None,
             label: str) -> StudyResult:
        """:meth:`run`, with ``directory`` (if any) locked for writing."""
        plan = self._plan()
        manifest = self._manifest()  # the identity, computed once per run
        definition_hash = manifest["definition_hash"]
        done: list[tuple[int, int, int]] = []
        if directory is not None:
            directory.open_for(manifest)
            done = [(c.condition, c.start, c.stop)
                    for c in directory.valid_chunks(definition_hash)]
        workers = n_workers(n_jobs, backend, scheduler)
        if chunk_size is None:
            total = len(self._conds) * self.n_reps
            chunk_size = math.ceil(total / max(16, 4 * workers))
            chunk_size = max(1, min(chunk_size, MAX_CHUNK, self.n_reps))
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        tasks, n_done = chunk_tasks(len(self._conds), self.n_reps, chunk_size, done)
        tables: dict[tuple[int, int], pa.Table] = {}
        total = len(self._conds) * self.n_reps
        if n_done:
            say(f"{label}: resuming: {n_done} of {total} replicates done", progress)
        if tasks:
            for note in dict.fromkeys(m.fn.run_note() for m in self._methods
                                      if isinstance(m.fn, AnnouncesRun)):
                if note:
                    say(f"{label}: {note}", progress)
        bar = progress_reporter(total, n_done, progress, label)
        started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
        try:
            for (c, a, b), table in execute(plan, tasks, n_jobs, backend, scheduler, workers):
                if directory is not None:
                    directory.write_chunk(table, c, a, b, definition_hash)
                else:
                    tables[(c, a)] = table
                bar.update(b - a)
        finally:
            bar.close()
        if directory is not None and tasks:
            directory.record_run({"started": started,
                                  "seconds": round(time.perf_counter() - t0, 3),
                                  "replicates": sum(b - a for _, a, b in tasks),
                                  "workers": workers, "backend": backend})
        return StudyResult(
            conditions=self.conditions, methods=[m.name for m in self._methods],
            n_reps=self.n_reps, seed=self.seed, definition_hash=definition_hash,
            directory=directory, tables=None if directory is not None else
            [tables[k] for k in sorted(tables)])

    def __repr__(self) -> str:
        return (f"Study({len(self._conds)} conditions x {self.n_reps} replicates x "
                f"{len(self._methods)} methods, seed={self.seed})")
