"""Figures of performance measures: a measure against a condition variable, with error bars.

This module only draws: it takes the tidy output of :func:`mlmsim.simstudy.summarise`
(columns condition variables..., method, parameter, measure, estimate, mcse, n) and
returns a seaborn ``FacetGrid``. Its error bars are estimate +- z MCSE (z = 1.96 by
default: 95% Monte Carlo intervals), except for proportions (coverage, rejection and
fit-flag rates, :func:`mlmsim.simstudy.intervals.is_proportion`), whose bars are Wilson
intervals from the estimate and its n: they stay inside [0, 1] and do not shrink to
nothing at 0 or 1, where the MCSE sqrt(p (1 - p) / n) is 0.

Layout: a numeric condition variable on the x axis is placed by value (J = 20, 30, 40,
50, 60, 80 at those distances), other ones evenly in order; the panels are wrapped on a
grid of at most ``max_cols`` columns (4 by default) so that a saved figure is readable at
100% zoom. Several ``hue`` levels are dodged sideways by a small fraction of the
smallest gap between x values, so their error bars do not hide one another.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlmsim.simstudy.intervals import is_proportion, proportion_interval

__all__ = ["plot_measure", "x_positions"]

_SUMMARY_COLUMNS = ("condition", "method", "parameter", "measure", "estimate", "mcse", "n")
_DEFAULT_REF = {"bias": 0.0, "relbias": 0.0, "relerror": 0.0}
_PANEL = "_panel"


def x_positions(levels: Sequence[Any]) -> dict[Any, float]:
    """Where each level of the x variable is drawn: at its value when every level is a
    real number (so unequal steps look unequal), else at 0, 1, 2, ... in order."""
    levels = list(levels)
    numeric = all(isinstance(v, int | float | np.integer | np.floating)
                  and not isinstance(v, bool) and np.isfinite(v) for v in levels)
    if numeric:
        return {v: float(v) for v in levels}
    return {v: float(i) for i, v in enumerate(levels)}


def _bars(data: pd.DataFrame, mult: float, proportion: bool) -> np.ndarray:
    """Error-bar lengths (2, m) below and above each estimate."""
    est = data["estimate"].to_numpy(dtype=float)
    if proportion:
        lo, hi = proportion_interval(est, data["n"].to_numpy(dtype=float), z=mult)
        return np.vstack([np.maximum(est - lo, 0.0), np.maximum(hi - est, 0.0)])
    half = mult * data["mcse"].to_numpy(dtype=float)
    return np.vstack([half, half])


def _draw(data: pd.DataFrame, x: str, pos: dict[Any, float], offset: float, mult: float,
          proportion: bool, color: Any = None, label: str | None = None,
          **kwargs: Any) -> None:
    import matplotlib.pyplot as plt

    ax = plt.gca()
    data = data.assign(_pos=data[x].map(pos)).sort_values("_pos")
    ax.errorbar(data["_pos"] + offset, data["estimate"], yerr=_bars(data, mult, proportion),
                color=color, label=label, marker="o", markersize=4, capsize=3, linewidth=1.2)


def plot_measure(summary: pd.DataFrame, measure: str, x: str, *, hue: str | None = "method",
                 col: str | None = "parameter", row: str | None = None,
                 parameters: Sequence[str] | None = None, z: float = 1.96,
                 ref: float | None | str = "auto", level: float = 0.95,
                 sharey: bool = False, height: float = 2.6, aspect: float = 1.3,
                 max_cols: int = 4, proportion: bool | None = None,
                 path: str | os.PathLike | None = None, dpi: int = 120):
    """Plot ``measure`` against condition variable ``x`` with error bars.

    One line per ``hue`` level (default: method), one panel per ``col`` level (default:
    parameter) and ``row`` level. Condition variables other than ``x``, ``hue``, ``col``
    and ``row`` must be constant in ``summary`` (filter it first). ``ref`` draws a
    horizontal reference line: "auto" is 0 for bias, relbias and relerror and ``level``
    for cover and becover; None draws none. ``path`` saves the figure as PNG.

    Error bars: +- ``z`` MCSE, or for a proportion (``proportion=None``: decided by the
    measure's name, :func:`mlmsim.simstudy.intervals.is_proportion`) the Wilson interval at
    the same z, inside [0, 1]. A numeric ``x`` is spaced by value (:func:`x_positions`).
    At most ``max_cols`` panels side by side: more ``col`` levels are wrapped onto
    further rows, and with both ``row`` and ``col`` the panels are taken row by row and
    wrapped alike (each titled with both). Returns the seaborn ``FacetGrid``.
    """
    import seaborn as sns

    if isinstance(max_cols, bool) or not isinstance(max_cols, int) or max_cols < 1:
        raise ValueError(f"max_cols must be a whole number >= 1, got {max_cols!r}")
    data = summary[summary["measure"] == measure]
    if parameters is not None:
        data = data[data["parameter"].isin(list(parameters))]
    if data.empty:
        raise ValueError(f"no rows for measure {measure!r}")
    if x not in data.columns:
        raise ValueError(f"{x!r} is not a column of the summary")
    used = {x, hue, col, row} - {None}
    free = [c for c in data.columns if c not in _SUMMARY_COLUMNS and c not in used
            and data[c].nunique(dropna=False) > 1]
    if free:
        raise ValueError(f"condition variables {free} vary but are not plotted; filter the "
                         "summary or map them to hue, col or row")
    proportion = is_proportion(measure) if proportion is None else bool(proportion)
    levels = sorted(data[x].dropna().unique().tolist())
    pos = x_positions(levels)
    hues = list(dict.fromkeys(data[hue].tolist())) if hue else [None]
    values = sorted(set(pos.values()))
    gap = min(np.diff(values)) if len(values) > 1 else 1.0
    span = values[-1] - values[0]
    width = (min(0.25 * gap, 0.04 * span) if span > 0 else 0.25 * gap) if len(hues) > 1 else 0.0
    offsets = dict(zip(hues, np.linspace(-width / 2, width / 2, len(hues)), strict=True))
    facet = _facets(data, col, row, max_cols)
    data, facet_kw = facet
    grid = sns.FacetGrid(data, hue=hue, hue_order=hues if hue else None, sharey=sharey,
                         height=height, aspect=aspect, **facet_kw)
    if hue:
        # FacetGrid passes color and label per hue level; the offset is looked up here.
        grid.map_dataframe(lambda data, color=None, label=None, **kw: _draw(
            data, x, pos, offsets[data[hue].iloc[0]], z, proportion, color=color,
            label=label))
    else:
        grid.map_dataframe(lambda data, color=None, label=None, **kw: _draw(
            data, x, pos, 0.0, z, proportion, color=color, label=label))
    if ref == "auto":
        ref = level if measure in ("cover", "becover") else _DEFAULT_REF.get(measure)
    for ax in grid.axes.flat:
        ax.set_xticks([pos[v] for v in levels])
        ax.set_xticklabels([_label(v) for v in levels])
        if len(values) == 1:  # one x value: room around the dodged points
            ax.set_xlim(values[0] - gap, values[0] + gap)
        if ref is not None:
            ax.axhline(float(ref), color="0.5", linestyle="--", linewidth=0.8, zorder=0)
        if proportion:
            lo, hi = ax.get_ylim()
            ax.set_ylim(max(lo, -0.02), min(hi, 1.02))
    bars = (f"{100 * (2 * _phi(z) - 1):.3g}% Wilson interval" if proportion
            else f"+- {z:g} MCSE")
    grid.set_axis_labels(x, f"{measure} ({bars})")
    if facet_kw.get("col") == _PANEL:
        grid.set_titles("{col_name}")
    if hue:
        grid.add_legend(title=hue)
    if path is not None:
        grid.savefig(path, dpi=dpi, format="png")
    return grid


def _phi(z: float) -> float:
    return statistics.NormalDist().cdf(z)


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _order(values: pd.Series) -> list[Any]:
    """Facet levels as seaborn orders them: sorted if numeric, else as they appear."""
    levels = [v for v in dict.fromkeys(values.tolist()) if not pd.isna(v)]
    return sorted(levels) if pd.api.types.is_numeric_dtype(values) else levels


def _facets(data: pd.DataFrame, col: str | None, row: str | None, max_cols: int
            ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The data and FacetGrid keywords for at most ``max_cols`` panels side by side."""
    cols = _order(data[col]) if col else []
    rows = _order(data[row]) if row else []
    if row and col and len(cols) > max_cols:
        labels = {(r, c): f"{row} = {_label(r)} | {c}" for r in rows for c in cols}
        panel = [labels[(r, c)] for r, c in zip(data[row], data[col], strict=True)]
        order = [labels[(r, c)] for r in rows for c in cols]
        data = data.assign(**{_PANEL: panel})
        return data, {"col": _PANEL, "col_order": order, "col_wrap": max_cols}
    if col and not row and len(cols) > max_cols:
        return data, {"col": col, "col_order": cols, "col_wrap": max_cols}
    return data, {"col": col, "row": row, "margin_titles": True,
                  **({"col_order": cols} if col else {}),
                  **({"row_order": rows} if row else {})}
