"""Kenward-Roger, expected information and F tests of contrasts (docs/math.md section 12).

Expected values come from tests/data/kr_reference.json (pbkrtest 0.5.2 and lmerTest 3.1-3
on 19 REML fits: 8 HSB models, sleepstudy (also with a diagonal T), Orthodont (also with
an age x Sex interaction), BodyWeight, Machines, an unbalanced design with singletons
(also with a cross-level interaction), q = 3, q = 4 and NELS-88; written by
tests/data/make_kr_reference.R) and
from dense n x n computations with V built explicitly; nothing here is a recorded mlmsim
output.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DATA
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mlmsim
from mlmsim.engine import kenward_roger

REF = json.loads((DATA / "kr_reference.json").read_text())["models"]


def _data(entry) -> pd.DataFrame:
    packaged = {"mlmsim/datasets/hsb.csv": "hsb", "mlmsim/datasets/nels88_23.csv": "nels88"}
    if entry["dataset"] in packaged:
        return mlmsim.datasets.load(packaged[entry["dataset"]])
    path = DATA / entry["dataset"].split("/")[-1]
    return pd.read_csv(path, dtype={c: str for c in entry.get("label_columns", [])})


def _mlmsim_name(name: str, labels) -> str:
    """R's coefficient name -> mlmsim's: ``(Intercept)`` -> ``Intercept``, ``SexMale`` ->
    ``Sex[T.Male]`` for a label column ``Sex``, term by term for interactions."""
    if name == "(Intercept)":
        return "Intercept"
    parts = []
    for part in name.split(":"):
        col = next((c for c in labels if part.startswith(c) and part != c), None)
        parts.append(part if col is None else f"{col}[T.{part[len(col):]}]")
    return ":".join(parts)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.fixture(scope="module", params=REF, ids=[e["id"] for e in REF])
def case(request):
    entry = request.param
    return entry, mlmsim.fit(entry["formula"], _data(entry), method="REML")


def test_reference_optimum_is_common(case):
    entry, res = case
    assert res.deviance <= entry["minus2ll"] + 1e-8 * abs(entry["minus2ll"])
    labels = entry.get("label_columns", [])
    assert list(res.fixed_names) == [_mlmsim_name(n, labels) for n in entry["fixef_names"]]
    assert _rel(res.sigma2, entry["sigma2"]) < 1e-5
    assert _rel(res.fixef_se, [entry["se"][n] for n in entry["fixef_names"]]) < 1e-5


def test_vcov_kr_and_kr_t_tests_match_pbkrtest(case):
    entry, res = case
    names = entry["fixef_names"]  # R's names, in the same order as mlmsim's
    np.testing.assert_allclose(res.vcov_kr.to_numpy(), np.array(entry["vcov_kr"]), rtol=1e-4,
                               atol=1e-4 * np.abs(np.array(entry["vcov_kr"])).max())
    ct = res.coef_table("kenward-roger")
    assert _rel(ct["se"], [entry["kr_se"][n] for n in names]) < 1e-4
    assert _rel(ct["df"], [entry["kr_df"][n] for n in names]) < 1e-4
    assert _rel(ct["t"], [entry["kr_t"][n] for n in names]) < 1e-4
    assert _rel(ct["p"], [entry["kr_p"][n] for n in names]) < 1e-3  # p amplifies t ~ t^2
    assert _rel(res.ddf("satterthwaite"), [entry["satterthwaite_df"][n] for n in names]) < 1e-4


def test_f_tests_match_krmodcomp_and_contest(case):
    entry, res = case
    assert entry["tests"] or len(res.fixed_names) == 1  # only the null model has none
    for t in entry["tests"]:
        L = np.array(t["L"], dtype=float)
        kr, pk = res.ftest(L), t["pbkrtest"]
        assert _rel(kr.F, pk["Fstat"]) < 1e-4
        assert _rel(kr.ddf, pk["ddf"]) < 1e-4
        assert _rel(kr.scale, pk["F.scaling"]) < 1e-4
        assert kr.ndf == pk["ndf"]
        assert kr.p == pytest.approx(pk["p.value"], rel=1e-3, abs=1e-300)
        sa, ls = res.ftest(L, ddf="satterthwaite"), t["lmertest_satterthwaite"]
        assert _rel(sa.F, ls["F"]) < 1e-4
        assert _rel(sa.ddf, ls["DenDF"]) < 1e-4
        assert sa.ndf == ls["NumDF"]


def test_one_row_f_test_is_the_t_test(case):
    """For one row, (11.3) reduces to m = 2 / A2 and lambda = 1: the coefficient's df."""
    entry, res = case
    p = len(res.fixed_names)
    df = res.ddf("kenward-roger")
    se = np.sqrt(np.diag(res.vcov_kr.to_numpy()))
    for a in range(p):
        f = res.ftest(np.eye(p)[a])
        assert f.ddf == pytest.approx(df[a], rel=1e-9)
        assert f.scale == pytest.approx(1.0, rel=1e-12)
        assert f.F == pytest.approx((res.fixef.iloc[a] / se[a]) ** 2, rel=1e-9)


