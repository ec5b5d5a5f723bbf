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
(:func:`mlmsim.study.load_study`) takes no lock. On platforms without ``fcntl``
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
callable, the methods (name and description), the true values and the root seed.
Callables are identified by qualified name, a hash of their source (its syntax tree, so
comments and layout do not count; the bytecode when no source is available), and the
data they close over (defaults, closure cells, module-level constants and helper
functions they use; so a module-level cache that a generator fills changes its
identity: keep caches elsewhere, or give the callable a ``descriptor()`` that states its
identity). The number of replicates and the chunk size are not part of the
identity: replicate r of condition c has the same seed and the same records whatever the
total and however replicates are grouped into files, so a study can be resumed with
another chunk size and extended with more replicates in the same directory. (With a
batched method, whose fits depend on their block of ``batch_size`` replicates to rounding,
an extension equals a fresh run bit for bit when the old total was a multiple of the
batch size.) A directory written for another definition, or by another mlmsim version
(whose engine may estimate differently), is refused with :class:`StudyDirectoryError`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime
import enum
import functools
import hashlib
import inspect
import json
import os
import re
import socket
import textwrap
import time
import types
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; the directory is then not locked (see StudyDirectory)
    fcntl = None

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "CHUNK_DIR",
    "FORMAT",
    "LOCK",
    "MANIFEST",
    "ChunkFile",
    "CorruptChunkWarning",
    "OverlappingChunksWarning",
    "StudyDirectory",
    "StudyDirectoryError",
    "StudyLockedError",
    "canonical",
    "describe_callable",
    "digest",
]

FORMAT = "mlmsim.study/1"
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


# ---------------------------------------------------------------------------
# Identity: canonical JSON of data and callables
# ---------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(obj: object) -> str:
    """SHA-256 (hex) of the canonical JSON form of ``obj`` (see :func:`canonical`)."""
    text = json.dumps(canonical(obj), sort_keys=False, separators=(",", ":"), allow_nan=True)
    return _sha256(text.encode())


def canonical(obj: object, _seen: frozenset[int] = frozenset()) -> object:
    """A JSON-able form of ``obj`` that is equal for equal data, across processes and runs.

    Numbers, strings, lists, tuples and mappings keep their values and order; numpy arrays
    and pandas objects are represented by dtype, shape and a hash of their bytes or values;
    dataclasses by their fields; objects with a ``descriptor()`` method by its result;
    callables by :func:`describe_callable`; other objects by their type and ``__dict__``.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else repr(float(obj))
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, bytes):
        return {"bytes": _sha256(obj)}
    if isinstance(obj, enum.Enum):
        return {"enum": type(obj).__qualname__, "name": obj.name}
    if id(obj) in _seen:
        return {"cycle": type(obj).__qualname__}
    seen = _seen | {id(obj)}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return {"ndarray": "object", "shape": list(obj.shape),
                    "values": [canonical(v, seen) for v in obj.ravel().tolist()]}
        return {"ndarray": obj.dtype.str, "shape": list(obj.shape),
                "sha256": _sha256(np.ascontiguousarray(obj).tobytes())}
    if isinstance(obj, pd.DataFrame):
        return {"frame": [canonical(c, seen) for c in obj.columns],
                "index": canonical(obj.index.tolist(), seen),
                "data": [canonical(obj[c].tolist(), seen) for c in obj.columns]}
    if isinstance(obj, pd.Series):
        return {"series": canonical(obj.name, seen), "index": canonical(obj.index.tolist(), seen),
                "values": canonical(obj.tolist(), seen)}
    if isinstance(obj, pd.Index):
        return {"index": canonical(obj.tolist(), seen)}
    if isinstance(obj, list | tuple):
        return [canonical(v, seen) for v in obj]
    if isinstance(obj, set | frozenset):
        items = [canonical(v, seen) for v in obj]
        return {"set": sorted(items, key=lambda v: json.dumps(v, sort_keys=True))}
    if isinstance(obj, Mapping):
        return {"mapping": [[canonical(k, seen), canonical(v, seen)] for k, v in obj.items()]}
    descriptor = getattr(obj, "descriptor", None)
    if callable(descriptor) and not isinstance(obj, type):
        return {"object": type(obj).__qualname__, "descriptor": canonical(descriptor(), seen)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {"dataclass": type(obj).__qualname__, "fields": canonical(fields, seen)}
    if callable(obj):
        return describe_callable(obj, seen)
    state = getattr(obj, "__dict__", None)
    return {"object": type(obj).__qualname__,
            "state": canonical(state, seen) if state is not None else None}


def _code_digest(obj: object) -> str:
    """Hash of a function's or class's source: its syntax tree, else its text or bytecode."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        return _bytecode_digest(code) if code is not None else "no-source"
    try:
        return _sha256(ast.dump(ast.parse(source)).encode())
    except SyntaxError:
        # A lambda inside a larger expression: hash its lines without indentation.
        return _sha256("\n".join(line.strip() for line in source.splitlines()).encode())


