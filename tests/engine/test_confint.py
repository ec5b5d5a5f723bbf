"""Profile-likelihood and parametric-bootstrap intervals and the bootstrap LRT
(mlmsim.engine.likelihood_profile, mlmsim.engine.bootstrap): checks against dense
brute-force likelihoods, invariance to units, the boundary, reproducibility."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize as spo
from scipy import stats as sps

import mlmsim

DATA = Path(__file__).parents[1] / "data"
Z95 = float(sps.chi2.ppf(0.95, 1))


@pytest.fixture(scope="module")
def sleep():
    d = pd.read_csv(DATA / "inference_sleepstudy.csv")
    d["Hours"] = d["Days"] * 24.0
    return d


@pytest.fixture(scope="module")
def dyestuff():
    return pd.read_csv(DATA / "profile_dyestuff.csv")


@pytest.fixture(scope="module")
def dyestuff2():
    return pd.read_csv(DATA / "profile_dyestuff2.csv")


def _dense_criterion(y, codes, b0, var, sigma2, reml):
    """-2 log L (or -2 log L_R) of y = b0 + u_j + e by dense linear algebra; for REML
    with b0=None the GLS estimate is used."""
    n = y.size
    Zm = np.eye(codes.max() + 1)[codes]
    V = var * Zm @ Zm.T + sigma2 * np.eye(n)
    Vi = np.linalg.inv(V)
    one = np.ones(n)
    if b0 is None:
        b0 = (one @ Vi @ y) / (one @ Vi @ one)
    r = y - b0
    out = np.linalg.slogdet(V)[1] + r @ Vi @ r + n * np.log(2 * np.pi)
    if reml:
        out += np.log(one @ Vi @ one) - np.log(2 * np.pi)
    return out


@pytest.mark.parametrize("reml", [False, True])
def test_variance_limits_solve_the_dense_profile_equation(dyestuff, reml):
    """At each limit of var(Intercept), the criterion minimised over the rest by a
    derivative-free optimiser on the dense likelihood is d_hat + chi2_1(0.95)."""
    y = dyestuff["Yield"].to_numpy(float)
    codes = pd.factorize(dyestuff["Batch"])[0]
    fit = mlmsim.fit("Yield ~ 1 + (1 | Batch)", dyestuff, method="REML" if reml else "ML")
    ci = fit.confint("profile")
    b0 = None if reml else "free"

    def crit(v, s2, b):
        return _dense_criterion(y, codes, None if reml else b, v, s2, reml)

    def best(v):
        starts = ([np.log(fit.sigma2), 1527.5], [np.log(fit.sigma2) + 0.5, 1500.0])
        return min(spo.minimize(lambda x: crit(v, np.exp(x[0]), x[1]), s, method="Nelder-Mead",
                                options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 10000}).fun
                   for s in starts)

    d_hat = fit.deviance
    for side in ("lower", "upper"):
        v = ci.loc["var(Intercept)", side]
        assert best(v) - d_hat == pytest.approx(Z95, abs=2e-6), (side, b0)


def test_zero_variance_gets_lower_limit_zero_and_says_so(dyestuff2):
    fit = mlmsim.fit("Yield ~ 1 + (1 | Batch)", dyestuff2, method="ML")
    ci = fit.confint("profile")
    row = ci.loc["var(Intercept)"]
    assert row["lower"] == 0.0 and row["at_bound"] == "lower"
    assert row["upper"] > 1.0
    assert ci.loc["sigma2", "at_bound"] == ""


def test_fixed_effect_limits_solve_the_dense_profile_equation(dyestuff2):
    """The intercept's ML profile: the kink where the variance leaves 0 is followed
    exactly (a spline through profile points is not)."""
    y = dyestuff2["Yield"].to_numpy(float)
    codes = pd.factorize(dyestuff2["Batch"])[0]
    fit = mlmsim.fit("Yield ~ 1 + (1 | Batch)", dyestuff2, method="ML")
    ci = fit.confint("profile", parm="Intercept")
    for side in ("lower", "upper"):
        b = ci.loc["Intercept", side]
        dev = min(spo.minimize(lambda x, b=b: _dense_criterion(y, codes, b, x[0] ** 2,
                                                               x[1] ** 2, False),
                               s, method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 10000}).fun
                  for s in ([0.01, 1.9], [1.0, 1.9], [2.0, 1.5]))
        assert dev - fit.deviance == pytest.approx(Z95, abs=2e-6)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_profile_intervals_do_not_depend_on_units(sleep, method):
    """Days vs hours: fixed-effect limits scale by 1/24, the slope variance by 1/576, the
    correlation and the rest are unchanged."""
    a = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep, method=method).confint()
    b = mlmsim.fit("Reaction ~ Hours + (Hours | Subject)", sleep, method=method).confint()
    cols = ["lower", "upper"]
    assert b.loc["Hours", cols].to_numpy(float) * 24 == pytest.approx(
        a.loc["Days", cols].to_numpy(float), rel=1e-6)
    assert b.loc["var(Hours)", cols].to_numpy(float) * 576 == pytest.approx(
        a.loc["var(Days)", cols].to_numpy(float), rel=1e-6)
    for name in ("Intercept", "var(Intercept)", "sigma2"):
        assert b.loc[name, cols].to_numpy(float) == pytest.approx(
            a.loc[name, cols].to_numpy(float), rel=1e-6)
    assert b.loc["cov(Hours,Intercept)", cols].to_numpy(float) == pytest.approx(
        a.loc["cov(Days,Intercept)", cols].to_numpy(float), abs=1e-6)


def test_profile_traces_zeta_through_the_limits(sleep):
    fit = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep, method="ML")
    ci = fit.confint("profile", parm="var(Days)", level=0.95)
    prof = fit.profile("var(Days)", level=0.99)
    pts = prof.points
    assert prof.scale == "sd" and np.all(np.diff(pts["zeta"]) > 0)
    z = np.sqrt(Z95)
    sd_lo, sd_hi = np.sqrt(ci.loc["var(Days)", ["lower", "upper"]].to_numpy(float))
    # zeta interpolated at the 95% limits is -z and +z
    assert np.interp(-z, pts["zeta"], pts["value"]) == pytest.approx(sd_lo, rel=2e-3)
    assert np.interp(z, pts["zeta"], pts["value"]) == pytest.approx(sd_hi, rel=2e-3)
    assert pts["zeta"].min() == pytest.approx(-np.sqrt(sps.chi2.ppf(0.99, 1)), rel=1e-6)
    import matplotlib

    matplotlib.use("Agg")
    ax = prof.plot()
    assert ax.get_xlabel().startswith("var(Days)")


def test_narrower_level_gives_nested_intervals(sleep):
    fit = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep, method="REML")
    a, b = fit.confint(level=0.90), fit.confint(level=0.95)
    assert np.all(b["lower"] < a["lower"]) and np.all(a["upper"] < b["upper"])
    assert np.all(a["lower"] < a["estimate"]) and np.all(a["estimate"] < a["upper"])


def test_reml_profile_is_restricted_and_ml_criterion_is_lme4s(sleep):
    """A REML fit's variance profile is on the REML criterion by default (it contains the
    REML estimate); criterion="ML" gives the ML fit's intervals, as lme4 does."""
    reml = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep, method="REML")
    ml = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep, method="ML")
    cols = ["lower", "upper"]
    by_ml = reml.confint(criterion="ML")[cols].to_numpy(float)
    assert by_ml == pytest.approx(ml.confint()[cols].to_numpy(float), rel=1e-7)
    own = reml.confint()
    assert own.loc["var(Intercept)", "upper"] > by_ml[2, 1]  # wider: REML's df correction


