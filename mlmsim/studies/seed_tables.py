"""Seed tables: the seed's HSB and NELS-88 ML fits, refitted, beside its printed numbers.

The seed lecture (shared/seed/) prints SAS PROC MIXED and R lme4 output for a
sequence of HSB and NELS-88 models and for the five centering forms (RS, GMC,
GpMC, RS + GpM, GpMC + GpM). ``seed_sas.json`` beside this file transcribes
every printed number of those ML fits, as printed. :func:`run` refits every
model with :func:`mlmsim.fit` (method "ML") and compares each printed number
with mlmsim's at the seed's precision: a number *agrees* when mlmsim's value
rounds to it, or lies within one unit of its last printed digit.

Where a number disagrees, the record carries a one-line explanation, and the
explanation is checked, never just asserted:

* SAS's optimum differs from lme4's (and mlmsim's) in the third or fourth
  significant digit of some variance estimates: the quantity is recomputed at
  SAS's printed covariance parameters phi = (T elements, sigma^2) -- gamma(phi)
  by GLS, SEs from the Hessian of -2 log L in phi -- and must give the printed
  value there (or the printed value must lie between the values at the two
  points), while -2 log L at SAS's point is not below mlmsim's.
* The seed's own slips (a table from another run, a shifted cell, a dropped
  sign or digit, arithmetic on rounded numbers) name a check in the JSON that
  is verified on the refitted models (``other_model``, ``negated``,
  ``scaled``, ``typo``, ``seed_arithmetic``, ``reference``).
* SAS's containment df for the intercept in the HSB random-slope models is the
  rank contribution of the random intercept alone, J - rank(level-2 columns).

No simulation: ``options`` (reps, jobs, quick) do not change anything; a run
takes a few seconds.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

import mlmsim
from mlmsim.engine.evaluate import evaluate

__all__ = ["TITLE", "run", "report", "load_seed", "model_data"]

TITLE = "Seed tables: the seed's HSB and NELS-88 ML fits refitted beside its SAS and lme4 numbers"

RECORDS = "seed_fits.csv"
MODELS = "seed_models.csv"
# -2 log L at SAS's printed point may exceed mlmsim's optimum by this much and
# still be "the same flat optimum" (SAS's convergence criterion is on the
# relative change of -2LL; its printed 4-digit estimates add rounding).
FLAT_OPTIMUM = 0.01


# ---- the transcription ------------------------------------------------------------------

def load_seed() -> dict:
    """The transcription ``seed_sas.json`` (models, data, tables; see its conventions)."""
    text = resources.files(__package__).joinpath("seed_sas.json").read_text(encoding="utf-8")
    return json.loads(text)


def model_data(seed: dict, name: str) -> pd.DataFrame:
    """Data set ``name`` ("hsb" or "nels88") with the derived columns of ``seed['data']``.

    grand_mean_centred: x - mean(x); group_mean: xbar_j; group_mean_centred: x - xbar_j.
    """
    data = mlmsim.datasets.load(name)
    spec = seed["data"][name]
    group = spec["group"]
    for col, d in spec.get("derived", {}).items():
        x = data[d["of"]].astype(float)
        gm = x.groupby(data[group]).transform("mean")
        if d["op"] == "grand_mean_centred":
            data[col] = x - x.mean()
        elif d["op"] == "group_mean":
            data[col] = gm
        elif d["op"] == "group_mean_centred":
            data[col] = x - gm
        else:
            raise ValueError(f"unknown derivation {d['op']!r} for {col}")
    return data


# ---- what a model reports: at mlmsim's optimum or at a printed point -------------------------

@dataclass
class View:
    """The quantities a printed table can show, for one model at one point phi.

    ``beta`` (p,), ``vcov`` (p, p), ``phi`` / ``phi_se`` (K,) in covparms order,
    ``T`` (q, q) as a DataFrame, ``U`` EBLUPs (J, q) as a DataFrame, ``df`` per
    ddf method, ``deviance`` = -2 log L.
    """

    where: str
    res: object
    data: pd.DataFrame
    beta: np.ndarray
    vcov: np.ndarray
    phi: np.ndarray
    phi_se: np.ndarray
    T: pd.DataFrame
    U: pd.DataFrame
    deviance: float
    df: dict = field(default_factory=dict)

    @property
    def fixed(self) -> list[str]:
        return list(self.res.fixed_names)

    @property
    def covparms(self) -> list[str]:
        return list(self.res.covparm_names)

    def ddf(self, method: str) -> np.ndarray:
        if method not in self.df:
            self.df[method] = np.asarray(self.res.ddf(method), dtype=float)
        return self.df[method]

    def scalar(self, name: str) -> float:
        r, dev = self.res, self.deviance
        k, n = r.npar, r.nobs
        counts = np.bincount(r.design.group_codes)
        table = {
            "-2LL": dev, "logLik": -dev / 2.0, "AIC": dev + 2.0 * k, "BIC": dev + math.log(n) * k,
            "df.resid": n - k, "nobs": n, "ngroups": r.ngroups, "n_covparms": len(self.phi),
            "p": len(r.fixed_names), "q": len(r.random_names), "max_n": int(counts.max()),
            "n_dropped": r.n_dropped, "n_total": n + r.n_dropped,
        }
        if name not in table:
            raise KeyError(name)
        return float(table[name])

    def value(self, param: str, stat: str, ddf: str = "containment") -> float:
        """The number ``stat`` of ``param`` (names of seed_sas.json's conventions)."""
        if "{" in param:
            if stat != "estimate":
                raise ValueError(f"an expression has only an estimate: {param}")
            return _evaluate(param, lambda nm: self.value(nm, "estimate", ddf))
        if param in self.fixed:
            i = self.fixed.index(param)
            est, se = self.beta[i], math.sqrt(self.vcov[i, i])
            df = self.ddf(ddf)[i]
            out = {"estimate": est, "se": se, "df": df, "t": est / se,
                   "p": 2.0 * sps.t.sf(abs(est / se), df) if df > 0 else math.nan}
            return float(out[stat])
        if param in self.covparms:
            i = self.covparms.index(param)
            est, se = self.phi[i], self.phi_se[i]
            z = est / se
            if stat == "sd":
                return math.sqrt(est)
            is_var = param == "sigma2" or param.startswith("var(")
            out = {"estimate": est, "se": se, "z": z,
                   "p": sps.norm.sf(z) if is_var else 2.0 * sps.norm.sf(abs(z))}
            return float(out[stat])
        m = re.fullmatch(r"(corr|vcov|corrb|datacor)\((\w+),(\w+)\)", param)
        if m:
            kind, a, b = m.groups()
            if kind == "corr":
                T = self.T
                return float(T.loc[a, b] / math.sqrt(T.loc[a, a] * T.loc[b, b]))
            if kind == "datacor":
                return float(np.corrcoef(self.data[a], self.data[b])[0, 1])
            i, j = self.fixed.index(a), self.fixed.index(b)
            v = self.vcov
            return float(v[i, j] if kind == "vcov" else v[i, j] / math.sqrt(v[i, i] * v[j, j]))
        m = re.fullmatch(r"slope\((\w+)\)\[(\w+)\]", param)
        if m:
            x, g = m.groups()
            label = _group_label(self.U.index, g)
            return float(self.beta[self.fixed.index(x)] + self.U.loc[label, x])
        m = re.fullmatch(r"mean\((\w+)\)", param)
        if m:
            return float(self.data[m.group(1)].mean())
        return self.scalar(param)


def _group_label(index: pd.Index, g: str):
    for label in index:
        if str(label) == g:
            return label
    raise KeyError(f"no group {g!r}")


_SAFE = re.compile(r"[0-9eE.+\-*/() ]*")


def _evaluate(expr: str, lookup) -> float:
    """Arithmetic on named quantities: '{var(Intercept)} / ({var(Intercept)} + {sigma2})'."""
    text = re.sub(r"\{([^}]+)\}", lambda m: f"({lookup(m.group(1).strip())!r})", expr)
    return _arith(text)


def _arith(text: str) -> float:
    """Evaluate a plain arithmetic expression of numbers: +, -, *, / and parentheses (no
    names, no powers), walked on its syntax tree rather than run."""
    if not _SAFE.fullmatch(text):
        raise ValueError(f"not plain arithmetic: {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not plain arithmetic: {text!r}") from None
    return float(_arith_node(tree.body, text))


_ARITH_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv}


