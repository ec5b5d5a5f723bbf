"""Non-positive-definite Hessians, singular T-hat and non-convergence, by ML and REML.

ADEMP (Morris, White and Crowther 2019):

- Aims: how often does a fit end with a covariance-parameter Hessian that is not
  positive definite, a singular T-hat (rank-deficient: a zero variance or a correlation
  of +-1), no convergence, or an error, by ML and by REML, (1) for identifiable
  random-slope models near and away from the boundary of the parameter space, (2) for
  the seed's non-identifiable models (discrete random slopes coded redundantly; a random
  slope on a level-2 variable), and (3) does the rate of zero variance estimates in the
  balanced random-intercept model match its exact probability?
- Data-generating mechanisms, four blocks (each its own `Study`, records in
  `records/<block>`):
  - `slope`: y_ij = gamma00 + gamma10 x_ij + U0j + U1j x_ij + R_ij, x ~ N(0, 1),
    gamma = (0, 0.5), sigma^2 = 1, tau0^2 = 0.25 (ICC 0.2), slope variance tau1^2 in
    {0, 0.01 (small), 0.1 (moderate)}, corr(U0, U1) in {0, 0.9, 1} (only 0 when
    tau1^2 = 0; corr 1 makes the true T singular); J in {10, 23, 50, 160} groups of
    n = 10.
  - `discrete`: the seed's model (b), y_ij = gamma00 + gamma10 female_ij + U0j +
    U1j female_ij + R_ij, with female ~ Bernoulli(p_j), p_j ~ Beta with mean 0.5 and SD
    0.25 (HSB's spread of the share of girls), male = 1 - female; true values from the
    ML fit of `mathach ~ 1 + female + (1 + female | school)` to HSB, rounded: gamma =
    (13.35, -1.38), tau0^2 = 8.6, tau01 = -0.7, sigma^2 = 38.7, and the female-slope
    variance tau1^2 = 0.65 (the HSB estimate, "seed") or 4 ("larger"); J = 23 (the
    sizes of every 7th HSB school) and J = 160 (HSB's 160 school sizes, mean 44.9).
  - `level2`: the seed's NELS-88 structure, y_ij = gamma00 + gamma10 homework_ij +
    gamma20 white_ij + gamma01 private_j + U0j + U1j homework_ij + R_ij with homework =
    2 + b_j + w_ij (var b = 0.35, var w = 1.75), white ~ Bernoulli(p_j) (mean 0.75, SD
    0.3), private ~ Bernoulli(0.35) per school; true values from the ML fit of the seed's
    Model 1 to NELS-88, rounded: gamma = (42.7, 1.9, 3.4, 3.9), T = [[52.3, -25.3],
    [-25.3, 15.8]], sigma^2 = 52.6; J = 23 (NELS-88's school sizes) and J = 160 (those
    sizes repeated).
  - `ri`: the balanced random-intercept model y_ij = gamma00 + U0j + R_ij, sigma^2 = 1,
    nine (J, n, tau0^2 / sigma^2) conditions chosen so that the exact zero-variance
    probabilities spread from about 0.05 to 0.6.
- Estimands: per condition and method, the probabilities of a non-PD Hessian, a
  singular T-hat, non-convergence and an error; for `ri`, Pr(tau0^2-hat = 0), exactly
  (Searle, Casella and McCulloch 1992, ch. 3) Pr(F(J(n-1), J-1) > 1 + n tau0^2 /
  sigma^2) by REML and Pr(F(J-1, J(n-1)) < J / ((J-1)(1 + n tau0^2 / sigma^2))) by ML.
- Methods: mlmsim's batched fit by ML and by REML of: `y ~ 1 + x + (1 + x | g)`
  (slope); (a) `y ~ 1 + female + (1 + female + male | g)` (not identifiable), (b)
  `y ~ 1 + female + (1 + female | g)` (the true model) and (c) `y ~ 1 + female + (0 +
  female + male | g)` (b reparameterised) (discrete); Model 3 `y ~ 1 + homework + white
  + private + (1 + homework + private | g)` (not identifiable) and Model 1, the true
  model with `(1 + homework | g)` (level2); `y ~ 1 + (1 | g)` (ri), plus the one-way
  ANOVA of each `ri` data set, which says exactly whether the REML (MSB <= MSW) and ML
  (MSB <= J MSW / (J - 1)) estimates of tau0^2 are 0.
- Performance measures: the rate of each event with its Monte Carlo SE sqrt(p (1 - p) /
  R); for `ri`, z = (simulated - exact) / MCSE and the replicate-by-replicate agreement
  of the fit's `singular` flag with the ANOVA criterion.

The flags are the engine's: `singular` when T-hat / sigma^2-hat has an eigenvalue below
1e-8 or a diagonal element of the relative factor Lambda is below 1e-4 (lme4's
isSingular rule); `hessian_pd` when the smallest eigenvalue of the Hessian of the
objective (-2 log L or the REML criterion) in phi = (vech T, sigma^2) exceeds 1e-6 times
the largest absolute one; `converged` when the optimiser met its criterion within its
iteration limit (a replicate that does not is refitted alone with 5 times the limit);
`identifiable` when the random-effect columns are not linearly dependent within every
group. Every replicate is kept and counted; none is dropped or redrawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from mlmsim.generate.covariance import T_from_sd_corr
from mlmsim.generate.predictors import Binary, Complement, Continuous, Level2Binary
from mlmsim.generate.sizes import SizeList
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FormulaMethod, FromSpec
from mlmsim.simstudy import (
    FIT_PARAMETER,
    Study,
    load_study,
    plot_measure,
    summarise,
)
from mlmsim.simstudy.intervals import proportion_interval
from mlmsim.studies import RunOptions
from mlmsim.studies._report import fmt, markdown_table, run_lines, with_interval, with_mcse

__all__ = ["TITLE", "BLOCKS", "run", "report", "studies", "exact_zero_probability", "anova_zero",
           "conditions", "slope_spec", "discrete_spec", "level2_spec", "ri_spec",
           "group_layout", "fit_flags"]

TITLE = ("Hessian: how often fits end with a non-PD Hessian, a singular T-hat or no "
         "convergence, by ML and REML")

BLOCKS = ("slope", "discrete", "level2", "ri")

# ---- the data-generating mechanisms ------------------------------------------------------

SLOPE_SIGMA2 = 1.0
SLOPE_TAU0_SQ = 0.25
SLOPE_GROUP_SIZE = 10
SLOPE_VARIANCES = {"zero": 0.0, "small": 0.01, "moderate": 0.1}
SLOPE_CORRS = (0.0, 0.9, 1.0)
SLOPE_J = (10, 23, 50, 160)

DISCRETE_GAMMA = {"Intercept": 13.35, "female": -1.38}
DISCRETE_TAU0_SQ, DISCRETE_TAU01, DISCRETE_SIGMA2 = 8.6, -0.7, 38.7
DISCRETE_SLOPE_VARIANCES = {"seed": 0.65, "larger": 4.0}
DISCRETE_J = (23, 160)

LEVEL2_GAMMA = {"Intercept": 42.7, "homework": 1.9, "white": 3.4, "private": 3.9}
LEVEL2_T = ((52.3, -25.3), (-25.3, 15.8))
LEVEL2_SIGMA2 = 52.6
LEVEL2_J = (23, 160)

# (J, n, tau0^2 / sigma^2): exact zero-variance probabilities from about 0.05 to 0.6
RI_CONDITIONS = ((5, 10, 0.3), (5, 5, 0.1), (10, 2, 0.0), (10, 5, 0.2), (10, 10, 0.05),
                 (20, 5, 0.2), (20, 5, 0.05), (50, 2, 0.2), (50, 5, 0.05))
RI_SIGMA2 = 1.0

SLOPE_FORMULA = "y ~ 1 + x + (1 + x | g)"
DISCRETE_FORMULAS = {"(a)": "y ~ 1 + female + (1 + female + male | g)",
                     "(b)": "y ~ 1 + female + (1 + female | g)",
                     "(c)": "y ~ 1 + female + (0 + female + male | g)"}
LEVEL2_FORMULAS = {"Model 3": "y ~ 1 + homework + white + private + (1 + homework + private | g)",
                   "Model 1": "y ~ 1 + homework + white + private + (1 + homework | g)"}
RI_FORMULA = "y ~ 1 + (1 | g)"
ANOVA = "ANOVA"
#: the methods whose models are not identifiable (random-effect columns dependent in
#: every group)
NON_IDENTIFIABLE = ("(a) ML", "(a) REML", "Model 3 ML", "Model 3 REML")

REPS = {"slope": 1000, "discrete": 400, "level2": 500, "ri": 5000}
QUICK_REPS = {"slope": 16, "discrete": 16, "level2": 32, "ri": 300}


def conditions(block: str, quick: bool = False) -> pd.DataFrame:
    """The conditions of one block, one row each (the quick version uses fewer)."""
    if block == "slope":
        rows = []
        for label, var in SLOPE_VARIANCES.items():
            for corr in (SLOPE_CORRS if var > 0 else (0.0,)):
                for J in SLOPE_J:
                    rows.append({"design": "slope", "slope_var": label, "tau1_sq": var,
                                 "corr": corr, "n_groups": J,
                                 "group_size": SLOPE_GROUP_SIZE})
        return pd.DataFrame(rows)
    if block == "discrete":
        Js = DISCRETE_J[:1] if quick else DISCRETE_J
        return pd.DataFrame([{"design": "discrete", "slope_var": label, "tau1_sq": var,
                              "n_groups": J, "layout": "hsb"}
                             for label, var in DISCRETE_SLOPE_VARIANCES.items() for J in Js])
    if block == "level2":
        return pd.DataFrame([{"design": "level2", "n_groups": J, "layout": "nels88"}
                             for J in LEVEL2_J])
    if block == "ri":
        return pd.DataFrame([{"design": "ri", "n_groups": J, "group_size": n, "ratio": r}
                             for J, n, r in RI_CONDITIONS])
    raise ValueError(f"unknown block {block!r}; blocks: {', '.join(BLOCKS)}")


def group_layout(name: str, n_groups: int) -> SizeList:
    """Fixed group sizes taken from a seed data set: ``hsb`` (160 schools; 23 groups are
    every 7th school) or ``nels88`` (23 schools; 160 groups repeat its sizes in order)."""
    sizes = list(SizeList.from_dataset(name).sizes)
    if n_groups <= len(sizes):
        step = len(sizes) // n_groups
        chosen = sizes[::step][:n_groups]
    else:
        chosen = (sizes * math.ceil(n_groups / len(sizes)))[:n_groups]
    return SizeList(tuple(chosen))


def slope_spec(condition) -> ModelSpec:
    """Random intercept and slope of x ~ N(0, 1): tau0^2 = 0.25, tau1^2 and corr from
    the condition (corr 1 or tau1^2 = 0 make the true T singular), sigma^2 = 1."""
    T = T_from_sd_corr([math.sqrt(SLOPE_TAU0_SQ), math.sqrt(condition["tau1_sq"])],
                       condition["corr"])
    return ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 0.0, "x": 0.5},
                     random=["Intercept", "x"], T=T, sigma2=SLOPE_SIGMA2,
                     group_sizes=condition["group_size"])


def discrete_spec(condition) -> ModelSpec:
    """The seed's model (b): random intercept and female slope, HSB-like values and
    group sizes; ``male`` = 1 - female is there for the fits (a) and (c)."""
    T = [[DISCRETE_TAU0_SQ, DISCRETE_TAU01], [DISCRETE_TAU01, condition["tau1_sq"]]]
    return ModelSpec(predictors=[Binary("female", p=0.5, p_sd=0.25), Complement("male", "female")],
                     gamma=DISCRETE_GAMMA, random=["Intercept", "female"], T=T,
                     sigma2=DISCRETE_SIGMA2,
                     group_sizes=group_layout(condition["layout"], condition["n_groups"]))


def level2_spec(condition) -> ModelSpec:
    """The seed's NELS-88 Model 1 (random homework slope; white and the school-level
    private fixed) with its ML estimates as true values and NELS-88-like group sizes."""
    preds = [Continuous("homework", mean=2.0, var_between=0.35, var_within=1.75),
             Binary("white", p=0.75, p_sd=0.3), Level2Binary("private", p=0.35)]
    return ModelSpec(predictors=preds, gamma=LEVEL2_GAMMA, random=["Intercept", "homework"],
                     T=[list(r) for r in LEVEL2_T], sigma2=LEVEL2_SIGMA2,
                     group_sizes=group_layout(condition["layout"], condition["n_groups"]))


def ri_spec(condition) -> ModelSpec:
    """The balanced random-intercept model without covariates, tau0^2 = ratio sigma^2."""
    return ModelSpec(predictors=[], gamma={"Intercept": 0.0}, random=["Intercept"],
                     T=condition["ratio"] * RI_SIGMA2, sigma2=RI_SIGMA2,
                     group_sizes=condition["group_size"])


# ---- the exact zero-variance probabilities and the per-replicate ANOVA -----------------------

def exact_zero_probability(n_groups: int, group_size: int, ratio: float, method: str) -> float:
    """Pr(tau0^2-hat = 0) in the balanced one-way random model with J groups of n and
    tau0^2 / sigma^2 = ``ratio`` (Searle, Casella and McCulloch 1992, sec. 3.7 and 3.8).

    MSB / MSW ~ (1 + n ratio) F(J-1, J(n-1)). The REML estimate is 0 when MSB <= MSW:
    Pr(F(J(n-1), J-1) > 1 + n ratio). The ML estimate is 0 when SSB / J <= MSW, i.e.
    MSB <= J MSW / (J - 1): Pr(F(J-1, J(n-1)) < J / ((J-1)(1 + n ratio))).
    """
    J, n = int(n_groups), int(group_size)
    lam = 1.0 + n * float(ratio)
    if method == "REML":
        return float(sps.f.sf(lam, J * (n - 1), J - 1))
    if method == "ML":
        return float(sps.f.cdf(J / ((J - 1) * lam), J - 1, J * (n - 1)))
    raise ValueError(f"method must be 'ML' or 'REML', got {method!r}")


def anova_zero(data: pd.DataFrame) -> dict[str, float]:
    """The one-way ANOVA of a random-intercept data set (columns g, y): ``F`` = MSB / MSW
    and whether the REML (``zero_REML``: MSB <= MSW) and ML (``zero_ML``: MSB <= J MSW /
    (J - 1)) estimates of tau0^2 are exactly 0 (balanced groups)."""
    g = data["g"].to_numpy()
    y = data["y"].to_numpy(dtype=float)
    counts = np.bincount(g)
    J, N = counts.size, y.size
    means = np.bincount(g, weights=y) / counts
    msb = float((counts * (means - y.mean()) ** 2).sum()) / (J - 1)
    msw = float(((y - means[g]) ** 2).sum()) / (N - J)
    return {"F": msb / msw, "zero_REML": float(msb <= msw),
            "zero_ML": float(msb <= J * msw / (J - 1))}


# ---- the studies ---------------------------------------------------------------------------

def _seed(options: RunOptions, block: str) -> int:
    """Each block's root seed: the run's seed plus the block's position."""
    return int(options.seed) + BLOCKS.index(block)


