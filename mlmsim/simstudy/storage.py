"""On-disk form of a study: its identity, manifest, and checksummed Parquet chunk files.

This module owns what a study directory holds and how it is trusted. A directory has

    manifest.json                      format, mlmsim version, root seed, definition hash
                                       and the hash of each part of the definition
    chunks/c000001-r000000200-000000250-<sha256[:16]>.parquet
                                       records of replicates [200, 250) of condition 1

    lock.json                          the writer lock (below)

A run writes the directory only while it holds an exclusive OS lock (``flock``) on
``lock.json``, which also names the holder (pid, host, start time). A second run on the
same directory is refused at once with :class:`StudyLockedError`, so two runs never
compute and write the same chunks side by side. The OS drops the lock when its process
ends however it ends, so a killed run never blocks the next one, which resumes. Reading
(:func:`mlmsim.simstudy.load_study`) takes no lock. On platforms without ``fcntl``
(Windows) there is no lock: run one writer at a time there.

Every file is written atomically (a temporary file in the same directory, fsync,
``os.replace``), so a killed run leaves whole files or none. A chunk file's name carries
the first 16 hex digits of the SHA-256 of its bytes, and its Parquet metadata carries the
definition hash, the replicate range and the row count; a file that fails any of these
checks (truncated, corrupted, foreign) is never read: it is renamed ``*.corrupt`` and its
replicates are computed again. Files hold data only (Parquet and JSON, never pickle), so
opening a directory written by someone else cannot run code.

The identity of a study is the SHA-256 of a canonical JSON form of everything that
determines a single replicate's records: the conditions table, the data-generating
callable and everything it uses, the methods and their options, the true values, the
root seed, the record format and the mlmsim version (:mod:`mlmsim.simstudy.identity`, which
refuses objects whose value cannot be captured). The manifest keeps the hash of each of
these parts (``components``) and of the pieces within them (``parts``), so a refused
resume names what changed. The number of replicates and the chunk size are not part of
the identity: replicate r of condition c has the same seed and the same records whatever
the total and however replicates are grouped into files, so a study can be resumed with
another chunk size and extended with more replicates in the same directory, and the
records equal a fresh run's bit for bit (a batched method's results do not depend on
the batch, :class:`~mlmsim.simstudy.protocols.BatchedMethod`). A directory written for
another definition, or by another mlmsim version (whose engine may estimate
differently), is refused with :class:`StudyDirectoryError`.

Every field of the manifest is covered by its ``checksum`` (:func:`manifest_checksum`):
an edited manifest (a root seed, a replicate count, a condition) is refused. Chunk files
whose replicate ranges overlap (two runs without the lock, files copied in) are compared
on the replicates they share (:meth:`StudyDirectory.overlaps`): identical copies are read
once, copies that differ are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import re
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the directory is then not locked (see StudyDirectory)
    fcntl = None

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlmsim.simstudy.identity import (
    DefinitionError,
    canonical,
    changed_parts,
    describe_callable,
    digest,
)

__all__ = [
    # the study identity's names, re-exported for callers of this module
    "DefinitionError",
    "canonical",
    "describe_callable",
    "digest",
    "CHUNK_DIR",
    "FORMAT",
    "LOCK",
    "MANIFEST",
    "ChunkFile",
    "CorruptChunkWarning",
    "Overlaps",
    "OverlappingChunksWarning",
    "StudyDirectory",
    "StudyDirectoryError",
    "StudyLockedError",
]

FORMAT = "mlmsim.simstudy/1"
MANIFEST = "manifest.json"
CHUNK_DIR = "chunks"
LOCK = "lock.json"
_CHUNK_META_KEY = b"mlmsim.chunk"
_CHUNK_RE = re.compile(r"^c(\d{6})-r(\d{9})-(\d{9})-([0-9a-f]{16})\.parquet$")
_TMP_PREFIX = ".tmp-"


class StudyDirectoryError(ValueError):
    """A study directory that cannot be used for this study (refused, never mixed in)."""


class StudyLockedError(StudyDirectoryError):
    """Another run is writing this study directory: it holds the directory's lock.

    A :class:`StudyDirectoryError`, hence a ValueError: the run is refused before it
    writes anything. The message names the holder (pid, host, start time)."""


class CorruptChunkWarning(UserWarning):
    """A chunk file failed its integrity checks and was set aside."""


class OverlappingChunksWarning(UserWarning):
    """Two chunk files hold records of the same replicates (the records repeat)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's fields but ``checksum``, as canonical JSON (sorted keys):
    every field is covered, so no field can be edited unnoticed."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return _sha256(text.encode())


