"""What the runner asks of a study's generator and methods, as ``typing.Protocol``s.

The runner knows nothing of mixed models: it calls a :class:`Generator` and the
:class:`Method`s and records what they return (:mod:`mlmsim.simstudy.records`). Beyond
being callable, an object may say more about itself; each such ability is one small
protocol here, checked with ``isinstance`` (structurally: no base class to inherit):

- :class:`KnowsTruth`: a generator that gives the true values of a condition
  (``Study(truth=None)`` then uses them);
- :class:`DrawsArrays`: a generator with a cheaper ``draw`` (arrays instead of a
  DataFrame), used when every method takes such draws (:class:`TakesArrays`);
- :class:`ChoosesRng`: a method that says whether it takes the replicate's stream
  (otherwise its signature decides: a second positional parameter means yes);
- :class:`BatchedMethod`: a method that fits many replicates at once;
- :class:`AnnouncesRun`: a method with something to say before a run starts (such as
  a first compilation), shown above the progress bar.

:func:`as_methods` turns what a user passes as ``methods`` into :class:`MethodEntry`s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "AnnouncesRun",
    "BatchedMethod",
    "ChoosesRng",
    "DrawsArrays",
    "Generator",
    "KnowsTruth",
    "Method",
    "MethodEntry",
    "RecordSource",
    "TakesArrays",
    "as_methods",
    "batch_spec",
]


class Generator(Protocol):
    """``generate(condition, rng) -> data``: one replicate's data set, drawn from ``rng``
    (the replicate's own ``numpy.random.Generator``) for a :class:`Condition`."""

    def __call__(self, condition: Any, rng: np.random.Generator) -> Any: ...


@runtime_checkable
class KnowsTruth(Protocol):
    """A generator that gives a condition's true values, parameter -> value."""

    def truth(self, condition: Any) -> Mapping[str, float]: ...


@runtime_checkable
class DrawsArrays(Protocol):
    """A generator whose ``draw(condition, rng)`` gives the replicate as arrays that
    :class:`TakesArrays` methods fit directly: the same data as ``generate`` from the same
    stream, without a DataFrame."""

    def draw(self, condition: Any, rng: np.random.Generator) -> Any: ...


class Method(Protocol):
    """``method(data)`` or ``method(data, rng) -> estimates`` (a number, a mapping, a
    Series or DataFrame by parameter, :class:`~mlmsim.simstudy.records.Estimates`, or a
    fitted model with ``params``)."""

    def __call__(self, data: Any, /, *args: Any) -> Any: ...


@runtime_checkable
class ChoosesRng(Protocol):
    """A method that says whether it is called as ``method(data, rng)``."""

    takes_rng: bool


@runtime_checkable
class TakesArrays(Protocol):
    """A method that fits the arrays of :meth:`DrawsArrays.draw` when ``takes_sim_batch``."""

    takes_sim_batch: bool


@runtime_checkable
class BatchedMethod(Protocol):
    """A method that fits many replicates at once.

    ``fit_batch`` is a callable ``fit_batch(datasets) -> list`` (one result or exception
    per data set, in order), or None when the object fits one at a time. Optional
    attributes: ``batch_size`` B (absent or None: the whole chunk), the most data sets
    the runner passes at once; ``batch = False`` turns batching off.

    The runner relies on one promise: each data set's result is the one it would get in
    any other batch (bit for bit), so that records do not depend on the chunk size, the
    workers or a resume. A batch that raises, or returns the wrong number of results, is
    fitted one data set at a time by calling the method.
    """

    @property
    def fit_batch(self) -> Callable[[Sequence[Any]], list[Any]] | None: ...


@runtime_checkable
class AnnouncesRun(Protocol):
    """A method with a line to show before a run starts, or None."""

    def run_note(self) -> str | None: ...


@runtime_checkable
class RecordSource(Protocol):
    """Records read chunk by chunk (a :class:`~mlmsim.simstudy.results.StudyResult`):
    what :func:`mlmsim.simstudy.measures.summarise_records` summarises without holding
    them all."""

    conditions: Any
    methods: list[str]

    def iter_tables(self, columns: list[str] | None = None) -> Any: ...


def _takes_rng(fn: Callable) -> bool:
    """Whether ``fn`` is called with the replicate's stream: its ``takes_rng`` if it says
    (:class:`ChoosesRng`), else whether it takes two positional arguments (or ``*args``)."""
    if isinstance(fn, ChoosesRng) and fn.takes_rng is not None:
        return bool(fn.takes_rng)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


@dataclass(frozen=True)
class MethodEntry:
    """A study's method: its name in the records, the callable, and whether it is called
    with the replicate's stream."""

    name: str
    fn: Callable
    takes_rng: bool


def as_methods(methods: Any) -> list[MethodEntry]:
    """A dict name -> method, a list of named methods (``.name`` or ``__name__``) or one
    method -> the study's :class:`MethodEntry`s, in order; names unique and non-empty."""
    if callable(methods) and not isinstance(methods, Mapping):
        methods = [methods]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    else:
        items = []
        for m in methods:
            name = getattr(m, "name", None) or getattr(m, "__name__", None)
            if not isinstance(name, str) or name == "<lambda>":
                raise ValueError("cannot name a method; pass methods as a dict name -> method")
            items.append((name, m))
    out, names = [], set()
    for name, fn in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"method names must be non-empty strings, got {name!r}")
        if name in names:
            raise ValueError(f"duplicate method name {name!r}; pass methods as a dict")
        if not callable(fn):
            raise TypeError(f"method {name!r} is not callable")
        names.add(name)
        out.append(MethodEntry(name, fn, _takes_rng(fn)))
    if not out:
        raise ValueError("the study has no methods")
    return out


def batch_spec(method: MethodEntry) -> tuple[Callable, int | None] | None:
    """(fit_batch, batch_size) of a :class:`BatchedMethod` that fits batches, else None
    (no ``fit_batch``, or it is None, or the object's ``batch`` is False)."""
    fn = method.fn
    if not isinstance(fn, BatchedMethod) or getattr(fn, "batch", True) is False:
        return None
    fit_batch = fn.fit_batch
    if fit_batch is None or not callable(fit_batch):
        return None
    size = getattr(fn, "batch_size", None)
    return fit_batch, (int(size) if size else None)