def _methods(block: str) -> dict:
    def both(formula: str, prefix: str = "") -> dict:
        return {f"{prefix}{m}": FormulaMethod(formula, m) for m in ("ML", "REML")}

    if block == "slope":
        return both(SLOPE_FORMULA)
    if block == "discrete":
        out = {}
        for label, formula in DISCRETE_FORMULAS.items():
            out |= both(formula, f"{label} ")
        return out
    if block == "level2":
        out = {}
        for label, formula in LEVEL2_FORMULAS.items():
            out |= both(formula, f"{label} ")
        return out
    if block == "ri":
        return {**both(RI_FORMULA), ANOVA: anova_zero}
    raise ValueError(f"unknown block {block!r}")


_SPECS = {"slope": slope_spec, "discrete": discrete_spec, "level2": level2_spec, "ri": ri_spec}


def studies(options: RunOptions) -> dict:
    """The four :class:`mlmsim.Study` objects, block name -> study."""

    out = {}
    for block in BLOCKS:
        reps = options.reps or (QUICK_REPS if options.quick else REPS)[block]
        out[block] = Study(conditions(block, options.quick),
                           FromSpec(_SPECS[block], n_groups="n_groups"), _methods(block),
                           n_reps=reps, seed=_seed(options, block))
    return out


def run(out_dir: Path, options: RunOptions) -> None:
    """Run the four blocks into ``out_dir/records/<block>``, then :func:`report`."""
    options.run_blocks(studies(options), out_dir, "hessian")
    report(out_dir)