def test_wald_rows_and_bad_arguments(sleep):
    fit = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep)
    w = fit.confint("wald")
    se = fit.fixef_se["Days"]
    assert w.loc["Days", "upper"] - w.loc["Days", "lower"] == pytest.approx(2 * 1.959964 * se,
                                                                             rel=1e-6)
    assert w.loc["cov(Days,Intercept)", "scale"] == "covariance"
    with pytest.raises(ValueError, match="method must be"):
        fit.confint("jackknife")
    with pytest.raises(ValueError, match="no parameter 'Dayz'"):
        fit.confint("profile", parm="Dayz")
    with pytest.raises(ValueError, match="level"):
        fit.confint("profile", level=1.5)
    with pytest.raises(ValueError, match="nsim"):
        fit.bootstrap(nsim=0)
    with pytest.raises(ValueError, match="type"):
        fit.bootstrap(nsim=10, rng=1).confint(type="bca")


def test_bootstrap_is_reproducible_and_independent_of_workers(sleep):
    fit = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep)
    a = fit.bootstrap(nsim=300, rng=7, progress=False)
    b = fit.bootstrap(nsim=300, rng=np.random.SeedSequence(7), progress=False)
    c = fit.bootstrap(nsim=300, rng=7, n_jobs=2, progress=False)
    assert np.array_equal(a.samples.to_numpy(), b.samples.to_numpy(), equal_nan=True)
    assert np.array_equal(a.samples.to_numpy(), c.samples.to_numpy(), equal_nan=True)
    d = fit.bootstrap(nsim=300, rng=8, progress=False)
    assert not np.array_equal(a.samples.to_numpy(), d.samples.to_numpy())
    assert a.n_failed == 0 and list(a.samples.columns) == list(a.estimate.index)


