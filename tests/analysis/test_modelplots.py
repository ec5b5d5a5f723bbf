"""Model plots of HSB and NELS-88 fits: what is drawn is checked on the matplotlib objects
(how many lines and points, and that their coordinates are the model's numbers), and
every figure is written to a non-empty PNG file."""

from __future__ import annotations

import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from scipy import stats as sps  # noqa: E402

import mlmsim  # noqa: E402
from mlmsim.analysis import modelplots as mp  # noqa: E402

MODELS = {
    "hsb": ("mathach ~ 1 + cses + (1 + cses | school)", "cses"),
    "nels88": ("math ~ homework + (1 + homework | school)", "homework"),
}
RAW_X = {"hsb": ("ses", "mathach"), "nels88": ("homework", "math")}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    return {name: mlmsim.datasets.load(name) for name in MODELS}


@pytest.fixture(scope="module")
def fits(data):
    return {name: mlmsim.fit(f, data[name], method="ML") for name, (f, _) in MODELS.items()}


def _gid(ax, gid):
    return [a for a in ax.get_children() if a.get_gid() == gid]


def _png_ok(ax, path):
    ax.figure.savefig(path, dpi=60)
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# group regression lines
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_group_lines_all_groups(name, fits, tmp_path):
    res = fits[name]
    d = res.design
    x = MODELS[name][1]
    ax = mp.plot_group_lines(res)
    assert ax.get_xlabel() == x
    groups = _gid(ax, "group")
    assert len(groups) == res.ngroups
    (avg,) = _gid(ax, "average")
    assert avg.get_linewidth() > max(g.get_linewidth() for g in groups)
    (pts,) = _gid(ax, "data")
    assert isinstance(pts, PathCollection)
    assert pts.get_offsets().shape == (res.nobs, 2)
    # each group's line is its fitted regression: the fitted values lie on it
    xv = d.X[:, d.fixed_names.index(x)]
    for j, line in enumerate(groups):
        assert line.get_label() == f"_{d.group_labels[j]}"
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        rows = d.group_codes == j
        assert x0 == pytest.approx(xv[rows].min()) and x1 == pytest.approx(xv[rows].max())
        on_line = y0 + (y1 - y0) / (x1 - x0) * (xv[rows] - x0)
        np.testing.assert_allclose(on_line, res.fitted.to_numpy()[rows], rtol=1e-9, atol=1e-9)
    # the average line is gamma_00 + gamma_10 x
    g0, g1 = res.fixef["Intercept"], res.fixef[x]
    np.testing.assert_allclose(avg.get_ydata(), g0 + g1 * np.asarray(avg.get_xdata()))
    _png_ok(ax, tmp_path / f"{name}_group_lines.png")


@pytest.mark.parametrize("name", list(MODELS))
def test_group_lines_some_groups(name, fits):
    res = fits[name]
    ax = mp.plot_group_lines(res, n_groups=7, seed=3)
    groups = _gid(ax, "group")
    assert len(groups) == 7
    labels = {g.get_label()[1:] for g in groups}
    shown = [j for j, lab in enumerate(res.design.group_labels) if str(lab) in labels]
    assert len(shown) == 7
    n_points = int(np.isin(res.design.group_codes, shown).sum())
    assert _gid(ax, "data")[0].get_offsets().shape[0] == n_points
    assert len(_gid(ax, "average")) == 1
    # the same seed draws the same groups
    again = {g.get_label() for g in _gid(mp.plot_group_lines(res, n_groups=7, seed=3), "group")}
    assert again == {g.get_label() for g in groups}


def test_group_lines_cross_level_interaction(data):
    """cses * meanses: meanses is a school variable, so holding it at its group mean is
    exact and every fitted value lies on its school's line."""
    res = mlmsim.fit("mathach ~ 1 + cses * meanses + (1 + cses | school)", data["hsb"],
                     method="ML")
    ax = mp.plot_group_lines(res, x="cses", points=False)
    groups = _gid(ax, "group")
    assert len(groups) == 160 and not _gid(ax, "data")
    _fitted_on_lines(res, "cses", groups)


