"""The study runner: conditions x replicates x methods, with seeds, parallelism and resume.

This module owns the execution of a simulation study in the ADEMP frame (Morris, White
and Crowther 2019): a :class:`Study` holds the conditions (the data-generating
mechanisms' parameters, one row per condition), a ``generate(condition, rng) -> data``
callable, the methods applied to every replicate, the estimands with their true values,
the number of replicates and one root seed. :meth:`Study.run` runs every
(condition, replicate) once, records one tidy row per condition x replicate x method x
parameter, and owns everything else: per-replicate seeds (:mod:`mlmsim.study.seeds`),
error accounting (a replicate whose generation or fit raises is recorded with its error,
never dropped or redrawn), parallel execution over chunks of replicates (joblib/loky, or
a ``dask.distributed`` cluster), checkpoints and resume (:mod:`mlmsim.study.storage`) and
a progress bar. Records are bit-identical whatever ``n_jobs``, backend, chunk size or
resume history, except the ``seconds`` column, which measures wall-clock time.

A method is any callable ``method(data) -> estimates`` or ``method(data, rng) ->
estimates``; estimates may be a number (the single estimand), a mapping or Series
``parameter -> estimate``, a mapping ``parameter -> {"estimate", "se", "ci_lower",
"ci_upper", "df", "p"}`` (all but the estimate optional), a DataFrame indexed by parameter
with those columns, an :class:`Estimates`, or a fitted model with ``params`` (a
``FitResult``). :class:`mlmsim.methods.FormulaMethod` fits an lme4-style formula by ML or
REML with ``mlmsim.fit``, and :class:`~mlmsim.methods.FromSpec` draws each replicate from
a ``ModelSpec`` with ``mlmsim.simulate``.

A method object may offer ``fit_batch(datasets) -> list`` (one result or exception per
data set) to fit many replicates at once; the runner then uses it, unless the object's
``batch`` is False. If it also has ``batch_size`` B, the runner passes blocks of the
replicates r with the same r // B (and keeps chunk boundaries at multiples of B), so a
batched result that depends on its batch, even to rounding, is still the same in every
run; without ``batch_size`` the batch is the chunk.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mlmsim import __version__
from mlmsim.engine.compiled import compile_note
from mlmsim.progress import progress_reporter, say
from mlmsim.study.identity import (
    DefinitionError,
    canonical,
    digest,
    form_digest,
    form_parts,
)
from mlmsim.study.seeds import (
    as_root_seed,
    method_rng,
    replicate_rng,
    replicate_rngs,
    replicate_seed,
    replicate_seeds,
)
from mlmsim.study.storage import (
    FORMAT,
    CorruptChunk,
    CorruptChunkWarning,
    OverlappingChunksWarning,
    StudyDirectory,
    StudyDirectoryError,
    StudyLockedError,
)

__all__ = [
    "RECORD_COLUMNS",
    "FLAGS",
    "t_inference",
    "to_pandas",
    "z_quantile",
    "Condition",
    "CorruptChunkWarning",
    "DefinitionError",
    "Estimates",
    "IncompleteStudyWarning",
    "ReplicateCount",
    "OverlappingChunksWarning",
    "Study",
    "StudyDirectoryError",
    "StudyLockedError",
    "StudyResult",
    "load_study",
    "run_chunk",
]

#: Columns of the tidy records, in order; the condition variables follow ``condition``.
RECORD_COLUMNS = (
    "condition", "rep", "method", "parameter", "truth", "estimate", "se", "ci_lower",
    "ci_upper", "df", "p", "converged", "singular", "hessian_pd", "identifiable",
    "evaluations", "error", "messages", "seconds", "seed",
)
_RESERVED = frozenset(RECORD_COLUMNS) | {"measure", "mcse", "n"}
# Part of the study's identity: bump it only when the records of an unchanged study would
# change. Columns added since (each with the column it follows) are not: chunks written
# without them are read with them null (:func:`_with_added_columns`), so directories
# written before still resume and summarise.
_RECORD_FORMAT = 1
_ADDED_COLUMNS = (("df", "ci_upper", pa.float64()), ("p", "df", pa.float64()),
                  ("evaluations", "identifiable", pa.int64()))
#: the flags a fitted model reports per replicate (boolean record columns)
FLAGS = ("converged", "singular", "hessian_pd", "identifiable")
_MAX_CHUNK = 10_000
_NAN = float("nan")


# ---------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------


class Condition(Mapping):
    """One row of the conditions table, read-only: ``cond["n_groups"]`` or ``cond.n_groups``.

    ``index`` is the row's position in the table (the condition's number in the records).
    """

    __slots__ = ("index", "_values")

    def __init__(self, index: int, values: Mapping[str, Any]):
        object.__setattr__(self, "index", int(index))
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"condition has no variable {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Condition is read-only")

    def __reduce__(self):
        return (Condition, (self.index, self._values))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Condition({self.index}: {inner})"


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _conditions_frame(conditions: Mapping | pd.DataFrame | None) -> pd.DataFrame:
    """The conditions table: a DataFrame as given, or the full grid of a dict of lists.

    For a dict, the grid is ``itertools.product`` of the values in key order: the first
    variable varies slowest. A scalar value is a one-level factor.
    """
    if conditions is None:
        return pd.DataFrame(index=pd.RangeIndex(1))
    if isinstance(conditions, pd.DataFrame):
        frame = conditions.reset_index(drop=True).copy()
    elif isinstance(conditions, Mapping):
        keys = list(conditions)
        levels = []
        for key in keys:
            value = conditions[key]
            if isinstance(value, str) or not isinstance(value, Iterable):
                value = [value]
            levels.append([_scalar(v) for v in value])
        rows = list(itertools.product(*levels))
        frame = pd.DataFrame(rows, columns=keys)
    else:
        raise TypeError("conditions must be a dict of lists, a DataFrame, or None")
    if len(frame) == 0:
        raise ValueError("the study has no conditions")
    for col in frame.columns:
        if not isinstance(col, str):
            raise TypeError(f"condition variable names must be strings, got {col!r}")
        if col in _RESERVED:
            raise ValueError(f"condition variable {col!r} clashes with a column of the "
                             f"records or of the summary; reserved: {sorted(_RESERVED)}")
    return frame


# ---------------------------------------------------------------------------
# Methods and their estimates
# ---------------------------------------------------------------------------


def z_quantile(level: float) -> float:
    """z_{(1+level)/2}, the normal quantile of a two-sided interval of ``level``."""
    return statistics.NormalDist().inv_cdf(0.5 + level / 2.0)


@dataclass(frozen=True)
class Estimates:
    """What a method returns for one replicate.

    ``estimate`` maps parameter -> estimate; ``se``, ``ci_lower``, ``ci_upper``, ``df``
    (the degrees of freedom of a t test of the parameter) and ``p`` (its two-sided
    p-value) map parameter -> value (missing parameters are NaN). The flags are None
    when the method does not report them; ``messages`` are the method's warnings and
    notes; ``evaluations`` the deviance evaluations of the fit (``optsum.evaluations``:
    a fit that costs far more than its neighbours shows in the records).
    """

    estimate: Mapping[str, float] | pd.Series
    se: Mapping[str, float] | pd.Series | None = None
    ci_lower: Mapping[str, float] | pd.Series | None = None
    ci_upper: Mapping[str, float] | pd.Series | None = None
    converged: bool | None = None
    singular: bool | None = None
    hessian_pd: bool | None = None
    identifiable: bool | None = None
    messages: Sequence[str] = field(default_factory=tuple)
    df: Mapping[str, float] | pd.Series | None = None
    p: Mapping[str, float] | pd.Series | None = None
    evaluations: int | None = None

    @classmethod
    def from_fit(cls, res: Any, level: float = 0.95, ddf: str | None = None,
                 information: str = "observed") -> Estimates:
        """Estimates of a fitted model (``FitResult``): ``params``, their SEs, Wald CIs.

        ``params`` are the fixed effects gamma then the covariance parameters (vech T,
        sigma2); their SEs are ``fixef_se`` and ``covparms["se"]`` (from 2 H^{-1}, NaN
        where the Hessian H is not positive definite); the interval is the Wald interval
        estimate +- z_{(1+level)/2} SE.

        With ``ddf`` (a method of ``res.ddf``: "satterthwaite", "kenward-roger" (with the
        adjusted SE, REML only), "containment", "between-within", "residual"), each fixed
        effect also gets its df and the
        two-sided p-value of t = estimate / SE on those df, and its interval is
        estimate +- t_{df, (1+level)/2} SE; where the df is NaN, so are p and the
        interval (no fallback to the normal). The covariance parameters keep the Wald
        interval, with df and p NaN; ``information="expected"`` takes their SEs from the
        expected information (``res.covparms_table("expected")``).
        """
        params = pd.Series(res.params, dtype=float)
        se = pd.Series(np.nan, index=params.index)
        fixef_se = getattr(res, "fixef_se", None)
        if fixef_se is not None:
            se.update(pd.Series(fixef_se, dtype=float))
        covparms = (getattr(res, "covparms", None) if information == "observed"
                    else res.covparms_table(information))
        if covparms is not None and "se" in covparms:
            se.update(pd.Series(covparms["se"], dtype=float))
        z = z_quantile(level)
        lo, hi = params - z * se, params + z * se
        df = p = None
        if ddf is not None:  # the fixed effects come first in params
            k = len(res.fixef)
            se_k, dfs = (np.asarray(a, dtype=float) for a in res.fixef_se_df(ddf))
            se.iloc[:k] = se_k  # the KR-adjusted SE with "kenward-roger"
            tlo, thi, tp = t_inference(params.to_numpy()[:k], se_k, dfs, level)
            lo.iloc[:k], hi.iloc[:k] = tlo, thi
            df = pd.Series(np.nan, index=params.index)
            p = pd.Series(np.nan, index=params.index)
            df.iloc[:k], p.iloc[:k] = dfs, tp
        return cls(
            estimate=params, se=se, ci_lower=lo, ci_upper=hi, df=df, p=p,
            converged=_flag(getattr(res, "converged", None)),
            singular=_flag(getattr(res, "singular", None)),
            hessian_pd=_flag(getattr(res, "hessian_pd", None)),
            identifiable=_flag(getattr(res, "identifiable", None)),
            messages=tuple(str(m) for m in (getattr(res, "messages", None) or ())),
            evaluations=getattr(getattr(res, "optsum", None), "evaluations", None),
        )


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def t_inference(est: np.ndarray, se: np.ndarray, df: np.ndarray, level: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The t interval est -+ t_{df, (1+level)/2} se and the two-sided p-value of
    t = est / se on df (the p of ``FitResult.coef_table``); NaN wherever df is NaN."""
    from scipy import stats as sps

    with np.errstate(invalid="ignore", divide="ignore"):
        crit = sps.t.ppf(0.5 + level / 2.0, df)
        p = 2.0 * sps.t.sf(np.abs(est / se), df)
        lo, hi = est - crit * se, est + crit * se
    bad = np.isnan(df)
    return (np.where(bad, np.nan, lo), np.where(bad, np.nan, hi), np.where(bad, np.nan, p))


