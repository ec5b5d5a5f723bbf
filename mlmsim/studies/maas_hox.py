"""Maas and Hox (2005), "Sufficient sample sizes for multilevel modeling", replicated.

ADEMP:

- Aims: with how few groups, and how small, do REML estimates and 95% Wald intervals
  of a two-level model with a cross-level interaction behave?
- Data-generating mechanisms: y_ij = gamma00 + gamma10 X_ij + gamma01 Z_j + gamma11 X_ij
  Z_j + u0j + u1j X_ij + e_ij, gamma00 = 1, gamma10 = gamma01 = gamma11 = 0.3,
  sigma^2 = 0.5, tau00 = tau11 = ICC * 0.5 / (1 - ICC), tau01 = 0; X (level 1) and Z
  (level 2) standard normal; number of groups 30, 50, 100; group size 5, 30, 50;
  ICC 0.1, 0.2, 0.3 (27 conditions, full factorial), balanced.
- Estimands: the four fixed effects, tau00, tau01, tau11 and sigma^2.
- Methods: REML (mlmsim, batched), as Maas and Hox.
- Performance measures: non-coverage of 95% Wald intervals (Maas and Hox's measure),
  relative bias, each with its Monte Carlo SE, per cell and as marginal tables over
  each design factor; rates of singular and non-converged fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlmsim.spec import Continuous, Level2Continuous, ModelSpec
from mlmsim.studies import RunOptions
from mlmsim.studies._report import (
    markdown_table,
    proportion_direction,
    run_lines,
    with_interval,
    with_mcse,
)

TITLE = "Maas and Hox (2005): sufficient sample sizes, REML non-coverage and bias"

FULL = {"n_groups": [30, 50, 100], "group_size": [5, 30, 50], "icc": [0.1, 0.2, 0.3]}
QUICK = {"n_groups": [30], "group_size": [5], "icc": [0.1, 0.3]}
FULL_REPS = 1000
"""Replicates per condition of the full study (the report compares the records with it)."""
PARAMETERS = ["Intercept", "X", "Z", "X:Z", "var(Intercept)", "cov(X,Intercept)", "var(X)",
              "sigma2"]


def spec(condition) -> ModelSpec:
    """Maas and Hox's model for one ICC."""
    tau = condition["icc"] * 0.5 / (1.0 - condition["icc"])
    return ModelSpec(predictors=[Continuous("X"), Level2Continuous("Z")],
                     gamma={"Intercept": 1.0, "X": 0.3, "Z": 0.3, "X:Z": 0.3},
                     random=["Intercept", "X"], T=np.diag([tau, tau]), sigma2=0.5)


def study(options: RunOptions):
    from mlmsim.study import FormulaMethod, FromSpec, Study

    grid = QUICK if options.quick else FULL
    reps = options.reps or (25 if options.quick else 1000)
    formula = spec({"icc": 0.2}).formula
    return Study(grid, FromSpec(spec, "n_groups", "group_size"),
                 {"REML": FormulaMethod(formula, "REML", batch_size=250)},
                 n_reps=reps, seed=options.seed)


def run(out_dir: Path, options: RunOptions) -> None:
    """Run the design into ``out_dir/records``, then :func:`report`."""
    out_dir = Path(out_dir)
    study(options).run(out_dir / "records", n_jobs=options.n_jobs, backend=options.backend,
                       scheduler=options.scheduler, progress=options.progress,
                       label="maas_hox")
    report(out_dir)


def report(out_dir: Path) -> None:
    """Per-cell and marginal non-coverage and relative bias, figures and report.md."""
    from mlmsim.study import load_study, plot_measure, summarise

    out_dir = Path(out_dir)
    result = load_study(out_dir / "records")
    summary = summarise(result)
    summary.to_csv(out_dir / "summary.csv", index=False)
    counts = _noncoverage_counts(result)
    cells = _noncoverage(counts, ["n_groups", "group_size", "icc"])
    cells.to_csv(out_dir / "noncoverage_cells.csv", index=False)
    margins = {f: _noncoverage(counts, [f]) for f in ("n_groups", "group_size", "icc")}
    for f, t in margins.items():
        t.to_csv(out_dir / f"noncoverage_by_{f}.csv", index=False)
    cover = summary[summary.measure == "cover"].assign(
        measure="noncover", estimate=lambda d: 1.0 - d.estimate)
    plot_measure(pd.concat([summary, cover]), "noncover", "n_groups", row="group_size",
                 hue="icc", parameters=PARAMETERS, ref=0.05,
                 path=out_dir / "noncoverage.png")
    plot_measure(summary, "relbias", "n_groups", row="group_size", hue="icc",
                 parameters=PARAMETERS, path=out_dir / "relbias.png")
    (out_dir / "report.md").write_text(_report_text(summary, cells, margins, out_dir))