def _fitted_on_lines(res, x, groups, which=(0, 57, 159)):
    """The fitted values of groups ``which`` lie on their drawn lines."""
    d = res.design
    xv = d.X[:, d.fixed_names.index(x)]
    for j in which:
        (x0, x1), (y0, y1) = groups[j].get_xdata(), groups[j].get_ydata()
        rows = d.group_codes == j
        np.testing.assert_allclose(y0 + (y1 - y0) / (x1 - x0) * (xv[rows] - x0),
                                   res.fitted.to_numpy()[rows], rtol=1e-9)


def test_group_lines_with_a_factor_interaction(data):
    """ses * track, track a school-level factor: the column 'ses:track[T.b]' is ses times a
    dummy that is a design column of its own, so each school's line is still straight and
    every fitted value lies on it."""
    d = data["hsb"].assign(track=np.where(data["hsb"]["sector"] == 1, "a", "b"))
    res = mlmsim.fit("mathach ~ ses * track + (1 + ses | school)", d, method="ML")
    assert "ses:track[T.b]" in res.fixed_names
    ax = mp.plot_group_lines(res, x="ses", points=False)
    groups = _gid(ax, "group")
    assert len(groups) == 160
    _fitted_on_lines(res, "ses", groups)


def test_group_lines_errors(data, fits):
    null = mlmsim.fit("math ~ 1 + (1 | school)", data["nels88"], method="ML")
    with pytest.raises(ValueError, match="no predictor"):
        mp.plot_group_lines(null)
    with pytest.raises(ValueError, match="'ses' is not a predictor"):
        mp.plot_group_lines(fits["nels88"], x="ses")
    with pytest.raises(ValueError, match="'ses' is not a predictor"):
        mp.plot_group_lines(fits["hsb"], x="ses", data=data["hsb"])
    quad = mlmsim.fit("math ~ homework + I(homework**2) + (1 | school)", data["nels88"],
                      method="ML")
    with pytest.raises(ValueError, match="linearly"):
        mp.plot_group_lines(quad, x="homework")


def test_group_lines_draws_on_given_axes(fits):
    fig, axes = plt.subplots(1, 2)
    out = mp.plot_group_lines(fits["nels88"], ax=axes[1])
    assert out is axes[1]
    assert not axes[0].lines and len(axes[1].lines) == 24


# ---------------------------------------------------------------------------
# variance function
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_variance_function(name, fits, tmp_path):
    res = fits[name]
    x = MODELS[name][1]
    T = res.T
    t0, t10, t1 = T.loc["Intercept", "Intercept"], T.loc[x, "Intercept"], T.loc[x, x]
    ax = mp.plot_variance_function(res)
    (curve,) = _gid(ax, "variance")
    xs = np.asarray(curve.get_xdata())
    xv = res.design.Z[:, 1]
    assert xs.min() == pytest.approx(xv.min()) and xs.max() == pytest.approx(xv.max())
    np.testing.assert_allclose(curve.get_ydata(), t0 + 2 * t10 * xs + t1 * xs**2 + res.sigma2)
    (mark,) = _gid(ax, "minimum")
    assert mark.get_xdata()[0] == pytest.approx(-t10 / t1)
    assert mark.get_ydata()[0] == pytest.approx(t0 - t10**2 / t1 + res.sigma2)
    assert mark.get_ydata()[0] <= np.min(curve.get_ydata()) + 1e-12
    _png_ok(ax, tmp_path / f"{name}_variance.png")


def test_variance_function_nels_minimum_is_lme4s(fits):
    """lme4's ML fit (mlmsim/datasets/README.md): tau_10 = -26.1511, tau_1^2 = 16.7861, so
    var(math | homework) is smallest at homework = 1.558."""
    ax = mp.plot_variance_function(fits["nels88"])
    (mark,) = _gid(ax, "minimum")
    assert mark.get_xdata()[0] == pytest.approx(26.1511 / 16.7861, rel=2e-3)
    a, b, c = mp.variance_function(fits["nels88"])
    assert (a, b, c) == pytest.approx((59.2837 + 53.2976, -26.1511, 16.7861), rel=2e-3)