def _arith_node(node: ast.AST, text: str) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        v = _arith_node(node.operand, text)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
        return _ARITH_OPS[type(node.op)](_arith_node(node.left, text),
                                         _arith_node(node.right, text))
    raise ValueError(f"not plain arithmetic: {text!r}")


def fit_view(res, data: pd.DataFrame) -> View:
    """The view at mlmsim's optimum."""
    return View("mlmsim", res, data, res.fixef.to_numpy(), res.vcov.to_numpy(), res.phi,
                res.covparms["se"].to_numpy(), res.T, res.ranef, res.deviance)


def point_view(res, data: pd.DataFrame, phi: np.ndarray, where: str) -> View:
    """The view at a given phi (e.g. SAS's printed covariance parameters).

    gamma(phi) = (X'V^{-1}X)^{-1} X'V^{-1}y with V_j = Z_j T Z_j' + sigma^2 I,
    vcov = (X'V^{-1}X)^{-1}, SEs of phi from 2 H^{-1} (H the Hessian of
    -2 log L in phi), U_j = T Z_j'V_j^{-1}(y_j - X_j gamma), -2 log L at phi: all from
    :func:`mlmsim.evaluate` (the engine's one GLS core).
    """
    ev = evaluate(res, phi=np.asarray(phi, dtype=float), method="ML")
    return View(where, res, data, ev.fixef.to_numpy(), ev.vcov.to_numpy(), ev.phi.to_numpy(),
                ev.covparm_se.to_numpy(), ev.T, ev.ranef.set_axis(res.ranef.index),
                ev.criterion)