def _bytecode_digest(code: types.CodeType) -> str:
    def parts(c: types.CodeType) -> list:
        consts = [parts(k) if isinstance(k, types.CodeType) else repr(k) for k in c.co_consts]
        return [c.co_code.hex(), consts, list(c.co_names), list(c.co_varnames)]

    return _sha256(json.dumps(parts(code)).encode())


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return list(dict.fromkeys(names))


_DATA_TYPES = (bool, int, float, str, bytes, tuple, list, dict, frozenset, set, np.ndarray,
               np.generic, pd.Series, pd.DataFrame, enum.Enum)


def describe_callable(fn: object, _seen: frozenset[int] = frozenset()) -> dict:
    """Identify a callable by what it computes: name, source hash and the data it uses.

    - functions and lambdas: qualified name, source hash, defaults, closure values, and the
      module-level names they use that are data (numbers, strings, arrays, containers) or
      functions of the same module (described in turn);
    - ``functools.partial``: the function and its bound arguments;
    - bound methods: the function and the instance (as data);
    - anything with a ``descriptor()`` method (or attribute, for a function): its result,
      which then is the whole identity; other callable objects: their class (name and
      source hash) and ``__dict__``.
    The module name is not part of the identity, so a function imported under another
    module path (a script run directly, or imported) keeps its identity.
    """
    seen = _seen | {id(fn)}
    descriptor = getattr(fn, "descriptor", None)
    if callable(descriptor) and not isinstance(fn, type):
        return {"object": type(fn).__qualname__, "descriptor": canonical(descriptor(), seen)}
    if isinstance(fn, functools.partial):
        return {"partial": canonical(fn.func, seen), "args": canonical(list(fn.args), seen),
                "keywords": canonical(dict(fn.keywords), seen)}
    if isinstance(fn, types.MethodType):
        return {"method": describe_callable(fn.__func__, seen),
                "self": canonical(fn.__self__, seen)}
    if isinstance(fn, types.FunctionType):
        closure = {}
        if fn.__closure__:
            for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True):
                try:
                    value = cell.cell_contents
                except ValueError:  # empty cell
                    continue
                closure[name] = value if id(value) not in seen else None
        used = {}
        for name in _global_names(fn.__code__):
            if name not in fn.__globals__:
                continue
            value = fn.__globals__[name]
            if id(value) in seen or isinstance(value, types.ModuleType):
                continue
            if isinstance(value, types.FunctionType):
                if value.__module__ == fn.__module__:
                    used[name] = describe_callable(value, seen)
            elif isinstance(value, _DATA_TYPES):
                used[name] = canonical(value, seen)
        return {"function": fn.__qualname__, "code": _code_digest(fn),
                "defaults": canonical(fn.__defaults__, seen),
                "kwdefaults": canonical(fn.__kwdefaults__, seen),
                "closure": canonical(closure, seen), "globals": used}
    if isinstance(fn, types.BuiltinFunctionType | types.BuiltinMethodType):
        return {"builtin": f"{getattr(fn, '__module__', '')}.{fn.__qualname__}"}
    if isinstance(fn, type):
        return {"class": fn.__qualname__, "code": _code_digest(fn)}
    cls = type(fn)
    state = getattr(fn, "__dict__", None)
    return {"object": cls.__qualname__, "code": _code_digest(cls),
            "state": canonical(state, seen) if state is not None else None}


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


class CorruptChunk(Exception):
    """Raised internally when a chunk file fails an integrity check."""