# ---- reading the records back ----------------------------------------------------------------

_FIT_COLUMNS = ["condition", "rep", "method", "converged", "singular", "hessian_pd",
                "identifiable", "error", "messages"]


def fit_flags(source) -> pd.DataFrame:
    """One row per fit (condition, rep, method) with its flags, error and messages and the
    condition variables, from a :class:`~mlmsim.simstudy.StudyResult` (read chunk by chunk)
    or from records (a DataFrame with the condition variables)."""
    keys = ["condition", "rep", "method"]
    if isinstance(source, pd.DataFrame):
        return source.drop_duplicates(keys).reset_index(drop=True)
    frames = [chunk.drop_duplicates(keys) for chunk in source.iter_records(_FIT_COLUMNS)]
    fits = pd.concat(frames, ignore_index=True)
    conds = source.conditions.copy()
    conds.insert(0, "condition", np.arange(len(conds)))
    return fits.merge(conds, on="condition", how="left")


def _rate(k: int, n: int) -> tuple[float, float]:
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    return p, math.sqrt(p * (1.0 - p) / n)


def _fit_table(summary: pd.DataFrame, fits: pd.DataFrame, block: str) -> pd.DataFrame:
    """Per condition x method: the (fit) counts and rates of ``summarise`` (with MCSEs),
    plus counts from the fit flags: non-PD among fits with a non-singular T-hat, and
    lme4's gradient warning."""

    fit = summary[(summary.parameter == FIT_PARAMETER) & (summary.method != ANOVA)]
    cond_vars = [c for c in fit.columns if c not in ("condition", "method", "parameter",
                                                      "measure", "estimate", "mcse", "n")]
    est = fit.pivot_table(index=["condition", "method"], columns="measure", values="estimate",
                          aggfunc="first")
    mc = fit.pivot_table(index=["condition", "method"], columns="measure", values="mcse",
                         aggfunc="first")
    out = est[["n_fits", "n_errors", "n_nonconverged", "n_singular", "n_nonpd_hessian",
               "n_nonidentifiable"]].astype(int)
    for rate in ("error_rate", "nonconverged_rate", "singular_rate", "nonpd_hessian_rate",
                 "nonidentifiable_rate"):
        out[rate] = est[rate]
        out[f"{rate}_mcse"] = mc[rate]
    f = fits[fits.method != ANOVA]
    ok = f.error.isna()
    nonsing = ok & (f.singular == False)  # noqa: E712 - nullable booleans
    extra = pd.DataFrame({
        "n_nonsingular": nonsing,
        "n_nonpd_nonsingular": nonsing & (f.hessian_pd == False),  # noqa: E712
        "n_grad_warning": ok & f.messages.fillna("").str.contains("failed to converge"),
        "n_refitted": ok & f.messages.fillna("").str.contains("refitted alone"),
    }).astype(int)
    extra[["condition", "method"]] = f[["condition", "method"]].to_numpy()
    extra = extra.groupby(["condition", "method"]).sum()
    out = out.join(extra)
    conds = fit.drop_duplicates("condition").set_index("condition")[cond_vars]
    out = out.reset_index().merge(conds.reset_index(), on="condition")
    out.insert(0, "block", block)
    order = {m: i for i, m in enumerate(dict.fromkeys(fit.method))}
    out["_m"] = out.method.map(order)
    out = out.sort_values(["condition", "_m"]).drop(columns="_m")
    first = ["block", "condition", *cond_vars, "method"]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