def test_bootstrap_refits_match_single_fits(sleep):
    """Each batched refit equals mlmsim.fit on the same simulated response."""
    fit = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep)
    boot = fit.bootstrap(nsim=3, rng=11, progress=False)
    from mlmsim.engine.chunked import seeds

    ys = fit.simulate(3, np.random.default_rng(seeds(11, 1)[0]))
    for r in range(3):
        one = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep.assign(Reaction=ys[r]))
        assert boot.samples.iloc[r]["Days"] == pytest.approx(one.fixef["Days"], rel=1e-7)
        assert boot.samples.iloc[r]["var(Days)"] == pytest.approx(one.T.iloc[1, 1], rel=1e-5)


def test_bootstrap_intervals_percentile_and_basic(sleep):
    fit = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep)
    boot = fit.bootstrap(nsim=400, rng=3, progress=False)
    perc, basic = boot.confint(type="perc"), boot.confint(type="basic")
    q = boot.samples["Days"].quantile([0.025, 0.975]).to_numpy()
    assert perc.loc["Days", ["lower", "upper"]].to_numpy(float) == pytest.approx(q)
    est = fit.fixef["Days"]
    assert basic.loc["Days", ["lower", "upper"]].to_numpy(float) == pytest.approx(
        [2 * est - q[1], 2 * est - q[0]])
    # the bootstrap SD of the slope is near its SE (a well-identified fixed effect)
    assert boot.samples["Days"].std() == pytest.approx(fit.fixef_se["Days"], rel=0.15)
    assert np.all(boot.samples["cov(Days,Intercept)"].dropna().abs() <= 1.0)
    via = fit.confint("boot", nsim=400, rng=3, progress=False)
    assert via.equals(perc)


def test_bootstrap_lrt_of_a_random_slope():
    rng = np.random.default_rng(5)
    J, n = 20, 10
    g = np.repeat(np.arange(J), n)
    x = rng.standard_normal(J * n)
    y = 1 + 0.5 * x + rng.standard_normal(J)[g] + rng.standard_normal(J * n)
    d = pd.DataFrame({"y": y, "x": x, "g": g})
    f0 = mlmsim.fit("y ~ x + (1 | g)", d, method="ML")
    f1 = mlmsim.fit("y ~ x + (1 + x | g)", d, method="ML")
    r = mlmsim.lrt(f0, f1, "boot", nsim=300, rng=1, progress=False)
    assert r.method == "boot" and r.nsim == 300 and r.reference.size == 300 - r.n_failed
    expected = (1 + np.count_nonzero(r.reference >= r.statistic)) / (1 + r.reference.size)
    assert r.p_boot == pytest.approx(expected)
    assert "parametric bootstrap" in r.summary()
    again = mlmsim.lrt(f0, f1, "boot", nsim=300, rng=1, progress=False)
    assert again.p_boot == r.p_boot
    with pytest.raises(ValueError, match="method must be"):
        mlmsim.lrt(f0, f1, "bootstrap")


def _slopes(cond, rng):
    J, m = cond.n_groups, 6
    g = np.repeat(np.arange(J), m)
    x = rng.normal(size=J * m)
    U = rng.multivariate_normal(np.zeros(2), [[0.5, 0.1], [0.1, 0.2]], size=J)
    y = 1.0 + 0.5 * x + U[g, 0] + U[g, 1] * x + rng.normal(size=J * m)
    return pd.DataFrame({"y": y, "x": x, "g": g})


