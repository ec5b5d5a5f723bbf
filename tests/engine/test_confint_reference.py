"""Profile intervals against lme4's ``confint(m, method = "profile")``
(tests/data/profile_reference.json, made by make_profile_reference.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize as spo
from scipy import stats as sps

import mlmsim

ROOT = Path(__file__).parents[2]
REF = json.loads((Path(__file__).parents[1] / "data" / "profile_reference.json").read_text())
MODELS = {m["id"]: m for m in REF["models"]}
# lme4 interpolates a spline through its profile points; where that spline is poor its
# limit is off by more than 1e-3. One such limit in these data: Orthodont's sd(age)
# lower limit (0.006455 against the root 0.0063985, 0.9% on the sd scale), checked
# against a dense brute-force profile in test_orthodont_slope_sd_lower_limit_is_the_root.
SPLINE_ERROR = {("orthodont_ml", "var(age)", "lower"), ("orthodont_reml", "var(age)", "lower")}


def _data(m):
    d = pd.read_csv(ROOT / m["csv"])
    if m["dataset"] == "hsb":
        d["cses"] = d["ses"] - d["meanses"]
    return d


def _name(label: str, fit) -> tuple[str, bool]:
    """lme4's profile label -> (mlmsim's parameter name, whether lme4's value is an sd)."""
    label = label.replace("(Intercept)", "Intercept")
    if label == "sigma":
        return "sigma2", True
    if label.startswith("sd("):
        return f"var({label[3:-1]})", True
    a, b = label[4:-1].split(",")
    name = f"cov({b},{a})" if f"cov({b},{a})" in fit.covparm_names else f"cov({a},{b})"
    return name, False


def _limits(m, fit, key):
    """{(parameter, side): lme4's limit on mlmsim's scale} for the intervals ``key``."""
    out = {}
    for label, lim in m[key].items():
        name, sd = _name(m["profile_names"][label], fit) if label in m["profile_names"] else (
            label.replace("(Intercept)", "Intercept"), False)
        for side in ("lower", "upper"):
            out[(name, side)] = lim[side] ** 2 if sd else lim[side]
    return out


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    m = MODELS[request.param]
    fit = mlmsim.fit(m["formula"], _data(m), method="REML" if m["reml"] else "ML")
    return m, fit


@pytest.mark.parametrize("level,key", [(0.95, "profile_ci"), (0.90, "profile_ci_90")])
def test_profile_limits_match_lme4(case, level, key):
    """Every limit within 1e-3 relative of lme4's (lme4 profiles a REML fit by ML, so
    criterion="ML"), or, at 0.95, of lme4's finer profile (delta.cutoff = 1/32)."""
    m, fit = case
    ci = fit.confint("profile", level=level, criterion="ML")
    ref = _limits(m, fit, key)
    tight = _limits(m, fit, "profile_ci_tight") if level == 0.95 else {}
    checked = 0
    for (name, side), want in ref.items():
        got = ci.loc[name, side]
        if (m["id"], name, side) in SPLINE_ERROR:
            continue
        close = [abs(got - w) <= 1e-3 * abs(w) + 1e-12 for w in (want, tight.get((name, side)))
                 if w is not None]
        assert any(close), (m["id"], name, side, got, want, tight.get((name, side)))
        checked += 1
    assert checked >= len(ref) - 1


def test_zero_variance_fit_has_lower_limit_zero():
    m = MODELS["dyestuff2_ml"]
    fit = mlmsim.fit(m["formula"], _data(m), method="ML")
    assert fit.singular and fit.T.iloc[0, 0] < 1e-20
    ci = fit.confint("profile")
    assert ci.loc["var(Intercept)", "lower"] == 0.0
    assert m["profile_ci"][".sig01"]["lower"] == 0.0
    assert ci.loc["var(Intercept)", "at_bound"] == "lower"


def test_orthodont_slope_sd_lower_limit_is_the_root():
    """At mlmsim's limit the dense profile (other parameters minimised by Nelder-Mead from
    several starts) is d_hat + chi2_1(0.95); at lme4's spline limit it is not."""
    m = MODELS["orthodont_ml"]
    d = _data(m)
    fit = mlmsim.fit(m["formula"], d, method="ML")
    y = d["distance"].to_numpy(float)
    X = np.column_stack([np.ones(y.size), d["age"].to_numpy(float)])
    codes = pd.factorize(d["Subject"])[0]
    groups = [codes == j for j in range(codes.max() + 1)]

    def dev(s0, s1, r, s):
        T = np.array([[s0 * s0, r * s0 * s1], [r * s0 * s1, s1 * s1]])
        A, c, yy, ld = np.zeros((2, 2)), np.zeros(2), 0.0, 0.0
        for i in groups:
            Zj = X[i]
            V = Zj @ T @ Zj.T + s * s * np.eye(Zj.shape[0])
            Vi = np.linalg.inv(V)
            ld += np.linalg.slogdet(V)[1]
            A += Zj.T @ Vi @ Zj
            c += Zj.T @ Vi @ y[i]
            yy += y[i] @ Vi @ y[i]
        return ld + yy - c @ np.linalg.solve(A, c) + y.size * np.log(2 * np.pi)

    def excess(s1):
        best = np.inf
        for st in ([2.2, -0.6, 1.3], [1.0, 0.0, 1.3], [0.5, 0.5, 1.4]):
            res = spo.minimize(lambda x: dev(abs(x[0]), s1, np.tanh(x[1]), abs(x[2])),
                               [st[0], np.arctanh(st[1]), st[2]], method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-11, "maxiter": 20000})
            best = min(best, res.fun)
        return best - fit.deviance

    z2 = sps.chi2.ppf(0.95, 1)
    ours = np.sqrt(fit.confint("profile", parm="var(age)").loc["var(age)", "lower"])
    assert excess(ours) == pytest.approx(z2, abs=1e-6)
    lme4s = m["profile_ci"][".sig03"]["lower"]
    assert abs(excess(lme4s) - z2) > 1e-3