# ---- reading printed numbers -----------------------------------------------------------------

@dataclass(frozen=True)
class Printed:
    """A printed number: its value, decimals, and whether it is an upper bound ('<.0001')."""

    text: str
    value: float
    decimals: int
    bound: bool = False
    note: bool = False

    @classmethod
    def parse(cls, text: str) -> Printed:
        s = text.strip()
        if not re.search(r"\d", s) or s.upper().startswith(("NOTE", "CONVERGENCE")):
            return cls(s, math.nan, 0, note=True)
        if s.startswith("<"):
            return cls(s, float(s[1:]), _decimals(s[1:]), bound=True)
        return cls(s, float(s), _decimals(s))

    def unit(self) -> float:
        return 10.0 ** -self.decimals

    def exact(self, x: float) -> bool:
        """mlmsim's value rounds to the printed one (or lies below a printed bound)."""
        if not np.isfinite(x):
            return False
        if self.bound:
            return x < self.value
        return abs(x - self.value) <= 0.5 * self.unit() * (1 + 1e-9) + 1e-12

    def agrees(self, x: float) -> bool:
        """exact, or within one unit of the last printed digit."""
        if self.bound or not np.isfinite(x):
            return self.exact(x)
        return self.exact(x) or abs(x - self.value) <= self.unit() * (1 + 1e-9) + 1e-12

    def format(self, x: float) -> str:
        """x printed the way the seed prints this number."""
        if not np.isfinite(x):
            return "."
        if self.bound:
            return self.text if x < self.value else f"{x:.{max(self.decimals, 4)}f}"
        out = f"{x:.{self.decimals}f}"
        if re.match(r"-?\.", self.text):  # the seed drops the leading zero here
            out = re.sub(r"^(-?)0\.", r"\1.", out)
        return out


def _decimals(s: str) -> int:
    if "e" in s.lower():
        return 0
    return len(s.split(".")[1]) if "." in s else 0


def _fmt(x: float, d: int) -> str:
    return "." if x is None or not np.isfinite(x) else f"{x:.{d}f}"


# ---- fitting and comparing --------------------------------------------------------------------

@dataclass
class Model:
    """A refitted model of the seed: spec, data, fit, and its printed points."""

    name: str
    spec: dict
    data: pd.DataFrame
    res: object
    warnings: list
    view: View
    points: dict  # software -> View at the seed's printed phi
    point_source: dict  # software -> text

    def alias(self, param: str) -> str:
        out = param
        for k, v in self.spec.get("aliases", {}).items():
            out = re.sub(rf"(?<!\w){re.escape(k)}(?!\w)", v, out)
        return out


def fit_models(seed: dict) -> dict[str, Model]:
    """Fit every model of the transcription by ML (warnings recorded, not raised)."""
    datasets = {name: model_data(seed, name) for name in seed["data"]}
    models: dict[str, Model] = {}
    for name, spec in seed["models"].items():
        data = datasets[spec["data"]]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = mlmsim.fit(spec["formula"], data, method=spec.get("method", "ML"))
        models[name] = Model(name, spec, data, res, [str(w.message) for w in caught],
                             fit_view(res, data), {}, {})
    tables = {t["id"]: t for t in seed["tables"]}
    for m in models.values():
        for software, src in m.spec.get("points", {}).items():
            values, source = _point_values(src, tables)
            phi = np.array([_lookup(values, nm, _unalias(m, nm))
                            for nm in m.res.covparm_names])
            missing = [nm for nm, v in zip(m.res.covparm_names, phi, strict=True)
                       if not np.isfinite(v)]
            if missing:
                raise ValueError(f"{m.name}: the {software} point lacks {missing}")
            m.points[software] = point_view(m.res, m.data, phi, f"{software} point")
            m.point_source[software] = source
    return models


def _lookup(values: dict, *names: str) -> float:
    for nm in names:
        if values.get(nm) is not None:
            return float(values[nm])
    return math.nan


def _unalias(m: Model, name: str) -> str:
    """The transcription's name for mlmsim's ``name`` (inverse of the model's aliases)."""
    out = name
    for k, v in m.spec.get("aliases", {}).items():
        out = re.sub(rf"(?<!\w){re.escape(v)}(?!\w)", k, out)
    return out


def _point_values(src, tables: dict) -> tuple[dict, str]:
    """{param: printed estimate} of a printed point: a table id or explicit values."""
    if isinstance(src, dict) and "values" in src:
        return dict(src["values"]), src.get("provenance", "explicit values")
    tid, column = (src["table"], src["column"]) if isinstance(src, dict) else (src, "estimate")
    t = tables[tid]
    col = t["columns"].index(column)
    values = {r[0]: r[2 + col] for r in t["rows"] if r[2 + col] is not None}
    return values, f"table {tid}" + ("" if column == "estimate" else f", column {column}")