def _dense(res):
    """V, dV/dphi_k, X, y of a fit, built as n x n matrices (small data only)."""
    d = res.design
    X, Z, g = d.X, d.Z, d.group_codes
    cs = res.cov_structure
    n = X.shape[0]
    same = (g[:, None] == g[None, :]).astype(float)
    Vk = []
    for a, b in zip(cs.rows, cs.cols, strict=True):
        E = np.zeros((Z.shape[1], Z.shape[1]))
        E[a, b] = E[b, a] = 1.0
        Vk.append((Z @ E @ Z.T) * same)
    Vk.append(np.eye(n))
    V = sum(f * M for f, M in zip(res.phi, Vk, strict=True))
    return V, Vk, X


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ x + w + (1 + x | g)"])
def test_information_terms_equal_a_dense_computation(method, formula):
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 7, size=14)
    g = np.repeat(np.arange(14), sizes)
    x = rng.normal(size=g.size)
    w = rng.normal(size=14)[g]
    y = 1 + 0.5 * x + rng.normal(size=14)[g] + 0.5 * rng.normal(size=14)[g] * x \
        + rng.normal(size=g.size)
    res = mlmsim.fit(formula, pd.DataFrame({"y": y, "x": x, "w": w, "g": g}), method=method)
    V, Vk, X = _dense(res)
    Vi = np.linalg.inv(V)
    C = np.linalg.inv(X.T @ Vi @ X)
    P = Vi - Vi @ X @ C @ X.T @ Vi
    m = len(Vk)
    K = P if method == "REML" else Vi
    HE = np.array([[np.trace(K @ Vk[k] @ K @ Vk[l]) for l in range(m)] for k in range(m)])
    M = np.array([X.T @ Vi @ Vk[k] @ Vi @ X for k in range(m)])
    Q = np.array([[X.T @ Vi @ Vk[k] @ Vi @ Vk[l] @ Vi @ X for l in range(m)] for k in range(m)])
    t = res._info
    np.testing.assert_allclose(t.C[0], C, rtol=1e-8, atol=1e-12 * np.abs(C).max())
    np.testing.assert_allclose(t.HE[0], HE, rtol=1e-8, atol=1e-10 * np.abs(HE).max())
    np.testing.assert_allclose(t.M[0], M, rtol=1e-8, atol=1e-10 * np.abs(M).max())
    np.testing.assert_allclose(t.Q[0], Q, rtol=1e-8, atol=1e-10 * np.abs(Q).max())
    # expected-information SEs: (1/2 tr(K V_k K V_l))^{-1}
    acov = np.linalg.inv(0.5 * HE)
    np.testing.assert_allclose(res.covparms_acov("expected"), acov, rtol=1e-8,
                               atol=1e-10 * np.abs(acov).max())
    se = res.covparms_table("expected")["se"].to_numpy()
    np.testing.assert_allclose(se, np.sqrt(np.diag(acov)), rtol=1e-8)
    if method == "REML":
        # Phi_A (11.2), densely
        W = acov
        U = sum(W[k, l] * (Q[k, l] - M[k] @ C @ M[l]) for k in range(m) for l in range(m))
        np.testing.assert_allclose(res.vcov_kr.to_numpy(), C + 2 * C @ U @ C, rtol=1e-7)