def _zero_table(fits: pd.DataFrame, records) -> pd.DataFrame:
    """The ri block: simulated vs exact zero-variance rates per condition and method, with
    the agreement of the singular flag with the ANOVA criterion on the same data."""
    rec = records
    anova = rec[rec.method == ANOVA].pivot_table(index=["condition", "rep"],
                                                 columns="parameter", values="estimate")
    tau = rec[(rec.parameter == "var(Intercept)") & (rec.method != ANOVA)]
    tau = tau.set_index(["condition", "rep", "method"])["estimate"]
    rows = []
    for (cond, method), part in fits[fits.method != ANOVA].groupby(["condition", "method"],
                                                                   sort=True):
        ok = part[part.error.isna()]
        R = len(ok)
        sing = ok.singular.astype(bool).to_numpy()
        k = int(sing.sum())
        p, mcse = _rate(k, R)
        first = ok.iloc[0] if R else part.iloc[0]
        J, n, ratio = int(first.n_groups), int(first.group_size), float(first.ratio)
        exact = exact_zero_probability(J, n, ratio, method)
        event = anova.loc[cond].reindex(ok.rep.to_numpy())[f"zero_{method}"].to_numpy() > 0.5
        est = tau.xs((cond, method), level=("condition", "method")).reindex(ok.rep.to_numpy())
        est = est.to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (p - exact) / mcse if mcse > 0 else math.nan
        rows.append({
            "n_groups": J, "group_size": n, "ratio": ratio, "method": method,
            "n_fits": int(len(part)), "n_errors": int(len(part) - R), "n_zero": k,
            "simulated": p, "mcse": mcse, "exact": exact, "z": z,
            "exact_mcse": math.sqrt(exact * (1 - exact) / R) if R else math.nan,
            "anova_rate": float(event.mean()) if R else math.nan,
            "flag_agrees_anova": int((sing == event).sum()),
            "max_estimate_when_singular": float(est[sing].max()) if k else math.nan,
            "min_estimate_when_not": float(est[~sing].min()) if k < R else math.nan,
        })
    return pd.DataFrame(rows)


def _load(out_dir: Path, block: str):
    path = out_dir / "records" / block
    if not (path / "manifest.json").exists():
        return None
    return load_study(path)


# ---- report --------------------------------------------------------------------------------

def report(out_dir: Path) -> None:
    """CSV tables, PNG figures and report.md in ``out_dir`` from ``out_dir/records``."""

    out_dir = Path(out_dir)
    tables, summaries, zero = {}, {}, None
    for block in BLOCKS:
        result = _load(out_dir, block)
        if result is None:
            continue
        summary = summarise(result)
        fits = fit_flags(result)
        summaries[block] = summary
        tables[block] = _fit_table(summary, fits, block)
        if block == "ri":
            cols = ["condition", "rep", "method", "parameter", "estimate"]
            rec = pd.concat(list(result.iter_records(cols)), ignore_index=True)
            zero = _zero_table(fits, rec)
    if not tables:
        raise FileNotFoundError(f"{out_dir / 'records'} holds no block of the hessian study")
    rates = pd.concat(tables.values(), ignore_index=True)
    rates.to_csv(out_dir / "fit_rates.csv", index=False, float_format="%.6g")
    if zero is not None:
        zero.to_csv(out_dir / "zero_variance.csv", index=False, float_format="%.6g")
    figures = _figures(out_dir, summaries, zero)
    ran, _ = run_lines(summaries, {b: conditions(b) for b in summaries}, REPS,
                       "mlmsim study run hessian", out_dir)
    (out_dir / "report.md").write_text(_markdown(tables, zero, figures, ran), encoding="utf-8")