def _columns(table: dict) -> list[tuple[str, str]]:
    out = []
    for c in table["columns"]:
        model, _, stat = c.rpartition(":")
        out.append((model or table["model"], stat))
    return out


def compare(seed: dict, models: dict[str, Model]) -> pd.DataFrame:
    """One record per printed number: the seed's value, mlmsim's, agreement, explanation."""
    rows = []
    for t in seed["tables"]:
        notes = t.get("notes", {})
        software = t["software"]
        ddf = t.get("ddf", "satterthwaite" if software == "R" else "containment")
        for row in t["rows"]:
            param_seed, label = row[0], row[1]
            for (mname, stat), colspec, text in zip(_columns(t), t["columns"], row[2:],
                                                    strict=True):
                if text is None:
                    continue
                m = models[mname]
                param = m.alias(param_seed)
                pr = Printed.parse(text)
                rec = {
                    "model": mname, "data": m.spec["data"], "formula": m.spec["formula"],
                    "table": t["id"], "section": t["section"], "software": software,
                    "param": param, "param_seed": param_seed, "label": label, "stat": stat,
                    "printed": text, "decimals": pr.decimals,
                    "seed_value": pr.value,
                }
                rec.update(_param_numbers(m.view, param, ddf))
                if pr.note:
                    said = [s for s in m.res.messages if "not positive definite" in s]
                    flagged = (not m.res.hessian_pd) and bool(said)
                    rec.update(stat="note", mlmsim=math.nan,
                               mlmsim_fmt=said[0] if said else "; ".join(m.res.messages),
                               difference=math.nan, exact=flagged, agrees=flagged)
                else:
                    x = m.view.value(param, stat, ddf)
                    rec.update(mlmsim=x, mlmsim_fmt=pr.format(x),
                               difference=(x - pr.value) if not pr.bound else math.nan,
                               exact=pr.exact(x), agrees=pr.agrees(x))
                point = m.points.get(software)
                if point is not None and not pr.note:
                    rec["at_point"] = point.value(param, stat, ddf)
                note = notes.get(f"{param_seed}|{colspec}") or notes.get("*")
                if rec["agrees"]:
                    rec.update(check="", explanation="", verified=True)
                else:
                    rec.update(_explain(rec, pr, m, models, note, ddf))
                rows.append(rec)
    return pd.DataFrame(rows)


def _param_numbers(view: View, param: str, ddf: str) -> dict:
    """mlmsim's estimate, SE and df of a fixed effect or covariance parameter."""
    if param in view.fixed:
        return {"estimate": view.value(param, "estimate"), "se": view.value(param, "se"),
                "df": view.value(param, "df", ddf)}
    if param in view.covparms:
        return {"estimate": view.value(param, "estimate"), "se": view.value(param, "se"),
                "df": math.nan}
    return {"estimate": math.nan, "se": math.nan, "df": math.nan}


def _views(m: Model, software: str) -> list[View]:
    return [m.view] + ([m.points[software]] if software in m.points else [])


def _explain(rec: dict, pr: Printed, m: Model, models: dict, note: dict | None,
             ddf: str) -> dict:
    """A one-line explanation of a disagreement, and whether a check confirms it."""
    if note:
        kind, why = note["check"], note.get("why", "")
        return {**_explain_note(rec, pr, m, models, note, ddf, kind, why), "reason": why}
    return _explain_auto(rec, pr, m, ddf)


def _explain_note(rec: dict, pr: Printed, m: Model, models: dict, note: dict, ddf: str,
                  kind: str, why: str) -> dict:
    """A disagreement the transcription explains, with its check."""
    param, stat, sw = rec["param"], rec["stat"], rec["software"]
    if kind in ("other_model", "negated", "scaled"):
        target = models[note["model"]] if kind == "other_model" else m
        tparam = target.alias(rec["param_seed"])
        sign = -1.0 if kind == "negated" else 1.0
        factor = float(note.get("factor", 1.0))
        for v in _views(target, sw):
            x = sign * v.value(tparam, stat, ddf) / factor
            if pr.agrees(x):
                if v.where == "mlmsim":
                    gives = "mlmsim's fit" + (f" of {target.name}" if target is not m else "")
                    gives += " gives"
                else:
                    y = target.view.value(tparam, stat, ddf) / factor
                    gap = v.deviance - target.view.deviance
                    gives = (f"at {sw}'s printed point of {target.name} (-2LL {gap:+.6f} from "
                             f"mlmsim's optimum, which gives {pr.format(y)}) the value is")
                what = {"other_model": f"{gives} {pr.format(x)}",
                        "negated": f"{gives} {pr.format(-x)}, the printed value with its sign "
                                   f"flipped",
                        "scaled": f"{gives} {_fmt(x * factor, pr.decimals + 1)}"
                                  f" = {factor:g} x {pr.format(x)}"}[kind]
                return _done(kind, f"{why}; {what}", True)
        return _done(kind, f"{why} (NOT confirmed: no fit reproduces {pr.text})", False)
    if kind == "typo":
        intended = Printed.parse(note["intended"])
        xs = [v.value(param, stat, ddf) for v in _views(m, sw)]
        ok = any(intended.agrees(x) for x in xs)
        also = ""
        if "expr" in note:
            y = _arith(note["expr"])
            ok = ok and intended.agrees(y)
            also = f" ({note['expr']} = {y:.{intended.decimals + 2}f})"
        return _done(kind, f"printed {pr.text} for {intended.text}: {why}{also}; mlmsim "
                           f"{intended.format(xs[0])}", ok)
    if kind == "seed_arithmetic":
        x = _arith(note["expr"])
        ok = pr.agrees(x)
        return _done(kind, f"{why}: {note['expr']} = {x:.{pr.decimals + 2}f}; mlmsim's "
                           f"unrounded fit gives {pr.format(rec['mlmsim'])}", ok)
    if kind == "reference":
        ref = Printed.parse(note["value"])
        ok = ref.agrees(rec["mlmsim"])
        return _done(kind, f"{why}; {note['source']} gives {ref.text}, as mlmsim "
                           f"({ref.format(rec['mlmsim'])})", ok)
    raise ValueError(f"unknown check {kind!r} in {rec['table']}")