def test_expected_and_observed_information_differ_on_hsb():
    res = mlmsim.fit("mathach ~ cses + (1 + cses | school)", mlmsim.datasets.load("hsb"))
    obs = res.covparms_table("observed")["se"].to_numpy()
    exp = res.covparms_table("expected")["se"].to_numpy()
    assert np.all(np.isfinite(exp))
    rel = np.abs(exp / obs - 1)
    assert rel.max() < 0.05          # close: both estimate the same sampling variance
    assert rel.max() > 1e-6          # but not equal: the observed Hessian is data-dependent
    assert res.covparms.equals(res.covparms_table("observed"))


def test_kr_needs_reml_and_checks_its_input():
    res = mlmsim.fit("mathach ~ cses + (1 | school)", mlmsim.datasets.load("hsb"), method="ML")
    with pytest.raises(ValueError, match="REML"):
        res.coef_table("kenward-roger")
    reml = mlmsim.fit("mathach ~ cses + (1 | school)", mlmsim.datasets.load("hsb"))
    with pytest.raises(ValueError, match="unknown fixed effect"):
        reml.ftest(["ses"])
    with pytest.raises(ValueError, match="2 columns"):
        reml.ftest(np.eye(3))
    with pytest.raises(ValueError, match="zero"):
        reml.ftest(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="information"):
        reml.covparms_table("fisher")
    # a hypothesised value: F of cses = b equals that of cses - b = 0 on shifted data
    b = float(reml.fixef["cses"])
    assert reml.ftest(["cses"], rhs=[b]).F == pytest.approx(0.0, abs=1e-12)
    # a rank-deficient L is its row space
    two = reml.ftest(np.array([[0.0, 1.0], [0.0, 2.0]]))
    assert two.ndf == 1 and two.F == pytest.approx(reml.ftest(["cses"]).F, rel=1e-12)


def _slope_data(seed: int, J: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    w = rng.normal(size=J)[g]
    y = 1 + 0.4 * x + 0.3 * w + rng.normal(scale=0.8, size=J)[g] \
        + rng.normal(scale=0.4, size=J)[g] * x + rng.normal(size=J * n)
    return pd.DataFrame({"y": y, "x": x, "w": w, "g": g})


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), J=st.integers(10, 25), n=st.integers(3, 7),
       change=st.sampled_from(["x", "w", "y"]), k=st.integers(-4, 4),
       formula=st.sampled_from(["y ~ x + w + (1 | g)", "y ~ x + w + (1 + x | g)"]))
def test_kr_and_satterthwaite_do_not_depend_on_units(seed, J, n, change, k, formula):
    df = _slope_data(seed, J, n)
    base = mlmsim.fit(formula, df)
    assume(base.converged and not base.singular and base.hessian_pd)
    new = df.copy()
    new[change] = new[change] * 10.0**k
    other = mlmsim.fit(formula, new)
    assume(other.converged and not other.singular and other.hessian_pd)
    for ddf in ("kenward-roger", "satterthwaite"):
        a, b = base.coef_table(ddf), other.coef_table(ddf)
        for col in ("df", "t"):
            np.testing.assert_allclose(b[col], a[col], rtol=1e-6, err_msg=f"{ddf} {col}")
    fa, fb = base.ftest(["x", "w"]), other.ftest(["x", "w"])
    assert fb.F == pytest.approx(fa.F, rel=1e-6)
    assert fb.ddf == pytest.approx(fa.ddf, rel=1e-6)


def test_kr_batched_equals_single():
    sets = [_slope_data(s, 15, 5) for s in range(4)]
    b = mlmsim.fit_batch("y ~ x + w + (1 + x | g)", sets)
    se, df = b.fixef_se_df("kenward-roger")
    for r, d in enumerate(sets):
        one = mlmsim.fit("y ~ x + w + (1 + x | g)", d)
        s1, d1 = one.fixef_se_df("kenward-roger")
        np.testing.assert_allclose(se[r], s1, rtol=1e-6)
        np.testing.assert_allclose(df[r], d1, rtol=1e-5)
    assert np.array_equal(b.ddf("kenward-roger"), df)


def test_expected_acov_is_nan_where_not_positive_definite():
    HE = np.array([[[1.0, 2.0], [2.0, 1.0]]])
    assert np.isnan(kenward_roger.expected_acov(HE)).all()