@pytest.mark.parametrize("intervals", ["profile", "boot"])
def test_a_study_records_profile_and_bootstrap_intervals(intervals):
    from mlmsim.methods import FormulaMethod
    from mlmsim.simstudy import Study

    formula = "y ~ 1 + x + (1 + x | g)"
    truth = {"Intercept": 1.0, "x": 0.5, "var(Intercept)": 0.5, "cov(x,Intercept)": 0.1,
             "var(x)": 0.2, "sigma2": 1.0}
    method = FormulaMethod(formula, "REML", intervals=intervals, nsim=50)
    st = Study({"n_groups": [12]}, _slopes, [method], truth=truth, n_reps=3, seed=9)
    rec = st.run(progress=False).records
    again = st.run(progress=False).records
    assert rec.error.isna().all()
    for rep in range(3):
        one = rec[rec.rep == rep].set_index("parameter")
        res = mlmsim.fit(formula, st.regenerate(0, rep), method="REML")
        if intervals == "profile":
            ci = res.confint("profile")
            for name in ("x", "var(x)", "sigma2"):
                assert one.loc[name, "ci_lower"] == pytest.approx(ci.loc[name, "lower"],
                                                                  rel=1e-6)
        finite = one.drop(index="cov(x,Intercept)")
        assert np.all(finite.ci_lower <= finite.estimate + 1e-12)
        assert np.all(finite.estimate <= finite.ci_upper + 1e-12)
        assert np.isnan(one.loc["cov(x,Intercept)", "ci_lower"])
    # reproducible: the bootstrap draws come from the replicate's method stream
    pd.testing.assert_frame_equal(rec.drop(columns="seconds"), again.drop(columns="seconds"))
    assert "intervals" in method.descriptor()
    with pytest.raises(ValueError, match="intervals must be"):
        FormulaMethod(formula, intervals="bca")