def _takes_rng(fn: Callable) -> bool:
    flag = getattr(fn, "takes_rng", None)
    if flag is not None:
        return bool(flag)
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
class _Method:
    name: str
    fn: Callable
    takes_rng: bool


def _methods(methods: Any) -> list[_Method]:
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
        out.append(_Method(name, fn, _takes_rng(fn)))
    if not out:
        raise ValueError("the study has no methods")
    return out


def _mapping(values: Any) -> dict[str, float]:
    if values is None:
        return {}
    if isinstance(values, pd.Series):
        values = values.to_dict()
    if not isinstance(values, Mapping):
        raise TypeError(f"true values must be a mapping parameter -> value, got {type(values)}")
    return {str(k): float(v) for k, v in values.items()}


def _values(mapping: Any, names: list[str]) -> list[float] | None:
    if mapping is None:
        return None
    if isinstance(mapping, pd.Series):
        mapping = mapping.to_dict()
    values = [mapping.get(n) for n in names]
    return [_NAN if v is None else float(v) for v in values]


_EXTRA = ("se", "ci_lower", "ci_upper", "df", "p")
"""The per-parameter values a method may give besides the estimate (record columns)."""
_NO_EXTRA = (None,) * len(_EXTRA)
_NO_INFO = (None,) * 5
"""A fit's flags and evaluations (converged, singular, hessian_pd, identifiable,
evaluations) when the method reports none."""


