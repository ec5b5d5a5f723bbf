"""Nothing a fit reports as a verdict or a test depends on the units of the data.

Property (hypothesis): rescaling a predictor or the response by 10^k (k in -4..4), or
shifting a predictor by a constant, leaves ``hessian_pd``, ``singular``,
``identifiable``, the t values, the Satterthwaite df and the p-values unchanged (to 1e-6
relative; a shift of s SDs moves the optimiser's stopping point, so its df are held to
1e-6 s^2 and its p-values to 1e-5), for random intercept and random slope models, by ML
and REML. These are the
decisions of docs/math.md section 9 and the df of (10.3).

Flags are thresholds on continuous quantities, so a fit whose quantity lies within a
factor 100 of its threshold (``singular_value`` near 1e-8, the Hessian's smallest
correlation-form eigenvalue near 1e-8) could go either way under the rounding of a
different parameterisation; such draws are set aside with ``assume`` (a handful in
hundreds). Shifts of a random-slope predictor are drawn up to 30 SDs: Z's columns are
not centred in the statistics, so a shift of s SDs costs about 2 log10(s) digits of them
(x ~ N(1e4, 10^2), 1e3 SDs, still gets the df to 1e-4: tests/engine/test_inference_reference.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mlmsim

MODELS = {
    "intercept": "y ~ x + w + (1 | g)",
    "slope": "y ~ x + w + (1 + x | g)",
}


def _data(seed: int, J: int, n: int, slope_sd: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    w = rng.normal(size=J)[g]  # a level-2 predictor
    u0 = rng.normal(scale=0.8, size=J)
    u1 = rng.normal(scale=slope_sd, size=J)
    y = 1.0 + 0.4 * x + 0.3 * w + u0[g] + u1[g] * x + rng.normal(size=J * n)
    return pd.DataFrame({"y": y, "x": x, "w": w, "g": g})


def _report(res):
    ct = res.coef_table("satterthwaite")
    return {
        "hessian_pd": res.hessian_pd, "singular": res.singular,
        "identifiable": res.identifiable, "t": ct["t"].to_numpy(), "df": ct["df"].to_numpy(),
        "p": ct["p"].to_numpy(),
    }


def _away_from_thresholds(res) -> bool:
    from mlmsim.engine.estimates import Estimates  # noqa: F401 - documents where they live

    sv = _singular_value(res)
    eig0 = res.hessian_eigenvalues[0]
    near_sv = np.isfinite(sv) and 1e-10 < sv < 1e-6
    near_pd = np.isfinite(eig0) and 1e-10 < eig0 < 1e-6
    return not (near_sv or near_pd)


def _singular_value(res) -> float:
    """sigma_min(W Lambda)^2 with W'W = Z'Z/N (docs/math.md (9.2)), in numpy."""
    L = res.theta_map.Lambda(res.theta)
    A = res.stats.A.sum(axis=0) / float(res.stats.N)
    try:
        W = np.linalg.cholesky(A).T
    except np.linalg.LinAlgError:
        ev, E = np.linalg.eigh(A)
        keep = ev > 1e-9 * ev.max()
        W = (E[:, keep] * np.sqrt(ev[keep])).T
    return float(np.linalg.svd(W @ L, compute_uv=False)[-1] ** 2)


def _assert_same(a: dict, b: dict, p_rtol: float = 1e-6, df_rtol: float = 1e-6) -> None:
    for flag in ("hessian_pd", "singular", "identifiable"):
        assert a[flag] == b[flag], flag
    np.testing.assert_allclose(b["t"], a["t"], rtol=1e-6, atol=1e-300, err_msg="t")
    np.testing.assert_allclose(b["df"], a["df"], rtol=df_rtol, atol=1e-300, err_msg="df")
    np.testing.assert_allclose(b["p"], a["p"], rtol=p_rtol, atol=1e-300, err_msg="p")


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), model=st.sampled_from(sorted(MODELS)),
       method=st.sampled_from(["ML", "REML"]), J=st.integers(12, 30), n=st.integers(3, 8),
       slope_sd=st.sampled_from([0.0, 0.3, 0.7]),
       change=st.sampled_from(["x", "w", "y", "shift-x"]), k=st.integers(-4, 4))
def test_verdicts_t_df_and_p_do_not_depend_on_units(seed, model, method, J, n, slope_sd,
                                                     change, k):
    df = _data(seed, J, n, slope_sd)
    base = mlmsim.fit(MODELS[model], df, method=method)
    assume(base.converged and _away_from_thresholds(base))
    new = df.copy()
    if change == "shift-x":
        # shifts up to 30 SDs: a random-slope predictor far from 0 costs the statistics
        # about 2 log10(shift / SD) digits (Z = [1, x] is nearly collinear), so beyond
        # that a boundary fit is decided on rounding (see the module docstring)
        assume(k <= 1)
        new["x"] = new["x"] + 3.0 * 10.0**k
    else:
        new[change] = new[change] * 10.0**k
    other = mlmsim.fit(MODELS[model], new, method=method)
    assert other.converged
    assume(_away_from_thresholds(other))
    a, b = _report(base), _report(other)
    p_rtol = df_rtol = 1e-6
    if change == "shift-x":
        # the intercept's meaning changes with the shift; every other coefficient keeps it.
        # A shift is a different optimisation problem (a rescaling is the same one, to
        # rounding), which stops at a different point within the optimiser's tolerance
        # (decrement 1e-12 and a last quasi-Newton step: about 1e-8 of a standard error);
        # t agrees to 1e-6, p, which amplifies a change of t by about t^2, to 1e-5, and
        # the df, a ratio of derivatives of var(gamma_hat) that moves faster than the
        # estimates, to 1e-6 times s^2 for a shift of s SDs (s = 0.0003 to 30; x has SD
        # 1). Measured on 2,843 draws of this test's space: the largest df difference
        # was 1.1e-7 s^2 (1.3e-6 at s = 3, seed 125, and 7.1e-5 at s = 30); run to the
        # deviance's rounding floor, the same two fits agree to 8.5e-11 and 1.9e-7.
        for key in ("t", "df", "p"):
            a[key], b[key] = a[key][1:], b[key][1:]
        p_rtol, df_rtol = 1e-5, 1e-6 * max(1.0, (3.0 * 10.0**k) ** 2)
    _assert_same(a, b, p_rtol, df_rtol)


def test_a_shift_of_three_sds_keeps_the_df_of_a_boundary_fit():
    """The draw that found the shifted df's tolerance: a random slope with true SD 0,
    REML, x shifted by 3 SDs. Every flag and t agree to 1e-6, the df of x and w to
    1e-6 s^2 = 9e-6 (they differ by 1.3e-6)."""
    df = _data(125, 15, 7, 0.0)
    base = mlmsim.fit(MODELS["slope"], df, method="REML")
    other = mlmsim.fit(MODELS["slope"], df.assign(x=df["x"] + 3.0), method="REML")
    assert base.converged and other.converged
    a, b = _report(base), _report(other)
    for key in ("t", "df", "p"):
        a[key], b[key] = a[key][1:], b[key][1:]
    _assert_same(a, b, 1e-5, 9e-6)


@pytest.mark.parametrize("method", ["ML", "REML"])
@pytest.mark.parametrize("factor", [1e-4, 24.0, 1440.0, 1e4])
def test_slope_model_in_other_units_keeps_every_verdict(method, factor):
    """The sleepstudy situation: a random slope model whose predictor is re-expressed in
    other units (days -> hours -> minutes). Same deviance, same verdicts, finite SEs."""
    df = _data(11, 18, 10, 0.5)
    base = mlmsim.fit(MODELS["slope"], df, method=method)
    new = df.assign(x=df["x"] * factor)
    other = mlmsim.fit(MODELS["slope"], new, method=method)
    # the REML criterion carries log|X'V^{-1}X|, which moves by 2 log(factor) (x is a
    # fixed-effect column); the ML deviance does not move
    shift = 2.0 * np.log(factor) if method == "REML" else 0.0
    assert other.deviance == pytest.approx(base.deviance + shift, rel=1e-10)
    assert base.hessian_pd and other.hessian_pd
    assert np.isfinite(other.covparms["se"]).all()
    _assert_same(_report(base), _report(other))
    # the covariance parameters transform exactly: var(x) by 1/factor^2
    np.testing.assert_allclose(other.T.loc["x", "x"] * factor**2, base.T.loc["x", "x"],
                               rtol=1e-6)

# x ~ N(1e4, 10^2) against the centred model and lmerTest: tests/engine/test_inference_reference.py