def _flag_frame(summary: pd.DataFrame, measures: dict[str, str]) -> pd.DataFrame:
    """(fit) rows of the chosen measures, relabelled so that plot_measure can draw them
    in one grid: measure -> "rate", the old name in column ``flag``."""

    part = summary[(summary.parameter == FIT_PARAMETER) & summary.measure.isin(list(measures))
                   & (summary.method != ANOVA)].copy()
    part["flag"] = part.measure.map(measures)
    part["measure"] = "rate"
    order = {m: i for i, m in enumerate(measures.values())}
    return part.sort_values("flag", key=lambda c: c.map(order), kind="stable")


def _figures(out_dir: Path, summaries: dict, zero: pd.DataFrame | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    flags = {"nonpd_hessian_rate": "non-PD Hessian", "singular_rate": "singular T-hat"}
    if "slope" in summaries:
        s = summaries["slope"].drop(columns=["design", "group_size", "slope_var"])
        for measure, label in flags.items():
            part = _flag_frame(s, {measure: label}).drop(columns="flag")
            part = part.rename(columns={"tau1_sq": "slope variance"})
            name = f"slope_{measure.removesuffix('_rate')}.png"
            grid = plot_measure(part, "rate", "n_groups", hue="method", row="slope variance",
                                col="corr", ref=None, sharey=True, height=2.4, aspect=1.2,
                                path=None)
            grid.set_axis_labels("number of groups J", f"{label} rate")
            grid.savefig(out_dir / name, dpi=110)
            plt.close(grid.figure)
            names.append(name)
    for block, col in (("discrete", "female-slope variance"), ("level2", None)):
        if block not in summaries:
            continue
        s = summaries[block].drop(columns=["design", "layout"] + (["tau1_sq"] if col else []))
        s = s.rename(columns={"slope_var": "female-slope variance"})
        part = _flag_frame(s, flags)
        name = f"{block}_rates.png"
        grid = plot_measure(part, "rate", "n_groups", hue="method", row=col, col="flag",
                            ref=None, sharey=True, height=2.6, aspect=1.3)
        grid.set_axis_labels("number of groups J", "rate")
        grid.savefig(out_dir / name, dpi=110)
        plt.close(grid.figure)
        names.append(name)
    if zero is not None and len(zero):
        fig, ax = plt.subplots(figsize=(4.8, 4.4))
        top = float(zero[["exact", "simulated"]].max().max())
        for method, marker in (("REML", "o"), ("ML", "s")):
            z = zero[zero.method == method]
            lo, hi = proportion_interval(z.simulated, z.n_fits - z.n_errors)
            bars = np.vstack([z.simulated - lo, hi - z.simulated])
            top = max(top, float(np.nanmax(hi, initial=0.0)))
            ax.errorbar(z.exact, z.simulated, yerr=bars, fmt=marker, ms=4, capsize=2,
                        label=method, linestyle="none")
        lim = [0, max(0.05, top * 1.08)]
        ax.plot(lim, lim, color="0.5", linestyle="--", linewidth=0.8, zorder=0)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_xlabel("exact Pr(tau0^2-hat = 0)")
        ax.set_ylabel("simulated rate (95% Wilson interval)")
        ax.set_title("Balanced random-intercept model")
        ax.legend(title="method")
        fig.tight_layout()
        fig.savefig(out_dir / "ri_zero_variance.png", dpi=110)
        plt.close(fig)
        names.append("ri_zero_variance.png")
    return names


def _cell(k: int, n: int, digits: int = 3) -> str:
    """``rate [lower, upper]`` of k events in n fits: the 95% Wilson interval, which
    (unlike the MCSE, 0 at 0 and 1) is not empty when no fit or every fit is flagged."""
    return with_interval(k / n, n, digits) if n else "—"


def _sum_line(t: pd.DataFrame) -> str:
    """Totals of a block's fits by method."""
    parts = []
    for method, g in t.groupby("method", sort=False):
        parts.append(f"{method}: {int(g.n_fits.sum())} fits, {int(g.n_nonpd_hessian.sum())} "
                     f"with a non-PD Hessian, {int(g.n_singular.sum())} singular, "
                     f"{int(g.n_nonconverged.sum())} not converged, {int(g.n_errors.sum())} "
                     "failed")
    return "; ".join(parts)


def _wide(t: pd.DataFrame, keys: list[str], methods: list[str]) -> pd.DataFrame:
    """One row per condition: per method the non-PD and singular rates [Wilson interval]."""
    rows = []
    for _, g in t.groupby("condition", sort=True):
        first = g.iloc[0]
        row = {k: first[k] for k in keys}
        for m in methods:
            r = g[g.method == m]
            if not len(r):
                continue
            r = r.iloc[0]
            row[f"non-PD {m}"] = _cell(int(r.n_nonpd_hessian), int(r.n_fits))
        for m in methods:
            r = g[g.method == m]
            if len(r):
                r = r.iloc[0]
                row[f"singular {m}"] = _cell(int(r.n_singular), int(r.n_fits))
        row["non-conv. / failed"] = ", ".join(
            f"{int(r.n_nonconverged)}/{int(r.n_errors)}" for _, r in g.iterrows())
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_int(v) -> str:
    return str(int(v))


def _pooled(t: pd.DataFrame, mask) -> tuple[int, int, int, int, int]:
    """(fits, non-PD, singular, non-PD among non-singular, non-singular) over rows."""
    g = t[mask]
    return (int(g.n_fits.sum()), int(g.n_nonpd_hessian.sum()), int(g.n_singular.sum()),
            int(g.n_nonpd_nonsingular.sum()), int(g.n_nonsingular.sum()))


def _markdown(tables: dict, zero: pd.DataFrame | None, figures: list[str],
              ran: list[str]) -> str:
    doc = __doc__.split("ADEMP (Morris, White and Crowther 2019):", 1)[1]
    lines = [f"# {TITLE}", "", *ran, "## Design (ADEMP)", "",
             "ADEMP (Morris, White and Crowther 2019):", doc.strip(), ""]
    lines += ["## Fits", ""]
    for block, t in tables.items():
        reps = ", ".join(sorted({str(int(v)) for v in t.n_fits}))
        lines += [f"- `{block}` ({t.condition.nunique()} conditions, {reps} replicates each): "
                  f"{_sum_line(t)}."]
    lines += ["", "Every replicate is kept: a singular, non-PD, unconverged or failed fit is "
              "counted in its rate and never redrawn. `fit_rates.csv` has every count and rate "
              "(with MCSEs) per condition and method, including the non-PD Hessians among fits "
              "whose T-hat is not singular, lme4's gradient warning and the replicates the "
              "engine refitted alone.", ""]
    lines += _findings(tables, zero)
    if zero is not None and len(zero):
        lines += ["## Balanced random-intercept model: simulated vs exact Pr(tau0^2-hat = 0)",
                  "", "`simulated` is the rate of fits flagged singular (tau0^2-hat = 0) with "
                  "its MCSE sqrt(p (1 - p) / R); `exact` from the F distribution (above); z = "
                  "(simulated - exact) / MCSE; `flag = ANOVA` counts the replicates where the "
                  "fit's singular flag equals the closed-form criterion on the same data "
                  "(REML: MSB <= MSW; ML: MSB <= J MSW / (J - 1)).", ""]
        show = pd.DataFrame({
            "J": zero.n_groups.map(_fmt_int), "n": zero.group_size.map(_fmt_int),
            "tau0^2/sigma^2": zero.ratio.map(lambda v: f"{v:g}"), "method": zero.method,
            "R": zero.n_fits.map(_fmt_int),
            "simulated (MCSE)": [with_mcse(p, m, 3) for p, m in zip(zero.simulated, zero.mcse,
                                                                    strict=True)],
            "95% Wilson interval": [with_interval(p, r, 3).split(" ", 1)[-1] for p, r in zip(
                zero.simulated, zero.n_fits - zero.n_errors, strict=True)],
            "exact": zero.exact.map(lambda v: f"{v:.4f}"),
            "z": zero.z.map(lambda v: f"{v:+.2f}" if np.isfinite(v) else "—"),
            "flag = ANOVA": [f"{a}/{r}" for a, r in zip(zero.flag_agrees_anova,
                                                         zero.n_fits - zero.n_errors,
                                                         strict=True)],
        })
        lines += [markdown_table(show), ""]
    if "slope" in tables:
        t = tables["slope"]
        lines += ["## Identifiable random-slope models near the boundary", "",
                  f"`{SLOPE_FORMULA}`, J groups of {SLOPE_GROUP_SIZE}; rate [95% Wilson "
                  "interval] per condition; the last column lists non-converged / failed "
                  "fits per method.",
                  ""]
        w = _wide(t, ["slope_var", "tau1_sq", "corr", "n_groups"], ["ML", "REML"])
        w = w.rename(columns={"slope_var": "slope var.", "tau1_sq": "tau1^2",
                              "n_groups": "J"})
        w["tau1^2"] = w["tau1^2"].map(lambda v: f"{v:g}")
        w["corr"] = w["corr"].map(lambda v: f"{v:g}")
        w["J"] = w["J"].map(_fmt_int)
        lines += [markdown_table(w), ""]
    if "discrete" in tables:
        t = tables["discrete"]
        lines += ["## The seed's discrete random slopes: data from (b), fitted by (a), (b), (c)",
                  "", "Rate [95% Wilson interval] of a non-PD Hessian and of a singular "
                  "T-hat; (a) is not identifiable (intercept = female + male in every group).", ""]
        lines += [markdown_table(_long_rows(t, ["slope_var", "tau1_sq", "n_groups"])), ""]
    if "level2" in tables:
        t = tables["level2"]
        lines += ["## A random slope on a level-2 variable (the seed's NELS-88 Model 3)", "",
                  "Model 3 adds a random slope of the school-level `private`, which is "
                  "constant within each school: its column is 0 or equal to the intercept's "
                  "in every school, so T is not identifiable.", ""]
        lines += [markdown_table(_long_rows(t, ["n_groups"])), ""]
    lines += ["## Reproduce", "",
              "`python studies/hessian.py --jobs 2` (or `mlmsim study run hessian --jobs 2`) "
              "runs the four blocks into `results/hessian/records/<block>` (Parquet chunks, "
              "not committed; a rerun resumes) and writes this report; `mlmsim study report "
              "results/hessian` rebuilds the tables, figures and this file from the records "
              "without refitting. `--quick` is the small version run by the tests.", ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f}]({f})" for f in figures]
        lines += [""]
    return "\n".join(lines) + "\n"