def _normalise(out: Any, scalar_name: str | None):
    """Any supported method result -> (names, estimates, extras, flags, messages), extras
    one list of values or None for each of :data:`_EXTRA`."""
    if isinstance(out, Estimates):
        est = out.estimate.to_dict() if isinstance(out.estimate, pd.Series) else out.estimate
        names = [str(k) for k in est]
        values = [float(v) for v in est.values()]
        flags = (out.converged, out.singular, out.hessian_pd, out.identifiable,
                 out.evaluations)
        extras = tuple(_values(getattr(out, c), names) for c in _EXTRA)
        return names, values, extras, flags, [str(m) for m in out.messages]
    if hasattr(out, "params") and hasattr(out, "converged"):
        return _normalise(Estimates.from_fit(out), scalar_name)
    if isinstance(out, pd.DataFrame):
        if "estimate" not in out:
            raise TypeError("a DataFrame result needs an 'estimate' column")
        names = [str(k) for k in out.index]
        extras = tuple(out[c].astype(float).tolist() if c in out else None for c in _EXTRA)
        return names, out["estimate"].astype(float).tolist(), extras, _NO_INFO, []
    if isinstance(out, pd.Series):
        return [str(k) for k in out.index], out.astype(float).tolist(), _NO_EXTRA, \
            _NO_INFO, []
    if isinstance(out, Mapping):
        names = [str(k) for k in out]
        rows = list(out.values())
        if rows and isinstance(rows[0], Mapping):
            est = [float(r["estimate"]) for r in rows]
            extras = tuple([float(r.get(c, _NAN)) for r in rows] if any(c in r for r in rows)
                           else None for c in _EXTRA)
            return names, est, extras, _NO_INFO, []
        return names, [float(v) for v in rows], _NO_EXTRA, _NO_INFO, []
    if isinstance(out, numbers.Real):
        if scalar_name is None:
            raise TypeError("a method returned a single number but the study declares several "
                            "estimands; return a mapping parameter -> estimate")
        return [scalar_name], [float(out)], _NO_EXTRA, _NO_INFO, []
    raise TypeError(f"unsupported method result of type {type(out).__name__}")


