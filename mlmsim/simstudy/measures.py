"""Performance measures of a simulation study, each with its Monte Carlo standard error.

This module owns the summary of tidy records (one row per condition x replicate x method
x parameter) into tidy measures: one row per condition x method x parameter x measure
with columns ``estimate``, ``mcse`` and ``n`` (the number of replicates the measure
used). The definitions and MCSE formulas are those of Morris, White and Crowther (2019,
Table 6) as implemented in rsimsum (Gasparini 2018). For one condition, method and
parameter with true value theta, let theta_i be the estimate and s_i its SE in replicate
i = 1..n, thetabar = mean(theta_i), and

    S2 = sum_i (theta_i - thetabar)^2                      (sum of squared deviations)

measure     estimate                                   MCSE
bias        thetabar - theta                           sqrt(S2 / (n (n-1)))
relbias     (thetabar - theta) / theta                 sqrt(S2 / (theta^2 n (n-1)))
empse       sqrt(S2 / (n-1))                           empse / sqrt(2 (n-1))
mse         (1/n) sum (theta_i - theta)^2              sqrt(sum((theta_i-theta)^2 - mse)^2
                                                             / (n (n-1)))
rmse        sqrt(mse)                                  MCSE(mse) / (2 rmse)   (delta method)
modse       sqrt((1/n) sum s_i^2)                      sqrt(var(s^2) / (4 n modse^2))
relerror    100 (modse / empse - 1)  [percent]         100 (modse/empse) sqrt(var(s^2) /
                                                             (4 n modse^4) + 1/(2 (n-1)))
cover       (1/n) sum 1(lo_i <= theta <= hi_i)         sqrt(cover (1 - cover) / n)
becover     (1/n) sum 1(lo_i <= thetabar <= hi_i)      sqrt(becover (1 - becover) / n)
rejection   (1/n) sum 1(|theta_i - theta_0| / s_i      sqrt(p (1 - p) / n)
                      >= z_{1-alpha/2})

with var(s^2) = sum_i (s_i^2 - mean(s^2))^2 / (n-1), theta_0 the null value (0 by
default; ``rejection`` is power when theta != theta_0 and the type I error rate when
theta = theta_0; rsimsum calls it ``power``), and (lo_i, hi_i) the interval recorded by
the method, or the Wald interval theta_i -+ z_{(1+level)/2} s_i where none was recorded.

Records with degrees of freedom (the ``df`` column, e.g. of ``FormulaMethod(...,
ddf="satterthwaite")``) are t-based: ``rejection`` compares |theta_i - theta_0| / s_i with
t_{df_i, 1-alpha/2} (for theta_0 = 0, the recorded p <= alpha). A condition x method x
parameter with a finite df in any record is t-based throughout: its records with a NaN df
(where the method could not compute one, and so recorded no p and no interval) are left
out of ``rejection``, ``cover`` and ``becover`` rather than given a normal-theory test or
interval; ``n`` says how many records were used. (One whose df are all NaN cannot be told
from a method without df, and gets the Wald fallback.)
``bias``, ``empse`` and the measures of theta_i use the replicates with a finite
estimate (and a finite truth for bias, relbias, mse, rmse); ``modse``, ``relerror`` and
``rejection`` those with a finite estimate and SE (``relerror`` compares modse and empse on
those same replicates); ``cover`` and ``becover`` those with a finite interval.

Per condition and method (``parameter == "(fit)"``) the fits themselves are counted:
``n_fits``, ``n_errors``/``error_rate``, ``n_nonconverged``/``nonconverged_rate``,
``n_singular``/``singular_rate``, ``n_nonpd_hessian``/``nonpd_hessian_rate``,
``n_nonidentifiable``/``nonidentifiable_rate`` (rates over the fits that report the
flag, MCSE sqrt(p (1 - p) / n)) and ``mean_seconds`` (MCSE sd / sqrt(n)).

Records are read in chunks (twice: the second pass counts bias-eliminated coverage
around thetabar), and per-chunk means and sums of squares are pooled exactly (Chan,
Golub and LeVeque), so studies larger than memory can be summarised.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import special

from mlmsim.simstudy.protocols import RecordSource
from mlmsim.simstudy.records import to_pandas

__all__ = [
    "FIT_MEASURES",
    "FIT_PARAMETER",
    "MEASURES",
    "summarise_records",
    "summary_table",
]

#: Per-parameter measures, in output order.
MEASURES = ("bias", "relbias", "empse", "mse", "rmse", "modse", "relerror", "cover",
            "becover", "rejection")
#: Per-fit measures (parameter ``FIT_PARAMETER``), in output order.
FIT_MEASURES = ("n_fits", "n_errors", "error_rate", "n_nonconverged", "nonconverged_rate",
                "n_singular", "singular_rate", "n_nonpd_hessian", "nonpd_hessian_rate",
                "n_nonidentifiable", "nonidentifiable_rate", "mean_seconds")
FIT_PARAMETER = "(fit)"

_KEYS = ["condition", "method", "parameter"]
_FIT_KEYS = ["condition", "method"]
_COLUMNS = ["condition", "rep", "method", "parameter", "truth", "estimate", "se", "ci_lower",
            "ci_upper", "df", "converged", "singular", "hessian_pd", "identifiable", "error",
            "seconds"]
# record columns that are neither read here nor condition variables
_OTHER_COLUMNS = ("p", "evaluations", "messages", "seed")
# Moments pooled across chunks: name -> (count column, mean column, M2 column)
_MOMENTS = ("est", "err2", "pest", "s2")
# Records per summarised batch: chunks are pooled up to this many rows (fewer, larger
# groupbys for studies of small chunks), so memory is bounded by it and by the chunk size,
# never by the number of records.
_BATCH_ROWS = 50_000


def _z(p: float) -> float:
    return statistics.NormalDist().inv_cdf(p)


def _chunk_source(source: Any, where: Callable | None
                  ) -> tuple[Callable[[], Iterator[pd.DataFrame]], pd.DataFrame | None,
                             list[str] | None]:
    """(a function giving a fresh iterator of record chunks, conditions, method order)."""
    if isinstance(source, RecordSource):
        result = source

        def chunks() -> Iterator[pd.DataFrame]:
            return _batches(result.iter_tables(_COLUMNS))

        conditions = result.conditions.copy()
        conditions.insert(0, "condition", np.arange(len(conditions)))
        methods = result.methods
    elif isinstance(source, pd.DataFrame):
        frame = source

        def chunks() -> Iterator[pd.DataFrame]:
            return iter([frame])

        cond_vars = [c for c in frame.columns if c not in _COLUMNS
                     and c not in _OTHER_COLUMNS]
        conditions = frame[["condition", *cond_vars]].drop_duplicates("condition")
        methods = list(dict.fromkeys(frame["method"].tolist()))
    elif isinstance(source, Iterable):
        frames = list(source)
        return _chunk_source(pd.concat(frames, ignore_index=True), where)
    else:
        raise TypeError("summarise_records() takes records (a DataFrame, or an iterable "
                        "of them) or a StudyResult")
    if where is None:
        return chunks, conditions, methods

    def filtered() -> Iterator[pd.DataFrame]:
        for df in chunks():
            yield df[np.asarray(where(df), dtype=bool)]

    return filtered, conditions, methods


def _batches(tables: Iterable, rows: int | None = None) -> Iterator[pd.DataFrame]:
    """Concatenate chunk tables into DataFrames of about ``rows`` rows (bounded memory)."""
    rows = rows or _BATCH_ROWS
    pending, n = [], 0
    for table in tables:
        pending.append(table)
        n += table.num_rows
        if n >= rows:
            yield to_pandas(pa.concat_tables(pending))
            pending, n = [], 0
    if pending:
        yield to_pandas(pa.concat_tables(pending))


def _pass1(df: pd.DataFrame, level: float, alpha: float, null: float
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group counts, means and sums of squares (M2) of one chunk of records.

    Coverage and rejection are counted apart for the records that bring their own
    interval or df (``n_cover``, ``n_rej``) and for those given the Wald fallback
    (``n_cover_z``, ``n_rej_z``); :func:`_t_based` decides per group, after pooling,
    whether the latter count.
    """
    fits = _fit_partial(df)  # every fit, including those without a parameter row
    df = df[df["parameter"].notna()] if df["parameter"].isna().any() else df
    est = df["estimate"].to_numpy(dtype=float, na_value=np.nan)
    truth = df["truth"].to_numpy(dtype=float, na_value=np.nan)
    se = df["se"].to_numpy(dtype=float, na_value=np.nan)
    dof = _dof(df)
    lo, hi, wald = _intervals(df, est, se, level)
    with np.errstate(all="ignore"):
        f_est = np.isfinite(est)
        f_err = f_est & np.isfinite(truth)
        f_pair = f_est & np.isfinite(se)
        f_ci = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(truth)
        f_df = np.isfinite(dof)
        stat = np.abs(est - null) / se
        z_rej = stat >= _z(1.0 - alpha / 2.0)
        t_rej = stat >= _t_crit(1.0 - alpha / 2.0, dof, f_pair & f_df)
        covers = (lo <= truth) & (truth <= hi)
        work = pd.DataFrame({
            "condition": df["condition"].to_numpy(),
            "method": df["method"].to_numpy(dtype=object),
            "parameter": df["parameter"].to_numpy(dtype=object),
            "est": np.where(f_est, est, np.nan),
            "err2": np.where(f_err, (est - truth) ** 2, np.nan),
            "pest": np.where(f_pair, est, np.nan),
            "s2": np.where(f_pair, se**2, np.nan),
            "cover": np.where(f_ci & ~wald, covers, np.nan),
            "cover_z": np.where(f_ci & wald, covers, np.nan),
            "rej": np.where(f_pair & f_df, t_rej, np.nan),
            "rej_z": np.where(f_pair & ~f_df, z_rej, np.nan),
            "dof": np.where(f_df, 1.0, np.nan),
            "truth": np.where(np.isfinite(truth), truth, np.nan),
        })
    g = work.groupby(_KEYS, sort=False)
    cols = list(_MOMENTS)
    n = g[cols].count()
    mean = g[cols].mean().fillna(0.0)
    m2 = (g[cols].var(ddof=0).fillna(0.0) * n)
    part = pd.concat({"n": n, "mean": mean, "m2": m2}, axis=1)
    part.columns = [f"{a}_{b}" for a, b in part.columns]
    for c in ("cover", "cover_z", "rej", "rej_z"):
        part[f"n_{c}"] = g[c].count()
        part[f"hits_{c}"] = g[c].sum()
    part["n_df"] = g["dof"].count()
    part["truth"] = g["truth"].first()
    return part.reset_index(), fits