def _explain_auto(rec: dict, pr: Printed, m: Model, ddf: str) -> dict:
    """A disagreement explained by SAS's containment rule or by SAS's optimum."""
    param, stat, sw = rec["param"], rec["stat"], rec["software"]
    if stat == "df" and param == "Intercept" and ddf == "containment":
        alone = _intercept_containment(m.res)
        if pr.agrees(alone):
            return _done("containment", (
                f"SAS credits the intercept to the random intercept alone: rank contribution "
                f"J - rank(level-2 columns of X) = {alone:.0f}; mlmsim counts it as contained "
                f"in every random effect and takes the smallest contribution "
                f"({rec['mlmsim']:.0f}), the rule the seed's NELS Model 2 output follows "
                f"(Intercept df 15 = white's)"), True,
                "SAS's containment df credits the intercept to the random intercept alone "
                "(J - rank of the level-2 columns of X); mlmsim takes the smallest rank "
                "contribution over all random effects")
    point = m.points.get(sw)
    if point is not None:
        x, y = rec.get("at_point", math.nan), rec["mlmsim"]
        gap = point.deviance - m.view.deviance
        flat = -1e-6 <= gap <= FLAT_OPTIMUM
        unit = pr.unit() * (1 + 1e-9)
        between = min(x, y) - unit <= pr.value <= max(x, y) + unit
        ok = (pr.agrees(x) or between) and flat
        tail = f"-2LL there is {gap:+.6f} from mlmsim's {m.view.deviance:.4f}"
        if param in m.view.covparms and stat == "estimate":
            return _done("sas_optimum", (
                f"{sw} stopped at {_fmt(x, max(pr.decimals, 4))}, mlmsim (like lme4) at "
                f"{_fmt(y, max(pr.decimals, 4))}: two points of the same flat optimum; at {sw}'s "
                f"printed covariance parameters {tail}"), ok)
        if pr.agrees(x):
            how = f"this is {_fmt(x, pr.decimals + 2)}{_rounding(pr, x)}"
        else:
            how = (f"this is {_fmt(x, pr.decimals + 2)}, and the printed value lies between "
                   f"it and mlmsim's {_fmt(y, pr.decimals + 2)}")
        rel = _max_reldiff(point, m.view)
        return _done("sas_optimum", (
            f"follows {sw}'s slightly different optimum (its variance estimates are up to "
            f"{rel:.2%} from mlmsim's): at {sw}'s printed covariance parameters {how}; {tail}"),
            ok)
    return _done("none", "UNEXPLAINED", False, "not explained")


def _max_reldiff(a: View, b: View) -> float:
    """Largest relative difference of the variances (T diagonal and sigma^2) of two views."""
    is_var = np.array([n == "sigma2" or n.startswith("var(") for n in a.covparms])
    return float(np.max(np.abs(a.phi - b.phi)[is_var] / np.abs(b.phi)[is_var]))


def _rounding(pr: Printed, x: float) -> str:
    """How the printed number relates to x when not by rounding."""
    if pr.exact(x):
        return ""
    trunc = math.trunc(x * 10 ** pr.decimals) / 10 ** pr.decimals
    if abs(trunc - pr.value) < 0.5 * pr.unit():
        return ", which the seed truncates"
    return ", within one unit of the printed digit"


def _done(check: str, text: str, ok: bool, reason: str = "") -> dict:
    return {"check": check, "explanation": text, "verified": bool(ok),
            "reason": reason or text.split(";")[0]}


def _intercept_containment(res) -> float:
    """J - rank of the columns of X that are constant within every group (SAS's rank
    contribution of the random intercept when it is credited alone)."""
    d = res.design
    codes, J = d.group_codes, d.ngroups
    n = np.bincount(codes, minlength=J)
    mean = np.zeros((J, d.X.shape[1]))
    np.add.at(mean, codes, d.X)
    mean /= n[:, None]
    between = np.abs(d.X - mean[codes]).max(axis=0) <= 1e-10 * np.maximum(
        np.abs(d.X).max(axis=0), 1e-300)
    return float(J - np.linalg.matrix_rank(mean[:, between]))


