"""The registered method studies: the quick versions of bias and maas_hox run end to end.

(The hessian, centering and seed_tables studies have their own test files.)
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

from mlmsim import studies
from mlmsim.studies import RunOptions


def test_registry_lists_the_five_studies():
    assert studies.names() == ["bias", "maas_hox", "hessian", "centering", "seed_tables",
                               "small_groups"]
    for name in studies.names():
        module = studies.get(name)
        assert module.TITLE and callable(module.run) and callable(module.report)
    with pytest.raises(ValueError, match="unknown study"):
        studies.get("nope")


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """The quick versions of bias and maas_hox, run once for the tests below."""
    out = {}
    for name in ("bias", "maas_hox"):
        path = tmp_path_factory.mktemp(name)
        studies.get(name).run(path, RunOptions(quick=True, progress=False))
        out[name] = path
    return out


@pytest.mark.parametrize("name", ["bias", "maas_hox"])
def test_quick_study_writes_its_report(name, quick_runs):
    module = studies.get(name)
    path = quick_runs[name]
    text = (path / "report.md").read_text()
    assert text.startswith(f"# {module.TITLE}")
    assert "singular" in text and "failed" in text
    assert list(path.glob("*.png")) and list(path.glob("*.csv"))
    # the report is rebuilt from the saved records alone
    (path / "report.md").unlink()
    module.report(path)
    assert (path / "report.md").read_text() == text


NUMBER = r"-?[0-9.]+(?:e[-+]?[0-9]+)?"


def _top(text: str) -> str:
    """The report up to its ADEMP design section."""
    return text.split("## Design (ADEMP)")[0]


@pytest.mark.parametrize("name, conditions, full, reps, levels", [
    ("bias", 2, 36, 20, "n_groups 5, 30; group_size 5; icc 0.2"),
    ("maas_hox", 2, 27, 25, "n_groups 30; group_size 5; icc 0.1, 0.3"),
])
def test_quick_report_says_so_at_the_top_with_the_design_that_ran(name, conditions, full,
                                                                    reps, levels, quick_runs):
    text = (quick_runs[name] / "report.md").read_text()
    top = _top(text)
    assert "## Design (ADEMP)" in text and len(top) < len(text)
    # said before anything else, and the design that ran, counted from the records
    assert top.index("quick (reduced) run") < top.index("- ")
    assert f"{conditions} conditions (of the full design's {full}; {levels})" in top
    assert f"{reps} replicates per cell" in top
    assert "Fitting time:" in top


@pytest.mark.parametrize("name", ["bias", "maas_hox"])
def test_quick_report_proportions_have_intervals_and_findings_follow_the_tables(name,
                                                                                quick_runs):
    text = (quick_runs[name] / "report.md").read_text()
    # no proportion is printed with an MCSE of 0
    assert not re.search(r"(?<![0-9.])[01] \(0\)", text)
    assert "[0, " in text or ", 1]" in text or name == "bias"
    findings = text.split("## Findings")[1]
    assert "both methods overestimate" not in findings
    # every direction claimed lies beyond 2 MCSE, every "no clear" within
    claims = re.findall(rf"(overestimates it|underestimates it|shows no clear bias) "
                        rf"\(({NUMBER}) \(({NUMBER})\)", findings)
    for word, est, mcse in claims:
        est, mcse = float(est), float(mcse)
        if word == "overestimates it":
            assert est > 2 * mcse
        elif word == "underestimates it":
            assert est < -2 * mcse
        else:
            assert abs(est) <= 2 * mcse
    # a proportion's direction only where its interval excludes the nominal value
    nominal = 0.95 if name == "bias" else 0.05
    props = re.findall(rf"(above nominal|below nominal|not clearly different from nominal) "
                       rf"\(({NUMBER}) \[({NUMBER}), ({NUMBER})\]", findings)
    assert props
    for word, _, lo, hi in props:
        lo, hi = float(lo), float(hi)
        if word == "above nominal":
            assert lo > nominal
        elif word == "below nominal":
            assert hi < nominal
        else:
            assert lo <= nominal <= hi
    if name == "bias":
        assert claims


def _fit_summary(grid: dict, reps: int) -> pd.DataFrame:
    """A summarise()-shaped frame of (fit) rows only, one condition per grid cell."""
    cells = pd.MultiIndex.from_product(list(grid.values()), names=list(grid)).to_frame(
        index=False)
    rows = []
    for i, cell in cells.iterrows():
        for measure, est in (("n_fits", reps), ("mean_seconds", 0.5)):
            rows.append({"condition": i, **cell.to_dict(), "method": "REML",
                         "parameter": "(fit)", "measure": measure, "estimate": float(est),
                         "mcse": float("nan"), "n": reps})
    return pd.DataFrame(rows)


def test_run_lines_tell_a_full_run_from_a_reduced_one():
    from mlmsim.studies._report import run_lines

    full = {"n_groups": [30, 50], "icc": [0.1, 0.2]}
    lines, is_full = run_lines({"s": _fit_summary(full, 1000)}, full, 1000, "run it")
    text = "\n".join(lines)
    assert is_full and "quick" not in text
    assert ("4 conditions (all of the full design; n_groups 30, 50; icc 0.1, 0.2), 1000 "
            "replicates") in text
    assert "Fitting time: 33.3 min" in text
    # fewer replicates, or fewer conditions: reduced, and said first
    for summary in (_fit_summary(full, 200), _fit_summary({"n_groups": [30], "icc": [0.1]}, 1000)):
        lines, is_full = run_lines({"s": summary}, full, 1000, "run it")
        assert not is_full and lines[2].startswith("**This is a quick (reduced) run")


def test_finding_sentences_claim_a_direction_only_beyond_two_mcse():
    from mlmsim.studies._report import difference, direction, proportion_direction, with_interval

    words = {"above": "overestimates", "below": "underestimates", "neither": "no clear bias"}
    # the quick report's own numbers: ML -0.345 (0.16) is below 0, REML 0.467 (0.29) is not
    assert direction(-0.345, 0.16, **words).startswith("underestimates (-0.345 (0.16))")
    assert direction(0.467, 0.29, **words).startswith("no clear bias")
    assert difference("REML", 0.467, 0.29, "ML", -0.345, 0.16, "the bias").startswith(
        "the bias is higher by REML than by ML")
    assert "no clear difference" in difference("REML", 0.1, 0.29, "ML", -0.1, 0.16, "b")
    # proportions: 0 of 25 is not "0 (0)", and 1 of 1 is not clearly above 0.95
    assert with_interval(0.0, 25) == "0 [0, 0.13]"
    kw = {"reference": 0.95, "above": "above", "below": "below", "neither": "neither"}
    assert proportion_direction(1.0, 25, **kw).startswith("neither (1 [0.87, 1]")
    assert proportion_direction(0.5, 100, **kw).startswith("below")


def test_bias_singular_finding_follows_its_table():
    from mlmsim.studies.bias import _singular_findings

    cond = {"condition": 0, "n_groups": 5, "group_size": 5, "icc": 0.2}
    rows = [{**cond, "method": m, "parameter": "(fit)", "measure": "singular_rate",
             "estimate": 0.95, "mcse": 0.05, "n": 20} for m in ("ML", "REML")]
    for method, est, mcse in (("ML", -0.345, 0.16), ("REML", 0.467, 0.29)):
        rows.append({**cond, "method": method, "parameter": "var(Intercept)",
                     "measure": "relbias", "estimate": est, "mcse": mcse, "n": 20})
    text = "\n".join(_singular_findings(pd.DataFrame(rows)))
    assert "ML underestimates it (-0.345 (0.16))" in text
    assert "REML shows no clear bias (0.467 (0.29)" in text
    assert "overestimate them on average" not in text


def test_bias_untruncated_ml_matches_anova():
    from mlmsim.studies.bias import untruncated_ml

    g = [0, 0, 1, 1, 2, 2]
    y = [1.0, 3.0, 2.0, 2.0, 5.0, 7.0]
    est = untruncated_ml(pd.DataFrame({"g": g, "y": y}))
    # group means 2, 2, 6; grand mean 10/3; SSB = 2 * sum((m - 10/3)^2); MSW = 4 / 3
    ssb = 2 * ((2 - 10 / 3) ** 2 * 2 + (6 - 10 / 3) ** 2)
    assert est["sigma2"] == pytest.approx(4 / 3)
    assert est["var(Intercept)"] == pytest.approx((ssb / 3 - 4 / 3) / 2)


def test_maas_hox_truth():
    from mlmsim.studies.maas_hox import spec

    truth = spec({"icc": 0.2}).truth.params
    assert truth["var(Intercept)"] == pytest.approx(0.2 * 0.5 / 0.8)
    assert truth["var(X)"] == truth["var(Intercept)"] and truth["cov(X,Intercept)"] == 0
    assert truth["sigma2"] == 0.5 and truth["X:Z"] == 0.3


def test_hessian_and_centering_rates_print_intervals_not_a_zero_mcse():
    from mlmsim.studies.centering import _pooled_cover
    from mlmsim.studies.hessian import _cell

    assert _cell(0, 25) == "0 [0, 0.13]" and _cell(25, 25) == "1 [0.87, 1]"
    cover = pd.DataFrame({
        "method": ["RI", "RI", "RS", "RS"], "tau11": [1.0, 1.0, 1.0, 1.0],
        "J": [20, 50, 20, 50], "parameter": ["gammaW[GpMC+GpM]"] * 4,
        "estimate": [0.80, 0.84, 1.0, 0.96], "n": [100, 100, 25, 25]})
    text = _pooled_cover(cover)
    assert "RI models, tau11 = 1: below nominal (0.82 [0.76, 0.87])" in text
    assert "RS models, tau11 = 1: not clearly different from nominal (0.98 [" in text
    assert "RS models with J = 20: not clearly different from nominal (1 [0.87, 1]" in text