# ---------------------------------------------------------------------------
# Running one chunk of replicates (in a worker)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs to compute the records of any chunk (pickled once per task)."""

    root: int
    conditions: tuple[Condition, ...]
    cond_schema: pa.Schema
    generate: Callable
    methods: tuple[_Method, ...]
    truths: tuple[dict[str, float], ...]


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _warning_texts(log: list, start: int) -> list[str]:
    texts = [f"{w.category.__name__}: {w.message}" for w in log[start:]]
    del log[start:]
    return texts


class _Records:
    """Column buffers of one chunk: one entry per fit, one per record (fit x parameter)."""

    def __init__(self, plan: _Plan, condition: int):
        self.plan = plan
        self.condition = condition
        estimands = list(plan.truths[condition])
        self.estimands = estimands or [None]
        self.scalar_name = estimands[0] if len(estimands) == 1 else (
            "value" if not estimands else None)
        # per fit: (rep offset, method index, number of records, 4 flags, error, messages,
        # seconds)
        self.fits: list[tuple] = []
        self.names: list[str | None] = []
        self.est: list[float] = []
        # (first record, extras) for results with any of _EXTRA (SEs, CIs, df, p)
        self.extra: list[tuple] = []

    def ok(self, i: int, k: int, out: Any, seconds: float, notes: list[str] | None) -> None:
        if type(out) is dict:
            try:
                values = [float(v) for v in out.values()]
            except (TypeError, ValueError):
                values = None
            if values:
                self.names.extend([k if type(k) is str else str(k) for k in out])
                self.est.extend(values)
                self.fits.append((i, k, len(values), *_NO_INFO, None,
                                  "\n".join(notes) if notes else "", seconds))
                return
        if type(out) is float and self.scalar_name is not None:
            self.names.append(self.scalar_name)
            self.est.append(out)
            self.fits.append((i, k, 1, *_NO_INFO, None,
                              "\n".join(notes) if notes else "", seconds))
            return
        try:
            names, est, extras, flags, messages = _normalise(out, self.scalar_name)
        except Exception as exc:  # noqa: BLE001 - a bad result is the method's error
            self.error(i, k, f"result: {_error_text(exc)}", seconds, notes)
            return
        if notes:
            messages = messages + notes
        if not names:  # a fit that returned no estimates is still a fit: one empty row
            names, est, extras = [None], [_NAN], _NO_EXTRA
        if any(v is not None for v in extras):
            self.extra.append((len(self.est), extras))
        self.names.extend(names)
        self.est.extend(est)
        self.fits.append((i, k, len(names), *flags, None, "\n".join(messages), seconds))

    def error(self, i: int, k: int, message: str, seconds: float,
              notes: list[str] | None) -> None:
        n = len(self.estimands)
        self.names.extend(self.estimands)
        self.est.extend([_NAN] * n)
        self.fits.append((i, k, n, *_NO_INFO, message,
                          "\n".join(notes) if notes else "", seconds))

    def table(self, start: int, seeds: np.ndarray) -> pa.Table:
        plan = self.plan
        n = len(self.est)
        if self.fits:
            offs, meth, counts, conv, sing, hpd, ident, evals, err, msgs, secs = zip(
                *self.fits, strict=True)
        else:
            offs = meth = counts = conv = sing = hpd = ident = evals = err = msgs = secs = ()
        fit_idx = np.repeat(np.arange(len(self.fits)), np.asarray(counts, dtype=np.int64))
        take = pa.array(fit_idx, type=pa.int64())
        rep_off = np.asarray(offs, dtype=np.int64)[fit_idx]
        truth_map = plan.truths[self.condition]
        extra = {c: np.full(n, np.nan) for c in _EXTRA}
        for first, values in self.extra:
            for c, vals in zip(_EXTRA, values, strict=True):
                if vals is not None:
                    extra[c][first:first + len(vals)] = vals
        method_names = pa.array([m.name for m in plan.methods], type=pa.string())
        method_idx = pa.array(np.asarray(meth, dtype=np.int32)[fit_idx], type=pa.int32())
        columns: dict[str, pa.Array] = {
            "condition": pa.array(np.full(n, self.condition, dtype=np.int64)),
        }
        values = plan.conditions[self.condition]
        for fld in plan.cond_schema:
            columns[fld.name] = pa.repeat(pa.scalar(values[fld.name], type=fld.type), n)
        columns.update({
            "rep": pa.array(rep_off + start),
            "method": pa.DictionaryArray.from_arrays(method_idx, method_names)
            .dictionary_decode(),
            "parameter": pa.array(self.names, type=pa.string()),
            "truth": pa.array(np.array([truth_map.get(p, _NAN) for p in self.names],
                                       dtype=float)),
            "estimate": pa.array(np.asarray(self.est, dtype=float)),
            **{c: pa.array(extra[c]) for c in _EXTRA},
            "converged": pa.array(conv, type=pa.bool_()).take(take),
            "singular": pa.array(sing, type=pa.bool_()).take(take),
            "hessian_pd": pa.array(hpd, type=pa.bool_()).take(take),
            "identifiable": pa.array(ident, type=pa.bool_()).take(take),
            "evaluations": pa.array(evals, type=pa.int64()).take(take),
            "error": pa.array(err, type=pa.string()).take(take),
            "messages": pa.array(msgs, type=pa.string()).take(take),
            "seconds": pa.array(np.asarray(secs, dtype=float)[fit_idx]),
            "seed": pa.array(seeds[rep_off], type=pa.uint64()),
        })
        return pa.table(columns, schema=_record_schema(plan.cond_schema))


