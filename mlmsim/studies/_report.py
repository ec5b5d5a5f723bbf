"""Small helpers the study reports share: markdown tables, number formats, the account
of what ran, and finding sentences that follow the tables.

What ran (:func:`run_lines`) is read from the summaries of the records actually present,
never from the options of a run: the conditions, the replicates per cell (fits per
condition and method), the fitting time the records hold, and whether that is the full
design. A run smaller than the full design (``--quick``, ``--reps``, or an interrupted
run) says so at the top of its report.

A finding sentence claims a direction only when the estimate is more than 2 MCSE from
its comparison (:func:`direction`, :func:`difference`; a proportion: when its Wilson
interval excludes the comparison, :func:`proportion_direction`), and otherwise says there is no
clear difference, so the sentence cannot contradict the table beside it. Proportions
(coverage, rates) are printed with a 95% Wilson interval (:func:`with_interval`), not an
MCSE, which is 0 at 0 and 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlmsim.progress import duration
from mlmsim.simstudy.intervals import proportion_interval
from mlmsim.simstudy.storage import StudyDirectory

__all__ = ["markdown_table", "fmt", "with_mcse", "with_interval", "direction",
           "proportion_direction", "difference", "run_lines", "wall_clock", "ran_design",
           "replicates_per_cell", "is_full_run", "SIGNIFICANT"]

SIGNIFICANT = 2.0
"""A direction is claimed when |estimate - comparison| > SIGNIFICANT MCSE."""

_SUMMARY_COLUMNS = ("condition", "method", "parameter", "measure", "estimate", "mcse", "n")


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (NaN as an em dash)."""
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.{digits}g}"


def with_mcse(estimate: float, mcse: float, digits: int = 3) -> str:
    """``estimate (mcse)`` as a report prints a performance measure."""
    return f"{fmt(estimate, digits)} ({fmt(mcse, 2)})"


def with_interval(estimate: float, n: float, digits: int = 3, level: float = 0.95) -> str:
    """``p [lower, upper]``: a proportion over n replicates with its Wilson interval
    (:mod:`mlmsim.simstudy.intervals`), which is not empty at 0 or 1."""
    if estimate is None or n is None or not np.isfinite(estimate) or not n > 0:
        return "—"
    lo, hi = proportion_interval(estimate, n, level)
    return f"{fmt(estimate, digits)} [{fmt(float(lo), 2)}, {fmt(float(hi), 2)}]"


def direction(estimate: float, mcse: float, *, above: str, below: str,
              neither: str, reference: float = 0.0, digits: int = 3) -> str:
    """One of three phrases for an estimate against ``reference`` (0 by default), with
    the numbers: ``above`` or ``below`` only when it lies more than
    :data:`SIGNIFICANT` MCSE away, else ``neither``."""
    shown = with_mcse(estimate, mcse, digits)
    if not (np.isfinite(estimate) and np.isfinite(mcse)):
        return f"cannot be judged ({shown})"
    if abs(estimate - reference) > SIGNIFICANT * mcse:
        return f"{above if estimate > reference else below} ({shown})"
    return f"{neither} ({shown}, within {SIGNIFICANT:g} MCSE of {fmt(reference)})"


def proportion_direction(estimate: float, n: float, *, reference: float, above: str,
                         below: str, neither: str, level: float = 0.95) -> str:
    """:func:`direction` for a proportion over n replicates: ``above`` or ``below`` only
    when its Wilson interval (:func:`with_interval`) excludes ``reference``; the MCSE,
    0 at 0 and 1, is not used."""
    shown = with_interval(estimate, n, level=level)
    if not (np.isfinite(estimate) and n > 0):
        return f"cannot be judged ({shown})"
    lo, hi = (float(v) for v in proportion_interval(estimate, n, level))
    if lo > reference:
        return f"{above} ({shown})"
    if hi < reference:
        return f"{below} ({shown})"
    return (f"{neither} ({shown}, whose {100 * level:g}% Wilson interval holds "
            f"{fmt(reference)})")