def _dof(df: pd.DataFrame) -> np.ndarray:
    """The records' degrees of freedom (NaN where none; records without the column,
    written before it existed, have none)."""
    if "df" not in df:
        return np.full(len(df), np.nan)
    return df["df"].to_numpy(dtype=float, na_value=np.nan)


def _t_crit(q: float, dof: np.ndarray, use: np.ndarray) -> np.ndarray:
    """The q quantile of t on dof where ``use``, NaN elsewhere."""
    out = np.full(dof.shape, np.nan)
    if use.any():
        out[use] = special.stdtrit(dof[use], q)
    return out


def _intervals(df: pd.DataFrame, est: np.ndarray, se: np.ndarray, level: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recorded intervals, with the Wald interval where none was recorded; and
    which are the Wald fallback."""
    lo = df["ci_lower"].to_numpy(dtype=float, na_value=np.nan)
    hi = df["ci_upper"].to_numpy(dtype=float, na_value=np.nan)
    z = _z(0.5 + level / 2.0)
    with np.errstate(all="ignore"):
        missing = ~(np.isfinite(lo) & np.isfinite(hi))
        if missing.any():
            lo = np.where(missing, est - z * se, lo)
            hi = np.where(missing, est + z * se, hi)
    return lo, hi, missing


def _t_based(acc: pd.DataFrame) -> pd.DataFrame:
    """Pooled counts -> ``n_cover``, ``hits_cover``, ``n_rej``, ``hits_rej``: the Wald
    fallback counts only in groups without df (module docstring)."""
    z_ok = acc["n_df"] == 0
    for c in ("cover", "rej"):
        for k in ("n", "hits"):
            acc[f"{k}_{c}"] = acc[f"{k}_{c}"] + acc[f"{k}_{c}_z"].where(z_ok, 0)
    return acc.drop(columns=[f"{k}_{c}_z" for c in ("cover", "rej") for k in ("n", "hits")])


def _fit_partial(df: pd.DataFrame) -> pd.DataFrame:
    """Per condition x method counts of fits, errors and flags in one chunk."""
    fits = df.drop_duplicates(["condition", "rep", "method"])
    error = fits["error"].notna().to_numpy()
    work = pd.DataFrame({
        "condition": fits["condition"].to_numpy(),
        "method": fits["method"].to_numpy(dtype=object),
        "fits": np.ones(len(fits)),
        "errors": error.astype(float),
    })
    for flag, bad_value in (("converged", False), ("singular", True), ("hessian_pd", False),
                            ("identifiable", False)):
        values = fits[flag].astype("boolean")
        work[f"rep_{flag}"] = values.notna().to_numpy(dtype=float)
        work[f"bad_{flag}"] = (values == bad_value).fillna(False).to_numpy(dtype=float)
    secs = fits["seconds"].to_numpy(dtype=float, na_value=np.nan)
    work["secs"] = np.where(np.isfinite(secs), secs, np.nan)
    g = work.groupby(_FIT_KEYS, sort=False)
    sums = g[[c for c in work.columns if c not in (*_FIT_KEYS, "secs")]].sum()
    sums["n_secs"] = g["secs"].count()
    sums["mean_secs"] = g["secs"].mean().fillna(0.0)
    sums["m2_secs"] = g["secs"].var(ddof=0).fillna(0.0) * sums["n_secs"]
    return sums.reset_index()


def _pool(parts: pd.DataFrame, keys: list[str], moments: Sequence[str],
          counts: Sequence[str]) -> pd.DataFrame:
    """Pool per-chunk (n, mean, M2) exactly and add up counts, per group.

    n = sum n_k;  mean = sum n_k mean_k / n;  M2 = sum M2_k + sum n_k (mean_k - mean)^2.
    """
    g = parts.groupby(keys, sort=False)
    out = g[list(counts)].sum() if counts else g.size().to_frame("_size")
    for m in moments:
        n_k = parts[f"n_{m}"]
        wsum = (n_k * parts[f"mean_{m}"]).groupby([parts[k] for k in keys], sort=False).sum()
        n = g[f"n_{m}"].sum()
        with np.errstate(all="ignore"):
            mean = wsum / n
        grand = parts[keys].merge(mean.rename("grand").reset_index(), on=keys, how="left")
        dev = n_k.to_numpy() * (parts[f"mean_{m}"].to_numpy() - grand["grand"].to_numpy()) ** 2
        dev = np.where(n_k.to_numpy() > 0, dev, 0.0)
        m2 = (parts[f"m2_{m}"] + dev).groupby([parts[k] for k in keys], sort=False).sum()
        out[f"n_{m}"] = n
        out[f"mean_{m}"] = mean
        out[f"m2_{m}"] = m2
    return out.drop(columns="_size", errors="ignore")


def _pass2(df: pd.DataFrame, means: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per-group counts of intervals covering thetabar (bias-eliminated coverage);
    ``means`` has per group ``mean_est`` and ``n_df`` (no Wald fallback where > 0)."""
    df = df[df["parameter"].notna()] if df["parameter"].isna().any() else df
    est = df["estimate"].to_numpy(dtype=float, na_value=np.nan)
    se = df["se"].to_numpy(dtype=float, na_value=np.nan)
    lo, hi, wald = _intervals(df, est, se, level)
    keys = pd.DataFrame({"condition": df["condition"].to_numpy(),
                         "method": df["method"].to_numpy(dtype=object),
                         "parameter": df["parameter"].to_numpy(dtype=object)})
    group = keys.merge(means, on=_KEYS, how="left")
    center = group["mean_est"].to_numpy(dtype=float)
    t_based = group["n_df"].to_numpy(dtype=float, na_value=0.0) > 0
    with np.errstate(all="ignore"):
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(center) & ~(wald & t_based)
        keys["be"] = np.where(ok, (lo <= center) & (center <= hi), np.nan)
    g = keys.groupby(_KEYS, sort=False)["be"]
    return pd.DataFrame({"n_becover": g.count(), "hits_becover": g.sum()}).reset_index()


def _rate(hits: pd.Series, n: pd.Series) -> tuple[pd.Series, pd.Series]:
    with np.errstate(all="ignore"):
        p = hits / n.where(n > 0)
        return p, np.sqrt(p * (1.0 - p) / n.where(n > 0))


def _parameter_measures(acc: pd.DataFrame) -> dict[str, tuple]:
    """measure -> (estimate, mcse, n) Series from pooled per-group statistics."""
    theta = acc["truth"]
    n, mean, s2 = acc["n_est"], acc["mean_est"], acc["m2_est"]
    with np.errstate(all="ignore"):
        nn = n.where(n > 0)
        n1 = (n - 1).where(n > 1)
        ne = acc["n_err2"]
        bias = (mean - theta).where(ne > 0)
        bias_mcse = np.sqrt(s2 / (nn * n1)).where(ne > 0)
        relbias = bias / theta.where(theta != 0)
        relbias_mcse = bias_mcse / np.abs(theta.where(theta != 0))
        empse = np.sqrt(s2 / n1)
        empse_mcse = empse / np.sqrt(2.0 * n1)
        ne_ = ne.where(ne > 0)
        mse = acc["mean_err2"].where(ne > 0)
        mse_mcse = np.sqrt(acc["m2_err2"] / (ne_ * (ne - 1).where(ne > 1)))
        rmse = np.sqrt(mse)
        rmse_mcse = mse_mcse / (2.0 * rmse)
        npair = acc["n_s2"]
        np_ = npair.where(npair > 0)
        np1 = (npair - 1).where(npair > 1)
        modse = np.sqrt(acc["mean_s2"].where(npair > 0))
        var_s2 = acc["m2_s2"] / np1
        modse_mcse = np.sqrt(var_s2 / (4.0 * np_ * modse**2))
        empse_pair = np.sqrt(acc["m2_pest"] / np1)
        ratio = modse / empse_pair
        relerror = 100.0 * (ratio - 1.0)
        relerror_mcse = 100.0 * ratio * np.sqrt(var_s2 / (4.0 * np_ * modse**4)
                                                + 1.0 / (2.0 * np1))
    cover, cover_mcse = _rate(acc["hits_cover"], acc["n_cover"])
    becover, becover_mcse = _rate(acc["hits_becover"], acc["n_becover"])
    rej, rej_mcse = _rate(acc["hits_rej"], acc["n_rej"])
    return {
        "bias": (bias, bias_mcse, ne),
        "relbias": (relbias, relbias_mcse, ne),
        "empse": (empse, empse_mcse, n),
        "mse": (mse, mse_mcse, ne),
        "rmse": (rmse, rmse_mcse, ne),
        "modse": (modse, modse_mcse, npair),
        "relerror": (relerror, relerror_mcse, npair),
        "cover": (cover, cover_mcse, acc["n_cover"]),
        "becover": (becover, becover_mcse, acc["n_becover"]),
        "rejection": (rej, rej_mcse, acc["n_rej"]),
    }


def _fit_measures(acc: pd.DataFrame) -> dict[str, tuple]:
    nfits = acc["fits"]
    none = pd.Series(np.nan, index=acc.index)
    out: dict[str, tuple] = {"n_fits": (nfits, none, nfits)}
    err, err_mcse = _rate(acc["errors"], nfits)
    out["n_errors"] = (acc["errors"], none, nfits)
    out["error_rate"] = (err, err_mcse, nfits)
    for flag, name in (("converged", "nonconverged"), ("singular", "singular"),
                       ("hessian_pd", "nonpd_hessian"), ("identifiable", "nonidentifiable")):
        n = acc[f"rep_{flag}"]
        p, p_mcse = _rate(acc[f"bad_{flag}"], n)
        out[f"n_{name}"] = (acc[f"bad_{flag}"], none, n)
        out[f"{name}_rate"] = (p, p_mcse, n)
    ns = acc["n_secs"]
    with np.errstate(all="ignore"):
        sd = np.sqrt(acc["m2_secs"] / (ns - 1).where(ns > 1))
        out["mean_seconds"] = (acc["mean_secs"].where(ns > 0), sd / np.sqrt(ns.where(ns > 0)),
                               ns)
    return out


def _long(measures: dict[str, tuple], index: pd.MultiIndex) -> pd.DataFrame:
    frames = []
    for name, (est, mcse, n) in measures.items():
        frame = index.to_frame(index=False)
        frame["measure"] = name
        frame["estimate"] = np.asarray(est, dtype=float)
        frame["mcse"] = np.asarray(mcse, dtype=float)
        frame["n"] = np.asarray(n, dtype=float).astype(np.int64)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def summarise_records(source: Any, *, alpha: float = 0.05, level: float = 0.95, null: float = 0.0,
              where: Callable[[pd.DataFrame], Any] | None = None) -> pd.DataFrame:
    """Performance measures with Monte Carlo SEs (module docstring), as a tidy DataFrame.

    Parameters
    ----------
    source : records (a DataFrame, or an iterable of DataFrames), or records read chunk
        by chunk (a :class:`~mlmsim.simstudy.protocols.RecordSource`, such as a
        :class:`~mlmsim.simstudy.results.StudyResult`).
    alpha : level of the Wald test (t test, for records with df) of theta = ``null``
        behind ``rejection``.
    level : confidence level of the Wald interval used where no interval was recorded.
    null : theta_0 of the rejection rate.
    where : optional row filter ``where(records_chunk) -> boolean mask`` applied before
        summarising, e.g. ``lambda r: r.converged.fillna(False)``.

    Returns
    -------
    DataFrame with columns ``condition``, the condition variables, ``method``,
    ``parameter``, ``measure``, ``estimate``, ``mcse``, ``n``: :data:`MEASURES` for each
    parameter, :data:`FIT_MEASURES` with ``parameter == "(fit)"``.
    :func:`mlmsim.simstudy.results.summarise` (``mlmsim.summarise``) also reads a study
    directory and counts its replicates.
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < level < 1.0:
        raise ValueError("alpha and level must lie in (0, 1)")
    chunks, conditions, methods = _chunk_source(source, where)
    parts, fit_parts = [], []
    for df in chunks():
        if len(df):
            part, fits = _pass1(df, level, alpha, null)
            parts.append(part)
            fit_parts.append(fits)
    cond_vars = [c for c in conditions.columns if c != "condition"]
    columns = ["condition", *cond_vars, "method", "parameter", "measure", "estimate", "mcse",
               "n"]
    if not parts:
        return pd.DataFrame(columns=columns)
    allparts = pd.concat(parts, ignore_index=True)
    counts = [f"{k}_{c}" for c in ("cover", "cover_z", "rej", "rej_z") for k in ("n", "hits")]
    acc = _t_based(_pool(allparts, _KEYS, _MOMENTS, [*counts, "n_df"]))
    acc["truth"] = allparts.groupby(_KEYS, sort=False)["truth"].first()
    means = pd.DataFrame({"mean_est": acc["mean_est"].where(acc["n_est"] > 0),
                          "n_df": acc["n_df"]}).reset_index()
    be = [_pass2(df, means, level) for df in chunks() if len(df)]
    be_acc = pd.concat(be, ignore_index=True).groupby(_KEYS, sort=False).sum()
    acc = acc.join(be_acc, how="left").fillna({"n_becover": 0, "hits_becover": 0})
    per_param = _long(_parameter_measures(acc), acc.index)

    allfits = pd.concat(fit_parts, ignore_index=True)
    fit_counts = [c for c in allfits.columns
                  if c not in (*_FIT_KEYS, "n_secs", "mean_secs", "m2_secs")]
    fit_acc = _pool(allfits, _FIT_KEYS, ["secs"], fit_counts)
    per_fit = _long(_fit_measures(fit_acc), fit_acc.index)
    per_fit.insert(2, "parameter", FIT_PARAMETER)

    out = pd.concat([per_param, per_fit], ignore_index=True)
    # Order: condition, method (study order), parameter (first appearance, "(fit)" last),
    # measure (documented order).
    param_order = list(dict.fromkeys(allparts["parameter"].tolist())) + [FIT_PARAMETER]
    method_order = list(dict.fromkeys([*(methods or []), *out["method"].tolist()]))
    measure_order = [*MEASURES, *FIT_MEASURES]
    out["_m"] = out["method"].map({m: i for i, m in enumerate(method_order)})
    out["_p"] = out["parameter"].map({p: i for i, p in enumerate(param_order)})
    out["_k"] = out["measure"].map({k: i for i, k in enumerate(measure_order)})
    out = out.sort_values(["condition", "_m", "_p", "_k"], kind="stable")
    out = out.drop(columns=["_m", "_p", "_k"])
    out = out.merge(conditions, on="condition", how="left")
    out["method"] = out["method"].astype(str)
    out["parameter"] = out["parameter"].astype(str)
    out["measure"] = out["measure"].astype(str)
    return out[columns].reset_index(drop=True)


def summary_table(summary: pd.DataFrame, measures: Sequence[str] = (
        "bias", "empse", "modse", "relerror", "cover", "rejection"),
        digits: int = 3, fit_measures: Sequence[str] = (
        "n_fits", "error_rate", "nonconverged_rate", "singular_rate", "nonpd_hessian_rate")
        ) -> pd.DataFrame:
    """A wide, printable table: one row per condition x method x parameter, one column
    per measure, cells ``"estimate (mcse)"``; the per-fit counts and rates (the same for
    every parameter of a fit) are added as columns, except flags no method reports.
    """
    cond_vars = [c for c in summary.columns
                 if c not in ("condition", "method", "parameter", "measure", "estimate",
                              "mcse", "n")]
    index = ["condition", *cond_vars, "method", "parameter"]

    def cell(row: pd.Series) -> str:
        if not np.isfinite(row["estimate"]):
            return "-"
        if not np.isfinite(row["mcse"]):
            return f"{row['estimate']:.{digits}g}"
        return f"{row['estimate']:.{digits}f} ({row['mcse']:.{digits}f})"

    part = summary[summary["measure"].isin(measures)].copy()
    part["cell"] = part.apply(cell, axis=1) if len(part) else []
    order = pd.MultiIndex.from_frame(part[index].drop_duplicates())
    wide = part.pivot(index=index, columns="measure", values="cell").reindex(order)
    wide = wide[[m for m in measures if m in wide.columns]]
    fits = summary[(summary["parameter"] == FIT_PARAMETER)
                   & summary["measure"].isin(fit_measures)].copy()
    if len(fits):
        fits["cell"] = fits.apply(cell, axis=1)
        fit_wide = fits.pivot(index=["condition", *cond_vars, "method"], columns="measure",
                              values="cell")
        fit_wide = fit_wide[[m for m in fit_measures if m in fit_wide.columns]]
        fit_wide = fit_wide.loc[:, (fit_wide != "-").any(axis=0)]  # flags nobody reports
        wide = wide.join(fit_wide, on=["condition", *cond_vars, "method"])
    wide.columns.name = None
    return wide.droplevel("condition")
