"""Figures of one fitted two-level model: the seed lecture's plots, drawn from a FitResult.

Four figures, each an axes-level function that draws on ``ax`` (or on a new figure) and
returns the Axes, so they compose into subplots and save with ``ax.figure.savefig``:

- :func:`plot_group_lines`: the estimated group regressions
  (gamma_00 + U_0j-hat) + (gamma_10 + U_1j-hat) x over each group's data, with the
  average (fixed-effects) line gamma_00 + gamma_10 x in bold.
- :func:`plot_variance_function`: the estimated marginal variance
  var(Y | x) = tau_0^2 + 2 tau_10 x + tau_1^2 x^2 + sigma^2, with its minimum at
  x = -tau_10 / tau_1^2 marked.
- :func:`plot_caterpillar`: the EBLUPs U_kj-hat of one random effect, sorted, with
  intervals U_kj-hat +- z sqrt(var(U_kj-hat - U_kj)) from ``FitResult.ranef_condvar``.
- :func:`plot_within_between`: the data of a centering comparison, with the pooled
  within-group regression, the between-group regression of the group means and the
  total (ordinary least squares) regression; :func:`within_between_slopes` gives the
  three slopes.

Nothing is shown or printed: matplotlib and seaborn are imported when a figure is drawn,
not when mlmsim is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats as sps

from mlmsim.model.layout import DesignLayout

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from mlmsim.engine.result import FitResult

__all__ = [
    "plot_group_lines",
    "plot_variance_function",
    "plot_caterpillar",
    "plot_within_between",
    "within_between_slopes",
    "variance_function",
    "ranef_intervals",
    "default_x",
]

_MAX_TICK_LABELS = 40


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _new_axes(ax: Axes | None, figsize: tuple[float, float] = (7.0, 5.0)) -> Axes:
    """``ax`` itself, or the Axes of a new figure in seaborn's "ticks" style."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt
    import seaborn as sns

    with sns.axes_style("ticks"):
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _design(fit: FitResult):
    if fit.design is None:
        raise ValueError("this FitResult carries no design (fit it with mlmsim.fit to plot it)")
    return fit.design


def _layout(fit: FitResult) -> DesignLayout:
    """What the design's columns are made of (:class:`~mlmsim.model.layout.DesignLayout`)."""
    return _design(fit).layout


def _variables(layout: DesignLayout, name: str) -> list[str] | None:
    """Data variables of a design column: 'Intercept' -> [], 'x:z' -> [x, z]; None when the
    column is not a plain product of data columns (a factor level, a transform)."""
    column = layout.column(name)
    return list(column.factors) if column.plain else None


def _product_parts(layout: DesignLayout, name: str) -> list[str] | None:
    """The factors of a product column such as 'x:z' or 'x:f[T.b]': data variables, or
    factor-level dummies that are design columns of their own (their values are then read
    from the design); None for anything else (a transform)."""
    parts = _variables(layout, name)
    if parts is not None:
        return parts
    columns = {*layout.fixed_names, *layout.random_names}
    parts = layout.column(name).parts
    if len(parts) > 1 and all(p.kind == "data" or p.name in columns for p in parts):
        return [p.name for p in parts]
    return None


def default_x(fit: FitResult) -> str:
    """The predictor a model plot puts on the x axis: the first random slope that is a data
    column, else the first such fixed effect.

    Raises ValueError when the model has neither (a null model).
    """
    layout = _layout(fit)
    for names in (fit.random_names, fit.fixed_names):
        for n in names:
            v = _variables(layout, n)
            if v is not None and len(v) == 1:
                return n
    raise ValueError(f"the model {fit.formula!r} has no predictor to put on the x axis; "
                     "plot a model with a level-1 predictor, such as y ~ x + (1 + x | g)")


def _values(fit: FitResult, name: str, data: pd.DataFrame | None) -> np.ndarray | None:
    """The values (over the rows used, shape (N,)) of data variable ``name``: from ``data``
    if given, else from the design column of that name; None if neither has it."""
    d = _design(fit)
    if data is not None and name in data.columns:
        col = data[name].to_numpy()[d.used_rows]
        return np.asarray(col, dtype=float)
    if name in d.fixed_names:
        return d.X[:, d.fixed_names.index(name)]
    if name in d.random_names:
        return d.Z[:, d.random_names.index(name)]
    return None