def _long_rows(t: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    rows = []
    for _, r in t.iterrows():
        row = {("J" if k == "n_groups" else "tau1^2" if k == "tau1_sq" else
                "slope var." if k == "slope_var" else k):
               (_fmt_int(r[k]) if k == "n_groups" else f"{r[k]:g}" if k == "tau1_sq" else r[k])
               for k in keys}
        n = int(r.n_fits)
        row |= {"method": r.method, "R": str(n),
                "non-PD Hessian": _cell(int(r.n_nonpd_hessian), n),
                "singular": _cell(int(r.n_singular), n),
                "non-PD, T-hat not singular": f"{int(r.n_nonpd_nonsingular)}/"
                                              f"{int(r.n_nonsingular)}",
                "not converged": _cell(int(r.n_nonconverged), n),
                "failed": str(int(r.n_errors)),
                "not identifiable": _cell(int(r.n_nonidentifiable), n)}
        rows.append(row)
    return pd.DataFrame(rows)


def _upper(k: int, n: int) -> str:
    """An exact one-sided 95% upper bound (Clopper-Pearson) for a rate with k of n."""
    if n == 0:
        return "—"
    if k >= n:
        return "1"
    return fmt(float(sps.beta.ppf(0.95, k + 1, n - k)), 2)


def _lower(k: int, n: int) -> str:
    """An exact one-sided 95% lower bound (Clopper-Pearson) for a rate with k of n."""
    if n == 0:
        return "—"
    if k == 0:
        return "0"
    return fmt(float(sps.beta.ppf(0.05, k, n - k + 1)), 4)


def _findings(tables: dict, zero: pd.DataFrame | None) -> list[str]:
    out = ["## Findings", ""]
    if zero is not None and len(zero):
        az = zero.z.abs()
        worst = zero.loc[az.idxmax()] if az.notna().any() else None
        agree = int(zero.flag_agrees_anova.sum())
        total = int((zero.n_fits - zero.n_errors).sum())
        n_cond = len(zero.drop_duplicates(["n_groups", "group_size", "ratio"]))
        text = (f"- **Zero variance estimates, balanced random-intercept model.** In all "
                f"{len(zero)} condition x method cells ({n_cond} (J, n, ratio) conditions, "
                f"exact probabilities {zero.exact.min():.3f} to {zero.exact.max():.3f}) the "
                f"simulated rate of tau0^2-hat = 0 lies within "
                f"{az.max():.2f} MCSE of the exact probability")
        if worst is not None:
            cell = with_mcse(worst.simulated, worst.mcse)
            text += (f" (largest |z| at J = {int(worst.n_groups)}, n = {int(worst.group_size)}, "
                     f"ratio {worst.ratio:g}, {worst.method}: {cell} vs {worst.exact:.4f})")
        wide = zero.pivot_table(index=["n_groups", "group_size", "ratio"], columns="method",
                                values="n_zero")
        more = int((wide["ML"] > wide["REML"]).sum()) if {"ML", "REML"} <= set(wide) else 0
        exact_ok = (": the fit ends at tau0^2-hat = 0 exactly where the closed-form estimate "
                    "is 0" if agree == total else " (the disagreements are in `zero_variance.csv`)")
        text += (f"; {int((az > 3).sum())} cells exceed 3 MCSE and {int((az > 2).sum())} exceed "
                 f"2. The fit's singular flag equals the closed-form ANOVA criterion in "
                 f"{agree} of {total} fits{exact_ok}. ML gives more zero estimates than REML in "
                 f"{more} of "
                 f"{len(wide)} conditions (its threshold J / (J - 1) for MSB / MSW exceeds "
                 "REML's 1).")
        out.append(text)
        mx = zero.max_estimate_when_singular.max()
        mn = zero.min_estimate_when_not.min()
        if np.isfinite(mx) and np.isfinite(mn):
            out.append(f"  The recorded tau0^2-hat is at most {mx:.3g} in the fits flagged "
                       f"singular and at least {mn:.3g} in the others.")
    nonid = {b: t[t.method.isin(NON_IDENTIFIABLE)] for b, t in tables.items()
             if b in ("discrete", "level2")}
    for block, t in nonid.items():
        if not len(t):
            continue
        n, k = int(t.n_fits.sum()), int(t.n_nonpd_hessian.sum())
        ni = int(t.n_nonidentifiable.sum())
        what = ("model (a), `(1 + female + male | g)`," if block == "discrete"
                else "Model 3, `(1 + homework + private | g)`,")
        per = "; ".join(f"{m}: {int(g.n_nonpd_hessian.sum())}/{int(g.n_fits.sum())}"
                        for m, g in t.groupby("method", sort=False))
        out.append(f"- **Non-identifiable ({block}).** The seed's {what} ends with a non-PD "
                   f"Hessian in {k} of {n} fits (rate {k / n:.4f}; exact one-sided 95% lower "
                   f"bound {_lower(k, n)}) over all its conditions ({per}); the engine flags "
                   f"{ni} of {n} as not identifiable. Non-converged: "
                   f"{int(t.n_nonconverged.sum())}; failed: {int(t.n_errors.sum())}; refitted "
                   f"alone after the batch: {int(t.n_refitted.sum())}.")
    ident = []
    if "slope" in tables:
        ident.append(("slope", tables["slope"]))
    if "discrete" in tables:
        t = tables["discrete"]
        ident.append(("discrete (b) and (c)", t[~t.method.isin(NON_IDENTIFIABLE)]))
    if "level2" in tables:
        t = tables["level2"]
        ident.append(("level2 Model 1", t[~t.method.isin(NON_IDENTIFIABLE)]))
    if "ri" in tables:
        ident.append(("ri", tables["ri"]))
    ident = [(name, t) for name, t in ident if len(t)]
    if ident:
        tot = [sum(v) for v in zip(*(_pooled(t, np.ones(len(t), dtype=bool))
                                     for _, t in ident), strict=True)]
        fits, nonpd, sing, nonpd_ns, ns = tot
        at_boundary = nonpd - nonpd_ns
        out.append(f"- **Identifiable models: a non-PD Hessian comes with a singular T-hat.** "
                   f"Over the identifiable fits of all blocks, {nonpd_ns} of the {ns} fits "
                   f"whose T-hat is not singular have a non-PD Hessian (one-sided 95% upper "
                   f"bound {_upper(nonpd_ns, ns)}); {at_boundary} of the {sing} singular fits "
                   f"do ({_cell(at_boundary, sing, 2)}). Away from the boundary the Hessian "
                   "is positive definite; a singular fit is minimised on the boundary (a zero "
                   "variance or |corr| = 1 in T-hat), where the gradient need not vanish and "
                   "the Hessian in phi need not be positive definite. A non-PD Hessian in an "
                   "identifiable model is thus a symptom of a boundary estimate, not a failed "
                   "fit.")
    for name, t in ident:
        fits, nonpd, sing, nonpd_ns, ns = _pooled(t, np.ones(len(t), dtype=bool))
        out.append(f"  - {name}: non-PD Hessian in {nonpd} of {fits} fits "
                   f"({_cell(nonpd, fits)}), singular T-hat in {sing} ({_cell(sing, fits)}); "
                   f"non-PD among the {ns} non-singular fits: {nonpd_ns}; not converged: "
                   f"{int(t.n_nonconverged.sum())}; failed: {int(t.n_errors.sum())}.")
    if "slope" in tables:
        out += _slope_findings(tables["slope"])
    if "discrete" in tables:
        out += _discrete_findings(tables["discrete"])
    if "level2" in tables:
        t = tables["level2"]
        m1 = t[~t.method.isin(NON_IDENTIFIABLE)]
        if len(m1):
            cells = "; ".join(f"J = {int(r.n_groups)} {r.method}: non-PD "
                              f"{_cell(int(r.n_nonpd_hessian), int(r.n_fits))}, singular "
                              f"{_cell(int(r.n_singular), int(r.n_fits))}"
                              for _, r in m1.iterrows())
            out.append(f"- **Level-2 block, the identifiable Model 1** (true T away from the "
                       f"boundary, corr -0.88): {cells}.")
    out.append("")
    return out


def _slope_findings(t: pd.DataFrame) -> list[str]:
    out = []
    away = t[(t.slope_var == "moderate") & (t["corr"] == 0.0)]
    if len(away):
        cells = "; ".join(f"J = {int(r.n_groups)} {r.method} "
                          f"{_cell(int(r.n_nonpd_hessian), int(r.n_fits))}"
                          for _, r in away.iterrows())
        out.append(f"- **Slope block away from the boundary** (tau1^2 = "
                   f"{SLOPE_VARIANCES['moderate']:g}, corr 0): non-PD Hessian rates {cells}.")
    byJ = t.groupby("n_groups")[["n_fits", "n_nonpd_hessian", "n_singular"]].sum()
    nonpd = ", ".join(f"J = {J}: {_cell(int(r.n_nonpd_hessian), int(r.n_fits))}"
                      for J, r in byJ.iterrows())
    sing = ", ".join(f"J = {J}: {_cell(int(r.n_singular), int(r.n_fits))}"
                     for J, r in byJ.iterrows())
    top = t[t.n_groups == t.n_groups.max()]
    is_away = (top.slope_var == "moderate") & (top["corr"] == 0.0)
    near, far = top[~is_away], top[is_away]
    rates = near.n_singular / near.n_fits
    text = (f"- **Slope block by the number of groups.** Pooled over the "
            f"{t.groupby(['tau1_sq', 'corr']).ngroups} (tau1^2, corr) settings and both methods, "
            f"the non-PD Hessian rate is {nonpd}; the singular rate is {sing}. A non-PD "
            f"Hessian becomes rare as J grows ({int(top.n_nonpd_hessian.sum())} of "
            f"{int(top.n_fits.sum())} fits at J = {int(t.n_groups.max())}), a singular T-hat "
            f"does not where the true T is on or near the boundary: at J = "
            f"{int(t.n_groups.max())} its rate is {rates.min():.2f} to {rates.max():.2f} "
            f"in the settings with tau1^2 = 0, tau1^2 = {SLOPE_VARIANCES['small']:g} or corr "
            f">= 0.9")
    if len(far):
        text += (f", against {int(far.n_singular.sum())} of {int(far.n_fits.sum())} with "
                 f"tau1^2 = {SLOPE_VARIANCES['moderate']:g} and corr 0")
    out.append(text + ".")
    ml = t[t.method == "ML"].set_index("condition")
    reml = t[t.method == "REML"].set_index("condition")
    both = ml.merge(reml, left_index=True, right_index=True, suffixes=("_ml", "_reml"))
    if len(both):
        more = int((both.n_nonpd_hessian_ml > both.n_nonpd_hessian_reml).sum())
        fewer = int((both.n_nonpd_hessian_ml < both.n_nonpd_hessian_reml).sum())
        smore = int((both.n_singular_ml > both.n_singular_reml).sum())
        out.append(f"- **ML vs REML (slope block).** ML has more non-PD Hessians than REML in "
                   f"{more} of {len(both)} conditions (fewer in {fewer}) and more singular "
                   f"fits in {smore}; in total ML {int(both.n_nonpd_hessian_ml.sum())} vs REML "
                   f"{int(both.n_nonpd_hessian_reml.sum())} non-PD, ML "
                   f"{int(both.n_singular_ml.sum())} vs REML {int(both.n_singular_reml.sum())} "
                   "singular.")
    return out


def _discrete_findings(t: pd.DataFrame) -> list[str]:
    out = []
    bc = t[t.method.str.startswith(("(b)", "(c)"))]
    if not len(bc):
        return out
    same = []
    for _, g in bc.groupby(["condition", bc.method.str.split().str[-1]]):
        if len(g) == 2:
            same.append((int(g.n_singular.iloc[0]) == int(g.n_singular.iloc[1]),
                         int(g.n_nonpd_hessian.iloc[0]) == int(g.n_nonpd_hessian.iloc[1])))
    cells = "; ".join(f"{r.slope_var} J = {int(r.n_groups)} {r.method}: non-PD "
                      f"{_cell(int(r.n_nonpd_hessian), int(r.n_fits))}, singular "
                      f"{_cell(int(r.n_singular), int(r.n_fits))}"
                      for _, r in bc[bc.method.str.startswith("(b)")].iterrows())
    out.append(f"- **Discrete slopes, the identifiable fits.** Model (b): {cells}. Model (c) is "
               f"(b) reparameterised (T_c = A T_b A'); its singular and non-PD counts equal "
               f"(b)'s in {sum(s for s, _ in same)} and {sum(h for _, h in same)} of "
               f"{len(same)} condition x method pairs (see the table).")
    return out
