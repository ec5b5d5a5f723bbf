"""Power and sample size (mlmsim.power): each replicate's test equals the single-fit
test on the same data, reproducibility, the pilot-fit source, the search and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import mlmsim
from mlmsim.cli import main
from mlmsim.engine.chunked import seeds
from mlmsim.planning import _hypothesis, _source, _test_chunk, power, power_curve, sample_size

SPEC = mlmsim.ModelSpec.example()  # y ~ 1 + x + z + x:z + (1 + x | g)


def _replicates(src, seed, size):
    """The data sets a chunk with ``seed`` simulates, as DataFrames."""
    draws = src.draw(size, np.random.default_rng(seed))
    out = []
    for r in range(size):
        X = draws.X[r] if draws.X.ndim == 3 else draws.X
        Z = draws.Z[r] if draws.Z.ndim == 3 else draws.Z
        cols = {"y": draws.y[r], "g": draws.codes}
        cols.update({n: X[:, i] for i, n in enumerate(draws.fixed_names) if ":" not in n
                     and n != "Intercept"})
        cols.update({n: Z[:, i] for i, n in enumerate(draws.random_names) if n != "Intercept"})
        out.append(pd.DataFrame(cols))
    return out


@pytest.mark.parametrize("test,ddf", [("satterthwaite", "satterthwaite"),
                                      ("kenward-roger", "kenward-roger")])
def test_t_test_p_values_equal_the_single_fit(test, ddf):
    src = _source(SPEC, 12, 5, None)
    hyp = _hypothesis("x:z", test, 0.05, 0, SPEC.fixed_names, SPEC.random_names)
    seed = seeds(3, 1)[0]
    rec = _test_chunk(src, hyp, seed, 4)
    for r, d in enumerate(_replicates(src, seed, 4)):
        one = mlmsim.fit(SPEC.formula, d, method="REML").coef_table(ddf).loc["x:z"]
        assert rec["p"][r] == pytest.approx(one["p"], rel=1e-6)
        assert rec["df"][r] == pytest.approx(one["df"], rel=1e-6)
        assert rec["reject"][r] == (one["p"] <= 0.05)


def test_lrt_p_values_equal_mlmsim_lrt():
    src = _source(SPEC, 12, 5, None)
    seed = seeds(4, 1)[0]
    reps = _replicates(src, seed, 3)
    fixed = _test_chunk(src, _hypothesis("z", "lrt", 0.05, 0, SPEC.fixed_names,
                                         SPEC.random_names), seed, 3)
    rand = _test_chunk(src, _hypothesis("var(x)", "lrt", 0.05, 0, SPEC.fixed_names,
                                        SPEC.random_names), seed, 3)
    for r, d in enumerate(reps):
        full = mlmsim.fit(SPEC.formula, d, method="ML")
        no_z = mlmsim.fit("y ~ 1 + x + x:z + (1 + x | g)", d.assign(), method="ML")
        no_slope = mlmsim.fit("y ~ 1 + x + z + x:z + (1 | g)", d, method="ML")
        assert fixed["p"][r] == pytest.approx(mlmsim.lrt(no_z, full).p_value, rel=1e-5)
        assert rand["p"][r] == pytest.approx(mlmsim.lrt(no_slope, full).p_mixture, rel=1e-5)
        assert rand["df"][r] == 2


def test_joint_tests_of_one_effect_agree_with_the_single_tests():
    """A 'set' of one effect: the Wald chi2(1) p equals the z test's; KR's F with one
    numerator df equals the KR t test's p."""
    src = _source(SPEC, 15, 5, None)
    seed = seeds(5, 1)[0]
    names = (SPEC.fixed_names, SPEC.random_names)
    z = _test_chunk(src, _hypothesis("x:z", "wald", 0.05, 0, *names), seed, 5)
    chi = _test_chunk(src, _hypothesis(["x:z", "z"], "wald", 0.05, 0, *names), seed, 5)
    assert np.all(chi["df"] == 2) and np.all(chi["p"] > 0)
    from mlmsim.planning import _fit as fit_draws
    from mlmsim.planning import _kr_f

    draws = src.draw(5, np.random.default_rng(seed))
    bf = fit_draws(draws, draws.y, draws.X, draws.Z, draws.blocks, "REML",
                   (draws.fixed_names, draws.random_names))
    j = draws.fixed_names.index("x:z")
    F, ddf, p = _kr_f(bf, [j], np.ones(5, bool))
    kr_t = _test_chunk(src, _hypothesis("x:z", "kenward-roger", 0.05, 0, *names), seed, 5)
    np.testing.assert_allclose(p, kr_t["p"], rtol=1e-6)
    np.testing.assert_allclose(ddf, kr_t["df"], rtol=1e-6)
    # the Wald chi2 of one effect is z^2
    one = _test_chunk(src, _hypothesis(["x:z", "x"], "wald", 0.05, 0, *names), seed, 5)
    assert np.all(np.isfinite(one["statistic"]))
    np.testing.assert_allclose(sps.chi2.sf(z["statistic"] ** 2, 1), z["p"], rtol=1e-9)