def _manifest_problem(manifest: dict) -> str | None:
    """Why a manifest cannot be trusted, or None."""
    if "checksum" in manifest:
        if manifest["checksum"] != manifest_checksum(manifest):
            return "its checksum does not match its contents"
        return None
    # written before manifests had a checksum: its own hashes must agree

    components = manifest.get("components")
    if not isinstance(components, dict) or manifest.get("definition_hash") != digest(
            components):
        return "its definition hash does not match its components"
    if components.get("seed") != digest(str(manifest.get("root_seed"))):
        return "its root_seed does not match the seed it was run with"
    return None


def describe_change(old: dict, new: dict) -> str:
    """What differs between two manifests' definitions, e.g. "generate (generate.globals.
    SPEC), methods (methods.REML)": the components whose hashes differ, each with the
    deepest pieces (``parts``) that differ where both manifests have them."""

    old_c, new_c = old.get("components", {}), new.get("components", {})
    old_p, new_p = old.get("parts") or {}, new.get("parts") or {}
    out = []
    for key in dict.fromkeys([*new_c, *old_c]):
        if old_c.get(key) == new_c.get(key):
            continue
        mine = {k: v for k, v in old_p.items() if k == key or k.startswith(key + ".")}
        theirs = {k: v for k, v in new_p.items() if k == key or k.startswith(key + ".")}
        detail = [k for k in changed_parts(mine, theirs) if k != key] if mine and theirs \
            else []
        out.append(f"{key} ({', '.join(detail[:6])})" if detail else key)
    return ", ".join(out) or "unknown"


# ---------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, ``os.replace``.

    ``sync_dir`` also fsyncs the directory, so the rename itself survives a power cut;
    chunk files skip it (a lost rename only means the chunk is computed again).
    """
    tmp = path.parent / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if sync_dir:
        _fsync_dir(path.parent)


# ---------------------------------------------------------------------------
# The study directory
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, order=True)
class ChunkFile:
    """A chunk file: replicates [start, stop) of one condition, with its content hash."""

    condition: int
    start: int
    stop: int
    sha: str
    path: Path = dataclasses.field(compare=False)

    @property
    def n_reps(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Overlaps:
    """Identical copies of records in overlapping chunk files (:meth:`StudyDirectory.
    overlaps`): how many records repeat an earlier file's, and the pairs of file names."""

    duplicated_records: int
    pairs: tuple[tuple[str, str], ...]
    duplicated_replicates: int = 0

    def __bool__(self) -> bool:
        return bool(self.pairs)


def _rows_of(table: pa.Table, lo: int, hi: int) -> pa.Table:
    reps = table.column("rep")
    return table.filter(pc.and_(pc.greater_equal(reps, lo), pc.less(reps, hi)))


def _same_records(a: pa.Table, b: pa.Table) -> bool:
    """The same records, but for ``seconds`` (wall-clock time) and columns only one has
    (written by different mlmsim versions: a column added since is null in the older)."""
    names = [c for c in a.column_names if c in b.column_names and c != "seconds"]
    if a.num_rows != b.num_rows:
        return False
    left, right = a.select(names).to_pandas(), b.select(names).to_pandas()
    return left.equals(right)


class CorruptChunk(Exception):
    """Raised internally when a chunk file fails an integrity check."""


