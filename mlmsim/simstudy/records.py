"""The records of a study: one tidy row per condition x replicate x method x parameter.

This module owns what a method's result becomes: the record columns
(:data:`RECORD_COLUMNS`), the :class:`Estimates` a method may return and the other results
it may return (a number, a mapping, a Series, a DataFrame, a fitted model with
``params``), normalised by :func:`normalise`; the Arrow schema of a chunk's records and
the buffer that builds them (:class:`RecordBuffer`); and how chunks written before a
column was added are read (:func:`with_added_columns`).
"""

from __future__ import annotations

import numbers
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import special

__all__ = [
    "ADDED_COLUMNS",
    "FLAGS",
    "RECORD_COLUMNS",
    "RECORD_FORMAT",
    "RESERVED",
    "Estimates",
    "error_text",
    "RecordBuffer",
    "normalise",
    "record_schema",
    "t_inference",
    "to_pandas",
    "with_added_columns",
    "z_quantile",
]

#: Columns of the tidy records, in order; the condition variables follow ``condition``.
RECORD_COLUMNS = (
    "condition", "rep", "method", "parameter", "truth", "estimate", "se", "ci_lower",
    "ci_upper", "df", "p", "converged", "singular", "hessian_pd", "identifiable",
    "evaluations", "error", "messages", "seconds", "seed",
)
#: Names a condition variable may not take: the record columns and the summary's.
RESERVED = frozenset(RECORD_COLUMNS) | {"measure", "mcse", "n"}
#: Part of the study's identity: bump it only when the records of an unchanged study
#: would change. Columns added since (each with the column it follows) are not: chunks
#: written without them are read with them null (:func:`with_added_columns`), so
#: directories written before still resume and summarise.
RECORD_FORMAT = 1
ADDED_COLUMNS = (("df", "ci_upper", pa.float64()), ("p", "df", pa.float64()),
                 ("evaluations", "identifiable", pa.int64()))
#: the flags a fitted model reports per replicate (boolean record columns)
FLAGS = ("converged", "singular", "hessian_pd", "identifiable")
_NAN = float("nan")


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
    t = est / se on df (the p of ``FitResult.coef_table``); NaN wherever df is NaN. The
    t distribution's quantile and tail are scipy's special functions ``stdtrit`` and
    ``stdtr``, which ``scipy.stats.t`` evaluates too (a tenth of its import time)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        crit = special.stdtrit(df, 0.5 + level / 2.0)
        p = 2.0 * special.stdtr(df, -np.abs(est / se))
        lo, hi = est - crit * se, est + crit * se
    bad = np.isnan(df)
    return (np.where(bad, np.nan, lo), np.where(bad, np.nan, hi), np.where(bad, np.nan, p))


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


def normalise(out: Any, scalar_name: str | None):
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
        return normalise(Estimates.from_fit(out), scalar_name)
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


def error_text(exc: BaseException) -> str:
    """The ``error`` column of a failed fit or generation: "TypeName: message"."""
    return f"{type(exc).__name__}: {exc}"


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """A records table as a DataFrame, its boolean columns nullable (``boolean``)."""
    return table.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)


def with_added_columns(table: pa.Table) -> pa.Table:
    """A chunk's records with the columns added to the records since it was written
    (:data:`ADDED_COLUMNS`) as nulls, in their place: old and new chunks then concatenate
    and summarise alike."""
    for name, after, kind in ADDED_COLUMNS:
        names = table.column_names
        if name not in names and after in names:
            table = table.add_column(names.index(after) + 1, pa.field(name, kind),
                                     pa.nulls(table.num_rows, kind))
    return table


def record_schema(cond_schema: pa.Schema) -> pa.Schema:
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


class RecordBuffer:
    """Column buffers of the records of one condition's chunk: one entry per fit, one per
    record (fit x parameter); :meth:`table` turns them into the Arrow table.

    ``condition`` is the condition's number and ``values`` its variables (written in
    ``cond_schema``'s types), ``truth`` maps its estimands to their true values and
    ``methods`` names the methods by index.
    """

    def __init__(self, condition: int, values: Mapping[str, Any], cond_schema: pa.Schema,
                 truth: Mapping[str, float], methods: Sequence[str]):
        self.condition = condition
        self.values = values
        self.cond_schema = cond_schema
        self.truth = truth
        self.methods = tuple(methods)
        estimands = list(truth)
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
            names, est, extras, flags, messages = normalise(out, self.scalar_name)
        except Exception as exc:  # noqa: BLE001 - a bad result is the method's error
            self.error(i, k, f"result: {error_text(exc)}", seconds, notes)
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
        n = len(self.est)
        if self.fits:
            offs, meth, counts, conv, sing, hpd, ident, evals, err, msgs, secs = zip(
                *self.fits, strict=True)
        else:
            offs = meth = counts = conv = sing = hpd = ident = evals = err = msgs = secs = ()
        fit_idx = np.repeat(np.arange(len(self.fits)), np.asarray(counts, dtype=np.int64))
        take = pa.array(fit_idx, type=pa.int64())
        rep_off = np.asarray(offs, dtype=np.int64)[fit_idx]
        truth_map = self.truth
        extra = {c: np.full(n, np.nan) for c in _EXTRA}
        for first, values in self.extra:
            for c, vals in zip(_EXTRA, values, strict=True):
                if vals is not None:
                    extra[c][first:first + len(vals)] = vals
        method_names = pa.array(self.methods, type=pa.string())
        method_idx = pa.array(np.asarray(meth, dtype=np.int32)[fit_idx], type=pa.int32())
        columns: dict[str, pa.Array] = {
            "condition": pa.array(np.full(n, self.condition, dtype=np.int64)),
        }
        values = self.values
        for fld in self.cond_schema:
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
        return pa.table(columns, schema=record_schema(self.cond_schema))