def test_power_is_reproducible_counts_add_up_and_wald_rejects_more():
    kw = dict(n_groups=20, group_size=5, nsim=600, progress=False)
    a = power(SPEC, "x:z", test="kenward-roger", rng=1, **kw)
    b = power(SPEC, "x:z", test="kenward-roger", rng=1, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(a.records, b.records)
    assert a.n_tested + a.n_failed == a.nsim == len(a.records)
    assert a.power == pytest.approx(a.records["reject"].sum() / a.n_tested)
    assert a.ci_lower < a.power < a.ci_upper
    lo, hi = sps.binomtest(a.n_rejected, a.n_tested).proportion_ci(method="exact")
    assert (a.ci_lower, a.ci_upper) == pytest.approx((lo, hi))
    w = power(SPEC, "x:z", test="wald", rng=1, **kw)
    assert w.power > a.power  # the same data sets: z ignores the df and the small-sample SE
    assert "kenward-roger test" in a.summary() and json.dumps(a.to_dict())


def test_null_effect_gives_the_type_one_error_rate():
    res = power(SPEC, "x:z", test="satterthwaite", n_groups=30, group_size=10, nsim=1500,
                effects={"x:z": 0.0}, rng=11, progress=False)
    mcse = np.sqrt(0.05 * 0.95 / res.n_tested)
    assert abs(res.power - 0.05) < 4 * mcse, res.power


def test_power_from_a_pilot_fit_resamples_groups_and_overrides_effects():
    nels = mlmsim.datasets.load("nels88")
    pilot = mlmsim.fit("math ~ homework + (1 | school)", nels)
    kw = dict(effects={"homework": 0.5}, nsim=300, rng=2, progress=False)
    big = power(pilot, "homework", n_groups=40, **kw)
    small = power(pilot, "homework", n_groups=6, **kw)
    assert big.power > small.power and big.n_groups == 40
    null = power(pilot, "homework", effects={"homework": 0.0}, nsim=400, rng=3,
                 progress=False)
    assert null.power < 0.12
    src = _source(pilot, 10, None, None).with_design(np.random.default_rng(5))
    draws = src.draw(2, np.random.default_rng(0))
    assert draws.n_groups == 10 and draws.codes.max() == 9
    with pytest.raises(ValueError, match="keep their sizes"):
        power(pilot, "homework", group_size=10, nsim=10)


def test_power_curve_and_sample_size():
    kw = dict(test="satterthwaite", group_size=10, nsim=300, effects={"x:z": 1.0})
    curve = power_curve(SPEC, "x:z", values=[10, 20, 40], rng=5, progress=False, **kw)
    t = curve.table
    assert list(t["n_groups"]) == [10, 20, 40] and t["power"].is_monotonic_increasing
    import matplotlib

    matplotlib.use("Agg")
    ax = curve.plot()
    assert ax.get_xlabel().startswith("number of groups")
    ss = sample_size(SPEC, "x:z", target=0.8, lower=5, upper=80, step_nsim=200,
                     max_nsim=800, rng=6, test="satterthwaite", group_size=10,
                     effects={"x:z": 1.0})
    path = ss.path.set_index("n_groups")
    assert ss.value is not None and path.loc[ss.value, "reaches_target"]
    below = path[path.index < ss.value]
    assert not below["reaches_target"].any()
    if ss.value - 1 >= 5:
        assert ss.value - 1 in path.index  # the search decided the value next to it
    assert ss.power >= 0.8 and "n_groups = " in ss.summary()


def test_bootstrap_test_runs_and_bad_requests_are_refused():
    res = power(SPEC, "var(x)", test="boot", nboot=39, n_groups=15, group_size=5, nsim=20,
                rng=1, progress=False)
    assert res.n_tested + res.n_failed == 20
    assert np.all((res.records["p"].dropna() > 0) & (res.records["p"].dropna() <= 1))
    with pytest.raises(ValueError, match="no fixed effect 'w'"):
        power(SPEC, "w", n_groups=10, group_size=5, nsim=10)
    with pytest.raises(ValueError, match="test must be one of"):
        power(SPEC, "x", test="t", n_groups=10, group_size=5, nsim=10)
    with pytest.raises(ValueError, match="a variance is tested by"):
        power(SPEC, "var(x)", test="wald", n_groups=10, group_size=5, nsim=10)
    with pytest.raises(ValueError, match="Satterthwaite's F"):
        power(SPEC, ["x", "z"], test="satterthwaite", n_groups=10, group_size=5, nsim=10)
    with pytest.raises(ValueError, match="alpha"):
        power(SPEC, "x", alpha=1.5, n_groups=10, group_size=5, nsim=10)
    with pytest.raises(ValueError, match="effects name 'q'"):
        power(SPEC, "x", effects={"q": 1.0}, n_groups=10, group_size=5, nsim=10)
    with pytest.raises(ValueError, match="nsim"):
        power(SPEC, "x", n_groups=10, group_size=5, nsim=0)


def test_cli_power_writes_table_figure_and_report(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.to_yaml())
    out = tmp_path / "out"
    code = main(["power", str(spec), "--effect", "x:z", "--test", "kenward-roger",
                 "--groups", "10:30:10", "--size", "5", "--nsim", "100", "--seed", "1",
                 "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out / "power.csv")
    assert list(table["n_groups"]) == [10, 20, 30]
    assert (out / "power.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "kenward-roger test" in report and "| 20 |" in report
    code = main(["power", str(spec), "--effect", "x:z", "--groups", "10", "--size", "4,8",
                 "--nsim", "50", "--seed", "1", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["along"] == "group_size" and len(payload["rows"]) == 2
    assert main(["power", str(spec), "--effect", "x:z", "--groups", "10:5"]) == 2
    assert main(["power", str(spec), "--effect", "nope", "--groups", "10", "--size", "5",
                 "--nsim", "10"]) == 2


TAU, SIGMA2, N = 0.1, 0.9, 20  # ICC 0.1, groups of 20


def _crt(effect=0.5):
    """A balanced cluster-randomised design: treatment w on half the groups."""
    return mlmsim.ModelSpec(predictors=[mlmsim.Level2Binary("w", balanced=True)],
                            gamma={"Intercept": 0.0, "w": effect}, random=["Intercept"],
                            T=TAU, sigma2=SIGMA2)


def test_crt_power_formula():
    from mlmsim.planning import crt_power

    # at effect 0 the power is alpha; it grows with J and the effect
    assert crt_power(0.0, TAU, SIGMA2, 20, N) == pytest.approx(0.05, abs=1e-12)
    assert crt_power(0.5, TAU, SIGMA2, 20, N) < crt_power(0.5, TAU, SIGMA2, 40, N)
    # the noncentral t's power is below the normal approximation's at few groups
    lam = 0.5 / np.sqrt((TAU + SIGMA2 / N) * (1 / 5 + 1 / 5))
    z = sps.norm.sf(1.959964 - lam) + sps.norm.cdf(-1.959964 - lam)
    assert crt_power(0.5, TAU, SIGMA2, 10, N) < z
    with pytest.raises(ValueError):
        crt_power(0.5, TAU, SIGMA2, 2, N)


def test_wald_z_rejects_too_often_at_ten_groups_where_the_t_tests_do_not():
    """The reason the t tests exist: with J = 10 the z test of a level-2 effect has type I
    error near P(|t_8| > 1.96) = 0.086; Satterthwaite and KR hold 0.05 (3 MCSE)."""
    spec = _crt(0.0)
    kw = dict(n_groups=10, group_size=N, nsim=3000, rng=10, progress=False)
    z = power(spec, "w", test="wald", **kw)
    mcse = np.sqrt(0.05 * 0.95 / 3000)
    assert z.power > 0.05 + 5 * mcse
    assert z.power == pytest.approx(2 * sps.t.sf(1.959964, 8), abs=4 * mcse)
    for test in ("satterthwaite", "kenward-roger"):
        assert abs(power(spec, "w", test=test, **kw).power - 0.05) <= 3 * mcse


@pytest.mark.slow
@pytest.mark.parametrize("J", [10, 20, 40])
@pytest.mark.parametrize("effect", [0.0, 0.3, 0.5])
@pytest.mark.parametrize("test", ["satterthwaite", "kenward-roger"])
def test_simulated_power_matches_the_exact_crt_power(J, effect, test):
    """Raudenbush (1997): balanced cluster-randomised trial, noncentral t on J - 2 df;
    simulated power within 3 MCSE (4,000 data sets), effect 0 being the type I error."""
    from mlmsim.planning import crt_power

    exact = crt_power(effect, TAU, SIGMA2, J, N)
    res = power(_crt(), "w", effects={"w": effect}, test=test, n_groups=J, group_size=N,
                nsim=4000, rng=1000 + J, progress=False)
    mcse = np.sqrt(exact * (1 - exact) / res.n_tested)
    assert abs(res.power - exact) <= 3 * mcse, (res.power, exact)


@pytest.mark.slow
def test_sample_size_finds_the_exact_crt_answer_within_one_step():
    from mlmsim.planning import crt_power

    exact = next(J for J in range(4, 200) if crt_power(0.5, TAU, SIGMA2, J, N) >= 0.8)
    ss = sample_size(_crt(), "w", target=0.8, group_size=N, lower=4, upper=80,
                     step_nsim=500, max_nsim=4000, rng=1, test="satterthwaite")
    assert abs(ss.value - exact) <= 1, (ss.value, exact)
    assert ss.ci_lower < ss.power < ss.ci_upper


def test_power_curve_refuses_bad_values_and_targets():
    kw = dict(group_size=5, nsim=10)
    with pytest.raises(ValueError, match="must increase"):
        power_curve(SPEC, "x", values=[20, 10], **kw)
    with pytest.raises(ValueError, match="whole numbers"):
        power_curve(SPEC, "x", values=[10, 20.5], **kw)
    with pytest.raises(ValueError, match="target"):
        power_curve(SPEC, "x", values=[10, 20], target=1.2, **kw)
    with pytest.raises(ValueError, match="target"):
        sample_size(SPEC, "x", target=0.0, group_size=5)
    with pytest.raises(ValueError, match="along"):
        power_curve(SPEC, "x", along="size", values=[10], **kw)


def test_a_pilot_fit_is_extended_once_per_call():
    """simr's extend: one extended design per call, shared by every simulated data set."""
    nels = mlmsim.datasets.load("nels88")
    pilot = mlmsim.fit("math ~ homework + (1 | school)", nels)
    src = _source(pilot, 40, None, None).with_design(np.random.default_rng(1))
    a = src.draw(3, np.random.default_rng(2))
    b = src.draw(3, np.random.default_rng(3))
    assert np.array_equal(a.X, b.X) and np.array_equal(a.codes, b.codes)
    assert not np.array_equal(a.y, b.y)
    res = power(pilot, "homework", n_groups=40, nsim=300, rng=4, progress=False)
    assert res.n_singular <= res.n_tested


def test_sample_size_follows_the_callers_seed_path():
    a, b = np.random.SeedSequence(123).spawn(2)
    kw = dict(target=0.5, group_size=5, lower=5, upper=40, step_nsim=50, max_nsim=50,
              test="wald", effects={"x:z": 1.0})
    pa = sample_size(SPEC, "x:z", rng=a, **kw).path
    pb = sample_size(SPEC, "x:z", rng=b, **kw).path
    assert not pa["power"].equals(pb["power"])


def test_cli_power_takes_nboot(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.to_yaml())
    assert main(["power", str(spec), "--effect", "x:z", "--test", "boot", "--nboot", "19",
                 "--groups", "10", "--size", "5", "--nsim", "5", "--seed", "1"]) == 0
