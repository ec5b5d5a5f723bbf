"""A study's records read back: from memory, or chunk by chunk from its directory.

:func:`load_study` opens a study directory (JSON and Parquet only: no code is run) as a
:class:`StudyResult`, which streams the records, counts the replicates present against
those the study was run with (:class:`ReplicateCount`) and summarises them
(:func:`summarise`: the measures of :mod:`mlmsim.simstudy.measures`, with the count).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlmsim.simstudy.measures import summarise_records
from mlmsim.simstudy.records import ADDED_COLUMNS, record_schema, to_pandas, with_added_columns
from mlmsim.simstudy.storage import (
    CorruptChunk,
    CorruptChunkWarning,
    OverlappingChunksWarning,
    StudyDirectory,
    StudyDirectoryError,
)

__all__ = [
    "IncompleteStudyWarning",
    "ReplicateCount",
    "StudyResult",
    "load_study",
    "summarise",
    "summarize",
]


class IncompleteStudyWarning(UserWarning):
    """Summarised records lack replicates the study was run with (a chunk file deleted,
    corrupt, or never written): the measures use fewer replicates than the design."""


@dataclass(frozen=True)
class ReplicateCount:
    """What a study directory holds against what its manifest expects, in replicates
    (condition x replicate): ``expected`` = conditions x ``expected_reps``; ``present``
    have records; ``missing`` have none; ``duplicated`` are held by more than one chunk
    file (identical copies: one is used), ``duplicated_records`` the records repeated
    there; ``corrupt_files`` chunk files that failed their checks and are not read;
    ``beyond`` replicates in the directory at or above ``expected_reps`` (an earlier run
    asked for more), which are not read."""

    conditions: int
    expected_reps: int
    expected: int
    present: int
    missing: int
    duplicated: int = 0
    duplicated_records: int = 0
    corrupt_files: int = 0
    beyond: int = 0

    @property
    def complete(self) -> bool:
        """Every expected replicate has records."""
        return self.missing == 0

    @property
    def consistent(self) -> bool:
        """No replicate held twice, no corrupt chunk file."""
        return self.duplicated == 0 and self.corrupt_files == 0

    def describe(self) -> str:
        """One line for the top of a report, e.g. "INCOMPLETE: 168 of 200 replicates
        present, 32 missing, 0 duplicated"."""
        state = ("complete" if self.consistent else "INCONSISTENT") if self.complete \
            else "INCOMPLETE"
        text = (f"{state}: {self.present} of {self.expected} replicates present "
                f"({self.conditions} conditions x {self.expected_reps}), {self.missing} "
                f"missing, {self.duplicated} duplicated")
        if self.duplicated:
            text += f" ({self.duplicated_records} repeated records, one copy used)"
        if self.corrupt_files:
            text += f", {self.corrupt_files} corrupt chunk files not read"
        if self.beyond:
            text += (f"; {self.beyond} more replicates in the directory, beyond "
                     f"{self.expected_reps} per condition, are not read")
        return text


def _without_repeats(items: Iterable[tuple[Any, pa.Table]]) -> Iterator[pa.Table]:
    """Chunk tables with the replicates an earlier file of the same condition held
    removed: where files overlap (identical copies, :meth:`StudyDirectory.overlaps`),
    each replicate's records are read once, from the file first by name."""
    condition, covered = None, []
    for chunk, table in items:
        if chunk.condition != condition:
            condition, covered = chunk.condition, []
        over = [(a, b) for a, b in covered if a < chunk.stop and chunk.start < b]
        if over:
            reps = table.column("rep")
            seen = None
            for a, b in over:
                inside = pc.and_(pc.greater_equal(reps, a), pc.less(reps, b))
                seen = inside if seen is None else pc.or_(seen, inside)
            table = table.filter(pc.invert(seen))
        covered.append((chunk.start, chunk.stop))
        yield table


