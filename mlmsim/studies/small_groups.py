"""Small groups: small-sample inference for the fixed effects and the variance components.

ADEMP (Morris, White and Crowther 2019):

- Aims: with few groups (J = 5 to 50), which tests and intervals of a two-level model
  keep their nominal level? For the fixed effects: the type I error, power and coverage
  of the Wald z test and of t tests with containment, Satterthwaite and Kenward-Roger
  denominator df, above all for a level-2 treatment effect. For the variance components:
  the coverage of Wald intervals (observed and expected information), profile-likelihood
  and parametric-bootstrap intervals, and the bias of ML, REML and unbounded REML.
- Data-generating mechanisms: two models, J in {5, 10, 15, 20, 30, 50} groups of
  n in {5, 20}, ICC in {0.05, 0.2}, and gamma, the value of every slope, in {0, a
  non-null value} (96 conditions; balanced groups).
  - `ri`, a random-intercept model with a level-2 treatment: y_ij = 1 + gamma X_ij +
    gamma W_j + U0j + R_ij, X ~ N(0, 1) (level 1), W_j = 0/1 with half the groups
    treated (`Level2Binary("W", balanced=True)`: round(J / 2) groups, so 2 of 5 and
    8 of 15), tau00 = ICC, sigma^2 = 1 - ICC (total variance 1); gamma in {0, 0.5} (half
    a total SD).
  - `rs`, the Maas and Hox (2005) model: y_ij = 1 + gamma X_ij + gamma Z_j + gamma X_ij
    Z_j + U0j + U1j X_ij + R_ij, X, Z ~ N(0, 1), sigma^2 = 0.5, tau00 = tau11 = ICC 0.5 /
    (1 - ICC), tau01 = 0; gamma in {0, 0.3} (Maas and Hox's value).
- Estimands: the fixed effects (X, W; X, Z, X:Z), with theta_0 = 0 in the tests; the
  variance components tau00, tau11, tau01 and sigma^2.
- Methods: the true model fitted by REML with the Wald z test and interval, and the t
  test and interval with containment, Satterthwaite and Kenward-Roger df (`FormulaMethod`
  with `ddf`); 95% Wald intervals of the variance components from the observed
  information (2 H^-1, `FormulaMethod`) and from the expected information (SAS
  SCORING, `FormulaMethod(information="expected")`, batched); profile-likelihood
  intervals (REML, of the variances only, `FormulaMethod(intervals="profile",
  parm=...)`) and parametric-bootstrap percentile intervals (REML, 200 refits per
  replicate); the ML, REML and unbounded REML (SAS
  NOBOUND, at most 50 Newton steps) estimates for the bias. Replicates: every batched
  procedure runs on every condition with 1000 replicates per cell (blocks `ri` and
  `rs`; the MCSE of a rate near 0.05 is then 0.007). Profile and bootstrap fit one
  replicate at a time (about 25 and 15 ms per replicate for `ri`, 50 and 30 ms for `rs`,
  against well under 1 ms for a batched fit), so they run in their own blocks
  `ri_intervals` and `rs_intervals`, on the 24 gamma = 0 conditions of each model only
  (an ML or REML estimate of T and sigma^2 does not depend on gamma, so these span the
  design), with 300 (`ri`) and 200 (`rs`) replicates per cell (MCSE of a coverage near
  0.95: 0.013 and 0.015): sized by timing to keep the whole run near 10 minutes on 2
  cores.
- Performance measures, each with its Monte Carlo SE: the rejection rate of the
  two-sided 5% test of gamma = 0 (the type I error where gamma = 0, the power
  otherwise; t-based where the procedure has df), the coverage of 95% intervals, and
  the (relative) bias; the rates of singular, non-converged and failed fits, and of
  replicates without a test or an interval (a Satterthwaite df or a Wald SE needs a
  positive-definite Hessian; a profile or bootstrap interval can fail). Coverage and
  rejection count the replicates with an interval or a test; the rates of those
  without are reported beside them. The variance-component measures pool the two gamma
  conditions of each (J, n, ICC) (their estimates have the same distribution).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mlmsim.generate.predictors import Continuous, Level2Binary, Level2Continuous
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FormulaMethod, FromSpec
from mlmsim.simstudy import Study, load_study, plot_measure, summarise
from mlmsim.simstudy.intervals import is_proportion, proportion_interval
from mlmsim.studies import RunOptions
from mlmsim.studies._report import (
    direction,
    fmt,
    markdown_table,
    run_lines,
    with_mcse,
)

TITLE = ("Small groups: type I error, power and coverage of Wald z, containment, "
         "Satterthwaite and Kenward-Roger tests; Wald, profile and bootstrap intervals of "
         "the variance components; ML vs REML bias")

N_GROUPS = [5, 10, 15, 20, 30, 50]
GROUP_SIZES = [5, 20]
ICCS = [0.05, 0.2]
EFFECT = {"ri": 0.5, "rs": 0.3}
"""The non-null gamma of each model."""
NSIM = 200
"""Parametric-bootstrap refits per replicate."""
UNBOUNDED_MAX_ITER = 50
"""Newton steps of an unbounded (NOBOUND) fit: the fits that converge do so well within
them (with the engine's 300 the same fits converge, to the same estimates); the others
have no maximum with every V_j positive definite and would run to the limit."""
ALPHA = 0.05
LEVEL = 0.95

MODELS = {"ri": "random intercept, level-2 treatment W",
          "rs": "Maas and Hox: random intercept and slope, cross-level X:Z"}
INTERVAL_BLOCK = {"ri": "ri_intervals", "rs": "rs_intervals"}


def _design(J, n, icc, gammas) -> dict:
    return {"n_groups": list(J), "group_size": list(n), "icc": list(icc),
            "gamma": list(gammas)}


FULL = {"ri": _design(N_GROUPS, GROUP_SIZES, ICCS, [0.0, EFFECT["ri"]]),
        "rs": _design(N_GROUPS, GROUP_SIZES, ICCS, [0.0, EFFECT["rs"]]),
        "ri_intervals": _design(N_GROUPS, GROUP_SIZES, ICCS, [0.0]),
        "rs_intervals": _design(N_GROUPS, GROUP_SIZES, ICCS, [0.0])}
QUICK = {"ri": _design([5, 10], [5], [0.2], [0.0, EFFECT["ri"]]),
         "rs": _design([5, 10], [5], [0.2], [0.0, EFFECT["rs"]]),
         "ri_intervals": _design([5, 10], [5], [0.2], [0.0]),
         "rs_intervals": _design([5, 10], [5], [0.2], [0.0])}
FULL_REPS = {"ri": 1000, "rs": 1000, "ri_intervals": 300, "rs_intervals": 200}
"""Replicates per condition of the full study (the report compares the records with it)."""
QUICK_REPS = {"ri": 100, "rs": 100, "ri_intervals": 8, "rs_intervals": 8}

FIXED = {"ri": ["W", "X"], "rs": ["Z", "X:Z", "X"]}
"""The tested fixed effects of each model (the intercept, 1 throughout, is not tested)."""
TREATMENT = "W"
COVPARMS = {"ri": ["var(Intercept)", "sigma2"],
            "rs": ["var(Intercept)", "var(X)", "sigma2", "cov(X,Intercept)"]}
TESTS = {"REML": "Wald z", "REML containment": "containment t",
         "REML Satterthwaite": "Satterthwaite t", "REML KR": "Kenward-Roger t"}
"""Record method -> fixed-effect procedure."""
INTERVALS = {"REML": "Wald (observed)", "REML expected": "Wald (expected)",
             "REML profile": "profile", "REML bootstrap": "bootstrap"}
"""Record method -> variance-component interval."""
ESTIMATORS = {"ML": "ML", "REML": "REML", "REML unbounded": "REML unbounded"}
LIKELIHOOD = ("REML profile", "REML bootstrap")


def ri_spec(condition) -> ModelSpec:
    """The random-intercept model with a level-2 treatment W (half the groups treated)."""
    icc, g = condition["icc"], condition["gamma"]
    return ModelSpec(predictors=[Continuous("X"), Level2Binary("W", balanced=True)],
                     gamma={"Intercept": 1.0, "X": g, "W": g}, random=["Intercept"],
                     T=icc, sigma2=1.0 - icc)


def rs_spec(condition) -> ModelSpec:
    """Maas and Hox's model: random intercept and X slope, cross-level interaction."""
    tau = condition["icc"] * 0.5 / (1.0 - condition["icc"])
    g = condition["gamma"]
    return ModelSpec(predictors=[Continuous("X"), Level2Continuous("Z")],
                     gamma={"Intercept": 1.0, "X": g, "Z": g, "X:Z": g},
                     random=["Intercept", "X"], T=np.diag([tau, tau]), sigma2=0.5)


SPECS = {"ri": ri_spec, "rs": rs_spec}


def _methods(block: str, formula: str) -> dict:
    if block in INTERVAL_BLOCK.values():
        model = block.split("_")[0]
        variances = [p for p in COVPARMS[model] if not p.startswith("cov(")]
        return {"REML profile": FormulaMethod(formula, "REML", intervals="profile",
                                              parm=variances, name="REML profile"),
                "REML bootstrap": FormulaMethod(formula, "REML", intervals="boot",
                                                nsim=NSIM, name="REML bootstrap")}
    return {"REML": FormulaMethod(formula, "REML"),
            "REML containment": FormulaMethod(formula, "REML", ddf="containment"),
            "REML Satterthwaite": FormulaMethod(formula, "REML", ddf="satterthwaite"),
            "REML KR": FormulaMethod(formula, "REML", ddf="kenward-roger"),
            "REML expected": FormulaMethod(formula, "REML", information="expected"),
            "ML": FormulaMethod(formula, "ML"),
            "REML unbounded": FormulaMethod(formula, "REML", bounded=False,
                                            control={"max_iter": UNBOUNDED_MAX_ITER})}


def _studies(options: RunOptions) -> dict:
    """The four blocks: `ri`, `rs` (batched procedures, every condition) and
    `ri_intervals`, `rs_intervals` (profile and bootstrap, the gamma = 0 conditions)."""

    grids = QUICK if options.quick else FULL
    out = {}
    for k, block in enumerate(grids):
        model = block.split("_")[0]
        reps = options.reps or (QUICK_REPS if options.quick else FULL_REPS)[block]
        formula = SPECS[model]({"icc": 0.2, "gamma": 0.0}).formula
        out[block] = Study(grids[block], FromSpec(SPECS[model], "n_groups", "group_size"),
                           _methods(block, formula), n_reps=reps, seed=options.seed + k)
    return out


def run(out_dir: Path, options: RunOptions) -> None:
    """Run the four blocks into ``out_dir/records/<block>``, then :func:`report`."""
    options.run_blocks(_studies(options), out_dir, "small_groups")
    report(out_dir)


# ---------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------

def _keep_interval(records: pd.DataFrame):
    """Rows to summarise: all but a profile or bootstrap record without its interval
    (which ``summarise`` would otherwise give the Wald interval)."""
    return ~(records.method.isin(LIKELIHOOD) & ~(records.ci_lower.notna()
                                                  & records.ci_upper.notna()))


def summaries(out_dir: Path) -> dict[str, pd.DataFrame]:
    """``summarise`` of each block present under ``out_dir/records``."""

    out = {}
    for block in FULL:
        path = Path(out_dir) / "records" / block
        if not (path / "manifest.json").exists():
            continue
        result = load_study(path)
        s = summarise(result, alpha=ALPHA, level=LEVEL)
        if block in INTERVAL_BLOCK.values():  # the fits from every record
            kept = summarise(result, alpha=ALPHA, level=LEVEL, where=_keep_interval)
            s = pd.concat([kept[kept.parameter != "(fit)"], s[s.parameter == "(fit)"]],
                          ignore_index=True)
        out[block] = s
    return out


CELL = ["n_groups", "group_size", "icc"]


def _pool(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Pool summary rows (estimate, mcse, n) over the conditions that share ``by``: a
    proportion (cover, rejection, rates) as hits over replicates, with MCSE
    sqrt(p (1 - p) / N); a mean (bias, relbias) weighted by n, with MCSE
    sqrt(sum (n_i MCSE_i)^2) / N."""

    f = frame[(frame.n > 0) & np.isfinite(frame.estimate)].copy()
    f["w"] = f.n * f.estimate
    f["v"] = (f.n * f.mcse) ** 2
    g = f.groupby(by, sort=False, dropna=False)
    out = g[["w", "v", "n"]].sum().reset_index()
    out["estimate"] = out.w / out.n
    prop = out.measure.map(is_proportion) if "measure" in out else False
    with np.errstate(invalid="ignore"):
        out["mcse"] = np.where(prop, np.sqrt(out.estimate * (1 - out.estimate) / out.n),
                               np.sqrt(out.v) / out.n)
    out["n"] = out.n.astype(int)
    return out.drop(columns=["w", "v"])


def fixed_table(sums: dict) -> pd.DataFrame:
    """Rejection and coverage of the tested fixed effects: one row per model, condition,
    parameter, procedure and measure (estimate, MCSE, n = replicates with a test or an
    interval, n_fits = replicates)."""
    rows = []
    for model in ("ri", "rs"):
        s = sums.get(model)
        if s is None:
            continue
        fits = _n_fits(s)
        part = s[s.parameter.isin(FIXED[model]) & s.method.isin(list(TESTS))
                 & s.measure.isin(["rejection", "cover"])]
        part = part.merge(fits, on=[*CELL, "gamma", "method"], how="left")
        rows.append(part.assign(model=model, procedure=part.method.map(TESTS)))
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    return _ordered(out[["model", *CELL, "gamma", "parameter", "procedure", "measure",
                         "estimate", "mcse", "n", "n_fits"]], TESTS)


def _n_fits(s: pd.DataFrame) -> pd.DataFrame:
    f = s[(s.parameter == "(fit)") & (s.measure == "n_fits")]
    return f[[*CELL, "gamma", "method"]].assign(n_fits=f.estimate.astype(int))


def _ordered(frame: pd.DataFrame, labels: dict) -> pd.DataFrame:
    order = {v: i for i, v in enumerate(labels.values())}
    key = frame.procedure.map(order) if "procedure" in frame else 0
    return frame.assign(_o=key).sort_values(
        [c for c in ("model", "parameter", "measure") if c in frame] + ["_o", *CELL],
        kind="stable").drop(columns="_o").reset_index(drop=True)


def variance_table(sums: dict) -> pd.DataFrame:
    """Coverage of the variance-component intervals per model, (J, n, ICC), parameter and
    procedure, pooled over gamma; ``n`` replicates with an interval of ``n_fits``."""
    rows = []
    for model in ("ri", "rs"):
        for block in (model, INTERVAL_BLOCK[model]):
            s = sums.get(block)
            if s is None:
                continue
            fits = _n_fits(s)
            part = s[s.parameter.isin(COVPARMS[model]) & s.method.isin(list(INTERVALS))
                     & (s.measure == "cover")]
            part = part.merge(fits, on=[*CELL, "gamma", "method"], how="left")
            pooled = _pool(part, [*CELL, "method", "parameter", "measure"])
            nf = part.groupby([*CELL, "method", "parameter"], sort=False).n_fits.sum()
            pooled = pooled.merge(nf.reset_index(), on=[*CELL, "method", "parameter"])
            rows.append(pooled.assign(model=model,
                                      procedure=pooled.method.map(INTERVALS)))
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    # a covariance has no profile or bootstrap interval (those are for the correlation)
    out = out[~((out.parameter.str.startswith("cov(")) & out.method.isin(LIKELIHOOD))]
    return _ordered(out[["model", *CELL, "parameter", "procedure", "measure", "estimate",
                         "mcse", "n", "n_fits"]], INTERVALS)


def bias_table(sums: dict) -> pd.DataFrame:
    """Bias and relative bias of the variance components by ML, REML and unbounded REML,
    per model and (J, n, ICC), pooled over gamma."""
    rows = []
    for model in ("ri", "rs"):
        s = sums.get(model)
        if s is None:
            continue
        part = s[s.parameter.isin(COVPARMS[model]) & s.method.isin(list(ESTIMATORS))
                 & s.measure.isin(["bias", "relbias"])]
        pooled = _pool(part, [*CELL, "method", "parameter", "measure"])
        rows.append(pooled.assign(model=model, estimator=pooled.method.map(ESTIMATORS)))
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    return out[["model", *CELL, "parameter", "estimator", "measure", "estimate", "mcse",
                "n"]].reset_index(drop=True)


_FLAGS = {"n_fits": "fits", "n_singular": "singular", "n_nonconverged": "not converged",
          "n_nonpd_hessian": "non-PD Hessian", "n_errors": "failed"}


def fit_table(sums: dict) -> pd.DataFrame:
    """Per block, condition and method: fits, singular, non-converged, non-PD Hessian and
    failed fits (counts)."""
    rows = []
    for block, s in sums.items():
        f = s[(s.parameter == "(fit)") & s.measure.isin(list(_FLAGS))]
        wide = f.pivot_table(index=[*CELL, "gamma", "method"], columns="measure",
                             values="estimate", aggfunc="sum", sort=False).reset_index()
        rows.append(wide.assign(block=block))
    if not rows:
        return pd.DataFrame()
    out = pd.concat(rows, ignore_index=True)
    cols = [c for c in _FLAGS if c in out]
    out[cols] = out[cols].fillna(0).astype(int)
    return out[["block", *CELL, "gamma", "method", *cols]]


def _interval_failures(out_dir: Path) -> pd.DataFrame:
    """Per interval block and method: replicates whose profile or bootstrap interval of a
    variance could not be computed (read from the records, one chunk at a time)."""

    rows = []
    for model, block in INTERVAL_BLOCK.items():
        path = Path(out_dir) / "records" / block
        if not (path / "manifest.json").exists():
            continue
        variances = [p for p in COVPARMS[model] if not p.startswith("cov(")]
        missing: dict[str, set] = {}
        total: dict[str, set] = {}
        for chunk in load_study(path).iter_records(
                columns=["condition", "rep", "method", "parameter", "ci_lower", "ci_upper"]):
            chunk = chunk[chunk.parameter.isin(variances)]
            bad = chunk.ci_lower.isna() | chunk.ci_upper.isna()
            for method, part in chunk.groupby("method"):
                keys = set(zip(part.condition, part.rep, strict=True))
                total.setdefault(method, set()).update(keys)
                b = part[bad.loc[part.index]]
                missing.setdefault(method, set()).update(zip(b.condition, b.rep,
                                                             strict=True))
        for method in total:
            rows.append({"model": model, "method": method, "replicates": len(total[method]),
                         "without": len(missing.get(method, ()))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------

def _p(est: float, mcse: float, n: float) -> str:
    """A rate with its MCSE, ``0.052 (0.007)``; at 0 or 1, where the MCSE is 0, with its
    95% Wilson interval instead, ``0 [0, 0.00383]``."""
    if n is None or not n > 0 or not np.isfinite(est):
        return "—"
    if 0.0 < est < 1.0:
        return with_mcse(est, mcse)
    return _wilson(est, n)


def _wilson(est: float, n: float) -> str:
    """``p [lower, upper]``: a rate and its 95% Wilson interval, 3 significant digits,
    more for a bound that would print as the rate (8000 of 8000: ``1 [0.9995, 1]``,
    not ``1 [1, 1]``)."""

    if n is None or not n > 0 or not np.isfinite(est):
        return "—"
    lo, hi = (float(v) for v in proportion_interval(est, n))

    def bound(v: float) -> str:  # as many digits as it takes to differ from est
        for digits in range(3, 7):
            if fmt(v, digits) != fmt(est, digits) or v == est:
                break
        return fmt(v, digits)

    return f"{fmt(est)} [{bound(lo)}, {bound(hi)}]"


def _setting(frame: pd.DataFrame) -> pd.Series:
    return ("n = " + frame.group_size.astype(int).astype(str) + ", ICC = "
            + frame.icc.map(lambda v: fmt(v)))


def _cells_wide(frame: pd.DataFrame, index: list[str], column: str, order: list[str]
                ) -> pd.DataFrame:
    """One row per ``index``, one column per ``column`` level: ``_p`` cells."""
    f = frame.assign(cell=[_p(e, m, n) for e, m, n in zip(frame.estimate, frame.mcse,
                                                           frame.n, strict=True)])
    wide = f.pivot_table(index=index, columns=column, values="cell", aggfunc="first",
                         sort=True)
    wide = wide[[c for c in order if c in wide.columns]].reset_index()
    wide.columns.name = None
    return _pretty(wide)


def _pretty(frame: pd.DataFrame) -> pd.DataFrame:
    names = {"n_groups": "J", "group_size": "n", "icc": "ICC"}
    out = frame.rename(columns=names)
    for c in ("J", "n"):
        if c in out:
            out[c] = out[c].astype(int)
    if "ICC" in out:
        out["ICC"] = out["ICC"].map(fmt)
    return out


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------

def _plot_frame(frame: pd.DataFrame, measure: str, label_col: str) -> pd.DataFrame:
    """Rows shaped for ``plot_measure``: x = n_groups, hue = setting (n, ICC), the
    procedure or estimator as ``method``; other condition variables dropped."""
    f = frame.copy()
    f["setting"] = _setting(f)
    f["method"] = f[label_col]
    f["measure"] = measure
    f["condition"] = 0
    keep = ["condition", "n_groups", "setting", "method", "parameter", "measure",
            "estimate", "mcse", "n"]
    order = {p: i for i, p in enumerate(dict.fromkeys(
        ["W", *FIXED["rs"], *FIXED["ri"], *COVPARMS["rs"], *COVPARMS["ri"]]))}
    f["_p"] = f.parameter.map(order)
    return f.sort_values(["_p", "group_size", "icc"], kind="stable")[keep]


def _banded(frame: pd.DataFrame, measure: str, path: Path, *, nominal: float | None,
            ylabel: str, col: str = "method", row: str | None = "parameter",
            hue: str = "setting", sharey: bool = True) -> None:
    """``plot_measure`` with x spaced by value, one panel per ``col`` (and ``row``), 95%
    Wilson bars, and, where ``nominal`` is given, the band nominal +- 2 MCSE of a rate at
    the nominal value over the panel's replicates shaded grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = plot_measure(frame, measure, "n_groups", hue=hue, col=col, row=row,
                        ref=nominal, sharey=sharey, height=2.5, aspect=1.3, path=None)
    if nominal is not None:
        rows = grid.row_names if row else [None]
        cols = grid.col_names if col else [None]
        axes = np.asarray(grid.axes).reshape(len(rows), len(cols))
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                panel = frame
                if r is not None:
                    panel = panel[panel[row] == r]
                if c is not None:
                    panel = panel[panel[col] == c]
                if not len(panel):
                    continue
                n = float(panel.n.max())
                half = 2.0 * math.sqrt(nominal * (1.0 - nominal) / n)
                axes[i, j].axhspan(nominal - half, nominal + half, color="0.88", zorder=0,
                                   linewidth=0)
    grid.set_titles(col_template="{col_name}", row_template="{row_var}: {row_name}")
    grid.set_axis_labels("number of groups J", ylabel)
    grid.savefig(path, dpi=110)
    plt.close(grid.figure)


def figures(out_dir: Path, fixed: pd.DataFrame, var: pd.DataFrame, bias: pd.DataFrame,
            fits: pd.DataFrame) -> list[tuple[str, str]]:
    """The PNG figures; returns (file, caption) pairs."""
    out = []
    for model in ("ri", "rs"):
        f = fixed[fixed.model == model] if len(fixed) else fixed
        if len(f):
            null = f[(f.gamma == 0) & (f.measure == "rejection")]
            name = f"type1_{model}.png"
            _banded(_plot_frame(null, "rejection", "procedure"), "rejection",
                    out_dir / name, nominal=ALPHA, ylabel="type I error")
            out.append((name, f"Type I error of the fixed effects, `{model}` model "
                              f"({MODELS[model]}), gamma = 0"))
            alt = f[(f.gamma != 0) & (f.measure == "rejection")]
            name = f"power_{model}.png"
            _banded(_plot_frame(alt, "rejection", "procedure"), "rejection",
                    out_dir / name, nominal=None, ylabel="power")
            out.append((name, f"Power, `{model}` model, gamma = {EFFECT[model]}"))
            cover = f[f.measure == "cover"]
            cover = _pool(cover.drop(columns=["n_fits"]),
                          ["model", *CELL, "parameter", "procedure", "measure"])
            name = f"cover_fixed_{model}.png"
            _banded(_plot_frame(cover, "cover", "procedure"), "cover", out_dir / name,
                    nominal=LEVEL, ylabel="coverage")
            out.append((name, f"Coverage of the 95% intervals of the fixed effects, "
                              f"`{model}` model (both gamma pooled)"))
        v = var[(var.model == model) & ~var.parameter.str.startswith("cov(")] \
            if len(var) else var
        if len(v):
            name = f"cover_variances_{model}.png"
            _banded(_plot_frame(v, "cover", "procedure"), "cover", out_dir / name,
                    nominal=LEVEL, ylabel="coverage")
            out.append((name, f"Coverage of the 95% intervals of the variance components, "
                              f"`{model}` model"))
        b = bias[(bias.model == model) & (bias.measure == "relbias")
                 & ~bias.parameter.str.startswith("cov(")] if len(bias) else bias
        if len(b):
            name = f"relbias_{model}.png"
            pf = _plot_frame(b, "relbias", "estimator")
            _banded(pf, "relbias", out_dir / name, nominal=None, ylabel="relative bias",
                    col="parameter", row="setting", hue="method", sharey=False)
            out.append((name, f"Relative bias of the variances, `{model}` model"))
    if len(fits):
        s = fits[fits.block.isin(["ri", "rs"]) & (fits.method == "REML")].copy()
        if len(s):
            s = s.groupby(["block", *CELL], sort=False)[["n_singular", "n_fits"]].sum() \
                .reset_index()
            s["estimate"] = s.n_singular / s.n_fits
            s["mcse"] = np.sqrt(s.estimate * (1 - s.estimate) / s.n_fits)
            s["n"] = s.n_fits
            s["parameter"] = s.block.map({"ri": "ri: " + MODELS["ri"],
                                          "rs": "rs: Maas and Hox"})
            s["procedure"] = "REML"
            name = "singular.png"
            _banded(_plot_frame(s, "singular_rate", "procedure"), "singular_rate",
                    out_dir / name, nominal=None, ylabel="singular fits (REML)",
                    col="parameter", row=None, sharey=True)
            out.append((name, "Rate of singular REML fits (T-hat rank-deficient)"))
    return out


# ---------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------

def report(out_dir: Path) -> None:
    """Tables (CSV), figures (PNG) and report.md from the saved records."""
    out_dir = Path(out_dir)
    sums = summaries(out_dir)
    fixed, var, bias, fits = (fixed_table(sums), variance_table(sums), bias_table(sums),
                              fit_table(sums))
    failures = _interval_failures(out_dir)
    fixed.to_csv(out_dir / "fixed_effects.csv", index=False)
    var.to_csv(out_dir / "variance_coverage.csv", index=False)
    bias.to_csv(out_dir / "variance_bias.csv", index=False)
    fits.to_csv(out_dir / "fits.csv", index=False)
    treat = _treatment_type1(fixed)
    treat.to_csv(out_dir / "type1_treatment.csv", index=False)
    figs = figures(out_dir, fixed, var, bias, fits)
    text = _report_text(sums, fixed, var, bias, fits, failures, treat, figs, out_dir)
    (out_dir / "report.md").write_text(text, encoding="utf-8")


def _treatment_type1(fixed: pd.DataFrame) -> pd.DataFrame:
    """Type I error of the treatment effect W per (J, n, ICC) and procedure, with how far
    it lies from the nominal 0.05 in MCSE: z = (rate - 0.05) / MCSE."""
    if not len(fixed):
        return pd.DataFrame()
    t = fixed[(fixed.model == "ri") & (fixed.parameter == TREATMENT) & (fixed.gamma == 0)
              & (fixed.measure == "rejection")].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        t["z"] = (t.estimate - ALPHA) / t.mcse
    t.loc[(t.mcse == 0) & (t.estimate != ALPHA), "z"] = np.inf * np.sign(
        t.estimate - ALPHA)
    return t[[*CELL, "procedure", "estimate", "mcse", "n", "n_fits", "z"]] \
        .reset_index(drop=True)


def _fits_lines(fits: pd.DataFrame) -> list[str]:
    """Per block, the fit counts of each method; methods with the same counts (the REML
    fit behind several procedures) share one entry."""
    lines = []
    for block in fits.block.unique():
        f = fits[fits.block == block].groupby("method", sort=False)[
            [c for c in _FLAGS if c in fits]].sum()
        same: dict[tuple, list[str]] = {}
        for m, r in f.iterrows():
            same.setdefault(tuple(int(v) for v in r), []).append(m)
        parts = []
        for counts, methods in same.items():
            r = dict(zip(f.columns, counts, strict=True))
            parts.append(f"{', '.join(methods)}: {r['n_fits']} fits, "
                         f"{r.get('n_singular', 0)} singular, "
                         f"{r.get('n_nonpd_hessian', 0)} with a non-PD Hessian, "
                         f"{r.get('n_nonconverged', 0)} not converged, "
                         f"{r.get('n_errors', 0)} failed")
        lines.append(f"- `{block}`: " + "; ".join(parts) + ".")
    return lines + [""]


def _singular_table(fits: pd.DataFrame) -> pd.DataFrame:
    s = fits[fits.block.isin(["ri", "rs"]) & (fits.method == "REML")]
    if not len(s):
        return pd.DataFrame()
    g = s.groupby(["block", *CELL], sort=False)[["n_singular", "n_fits"]].sum().reset_index()
    g["cell"] = [_wilson(k / n, n) for k, n in zip(g.n_singular, g.n_fits,
                                                         strict=True)]
    g["setting"] = _setting(g)
    g["column"] = g.block + ": " + g.setting
    wide = g.pivot_table(index="n_groups", columns="column", values="cell",
                         aggfunc="first", sort=True)
    order = list(dict.fromkeys(g.sort_values(["block", "group_size", "icc"]).column))
    wide = wide[order].reset_index()
    wide.columns.name = None
    return _pretty(wide)


def _missing_lines(fixed: pd.DataFrame, var: pd.DataFrame, failures: pd.DataFrame
                   ) -> list[str]:
    """Replicates without a test (df or SE not computable) or without an interval."""
    lines = []
    if len(fixed):
        f = fixed[fixed.measure == "rejection"]
        g = f.groupby(["model", "procedure"], sort=False)[["n", "n_fits"]].sum()
        parts = []
        for (model, proc), r in g.iterrows():
            missing = int(r.n_fits - r.n)
            parts.append(f"{model} {proc}: {missing} of {int(r.n_fits)}")
        lines.append("- Fixed-effect tests that could not be computed (no SE or no df; "
                     "per replicate and tested effect): " + "; ".join(parts) + ".")
        worst = f.assign(miss=(f.n_fits - f.n) / f.n_fits).sort_values(
            "miss", kind="stable").iloc[-1]
        if worst.miss > 0:
            lines.append(f"  Most at J = {int(worst.n_groups)}, n = {int(worst.group_size)},"
                         f" ICC = {fmt(worst.icc)}, gamma = {fmt(worst.gamma)}, "
                         f"{worst.model} {worst.parameter} {worst.procedure}: "
                         f"{_wilson(worst.miss, worst.n_fits)} of the replicates.")
    if len(var):
        g = var.groupby(["model", "procedure"], sort=False)[["n", "n_fits"]].sum()
        parts = [f"{model} {proc}: {int(r.n_fits - r.n)} of {int(r.n_fits)}"
                 for (model, proc), r in g.iterrows()]
        lines.append("- Variance-component intervals that could not be computed (per "
                     "replicate and parameter): " + "; ".join(parts) + ".")
    if len(failures):
        parts = [f"{r.model} {INTERVALS.get(r.method, r.method)}: {r.without} of "
                 f"{r.replicates} replicates" for r in failures.itertuples()]
        lines.append("- Replicates with a profile or bootstrap interval of some variance "
                     "missing: " + "; ".join(parts) + ".")
    return lines


def _report_text(sums, fixed, var, bias, fits, failures, treat, figs, out_dir) -> str:
    blocks = {b: sums[b] for b in FULL if b in sums}
    ran, _ = run_lines(blocks, {b: FULL[b] for b in blocks},
                       {b: FULL_REPS[b] for b in blocks}, "mlmsim study run small_groups "
                       "--jobs 2", out_dir)
    design = __doc__.split("ADEMP", 1)[1].split(":", 1)[1].strip()
    lines = [f"# {TITLE}", "", *ran, "## Design (ADEMP)", "", design, ""]
    lines += ["## Fits", "", *_fits_lines(fits),
              "Every replicate is kept in every measure: singular, non-PD and unconverged "
              "fits count, failed fits would be counted, none is redrawn.", ""]
    sing = _singular_table(fits)
    if len(sing):
        lines += ["Singular REML fits (T-hat rank-deficient), rate [95% Wilson interval], "
                  "both gamma pooled:", "", markdown_table(sing), ""]
    lines += _missing_lines(fixed, var, failures) + [""]
    lines += _findings(fixed, var, bias, treat, fits)
    if figs:
        lines += ["## Figures", "",
                  "One panel per procedure; one line per setting (group size n, ICC). "
                  "Error bars are 95% Wilson intervals (inside [0, 1]) for rates and "
                  "+- 1.96 MCSE for bias; J is spaced by value. The grey band is the "
                  "nominal value +- 2 MCSE of a rate at that value over the panel's "
                  "replicates per cell: a procedure at its nominal level falls inside it "
                  "about 95% of the time.", ""]
        for name, caption in figs:
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    lines += _tables(fixed, var, bias, treat)
    lines += ["## Files", "",
              "- `type1_treatment.csv`: the type I error of W per cell and procedure, "
              "with z = (rate - 0.05) / MCSE.",
              "- `fixed_effects.csv`: rejection rate and coverage of every tested fixed "
              "effect, per model, condition and procedure (estimate, mcse, n with a test, "
              "n_fits).",
              "- `variance_coverage.csv`: coverage of the variance-component intervals, "
              "per model, (J, n, ICC), parameter and procedure (both gamma pooled).",
              "- `variance_bias.csv`: bias and relative bias by ML, REML and unbounded "
              "REML (both gamma pooled).",
              "- `fits.csv`: fit counts per block, condition and method.", ""]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# tables and findings
# ---------------------------------------------------------------------------

def _pooled_by_j(frame: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    return _pool(frame.drop(columns=[c for c in ("n_fits", "z") if c in frame]),
                 ["n_groups", *extra])


def _tables(fixed, var, bias, treat) -> list[str]:
    lines = []
    if len(treat):
        order = list(TESTS.values())
        lines += ["## Type I error of the level-2 treatment effect W (nominal 0.05)", "",
                  "Rate (MCSE) over the replicates with a test; pooled over n and ICC:", "",
                  markdown_table(_cells_wide(_pooled_by_j(
                      treat.assign(measure="rejection"), ["procedure", "measure"]),
                      ["n_groups"], "procedure", order)), "",
                  "Every cell:", "",
                  markdown_table(_cells_wide(treat.assign(measure="rejection"), CELL,
                                             "procedure", order)), ""]
    if len(fixed):
        order = list(TESTS.values())
        lines += ["## Fixed effects: type I error, power and coverage", "",
                  "Rate (MCSE) over the replicates with a test or interval, pooled over n "
                  "and ICC (per cell in `fixed_effects.csv` and the figures). Power "
                  "depends on n and ICC, so it is shown per cell.", ""]
        for model in ("ri", "rs"):
            f = fixed[fixed.model == model]
            if not len(f):
                continue
            for p in FIXED[model]:
                q = f[f.parameter == p]
                null = q[(q.gamma == 0) & (q.measure == "rejection")]
                cover = q[q.measure == "cover"]
                alt = q[(q.gamma != 0) & (q.measure == "rejection")]
                t1 = _cells_wide(_pooled_by_j(null, ["procedure", "measure"]),
                                 ["n_groups"], "procedure", order)
                cv = _cells_wide(_pooled_by_j(cover, ["procedure", "measure"]),
                                 ["n_groups"], "procedure", order)
                lines += [f"### `{model}`: {p}", ""]
                if p == TREATMENT and model == "ri":
                    lines += ["Type I error (gamma = 0): the tables above.", ""]
                else:
                    lines += ["Type I error (gamma = 0):", "", markdown_table(t1), ""]
                lines += ["Coverage of the 95% interval (both gamma):", "",
                          markdown_table(cv), ""]
                if p in (TREATMENT, "X:Z", "Z"):
                    pw = _cells_wide(alt, CELL, "procedure", order)
                    lines += [f"Power (gamma = {fmt(EFFECT[model])}):", "",
                              markdown_table(pw), ""]
    if len(var):
        order = list(INTERVALS.values())
        lines += ["## Variance components: coverage of 95% intervals", "",
                  f"Rate (MCSE) over the replicates with an interval, both gamma pooled "
                  f"({2 * FULL_REPS['ri']} replicates per cell for the Wald intervals, "
                  f"{FULL_REPS['ri_intervals']} (`ri`) and {FULL_REPS['rs_intervals']} "
                  "(`rs`) for profile and bootstrap in the full design). The covariance "
                  "has Wald intervals only.", ""]
        for model in ("ri", "rs"):
            for p in COVPARMS[model]:
                q = var[(var.model == model) & (var.parameter == p)]
                if len(q):
                    lines += [f"### `{model}`: {p}", "",
                              markdown_table(_cells_wide(q, CELL, "procedure", order)), ""]
            lines += _no_interval_table(var[var.model == model], model)
    if len(bias):
        lines += ["## Variance components: bias of ML, REML and unbounded REML", "",
                  "Relative bias (MCSE) of the variances; bias (MCSE) of the covariance "
                  "(true value 0); both gamma pooled.", ""]
        for model in ("ri", "rs"):
            b = bias[bias.model == model]
            if not len(b):
                continue
            rel = b[(b.measure == "relbias") & ~b.parameter.str.startswith("cov(")]
            rel = rel.assign(column=rel.parameter + " " + rel.estimator)
            order = [f"{p} {e}" for p in COVPARMS[model] for e in ESTIMATORS.values()]
            wide = rel.assign(cell=[with_mcse(e, m) for e, m in
                                    zip(rel.estimate, rel.mcse, strict=True)]) \
                .pivot_table(index=CELL, columns="column", values="cell", aggfunc="first")
            wide = _pretty(wide[[c for c in order if c in wide.columns]].reset_index())
            wide.columns.name = None
            lines += [f"### `{model}`: relative bias", "", markdown_table(wide), ""]
            cov = b[(b.measure == "bias") & b.parameter.str.startswith("cov(")]
            if len(cov):
                wide = cov.assign(cell=[with_mcse(e, m) for e, m in
                                        zip(cov.estimate, cov.mcse, strict=True)]) \
                    .pivot_table(index=CELL, columns="estimator", values="cell",
                                 aggfunc="first")
                wide = _pretty(wide[[e for e in ESTIMATORS.values() if e in wide.columns]]
                               .reset_index())
                wide.columns.name = None
                lines += [f"### `{model}`: bias of {cov.parameter.iloc[0]}", "",
                          markdown_table(wide), ""]
    return lines


def _no_interval_table(var: pd.DataFrame, model: str) -> list[str]:
    """Per cell, the share of replicates without an interval, for each parameter and
    procedure that lacks any."""
    v = var.assign(missing=var.n_fits - var.n)
    v = v[v.groupby(["parameter", "procedure"]).missing.transform("sum") > 0]
    if not len(v):
        return []
    v = v.assign(column=v.parameter + " " + v.procedure,
                 cell=[_wilson(m / f, f) for m, f in zip(v.missing, v.n_fits,
                                                               strict=True)])
    wide = v.pivot_table(index=CELL, columns="column", values="cell", aggfunc="first")
    wide.columns.name = None
    return [f"### `{model}`: share of replicates without an interval [95% Wilson "
            "interval]", "",
            "Where the Hessian (observed information) is not positive definite, there is "
            "no Wald SE; the coverage above is over the replicates with an interval.", "",
            markdown_table(_pretty(wide.reset_index())), ""]


def _within(est: float, mcse: float, nominal: float, k: float = 3.0) -> bool:
    return bool(np.isfinite(est)) and abs(est - nominal) <= k * mcse


def _j_list(values) -> str:
    return ", ".join(str(int(v)) for v in values)


def _findings(fixed, var, bias, treat, fits) -> list[str]:
    out = ["## Findings", "",
           "Computed from the tables below; a rate is 'within 3 MCSE' of its nominal "
           "value when |rate - nominal| <= 3 MCSE (its own MCSE sqrt(p (1 - p) / n)).", ""]
    if len(treat):
        out += _treatment_findings(treat)
    if len(fixed):
        out += _fixed_findings(fixed)
    if len(var):
        out += _variance_findings(var)
        out.append("  (Profile and bootstrap have fewer replicates per cell than the Wald "
                   "intervals, so a shortfall must be larger to be flagged.)")
    if len(bias):
        out += _bias_findings(bias)
    if len(fits):
        out += _singular_findings(fits)
        out += _unbounded_findings(fits)
    out.append("")
    return out


def _treatment_findings(treat: pd.DataFrame) -> list[str]:
    out = []
    pooled = _pooled_by_j(treat.assign(measure="rejection"), ["procedure", "measure"])
    procs = list(TESTS.values())

    def rate(J, proc):
        r = pooled[(pooled.n_groups == J) & (pooled.procedure == proc)]
        return (_p(r.estimate.iloc[0], r.mcse.iloc[0], r.n.iloc[0]) if len(r) else "—")

    Js = sorted(pooled.n_groups.unique())
    big = [J for J in Js if J >= 10]
    wald = pooled[pooled.procedure == "Wald z"].set_index("n_groups")
    kr = pooled[pooled.procedure == "Kenward-Roger t"].set_index("n_groups")
    sat = pooled[pooled.procedure == "Satterthwaite t"].set_index("n_groups")
    head = (f"Type I error of the level-2 treatment effect W (nominal 0.05), pooled over n "
            f"and ICC: Wald z {rate(Js[0], 'Wald z')} at J = {int(Js[0])} and "
            f"{rate(Js[-1], 'Wald z')} at J = {int(Js[-1])}; Kenward-Roger "
            f"{rate(Js[0], 'Kenward-Roger t')} and {rate(Js[-1], 'Kenward-Roger t')}; "
            f"Satterthwaite {rate(Js[0], 'Satterthwaite t')} and "
            f"{rate(Js[-1], 'Satterthwaite t')}.")
    out.append("- " + head)
    for J in Js:
        out.append(f"- At J = {int(J)} the type I error of W is "
                   + ", ".join(f"{p} {rate(J, p)}" for p in procs) + ".")
    # acceptance: KR and Satterthwaite within 3 MCSE of 0.05 in every cell with J >= 10
    for proc in ("Kenward-Roger t", "Satterthwaite t"):
        cells = treat[(treat.procedure == proc) & treat.n_groups.isin(big)]
        bad = cells[[not _within(e, m, ALPHA) for e, m in
                     zip(cells.estimate, cells.mcse, strict=True)]]
        if not len(cells):
            continue
        if not len(bad):
            out.append(f"- {proc}: the type I error of W lies within 3 MCSE of 0.05 in all "
                       f"{len(cells)} cells with J >= 10 (largest |z| = "
                       f"{fmt(float(np.abs(cells.z).max()))}).")
        else:
            where = "; ".join(
                f"J = {int(r.n_groups)}, n = {int(r.group_size)}, ICC = {fmt(r.icc)}: "
                f"{_p(r.estimate, r.mcse, r.n)}, {fmt(abs(r.estimate - ALPHA), 2)} "
                f"{'above' if r.estimate > ALPHA else 'below'} 0.05 "
                f"({fmt(abs(r.z), 3)} MCSE)" for r in bad.itertuples())
            out.append(f"- {proc}: the type I error of W is within 3 MCSE of 0.05 in "
                       f"{len(cells) - len(bad)} of {len(cells)} cells with J >= 10; "
                       f"not in {len(bad)}: {where}.")
    # Wald z above the small-sample tests
    for name, other in (("Kenward-Roger", kr), ("Satterthwaite", sat)):
        gaps = [(J, wald.loc[J, "estimate"] - other.loc[J, "estimate"],
                 math.hypot(wald.loc[J, "mcse"], other.loc[J, "mcse"]))
                for J in Js if J in wald.index and J in other.index]
        if not gaps:
            continue
        clear = [J for J, d, se in gaps if d > 2 * se]
        out.append(f"- Wald z rejects W more often than {name} by more than 2 MCSE of the "
                   f"difference (pooled over n and ICC) at {len(clear)} of {len(gaps)} J "
                   f"(J = {_j_list(clear) or 'none'}); Wald z minus {name} at J = "
                   + ", ".join(f"{int(J)}: {fmt(d, 2)}" for J, d, _ in gaps) + ".")
    if len(sat) and len(kr):
        gap = [(J, sat.loc[J, "estimate"] - kr.loc[J, "estimate"],
                math.hypot(sat.loc[J, "mcse"], kr.loc[J, "mcse"]))
               for J in Js if J in sat.index and J in kr.index]
        diff = [(J, d) for J, d, se in gap if abs(d) > 2 * se]
        text = ", ".join(f"J = {int(J)} (Satterthwaite {'higher' if d > 0 else 'lower'} by "
                         f"{fmt(abs(d), 2)})" for J, d in diff)
        out.append(f"- Satterthwaite and Kenward-Roger differ by more than 2 MCSE (pooled "
                   f"over n and ICC) at {text or 'no J'}.")
    return out


def _first_ok_j(frame: pd.DataFrame, nominal: float) -> int | None:
    """The smallest J from which every cell is within 3 MCSE of ``nominal``."""
    Js = sorted(frame.n_groups.unique())
    ok = {J: all(_within(e, m, nominal) for e, m in
                 zip(frame[frame.n_groups == J].estimate, frame[frame.n_groups == J].mcse,
                     strict=True)) for J in Js}
    for i, J in enumerate(Js):
        if all(ok[j] for j in Js[i:]):
            return int(J)
    return None


def _fixed_findings(fixed: pd.DataFrame) -> list[str]:
    out = []
    for model in ("ri", "rs"):
        f = fixed[(fixed.model == model) & (fixed.gamma == 0)
                  & (fixed.measure == "rejection")]
        if not len(f):
            continue
        for p in FIXED[model]:
            parts = []
            for proc in TESTS.values():
                q = f[(f.parameter == p) & (f.procedure == proc)]
                if len(q):
                    j = _first_ok_j(q, ALPHA)
                    parts.append(f"{proc} from J = {j}" if j is not None
                                 else f"{proc} at no J tried")
            out.append(f"- `{model}` {p}: the type I error is within 3 MCSE of 0.05 in "
                       f"every (n, ICC) cell " + "; ".join(parts) + ".")
        alt = fixed[(fixed.model == model) & (fixed.gamma != 0)
                    & (fixed.measure == "rejection")]
        p = TREATMENT if model == "ri" else "X:Z"
        q = alt[alt.parameter == p]
        if len(q):
            cell = q[(q.n_groups == 10) & (q.group_size == max(GROUP_SIZES))
                     & (q.icc == max(ICCS))]
            if len(cell):
                out.append(f"- `{model}` {p}, power at J = 10, n = {max(GROUP_SIZES)}, ICC = "
                           f"{fmt(max(ICCS))} (gamma = {fmt(EFFECT[model])}): "
                           + ", ".join(f"{r.procedure} {_p(r.estimate, r.mcse, r.n)}"
                                       for r in cell.itertuples())
                           + " (Wald z's extra power comes with its excess type I error).")
    return out


def _variance_findings(var: pd.DataFrame) -> list[str]:
    out = []
    for model in ("ri", "rs"):
        for p in COVPARMS[model]:
            q = var[(var.model == model) & (var.parameter == p)]
            if not len(q):
                continue
            J = int(q.n_groups.min())
            at, low, ok = [], [], []
            for proc in INTERVALS.values():
                r = q[q.procedure == proc]
                if not len(r):
                    continue
                pooled = _pool(r[r.n_groups == J], ["procedure", "measure"]).iloc[0]
                at.append(f"{proc} {_p(pooled.estimate, pooled.mcse, pooled.n)}")
                below = sum(e < LEVEL and not _within(e, m, LEVEL)
                            for e, m in zip(r.estimate, r.mcse, strict=True))
                low.append(f"{proc} {below}")
                j = _first_ok_j(r, LEVEL)
                ok.append(f"{proc} {'J = ' + str(j) if j is not None else 'no J tried'}")
            n_cells = q.groupby(CELL).ngroups
            out.append(f"- `{model}` {p}, coverage of the 95% intervals at J = {J} (pooled "
                       f"over n and ICC): " + ", ".join(at) + f". Cells (of {n_cells}) "
                       "below 0.95 by more than 3 MCSE: " + ", ".join(low) + ". Within 3 "
                       "MCSE of 0.95 in every cell from: " + ", ".join(ok) + ".")
    return out


def _bias_findings(bias: pd.DataFrame) -> list[str]:
    out = []
    words = {"above": "overestimates it", "below": "underestimates it",
             "neither": "shows no clear bias"}
    for model in ("ri", "rs"):
        b = bias[(bias.model == model) & (bias.measure == "relbias")]
        for p in [c for c in COVPARMS[model] if not c.startswith("cov(")][:2]:
            q = b[b.parameter == p]
            if not len(q):
                continue
            J = int(q.n_groups.min())
            pooled = _pool(q[q.n_groups == J], ["estimator", "measure"])
            parts = [f"{r.estimator} {direction(r.estimate, r.mcse, **words)}"
                     for r in pooled.itertuples()]
            unb = q[q.estimator == "REML unbounded"]
            clear = sum(abs(e) > 2 * m for e, m in zip(unb.estimate, unb.mcse, strict=True))
            out.append(f"- `{model}` {p}, relative bias at J = {J} (pooled over n and ICC): "
                       + "; ".join(parts) + f". Unbounded REML's relative bias is more than "
                       f"2 MCSE from 0 in {clear} of {len(unb)} cells.")
    return out


def _singular_findings(fits: pd.DataFrame) -> list[str]:
    """The rate of singular REML fits at the smallest and largest J, and the cell with
    the most, per model."""
    out = []
    for model in ("ri", "rs"):
        m = fits[(fits.block == model) & (fits.method == "REML")]
        if not len(m):
            continue
        g = m.groupby(CELL)[["n_singular", "n_fits"]].sum()
        j = m.groupby("n_groups")[["n_singular", "n_fits"]].sum()
        lo, hi = j.index.min(), j.index.max()
        worst = (g.n_singular / g.n_fits).idxmax()
        w = g.loc[worst]
        out.append(f"- `{model}`: singular REML fits (T-hat rank-deficient) at J = {lo}: "
                   f"{_wilson(j.loc[lo].n_singular / j.loc[lo].n_fits, j.loc[lo].n_fits)}"
                   f"; at J = {hi}: "
                   f"{_wilson(j.loc[hi].n_singular / j.loc[hi].n_fits, j.loc[hi].n_fits)}"
                   f" (pooled over n, ICC and gamma); most at J = {worst[0]}, n = {worst[1]}, "
                   f"ICC = {fmt(worst[2])}: {_wilson(w.n_singular / w.n_fits, w.n_fits)}.")
    return out


def _unbounded_findings(fits: pd.DataFrame) -> list[str]:
    """How often the unbounded REML fit has no maximum with every V_j positive definite
    (not converged), per model: overall and at the smallest J."""
    out = []
    u = fits[(fits.method == "REML unbounded")] if len(fits) else fits
    for model in ("ri", "rs"):
        m = u[u.block == model]
        if not len(m) or "n_nonconverged" not in m:
            continue
        k, n = int(m.n_nonconverged.sum()), int(m.n_fits.sum())
        if k == 0:
            out.append(f"- `{model}`: the unbounded REML fit converged in all {n} fits.")
            continue
        J = int(m.n_groups.min())
        small = m[m.n_groups == J]
        ks, ns = int(small.n_nonconverged.sum()), int(small.n_fits.sum())
        worst = m.assign(rate=m.n_nonconverged / m.n_fits).groupby(CELL).rate.mean()
        cell = worst.idxmax()
        out.append(f"- `{model}`: the unbounded REML fit did not converge (the REML "
                   f"criterion has no minimum with every V_j positive definite within "
                   f"{UNBOUNDED_MAX_ITER} steps) in {k} of {n} fits "
                   f"({_wilson(k / n, n)}); at J = {J}: "
                   f"{_wilson(ks / ns, ns)}; most at J = {cell[0]}, n = {cell[1]}, "
                   f"ICC = {fmt(cell[2])}: {fmt(worst.max())}. Its bias counts the last "
                   "point of those fits too, so it is the estimator's only where it "
                   "converges.")
    return out