def test_variance_function_minimum_outside_range(fits):
    ax = mp.plot_variance_function(fits["nels88"], grid=np.linspace(3, 7, 50))
    assert not _gid(ax, "minimum")
    assert any("outside" in t.get_text() for t in ax.get_legend().get_texts())


def test_variance_function_errors(data, fits):
    ri = mlmsim.fit("math ~ homework + (1 | school)", data["nels88"], method="ML")
    with pytest.raises(ValueError, match="no random slope"):
        mp.plot_variance_function(ri)
    with pytest.raises(ValueError, match="not a random slope"):
        mp.plot_variance_function(fits["hsb"], x="ses")
    with pytest.raises(ValueError, match="not random effects"):
        mp.variance_function(fits["hsb"], at={"female": 1})


def test_variance_function_several_slopes(data):
    res = mlmsim.fit("mathach ~ cses + female + (1 + cses + female | school)", data["hsb"],
                     method="ML")
    T = res.T
    a, b, c = mp.variance_function(res, "cses", at={"female": 1})
    z0 = np.array([1.0, 0.0, 1.0])
    assert a == pytest.approx(z0 @ T.to_numpy() @ z0 + res.sigma2)
    assert b == pytest.approx(T.loc["cses", "Intercept"] + T.loc["cses", "female"])
    assert c == pytest.approx(T.loc["cses", "cses"])


# ---------------------------------------------------------------------------
# caterpillar
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("term", ["Intercept", "slope"])
def test_caterpillar(name, term, fits, tmp_path):
    res = fits[name]
    term = MODELS[name][1] if term == "slope" else term
    k = list(res.random_names).index(term)
    ax = mp.plot_caterpillar(res, term=term, level=0.9)
    (segs,) = _gid(ax, "intervals")
    (pts,) = _gid(ax, "eblup")
    assert isinstance(segs, LineCollection)
    J = res.ngroups
    assert len(segs.get_segments()) == J and len(pts.get_xdata()) == J
    u = np.asarray(pts.get_xdata())
    np.testing.assert_allclose(u, np.sort(res.ranef[term].to_numpy()))
    lo = np.array([s[0, 0] for s in segs.get_segments()])
    hi = np.array([s[1, 0] for s in segs.get_segments()])
    order = np.argsort(res.ranef.to_numpy()[:, k], kind="stable")
    half = sps.norm.ppf(0.95) * np.sqrt(res.ranef_condvar[order, k, k])
    np.testing.assert_allclose(hi - lo, 2 * half)
    np.testing.assert_allclose((hi + lo) / 2, u)
    labelled = len(ax.get_yticklabels()) == J
    assert labelled == (J <= 40)
    _png_ok(ax, tmp_path / f"{name}_{term}_caterpillar.png")


def test_caterpillar_intervals_are_posterior_sds(fits):
    """For a nonsingular T the conditional covariance of U_j is (Z_j'Z_j / sigma^2 +
    T^{-1})^{-1}: the textbook form, computed here directly from the data."""
    res = fits["nels88"]
    d = res.design
    Tinv = np.linalg.inv(res.T.to_numpy())
    tab = mp.ranef_intervals(res, "homework", level=0.95)
    for j in (0, 11, 22):
        Zj = d.Z[d.group_codes == j]
        C = np.linalg.inv(Zj.T @ Zj / res.sigma2 + Tinv)
        lab = d.group_labels[j]
        assert tab.loc[lab, "se"] == pytest.approx(np.sqrt(C[1, 1]), rel=1e-6)
    assert tab["estimate"].is_monotonic_increasing


def test_caterpillar_errors(fits):
    with pytest.raises(ValueError, match="not a random effect"):
        mp.plot_caterpillar(fits["hsb"], term="ses")
    with pytest.raises(ValueError, match="level"):
        mp.plot_caterpillar(fits["hsb"], level=1.5)