def _noncoverage_counts(result) -> pd.DataFrame:
    """Per condition and parameter: the replicates with a Wald interval (``n``) and those
    whose interval misses the truth (``miss``), read one chunk of records at a time (the
    memory of a report does not grow with the number of replicates)."""
    parts = []
    for chunk in result.iter_records(columns=["condition", "parameter", "truth", "ci_lower",
                                              "ci_upper"]):
        chunk = chunk[chunk.parameter.isin(PARAMETERS) & chunk.ci_lower.notna()]
        inside = (chunk.ci_lower <= chunk.truth) & (chunk.truth <= chunk.ci_upper)
        parts.append(chunk.assign(miss=(~inside).astype(float), n=1.0)
                     .groupby(["condition", "parameter"], sort=False)[["miss", "n"]].sum())
    if not parts:
        return pd.DataFrame(columns=["condition", "parameter", "miss", "n",
                                     *result.conditions.columns])
    counts = pd.concat(parts).groupby(level=[0, 1]).sum().reset_index()
    return counts.merge(result.conditions, left_on="condition", right_index=True)


def _noncoverage(counts: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Non-coverage rate, its MCSE sqrt(p (1 - p) / n) and n, per parameter and ``by``
    (the report prints the rate with its Wilson interval, as the MCSE is 0 at 0 and 1)."""
    out = counts.groupby([*by, "parameter"], sort=True)[["miss", "n"]].sum().reset_index()
    out["noncover"] = out.miss / out.n
    out["n"] = out.n.astype(int)
    out["mcse"] = np.sqrt(out.noncover * (1 - out.noncover) / out.n)
    return out[[*by, "parameter", "noncover", "n", "mcse"]]


def _wide(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    table = table.assign(cell=[with_interval(p, n) for p, n in zip(table.noncover, table.n,
                                                                  strict=True)])
    wide = table.pivot_table(index=by, columns="parameter", values="cell", aggfunc="first")
    return wide[[p for p in PARAMETERS if p in wide.columns]].reset_index()


def _report_text(summary, cells, margins, out_dir=None) -> str:
    fit = summary[summary.parameter == "(fit)"]
    tot = fit.groupby("measure").estimate.sum()
    ran, _ = run_lines({"maas_hox": summary}, FULL, FULL_REPS, "mlmsim study run maas_hox",
                       out_dir)
    lines = [f"# {TITLE}", "", *ran, "## Design (ADEMP)", "",
             __doc__.split("ADEMP:", 1)[1].strip(), "",
             "## Fits", "",
             f"{int(tot.get('n_fits', 0))} REML fits: {int(tot.get('n_singular', 0))} singular "
             f"(T-hat rank-deficient), {int(tot.get('n_nonpd_hessian', 0))} with a non-PD "
             f"Hessian, {int(tot.get('n_nonconverged', 0))} not converged, "
             f"{int(tot.get('n_errors', 0))} failed. All are kept in every measure (none is "
             "redrawn); a singular fit's Wald interval of a variance uses its SE where the "
             "Hessian is positive definite and is missing (not counted) otherwise.", ""]
    by_cell = fit[fit.measure == "singular_rate"][["n_groups", "group_size", "icc", "estimate",
                                                   "mcse", "n"]]
    if len(by_cell):
        worst = by_cell.sort_values("estimate", kind="stable").iloc[-1]
        lines.append(f"Singular fits are most frequent with J = {int(worst.n_groups)}, "
                     f"n = {int(worst.group_size)}, ICC = {worst.icc}: rate "
                     f"{with_interval(worst.estimate, worst.n)} (95% Wilson interval).")
        lines.append("")
    lines += ["## Non-coverage of 95% Wald intervals (nominal 0.05), estimate [95% Wilson "
              "interval]", ""]
    for f, t in margins.items():
        lines += [f"### By {f}", "", markdown_table(_wide(t, [f])), ""]
    lines += ["### Every cell", "", markdown_table(_wide(cells, ["n_groups", "group_size",
                                                                "icc"])), ""]
    lines += ["## Relative bias, estimate (MCSE), by number of groups", ""]
    rb = summary[(summary.measure == "relbias") & summary.parameter.isin(PARAMETERS)]
    rows = []
    for J, part in rb.groupby("n_groups"):
        row = {"J": int(J)}
        for p in PARAMETERS:
            q = part[part.parameter == p]
            if len(q):
                w = 1.0 / np.maximum(q.mcse.to_numpy() ** 2, 1e-300)
                est = float((q.estimate * w).sum() / w.sum())
                row[p] = with_mcse(est, float(np.sqrt(1.0 / w.sum())))
        rows.append(row)
    lines += [markdown_table(pd.DataFrame(rows)),
              "", "(Cells pooled by inverse-variance weights of their MCSEs.)", ""]
    lines += _findings(margins)
    return "\n".join(lines) + "\n"


def _findings(margins) -> list[str]:
    out = ["## Findings", ""]
    by_j = margins["n_groups"]
    words = {"reference": 0.05, "above": "above nominal", "below": "below nominal",
             "neither": "not clearly different from nominal"}
    for p in ("Intercept", "X:Z", "var(Intercept)", "var(X)"):
        part = by_j[by_j.parameter == p]
        if len(part):
            txt = "; ".join(f"J = {int(r.n_groups)}: "
                            f"{proportion_direction(r.noncover, r.n, **words)}"
                            for r in part.itertuples())
            out.append(f"- Non-coverage of {p} (nominal 0.05): {txt}.")
    out.append("- Maas and Hox (2005) report non-coverage near 0.05 for the fixed effects "
               "and too much non-coverage for the level-2 variance components with 30 groups "
               "(about 0.09); compare the rows above.")
    return out
