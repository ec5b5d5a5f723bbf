"""The centering study: its quick version end to end, and the exactness of what it records.

The quick run (16 conditions x 25 replicates, both model types) must show the equivalent
pairs' deviances equal to 1e-6 relative in every replicate, the other pairs different,
and the group-mean-centred estimate of the within-group effect unbiased.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mlmsim
from mlmsim.analysis.centering import add_centered, centered_forms, equivalence
from mlmsim.cli import main
from mlmsim.studies import RunOptions
from mlmsim.studies import centering as study

N_COND = 16


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("centering")
    assert main(["study", "run", "centering", "--quick", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def wide(quick):
    rec = mlmsim.load_study(quick / "records").records
    return study.per_replicate(rec)


@pytest.fixture(scope="module")
def summary(quick):
    return pd.read_csv(quick / "summary.csv")


def test_quick_run_writes_every_output(quick):
    for name in ("report.md", "summary.csv", "deviance_differences.csv", "tmap.csv",
                 "fit_flags.csv", "within_effect.csv", "mixing.csv",
                 "deviance_differences.png", "bias_within_RI.png", "bias_within_RS.png",
                 "cover_within_RI.png", "cover_within_RS.png"):
        assert (quick / name).is_file(), name
    text = (quick / "report.md").read_text()
    assert text.startswith(f"# {study.TITLE}")
    assert "**Acceptance" in text and ": met.**" in text
    for word in ("singular", "non-PD", "not converged", "failed", "MCSE"):
        assert word in text
    # rebuilt from the saved records alone, identically
    (quick / "report.md").unlink()
    study.report(quick)
    assert (quick / "report.md").read_text() == text


def test_every_replicate_and_form_was_fitted(wide):
    assert len(wide) == N_COND * study.QUICK_REPS * 2
    assert not wide.error.any()
    flags = wide[[f"flags[{f}]" for f in study.FORMS]].to_numpy()
    assert not (flags.astype(int) & study.FLAG_BITS["failed"]).any()


def test_equivalent_pairs_have_equal_deviances_in_every_replicate(wide):
    for method, pairs in study.EQUIVALENT.items():
        w = wide[wide.method == method]
        for a, b in pairs:
            d = w[f"dev_rel[{study.pair_name(a, b)}]"].to_numpy()
            assert np.isfinite(d).all() and len(d) == N_COND * study.QUICK_REPS
            assert np.abs(d).max() < 1e-6, (method, a, b)
    # and the T map holds: T_RS = A T_GMC A' (to the optimiser's precision)
    assert wide["Tmap_rel[RS vs GMC]"].max() < 1e-5


def test_pairs_that_are_not_equivalent_differ(wide):
    # the group means of x vary (var_between > 0), so GpMC is another model than RS: their
    # deviances differ (not nested, so the difference takes either sign and can land near 0
    # by chance: 6 of 64000 replicates of the full run)
    for method in ("RI", "RS"):
        d = wide.loc[wide.method == method, "dev_rel[RS vs GpMC]"].abs()
        assert (d > 1e-6).mean() > 0.99 and d.median() > 1e-4
    # RS+GpM and GpMC+GpM differ with a random slope (unless both slope variances are
    # estimated at 0, when both reduce to the same random-intercept model)
    d = wide.loc[wide.method == "RS", "dev_rel[RS+GpM vs GpMC+GpM]"].abs()
    assert (d > 1e-6).mean() > 0.95 and d.median() > 1e-5


def test_group_mean_centred_within_effect_is_unbiased(summary):
    bias = summary[(summary.measure == "bias") & (summary.parameter == "gammaW[GpMC]")]
    assert len(bias) == 2 * N_COND
    assert (bias.estimate.abs() < 4 * bias.mcse + 0.02).all()
    for method in ("RI", "RS"):
        assert abs(bias[bias.method == method].estimate.mean()) < 0.05
    # while RS (without the group mean) is pulled towards gamma_B when gamma_B != gamma_W
    rs = summary[(summary.measure == "bias") & (summary.parameter == "gammaW[RS]")
                 & (summary.method == "RI")]
    assert rs[rs.contextual == 1.0].estimate.mean() > 0.05


def _replicate(condition: int = 15, rep: int = 3) -> pd.DataFrame:
    return study.build(RunOptions(quick=True)).regenerate(condition, rep)


@pytest.mark.parametrize("random_slope", [False, True])
def test_batched_and_single_fits_agree(random_slope):
    data, other = _replicate(15, 3), _replicate(15, 4)
    method = study.FiveForms(random_slope)
    single = method(data)
    batched = method.fit_batch([data, other])[0]
    assert single.estimate.keys() == batched.estimate.keys()
    for key, value in single.estimate.items():
        if key.startswith(("gammaW[", "contextual[", "gammaB[", "dev[")):
            assert batched.estimate[key] == pytest.approx(value, rel=1e-6), key
        elif key.startswith("flags["):
            assert batched.estimate[key] == value, key
    assert single.singular == batched.singular and single.converged == batched.converged


def test_recorded_t_map_and_mixing_weight_are_exact():
    data = _replicate(13, 0)
    d = add_centered(data, "x", "g")
    # the T map: the closed form A = [[1, -xbar], [0, 1]] is mlmsim.analysis.centering's map
    fits = centered_forms(study.FORMULA, "x", d, random_slope=True).fit("ML")
    mapped = equivalence(fits["GMC"], fits["RS"]).map.map_T(fits["GMC"].T).to_numpy()
    rec = study.FiveForms(True, batch=False)(data).estimate
    assert rec["Tmap_err[RS vs GMC]"] == pytest.approx(
        np.abs(fits["RS"].T.to_numpy() - mapped).max(), abs=1e-12)
    assert rec["dev[RS]"] == pytest.approx(fits["RS"].deviance, rel=1e-12)
    # the RI fit of RS is (1 - w) b_W + w b_B with the recorded weight w
    ri = study.FiveForms(False, batch=False)(data).estimate
    g, x, y = d["g"].to_numpy(), d["x"].to_numpy(), d["y"].to_numpy()
    xm = np.bincount(g, weights=x) / np.bincount(g)
    ym = np.bincount(g, weights=y) / np.bincount(g)
    b_w = ((x - xm[g]) * (y - ym[g])).sum() / ((x - xm[g]) ** 2).sum()
    b_b = ((xm - xm.mean()) * (ym - ym.mean())).sum() / ((xm - xm.mean()) ** 2).sum()
    w = ri["weightB[RS]"]
    assert 0 < w < 1
    assert ri["gammaW[RS]"] == pytest.approx((1 - w) * b_w + w * b_b, abs=1e-6)
    assert ri["gammaW[GpMC]"] == pytest.approx(b_w, abs=1e-10)


def test_truth_and_spec():
    t = study.truth({"contextual": 1.0, "tau11": 0.0})
    assert t["gammaW[RS]"] == t["gammaW[GpMC+GpM]"] == study.GAMMA_W
    assert t["contextual[RS+GpM]"] == 1.0 and t["gammaB[GpMC+GpM]"] == study.GAMMA_W + 1.0
    assert t["dev_rel[RS vs GMC]"] == 0.0 and "dev_rel[RS vs GpMC]" not in t
    spec = study.model_spec({"contextual": 1.0, "tau11": 1.0})
    assert spec.truth.params["x_gpm"] == study.GAMMA_W + 1.0
    assert spec.truth.params["var(x_gpmc)"] == 1.0