class StudyResult:
    """The records of a study run, in memory or streamed from its directory.

    Records are ordered by condition, replicate, method (study order) and parameter
    (method order). With a directory, chunks are read one at a time and verified as they
    are read, so :meth:`summarise` works on studies larger than memory; replicates that
    overlapping chunk files both hold (identical copies) are read once.
    """

    def __init__(self, *, conditions: pd.DataFrame, methods: list[str], n_reps: int | None,
                 seed: int, definition_hash: str, directory: StudyDirectory | None = None,
                 tables: list[pa.Table] | None = None, expected_reps: int | None = None,
                 overlaps: Any = None):
        self.conditions = conditions
        self.methods = list(methods)
        self.n_reps = n_reps
        # the replicates per condition the study was run with (its manifest's n_reps)
        self.expected_reps = n_reps if expected_reps is None else int(expected_reps)
        self.seed = seed
        self.definition_hash = definition_hash
        self.directory = directory
        self.overlaps = overlaps
        self._tables = tables
        self._records: pd.DataFrame | None = None

    @property
    def out_dir(self) -> Path | None:
        return None if self.directory is None else self.directory.path

    def iter_tables(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """Arrow tables of the records, one chunk at a time (replicates < ``n_reps``)."""
        if self._tables is not None:
            tables: Iterable[pa.Table] = iter(self._tables)
        else:
            read = None
            if columns is not None:  # only what is asked (and what added columns follow)
                read = list(dict.fromkeys([*columns, "rep", *(after for name, after, _ in
                                                              ADDED_COLUMNS
                                                              if name in columns)]))
            chunks = self.directory.chunk_files()
            tables = _without_repeats(self.directory.iter_tables(
                chunks, self.definition_hash, read))
        for table in tables:
            table = with_added_columns(table)
            if self.n_reps is not None:
                reps = table.column("rep")
                if pc.max(reps).as_py() is not None and pc.max(reps).as_py() >= self.n_reps:
                    table = table.filter(pc.less(reps, self.n_reps))
            if columns is not None:
                table = table.select(columns)
            if table.num_rows:
                yield table

    def iter_records(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """The records as DataFrames, one chunk at a time."""
        for table in self.iter_tables(columns):
            yield to_pandas(table)

    @property
    def records(self) -> pd.DataFrame:
        """All records in one DataFrame (columns :data:`RECORD_COLUMNS` + condition vars)."""
        if self._records is None:
            tables = list(self.iter_tables())
            if tables:
                table = pa.concat_tables(tables)
            else:
                table = record_schema(pa.Schema.from_pandas(
                    self.conditions, preserve_index=False).remove_metadata()).empty_table()
            self._records = to_pandas(table)
        return self._records

    def summarise(self, **kwargs: Any) -> pd.DataFrame:
        """Performance measures with Monte Carlo SEs: :func:`summarise`."""
        return summarise(self, **kwargs)

    summarize = summarise

    def _presence(self) -> tuple[np.ndarray, int, int]:
        """(present[condition, rep] for reps below the expected count, corrupt files,
        replicates at or above it): one pass over the ``condition`` and ``rep`` columns."""
        n_reps = (self.n_reps if self.n_reps is not None else self.expected_reps) or 0
        present = np.zeros((len(self.conditions), n_reps), dtype=bool)
        corrupt = 0
        beyond: set[int] = set()

        def mark(table: pa.Table) -> None:
            c = table.column("condition").to_numpy()
            r = table.column("rep").to_numpy()
            known = c < len(self.conditions)
            keep = (r < n_reps) & known
            present[c[keep], r[keep]] = True
            over = (r >= n_reps) & known
            if over.any():
                beyond.update(np.unique(c[over].astype(np.int64) << 32
                                        | r[over].astype(np.int64)).tolist())

        if self._tables is not None:
            for table in self._tables:
                mark(table)
            return present, corrupt, len(beyond)
        for chunk in self.directory.chunk_files():  # one chunk in memory at a time
            try:
                mark(self.directory.read_chunk(chunk, self.definition_hash,
                                               ["condition", "rep"]))
            except CorruptChunk as exc:
                corrupt += 1
                warnings.warn(f"chunk file {chunk.path.name} is corrupt ({exc}); skipped",
                              CorruptChunkWarning, stacklevel=3)
        return present, corrupt, len(beyond)

    def missing(self) -> pd.DataFrame:
        """Replicates (condition, rep) below ``n_reps`` (or, when that is None, below the
        replicates per condition the study was run with) that have no records."""
        present, _, _ = self._presence()
        c, r = np.nonzero(~present)
        return pd.DataFrame({"condition": c, "rep": r})

    def replicate_count(self) -> ReplicateCount:
        """Expected, present, missing and duplicated replicates (:class:`ReplicateCount`),
        against ``n_reps`` or, when that is None, the replicates per condition the study
        was run with (its manifest's)."""
        present, corrupt, beyond = self._presence()
        n_rows, n_reps = present.shape
        found = int(present.sum())
        dup = self.overlaps
        dup_reps = dup_records = 0
        if dup:
            dup_records = dup.duplicated_records
            dup_reps = dup.duplicated_replicates
        return ReplicateCount(conditions=n_rows, expected_reps=n_reps,
                              expected=n_rows * n_reps, present=found,
                              missing=n_rows * n_reps - found, duplicated=dup_reps,
                              duplicated_records=dup_records, corrupt_files=corrupt,
                              beyond=beyond)

    def __repr__(self) -> str:
        where = f" in {self.out_dir}" if self.out_dir is not None else ""
        return (f"StudyResult({len(self.conditions)} conditions x {self.n_reps} replicates x "
                f"{len(self.methods)} methods{where})")


def load_study(out_dir: str | os.PathLike, n_reps: int | None = None) -> StudyResult:
    """Open a study directory for reading (no code is run: JSON and Parquet only).

    ``n_reps`` limits the records to replicates below it. None means the replicates per
    condition of the directory's latest run (its manifest's ``n_reps``): a run with
    ``--reps 10`` into a directory that holds 20 is reported as the 10 it asked for, and
    :meth:`StudyResult.replicate_count` counts the 10 beyond them (read them with
    ``n_reps=20``). A manifest without ``n_reps`` reads all there are. The manifest's checksum is
    verified (an edited manifest is refused with :class:`StudyDirectoryError`).
    Corrupt chunk files are skipped with a :class:`CorruptChunkWarning`. Chunk files that
    hold the same replicates (two runs wrote the directory at once, or files were copied
    in by hand) are compared: identical copies raise an :class:`OverlappingChunksWarning`
    naming how many records repeat and which files overlap, and the records hold each
    replicate once; copies that differ are refused with :class:`StudyDirectoryError`.
    """
    directory = StudyDirectory(out_dir)
    manifest = directory.read_manifest()
    if manifest is None:
        raise StudyDirectoryError(f"{out_dir} has no study manifest")
    if n_reps is None and manifest.get("n_reps") is not None:
        n_reps = int(manifest["n_reps"])
    overlaps = directory.overlaps(manifest["definition_hash"], n_reps)
    if overlaps:
        pairs = overlaps.pairs
        shown = "; ".join(f"{a} and {b}" for a, b in pairs[:5])
        more = f" and {len(pairs) - 5} more pairs" if len(pairs) > 5 else ""
        warnings.warn(f"{overlaps.duplicated_records} records in {directory.path} are "
                      f"duplicated: chunk files {shown}{more} hold the same replicates "
                      "(were two runs writing the directory at once?); their records are "
                      "identical, so one copy of each is used. Delete one file of each pair "
                      "to silence this.", OverlappingChunksWarning, stacklevel=2)
    conds = manifest["conditions"]
    conditions = pd.DataFrame(conds["data"], columns=conds["columns"])
    if not conds["columns"]:
        conditions = pd.DataFrame(index=pd.RangeIndex(len(conds["data"])))
    expected = manifest.get("n_reps")
    return StudyResult(conditions=conditions, methods=manifest["methods"], n_reps=n_reps,
                       seed=int(manifest["root_seed"]),
                       definition_hash=manifest["definition_hash"], directory=directory,
                       expected_reps=None if expected is None else int(expected),
                       overlaps=overlaps)


def summarise(source: Any, *, alpha: float = 0.05, level: float = 0.95, null: float = 0.0,
              where: Callable[[pd.DataFrame], Any] | None = None) -> pd.DataFrame:
    """Performance measures with Monte Carlo SEs (:mod:`mlmsim.simstudy.measures`), as a
    tidy DataFrame.

    Parameters
    ----------
    source : records (a DataFrame, or an iterable of DataFrames), a :class:`StudyResult`,
        or a study directory (read chunk by chunk, :func:`load_study`).
    alpha, level, null, where : as for
        :func:`~mlmsim.simstudy.measures.summarise_records` (the test behind
        ``rejection``, the Wald interval where none was recorded, theta_0, a row filter
        such as ``lambda r: r.converged.fillna(False)``).

    Returns
    -------
    :func:`~mlmsim.simstudy.measures.summarise_records`'s table: columns ``condition``,
    the condition variables, ``method``, ``parameter``, ``measure``, ``estimate``,
    ``mcse``, ``n``. For a study directory (or a StudyResult read from one),
    ``attrs["replicates"]`` holds the replicates expected, present, missing and
    duplicated (:class:`ReplicateCount`), and an :class:`IncompleteStudyWarning` says
    when some are missing. Replicates that overlapping chunk files hold twice are
    counted once.
    """
    if isinstance(source, str | os.PathLike):
        source = load_study(source)
    summary = summarise_records(source, alpha=alpha, level=level, null=null, where=where)
    if isinstance(source, StudyResult) and source.directory is not None:
        count = source.replicate_count()
        if not count.complete:
            warnings.warn(f"{source.out_dir}: {count.describe()}; the measures use the "
                          "replicates present (StudyResult.missing() lists the others)",
                          IncompleteStudyWarning, stacklevel=2)
        summary.attrs["replicates"] = dataclasses.asdict(count)
    return summary


summarize = summarise