def _null_rejection_rate(J: int, seed: int, p_value, slope_variance: bool,
                         reps: int = 1000, n: int = 8) -> float:
    """The share of ``reps`` null data sets (J groups of n) with p_value(d, rng) <= 0.05:
    y = 1 + 0.5 x + U_0j + R_ij with a random intercept (``slope_variance``: the tested
    slope variance is 0) or without one (the tested intercept variance is 0)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    reject = 0
    for _ in range(reps):
        x = rng.standard_normal(J * n)
        u = rng.standard_normal(J)[g] if slope_variance else 0.0
        d = pd.DataFrame({"y": 1 + 0.5 * x + u + rng.standard_normal(J * n), "x": x, "g": g})
        reject += p_value(d, rng) <= 0.05
    return reject / reps


@pytest.mark.slow
@pytest.mark.parametrize("J", [10, 30])
def test_bootstrap_lrt_holds_its_level_under_the_null(J):
    """A random slope with variance exactly 0: the parametric-bootstrap LRT of
    (1 | g) against (1 + x | g) rejects at 0.05 within 3 MCSE of 0.05 (1,000 data sets,
    199 bootstrap refits each)."""
    def p_boot(d, rng):
        f0 = mlmsim.fit("y ~ x + (1 | g)", d, method="ML")
        f1 = mlmsim.fit("y ~ x + (1 + x | g)", d, method="ML")
        return mlmsim.lrt(f0, f1, "boot", nsim=199, rng=rng, progress=False).p_boot

    rate = _null_rejection_rate(J, 20261204 + J, p_boot, slope_variance=True)
    assert abs(rate - 0.05) <= 3 * np.sqrt(0.05 * 0.95 / 1000), rate


@pytest.mark.slow
@pytest.mark.parametrize("J", [10, 30])
def test_exact_rlrt_holds_its_level_under_the_null(J):
    """No random effect at all (the variance exactly 0): the exact RLRT of (1 | g)
    rejects at 0.05 within 3 MCSE of 0.05 (1,000 data sets of J groups of 8)."""
    def p_exact(d, rng):
        fit = mlmsim.fit("y ~ x + (1 | g)", d, method="REML")
        return mlmsim.exact_lrt(fit, nsim=4000, rng=rng).p_exact

    rate = _null_rejection_rate(J, 4 + J, p_exact, slope_variance=False)
    assert abs(rate - 0.05) <= 3 * np.sqrt(0.05 * 0.95 / 1000), rate


@pytest.mark.parametrize("fx,fy", [(1e6, 1.0), (1.0, 1e-12), (1e8, 1.0), (1e-6, 1e6)])
def test_profile_intervals_are_equivariant_under_extreme_units(fx, fy):
    """homework x fx, math x fy: every limit maps back to the unscaled one (1e-9
    relative), including units the fit rescales internally (mlmsim.engine.units)."""
    d = mlmsim.datasets.load("nels88")
    formula = "math ~ homework + (1 + homework | school)"
    base = mlmsim.fit(formula, d, method="ML").confint("profile")
    dd = d.assign(homework=d["homework"] * fx, math=d["math"] * fy)
    ci = mlmsim.fit(formula, dd, method="ML").confint("profile")
    scale = pd.Series({"Intercept": fy, "homework": fy / fx, "var(Intercept)": fy ** 2,
                       "cov(homework,Intercept)": 1.0, "var(homework)": (fy / fx) ** 2,
                       "sigma2": fy ** 2})
    back = ci[["lower", "upper"]].div(scale, axis=0)
    np.testing.assert_allclose(back.to_numpy(float), base[["lower", "upper"]].to_numpy(float),
                               rtol=1e-9)


def test_profile_of_a_singular_fit_with_three_random_effects():
    """T-hat singular with q = 3: the sd/correlation box does not keep T positive
    semi-definite; the profile still finishes, and the variance at 0 gets lower limit 0."""
    d = mlmsim.datasets.load("nels88")
    fit = mlmsim.fit("math ~ homework + ses + (1 + homework + ses | school)", d, method="ML")
    assert fit.singular
    ci = fit.confint("profile")
    assert np.all(np.isfinite(ci[["lower", "upper"]].to_numpy(float)))
    assert np.all(ci["lower"] <= ci["estimate"] + 1e-9)
    assert np.all(ci["estimate"] <= ci["upper"] + 1e-9)
    assert ci.loc["var(ses)", "lower"] == 0.0 and ci.loc["var(ses)", "at_bound"] == "lower"


def test_bootstrap_of_an_unbounded_fit_keeps_refits_with_an_undefined_correlation():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(20), 10)
    x = rng.normal(size=200)
    d = pd.DataFrame({"y": 1 + 0.5 * x + rng.normal(size=200), "x": x, "g": g})
    fit = mlmsim.fit("y ~ x + (1 + x | g)", d, bounded=False)
    boot = fit.bootstrap(400, rng=2, progress=False)
    ci = boot.confint()
    ok = 400 - boot.n_failed
    assert ci.loc["x", "n"] == ok and ci.loc["var(x)", "n"] == ok
    assert ci.loc["cov(x,Intercept)", "n"] < ok  # NaN where a variance is <= 0
    assert ci.loc["x", "lower"] == pytest.approx(boot.samples["x"].quantile(0.025))


def test_intervals_settings_are_checked_when_the_study_is_defined():
    from mlmsim.methods import FormulaMethod

    with pytest.raises(ValueError, match="bounded=True"):
        FormulaMethod("y ~ x + (1 | g)", bounded=False, intervals="profile")
    fit = mlmsim.fit("math ~ homework + (1 | school)", mlmsim.datasets.load("nels88"))
    with pytest.raises(ValueError, match="level"):
        fit.confint("wald", level=1.5)
    with pytest.raises(ValueError, match="level"):
        fit.confint("boot", level=0.0, nsim=10)
    with pytest.raises(ValueError, match="nsim"):
        mlmsim.exact_lrt(fit, nsim=2.5)


def test_profile_in_parallel_gives_the_same_limits(sleep):
    fit = mlmsim.fit("Reaction ~ Days + (Days | Subject)", sleep, method="ML")
    pd.testing.assert_frame_equal(fit.confint("profile", n_jobs=2), fit.confint("profile"))


def test_parm_of_a_study_method_is_checked():
    from mlmsim.methods import FormulaMethod

    m = FormulaMethod("y ~ x + (1 | g)", intervals="profile", parm="sigma2")
    assert m.parm == ["sigma2"]
    with pytest.raises(ValueError, match="once"):
        FormulaMethod("y ~ x + (1 | g)", intervals="profile", parm=["sigma2", "sigma2"])
    bad = FormulaMethod("y ~ x + (1 | g)", intervals="profile", parm=["var(nope)"])
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(8), 5)
    d = pd.DataFrame({"y": rng.normal(size=40) + rng.normal(size=8)[g],
                      "x": rng.normal(size=40), "g": g})
    with pytest.raises(ValueError, match="var\\(nope\\)"):
        bad(d)
    out = m(d)
    assert np.isfinite(out.ci_lower["sigma2"]) and np.isnan(out.ci_lower["x"])