def _record_schema(cond_schema: pa.Schema) -> pa.Schema:
    f64, b = pa.float64(), pa.bool_()
    fields = [pa.field("condition", pa.int64()), *cond_schema,
              pa.field("rep", pa.int64()), pa.field("method", pa.string()),
              pa.field("parameter", pa.string()), pa.field("truth", f64),
              pa.field("estimate", f64), pa.field("se", f64), pa.field("ci_lower", f64),
              pa.field("ci_upper", f64), pa.field("df", f64), pa.field("p", f64),
              pa.field("converged", b), pa.field("singular", b),
              pa.field("hessian_pd", b), pa.field("identifiable", b),
              pa.field("evaluations", pa.int64()),
              pa.field("error", pa.string()), pa.field("messages", pa.string()),
              pa.field("seconds", f64), pa.field("seed", pa.uint64())]
    return pa.schema(fields)


def _batch_spec(method: _Method) -> tuple[Callable, int | None] | None:
    """(fit_batch, batch_size) of a method that fits batches, else None."""
    fn = getattr(method.fn, "fit_batch", None)
    if fn is None or not callable(fn) or getattr(method.fn, "batch", True) is False:
        return None
    size = getattr(method.fn, "batch_size", None)
    return fn, (int(size) if size else None)


def _alignment(methods: Sequence[_Method]) -> int:
    """Chunk boundaries must be multiples of this: the lcm of the methods' batch sizes."""
    align = 1
    for m in methods:
        spec = _batch_spec(m)
        if spec is not None and spec[1]:
            align = math.lcm(align, spec[1])
    return align