def _read_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """Parse a chunk file's bytes (page checksums verified) in the calling thread.

    ``pq.read_table`` goes through Arrow's dataset scanner, which finishes part of its
    work on Arrow's thread pools after it returns; a process that exits right after a
    read (``load_study(d).records`` as a script's last line) then sometimes dies of
    SIGABRT ("terminate called without an active exception") while those threads are
    torn down. ``ParquetFile.read`` without threads and without pre-buffering does all
    its work before it returns, and a chunk file is small enough not to need threads.
    """
    reader = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True,
                            pre_buffer=False)
    try:
        if columns is not None:  # those the file has (older chunks lack newer columns)
            names = set(reader.schema_arrow.names)
            columns = [c for c in columns if c in names]
        return reader.read(columns=columns, use_threads=False)
    finally:
        reader.close()


class StudyDirectory:
    """A study's output directory: manifest, chunk files, integrity checks.

    Single writer: a run writes only inside :meth:`writing`, which holds the directory's
    lock; a second writer is refused with :class:`StudyLockedError`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.chunk_dir = self.path / CHUNK_DIR
        self.manifest_path = self.path / MANIFEST
        self.lock_path = self.path / LOCK

    # -- the writer lock ----------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the directory's writer lock for the duration of the ``with`` block.

        An exclusive, non-blocking ``flock`` on ``lock.json`` (created if missing, and
        never deleted, so that every writer locks the same file), into which the holder
        writes its pid, host and start time. If another process holds it, the run is
        refused at once with :class:`StudyLockedError` naming that holder. The OS
        releases the lock when the holding process exits, even by SIGKILL, so a killed
        run never blocks the next one. The lock file is opened close-on-exec, so worker
        processes that start a fresh interpreter (loky's, dask's) do not hold it; a
        process forked without exec by a generator or method would, until it exits.

        On a platform without ``fcntl`` (Windows) nothing is locked; on a file system
        that refuses locks a warning says so and the run goes on unlocked.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # Windows: no flock (mlmsim targets Linux and macOS)
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = self._lock(fd)
            if locked:
                holder = {"pid": os.getpid(), "host": socket.gethostname(),
                          "started": datetime.datetime.now(datetime.UTC)
                          .isoformat(timespec="seconds")}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode(), 0)
            try:
                yield
            finally:
                if locked:
                    os.ftruncate(fd, 0)  # a finished run leaves no holder named
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _lock(self, fd: int) -> bool:
        """Take the lock on ``fd`` or raise :class:`StudyLockedError`; False (with a
        warning) when the file system refuses locks altogether."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyLockedError(
                f"refusing to write {self.path}: another run is writing it "
                f"({self._holder(fd)}); wait for it to finish, or use another directory"
            ) from None
        except OSError as exc:  # e.g. a network file system without locks
            warnings.warn(f"cannot lock {self.lock_path} ({exc.strerror or exc}); a second "
                          "run on this directory at the same time would not be noticed",
                          UserWarning, stacklevel=4)
            return False
        return True

    @staticmethod
    def _holder(fd: int) -> str:
        """The holder named in the lock file: "pid P on host H, started T". The holder
        writes its name just after taking the lock, so an empty or partial file is read
        again for up to 0.5 s."""
        for _ in range(50):
            try:
                holder = json.loads(os.pread(fd, 4096, 0))
                return (f"pid {int(holder['pid'])} on host {holder['host']}, started "
                        f"{holder['started']}")
            except (OSError, ValueError, TypeError, KeyError):  # being written right now
                time.sleep(0.01)
        return "a process that has not written its name into the lock file"

    # -- manifest ---------------------------------------------------------
    def read_manifest(self) -> dict | None:
        """The manifest as a dict, or None if the directory has none.

        The manifest's ``checksum`` (:func:`manifest_checksum`) must match the rest of
        it: a manifest edited by hand (a root seed, a replicate count, a condition) is
        refused with :class:`StudyDirectoryError`, as its records would then be read
        with parameters they were not computed with. A manifest written before the
        checksum existed is accepted when its fields agree with its own hashes (the
        definition hash with its components, the root seed with its component).
        """
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise StudyDirectoryError(f"{self.manifest_path} is not a readable manifest: {exc}"
                                      ) from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StudyDirectoryError(
                f"{self.path} is not an mlmsim study directory of format {FORMAT!r}")
        problem = _manifest_problem(manifest)
        if problem:
            raise StudyDirectoryError(
                f"refusing {self.manifest_path}: {problem}; it was edited after the study "
                "wrote it, so its records cannot be trusted to match it. Restore it, or "
                "run the study again into a new directory.")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        """Write the manifest atomically, with its checksum."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.chunk_dir.mkdir(exist_ok=True)
        body = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "checksum"},
                                     allow_nan=True))
        body["checksum"] = manifest_checksum(body)
        data = json.dumps(body, indent=1, allow_nan=True).encode()
        atomic_write(self.manifest_path, data)

    def record_run(self, run: dict) -> None:
        """Append one finished run (its start time, wall-clock seconds, replicates run
        and workers) to the manifest's ``runs``, so that a report can state the study's
        run time; a killed run writes nothing here. Call it while holding the lock."""
        manifest = self.read_manifest()
        if manifest is None:
            return
        manifest["runs"] = [*manifest.get("runs", []), dict(run)]
        self.write_manifest(manifest)

    def open_for(self, manifest: dict) -> None:
        """Check that this directory holds ``manifest``'s study, or start it there.

        A directory with another study definition, another mlmsim version, an edited
        manifest, or chunk files without a manifest is refused with
        :class:`StudyDirectoryError`, naming what differs: the parts of the definition
        (conditions, generate, methods, truth, seed, ...) and, where the manifest has
        them, the pieces within (a method's name, a global a generator uses).
        """
        old = self.read_manifest()
        if old is None:
            if self.chunk_dir.exists() and any(self.chunk_files()):
                raise StudyDirectoryError(
                    f"{self.path} holds chunk files but no {MANIFEST}; refusing to mix "
                    "results of an unknown study. Use a new directory.")
        else:
            problems = []
            if old.get("definition_hash") != manifest["definition_hash"]:
                if "parts" in manifest and "parts" not in old:
                    problems.append("it was written before the study identity covered "
                                    "everything a generator uses, so its definition "
                                    "cannot be compared with this one (its hashes of "
                                    + describe_change(old, manifest) + " differ)")
                else:
                    problems.append("its study definition differs (changed: "
                                    + describe_change(old, manifest) + ")")
            if old.get("mlmsim_version") != manifest["mlmsim_version"]:
                problems.append(f"it was written by mlmsim {old.get('mlmsim_version')}, "
                                f"this is mlmsim {manifest['mlmsim_version']}")
            if problems:
                raise StudyDirectoryError(
                    f"refusing to use {self.path}: " + "; ".join(problems)
                    + ". Results of different studies are never mixed; "
                    "use a new directory (or delete the old one).")
            # the run's own description (fields a new mlmsim adds included); the
            # replicates per condition as this run asks
            manifest = {**old, **manifest}
        self.write_manifest(manifest)
        self.remove_temporary_files()

    def remove_temporary_files(self) -> None:
        """Delete temporary files left by a run that was killed mid-write."""
        if self.chunk_dir.exists():
            for tmp in self.chunk_dir.glob(f"{_TMP_PREFIX}*"):
                tmp.unlink(missing_ok=True)

    # -- chunks -----------------------------------------------------------
    def chunk_files(self) -> list[ChunkFile]:
        """All files named like chunk files, sorted by (condition, start)."""
        out = []
        if not self.chunk_dir.exists():
            return out
        for p in self.chunk_dir.iterdir():
            m = _CHUNK_RE.match(p.name)
            if m:
                c, a, b, sha = m.groups()
                out.append(ChunkFile(int(c), int(a), int(b), sha, p))
        return sorted(out)

    def write_chunk(self, table: pa.Table, condition: int, start: int, stop: int,
                    definition_hash: str) -> ChunkFile:
        """Write a chunk's records atomically; the file name carries its SHA-256."""
        meta = {"definition_hash": definition_hash, "condition": condition,
                "rep_start": start, "rep_stop": stop, "n_rows": table.num_rows}
        schema_meta = dict(table.schema.metadata or {})
        schema_meta[_CHUNK_META_KEY] = json.dumps(meta).encode()
        table = table.replace_schema_metadata(schema_meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", write_page_checksum=True)
        data = sink.getvalue().to_pybytes()
        sha = _sha256(data)[:16]
        path = self.chunk_dir / f"c{condition:06d}-r{start:09d}-{stop:09d}-{sha}.parquet"
        atomic_write(path, data, sync_dir=False)
        return ChunkFile(condition, start, stop, sha, path)

    def read_chunk(self, chunk: ChunkFile, definition_hash: str | None = None,
                   columns: list[str] | None = None) -> pa.Table:
        """Read and verify a chunk file; raise :class:`CorruptChunk` if any check fails.

        Checks: the SHA-256 of the bytes matches the name; Parquet parses (with page
        checksums); the metadata names this condition, replicate range and study; the row
        count matches; the file holds every replicate of its range and no other.
        """
        try:
            data = chunk.path.read_bytes()
        except OSError as exc:
            raise CorruptChunk(f"cannot read: {exc}") from exc
        if _sha256(data)[:16] != chunk.sha:
            raise CorruptChunk("content hash does not match the file name")
        wanted = None if columns is None else list(dict.fromkeys([*columns, "rep"]))
        try:
            table = _read_parquet(data, wanted)
        except Exception as exc:  # noqa: BLE001 - any parse failure means corrupt
            raise CorruptChunk(f"not a readable Parquet file: {exc}") from exc
        raw = (table.schema.metadata or {}).get(_CHUNK_META_KEY)
        try:
            meta = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise CorruptChunk("chunk metadata missing") from exc
        expected = (chunk.condition, chunk.start, chunk.stop)
        if (meta.get("condition"), meta.get("rep_start"), meta.get("rep_stop")) != expected:
            raise CorruptChunk("chunk metadata does not match the file name")
        if definition_hash is not None and meta.get("definition_hash") != definition_hash:
            raise CorruptChunk("chunk belongs to another study definition")
        if meta.get("n_rows") != table.num_rows:
            raise CorruptChunk("row count does not match the metadata")
        reps = table.column("rep").to_numpy()
        if reps.size and (reps.min() < chunk.start or reps.max() >= chunk.stop):
            raise CorruptChunk("replicates outside the file's range")
        if np.unique(reps).size != chunk.n_reps:
            raise CorruptChunk("replicates missing from the file")
        if columns is not None:  # those the file has: older chunks lack newer columns
            table = table.select([c for c in columns if c in table.column_names])
        return table.replace_schema_metadata(None)

    def quarantine(self, chunk: ChunkFile, reason: str) -> None:
        """Set a corrupt chunk file aside (renamed ``*.corrupt``) and warn."""
        warnings.warn(f"chunk file {chunk.path.name} is corrupt ({reason}); it is set aside "
                      "and its replicates will be computed again", CorruptChunkWarning,
                      stacklevel=3)
        try:
            os.replace(chunk.path, chunk.path.with_name(chunk.path.name + ".corrupt"))
        except OSError:  # pragma: no cover - already gone
            pass

    def valid_chunks(self, definition_hash: str, *, quarantine: bool = True,
                     verify: bool = True) -> list[ChunkFile]:
        """The chunk files that pass :meth:`read_chunk`; corrupt ones set aside or skipped.

        Valid files whose replicate ranges overlap are compared (:meth:`overlaps`):
        identical records are kept once (a run computes only what no file holds), records
        that differ are refused with :class:`StudyDirectoryError`.
        """
        good = []
        for chunk in self.chunk_files():
            if verify:
                try:
                    self.read_chunk(chunk, definition_hash, columns=["rep"])
                except CorruptChunk as exc:
                    if quarantine:
                        self.quarantine(chunk, str(exc))
                    else:
                        warnings.warn(f"chunk file {chunk.path.name} is corrupt ({exc}); "
                                      "skipped", CorruptChunkWarning, stacklevel=2)
                    continue
            good.append(chunk)
        self.overlaps(definition_hash, chunks=good)  # refuses records that disagree
        return good

    def overlaps(self, definition_hash: str | None, n_reps: int | None = None,
                 chunks: list[ChunkFile] | None = None) -> Overlaps:
        """Chunk files of one condition that hold the same replicates, and whether they agree.

        Two runs writing the directory at once (without the lock: an old mlmsim, a file
        system without locks) or files copied in by hand leave such overlaps. Their
        records are compared on the replicates they share, every column but ``seconds``
        (wall-clock time): identical copies are reported (:class:`Overlaps`) and readers
        keep one of them (the file first by name); copies that differ are refused with
        :class:`StudyDirectoryError` naming the files, since which one is right cannot
        be known. Only files in an overlap are read; corrupt ones are left out, as
        readers skip them. ``n_reps`` counts only replicates below it.
        """
        chunks = self.chunk_files() if chunks is None else chunks
        n_dup = 0
        pairs: list[tuple[str, str]] = []
        repeated: set[tuple[int, int]] = set()
        tables: dict[Path, pa.Table | None] = {}

        def table_of(chunk: ChunkFile) -> pa.Table | None:
            if chunk.path not in tables:
                try:
                    tables[chunk.path] = self.read_chunk(chunk, definition_hash)
                except CorruptChunk:
                    tables[chunk.path] = None
            return tables[chunk.path]

        seen: list[ChunkFile] = []  # earlier files of the current condition
        reach = 0  # the largest stop among them
        for chunk in chunks:
            if seen and seen[-1].condition != chunk.condition:
                seen, reach = [], 0
                tables.clear()
            if chunk.start < reach:
                for earlier in seen:
                    lo, hi = max(chunk.start, earlier.start), min(chunk.stop, earlier.stop)
                    if lo >= hi:
                        continue
                    mine, theirs = table_of(chunk), table_of(earlier)
                    if mine is None or theirs is None:
                        continue
                    a, b = _rows_of(theirs, lo, hi), _rows_of(mine, lo, hi)
                    if not _same_records(a, b):
                        raise StudyDirectoryError(
                            f"chunk files {earlier.path.name} and {chunk.path.name} in "
                            f"{self.chunk_dir} hold different records for replicates "
                            f"[{lo}, {hi}) of condition {chunk.condition}; which is right "
                            "cannot be known. Delete both (a run computes them again), or "
                            "use a new directory.")
                    pairs.append((earlier.path.name, chunk.path.name))
                    top = hi if n_reps is None else min(hi, n_reps)
                    if top > lo:
                        reps = b.column("rep").to_numpy()
                        n_dup += int(((reps >= lo) & (reps < top)).sum())
                        repeated.update((chunk.condition, r) for r in range(lo, top))
            seen.append(chunk)
            reach = max(reach, chunk.stop)
        return Overlaps(n_dup, tuple(pairs), len(repeated))

    def duplicated_records(self, definition_hash: str | None, n_reps: int | None = None
                           ) -> tuple[int, list[tuple[str, str]]]:
        """(records held more than once, overlapping pairs of file names): :meth:`overlaps`."""
        found = self.overlaps(definition_hash, n_reps)
        return found.duplicated_records, list(found.pairs)

    def iter_tables(self, chunks: list[ChunkFile], definition_hash: str | None,
                    columns: list[str] | None = None) -> Iterator[tuple[ChunkFile, pa.Table]]:
        """Stream verified chunk tables one at a time; corrupt files are skipped with a warning."""
        for chunk in chunks:
            try:
                yield chunk, self.read_chunk(chunk, definition_hash, columns)
            except CorruptChunk as exc:
                warnings.warn(f"chunk file {chunk.path.name} is corrupt ({exc}); skipped",
                              CorruptChunkWarning, stacklevel=2)
