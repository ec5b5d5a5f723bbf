"""Figures of performance measures: a measure against a condition variable, with MCSE bars.

This module only draws: it takes the tidy output of :func:`mlmsim.study.summarise`
(columns condition variables..., method, parameter, measure, estimate, mcse, n) and
returns a seaborn ``FacetGrid``; it computes nothing but the error-bar half-widths
``z * mcse`` (z = 1.96 by default: 95% Monte Carlo intervals).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["plot_measure"]

_SUMMARY_COLUMNS = ("condition", "method", "parameter", "measure", "estimate", "mcse", "n")
_DEFAULT_REF = {"bias": 0.0, "relbias": 0.0, "relerror": 0.0}


def _draw(data: pd.DataFrame, x: str, levels: Sequence[Any], offset: float, mult: float,
          color: Any = None, label: str | None = None, **kwargs: Any) -> None:
    import matplotlib.pyplot as plt

    ax = plt.gca()
    pos = {v: i for i, v in enumerate(levels)}
    data = data.assign(_pos=data[x].map(pos)).sort_values("_pos")
    ax.errorbar(data["_pos"] + offset, data["estimate"], yerr=mult * data["mcse"],
                color=color, label=label, marker="o", markersize=4, capsize=3, linewidth=1.2)


def plot_measure(summary: pd.DataFrame, measure: str, x: str, *, hue: str | None = "method",
                 col: str | None = "parameter", row: str | None = None,
                 parameters: Sequence[str] | None = None, z: float = 1.96,
                 ref: float | None | str = "auto", level: float = 0.95,
                 sharey: bool = False, height: float = 3.0, aspect: float = 1.2,
                 path: str | os.PathLike | None = None, dpi: int = 150):
    """Plot ``measure`` against condition variable ``x`` with +- z MCSE error bars.

    One line per ``hue`` level (default: method), one panel per ``col`` level (default:
    parameter) and ``row`` level. Condition variables other than ``x``, ``hue``, ``col``
    and ``row`` must be constant in ``summary`` (filter it first). ``ref`` draws a
    horizontal reference line: "auto" is 0 for bias, relbias and relerror and ``level``
    for cover and becover; None draws none. ``path`` saves the figure as PNG.
    Returns the seaborn ``FacetGrid``.
    """
    import seaborn as sns

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
    levels = sorted(data[x].dropna().unique().tolist())
    hues = list(dict.fromkeys(data[hue].tolist())) if hue else [None]
    width = 0.25 if len(hues) > 1 else 0.0
    offsets = dict(zip(hues, np.linspace(-width / 2, width / 2, len(hues)), strict=True))
    grid = sns.FacetGrid(data, col=col, row=row, hue=hue, hue_order=hues if hue else None,
                         sharey=sharey, height=height, aspect=aspect, margin_titles=True)
    if hue:
        # FacetGrid passes color and label per hue level; the offset is looked up here.
        grid.map_dataframe(lambda data, color=None, label=None, **kw: _draw(
            data, x, levels, offsets[data[hue].iloc[0]], z, color=color, label=label))
    else:
        grid.map_dataframe(lambda data, color=None, label=None, **kw: _draw(
            data, x, levels, 0.0, z, color=color, label=label))
    if ref == "auto":
        ref = level if measure in ("cover", "becover") else _DEFAULT_REF.get(measure)
    for ax in grid.axes.flat:
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([str(v) for v in levels])
        if ref is not None:
            ax.axhline(float(ref), color="0.5", linestyle="--", linewidth=0.8, zorder=0)
    grid.set_axis_labels(x, f"{measure} (+- {z:g} MCSE)")
    if hue:
        grid.add_legend(title=hue)
    if path is not None:
        grid.savefig(path, dpi=dpi, format="png")
    return grid
