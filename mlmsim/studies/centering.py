"""Centering a level-1 predictor when its within- and between-group effects differ.

ADEMP (Morris, White and Crowther 2019):

- Aims: over simulated data sets with a contextual effect (the between-group effect of
  x differs from its within-group effect), which of the seed's five centering forms
  (RS, GMC, GpMC, RS+GpM, GpMC+GpM; `docs/centering.md`) are the same model, fitted as
  random-intercept (RI) and as random-slope (RS) models: are the deviances of the
  equivalent pairs equal (and those of the other pairs not), does the exact map
  T_RS = A T_GMC A' hold, and what does each form's coefficient of x estimate?
- Data-generating mechanisms: x_ij = 2 + b_j + w_ij with b_j ~ N(0, 0.5) and
  w_ij ~ N(0, 1), so the group means xbar_j vary (ICC of x 1/3);
  y_ij = 10 + gamma_W (x_ij - xbar_j) + gamma_B xbar_j + U0j + U1j (x_ij - xbar_j) + R_ij
  with xbar_j the sample group mean, gamma_W = 2 (within-group effect),
  gamma_B = 2 + contextual (between-group effect; the contextual effect
  gamma_B - gamma_W is 0 or 1), tau0^2 = 4, tau1^2 (slope variance) 0 or 1, tau01 = 0,
  sigma^2 = 9; J in {20, 50} groups of n in {5, 20} (balanced): 16 conditions.
- Estimands: gamma_W, estimated by the coefficient of x in RS and RS+GpM, of x - xbar in
  GMC, and of x - xbar_j in GpMC and GpMC+GpM (in RS and GMC without the group mean it
  is a precision-weighted mix of gamma_W and gamma_B); the contextual effect
  gamma_B - gamma_W (coefficient of xbar_j in RS+GpM) and gamma_B (coefficient of xbar_j
  in GpMC+GpM); and, as checks, deviance differences (0 for equivalent pairs) and the T
  map between RS and GMC (error 0).
- Methods: the five forms by ML (mlmsim, batched fits; equal to ``mlmsim.fit`` to
  rounding), each with a random intercept (method RI, ``y ~ x + (1 | g)`` and so on) and
  with a random slope of its level-1 variable (method RS, ``y ~ x + (1 + x | g)``).
- Performance measures: bias, empirical and model SE and coverage of 95% Wald intervals of
  each form's estimate of gamma_W, each with its Monte Carlo SE; the distribution of the
  relative deviance difference (dev_a - dev_b) / max(1, |dev_b|) of the pairs
  (RS, GMC), (RS+GpM, GpMC+GpM) and (RS, GpMC) over all replicates; the largest
  |T_RS - A T_GMC A'|; counts of singular, non-PD, unconverged and failed fits per form.

Records (one method call fits all five forms of one model type on one replicate), per
method RI or RS and replicate: ``gammaW[form]`` (estimate and SE of the coefficient that
targets gamma_W), ``contextual[RS+GpM]``, ``gammaB[GpMC+GpM]``, ``dev[form]`` (-2 log L),
``dev_rel[a vs b]`` (signed relative deviance difference), ``Tmap_err[RS vs GMC]``
(max |T_RS - A T_GMC A'|, A = [[1, -xbar], [0, 1]] with a random slope, A = 1 without)
and ``Tmap_rel[RS vs GMC]`` (that divided by RS's largest variance parameter), with RI
also ``Tmap_err``/``Tmap_rel[RS+GpM vs GpMC+GpM]`` (|tau0^2 difference|) and ``weightB[RS]``,
the weight of the between-group estimator in RS's GLS estimate (below), and
``flags[form]``, a bit code of the form's fit: 1 singular, 2 Hessian not positive
definite, 4 not converged, 8 not identifiable, 16 failed (no estimates). A replicate's
runner flags summarise its five fits (singular: any; converged, hessian_pd,
identifiable: all, a failed fit counting as unconverged); its messages are the fits'
messages, each prefixed with the form.

The RI fit of RS in balanced data is exactly the GLS mix
gamma-hat = (1 - w) b_W + w b_B of the within-group estimator b_W (unbiased for gamma_W)
and the between-group estimator b_B (unbiased for gamma_B), with
w = theta B / (W + theta B), theta = sigma^2 / (sigma^2 + n tau0^2) at the fit's estimates,
W = sum (x_ij - xbar_j)^2 and B = n sum (xbar_j - xbar)^2: ``weightB[RS]`` records w, and
gamma_W + mean(w) (gamma_B - gamma_W) predicts the mean RS estimate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from mlmsim import fit, fit_batch
from mlmsim.analysis.centering import FORMS, add_centered, centered_forms
from mlmsim.generate.predictors import Continuous, GroupCentered, GroupMean
from mlmsim.generate.spec import ModelSpec
from mlmsim.methods import FromSpec, each_alone_if_needed
from mlmsim.simstudy import Estimates, Study, load_study, plot_measure
from mlmsim.simstudy.storage import MANIFEST
from mlmsim.studies import RunOptions
from mlmsim.studies._report import (
    fmt,
    markdown_table,
    proportion_direction,
    run_lines,
    with_interval,
    with_mcse,
)

__all__ = ["TITLE", "run", "report", "model_spec", "truth", "FiveForms", "PAIRS", "WITHIN"]

TITLE = ("Centering under a contextual effect: the five forms as random-intercept and "
         "random-slope models (deviances, T maps, within-group effect)")

# the data-generating mechanism (module docstring)
GAMMA00 = 10.0
GAMMA_W = 2.0
X_MEAN = 2.0
X_VAR_BETWEEN = 0.5
X_VAR_WITHIN = 1.0
TAU00 = 4.0
SIGMA2 = 9.0
CONDITIONS = {"J": [20, 50], "nj": [5, 20], "contextual": [0.0, 1.0], "tau11": [0.0, 1.0]}
FULL_REPS = 2000
QUICK_REPS = 25
RECORD_VERSION = 1  # bump when the recorded quantities change (part of the study's identity)

FORMULA = "y ~ x + (1 | g)"
X, GROUP = "x", "g"
WITHIN = {"RS": "x", "GMC": "x_gmc", "GpMC": "x_gpmc", "RS+GpM": "x", "GpMC+GpM": "x_gpmc"}
"""The column whose coefficient targets gamma_W in each form."""
GPM = "x_gpm"
PAIRS = (("RS", "GMC"), ("RS+GpM", "GpMC+GpM"), ("RS", "GpMC"))
"""The compared pairs: equivalent, equivalent with a random intercept only, never."""
EQUIVALENT = {"RI": {("RS", "GMC"), ("RS+GpM", "GpMC+GpM")}, "RS": {("RS", "GMC")}}
"""The pairs that are one model in two parameterisations, per model type."""
FLAG_BITS = {"singular": 1, "non-PD Hessian": 2, "not converged": 4, "not identifiable": 8,
             "failed": 16}
TOL = 1e-6  # the acceptance bound on the relative deviance difference of equivalent pairs
FLOOR = 1e-17  # |differences| of exactly 0 are drawn here on log axes


def pair_name(a: str, b: str) -> str:
    """``"RS vs GMC"``: how a pair is named in the records."""
    return f"{a} vs {b}"


# ---- design: data, truth ---------------------------------------------------------------------

def model_spec(condition) -> ModelSpec:
    """The true model of a condition (keys ``contextual`` and ``tau11``)."""
    gamma_b = GAMMA_W + float(condition["contextual"])
    return ModelSpec(
        predictors=[Continuous(X, mean=X_MEAN, var_between=X_VAR_BETWEEN,
                               var_within=X_VAR_WITHIN),
                    GroupCentered("x_gpmc", of=X), GroupMean(GPM, of=X)],
        gamma={"Intercept": GAMMA00, "x_gpmc": GAMMA_W, GPM: gamma_b},
        random=["Intercept", "x_gpmc"], T=[[TAU00, 0.0], [0.0, float(condition["tau11"])]],
        sigma2=SIGMA2, group=GROUP)


def truth(condition) -> dict[str, float]:
    """The estimands' true values; quantities without one (deviances, the pairs that are
    not equivalent under both model types, flags) are NaN."""
    gamma_b = GAMMA_W + float(condition["contextual"])
    out = {f"gammaW[{f}]": GAMMA_W for f in FORMS}
    out.update({"contextual[RS+GpM]": gamma_b - GAMMA_W, "gammaB[GpMC+GpM]": gamma_b,
                f"dev_rel[{pair_name('RS', 'GMC')}]": 0.0,
                f"Tmap_err[{pair_name('RS', 'GMC')}]": 0.0})
    return out


# ---- the method: five forms, one model type -------------------------------------------------

class _FormFit:
    """What the study needs of one fit (from a FitResult or one row of a BatchFit)."""

    __slots__ = ("fixef", "se", "deviance", "T", "sigma2", "flags", "messages", "error")

    def __init__(self, fixef=None, se=None, deviance=math.nan, T=None, sigma2=math.nan,
                 flags=(None, None, None, None), messages=(), error=None):
        self.fixef, self.se = fixef or {}, se or {}
        self.deviance, self.T, self.sigma2 = float(deviance), T, float(sigma2)
        self.flags, self.messages, self.error = flags, tuple(messages), error

    @classmethod
    def of_result(cls, res) -> _FormFit:
        return cls(res.fixef.to_dict(), res.fixef_se.to_dict(), res.deviance,
                   res.T.to_numpy(dtype=float), res.sigma2,
                   (res.converged, res.singular, res.hessian_pd, res.identifiable),
                   res.messages)

    @classmethod
    def of_batch(cls, b, r: int) -> _FormFit:
        err = b.errors[r] if b.errors else None
        if err is not None:
            return cls(error=str(err), messages=b.messages[r])
        e = b.estimates
        names = list(b.fixed_names)
        return cls(dict(zip(names, e.beta[r].tolist(), strict=True)),
                   dict(zip(names, e.beta_se[r].tolist(), strict=True)), e.deviance[r],
                   np.asarray(e.T[r], dtype=float), e.sigma2[r],
                   (bool(e.converged[r]), bool(e.singular[r]), bool(e.hessian_pd[r]),
                    bool(e.identifiable[r])), b.messages[r])

    def coef(self, name: str) -> tuple[float, float]:
        return float(self.fixef.get(name, math.nan)), float(self.se.get(name, math.nan))

    @property
    def code(self) -> int:
        if self.error is not None:
            return FLAG_BITS["failed"]
        conv, sing, hpd, ident = self.flags
        return (FLAG_BITS["singular"] * bool(sing) + FLAG_BITS["non-PD Hessian"] * (not hpd)
                + FLAG_BITS["not converged"] * (not conv)
                + FLAG_BITS["not identifiable"] * (not ident))


def _between_weight(data: pd.DataFrame, fit: _FormFit) -> float:
    """w = theta B / (W + theta B) of the RI fit of RS (NaN unless groups are balanced)."""
    g = data[GROUP].to_numpy()
    x = data[X].to_numpy(dtype=float)
    _, codes, counts = np.unique(g, return_inverse=True, return_counts=True)
    if counts.min() != counts.max() or fit.T is None:
        return math.nan
    n = counts[0]
    means = np.bincount(codes, weights=x) / counts
    W = float(((x - means[codes]) ** 2).sum())
    B = float(n * ((means - x.mean()) ** 2).sum())
    theta = fit.sigma2 / (fit.sigma2 + n * fit.T[0, 0])
    return theta * B / (W + theta * B)


def _scale(fit: _FormFit) -> float:
    """The largest variance parameter of a fit, max(|T_kl|, sigma^2): the scale of the
    relative T-map error."""
    return max(float(np.abs(fit.T).max()), fit.sigma2) if fit.T is not None else math.nan


def _quantities(fits: dict[str, _FormFit], data: pd.DataFrame, random_slope: bool):
    """The records of one replicate and model type (module docstring), as Estimates."""

    est: dict[str, float] = {}
    se: dict[str, float] = {}
    for f in FORMS:
        est[f"gammaW[{f}]"], se[f"gammaW[{f}]"] = fits[f].coef(WITHIN[f])
    est["contextual[RS+GpM]"], se["contextual[RS+GpM]"] = fits["RS+GpM"].coef(GPM)
    est["gammaB[GpMC+GpM]"], se["gammaB[GpMC+GpM]"] = fits["GpMC+GpM"].coef(GPM)
    for f in FORMS:
        est[f"dev[{f}]"] = fits[f].deviance
    for a, b in PAIRS:
        da, db = fits[a].deviance, fits[b].deviance
        est[f"dev_rel[{pair_name(a, b)}]"] = (da - db) / max(1.0, abs(db))
    t_rs, t_gmc = fits["RS"].T, fits["GMC"].T
    if t_rs is None or t_gmc is None:
        est[f"Tmap_err[{pair_name('RS', 'GMC')}]"] = math.nan
    else:
        xbar = float(data[X].mean())
        A = np.array([[1.0, -xbar], [0.0, 1.0]]) if random_slope else np.eye(1)
        err = float(np.abs(t_rs - A @ t_gmc @ A.T).max())
        est[f"Tmap_err[{pair_name('RS', 'GMC')}]"] = err
        est[f"Tmap_rel[{pair_name('RS', 'GMC')}]"] = err / _scale(fits["RS"])
    if not random_slope:
        ta, tb = fits["RS+GpM"].T, fits["GpMC+GpM"].T
        err = math.nan if ta is None or tb is None else float(abs(ta[0, 0] - tb[0, 0]))
        est[f"Tmap_err[{pair_name('RS+GpM', 'GpMC+GpM')}]"] = err
        est[f"Tmap_rel[{pair_name('RS+GpM', 'GpMC+GpM')}]"] = err / _scale(fits["RS+GpM"])
        est["weightB[RS]"] = _between_weight(data, fits["RS"])
    for f in FORMS:
        est[f"flags[{f}]"] = float(fits[f].code)
    ok = [fits[f] for f in FORMS if fits[f].error is None]
    failed = len(ok) < len(FORMS)
    messages = [f"{f}: {m}" for f in FORMS for m in fits[f].messages]
    messages += [f"{f}: failed: {fits[f].error}" for f in FORMS if fits[f].error is not None]
    return Estimates(est, se=se,
                     converged=not failed and all(bool(x.flags[0]) for x in ok),
                     singular=any(bool(x.flags[1]) for x in ok),
                     hessian_pd=all(bool(x.flags[2]) for x in ok),
                     identifiable=all(bool(x.flags[3]) for x in ok),
                     messages=messages)


class FiveForms:
    """The five centering forms of x fitted by ML to one data set, as one study method.

    ``FiveForms(random_slope=False)`` fits ``y ~ x + (1 | g)`` and its four other forms
    (method RI); ``random_slope=True`` gives each form a random slope of its level-1
    variable (method RS). Calling it fits each form with ``mlmsim.fit``; the runner uses
    :meth:`fit_batch` (``mlmsim.fit_batch`` per form over a batch of up to ``batch_size``
    replicates; a replicate's fits do not depend on its batch) unless ``batch`` is False.
    """

    takes_rng = False

    def __init__(self, random_slope: bool, *, batch: bool = True, batch_size: int = 256):
        self.random_slope = bool(random_slope)
        self.name = "RS" if self.random_slope else "RI"
        self.forms = centered_forms(FORMULA, X, random_slope=self.random_slope)
        self.batch = bool(batch)
        self.batch_size = int(batch_size)

    def formulas(self) -> dict[str, str]:
        return dict(self.forms.items())

    def __call__(self, data: pd.DataFrame):
        data = add_centered(data, X, GROUP)
        fits = {}
        for f in FORMS:
            try:
                fits[f] = _FormFit.of_result(fit(self.forms[f], data, method="ML"))
            except Exception as exc:  # noqa: BLE001 - a failed form is recorded, not raised
                fits[f] = _FormFit(error=f"{type(exc).__name__}: {exc}")
        return _quantities(fits, data, self.random_slope)

    @property
    def fit_batch(self):
        """``fit_batch(datasets) -> list of Estimates``, or None when batching is off."""
        return self._fit_batch if self.batch else None

    def _fit_batch(self, datasets: list) -> list:
        datas = [add_centered(d, X, GROUP) for d in datasets]
        fits = {f: self._form_fits(f, datas) for f in FORMS}
        return [_quantities({f: fits[f][r] for f in FORMS}, d, self.random_slope)
                for r, d in enumerate(datas)]

    def _form_fits(self, form: str, datas: list) -> list[_FormFit]:
        """One form fitted by ML to each data set: together, or one data set at a time
        where the batch cannot be fitted together, so that no fit depends on its batch."""
        def together(ds: list) -> list[_FormFit]:
            b = fit_batch(self.forms[form], ds, method="ML")
            return [_FormFit.of_batch(b, r) for r in range(len(ds))]

        return each_alone_if_needed(
            together, datas, lambda exc: _FormFit(error=f"{type(exc).__name__}: {exc}"))

    def descriptor(self) -> dict:
        return {"formulas": self.formulas(), "method": "ML", "batch": self.batch,
                "records": RECORD_VERSION}

    def __repr__(self) -> str:
        return f"FiveForms(random_slope={self.random_slope})"


def build(options: RunOptions | None = None):
    """The :class:`mlmsim.Study` (16 conditions x replicates x methods RI and RS)."""

    options = options or RunOptions()
    reps = options.reps or (QUICK_REPS if options.quick else FULL_REPS)
    return Study(CONDITIONS, FromSpec(model_spec, n_groups="J", group_size="nj"),
                 {"RI": FiveForms(False), "RS": FiveForms(True)}, truth=truth,
                 n_reps=reps, seed=options.seed)


def run(out_dir: Path, options: RunOptions | None = None) -> None:
    """Run the replicates into ``out_dir/records``, then :func:`report`."""
    options = options or RunOptions()
    out_dir = Path(out_dir)
    options.run(build(options), out_dir / "records", "centering")
    report(out_dir)


# ---- report ----------------------------------------------------------------------------------

COND_VARS = list(CONDITIONS)


def _load(out_dir: Path):
    """The study's records, limited to the replicates of its latest run (``n_reps``)."""

    records = out_dir / "records"
    manifest = json.loads((records / MANIFEST).read_text(encoding="utf-8"))
    return load_study(records, n_reps=int(manifest["n_reps"]))


def per_replicate(rec: pd.DataFrame) -> pd.DataFrame:
    """One row per condition x replicate x model type, one column per recorded quantity
    (the estimates), with ``error`` (the method call raised) beside them."""
    keys = ["condition", *COND_VARS, "rep", "method"]
    wide = rec.set_index([*keys, "parameter"])["estimate"].unstack("parameter")
    wide.columns.name = None
    err = rec.drop_duplicates(keys).set_index(keys)["error"]
    return wide.join(err.notna().rename("error")).reset_index()


def _flag(wide: pd.DataFrame, form: str, name: str) -> pd.Series:
    code = wide[f"flags[{form}]"].fillna(FLAG_BITS["failed"]).astype(int)
    return (code & FLAG_BITS[name]) > 0


def deviance_table(wide: pd.DataFrame) -> pd.DataFrame:
    """Per model type, pair and contextual effect (and overall): the distribution of
    |relative deviance difference| over the replicates; for pairs that are not equivalent
    also how many replicates fall below 1e-6 with both fits singular."""
    rows = []
    for method in ("RI", "RS"):
        w = wide[wide.method == method]
        for a, b in PAIRS:
            col = f"dev_rel[{pair_name(a, b)}]"
            for ctx in ["all", *sorted(w.contextual.unique())]:
                sub = w if ctx == "all" else w[w.contextual == ctx]
                v = sub[col].abs().to_numpy(dtype=float)
                fin = np.isfinite(v)
                vf = v[fin] if fin.any() else np.array([math.nan])
                small = fin & (v <= TOL)
                both = (_flag(sub, a, "singular") & _flag(sub, b, "singular")).to_numpy()
                diff = sub[f"dev[{a}]"] - sub[f"dev[{b}]"]
                rows.append({
                    "model": method, "pair": pair_name(a, b),
                    "equivalent": (a, b) in EQUIVALENT[method],
                    "contextual": ctx if ctx == "all" else f"{ctx:g}",
                    "replicates": int(fin.sum()), "missing": int((~fin).sum()),
                    "min": vf.min(), "q05": np.quantile(vf, 0.05), "median": np.median(vf),
                    "q95": np.quantile(vf, 0.95), "max": vf.max(),
                    "above_1e-6": int((v[fin] > TOL).sum()),
                    "at_most_1e-6_both_singular": int((small & both).sum()),
                    "median_abs_deviance_diff": float(diff.abs().median()),
                    "share_a_lower": float((diff < 0).mean()),
                })
    return pd.DataFrame(rows)


def tmap_table(wide: pd.DataFrame) -> pd.DataFrame:
    """Per model type and checked pair: absolute and relative T-map errors, overall and
    for the replicates where neither fit is singular."""
    rows = []
    for method in ("RI", "RS"):
        w = wide[wide.method == method]
        pairs = [("RS", "GMC")] + ([("RS+GpM", "GpMC+GpM")] if method == "RI" else [])
        for a, b in pairs:
            name = pair_name(a, b)
            regular = ~(_flag(w, a, "singular") | _flag(w, b, "singular"))
            for subset, sub in (("all", w), ("neither singular", w[regular])):
                err = sub[f"Tmap_err[{name}]"].to_numpy(dtype=float)
                rel = sub[f"Tmap_rel[{name}]"].to_numpy(dtype=float)
                fin = np.isfinite(err)
                if not fin.any():
                    continue
                rows.append({"model": method, "pair": name, "fits": subset,
                             "replicates": int(fin.sum()), "missing": int((~fin).sum()),
                             "median": np.median(err[fin]),
                             "q99": np.quantile(err[fin], 0.99), "max": err[fin].max(),
                             "max_relative": np.nanmax(rel)})
    return pd.DataFrame(rows)


def flag_table(wide: pd.DataFrame) -> pd.DataFrame:
    """Per model type, true slope variance and form: fits and how many were flagged (a
    replicate whose method call raised counts as failed in all five forms)."""
    rows = []
    for (method, tau11), w in wide.groupby(["method", "tau11"], sort=True):
        for f in FORMS:
            rows.append({"model": method, "tau11": f"{tau11:g}", "form": f, "fits": len(w),
                         **{name: int(_flag(w, f, name).sum()) for name in FLAG_BITS}})
    return pd.DataFrame(rows)


def within_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model type, condition and estimate of gamma_W (and of the contextual and the
    between effect): bias, empirical SE, model SE, relative error and coverage with MCSEs."""
    keep = summary[summary.parameter.str.startswith(("gammaW[", "contextual[", "gammaB["))
                   & summary.measure.isin(["bias", "empse", "modse", "cover", "relerror"])]
    wide = keep.pivot_table(index=["method", *COND_VARS, "parameter"], columns="measure",
                            values=["estimate", "mcse"], sort=False)
    wide.columns = [m if s == "estimate" else f"{m}_mcse" for s, m in wide.columns]
    order = [c for m in ("bias", "empse", "modse", "relerror", "cover")
             for c in (m, f"{m}_mcse") if c in wide.columns]
    return wide[order].reset_index()


def mixing_table(wide: pd.DataFrame) -> pd.DataFrame:
    """RI fits of RS: mean estimate of gamma_W against gamma_W + mean(w) (gamma_B - gamma_W),
    per condition (w = ``weightB[RS]``, module docstring)."""
    rows = []
    ri = wide[wide.method == "RI"]
    for key, part in ri.groupby(COND_VARS, sort=True):
        cond = dict(zip(COND_VARS, key, strict=True))
        est = part["gammaW[RS]"].dropna()
        mean, mcse = est.mean(), est.std(ddof=1) / math.sqrt(len(est))
        w = part["weightB[RS]"].mean()
        pred = GAMMA_W + w * cond["contextual"]
        rows.append({"J": int(cond["J"]), "n": int(cond["nj"]),
                     "contextual": f"{cond['contextual']:g}", "tau11": f"{cond['tau11']:g}",
                     "mean w": w, "mean estimate": mean, "mcse": mcse,
                     "predicted": pred, "z": (mean - pred) / mcse})
    return pd.DataFrame(rows)


def _design_label(J, nj) -> str:
    return f"J{int(J)}/n{int(nj):02d}"


def _boxes(ax, values: list[np.ndarray], positions: list[float], color, width: float) -> None:
    """Box plots on a log axis: quartiles, whiskers at the min and max (zeros at FLOOR)."""
    data = [np.clip(np.abs(v[np.isfinite(v)]), FLOOR, None) for v in values]
    box = ax.boxplot(data, positions=positions, widths=width, whis=(0, 100), showfliers=False,
                     patch_artist=True, manage_ticks=False)
    for patch in box["boxes"]:
        patch.set_facecolor(color)
    for line in box["medians"]:
        line.set_color("black")


def _deviance_figure(wide: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), width_ratios=[3, 3, 2.2])
    order = [pair_name(a, b) for a, b in PAIRS]
    contexts = sorted(wide.contextual.unique())
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for ax, method in zip(axes[:2], ["RI", "RS"], strict=True):
        w = wide[wide.method == method]
        for k, ctx in enumerate(contexts):
            off = (k - (len(contexts) - 1) / 2) * 0.35
            _boxes(ax, [w.loc[w.contextual == ctx, f"dev_rel[{p}]"].to_numpy(dtype=float)
                        for p in order], [i + off for i in range(len(order))], colors[k], 0.3)
        ax.set_yscale("log")
        ax.set_xticks(range(len(order)), order, fontsize=8)
        ax.axhline(TOL, color="firebrick", linestyle="--", linewidth=0.9)
        ax.text(len(order) - 0.55, TOL * 2, "1e-6", color="firebrick", ha="right", va="bottom",
                fontsize=8)
        eq = [p for p in order if tuple(p.split(" vs ")) in EQUIVALENT[method]]
        ax.set_title(f"{method} models; equivalent: {', '.join(eq)}", fontsize=9)
        ax.set_ylabel("|relative deviance difference|")
        ax.legend([Patch(facecolor=colors[k]) for k in range(len(contexts))],
                  [f"{c:g}" for c in contexts], title="contextual effect", fontsize=8,
                  title_fontsize=8, loc="center left")
    checks = (("RI", pair_name("RS", "GMC")), ("RI", pair_name("RS+GpM", "GpMC+GpM")),
              ("RS", pair_name("RS", "GMC")))
    _boxes(axes[2], [wide.loc[wide.method == m, f"Tmap_err[{p}]"].to_numpy(dtype=float)
                     for m, p in checks], list(range(len(checks))), "0.75", 0.5)
    axes[2].set_yscale("log")
    axes[2].set_xticks(range(len(checks)), [f"{m}:\n{p}" for m, p in checks], fontsize=7)
    axes[2].set_title("T map: max |T_RS - A T_GMC A'|\n(RI models: |tau0^2 difference|)",
                      fontsize=9)
    axes[2].set_ylabel("absolute error")
    fig.suptitle("Per replicate, all conditions (boxes: quartiles; whiskers: min and max; "
                 f"exact zeros drawn at {FLOOR:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)  # 1800 px wide: readable at 100% zoom
    plt.close(fig)


def _within_figures(summary: pd.DataFrame, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    part = summary[summary.parameter.isin([f"gammaW[{f}]" for f in FORMS])].copy()
    part.insert(1, "design", [_design_label(J, n) for J, n in zip(part.J, part.nj, strict=True)])
    part = part.drop(columns=["J", "nj"])
    for method in ("RI", "RS"):
        for measure in ("bias", "cover"):
            name = f"{measure}_within_{method}.png"
            grid = plot_measure(part[part.method == method], measure, "design", hue="parameter",
                                col="contextual", row="tau11", sharey=True, height=2.8,
                                aspect=1.5, path=out_dir / name)
            plt.close(grid.figure)
            names.append(name)
    return names


def report(out_dir: Path) -> None:
    """CSV tables, PNG figures and report.md from the saved records (no refitting)."""
    out_dir = Path(out_dir)
    result = _load(out_dir)
    columns = ["condition", *COND_VARS, "rep", "method", "parameter", "estimate", "error"]
    wide = per_replicate(pd.concat(list(result.iter_records(columns)), ignore_index=True))
    summary = result.summarise()
    keep = ~summary.parameter.str.startswith(("flags[", "dev["))
    summary[keep].to_csv(out_dir / "summary.csv", index=False)
    tables = {"deviance_differences": deviance_table(wide), "tmap": tmap_table(wide),
              "fit_flags": flag_table(wide), "within_effect": within_table(summary),
              "mixing": mixing_table(wide)}
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
    _deviance_figure(wide, out_dir / "deviance_differences.png")
    figures = _within_figures(summary, out_dir)
    text = _markdown(wide, summary, tables, figures, result.n_reps, out_dir)
    (out_dir / "report.md").write_text(text, encoding="utf-8")


# ---- report.md -------------------------------------------------------------------------------

def _e(x: float) -> str:
    """A small number as 1.2e-16 (0 and NaN plainly)."""
    return "0" if x == 0 else ("—" if not np.isfinite(x) else f"{x:.1e}")


def _markdown(wide, summary, tables, figures, n_reps, out_dir=None) -> str:
    n_cond = wide.condition.nunique()
    doc = __doc__.split("ADEMP", 1)[1].split(":", 1)[1].split("\nRecords", 1)[0].strip()
    ran, _ = run_lines({"centering": summary}, CONDITIONS, FULL_REPS,
                       "mlmsim study run centering", out_dir)
    lines = [f"# {TITLE}", "", *ran, "## Design (ADEMP)", "", doc, "",
             f"{n_cond} conditions x {n_reps} replicates x 2 model types x 5 forms = "
             f"{n_cond * n_reps * 10} ML fits. Every fit is kept: singular, non-PD and "
             "unconverged fits count in every measure, and a failed fit is counted, never "
             "dropped or redrawn. Monte Carlo SEs in parentheses.", ""]
    lines += _equivalence_section(wide, tables["deviance_differences"], tables["tmap"])
    lines += _within_section(wide, summary, tables["mixing"])
    lines += _flags_section(wide, tables["fit_flags"])
    lines += ["## Files", "",
              "- `deviance_differences.csv`, `deviance_differences.png`: the relative deviance "
              "differences per model type, pair and contextual effect (min, quantiles, max), "
              "and the T-map errors; `tmap.csv`: the T-map errors.",
              "- `within_effect.csv`: bias, empirical SE, model SE, relative error of the model "
              "SE and coverage (each with its MCSE) of every estimate of gamma_W, of the "
              "contextual effect and of gamma_B, per condition; `mixing.csv`: the RS "
              "random-intercept estimate against its GLS mixing weight; `summary.csv`: all "
              "measures (`mlmsim.summarise`; bias of `dev_rel[...]` and `Tmap_err[...]` is "
              "their mean, against a truth of 0 where the pair is equivalent for both model "
              "types); `fit_flags.csv`: flagged fits per form.",
              "- " + ", ".join(f"`{f}`" for f in figures) + ": bias and coverage of each "
              "form's estimate of gamma_W (bias +- 1.96 MCSE, coverage with 95% Wilson "
              "intervals) by design (J/n), contextual effect (columns) and true slope "
              "variance tau11 (rows).", ""]
    return "\n".join(lines) + "\n"


def _equivalence_section(wide: pd.DataFrame, dev: pd.DataFrame, tmap: pd.DataFrame) -> list[str]:
    out = ["## Equivalence: deviance differences and the T map", ""]
    allrows = dev[dev.contextual == "all"]
    eq, neq = allrows[allrows.equivalent], allrows[~allrows.equivalent]
    gp = neq[neq.pair == pair_name("RS", "GpMC")]
    ok = bool((eq["max"] < TOL).all() and (eq["missing"] == 0).all())
    out += [f"**Acceptance (equivalent pairs have relative deviance differences below 1e-6 in "
            f"every replicate): {'met' if ok else 'NOT met'}.** The relative difference is "
            "(dev_a - dev_b) / max(1, |dev_b|), dev = -2 log L of the ML fit.", ""]
    for _, r in eq.iterrows():
        out.append(f"- {r.model} models, {r.pair} (equivalent): largest |relative deviance "
                   f"difference| over all {r.replicates} replicates {_e(r['max'])} (median "
                   f"{_e(r['median'])}); {r['above_1e-6']} replicates above 1e-6"
                   + (f"; {r.missing} without a value" if r.missing else "") + ".")
    for _, r in neq.iterrows():
        below = r.replicates - r['above_1e-6']
        note = ""
        if below:
            note = (f"; the {below} at or below 1e-6 include {r['at_most_1e-6_both_singular']} "
                    "where both fits are singular")
        a = r.pair.split(" vs ")[0]
        out.append(f"- {r.model} models, {r.pair} (not equivalent): median {_e(r['median'])}, "
                   f"5% to 95% {_e(r.q05)} to {_e(r.q95)}, smallest {_e(r['min'])}; "
                   f"{r['above_1e-6']} of {r.replicates} replicates above 1e-6{note}; median "
                   f"|deviance difference| {fmt(r.median_abs_deviance_diff, 3)}; {a} has the "
                   f"lower deviance in {r.share_a_lower:.1%} of the replicates.")
    out.append("")
    for _, r in tmap.iterrows():
        what = ("max |T_RS - A T_GMC A'|, A = [[1, -xbar], [0, 1]]" if r.model == "RS"
                else "|tau0^2 difference| (A = 1)")
        out.append(f"- T map, {r.model} models, {r.pair}, {r.fits} fits ({r.replicates} "
                   f"replicates): {what} at most {_e(r['max'])} (99th percentile {_e(r.q99)}, "
                   f"median {_e(r['median'])}); relative to the largest variance parameter at "
                   f"most {_e(r.max_relative)}.")
    rs = tmap[(tmap.model == "RS") & (tmap.fits == "all")]
    rs_eq = eq[eq.model == "RS"]
    if len(rs) and len(rs_eq):
        out += ["", f"The deviances of the RS and GMC random-slope fits agree to "
                f"{_e(rs_eq['max'].iloc[0])} while their T matrices agree through the map to "
                f"{_e(rs['max'].iloc[0])}: the deviance is flat (quadratic) at the optimum, so "
                "two fits that stop within the optimiser's tolerance of the same optimum "
                "differ in the parameters by about the square root of their difference in "
                "deviance. The map itself is exact (`mlmsim.analysis.centering.equivalence`)."]
    out += ["", "| model | pair | equivalent | contextual | replicates | min | 5% | median "
            "| 95% | max | > 1e-6 |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for _, r in dev.iterrows():
        out.append(f"| {r.model} | {r.pair} | {'yes' if r.equivalent else 'no'} | "
                   f"{r.contextual} | {r.replicates} | {_e(r['min'])} | {_e(r.q05)} | "
                   f"{_e(r['median'])} | {_e(r.q95)} | {_e(r['max'])} | {r['above_1e-6']} |")
    out += ["", "![deviance differences and T maps](deviance_differences.png)", "",
            "RS and GMC are one model with a random intercept and with a random slope; RS+GpM "
            "and GpMC+GpM are one model with a random intercept only: their deviances differ "
            f"by rounding (at most {_e(eq['max'].max())} relative). GpMC is never RS: it takes "
            "the between-group variation of x out of the fixed part (RS forces the between "
            "effect to equal the within effect, GpMC forces it to 0). The two models are not "
            "nested, so their deviance difference is a continuous quantity of either sign "
            "that lands near 0 only by chance: "
            f"{int((gp.replicates - gp['above_1e-6']).sum())} of {int(gp.replicates.sum())} "
            "replicates at or below 1e-6 relative over both model types. With a random "
            "slope of x - xbar_j, RS+GpM and GpMC+GpM have the same fixed part but different "
            "random parts; where both slope variances are estimated at 0 (singular fits) both "
            "collapse to the same random-intercept model and the difference vanishes.", ""]
    return out


def _cellv(summary, method, parameter, measure, cond, n: bool = False) -> tuple[float, float]:
    """(estimate, MCSE) of one summary cell, or (estimate, n) with ``n=True`` (for a
    proportion, printed with its Wilson interval)."""
    s = summary[(summary.method == method) & (summary.parameter == parameter)
                & (summary.measure == measure)]
    for k, v in cond.items():
        s = s[s[k] == v]
    return float(s.estimate.iloc[0]), float(s["n" if n else "mcse"].iloc[0])


def _within_section(wide: pd.DataFrame, summary: pd.DataFrame, mixing: pd.DataFrame
                    ) -> list[str]:
    out = ["## The within-group effect gamma_W", "",
           f"gamma_W = {GAMMA_W:g} in every condition. Without xbar_j in the fixed part, RS "
           "and GMC estimate a precision-weighted mix of gamma_W and gamma_B; GpMC, RS+GpM and "
           "GpMC+GpM target gamma_W.", ""]
    ident = []
    for method, a, b in (("RI", "RS", "GMC"), ("RS", "RS", "GMC"),
                         ("RI", "GpMC", "GpMC+GpM"), ("RI", "RS+GpM", "GpMC+GpM")):
        w = wide[wide.method == method]
        d = (w[f"gammaW[{a}]"] - w[f"gammaW[{b}]"]).abs().max()
        ident.append(f"{method} {a} and {b} {_e(d)}")
    out += ["- The same estimates up to the optimiser's precision (largest |difference| over "
            "all replicates): "
            + "; ".join(ident) + ". RS = GMC and RS+GpM = GpMC+GpM are reparameterisations; "
            "in balanced data the random-intercept GpMC estimate is also the within-group "
            "(OLS) estimator b_W, with or without xbar_j, because x - xbar_j is orthogonal to "
            "every group-level column."]
    conds = summary[COND_VARS].drop_duplicates().sort_values(["tau11", "contextual", "J", "nj"])
    target = ("GpMC", "RS+GpM", "GpMC+GpM")
    for method in ("RI", "RS"):
        bias = summary[(summary.method == method) & (summary.measure == "bias")]
        tgt = bias[bias.parameter.isin([f"gammaW[{f}]" for f in target])]
        worst = tgt.loc[tgt.estimate.abs().idxmax()]
        z = (tgt.estimate / tgt.mcse).abs()
        out.append(f"- {method} models, GpMC, RS+GpM and GpMC+GpM (target gamma_W): largest "
                   f"|bias| over the {len(conds)} conditions "
                   f"{with_mcse(worst.estimate, worst.mcse)} ({worst.parameter}, J = "
                   f"{worst.J}, n = {worst.nj}, contextual {worst.contextual:g}, tau11 "
                   f"{worst.tau11:g}); |bias| / MCSE at most {z.max():.2f} ({int((z > 3).sum())} "
                   f"of {len(z)} cells above 3).")
        rs = bias[bias.parameter == "gammaW[RS]"]
        for ctx in sorted(rs.contextual.unique()):
            part = rs[rs.contextual == ctx]
            lo, hi = part.loc[part.estimate.idxmin()], part.loc[part.estimate.idxmax()]
            out.append(f"- {method} models, RS = GMC, contextual effect {ctx:g}: bias "
                       f"{with_mcse(lo.estimate, lo.mcse)} (J = {lo.J}, n = {lo.nj}, tau11 "
                       f"{lo.tau11:g}) to {with_mcse(hi.estimate, hi.mcse)} (J = {hi.J}, n = "
                       f"{hi.nj}, tau11 {hi.tau11:g}).")
    cover = summary[(summary.measure == "cover") & summary.parameter.isin(
        [f"gammaW[{f}]" for f in target])]
    for method in ("RI", "RS"):
        for tau11 in sorted(cover.tau11.unique()):
            c = cover[(cover.method == method) & (cover.tau11 == tau11)]
            lo, hi = c.loc[c.estimate.idxmin()], c.loc[c.estimate.idxmax()]
            out.append(f"- Coverage of 95% Wald intervals for gamma_W ({method} models, "
                       f"GpMC, RS+GpM, GpMC+GpM), tau11 = {tau11:g} [95% Wilson interval]: "
                       f"{with_interval(lo.estimate, lo.n)} ({_where(lo)}) to "
                       f"{with_interval(hi.estimate, hi.n)} ({_where(hi)}).")
    mean_cover = cover.groupby(["method", "tau11"]).estimate.mean()
    out += ["", "Mean coverage over the conditions and the three forms: "
            + "; ".join(f"{m} models, tau11 = {t:g}: {v:.3f}" for (m, t), v in mean_cover.items())
            + ". Expected from theory: a random-intercept model's SE of gamma_W leaves out the "
            "slope variance, so with tau11 = 1 its intervals should be too narrow. Observed, "
            "pooled over the conditions for GpMC+GpM (one form, as the three share their data "
            "sets), against the nominal 0.95: " + _pooled_cover(cover) + ".", ""]
    z = mixing.z.abs()
    out += ["In RS and GMC random-intercept fits the estimate is exactly "
            "(1 - w) b_W + w b_B (module docstring): its mean is gamma_W + mean(w) "
            f"(gamma_B - gamma_W) to within Monte Carlo error (|z| at most {z.max():.2f} over "
            f"{len(z)} conditions). The weight w of the between-group estimator is about "
            f"{mixing[mixing.n == mixing.n.min()]['mean w'].mean():.2f} with n = "
            f"{int(mixing.n.min())} and {mixing[mixing.n == mixing.n.max()]['mean w'].mean():.2f}"
            f" with n = {int(mixing.n.max())}: the larger the groups, the more the within "
            "information dominates and the smaller the bias.", ""]
    show = mixing.assign(**{"mean estimate (MCSE)": [
        with_mcse(m, s, 4) for m, s in zip(mixing["mean estimate"], mixing.mcse, strict=True)],
        "predicted": mixing.predicted.map(lambda v: f"{v:.4f}"),
        "mean w": mixing["mean w"].map(lambda v: f"{v:.3f}"),
        "z": mixing.z.map(lambda v: f"{v:.2f}")})
    out += [markdown_table(show[["J", "n", "contextual", "tau11", "mean w",
                                 "mean estimate (MCSE)", "predicted", "z"]]), ""]
    for method in ("RI", "RS"):
        rows = []
        for _, c in conds.iterrows():
            cond = {k: c[k] for k in COND_VARS}
            row = {"J": int(c.J), "n": int(c.nj), "contextual": f"{c.contextual:g}",
                   "tau11": f"{c.tau11:g}"}
            for f in FORMS:
                if f == "GMC":
                    continue
                b = _cellv(summary, method, f"gammaW[{f}]", "bias", cond)
                cv = _cellv(summary, method, f"gammaW[{f}]", "cover", cond, n=True)
                row[f"{f} bias"] = with_mcse(*b, 2)
                row[f"{f} cover"] = with_interval(*cv, 3)
            rows.append(row)
        out += [f"### {method} models: bias (MCSE) and coverage [95% Wilson interval] for "
                "gamma_W (GMC = RS)", "",
                markdown_table(pd.DataFrame(rows)), "",
                f"![bias {method}](bias_within_{method}.png)", ""]
    out += _context_lines(summary)
    return out


def _pooled_cover(cover: pd.DataFrame) -> str:
    """Coverage of GpMC+GpM pooled over the conditions, per model type and tau11, and for
    the random-slope models with the fewest groups, each with its direction against 0.95
    claimed only where its Wilson interval excludes 0.95."""
    words = {"reference": 0.95, "above": "above nominal", "below": "below nominal",
             "neither": "not clearly different from nominal"}
    c = cover[cover.parameter == "gammaW[GpMC+GpM]"]
    parts = []

    def pooled(part: pd.DataFrame, label: str) -> None:
        n = float(part.n.sum())
        if n > 0:
            p = float((part.estimate * part.n).sum()) / n
            parts.append(f"{label} {proportion_direction(p, n, **words)}")

    for (method, tau11), part in c.groupby(["method", "tau11"], sort=True):
        pooled(part, f"{method} models, tau11 = {tau11:g}:")
    rs = c[c.method == "RS"]
    if len(rs):
        few = rs[rs.J == rs.J.min()]
        pooled(few, f"RS models with J = {int(rs.J.min())}:")
    return "; ".join(parts)


def _where(row: pd.Series) -> str:
    """Where a summary row is: form, J, n and contextual effect."""
    form = row.parameter[row.parameter.index("[") + 1:-1]
    return f"{form}, J = {row.J}, n = {row.nj}, contextual {row.contextual:g}"


def _context_lines(summary: pd.DataFrame) -> list[str]:
    out = ["### The contextual and the between-group effect", ""]
    for method in ("RI", "RS"):
        for par, what in (("contextual[RS+GpM]", "contextual effect gamma_B - gamma_W "
                           "(coefficient of xbar_j in RS+GpM)"),
                          ("gammaB[GpMC+GpM]", "between-group effect gamma_B (coefficient of "
                           "xbar_j in GpMC+GpM)")):
            sel = (summary.method == method) & (summary.parameter == par)
            b = summary[sel & (summary.measure == "bias")]
            c = summary[sel & (summary.measure == "cover")]
            w = b.loc[b.estimate.abs().idxmax()]
            out.append(f"- {method} models, {what}: largest |bias| "
                       f"{with_mcse(w.estimate, w.mcse)} (J = {w.J}, n = {w.nj}); |bias| / "
                       f"MCSE at most {(b.estimate / b.mcse).abs().max():.2f}; coverage "
                       f"{c.estimate.min():.3f} to {c.estimate.max():.3f}.")
    out.append("")
    return out


def _flags_section(wide: pd.DataFrame, flags: pd.DataFrame) -> list[str]:
    total = flags.groupby("model")[["fits", *FLAG_BITS]].sum()
    out = ["## Fits: singular, non-PD, unconverged, failed", ""]
    for method, r in total.iterrows():
        out.append(f"- {method} models: {int(r.fits)} fits, {int(r['singular'])} singular, "
                   f"{int(r['non-PD Hessian'])} with a non-PD Hessian, "
                   f"{int(r['not converged'])} not converged, {int(r['not identifiable'])} "
                   f"not identifiable, {int(r['failed'])} failed.")
    out.append(f"- Replicates whose method call raised (all five forms lost): "
               f"{int(wide.error.sum())}.")
    for method in ("RI", "RS"):
        w = wide[wide.method == method]
        differ = int((w["flags[RS]"] != w["flags[GMC]"]).sum())
        out.append(f"- {method} models: the RS and GMC fits (one model) carry the same flags in "
                   f"{len(w) - differ} of {len(w)} replicates"
                   + ("." if not differ else
                      "; where they differ, the Hessian's positive definiteness is decided by "
                      "a relative eigenvalue threshold, which a reparameterisation moves."))
    rs = flags[flags.model == "RS"]
    sing0 = int(rs[rs.tau11 == "0"].singular.sum())
    sing = int(rs.singular.sum())
    if sing:
        out.append(f"- Of the {sing} singular random-slope fits, {sing0} "
                   f"({sing0 / sing:.0%}) are fits to data without a slope variance "
                   "(tau11 = 0), where the estimate belongs on the boundary.")
    out += ["", markdown_table(flags), ""]
    return out