def model_summary(seed: dict, models: dict[str, Model], records: pd.DataFrame) -> pd.DataFrame:
    """Per model: formula, flags, mlmsim's -2LL, the seed's printed -2LL (SAS and R), and
    -2LL at SAS's printed covariance parameters."""
    out = []
    for name, m in models.items():
        r = m.res
        rec = records[(records.model == name) & (records.param == "-2LL")
                      & (records.stat == "estimate")]
        row = {"model": name, "seed_name": m.spec.get("seed_name", ""),
               "section": m.spec.get("section", ""), "role": m.spec.get("role", ""),
               "data": m.spec["data"], "formula": m.spec["formula"],
               "method": r.method, "nobs": r.nobs, "ngroups": r.ngroups,
               "deviance": r.deviance, "converged": r.converged, "singular": r.singular,
               "hessian_pd": r.hessian_pd, "identifiable": r.identifiable,
               "messages": " | ".join(r.messages), "warnings": " | ".join(m.warnings),
               "seed_notes": " | ".join(m.spec.get("seed_notes", []))}
        for sw in ("SAS", "R"):
            sub = rec[rec.software == sw]
            if len(sub):
                key = sw.lower()
                top = sub[sub.decimals == sub.decimals.max()]
                best = top.loc[(top.seed_value - r.deviance).abs().idxmin()]
                row[f"{key}_printed_2ll"] = " / ".join(dict.fromkeys(sub.printed))
                row[f"{key}_2ll_minus_mlmsim"] = best.seed_value - r.deviance
                # mlmsim's optimum is not worse than any printed -2LL (to within one unit
                # of its last digit: the seed sometimes truncates)
                row[f"{key}_2ll_ok"] = bool(all(
                    r.deviance <= v + 10.0 ** -d + 1e-9
                    for v, d in zip(sub.seed_value, sub.decimals, strict=True)))
        if "SAS" in m.points:
            row["sas_point_max_reldiff"] = _max_reldiff(m.points["SAS"], m.view)
            row["sas_point_2ll"] = m.points["SAS"].deviance
            row["sas_point_minus_mlmsim"] = m.points["SAS"].deviance - r.deviance
            row["sas_point_source"] = m.point_source["SAS"]
        out.append(row)
    return pd.DataFrame(out)


# ---- the study interface ----------------------------------------------------------------------

def run(out_dir, options=None) -> None:
    """Refit every model of the seed, record the comparison, then :func:`report`.

    Writes ``out_dir/records/seed_fits.csv`` (one row per printed number: model,
    parameter, statistic, the seed's printed value, mlmsim's value, its estimate,
    SE and df, difference, ``exact``/``agrees``, explanation and ``verified``)
    and ``out_dir/records/seed_models.csv`` (one row per model). ``options``
    (:class:`mlmsim.studies.RunOptions`) is accepted for the common interface;
    nothing here is random or replicated.
    """
    del options
    out = Path(out_dir)
    (out / "records").mkdir(parents=True, exist_ok=True)
    seed = load_seed()
    models = fit_models(seed)
    records = compare(seed, models)
    records.to_csv(out / "records" / RECORDS, index=False)
    model_summary(seed, models, records).to_csv(out / "records" / MODELS, index=False)
    report(out)


def report(out_dir) -> None:
    """Summarise the saved records into ``seed_tables.csv`` and ``report.md``."""
    out = Path(out_dir)
    rec = pd.read_csv(out / "records" / RECORDS, dtype={"printed": str, "mlmsim_fmt": str},
                      keep_default_na=False, na_values=[""])
    mods = pd.read_csv(out / "records" / MODELS, keep_default_na=False, na_values=[""])
    for col in ("exact", "agrees", "verified"):
        rec[col] = rec[col].astype(str).str.lower().eq("true")
    rec["explanation"] = rec["explanation"].fillna("")
    rec["difference"] = [round(d, int(k) + 2) if pd.notna(d) else d
                         for d, k in zip(rec.difference, rec.decimals, strict=True)]
    side = rec[["model", "table", "section", "software", "param", "label", "stat", "printed",
                "mlmsim_fmt", "difference", "exact", "agrees", "check", "explanation",
                "verified"]].rename(columns={"printed": "seed", "mlmsim_fmt": "mlmsim"})
    side.to_csv(out / "seed_tables.csv", index=False)
    (out / "report.md").write_text(_markdown(rec, mods), encoding="utf-8")


# ---- report.md --------------------------------------------------------------------------------