def difference(name_a: str, est_a: float, mcse_a: float, name_b: str, est_b: float,
               mcse_b: float, what: str, digits: int = 3) -> str:
    """A sentence comparing ``what`` under a and b. The MCSE of the difference is taken
    as sqrt(MCSE_a^2 + MCSE_b^2), which overstates it when a and b are estimated on the
    same data sets and move together (as ML and REML do): a difference called clear is
    clear, one called unclear may be resolvable with the paired records."""
    d = est_a - est_b
    se = math.sqrt(mcse_a**2 + mcse_b**2) if np.isfinite(mcse_a) and np.isfinite(mcse_b) \
        else math.nan
    if not (np.isfinite(d) and np.isfinite(se)):
        return f"{what}: {name_a} and {name_b} cannot be compared"
    if abs(d) > SIGNIFICANT * se:
        hi, lo = (name_a, name_b) if d > 0 else (name_b, name_a)
        return (f"{what} is higher by {hi} than by {lo} (difference {fmt(abs(d), digits)}, "
                f"MCSE at most {fmt(se, 2)})")
    return (f"{what}: no clear difference between {name_a} and {name_b} (difference "
            f"{fmt(d, digits)}, MCSE at most {fmt(se, 2)})")


def markdown_table(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a GitHub markdown table (values as they print)."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        cells = [v if isinstance(v, str) else fmt(v, 4) if isinstance(v, float) else str(v)
                 for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# what ran
# ---------------------------------------------------------------------------

def _condition_variables(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if c not in _SUMMARY_COLUMNS]


def ran_design(summary: pd.DataFrame) -> pd.DataFrame:
    """The conditions present in a summary, one row each (condition variables only)."""
    cols = _condition_variables(summary)
    return summary[["condition", *cols]].drop_duplicates("condition")[cols] \
        .reset_index(drop=True)


def replicates_per_cell(summary: pd.DataFrame) -> tuple[int, int]:
    """(fewest, most) fits per condition and method in a summary: the replicates per cell
    the records hold (the ``n_fits`` rows of ``parameter == "(fit)"``)."""
    fits = summary[(summary.parameter == "(fit)") & (summary.measure == "n_fits")]
    if fits.empty:
        return 0, 0
    return int(fits.estimate.min()), int(fits.estimate.max())


def _fit_seconds(summary: pd.DataFrame) -> float:
    """Seconds of fitting the records hold: sum over cells of mean_seconds x n."""
    s = summary[(summary.parameter == "(fit)") & (summary.measure == "mean_seconds")]
    s = s[np.isfinite(s.estimate)]
    return float((s.estimate * s.n).sum()) if len(s) else math.nan


Design = Mapping[str, Sequence] | pd.DataFrame
"""A full design: a grid (condition variable -> levels, crossed) or its conditions, one
row each."""


def _design_rows(full: Design) -> tuple[list[str], set[tuple]]:
    """(condition variables, the set of conditions) of a full design."""
    if isinstance(full, pd.DataFrame):
        cols = list(full.columns)
        return cols, {tuple(r) for r in full.itertuples(index=False)}
    cols = list(full)
    return cols, {tuple(v) for v in pd.MultiIndex.from_product(list(full.values())).tolist()}


def _per_block(value: Any, name: str, names: Sequence[str]) -> Any:
    """The value for block ``name`` when ``value`` is keyed by the block names, else
    ``value`` itself (one for every block)."""
    if isinstance(value, Mapping) and set(names) <= set(value) and all(
            isinstance(value[n], Mapping | pd.DataFrame | int) for n in names):
        return value[name]
    return value


def _covers(summary: pd.DataFrame, full: Design, full_reps: int) -> bool:
    cols, want = _design_rows(full)
    ran = ran_design(summary)
    if any(k not in ran.columns for k in cols):
        return False
    have = {tuple(r) for r in ran[cols].itertuples(index=False)}
    return have == want and replicates_per_cell(summary)[0] >= full_reps


def is_full_run(summaries: Sequence[pd.DataFrame], full: Design, full_reps: int) -> bool:
    """Whether every summary holds every condition of the ``full`` design (a grid of
    condition variables and their levels, or a frame of conditions) with at least
    ``full_reps`` replicates in every cell."""
    return all(_covers(s, full, full_reps) for s in summaries)


def _levels(ran: pd.DataFrame) -> str:
    parts = []
    for c in ran.columns:
        if ran[c].isna().all():
            continue
        vals = [fmt(v, 6) if isinstance(v, float) else str(v)
                for v in sorted(ran[c].unique().tolist())]
        parts.append(f"{c} {', '.join(vals)}")
    return "; ".join(parts)


def _reps(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo} to {hi}"


def wall_clock(out_dir: str | Path | None) -> tuple[float, int, int, int]:
    """(wall-clock seconds, runs, replicates run, study directories with a run) over the
    finished runs that the manifests under ``out_dir`` record (one directory per block
    of a study; :meth:`mlmsim.simstudy.StudyDirectory.record_run`); (nan, 0, 0, 0) when
    none is recorded."""

    seconds, n_runs, n_reps, n_dirs = 0.0, 0, 0, 0
    for path in [] if out_dir is None else sorted(Path(out_dir).glob("**/manifest.json")):
        runs = (StudyDirectory(path.parent).read_manifest() or {}).get("runs", [])
        n_dirs += bool(runs)
        for run in runs:
            seconds += float(run.get("seconds", math.nan))
            n_runs += 1
            n_reps += int(run.get("replicates", 0))
    return (seconds if n_runs else math.nan), n_runs, n_reps, n_dirs


def run_lines(summaries: Mapping[str, pd.DataFrame], full: Design | Mapping[str, Design],
              full_reps: int | Mapping[str, int], command: str,
              out_dir: str | Path | None = None) -> tuple[list[str], bool]:
    """The "What ran" section of a report and whether the run is the full design.

    ``summaries``: block name -> :func:`mlmsim.simstudy.summarise` of its records (one
    entry for a study of one block); ``full``: the full design (a grid, or a frame of
    conditions), or one per block keyed by block name; ``full_reps``: its replicates per
    condition (or one per block); ``command``: how to run the full study. Everything
    stated is counted from the summaries: the conditions present, the replicates per
    cell (fits per condition and method) and the fitting time recorded per fit; and
    the wall-clock time of the runs that wrote the records under ``out_dir``
    (:func:`wall_clock`).
    """
    names = list(summaries)
    designs = {n: _per_block(full, n, names) for n in names}
    reps = {n: int(_per_block(full_reps, n, names)) for n in names}
    full_run = all(_covers(summaries[n], designs[n], reps[n]) for n in names)
    lines = ["## What ran", ""]
    if not full_run:
        lines += ["**This is a quick (reduced) run, not the study.** It checks that the "
                  "study runs end to end; with this few conditions and replicates its "
                  "numbers carry large Monte Carlo error. The design described under "
                  "ADEMP below is the full study's; the tables, figures and findings here "
                  f"cover only what is listed in this section. Run the full study with "
                  f"`{command}`.", ""]
    for name, s in summaries.items():
        ran = ran_design(s)
        lo, hi = replicates_per_cell(s)
        n_full = len(_design_rows(designs[name])[1])
        label = f"`{name}`: " if len(summaries) > 1 else ""
        what = ("all of the full design" if _covers(s, designs[name], 0)
                else f"of the full design's {n_full}")
        lines.append(f"- {label}{len(ran)} conditions ({what}; {_levels(ran)}), "
                     f"{_reps(lo, hi)} replicates per cell (condition x method; the full "
                     f"study has {reps[name]}).")
    wall, n_runs, n_ran, n_dirs = wall_clock(out_dir)
    if n_runs:
        if n_runs > n_dirs:
            runs = f"{n_runs} runs (a resumed study)"
        else:
            runs = "one run" if n_dirs == 1 else f"one run of each of its {n_dirs} blocks"
        lines.append(f"- Run time: {duration(wall)} wall-clock, {runs}, {n_ran} replicates "
                     "run (including the compilation of the kernels if it happened then).")
    else:
        lines.append("- Run time: not recorded (records written before mlmsim recorded "
                     "its runs, or by a run that was stopped).")
    secs = [_fit_seconds(s) for s in summaries.values()]
    secs = [v for v in secs if np.isfinite(v)]
    if secs:
        lines.append(f"- Fitting time: {duration(sum(secs))}, summed over the fits as "
                     "the records time them.")
    lines.append("")
    return lines, full_run