def _group_means(values: np.ndarray, codes: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Per-group means of ``values`` (N,) or (N, k) -> (J,) or (J, k)."""
    J = n.shape[0]
    if values.ndim == 1:
        return np.bincount(codes, weights=values, minlength=J) / n
    out = np.zeros((J, values.shape[1]))
    np.add.at(out, codes, values)
    return out / n[:, None]


def _line_parts(fit: FitResult, names: tuple[str, ...], M: np.ndarray, x: str,
                data: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    np.ndarray]:
    """Write each design column of ``names`` (matrix M, N x k) as a_j + b_j x per group:
    other variables held at their group means (exact for level-2 variables).

    Returns (a (J, k), b (J, k), a_all (k,), b_all (k,)): the per-group parts and the same
    with other variables at their overall means (for the average line).
    """
    d = _design(fit)
    codes = d.group_codes
    n = np.bincount(codes, minlength=d.ngroups).astype(float)
    J, k = d.ngroups, len(names)
    a, b = np.zeros((J, k)), np.zeros((J, k))
    a_all, b_all = np.zeros(k), np.zeros(k)
    layout = _layout(fit)
    for i, name in enumerate(names):
        vs = _product_parts(layout, name)
        if vs is None or x not in vs:
            if vs is None and x in layout.column(name).inputs:
                raise ValueError(f"{x!r} enters the model through the column {name!r}; group "
                                 "lines need it to enter linearly (as x or x:z)")
            a[:, i] = _group_means(M[:, i], codes, n)
            a_all[i] = M[:, i].mean()
            continue
        if vs.count(x) > 1:
            raise ValueError(f"{x!r} enters the model through {name!r} more than once; group "
                             "lines need it to enter linearly")
        slope_j, slope_all = np.ones(J), 1.0
        for v in vs:
            if v == x:
                continue
            vals = _values(fit, v, data)
            if vals is None:
                raise ValueError(f"the variable {v!r} of the column {name!r} is not a column of "
                                 "the design; pass the data frame: data=...")
            slope_j = slope_j * _group_means(vals, codes, n)
            slope_all = slope_all * vals.mean()
        b[:, i] = slope_j
        b_all[i] = slope_all
    return a, b, a_all, b_all


def _pick_groups(J: int, n_groups: int | None, seed: int) -> np.ndarray:
    if n_groups is None or n_groups >= J:
        return np.arange(J)
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}")
    return np.sort(np.random.default_rng(seed).choice(J, size=int(n_groups), replace=False))


# ---------------------------------------------------------------------------
# group regression lines
# ---------------------------------------------------------------------------

def plot_group_lines(fit: FitResult, x: str | None = None, n_groups: int | None = None,
                     ax: Axes | None = None, *, data: pd.DataFrame | None = None,
                     points: bool = True, seed: int = 0) -> Axes:
    """The estimated group regression lines over the data, the average line in bold.

    Group j's line is its fitted regression on ``x``,
    (gamma_00 + U_0j-hat) + (gamma_10 + U_1j-hat) x in a random intercept and slope model,
    drawn over the range of x in group j; any other predictor is held at its group mean
    (exact for level-2 predictors such as a school mean or sector). The bold line is the
    average regression gamma_00 + gamma_10 x (other predictors at their overall means).

    Parameters
    ----------
    fit : a FitResult from :func:`mlmsim.fit`.
    x : the predictor on the x axis (a data column entering the model linearly);
        default :func:`default_x` (the first random slope).
    n_groups : draw this many groups, a random sample fixed by ``seed``; None draws all.
    data : the data frame that was fitted; needed only when a variable of an interaction
        with x is not itself a column of the model (e.g. ``x:sector`` without ``sector``).
    points : scatter the observations of the groups drawn.

    Returns the Axes: one Line2D per group drawn (``gid`` "group", label "_" + the group's
    label), then the average line (``gid`` "average"); the points form one PathCollection
    (``gid`` "data").
    """
    d = _design(fit)
    x = default_x(fit) if x is None else x
    xv = _values(fit, x, data)
    layout = _layout(fit)
    in_model = any(x in (_variables(layout, n) or ()) for n in (*d.fixed_names,
                                                                 *d.random_names))
    if xv is None or not in_model:
        raise ValueError(f"{x!r} is not a predictor of the model {fit.formula!r}; choose one "
                         f"of {', '.join(n for n in fit.fixed_names if n != 'Intercept')}")
    af, bf, af_all, bf_all = _line_parts(fit, d.fixed_names, d.X, x, data)
    ar, br, _, _ = _line_parts(fit, d.random_names, d.Z, x, data)
    gamma, U = fit.fixef.to_numpy(), fit.ranef.to_numpy()
    intercept = af @ gamma + np.einsum("jk,jk->j", ar, U)
    slope = bf @ gamma + np.einsum("jk,jk->j", br, U)
    codes, J = d.group_codes, d.ngroups
    lo = np.full(J, np.inf)
    hi = np.full(J, -np.inf)
    np.minimum.at(lo, codes, xv)
    np.maximum.at(hi, codes, xv)

    import seaborn as sns

    ax = _new_axes(ax)
    shown = _pick_groups(J, n_groups, seed)
    if points:
        rows = np.isin(codes, shown)
        pts = ax.scatter(xv[rows], d.y[rows], s=6, color="0.55", alpha=0.35, linewidths=0,
                         zorder=1)
        pts.set_gid("data")
    colors = sns.color_palette("husl", len(shown))
    for c, j in zip(colors, shown, strict=True):
        (line,) = ax.plot([lo[j], hi[j]], [intercept[j] + slope[j] * lo[j],
                                           intercept[j] + slope[j] * hi[j]],
                          color=c, linewidth=1.0, alpha=0.9, zorder=2,
                          label=f"_{d.group_labels[j]}")
        line.set_gid("group")
    a0, b0 = af_all @ gamma, bf_all @ gamma
    xs = np.array([xv.min(), xv.max()])
    (avg,) = ax.plot(xs, a0 + b0 * xs, color="black", linewidth=3.5, zorder=3,
                     label=f"average: {a0:.2f} {'+' if b0 >= 0 else '-'} {abs(b0):.2f} {x}")
    avg.set_gid("average")
    y_name = d.formula.response
    ax.set_xlabel(x)
    ax.set_ylabel(y_name)
    ax.set_title(f"Estimated group regressions by {d.formula.group} ({len(shown)} of {J} "
                 "groups)")
    ax.legend(loc="best", frameon=False)
    sns.despine(ax=ax)
    return ax


# ---------------------------------------------------------------------------
# variance function
# ---------------------------------------------------------------------------

def variance_function(fit: FitResult, x: str | None = None,
                      at: Mapping[str, float] | None = None) -> tuple[float, float, float]:
    """Coefficients (a, b, c) of var(Y | x) = a + 2 b x + c x^2 implied by T-hat and sigma^2.

    With z(x) the random-effect row (1 for the intercept, ``at[name]`` (default 0) for
    other random slopes, x for ``x``): var(Y | x) = z(x)' T z(x) + sigma^2. In a random
    intercept and slope model a = tau_0^2 + sigma^2, b = tau_10, c = tau_1^2.
    """
    names = list(fit.random_names)
    x = _slope_name(fit, x)
    at = dict(at or {})
    unknown = set(at) - set(names)
    if unknown:
        raise ValueError(f"at= names {sorted(unknown)} are not random effects; the random "
                         f"effects are {', '.join(names)}")
    z0 = np.array([1.0 if n == "Intercept" else float(at.get(n, 0.0)) for n in names])
    k = names.index(x)
    z0[k] = 0.0
    T = fit.T.to_numpy()
    return float(z0 @ T @ z0 + fit.sigma2), float((T @ z0)[k]), float(T[k, k])


def _slope_name(fit: FitResult, x: str | None) -> str:
    slopes = [n for n in fit.random_names if n != "Intercept"]
    if not slopes:
        raise ValueError(f"the model {fit.formula!r} has no random slope, so var(Y | x) = "
                         "tau_0^2 + sigma^2 does not depend on x; fit a random slope, "
                         "e.g. (1 + x | g)")
    if x is None:
        return slopes[0]
    if x not in slopes:
        raise ValueError(f"{x!r} is not a random slope of the model; choose one of "
                         f"{', '.join(slopes)}")
    return x


def plot_variance_function(fit: FitResult, x: str | None = None, ax: Axes | None = None, *,
                           at: Mapping[str, float] | None = None,
                           grid: np.ndarray | None = None) -> Axes:
    """The estimated variance function var(Y | x) = tau_0^2 + 2 tau_10 x + tau_1^2 x^2 + sigma^2.

    Drawn over the observed range of ``x`` (or over ``grid``), with its minimum at
    x* = -tau_10 / tau_1^2 marked by a vertical line when x* lies in that range. With
    several random slopes the others are held at ``at`` (default 0), see
    :func:`variance_function`.

    Returns the Axes: the curve is the Line2D with ``gid`` "variance", the marker of the
    minimum the one with ``gid`` "minimum" (absent when x* is outside the range or
    tau_1^2 = 0).
    """
    import seaborn as sns

    d = _design(fit)
    x = _slope_name(fit, x)
    a, b, c = variance_function(fit, x, at)
    if grid is None:
        xv = d.Z[:, d.random_names.index(x)]
        grid = np.linspace(xv.min(), xv.max(), 201)
    grid = np.asarray(grid, dtype=float)
    v = a + 2.0 * b * grid + c * grid**2
    ax = _new_axes(ax)
    s2 = fit.sigma2
    (curve,) = ax.plot(grid, v, color=sns.color_palette()[0], linewidth=2.5,
                       label=f"{a - s2:.2f} + 2({b:.3g}) {x} + {c:.3g} {x}$^2$ + {s2:.2f}")
    curve.set_gid("variance")
    if c > 0:
        xmin = -b / c
        vmin = a - b * b / c
        if grid.min() <= xmin <= grid.max():
            (mark,) = ax.plot([xmin, xmin], [vmin, vmin], marker="o", color="C3",
                              linestyle="none", zorder=4,
                              label=f"minimum {vmin:.2f} at {x} = {xmin:.3g}")
            mark.set_gid("minimum")
            ax.axvline(xmin, color="C3", linestyle=":", linewidth=1.2, zorder=1)
        else:
            ax.plot([], [], linestyle="none",
                    label=f"minimum at {x} = {xmin:.3g} (outside the range shown)")
    ax.set_xlabel(x)
    ax.set_ylabel(f"var({d.formula.response} | {x})")
    ax.set_title(f"Estimated variance of {d.formula.response} ({fit.method})")
    ax.legend(loc="best", frameon=False)
    sns.despine(ax=ax)
    return ax


# ---------------------------------------------------------------------------
# caterpillar plot
# ---------------------------------------------------------------------------

def ranef_intervals(fit: FitResult, term: str = "Intercept", level: float = 0.95) -> pd.DataFrame:
    """EBLUPs of one random effect with intervals U_kj-hat +- z sqrt(condvar_kk), sorted.

    ``condvar`` is ``fit.ranef_condvar`` (J, q, q): sigma^2 Lambda M_j^{-1} Lambda', the
    conditional covariance of U_j given the data at the estimates. Returns a DataFrame
    indexed by group label with columns ``estimate``, ``se``, ``lower``, ``upper``, sorted
    by estimate.
    """
    names = list(fit.random_names)
    if term not in names:
        raise ValueError(f"{term!r} is not a random effect; the random effects are "
                         f"{', '.join(names)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    k = names.index(term)
    u = fit.ranef.to_numpy()[:, k]
    se = np.sqrt(np.clip(fit.ranef_condvar[:, k, k], 0.0, None))
    z = sps.norm.ppf(0.5 + level / 2.0)
    grp = fit.design.formula.group if fit.design is not None else "group"
    out = pd.DataFrame({"estimate": u, "se": se, "lower": u - z * se, "upper": u + z * se},
                       index=pd.Index(fit.group_labels, name=grp))
    return out.sort_values("estimate", kind="stable")


def plot_caterpillar(fit: FitResult, term: str = "Intercept", level: float = 0.95,
                     ax: Axes | None = None) -> Axes:
    """Caterpillar plot: the EBLUPs U_kj-hat of random effect ``term``, sorted, with
    ``level`` intervals U_kj-hat +- z sqrt(var(U_kj-hat - U_kj)) (see
    :func:`ranef_intervals`), and a reference line at 0.

    Returns the Axes: the intervals are one LineCollection (``gid`` "intervals", one
    segment per group) and the EBLUPs one Line2D (``gid`` "eblup", one point per group).
    Groups are labelled on the y axis when there are at most 40.
    """
    import seaborn as sns

    tab = ranef_intervals(fit, term, level)
    J = len(tab)
    ax = _new_axes(ax, figsize=(6.0, max(4.0, min(12.0, 0.18 * J + 1.5))))
    pos = np.arange(J)
    ax.axvline(0.0, color="0.5", linestyle="--", linewidth=0.9, zorder=0)
    segs = ax.hlines(pos, tab["lower"], tab["upper"], color=sns.color_palette()[0],
                     linewidth=1.0, zorder=1)
    segs.set_gid("intervals")
    (pts,) = ax.plot(tab["estimate"], pos, marker="o", markersize=3.5, linestyle="none",
                     color="black", zorder=2)
    pts.set_gid("eblup")
    ax.set_ylim(-1, J)
    if J <= _MAX_TICK_LABELS:
        ax.set_yticks(pos)
        ax.set_yticklabels([str(v) for v in tab.index], fontsize=7)
    else:
        ax.set_yticks([])
    ax.set_ylabel(f"{tab.index.name} (sorted by EBLUP, J = {J})")
    sym = "U_0j" if term == "Intercept" else f"U_j[{term}]"
    ax.set_xlabel(f"EBLUP of {sym} with {level:.0%} interval")
    ax.set_title(f"Random effect {term!r} ({fit.method})")
    sns.despine(ax=ax, left=J > _MAX_TICK_LABELS)
    return ax


# ---------------------------------------------------------------------------
# within versus between regressions
# ---------------------------------------------------------------------------

def _wb_frame(data: pd.DataFrame, x: str, y: str, group: str) -> pd.DataFrame:
    missing = [c for c in (x, y, group) if c not in data.columns]
    if missing:
        raise ValueError(f"column(s) {', '.join(map(repr, missing))} not in the data; "
                         f"available columns: {', '.join(map(str, data.columns))}")
    df = data[[x, y, group]].copy()
    for c in (x, y):
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]):
            raise ValueError(f"{c!r} must be numeric, but has dtype {df[c].dtype}")
    df[[x, y]] = df[[x, y]].astype(float)
    df = df[np.isfinite(df[x]) & np.isfinite(df[y]) & df[group].notna()]
    df["_xbar"] = df.groupby(group, sort=False)[x].transform("mean")
    df["_ybar"] = df.groupby(group, sort=False)[y].transform("mean")
    return df


def within_between_slopes(data: pd.DataFrame, x: str, y: str, group: str) -> dict[str, float]:
    """The three regressions of a centering comparison, by least squares on the data.

    - within (pooled): b_W = sum (x_ij - xbar_j)(y_ij - ybar_j) / sum (x_ij - xbar_j)^2,
      the slope of the group-mean-centred x (GpMC; the fixed-effects estimator);
    - between: b_B, the slope of the regression of ybar_j on xbar_j (one point a group);
      in the RS + GpM random intercept model gamma_10 + gamma_01 estimates it;
    - total: b_T, ordinary least squares of y on x ignoring the groups.

    Returns {"within", "between", "between_intercept", "total", "total_intercept"}.

    >>> from mlmsim import datasets
    >>> s = within_between_slopes(datasets.load("nels88"), "homework", "math", "school")
    >>> round(s["within"], 4), round(s["between"], 4)  # gamma_10 of the seed's RS + GpM: 2.3610
    (2.361, 3.6466)
    """
    df = _wb_frame(data, x, y, group)
    dx, dy = df[x] - df["_xbar"], df[y] - df["_ybar"]
    sxx = float((dx * dx).sum())
    if sxx <= 1e-12 * max(float((df[x] ** 2).sum()), 1e-300):
        raise ValueError(f"{x!r} does not vary within the groups of {group!r}, so there is no "
                         "within-group regression; choose a level-1 variable")
    means = df.groupby(group, sort=False)[[x, y]].mean()
    if len(means) < 3 or float(means[x].var()) <= 1e-10 * float(df[x].var()):
        raise ValueError(f"the group means of {x!r} do not vary (or fewer than 3 groups), so "
                         "there is no between-group regression; use the raw (uncentred) "
                         "variable")
    bb, ab = np.polyfit(means[x].to_numpy(), means[y].to_numpy(), 1)
    bt, at = np.polyfit(df[x].to_numpy(), df[y].to_numpy(), 1)
    return {"within": float((dx * dy).sum() / sxx), "between": float(bb),
            "between_intercept": float(ab), "total": float(bt), "total_intercept": float(at)}


def plot_within_between(data: pd.DataFrame, x: str, y: str, group: str,
                        ax: Axes | None = None, *, n_groups: int | None = None,
                        separate: bool = False, seed: int = 0) -> Axes:
    """Within- versus between-group regressions, as in the seed's centering section.

    Draws the observations (light points); for each group its within-group regression
    through (xbar_j, ybar_j) over the group's range of x, with the pooled within slope b_W
    (parallel lines: the random intercept model with x group-mean centred), or with the
    group's own least-squares slope when ``separate``; the group means (xbar_j, ybar_j);
    the between-group regression of ybar_j on xbar_j (bold) and the total regression
    ignoring groups (dashed). Slopes are those of :func:`within_between_slopes`.

    ``n_groups`` draws the lines and means of a random sample of groups (fixed by
    ``seed``); the between and total regressions always use all groups.

    Returns the Axes: one Line2D per group drawn (``gid`` "within"), then the between
    (``gid`` "between") and total (``gid`` "total") lines; the observations of the groups
    drawn and the group means are PathCollections with ``gid`` "data" and "means".
    """
    import seaborn as sns

    s = within_between_slopes(data, x, y, group)
    df = _wb_frame(data, x, y, group)
    g = df.groupby(group, sort=True)
    summary = pd.DataFrame({"xbar": g[x].mean(), "ybar": g[y].mean(), "lo": g[x].min(),
                            "hi": g[x].max()})
    if separate:
        dxy = ((df[x] - df["_xbar"]) * (df[y] - df["_ybar"])).groupby(df[group]).sum()
        dxx = ((df[x] - df["_xbar"]) ** 2).groupby(df[group]).sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            summary["slope"] = (dxy / dxx).reindex(summary.index)
        summary.loc[~np.isfinite(summary["slope"]), "slope"] = s["within"]
    else:
        summary["slope"] = s["within"]
    J = len(summary)
    shown = summary.iloc[_pick_groups(J, n_groups, seed)]
    ax = _new_axes(ax)
    rows = df[group].isin(shown.index)
    pts = ax.scatter(df.loc[rows, x], df.loc[rows, y], s=6, color="0.6", alpha=0.35,
                     linewidths=0, zorder=1)
    pts.set_gid("data")
    colors = sns.color_palette("husl", len(shown))
    kind = "own" if separate else "pooled within"
    for c, (_, r) in zip(colors, shown.iterrows(), strict=True):
        xs = np.array([r.lo, r.hi])
        (line,) = ax.plot(xs, r.ybar + r.slope * (xs - r.xbar), color=c, linewidth=0.9,
                          alpha=0.9, zorder=2)
        line.set_gid("within")
    line.set_label(f"within groups ({kind} slope {s['within']:.2f})")
    means = ax.scatter(shown["xbar"], shown["ybar"], s=22, color="white", edgecolors="black",
                       linewidths=0.8, zorder=4, label="group means")
    means.set_gid("means")
    xs = np.array([df[x].min(), df[x].max()])
    (bl,) = ax.plot(xs, s["between_intercept"] + s["between"] * xs, color="black",
                    linewidth=3.0, zorder=3, label=f"between groups (slope {s['between']:.2f})")
    bl.set_gid("between")
    (tl,) = ax.plot(xs, s["total_intercept"] + s["total"] * xs, color="C3", linewidth=1.8,
                    linestyle="--", zorder=3, label=f"total, ignoring groups "
                                                    f"(slope {s['total']:.2f})")
    tl.set_gid("total")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"Within versus between {group} regressions ({len(shown)} of {J} groups)")
    ax.legend(loc="best", frameon=False, fontsize=8)
    sns.despine(ax=ax)
    return ax