# ---------------------------------------------------------------------------
# within versus between
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_within_between(name, data, tmp_path):
    df = data[name]
    x, y = RAW_X[name]
    J, N = df["school"].nunique(), len(df)
    ax = mp.plot_within_between(df, x, y, "school")
    assert len(_gid(ax, "within")) == J
    (between,) = _gid(ax, "between")
    (total,) = _gid(ax, "total")
    assert _gid(ax, "data")[0].get_offsets().shape == (N, 2)
    means = _gid(ax, "means")[0].get_offsets()
    assert means.shape == (J, 2)
    s = mp.within_between_slopes(df, x, y, "school")
    xb, yb = between.get_xdata(), between.get_ydata()
    assert (yb[1] - yb[0]) / (xb[1] - xb[0]) == pytest.approx(s["between"])
    # the between line is the least-squares line through the group means
    bb = np.polyfit(means[:, 0], means[:, 1], 1)[0]
    assert bb == pytest.approx(s["between"])
    xt, yt = total.get_xdata(), total.get_ydata()
    assert (yt[1] - yt[0]) / (xt[1] - xt[0]) == pytest.approx(np.polyfit(df[x], df[y], 1)[0])
    for line in _gid(ax, "within")[:5]:
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        if x1 > x0:
            assert (y1 - y0) / (x1 - x0) == pytest.approx(s["within"])
    _png_ok(ax, tmp_path / f"{name}_within_between.png")


def test_within_slope_is_the_rs_gpm_coefficient(data):
    """In the random intercept model with x and its group mean (RS + GpM), gamma_10 is the
    within-group estimator exactly; the seed's NELS-88 table gives 2.3610."""
    df = data["nels88"].copy()
    df["hw_mean"] = df.groupby("school")["homework"].transform("mean")
    res = mlmsim.fit("math ~ homework + hw_mean + (1 | school)", df, method="ML")
    s = mp.within_between_slopes(df, "homework", "math", "school")
    assert s["within"] == pytest.approx(res.fixef["homework"], rel=1e-6)
    assert s["within"] == pytest.approx(2.3610, abs=1e-4)


def test_within_between_options(data):
    df = data["hsb"]
    ax = mp.plot_within_between(df, "ses", "mathach", "school", n_groups=12, separate=True)
    within = _gid(ax, "within")
    assert len(within) == 12 and _gid(ax, "means")[0].get_offsets().shape == (12, 2)
    slopes = [(ln.get_ydata()[1] - ln.get_ydata()[0]) / (ln.get_xdata()[1] - ln.get_xdata()[0])
              for ln in within]
    assert np.std(slopes) > 0.1  # each school's own slope


def test_within_between_errors(data):
    df = data["hsb"]
    with pytest.raises(ValueError, match="does not vary within"):
        mp.plot_within_between(df, "meanses", "mathach", "school")
    centred = df.assign(c=df["ses"] - df.groupby("school")["ses"].transform("mean"))
    with pytest.raises(ValueError, match="group means"):
        mp.within_between_slopes(centred, "c", "mathach", "school")
    with pytest.raises(ValueError, match="'sess'"):
        mp.plot_within_between(df, "sess", "mathach", "school")
    with pytest.raises(ValueError, match="numeric"):
        mp.plot_within_between(df.assign(s=df["ses"].astype(str)), "s", "mathach", "school")
    tiny = pd.DataFrame({"g": [1, 1, 2, 2], "x": [0.0, 1, 2, 3], "y": [1.0, 2, 3, 5]})
    with pytest.raises(ValueError, match="fewer than 3 groups"):
        mp.within_between_slopes(tiny, "x", "y", "g")


def test_cli_plots_a_model_with_a_factor_interaction(data, tmp_path):
    """``mlmsim fit ... --plot DIR`` with ``ses * track``: every figure written, exit 0."""
    csv = tmp_path / "pupils.csv"
    d = data["hsb"].assign(track=np.where(data["hsb"]["sector"] == 1, "a", "b"))
    d[["school", "mathach", "ses", "track"]].to_csv(csv, index=False)
    plots = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "mlmsim", "fit", str(csv),
                           "mathach ~ ses * track + (1 + ses | school)", "--plot", str(plots)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "group_lines.png" in {p.name for p in plots.iterdir()}
