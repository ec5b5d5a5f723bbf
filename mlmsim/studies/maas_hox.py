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
- Methods (mlmsim, batched): ``REML``, bounded (variances >= 0: lme4, SAS's default);
  ``REML-nobound``, unbounded (the RIGLS fixed point, SAS NOBOUND; variances may be
  negative), as MLwiN, which Maas and Hox used; ``REML-nobound-expected``, the same
  estimates with SEs from the expected information (MLwiN's Fisher scoring, SAS
  SCORING=). The three see the same data sets.
- Performance measures: non-coverage of 95% Wald intervals (Maas and Hox's measure),
  relative bias, each with its Monte Carlo SE, per cell and method and as marginal
  tables over each design factor; rates of singular, negative-variance and non-converged
  fits; the level-2 variances' non-coverage against Maas and Hox's published marginals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlmsim.generate.predictors import Continuous, Level2Continuous
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FormulaMethod, FromSpec
from mlmsim.simstudy import Study, load_study, plot_measure, summarise
from mlmsim.studies import RunOptions
from mlmsim.studies._report import (
    fmt,
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
METHODS = ("REML", "REML-nobound", "REML-nobound-expected")
PUBLISHED = {30: (0.089, 0.088), 50: (0.074, 0.072), 100: (0.060, 0.057)}
"""Maas and Hox's (2005) marginal non-coverage of tau00 and tau11 by number of groups
(9,000 replicates each: 9 cells of 1,000)."""
PUBLISHED_REPS = 9000
LEVEL2 = ("var(Intercept)", "var(X)")
PARAMETERS = ["Intercept", "X", "Z", "X:Z", "var(Intercept)", "cov(X,Intercept)", "var(X)",
              "sigma2"]


def spec(condition) -> ModelSpec:
    """Maas and Hox's model for one ICC."""
    tau = condition["icc"] * 0.5 / (1.0 - condition["icc"])
    return ModelSpec(predictors=[Continuous("X"), Level2Continuous("Z")],
                     gamma={"Intercept": 1.0, "X": 0.3, "Z": 0.3, "X:Z": 0.3},
                     random=["Intercept", "X"], T=np.diag([tau, tau]), sigma2=0.5)


def study(options: RunOptions):
    grid = QUICK if options.quick else FULL
    reps = options.reps or (25 if options.quick else 1000)
    formula = spec({"icc": 0.2}).formula
    methods = {"REML": FormulaMethod(formula, "REML"),
               "REML-nobound": FormulaMethod(formula, "REML", bounded=False),
               "REML-nobound-expected": FormulaMethod(formula, "REML", bounded=False,
                                                      information="expected")}
    return Study(grid, FromSpec(spec, "n_groups", "group_size"), methods, n_reps=reps,
                 seed=options.seed)


def run(out_dir: Path, options: RunOptions) -> None:
    """Run the design into ``out_dir/records``, then :func:`report`."""
    out_dir = Path(out_dir)
    options.run(study(options), out_dir / "records", "maas_hox")
    report(out_dir)


def report(out_dir: Path) -> None:
    """Per-cell and marginal non-coverage and relative bias per method, the comparison
    with the published marginals, figures and report.md."""

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
    published = _published_comparison(margins["n_groups"])
    published.to_csv(out_dir / "published_comparison.csv", index=False)
    boundary = _boundary(result)
    plot_measure(_as_summary(margins["n_groups"], published), "noncover", "n_groups",
                 hue="method", parameters=PARAMETERS, ref=0.05,
                 path=out_dir / "noncoverage.png")
    rb = _pooled_relbias(summary)
    plot_measure(rb, "relbias", "n_groups", hue="method", parameters=PARAMETERS,
                 path=out_dir / "relbias.png")
    (out_dir / "report.md").write_text(_report_text(summary, cells, margins, published,
                                                    boundary, rb, out_dir))


def _as_summary(by_j: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """The marginal non-coverage by J in summarise()'s long form, with Maas and Hox's
    published level-2 marginals as one more "method" to plot beside ours."""
    ours = by_j.assign(measure="noncover", estimate=by_j.noncover, condition=0)
    pub = published.drop_duplicates(["n_groups", "parameter"])
    theirs = pd.DataFrame({"method": "Maas & Hox (published)", "n_groups": pub.n_groups,
                           "parameter": pub.parameter, "measure": "noncover",
                           "estimate": pub.published, "n": PUBLISHED_REPS, "condition": 0,
                           "mcse": np.sqrt(pub.published * (1 - pub.published)
                                           / PUBLISHED_REPS)})
    cols = ["condition", "method", "n_groups", "parameter", "measure", "estimate", "mcse",
            "n"]
    return pd.concat([ours[cols], theirs[cols]], ignore_index=True)


def _published_comparison(by_j: pd.DataFrame) -> pd.DataFrame:
    """Ours against the published marginal non-coverage of tau00 and tau11 per J and
    method: the difference and z = difference / sqrt(MCSE_ours^2 + MCSE_published^2)
    (the published rates are themselves Monte Carlo estimates from 9,000 replicates)."""
    rows = []
    for J, name in ((J, n) for J in PUBLISHED for n in LEVEL2):
        pub = PUBLISHED[J][LEVEL2.index(name)]
        pub_se = np.sqrt(pub * (1 - pub) / PUBLISHED_REPS)
        for r in by_j[(by_j.n_groups == J) & (by_j.parameter == name)].itertuples():
            diff = r.noncover - pub
            rows.append({"n_groups": J, "parameter": name, "method": r.method,
                         "published": pub, "ours": r.noncover, "n": r.n, "mcse": r.mcse,
                         "difference": diff, "z": diff / np.hypot(r.mcse, pub_se)})
    return pd.DataFrame(rows, columns=["n_groups", "parameter", "method", "published", "ours",
                                       "n", "mcse", "difference", "z"])


def _boundary(result) -> dict:
    """The mechanism, per level-2 variance in the cell where unbounded REML gives the most
    negative estimates: the share negative, and, over those replicates, how often each
    method's interval covers the truth (the same data sets, joined by replicate)."""
    parts = []
    for chunk in result.iter_records(columns=["condition", "rep", "method", "parameter",
                                              "truth", "estimate", "ci_lower", "ci_upper",
                                              "singular"]):
        parts.append(chunk[chunk.parameter.isin(LEVEL2)])
    if not parts:
        return {}
    rec = pd.concat(parts, ignore_index=True)
    has = rec.ci_lower.notna() & rec.ci_upper.notna()  # as the tables: no interval, not counted
    rec["covers"] = ((rec.ci_lower <= rec.truth) & (rec.truth <= rec.ci_upper)).where(has)
    wide = rec.pivot_table(index=["condition", "rep", "parameter"], columns="method",
                           values=["estimate", "covers", "ci_lower", "ci_upper",
                                   "singular"],
                           aggfunc="first")
    if ("estimate", "REML-nobound") not in wide.columns or ("estimate", "REML") not in wide:
        return {}
    out = {}
    for name in LEVEL2:
        w = wide.xs(name, level="parameter")
        neg = w[("estimate", "REML-nobound")] < 0
        share = neg.groupby(level="condition").mean()
        cond = int(share.idxmax())
        inc = w.xs(cond, level="condition")
        m = inc[("estimate", "REML-nobound")] < 0
        sub = inc[m]
        out[name] = {
            "condition": result.conditions.loc[cond].to_dict(),
            "n": int(len(inc)), "negative": int(m.sum()),
            "reml_singular": int(sub[("singular", "REML")].astype(bool).sum()),
            "cover": {meth: _count(sub[("covers", meth)])
                      for meth in METHODS if ("covers", meth) in sub.columns},
            "cover_all": {meth: _count(inc[("covers", meth)])
                          for meth in METHODS if ("covers", meth) in inc.columns},
            "reml_upper": float(sub[("ci_upper", "REML")].median()),
            "nobound_upper": float(sub[("ci_upper", "REML-nobound")].median()),
            "truth": float(rec[(rec.parameter == name) & (rec.condition == cond)].truth.iloc[0]),
        }
    return out


def _count(covers: pd.Series) -> tuple[int, int]:
    """(intervals that cover, intervals) among replicates: NaN, no interval, is left out."""
    v = covers.dropna().astype(float)
    return int(v.sum()), int(v.size)


def _pooled_relbias(summary: pd.DataFrame) -> pd.DataFrame:
    """Relative bias per method, J and parameter, the cells pooled by inverse-variance
    weights of their MCSEs, in summarise()'s long form."""
    rb = summary[(summary.measure == "relbias") & summary.parameter.isin(PARAMETERS)]
    rows = []
    for (method, J, param), q in rb.groupby(["method", "n_groups", "parameter"]):
        w = 1.0 / np.maximum(q.mcse.to_numpy() ** 2, 1e-300)
        rows.append({"condition": 0, "method": method, "n_groups": J, "parameter": param,
                     "measure": "relbias", "estimate": float((q.estimate * w).sum() / w.sum()),
                     "mcse": float(np.sqrt(1.0 / w.sum())), "n": int(q.n.sum())})
    return pd.DataFrame(rows)


def _noncoverage_counts(result) -> pd.DataFrame:
    """Per condition, method and parameter: the replicates with a Wald interval (``n``),
    those whose interval misses the truth (``miss``), and, of the level-2 variances, the
    negative estimates (``negative``, of ``n_est`` estimates), read one chunk of records
    at a time (the memory of a report does not grow with the number of replicates)."""
    keys = ["condition", "method", "parameter"]
    parts = []
    for chunk in result.iter_records(columns=["condition", "method", "parameter", "truth",
                                              "estimate", "ci_lower", "ci_upper"]):
        chunk = chunk[chunk.parameter.isin(PARAMETERS)]
        has = chunk.ci_lower.notna()
        inside = (chunk.ci_lower <= chunk.truth) & (chunk.truth <= chunk.ci_upper)
        parts.append(chunk.assign(miss=(has & ~inside).astype(float), n=has.astype(float),
                                  negative=(chunk.estimate < 0).astype(float),
                                  n_est=chunk.estimate.notna().astype(float))
                     .groupby(keys, sort=False)[["miss", "n", "negative", "n_est"]].sum())
    if not parts:
        return pd.DataFrame(columns=[*keys, "miss", "n", "negative", "n_est",
                                     *result.conditions.columns])
    counts = pd.concat(parts).groupby(level=[0, 1, 2]).sum().reset_index()
    return counts.merge(result.conditions, left_on="condition", right_index=True)


def _noncoverage(counts: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Non-coverage rate, its MCSE sqrt(p (1 - p) / n) and n, per method, parameter and
    ``by`` (the report prints the rate with its Wilson interval, as the MCSE is 0 at 0 and
    1), and the share of negative estimates."""
    out = counts.groupby(["method", *by, "parameter"], sort=True)[
        ["miss", "n", "negative", "n_est"]].sum().reset_index()
    out["noncover"] = out.miss / out.n
    out["n"] = out.n.astype(int)
    out["mcse"] = np.sqrt(out.noncover * (1 - out.noncover) / out.n)
    out["negative"] = out.negative / out.n_est
    return out[["method", *by, "parameter", "noncover", "n", "mcse", "negative"]]


def _wide(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    table = table.assign(cell=[with_interval(p, n) for p, n in zip(table.noncover, table.n,
                                                                  strict=True)])
    wide = table.pivot_table(index=["method", *by], columns="parameter", values="cell",
                             aggfunc="first")
    wide = wide[[p for p in PARAMETERS if p in wide.columns]].reset_index()
    order = {m: i for i, m in enumerate(METHODS)}
    return wide.sort_values([*by, "method"], key=lambda c: c.map(order) if c.name == "method"
                            else c, kind="stable").reset_index(drop=True)


def _report_text(summary, cells, margins, published, boundary, rb, out_dir=None) -> str:
    fit = summary[summary.parameter == "(fit)"]
    ran, _ = run_lines({"maas_hox": summary}, FULL, FULL_REPS, "mlmsim study run maas_hox",
                       out_dir)
    lines = [f"# {TITLE}", "", *ran, "## Design (ADEMP)", "",
             __doc__.split("ADEMP:", 1)[1].strip(), "", "## Fits", ""]
    neg = margins["n_groups"]
    for method in METHODS:
        tot = fit[fit.method == method].groupby("measure").estimate.sum()
        if not len(tot):
            continue
        text = (f"- {method}: {int(tot.get('n_fits', 0))} fits, "
                f"{int(tot.get('n_singular', 0))} singular (T-hat rank-deficient), "
                f"{int(tot.get('n_nonpd_hessian', 0))} with a non-PD Hessian, "
                f"{int(tot.get('n_nonconverged', 0))} not converged, "
                f"{int(tot.get('n_errors', 0))} failed")
        part = neg[(neg.method == method) & neg.parameter.isin(LEVEL2)]
        if method != "REML" and len(part):
            w = part.groupby("parameter").apply(
                lambda d: float((d.negative * d.n).sum() / d.n.sum()), include_groups=False)
            text += "; negative estimates: " + ", ".join(
                f"{p} {fmt(w[p])}" for p in LEVEL2 if p in w.index)
        lines.append(text + ".")
    lines += ["", "All fits are kept in every measure (none is redrawn); a singular fit's Wald "
              "interval of a variance uses its SE where the Hessian is positive definite and "
              "is missing (not counted) otherwise.", ""]
    by_cell = fit[(fit.measure == "singular_rate") & (fit.method == "REML")][
        ["n_groups", "group_size", "icc", "estimate", "mcse", "n"]]
    if len(by_cell):
        worst = by_cell.sort_values("estimate", kind="stable").iloc[-1]
        lines.append(f"Singular REML fits are most frequent with J = {int(worst.n_groups)}, "
                     f"n = {int(worst.group_size)}, ICC = {worst.icc}: rate "
                     f"{with_interval(worst.estimate, worst.n)} (95% Wilson interval).")
        lines.append("")
    lines += _published_lines(published)
    lines += _boundary_table(cells, fit)
    lines += _mechanism_lines(boundary)
    lines += ["## Non-coverage of 95% Wald intervals (nominal 0.05), estimate [95% Wilson "
              "interval]", ""]
    for f, t in margins.items():
        lines += [f"### By {f}", "", markdown_table(_wide(t, [f])), ""]
    lines += ["### Every cell", "", markdown_table(_wide(cells, ["n_groups", "group_size",
                                                                "icc"])), ""]
    lines += ["## Relative bias, estimate (MCSE), by number of groups", ""]
    rows = []
    for (method, J), part in rb.groupby(["method", "n_groups"], sort=False):
        row = {"method": method, "J": int(J)}
        for p in PARAMETERS:
            q = part[part.parameter == p]
            if len(q):
                row[p] = with_mcse(float(q.estimate.iloc[0]), float(q.mcse.iloc[0]))
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        order = {m: i for i, m in enumerate(METHODS)}
        table = table.sort_values(["J", "method"], key=lambda c: c.map(order)
                                  if c.name == "method" else c, kind="stable")
    lines += [markdown_table(table), "",
              "(Cells pooled by inverse-variance weights of their MCSEs.)", ""]
    lines += _findings(margins, published)
    return "\n".join(lines) + "\n"


def _boundary_table(cells: pd.DataFrame, fit: pd.DataFrame) -> list[str]:
    """Per cell: the share of singular bounded REML fits and of negative unbounded
    estimates of tau00 and tau11."""
    keys = ["n_groups", "group_size", "icc"]
    sing = fit[(fit.measure == "singular_rate") & (fit.method == "REML")][[*keys, "estimate"]]
    neg = cells[(cells.method == "REML-nobound") & cells.parameter.isin(LEVEL2)]
    if sing.empty or neg.empty:
        return []
    wide = neg.pivot_table(index=keys, columns="parameter", values="negative").reset_index()
    table = sing.rename(columns={"estimate": "REML singular"}).merge(wide, on=keys)
    table = table.rename(columns={p: f"REML-nobound {p} < 0" for p in LEVEL2})
    for c in table.columns[len(keys):]:
        table[c] = [fmt(v) for v in table[c]]
    return ["## On the boundary, per cell", "",
            "The share of bounded REML fits with T-hat singular, and of unbounded REML "
            "estimates of tau00 and tau11 below 0 (also in `noncoverage_cells.csv`, column "
            "`negative`):", "", markdown_table(table.sort_values(keys)), ""]


def _published_lines(published: pd.DataFrame) -> list[str]:
    if published.empty:
        return []
    out = ["## The level-2 variances against Maas and Hox's published marginals", "",
           "Maas and Hox (2005, MLwiN, RIGLS) report the non-coverage of tau00 and tau11 "
           "pooled over group size and ICC. The published rates are Monte Carlo estimates "
           f"from {PUBLISHED_REPS:,} replicates, so z = (ours - published) / "
           "sqrt(MCSE_ours^2 + MCSE_published^2).", "",
           "| J | parameter | published | method | ours [95% Wilson] | z |",
           "|---|---|---|---|---|---|"]
    for r in published.itertuples():
        out.append(f"| {r.n_groups} | {r.parameter} | {r.published:.3f} | {r.method} | "
                   f"{with_interval(r.ours, r.n)} | {r.z:+.1f} |")
    out.append("")
    for method in METHODS:
        part = published[published.method == method]
        if part.empty:
            continue
        worst = part.loc[part.z.abs().idxmax()]
        within = int((part.z.abs() <= 2).sum())
        out.append(f"- {method}: {within} of {len(part)} published marginals within 2 "
                   f"combined MCSE; the largest gap is {worst.parameter} at J = "
                   f"{int(worst.n_groups)}: {fmt(worst.ours)} against {worst.published:.3f} "
                   f"(z = {worst.z:+.1f}).")
    out.append("")
    return out


def _mechanism_lines(boundary: dict) -> list[str]:
    if not boundary:
        return []
    out = ["## Why bounded and unbounded REML differ", ""]
    def of(k_n: tuple[int, int]) -> str:
        return f"{k_n[0]} of {k_n[1]}"

    for name, b in boundary.items():
        c = b["condition"]
        cell = (f"J = {int(c['n_groups'])}, n = {int(c['group_size'])}, "
                f"ICC = {c['icc']}")
        cov = b["cover"]
        out.append(
            f"- {name}, in the cell with the most negative unbounded estimates ({cell}; "
            f"truth {fmt(b['truth'])}): REML-nobound estimates it below 0 in "
            f"{b['negative']} of {b['n']} data sets. On those data sets bounded REML stops on "
            f"the boundary (T-hat singular in {b['reml_singular']} of them); its Wald "
            f"interval reaches up to {fmt(b['reml_upper'])} (median upper limit) and covers "
            f"the truth in {of(cov.get('REML', (0, 0)))} intervals; the unbounded interval "
            f"is centred on the negative estimate, reaches up to "
            f"{fmt(b['nobound_upper'])}, and covers in "
            f"{of(cov.get('REML-nobound', (0, 0)))}. Over the whole cell the non-coverage "
            "is " + ", ".join(f"{m} {fmt(1 - k / n) if n else '—'}"
                              for m, (k, n) in b["cover_all"].items()) + ".")
    def share(k_n: tuple[int, int]) -> float:
        return k_n[0] / k_n[1] if k_n[1] else np.nan

    shown = [b for b in boundary.values() if b["negative"] > 0]
    if shown and all(share(b["cover"].get("REML", (0, 0)))
                     > share(b["cover"].get("REML-nobound", (0, 0))) for b in shown):
        out += ["", "In these cells the data sets whose variance is estimated below 0 are "
                "where the unbounded intervals miss, and bounded REML moves them to the "
                "boundary, where its interval covers more often: the estimator, not the "
                "sample size alone, sets the level-2 non-coverage, and unbounded (MLwiN) "
                "estimates are the ones whose rates the paper reports.", ""]
    else:
        out += ["", "In this run the negative-estimate data sets do not show bounded REML "
                "covering more often than unbounded REML (too few of them, or none).", ""]
    return out


def _findings(margins, published) -> list[str]:
    out = ["## Findings", ""]
    by_j = margins["n_groups"]
    words = {"reference": 0.05, "above": "above nominal", "below": "below nominal",
             "neither": "not clearly different from nominal"}
    if not published.empty:
        for method in ("REML", "REML-nobound"):
            part = published[published.method == method]
            if len(part):
                out.append(f"- Against the published level-2 marginals, {method} is within 2 "
                           f"combined MCSE in {int((part.z.abs() <= 2).sum())} of {len(part)} "
                           f"(mean z {part.z.mean():+.1f}).")
    for method in METHODS:
        for p in ("Intercept", "X:Z", "var(Intercept)", "var(X)"):
            part = by_j[(by_j.parameter == p) & (by_j.method == method)]
            if len(part):
                txt = "; ".join(f"J = {int(r.n_groups)}: "
                                f"{proportion_direction(r.noncover, r.n, **words)}"
                                for r in part.itertuples())
                out.append(f"- {method}, non-coverage of {p} (nominal 0.05): {txt}.")
    return out
