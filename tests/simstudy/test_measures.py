"""Performance measures and their Monte Carlo SEs: hand computations and simulation checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlmsim.simstudy import FIT_PARAMETER, Estimates, Study, summarise, summary_table


def fixed_records() -> pd.DataFrame:
    """Five replicates of one method: parameter b (truth 2) with explicit intervals, and
    parameter c (truth 0) with missing values and no intervals (Wald ones are used)."""
    est_b = [1.0, 2.5, 3.0, 1.5, 4.0]
    se_b = [0.5, 1.0, 0.8, 1.0, 1.2]
    est_c = [0.1, -0.2, np.nan, 0.3, 0.0]
    se_c = [0.1, 0.1, np.nan, np.nan, 0.2]
    rows = []
    for i in range(5):
        flags = dict(converged=i != 1, singular=i == 2, hessian_pd=i not in (2, 3),
                     identifiable=True, error=None, seconds=0.1 * (i + 1))
        rows.append(dict(condition=0, k=7, rep=i, method="m", parameter="b", truth=2.0,
                         estimate=est_b[i], se=se_b[i], ci_lower=est_b[i] - se_b[i],
                         ci_upper=est_b[i] + se_b[i], **flags))
        rows.append(dict(condition=0, k=7, rep=i, method="m", parameter="c", truth=0.0,
                         estimate=est_c[i], se=se_c[i], ci_lower=np.nan, ci_upper=np.nan,
                         **flags))
    rows.append(dict(condition=0, k=7, rep=5, method="m", parameter="b", truth=2.0,
                     estimate=np.nan, se=np.nan, ci_lower=np.nan, ci_upper=np.nan,
                     converged=None, singular=None, hessian_pd=None, identifiable=None,
                     error="method: ValueError: x", seconds=0.6))
    rows.append({**rows[-1], "parameter": "c", "truth": 0.0})
    rec = pd.DataFrame(rows)
    for flag in ("converged", "singular", "hessian_pd", "identifiable"):
        rec[flag] = rec[flag].astype("boolean")
    return rec


@pytest.fixture(scope="module")
def fixed_summary():
    return summarise(fixed_records()).set_index(["parameter", "measure"])


def test_columns_and_order(fixed_summary):
    out = summarise(fixed_records())
    assert list(out.columns) == ["condition", "k", "method", "parameter", "measure",
                                 "estimate", "mcse", "n"]
    assert out.parameter.unique().tolist() == ["b", "c", FIT_PARAMETER]
    assert out.measure.tolist()[:4] == ["bias", "relbias", "empse", "mse"]


def test_measures_by_hand(fixed_summary):
    s = fixed_summary.loc["b"]
    n = 5
    # thetabar = 12 / 5 = 2.4; deviations -1.4, .1, .6, -.9, 1.6; S2 = 5.7
    assert s.loc["bias", "n"] == n
    assert s.loc["bias", "estimate"] == pytest.approx(0.4)
    assert s.loc["bias", "mcse"] == pytest.approx(math.sqrt(5.7 / (5 * 4)))  # 0.53385
    assert s.loc["relbias", "estimate"] == pytest.approx(0.2)
    assert s.loc["relbias", "mcse"] == pytest.approx(math.sqrt(5.7 / (4 * 5 * 4)))
    empse = math.sqrt(5.7 / 4)
    assert s.loc["empse", "estimate"] == pytest.approx(empse)  # 1.19373
    assert s.loc["empse", "mcse"] == pytest.approx(empse / math.sqrt(2 * 4))
    # errors -1, .5, 1, -.5, 2; squares 1, .25, 1, .25, 4; MSE 1.3
    assert s.loc["mse", "estimate"] == pytest.approx(1.3)
    sq_dev = (0.3**2 + 1.05**2 + 0.3**2 + 1.05**2 + 2.7**2)  # 9.675
    mse_mcse = math.sqrt(sq_dev / (5 * 4))
    assert s.loc["mse", "mcse"] == pytest.approx(mse_mcse)  # 0.69552
    assert s.loc["rmse", "estimate"] == pytest.approx(math.sqrt(1.3))
    assert s.loc["rmse", "mcse"] == pytest.approx(mse_mcse / (2 * math.sqrt(1.3)))
    # s^2 = .25, 1, .64, 1, 1.44: mean .866, var (n-1) 0.19898
    modse = math.sqrt(0.866)
    var_s2 = (0.616**2 + 0.134**2 + 0.226**2 + 0.134**2 + 0.574**2) / 4
    assert var_s2 == pytest.approx(0.19898)
    assert s.loc["modse", "estimate"] == pytest.approx(modse)
    assert s.loc["modse", "mcse"] == pytest.approx(math.sqrt(var_s2 / (4 * 5 * 0.866)))
    ratio = modse / empse
    assert s.loc["relerror", "estimate"] == pytest.approx(100 * (ratio - 1))  # -22.04
    assert s.loc["relerror", "mcse"] == pytest.approx(
        100 * ratio * math.sqrt(var_s2 / (4 * 5 * 0.866**2) + 1 / (2 * 4)))  # 28.99
    # intervals [.5,1.5] [1.5,3.5] [2.2,3.8] [.5,2.5] [2.8,5.2]: cover 2 (2/5), 2.4 (3/5)
    assert s.loc["cover", "estimate"] == pytest.approx(0.4)
    assert s.loc["cover", "mcse"] == pytest.approx(math.sqrt(0.4 * 0.6 / 5))
    assert s.loc["becover", "estimate"] == pytest.approx(0.6)
    assert s.loc["becover", "mcse"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    # |est| / se = 2, 2.5, 3.75, 1.5, 3.33 >= 1.96: 4 of 5
    assert s.loc["rejection", "estimate"] == pytest.approx(0.8)
    assert s.loc["rejection", "mcse"] == pytest.approx(math.sqrt(0.8 * 0.2 / 5))


def test_missing_values_and_wald_intervals(fixed_summary):
    s = fixed_summary.loc["c"]
    ests = np.array([0.1, -0.2, 0.3, 0.0])
    assert s.loc["bias", "n"] == 4
    assert s.loc["bias", "estimate"] == pytest.approx(ests.mean())
    assert s.loc["bias", "mcse"] == pytest.approx(ests.std(ddof=1) / 2)
    assert np.isnan(s.loc["relbias", "estimate"])  # truth 0
    assert s.loc["modse", "n"] == 3
    assert s.loc["modse", "estimate"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.04) / 3))
    # Wald 95% intervals of the three with an SE: .1 +- .196 covers 0, -.2 +- .196 does not,
    # 0 +- .392 does
    assert s.loc["cover", "n"] == 3
    assert s.loc["cover", "estimate"] == pytest.approx(2 / 3)
    narrow = summarise(fixed_records(), level=0.5).set_index(["parameter", "measure"])
    assert narrow.loc[("c", "cover"), "estimate"] == pytest.approx(1 / 3)
    power = summarise(fixed_records(), alpha=0.5).set_index(["parameter", "measure"])
    assert power.loc[("c", "rejection"), "estimate"] == pytest.approx(2 / 3)


def test_fit_counts(fixed_summary):
    f = fixed_summary.loc[FIT_PARAMETER]
    assert f.loc["n_fits", "estimate"] == 6
    assert f.loc["n_errors", "estimate"] == 1
    assert f.loc["error_rate", "estimate"] == pytest.approx(1 / 6)
    assert f.loc["error_rate", "mcse"] == pytest.approx(math.sqrt(1 / 6 * 5 / 6 / 6))
    # flags are counted over the fits that report them (not the failed one)
    assert f.loc["nonconverged_rate", "n"] == 5
    assert f.loc["nonconverged_rate", "estimate"] == pytest.approx(0.2)
    assert f.loc["n_singular", "estimate"] == 1
    assert f.loc["nonpd_hessian_rate", "estimate"] == pytest.approx(0.4)
    assert f.loc["nonidentifiable_rate", "estimate"] == 0
    secs = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert f.loc["mean_seconds", "estimate"] == pytest.approx(secs.mean())
    assert f.loc["mean_seconds", "mcse"] == pytest.approx(secs.std(ddof=1) / math.sqrt(6))


def test_where_filter():
    rec = fixed_records()
    out = summarise(rec, where=lambda r: r.converged.fillna(False)).set_index(
        ["parameter", "measure"])
    assert out.loc[("b", "bias"), "n"] == 4
    est = np.array([1.0, 3.0, 1.5, 4.0])
    assert out.loc[("b", "bias"), "estimate"] == pytest.approx(est.mean() - 2)


def mean_known_sigma(level):
    z = {0.8: 1.2815515655446004}[level]

    def method(data):
        m = float(np.mean(data))
        se = 1.0 / math.sqrt(len(data))
        return Estimates({"mu": m}, se={"mu": se}, ci_lower={"mu": m - z * se},
                         ci_upper={"mu": m + z * se})

    return method


def draw(cond, rng):
    return rng.normal(0.5, 1.0, size=10)


def test_streamed_summary_equals_in_memory(tmp_path, monkeypatch):
    from mlmsim.simstudy import measures

    monkeypatch.setattr(measures, "_BATCH_ROWS", 20)  # pool many small batches
    study = Study({"study": range(3)}, draw, {"mean": mean_known_sigma(0.8)},
                  truth={"mu": 0.5}, n_reps=50, seed=5)
    res = study.run(tmp_path, chunk_size=7, progress=False)
    streamed = summarise(res)
    from_dir = summarise(tmp_path)
    in_memory = summarise(res.records)
    for other in (from_dir, in_memory):
        pd.testing.assert_frame_equal(streamed.drop(columns=["estimate", "mcse"]),
                                      other.drop(columns=["estimate", "mcse"]))
        np.testing.assert_allclose(streamed.estimate, other.estimate, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(streamed.mcse, other.mcse, rtol=1e-10, atol=1e-15)
    table = summary_table(streamed)
    assert "bias" in table.columns and "cover" in table.columns
    assert table.index.names == ["study", "method", "parameter"]


def spread_vs_mcse(summary: pd.DataFrame, measure: str) -> float:
    rows = summary[(summary.measure == measure) & (summary.parameter != FIT_PARAMETER)]
    return rows.estimate.std(ddof=1) / rows.mcse.mean()


def test_mcse_of_bias_and_coverage_by_simulation():
    """Over 1000 small studies (50 replicates each), the spread of bias and of coverage
    matches their mean MCSE within 15%."""
    study = Study({"study": range(1000)}, draw, {"mean": mean_known_sigma(0.8)},
                  truth={"mu": 0.5}, n_reps=50, seed=99)
    summary = study.run(progress=False).summarise()
    for measure in ("bias", "cover"):
        ratio = spread_vs_mcse(summary, measure)
        assert abs(ratio - 1) < 0.15, (measure, ratio)


def t_method(data):
    m = float(np.mean(data))
    se = float(np.std(data, ddof=1) / math.sqrt(len(data)))
    return {"mu": {"estimate": m, "se": se}}


@pytest.mark.slow
def test_mcse_of_all_measures_by_simulation():
    """Every measure: spread over 2000 studies of 100 replicates vs its mean MCSE."""
    study = Study({"study": range(2000)}, lambda c, rng: rng.normal(0.3, 1.0, size=40),
                  {"t": t_method}, truth={"mu": 0.3}, n_reps=100, seed=7)
    summary = study.run(progress=False).summarise()
    for measure in ("bias", "relbias", "empse", "mse", "rmse", "modse", "relerror", "cover",
                    "becover", "rejection"):
        ratio = spread_vs_mcse(summary, measure)
        assert abs(ratio - 1) < 0.15, (measure, ratio)


def test_fits_without_parameter_rows_are_counted():
    """A failed fit with no declared estimands, or a fit returning nothing, is one record
    with no parameter; the fit counts still see it."""
    def fails(data):
        raise ValueError("no")

    study = Study(None, lambda c, r: None, {"empty": lambda d: {}, "fails": fails,
                                            "ok": lambda d: {"b": 1.0}}, n_reps=3, seed=1)
    rec = study.run(progress=False).records
    assert rec.groupby("method").size().tolist() == [3, 3, 3]
    assert rec[rec.method != "ok"].parameter.isna().all()
    s = summarise(rec).set_index(["method", "parameter", "measure"])
    for method, errors in (("empty", 0), ("fails", 3), ("ok", 0)):
        assert s.loc[(method, FIT_PARAMETER, "n_fits"), "estimate"] == 3
        assert s.loc[(method, FIT_PARAMETER, "n_errors"), "estimate"] == errors
    assert s.loc[("ok", "b", "empse"), "n"] == 3
