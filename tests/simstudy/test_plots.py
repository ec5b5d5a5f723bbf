"""Figures of measures: a PNG with MCSE error bars, one panel per parameter."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mlmsim.simstudy import Study, plot_measure  # noqa: E402


def draw(cond, rng):
    return rng.normal(1.0, cond.sd, size=cond.size)


def two_estimators(data):
    se = float(np.std(data, ddof=1) / np.sqrt(len(data)))
    return {"mean": {"estimate": float(np.mean(data)), "se": se},
            "sd": {"estimate": float(np.std(data, ddof=1))}}


@pytest.fixture(scope="module")
def summary():
    study = Study({"size": [5, 10, 20], "sd": [1.0, 2.0]}, draw,
                  {"a": two_estimators, "b": lambda d: {"mean": float(np.median(d))}},
                  truth=lambda c: {"mean": 1.0, "sd": c.sd}, n_reps=30, seed=1)
    return study.run(progress=False).summarise()


def test_plot_writes_png(summary, tmp_path):
    path = tmp_path / "bias.png"
    grid = plot_measure(summary, "bias", x="size", row="sd", path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert grid.axes.shape == (2, 2)  # sd rows x parameter columns
    ax = grid.axes[1, 0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "20"]
    # one error-bar line per method in the panel of "mean"
    assert len(ax.containers) == 2
    plt.close("all")


def test_plot_cover_reference_and_parameter_filter(summary, tmp_path):
    sub = summary[summary.sd == 1.0]
    grid = plot_measure(sub, "cover", x="size", parameters=["mean"], path=tmp_path / "c.png")
    assert grid.axes.size == 1
    lines = [ln for ln in grid.axes.flat[0].get_lines() if ln.get_linestyle() == "--"]
    assert lines and lines[0].get_ydata()[0] == pytest.approx(0.95)
    plt.close("all")


def test_plot_refuses_unplotted_varying_condition(summary):
    with pytest.raises(ValueError, match="vary"):
        plot_measure(summary, "bias", x="size")
    with pytest.raises(ValueError, match="no rows"):
        plot_measure(summary, "nonsense", x="size")


def synthetic(measure, x_values, parameters=("a",), methods=("ML",), estimate=0.5, n=25,
              mcse=0.1, **const):
    """A summarise()-shaped frame: one row per x value x method x parameter."""
    rows = []
    for i, v in enumerate(x_values):
        for m in methods:
            for p in parameters:
                rows.append({"condition": i, "n_groups": v, **const, "method": m,
                             "parameter": p, "measure": measure,
                             "estimate": estimate(v) if callable(estimate) else estimate,
                             "mcse": mcse, "n": n})
    return pd.DataFrame(rows)


def test_numeric_x_is_spaced_by_value(tmp_path):
    Js = [20, 30, 40, 50, 60, 80]
    data = synthetic("bias", Js, methods=("ML", "REML"))
    grid = plot_measure(data, "bias", "n_groups")
    ax = grid.axes.flat[0]
    assert len(ax.containers) == 2
    for container in ax.containers:
        xs = np.asarray(container.lines[0].get_xdata(), dtype=float)
        # x = J + a constant dodge: the gaps are those of the values
        np.testing.assert_allclose(np.diff(xs), np.diff(Js))
        assert abs(xs[0] - 20) < 0.25 * 10
    np.testing.assert_allclose(ax.get_xticks(), Js)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(J) for J in Js]
    one = plot_measure(data[data.method == "ML"], "bias", "n_groups", hue=None)
    xs = np.asarray(one.axes.flat[0].containers[0].lines[0].get_xdata(), dtype=float)
    np.testing.assert_allclose(xs / xs[0], np.array(Js) / Js[0])
    plt.close("all")


def test_string_x_keeps_even_spacing():
    data = synthetic("bias", ["5x20", "10x10", "50x2"])
    grid = plot_measure(data, "bias", "n_groups", hue=None)
    xs = grid.axes.flat[0].containers[0].lines[0].get_xdata()
    np.testing.assert_allclose(np.sort(np.asarray(xs, dtype=float)), [0, 1, 2])
    plt.close("all")


def test_proportion_bars_are_wilson_intervals_inside_0_1():
    # coverage 1 and 0 (MCSE 0) and 0.96 (MCSE bars would pass 1)
    est = {30: 1.0, 50: 0.0, 100: 0.96}
    data = synthetic("cover", list(est), estimate=est.get, n=25,
                     mcse=float("nan"))
    data["mcse"] = np.sqrt(data.estimate * (1 - data.estimate) / data.n)
    grid = plot_measure(data, "cover", "n_groups", hue=None)
    ax = grid.axes.flat[0]
    segments = ax.containers[0].lines[2][0].get_segments()
    lows = np.array([s[0][1] for s in segments])
    highs = np.array([s[1][1] for s in segments])
    # sorted by J: 30 (p = 1), 50 (p = 0), 100 (p = 0.96)
    z2 = 1.96 ** 2
    np.testing.assert_allclose(lows[0], 25 / (25 + z2), rtol=1e-3)  # Wilson at k = n
    np.testing.assert_allclose(highs[1], z2 / (25 + z2), rtol=1e-3)  # Wilson at k = 0
    assert highs[0] == pytest.approx(1.0) and lows[1] == pytest.approx(0.0)
    assert (lows >= 0).all() and (highs <= 1).all() and (highs - lows > 0.05).all()
    assert ax.get_ylim()[1] <= 1.02
    assert "Wilson" in ax.get_ylabel() or "Wilson" in grid.axes.flat[0].get_ylabel()
    plt.close("all")


def test_many_panels_wrap_to_at_most_four_columns(tmp_path):
    from PIL import Image

    params = ["Intercept", "X", "Z", "X:Z", "var(Intercept)", "cov(X,Intercept)", "var(X)",
              "sigma2"]
    data = synthetic("relbias", [30, 50, 100], parameters=params, methods=("REML",),
                     group_size=5)
    path = tmp_path / "eight.png"
    grid = plot_measure(data, "relbias", "n_groups", row="group_size", path=path)
    visible = [ax for ax in grid.axes.flat if ax.get_visible()]
    assert len(visible) == 8
    width, height = Image.open(path).size
    assert width <= 2000 and height <= 2000, (width, height)
    assert width < 3 * height  # a grid, not a strip
    titles = [ax.get_title() for ax in grid.axes.flat]
    assert "group_size = 5 | var(X)" in titles
    # three rows of a design factor and eight parameters: 24 panels, 4 to a row
    big = pd.concat([data.assign(group_size=n, condition=data.condition + 10 * i)
                     for i, n in enumerate([5, 30, 50])])
    path2 = tmp_path / "big.png"
    grid = plot_measure(big, "relbias", "n_groups", row="group_size", path=path2)
    assert grid.axes.size == 24
    positions = {round(ax.get_position().x0, 3) for ax in grid.axes.flat}
    assert len(positions) == 4
    assert Image.open(path2).size[0] <= 2000
    plt.close("all")