def _read_parquet(data: bytes) -> pa.Table:
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
        return reader.read(use_threads=False)
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
        """The manifest as a dict, or None if the directory has none."""
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
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.chunk_dir.mkdir(exist_ok=True)
        data = json.dumps(manifest, indent=1, allow_nan=True).encode()
        atomic_write(self.manifest_path, data)

    def open_for(self, manifest: dict) -> None:
        """Check that this directory holds ``manifest``'s study, or start it there.

        A directory with another study definition, another mlmsim version, or chunk
        files without a manifest is refused with :class:`StudyDirectoryError`.
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
                old_parts = old.get("components", {})
                new_parts = manifest["components"]
                changed = [k for k in new_parts if old_parts.get(k) != new_parts[k]]
                problems.append("its study definition differs (changed: "
                                + (", ".join(changed) or "unknown") + ")")
            if old.get("mlmsim_version") != manifest["mlmsim_version"]:
                problems.append(f"it was written by mlmsim {old.get('mlmsim_version')}, "
                                f"this is mlmsim {manifest['mlmsim_version']}")
            if problems:
                raise StudyDirectoryError(
                    f"refusing to use {self.path}: " + "; ".join(problems)
                    + ". Results of different studies are never mixed; "
                    "use a new directory (or delete the old one).")
            manifest = {**old, **{k: manifest[k] for k in ("n_reps",)}}
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
        try:
            table = _read_parquet(data)
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
        if columns is not None:
            table = table.select(columns)
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

        Two valid files whose replicate ranges overlap mean the directory was edited by
        hand; that is refused with :class:`StudyDirectoryError`.
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
        for a, b in zip(good, good[1:], strict=False):
            if a.condition == b.condition and b.start < a.stop:
                raise StudyDirectoryError(
                    f"chunk files {a.path.name} and {b.path.name} overlap; the directory "
                    "was modified outside mlmsim")
        return good

    def duplicated_records(self, definition_hash: str | None, n_reps: int | None = None
                           ) -> tuple[int, list[tuple[str, str]]]:
        """Records held twice: chunk files of one condition whose replicate ranges overlap.

        Returns the number of records (rows) that repeat replicates held by an earlier file
        (by name order), counting only replicates below ``n_reps`` when given, and the
        overlapping pairs of file names. Only files in an overlap are read (their ``rep``
        column); corrupt ones are left out, as readers skip them.
        """
        n_dup = 0
        pairs: list[tuple[str, str]] = []
        reps: dict[Path, np.ndarray | None] = {}

        def rep_column(chunk: ChunkFile) -> np.ndarray | None:
            if chunk.path not in reps:
                try:
                    table = self.read_chunk(chunk, definition_hash, columns=["rep"])
                    reps[chunk.path] = table.column("rep").to_numpy()
                except CorruptChunk:
                    reps[chunk.path] = None
            return reps[chunk.path]

        seen: list[ChunkFile] = []  # earlier files of the current condition
        reach = 0  # the largest stop among them
        for chunk in self.chunk_files():
            if seen and seen[-1].condition != chunk.condition:
                seen, reach = [], 0
            stop = chunk.stop if n_reps is None else min(chunk.stop, n_reps)
            if chunk.start < min(reach, stop):
                over = [(max(chunk.start, e.start), min(stop, e.stop), e) for e in seen
                        if max(chunk.start, e.start) < min(stop, e.stop)
                        and rep_column(e) is not None]
                mine = rep_column(chunk) if over else None
                if mine is not None:
                    dup = np.zeros(mine.shape, dtype=bool)
                    for lo, hi, earlier in over:
                        dup |= (mine >= lo) & (mine < hi)
                        pairs.append((earlier.path.name, chunk.path.name))
                    n_dup += int(dup.sum())
            seen.append(chunk)
            reach = max(reach, stop)
        return n_dup, pairs

    def iter_tables(self, chunks: list[ChunkFile], definition_hash: str | None,
                    columns: list[str] | None = None) -> Iterator[tuple[ChunkFile, pa.Table]]:
        """Stream verified chunk tables one at a time; corrupt files are skipped with a warning."""
        for chunk in chunks:
            try:
                yield chunk, self.read_chunk(chunk, definition_hash, columns)
            except CorruptChunk as exc:
                warnings.warn(f"chunk file {chunk.path.name} is corrupt ({exc}); skipped",
                              CorruptChunkWarning, stacklevel=2)
