"""Figures of measures: a PNG with MCSE error bars, one panel per parameter."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mlmsim.study import Study, plot_measure  # noqa: E402


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