def run_chunk(plan: _Plan, condition: int, start: int, stop: int) -> pa.Table:
    """Records of replicates [start, stop) of one condition, as an Arrow table.

    For each replicate r with seed s = seed(condition, r): data = generate(condition,
    default_rng(s)); then every method on data (method k with its own stream if it asks
    for one). Exceptions are recorded, never raised; warnings become messages.
    """
    cond = plan.conditions[condition]
    seeds = replicate_seeds(plan.root, condition, np.arange(start, stop))
    rec = _Records(plan, condition)
    generate = plan.generate
    methods = list(enumerate(plan.methods))
    batched = {k: _batch_spec(m) for k, m in methods}
    clock = time.perf_counter
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        if not any(batched.values()):
            for i, rng in enumerate(replicate_rngs(seeds)):
                try:
                    data = generate(cond, rng)
                except Exception as exc:  # noqa: BLE001
                    notes = _warning_texts(log, 0) if log else None
                    text = f"generate: {_error_text(exc)}"
                    for k, _ in methods:
                        rec.error(i, k, text, _NAN, notes)
                    continue
                gen_notes = [f"generate: {t}" for t in _warning_texts(log, 0)] if log else None
                for k, m in methods:
                    t0 = clock()
                    try:
                        out = m.fn(data, method_rng(seeds[i], k)) if m.takes_rng else m.fn(data)
                    except Exception as exc:  # noqa: BLE001
                        seconds = clock() - t0
                        notes = _merge(gen_notes, _warning_texts(log, 0) if log else None)
                        rec.error(i, k, f"method: {_error_text(exc)}", seconds, notes)
                        continue
                    seconds = clock() - t0
                    notes = _merge(gen_notes, _warning_texts(log, 0) if log else None)
                    rec.ok(i, k, out, seconds, notes)
        else:
            # one block at a time, so that only a block's data sets are held in memory
            sizes = [spec[1] for spec in batched.values() if spec is not None]
            block = math.lcm(*sizes) if all(sizes) else stop - start
            a = start
            while a < stop:
                b = min(stop, (a // block + 1) * block)
                _run_batched(plan, cond, a, seeds[a - start:b - start], rec, batched, log,
                             offset=a - start)
                a = b
    return rec.table(start, seeds)


def _merge(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    if a and b:
        return a + b
    return a or b


def _run_batched(plan: _Plan, cond: Condition, start: int, seeds: np.ndarray, rec: _Records,
                 batched: dict[int, tuple | None], log: list, offset: int = 0) -> None:
    """Replicates start, start + 1, ... (seeds ``seeds``) when a method fits batches:
    generate all, fit, record in replicate order (at ``offset`` within the chunk).

    A method with a ``batch_size`` B gets the replicates in blocks {r : r // B = k} (those
    whose generation succeeded); without one, all of them form one batch.
    """
    clock = time.perf_counter
    n = len(seeds)
    datas: list[Any] = [None] * n
    gen_error: dict[int, str] = {}
    gen_notes: list[list[str] | None] = [None] * n
    # the generator's arrays straight to the methods when every method takes them
    draw = getattr(plan.generate, "draw", None)
    if not (callable(draw) and all(getattr(m.fn, "takes_sim_batch", False)
                                   for m in plan.methods)):
        draw = plan.generate
    for i, rng in enumerate(replicate_rngs(seeds)):
        try:
            datas[i] = draw(cond, rng)
        except Exception as exc:  # noqa: BLE001
            gen_error[i] = f"generate: {_error_text(exc)}"
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
            blocks: dict[int, list[int]] = {}
            for i in ok:
                blocks.setdefault((start + i) // size if size else 0, []).append(i)
            for block in blocks.values():
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
                rec.error(offset + i, k, f"method: {_error_text(r)}", seconds, notes)
            else:
                rec.ok(offset + i, k, r, seconds, notes)


def _run_task(plan: _Plan, task: tuple[int, int, int]) -> tuple[tuple[int, int, int], pa.Table]:
    return task, run_chunk(plan, *task)


def _run_watched_task(plan: _Plan, task: tuple[int, int, int], parent: int
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
    import threading

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


# ---------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------


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
        self.conditions = _conditions_frame(conditions)
        if len(self.conditions) >= 10**6:
            raise ValueError("at most 999,999 conditions")
        self.generate = generate
        self._methods = _methods(methods)
        self.n_reps = n_reps
        self.seed = as_root_seed(seed)
        self._conds = tuple(
            Condition(i, {k: _scalar(v) for k, v in row.items()})
            for i, row in enumerate(self.conditions.to_dict(orient="records")))
        self.truths = tuple(self._truths(truth))
        self._cond_schema = pa.Schema.from_pandas(self.conditions, preserve_index=False) \
            .remove_metadata()

    def _truths(self, truth: Any) -> list[dict[str, float]]:
        if truth is None and callable(getattr(self.generate, "truth", None)):
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
            "record_format": canonical(_RECORD_FORMAT),
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
        """Hashes of the parts of the study's identity (:mod:`mlmsim.study.identity`).

        Conditions, generate (with everything it uses: module-level specs, helper
        functions of other modules, closure values), methods and their options, truth,
        root seed, record format and the mlmsim version; not the number of replicates
        or the chunk size, which change neither seeds nor records. Raises
        :class:`~mlmsim.study.identity.DefinitionError` (a ValueError) when the
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
                           "data": [[canonical(_scalar(v)) for v in row]
                                    for row in self.conditions.itertuples(index=False)]},
            "truth": [dict(t) for t in self.truths],
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        }

    def _plan(self) -> _Plan:
        return _Plan(self.seed, self._conds, self._cond_schema, self.generate,
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
        """The records of one replicate, computed again: identical to the run's (but seconds).

        With a batched method the replicate's whole block (:class:`mlmsim.methods.FormulaMethod`) is
        fitted, since a batched fit depends on its block to rounding.
        """
        align = _alignment(self._methods)
        start = rep // align * align
        stop = min(start + align, self.n_reps) if rep < self.n_reps else rep + 1
        table = run_chunk(self._plan(), condition, start, stop)
        table = table.filter(pc.equal(table.column("rep"), rep))
        return to_pandas(table)

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
            ceil(total / max(16, 4 workers)), at most 10,000 and at most ``n_reps``;
            rounded up to a multiple of the batched methods' ``batch_size``.
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
        workers = _n_workers(n_jobs, backend, scheduler)
        if chunk_size is None:
            total = len(self._conds) * self.n_reps
            chunk_size = math.ceil(total / max(16, 4 * workers))
            chunk_size = max(1, min(chunk_size, _MAX_CHUNK, self.n_reps))
        chunk_size = int(chunk_size)
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        align = _alignment(self._methods)
        chunk_size = math.ceil(chunk_size / align) * align
        tasks, n_done = _tasks(len(self._conds), self.n_reps, chunk_size, done)
        tables: dict[tuple[int, int], pa.Table] = {}
        total = len(self._conds) * self.n_reps
        if n_done:
            say(f"{label}: resuming: {n_done} of {total} replicates done", progress)
        if tasks:
            note = compile_note()
            if note:
                say(f"{label}: {note}", progress)
        bar = progress_reporter(total, n_done, progress, label)
        started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
        try:
            for (c, a, b), table in _execute(plan, tasks, n_jobs, backend, scheduler, workers):
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


def _n_workers(n_jobs: int, backend: str, scheduler: Any) -> int:
    if backend == "dask" and scheduler is not None:
        return max(1, n_jobs if n_jobs > 0 else os.cpu_count() or 1)
    if n_jobs is None or n_jobs == 0:
        raise ValueError("n_jobs must be a non-zero integer")
    if n_jobs < 0:
        return max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return n_jobs


def _tasks(n_conditions: int, n_reps: int, chunk_size: int,
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


def _execute(plan: _Plan, tasks: list, n_jobs: int, backend: str, scheduler: Any,
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


def _execute_dask(plan: _Plan, tasks: list, scheduler: Any,
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


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """A records table as a DataFrame, its boolean columns nullable (``boolean``)."""
    return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)


def _with_added_columns(table: pa.Table) -> pa.Table:
    """A chunk's records with the columns added to the records since it was written
    (:data:`_ADDED_COLUMNS`) as nulls, in their place: old and new chunks then concatenate
    and summarise alike."""
    for name, after, kind in _ADDED_COLUMNS:
        names = table.column_names
        if name not in names and after in names:
            table = table.add_column(names.index(after) + 1, pa.field(name, kind),
                                     pa.nulls(table.num_rows, kind))
    return table


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
                                                              _ADDED_COLUMNS
                                                              if name in columns)]))
            chunks = self.directory.chunk_files()
            tables = _without_repeats(self.directory.iter_tables(
                chunks, self.definition_hash, read))
        for table in tables:
            table = _with_added_columns(table)
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
                table = _record_schema(pa.Schema.from_pandas(
                    self.conditions, preserve_index=False).remove_metadata()).empty_table()
            self._records = to_pandas(table)
        return self._records

    def summarise(self, **kwargs: Any) -> pd.DataFrame:
        """Performance measures with Monte Carlo SEs: :func:`mlmsim.study.summarise`."""
        from mlmsim.study.measures import summarise

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
