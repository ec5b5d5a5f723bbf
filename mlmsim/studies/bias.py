"""Bias and coverage of ML and REML in a random intercept and slope model.

ADEMP (Morris, White and Crowther 2019):

- Aims: how biased are the ML and REML estimates of gamma, T and sigma^2 as the number
  of groups J, the group size n and the intraclass correlation vary; how well do the
  model SEs match the empirical SEs, and do 95% Wald intervals cover?
- Data-generating mechanisms: y_ij = gamma00 + gamma10 x_ij + gamma01 z_j + gamma11 x_ij z_j
  + U0j + U1j x_ij + R_ij with x ~ N(0, 1) (level 1), z ~ N(0, 1) (level 2),
  gamma = (1, 0.5, 0.3, 0.3), sigma^2 = 1, tau0^2 = ICC sigma^2 / (1 - ICC),
  tau1^2 = tau0^2 / 2, corr(U0, U1) = 0.3; J in {5, 10, 20, 30, 50, 100},
  n in {5, 20, 50}, ICC in {0.05, 0.2}; balanced groups. A second block, the
  balanced random-intercept-only model y_ij = gamma00 + U0j + R_ij on the same grid,
  compares ML's bias with the exact E[tau0^2-hat] = tau0^2 - (tau0^2 + sigma^2/n) / J
  of the untruncated ML (ANOVA) estimator.
- Estimands: every element of gamma, T and sigma^2.
- Methods: the true model by ML and by REML (mlmsim, batched); for the second block
  also the untruncated ML estimator (SSB/J - MSW)/n in closed form.
- Performance measures: relative bias, empirical vs model SE, coverage of 95% Wald
  intervals, each with its Monte Carlo SE; rates of singular, non-PD and failed fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlmsim.generate.covariance import T_from_sd_corr, tau0_sq_from_icc
from mlmsim.generate.predictors import Continuous, Level2Continuous
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FormulaMethod, FromSpec
from mlmsim.simstudy import Study, load_study, plot_measure, summarise
from mlmsim.studies import RunOptions
from mlmsim.studies._report import (
    difference,
    direction,
    markdown_table,
    proportion_direction,
    run_lines,
    with_interval,
    with_mcse,
)

TITLE = "Bias and coverage of ML vs REML for gamma, T and sigma^2 (random slope + cross-level)"

GAMMA = {"Intercept": 1.0, "x": 0.5, "z": 0.3, "x:z": 0.3}
SIGMA2 = 1.0
CORR = 0.3
FULL = {"n_groups": [5, 10, 20, 30, 50, 100], "group_size": [5, 20, 50], "icc": [0.05, 0.2]}
QUICK = {"n_groups": [5, 30], "group_size": [5], "icc": [0.2]}
FULL_REPS = 1000
"""Replicates per condition of the full study (the report compares the records with it)."""


def slope_spec(condition) -> ModelSpec:
    """The random intercept and slope model with a cross-level interaction."""
    tau0 = tau0_sq_from_icc(condition["icc"], SIGMA2)
    T = T_from_sd_corr([np.sqrt(tau0), np.sqrt(tau0 / 2)], [[1.0, CORR], [CORR, 1.0]])
    return ModelSpec(predictors=[Continuous("x"), Level2Continuous("z")], gamma=GAMMA,
                     random=["Intercept", "x"], T=T, sigma2=SIGMA2)


def intercept_spec(condition) -> ModelSpec:
    """The balanced random-intercept-only model (no covariates)."""
    tau0 = tau0_sq_from_icc(condition["icc"], SIGMA2)
    return ModelSpec(predictors=[], gamma={"Intercept": 1.0}, random=["Intercept"], T=tau0,
                     sigma2=SIGMA2)


def untruncated_ml(data: pd.DataFrame) -> dict[str, float]:
    """The ML estimator of the balanced one-way model before truncation at 0:
    tau0^2 = (SSB / J - MSW) / n, sigma^2 = MSW, with E[tau0^2] = tau0^2 - (tau0^2 +
    sigma^2 / n) / J exactly."""
    y = data["y"].to_numpy()
    g = data["g"].to_numpy()
    J = int(g.max()) + 1
    n = y.size // J
    means = np.bincount(g, weights=y, minlength=J) / n
    ssb = n * ((means - y.mean()) ** 2).sum()
    msw = ((y - means[g]) ** 2).sum() / (J * (n - 1))
    return {"var(Intercept)": (ssb / J - msw) / n, "sigma2": msw}


def _studies(options: RunOptions):
    grid = QUICK if options.quick else FULL
    reps = options.reps or (20 if options.quick else 1000)
    slope = slope_spec({"icc": 0.2})
    slope_study = Study(grid, FromSpec(slope_spec, "n_groups", "group_size"),
                        {"ML": FormulaMethod(slope.formula, "ML"),
                         "REML": FormulaMethod(slope.formula, "REML")},
                        n_reps=reps, seed=options.seed)
    ri = intercept_spec({"icc": 0.2})
    ri_study = Study(grid, FromSpec(intercept_spec, "n_groups", "group_size"),
                     {"ML": FormulaMethod(ri.formula, "ML"),
                      "REML": FormulaMethod(ri.formula, "REML"),
                      "ML untruncated": untruncated_ml},
                     n_reps=reps, seed=options.seed + 1)
    return {"slope": slope_study, "intercept": ri_study}


def run(out_dir: Path, options: RunOptions) -> None:
    """Run both blocks into ``out_dir/records/{slope,intercept}``, then :func:`report`."""
    options.run_blocks(_studies(options), out_dir, "bias")
    report(out_dir)


def _measure(summary: pd.DataFrame, measure: str) -> pd.DataFrame:
    return summary[summary.measure == measure]


def report(out_dir: Path) -> None:
    """Summaries (CSV), figures (PNG) and report.md from the saved records."""

    out_dir = Path(out_dir)
    slope = summarise(load_study(out_dir / "records" / "slope"))
    ri = summarise(load_study(out_dir / "records" / "intercept"))
    slope.to_csv(out_dir / "summary_slope.csv", index=False)
    ri.to_csv(out_dir / "summary_intercept.csv", index=False)
    varcomp = ["var(Intercept)", "cov(x,Intercept)", "var(x)", "sigma2"]
    for icc in sorted(slope.icc.unique()):
        part = slope[slope.icc == icc]
        plot_measure(part, "relbias", "n_groups", row="group_size", parameters=varcomp,
                     path=out_dir / f"relbias_icc{icc}.png")
        plot_measure(part, "cover", "n_groups", row="group_size",
                     parameters=["Intercept", "x", "z", "x:z", *varcomp],
                     path=out_dir / f"coverage_icc{icc}.png")
    (out_dir / "report.md").write_text(_report_text(slope, ri, out_dir))


def _fits_line(summary: pd.DataFrame) -> str:
    fit = summary[summary.parameter == "(fit)"].pivot_table(
        index="method", columns="measure", values="estimate", aggfunc="sum")
    parts = []
    for method, row in fit.iterrows():
        parts.append(f"{method}: {int(row.get('n_fits', 0))} fits, "
                     f"{int(row.get('n_singular', 0))} singular, "
                     f"{int(row.get('n_nonpd_hessian', 0))} with a non-PD Hessian, "
                     f"{int(row.get('n_nonconverged', 0))} not converged, "
                     f"{int(row.get('n_errors', 0))} failed")
    return "; ".join(parts)


def _cell(summary, measure, parameter, **cond):
    s = summary[(summary.measure == measure) & (summary.parameter == parameter)]
    for k, v in cond.items():
        s = s[s[k] == v]
    return s


def _report_text(slope: pd.DataFrame, ri: pd.DataFrame, out_dir: Path | None = None) -> str:
    ran, _ = run_lines({"slope": slope, "intercept": ri}, FULL, FULL_REPS,
                       "mlmsim study run bias", out_dir)
    lines = [f"# {TITLE}", "", *ran, "## Design (ADEMP)", "",
             __doc__.split("ADEMP", 1)[1].split(":", 1)[1].strip(), ""]
    lines += ["## Fits", "", "Random slope model: " + _fits_line(slope) + ".",
              "", "Random intercept model: " + _fits_line(ri) + ".",
              "", "Every replicate is kept: singular, non-PD and unconverged fits count in "
              "every measure; failed fits (none expected) would be counted, not redrawn.", ""]
    # relative bias of variance components, ML vs REML, by J (group size and ICC fixed)
    lines += ["## Relative bias of the variance components (estimate (MCSE))", ""]
    for icc in sorted(slope.icc.unique()):
        for n in sorted(slope.group_size.unique()):
            rows = []
            for J in sorted(slope.n_groups.unique()):
                row = {"J": int(J)}
                for par in ("var(Intercept)", "var(x)", "sigma2"):
                    for method in ("ML", "REML"):
                        c = _cell(slope, "relbias", par, method=method, n_groups=J,
                                  group_size=n, icc=icc)
                        row[f"{par} {method}"] = (with_mcse(c.estimate.iloc[0], c.mcse.iloc[0])
                                                  if len(c) else "—")
                rows.append(row)
            lines += [f"ICC {icc}, group size {int(n)}:", "", markdown_table(pd.DataFrame(rows)),
                      ""]
    lines += _findings(slope, ri)
    return "\n".join(lines) + "\n"


def _threshold_J(slope, par, method, n, icc, test) -> int | None:
    """The smallest J from which ``test(estimate, mcse)`` holds for every larger J."""
    Js = sorted(slope.n_groups.unique())
    ok = []
    for J in Js:
        c = _cell(slope, "relbias", par, method=method, n_groups=J, group_size=n, icc=icc)
        ok.append(bool(len(c)) and test(c.estimate.iloc[0], c.mcse.iloc[0]))
    for i in range(len(Js)):
        if all(ok[i:]):
            return int(Js[i])
    return None


def _findings(slope: pd.DataFrame, ri: pd.DataFrame) -> list[str]:
    out = ["## Findings", ""]
    small_J = int(slope.n_groups.min())
    big_J = int(slope.n_groups.max())
    n = int(slope.group_size.min())
    icc = float(slope.icc.max())
    for icc_ in sorted(slope.icc.unique()):
        for n_ in sorted(slope.group_size.unique()):
            for par in ("var(Intercept)", "var(x)"):
                ml_ok = _threshold_J(slope, par, "ML", n_, icc_,
                                     lambda e, m: abs(e) < 0.1 or abs(e) < 2 * m)
                reml_ok = _threshold_J(slope, par, "REML", n_, icc_,
                                       lambda e, m: abs(e) < 0.1 or abs(e) < 2 * m)
                out.append(f"- ICC {icc_}, n = {int(n_)}, {par}: the relative bias stays within "
                           f"10% (or 2 MCSE) of 0 from J = {ml_ok or 'none'} by ML and from "
                           f"J = {reml_ok or 'none'} by REML.")
    out += _singular_findings(slope)
    for par in ("var(Intercept)", "var(x)"):
        for J in (small_J, big_J):
            ml = _cell(slope, "relbias", par, method="ML", n_groups=J, group_size=n, icc=icc)
            reml = _cell(slope, "relbias", par, method="REML", n_groups=J, group_size=n, icc=icc)
            if len(ml) and len(reml):
                out.append(f"- {par}, J = {J}, n = {n}, ICC = {icc}: relative bias ML "
                           f"{with_mcse(ml.estimate.iloc[0], ml.mcse.iloc[0])}, REML "
                           f"{with_mcse(reml.estimate.iloc[0], reml.mcse.iloc[0])}.")
    # coverage of the fixed effects with few groups (a proportion: its Wilson interval)
    for par in ("Intercept", "x", "x:z"):
        c = _cell(slope, "cover", par, method="REML", n_groups=small_J, group_size=n, icc=icc)
        if len(c):
            r = c.iloc[0]
            out.append(f"- Wald coverage of {par} (nominal 0.95) with J = {small_J}, REML: "
                       + proportion_direction(r.estimate, r.n, reference=0.95,
                                              above="above nominal", below="below nominal",
                                              neither="not clearly different from nominal")
                       + ".")
    # the random-intercept-only block against the exact ML bias
    out += ["", "### Random-intercept-only model: ML bias against the exact formula", "",
            "E[tau0^2-hat] = tau0^2 - (tau0^2 + sigma^2/n)/J for the untruncated ML (ANOVA) "
            "estimator; the fitted ML estimate is truncated at 0, which moves its mean up "
            "where zero estimates are common.", ""]
    rows = []
    closer = clearly_closer = 0
    bias = _measure(ri, "bias")
    untrunc = bias[(bias.parameter == "var(Intercept)") & (bias.method == "ML untruncated")]
    for _, r in untrunc.iterrows():
        tau0 = tau0_sq_from_icc(r.icc, SIGMA2)
        exact = -(tau0 + SIGMA2 / r.group_size) / r.n_groups
        ml = _cell(ri, "bias", "var(Intercept)", method="ML", n_groups=r.n_groups,
                   group_size=r.group_size, icc=r.icc)
        reml = _cell(ri, "bias", "var(Intercept)", method="REML", n_groups=r.n_groups,
                     group_size=r.group_size, icc=r.icc)
        rows.append({"J": int(r.n_groups), "n": int(r.group_size), "ICC": r.icc,
                     "exact bias": f"{exact:.4f}",
                     "untruncated ML": with_mcse(r.estimate, r.mcse),
                     "z": f"{(r.estimate - exact) / r.mcse:.2f}" if r.mcse > 0 else "—",
                     "ML (fitted)": with_mcse(ml.estimate.iloc[0], ml.mcse.iloc[0]),
                     "REML (fitted)": with_mcse(reml.estimate.iloc[0], reml.mcse.iloc[0])})
        gap = abs(ml.estimate.iloc[0]) - abs(reml.estimate.iloc[0])
        se = float(np.hypot(ml.mcse.iloc[0], reml.mcse.iloc[0]))
        closer += bool(gap > 0)
        clearly_closer += bool(gap > 2 * se)
    table = pd.DataFrame(rows)
    if len(table):
        z = pd.to_numeric(table["z"], errors="coerce").abs()
        far = int((z > 3).sum())
        if far:
            out.append(f"The untruncated ML estimator's mean bias differs from the exact "
                       f"formula by more than 3 MCSE in {far} of {len(table)} cells (largest "
                       f"|z| = |simulated - exact| / MCSE: {z.max():.2f}).")
        else:
            out.append(f"The untruncated ML estimator's mean bias matches the exact formula "
                       f"in every cell: the largest |z| = |simulated - exact| / MCSE over "
                       f"{len(table)} cells is {z.max():.2f}, and no cell exceeds 3.")
        out.append(f"REML's mean bias of tau0^2 is closer to 0 than the fitted ML's in "
                   f"{closer} of {len(table)} cells, by more than 2 MCSE (of the difference, "
                   f"at most) in {clearly_closer}.")
        out.append("")
    out += [markdown_table(table), ""]
    return out


def _singular_findings(slope: pd.DataFrame) -> list[str]:
    """The cell with the most singular fits at the smallest ICC, and what the relative
    bias of the variances does there, each direction claimed only beyond 2 MCSE."""
    sing = slope[(slope.parameter == "(fit)") & (slope.measure == "singular_rate")]
    low = sing[sing.icc == sing.icc.min()]
    if not len(low):
        return []
    worst = low.sort_values("estimate", kind="stable").iloc[-1]
    cond = {"n_groups": worst.n_groups, "group_size": worst.group_size, "icc": worst.icc}
    out = [f"- Singular fits are most frequent at ICC {worst.icc}, J = "
           f"{int(worst.n_groups)}, n = {int(worst.group_size)} ({worst.method}: "
           f"{with_interval(worst.estimate, worst.n)}, 95% Wilson interval). There, with "
           "variance estimates truncated at 0:"]
    for par in ("var(Intercept)", "var(x)"):
        ml = _cell(slope, "relbias", par, method="ML", **cond)
        reml = _cell(slope, "relbias", par, method="REML", **cond)
        if not (len(ml) and len(reml)):
            continue
        words = {"above": "overestimates it", "below": "underestimates it",
                 "neither": "shows no clear bias"}
        m, r = ml.iloc[0], reml.iloc[0]
        out.append(f"  {par}: ML {direction(m.estimate, m.mcse, **words)}, REML "
                   f"{direction(r.estimate, r.mcse, **words)}; "
                   + difference("REML", r.estimate, r.mcse, "ML", m.estimate, m.mcse,
                                "the relative bias") + ".")
    return out