def _markdown(rec: pd.DataFrame, mods: pd.DataFrame) -> str:
    notes = rec[rec.stat == "note"]
    rec = rec[rec.stat != "note"]
    n = len(rec)
    exact, agree = int(rec.exact.sum()), int(rec.agrees.sum())
    bad = rec[~rec.agrees]
    unverified = bad[~bad.verified]
    lines = [f"# {TITLE}", "",
             "Every printed number of the seed's HSB and NELS-88 ML fits (transcribed in "
             "`mlmsim/studies/seed_sas.json`) beside mlmsim's refit on the real data. A number "
             "is *exact* when mlmsim's value rounds to it at the printed precision, and "
             "*agrees* when it is exact or within one unit of the last printed digit.", "",
             f"What ran: no simulation, so no replicates per cell and no Monte Carlo error: "
             f"each of the {rec.model.nunique()} models is fitted once by ML to the seed's "
             "real data (a quick run is the same run).", "",
             f"- printed numbers compared: **{n}** in {rec.table.nunique()} tables of "
             f"{rec.model.nunique()} models",
             f"- reproduced exactly to the printed precision: **{exact}** ({exact / n:.1%})",
             f"- within one unit of the last digit (not exact): {agree - exact}",
             f"- disagreements: **{len(bad)}**, each with a one-line explanation; "
             f"confirmed by a check on the refitted models: {len(bad) - len(unverified)}"
             f"{'' if unverified.empty else f'; NOT confirmed: {len(unverified)}'}",
             f"- SAS log notes (non-positive-definite Hessian) reproduced by mlmsim's flags and "
             f"messages: {int(notes.agrees.sum())} of {len(notes)}", ""]
    pts = rec[rec.at_point.notna()] if "at_point" in rec else rec.iloc[:0]
    if len(pts):
        at_pt = sum(Printed.parse(t).agrees(x) for t, x in zip(pts.printed, pts.at_point,
                                                               strict=True))
        lines[-1:-1] = [
            f"- the {len(pts)} SAS numbers of the {pts.model.nunique()} models whose every "
            f"covariance estimate the seed prints: {int(pts.agrees.sum())} agree at mlmsim's "
            f"optimum; {at_pt} agree when recomputed at SAS's printed covariance parameters"]
    by = rec.groupby("software").agg(numbers=("agrees", "size"), exact=("exact", "sum"),
                                      agree=("agrees", "sum"))
    lines += ["| source | numbers | exact | agree | disagree |", "|---|---:|---:|---:|---:|"]
    for sw, r in by.iterrows():
        lines.append(f"| {sw} | {r.numbers} | {r.exact} | {r.agree} | {r.numbers - r.agree} |")
    lines += ["", "Disagreements by explanation:", ""]
    lines += ["| check | count | meaning |", "|---|---:|---|"]
    meaning = {
        "sas_optimum": "SAS stopped at a slightly different point of the same flat optimum; "
                       "recomputed at SAS's printed covariance parameters the number is "
                       "reproduced (or lies between the values at the two points), and -2LL "
                       "there is not below mlmsim's",
        "containment": "SAS's containment df for the intercept: the random intercept's "
                       "rank contribution alone",
        "other_model": "the number belongs to another fit (a table from another run, a "
                       "shifted cell, a copied column); that fit reproduces it",
        "negated": "sign typo in the seed", "scaled": "misplaced decimal point in the seed",
        "typo": "missing digit in the seed",
        "seed_arithmetic": "the seed's arithmetic on rounded numbers",
        "reference": "the seed's lme4 run stopped elsewhere on the flat optimum; lme4 1.1-31 "
                     "gives mlmsim's value",
        "none": "not explained",
    }
    for chk, cnt in bad.check.value_counts().items():
        lines.append(f"| {chk} | {cnt} | {meaning.get(chk, '')} |")
    lines += _deviance_section(mods)
    slips = bad[bad.check != "sas_optimum"]
    if len(slips):
        lines += ["", "## The seed's slips, and where SAS or the seed's lme4 count differently", "",
                  "Disagreements other than SAS's optimum; each explanation is checked on the "
                  "refitted models (the full lines are under Disagreements).", ""]
        for (chk, w), grp in slips.groupby(["check", "reason"], sort=False):
            tables = ", ".join(dict.fromkeys(grp.table))
            lines.append(f"- [{chk}] {w} ({len(grp)} number{'s' if len(grp) > 1 else ''}; "
                         f"{tables})")
    lines += ["", "## Disagreements", ""]
    if bad.empty:
        lines.append("None.")
    for _, r in bad.iterrows():
        flag = "" if r.verified else " **(not confirmed)**"
        lines.append(f"- `{r.model}` {r.param} {r.stat} [{r.table}]: seed {r.printed}, "
                     f"mlmsim {r.mlmsim_fmt}. {r.explanation}{flag}")
    lines += ["", "## Models", ""]
    every = pd.concat([rec, notes]).sort_index()
    for _, mr in mods.iterrows():
        sub = every[every.model == mr.model]
        crit = "-2LL" if mr.method == "ML" else "REML criterion"
        lines += [f"### `{mr.model}`: {mr.seed_name}", "",
                  f"`{mr.formula}` on {mr.data}, {mr.method} ({mr.nobs} obs, {mr.ngroups} "
                  f"groups); seed section: {mr.section}. {crit} {mr.deviance:.4f}; converged "
                  f"{mr.converged}, Hessian PD {mr.hessian_pd}, identifiable {mr.identifiable}.",
                  ""]
        if isinstance(mr.role, str) and mr.role:
            lines += [f"Role: {mr.role}.", ""]
        if isinstance(mr.seed_notes, str) and mr.seed_notes:
            lines += [f"SAS's note: \"{mr.seed_notes}\"; mlmsim: {mr.messages}.", ""]
        if isinstance(mr.get("sas_point_source"), str):
            lines += [f"SAS's printed point ({mr.sas_point_source}): -2LL "
                      f"{mr.sas_point_2ll:.4f} ({mr.sas_point_minus_mlmsim:+.6f} from mlmsim's).",
                      ""]
        if sub.empty:
            lines += ["The seed prints no numbers for this model.", ""]
            continue
        num, nts = sub[sub.stat != "note"], sub[sub.stat == "note"]
        head = (f"{int(num.exact.sum())} of {len(num)} printed numbers reproduced exactly to "
                f"the printed precision; {int(num.agrees.sum())} agree (exact or within one "
                f"unit); {int((~num.agrees).sum())} disagree"
                f"{' (explained below)' if (~num.agrees).any() else ''}." if len(num)
                else "The seed prints no numbers for this model, only SAS's note.")
        if len(nts):
            head += f" SAS's note reproduced: {int(nts.agrees.sum())} of {len(nts)}."
        lines += [head, "",
                  "| table | param | stat | seed | mlmsim | mlmsim - seed | |",
                  "|---|---|---|---:|---:|---:|---|"]
        for _, r in sub.iterrows():
            mark = "=" if r.exact else ("~" if r.agrees else "x")
            diff = "" if pd.isna(r.difference) else f"{r.difference:+.{int(r.decimals) + 1}f}"
            shown = r.mlmsim_fmt
            lines.append(f"| {r.table.split('/')[-1]} | {r.param} | {r.stat} | {r.printed} "
                         f"| {shown} | {diff} | {mark} |")
        dis = sub[~sub.agrees]
        if len(dis):
            lines += ["", "Disagreements:", ""]
            lines += [f"- {r.param} {r.stat} ({r.printed} vs {r.mlmsim_fmt}): {r.explanation}"
                      for _, r in dis.iterrows()]
        lines.append("")
    lines += ["`=` reproduced exactly; `~` within one unit of the last printed digit; "
              "`x` disagrees (explanation listed).", ""]
    return "\n".join(lines)


def _deviance_section(mods: pd.DataFrame) -> list[str]:
    """The -2LL comparison: mlmsim's optimum against the printed -2LL and SAS's point."""
    printed = mods[mods.get("sas_printed_2ll", pd.Series(dtype=object)).notna()]
    ok = printed["sas_2ll_ok"].astype(str).str.lower().eq("true")
    pts = mods[mods.get("sas_point_2ll", pd.Series(dtype=float)).notna()]
    gaps = pts["sas_point_minus_mlmsim"].astype(float)
    lines = ["", "## -2 log likelihood", "",
             f"The seed prints a SAS -2LL for {len(printed)} models (in the NELS-88 centering "
             f"tables); mlmsim's -2LL is at most the printed value (to within one unit of its "
             f"last digit, as the seed sometimes truncates) for {int(ok.sum())} of them. For "
             f"{len(pts)} models the seed prints every SAS covariance estimate; -2LL at those "
             f"printed covariance parameters is {gaps.min():+.6f} to {gaps.max():+.6f} from "
             f"mlmsim's optimum: SAS and mlmsim (like lme4) stop at points of the same flat "
             f"optimum, mlmsim's never the worse (beyond the rounding of the printed "
             f"parameters).", "",
             "| model | method | mlmsim -2LL | SAS printed | SAS - mlmsim | mlmsim <= SAS "
             "| R printed | -2LL at SAS's point | point - mlmsim | max rel. diff. of variances |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for _, r in mods.iterrows():
        flag = "" if pd.isna(r.get("sas_2ll_ok")) else (
            "yes" if str(r.sas_2ll_ok).lower() == "true" else "NO")
        lines.append(
            f"| {r.model} | {r.method} | {r.deviance:.4f} | {_cell(r, 'sas_printed_2ll')} "
            f"| {_num(r, 'sas_2ll_minus_mlmsim', '+.4f')} | {flag} | {_cell(r, 'r_printed_2ll')} "
            f"| {_num(r, 'sas_point_2ll', '.4f')} | {_num(r, 'sas_point_minus_mlmsim', '+.6f')} "
            f"| {_num(r, 'sas_point_max_reldiff', '.3%')} |")
    return lines


def _cell(r: pd.Series, key: str) -> str:
    v = r.get(key)
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _num(r: pd.Series, key: str, spec: str) -> str:
    v = r.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return ""
    return format(float(v), spec)
