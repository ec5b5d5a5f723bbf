"""The formula method: mlmsim.fit (and its batched path) inside the study runner."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlmsim import fit
from mlmsim.methods import FormulaMethod
from mlmsim.simstudy import Study, summarise

FORMULA = "y ~ 1 + x + (1 + x | g)"
TRUTH = {"Intercept": 1.0, "x": 0.5, "var(Intercept)": 0.5, "cov(x,Intercept)": 0.1,
         "var(x)": 0.2, "sigma2": 1.0}


def random_slopes(cond, rng):
    """Random intercept and slope model: J = cond.n_groups groups of 6."""
    J, m = cond.n_groups, 6
    g = np.repeat(np.arange(J), m)
    x = rng.normal(size=J * m)
    T = np.array([[0.5, 0.1], [0.1, 0.2]])
    U = rng.multivariate_normal(np.zeros(2), T, size=J)
    y = 1.0 + 0.5 * x + U[g, 0] + U[g, 1] * x + rng.normal(size=J * m)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def study(batch=True, n_reps=40):
    methods = [FormulaMethod(FORMULA, "ML", batch=batch),
               FormulaMethod(FORMULA, "REML", batch=batch)]
    return Study({"n_groups": [8, 25]}, random_slopes, methods, truth=TRUTH, n_reps=n_reps,
                 seed=42)


def strip(records):
    return records.drop(columns="seconds")


@pytest.fixture(scope="module")
def batched():
    return study().run(progress=False).records


def test_records_follow_fit_result(batched):
    rec = batched
    one = rec[(rec.condition == 1) & (rec.rep == 3) & (rec.method == "REML")]
    assert one.parameter.tolist() == list(TRUTH)
    data = study().regenerate(1, 3)
    res = fit(FORMULA, data, method="REML")
    np.testing.assert_allclose(one.estimate, res.params.to_numpy(), rtol=1e-9, atol=1e-12)
    se = pd.concat([res.fixef_se, res.covparms["se"]]).reindex(res.params.index)
    np.testing.assert_allclose(one.se, se.to_numpy(), rtol=1e-7, atol=1e-12)
    z = 1.959963984540054
    np.testing.assert_allclose(one.ci_upper - one.estimate, z * one.se, rtol=1e-12)
    row = one.iloc[0]
    assert (row.converged, row.singular, row.hessian_pd, row.identifiable) == (
        res.converged, res.singular, res.hessian_pd, res.identifiable)
    assert one.truth.tolist() == list(TRUTH.values())
    assert rec.error.isna().all()
    # the optimiser's evaluations, per fit (the batched fit runs the same optimiser)
    assert (one.evaluations == res.optsum.evaluations).all()
    assert rec.evaluations.notna().all() and (rec.evaluations > 0).all()


def test_chunks_written_without_evaluations_read_with_nulls(tmp_path):
    """A results directory written before the ``evaluations`` column existed still loads:
    the column comes back null (pyarrow), the other records unchanged."""
    import pyarrow as pa

    from mlmsim.simstudy.records import with_added_columns

    rec = study().run(progress=False).records
    old = pa.Table.from_pandas(rec.drop(columns=["evaluations"]), preserve_index=False)
    back = with_added_columns(old).to_pandas()
    assert list(back.columns) == list(rec.columns)
    assert back.evaluations.isna().all()
    pd.testing.assert_frame_equal(back.drop(columns=["evaluations"]),
                                  rec.drop(columns=["evaluations"]))


def test_batched_path_matches_single_fits(batched):
    single = study(batch=False).run(progress=False).records
    for col in ("converged", "singular", "hessian_pd", "identifiable", "parameter"):
        assert (batched[col] == single[col]).all(), col
    np.testing.assert_allclose(batched.estimate, single.estimate, rtol=1e-8, atol=1e-10)
    ok = single.se.notna()
    assert (batched.se.notna() == ok).all()
    np.testing.assert_allclose(batched.se[ok], single.se[ok], rtol=1e-6, atol=1e-10)


def test_batched_records_do_not_depend_on_chunks_or_workers(batched):
    for kwargs in ({"chunk_size": 5}, {"chunk_size": 40, "n_jobs": 2}):
        rec = study().run(progress=False, **kwargs).records
        pd.testing.assert_frame_equal(strip(rec), strip(batched))


def mixed_layouts(cond, rng):
    """Small data sets with a three-level factor: now and then a level is missing (a data
    set whose columns differ from its block's) and now and then there are fewer
    observations than random effects (a fit that must fail)."""
    J = cond.n_groups
    m = rng.integers(1, 4, size=J)
    g = np.repeat(np.arange(J), m)
    n = g.size
    x = rng.normal(size=n)
    f = rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1])
    u = rng.normal(0.0, 0.7, size=(J, 2))
    y = 1.0 + 0.5 * x + 0.3 * (f == "b") + u[g, 0] + u[g, 1] * x + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "f": f, "g": g})


def test_records_do_not_depend_on_the_batch():
    """A replicate's records are the same, bit for bit, whatever block it is fitted in
    (batch sizes 1, 3 and 256, chunks of 4 or all, two workers): with data sets that
    cannot share a batch (a missing factor level), fits that fail, and singular fits
    among them. (batch=False fits with mlmsim.fit: the same to rounding on ordinary data,
    test_batched_path_matches_single_fits; on data sets of seven rows, as some here, the
    two optimiser paths may stop at different points of a flat likelihood.)"""
    formula = "y ~ x + f + (1 + x | g)"

    def run(batch=True, batch_size=256, **kwargs):
        methods = {"REML": FormulaMethod(formula, "REML", batch=batch, batch_size=batch_size),
                   "ML": FormulaMethod(formula, "ML", ddf="satterthwaite", batch=batch,
                                       batch_size=batch_size)}
        st = Study({"n_groups": [3, 6, 12]}, mixed_layouts, methods, n_reps=24, seed=8)
        return strip(st.run(progress=False, **kwargs).records)

    base = run()
    assert base.error.notna().any() and base.error.isna().any()   # fits that fail
    assert base.singular.fillna(False).any()
    assert base.groupby(["condition", "rep"]).parameter.nunique().nunique() > 1  # layouts
    for kwargs in ({"batch_size": 1}, {"batch_size": 3, "chunk_size": 4},
                   {"chunk_size": 5, "n_jobs": 2}):
        pd.testing.assert_frame_equal(run(**kwargs), base, check_exact=True)


def test_summary_of_a_real_study(batched):
    s = summarise(batched).set_index(
        ["condition", "method", "parameter", "measure"])
    assert s.loc[(1, "REML", "x", "bias"), "n"] == 40
    assert s.loc[(1, "ML", "(fit)", "n_fits"), "estimate"] == 40
    assert 0 <= s.loc[(0, "ML", "(fit)", "singular_rate"), "estimate"] <= 1


# ---------------------------------------------------------------------------
# Settings checked when the study is defined; df and p of the fixed effects
# ---------------------------------------------------------------------------

DDF_KINDS = ["satterthwaite", "kenward-roger", "containment", "between-within", "residual"]
FIXED = ["Intercept", "x"]
COVPARMS = ["var(Intercept)", "cov(x,Intercept)", "var(x)", "sigma2"]


def test_a_wrong_option_is_an_error_at_construction():
    """Before, unknown options went to mlmsim.fit and every replicate failed silently."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'dff'"):
        FormulaMethod(FORMULA, "REML", dff="satterthwaite")
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_iter'"):
        FormulaMethod(FORMULA, "REML", max_iter=5)
    with pytest.raises(ValueError, match="ddf must be None.*'satterthwaite'.*'residual'"):
        FormulaMethod(FORMULA, "REML", ddf="kenward")
    with pytest.raises(ValueError, match="kenward-roger.*REML"):
        FormulaMethod(FORMULA, "ML", ddf="kenward-roger")
    with pytest.raises(ValueError, match="ddf must be None"):
        FormulaMethod(FORMULA, "REML", ddf=True)
    with pytest.raises(ValueError, match="maxiter"):
        FormulaMethod(FORMULA, "REML", control={"maxiter": 5})
    with pytest.raises(ValueError, match="max_iter must be at least 1"):
        FormulaMethod(FORMULA, "REML", control={"max_iter": 0})
    with pytest.raises(ValueError, match="control must be a FitControl or a dict"):
        FormulaMethod(FORMULA, "REML", control="fast")
    with pytest.raises(ValueError, match="'ML' or 'REML'"):
        FormulaMethod(FORMULA, "OLS")
    with pytest.raises(ValueError, match="'ML' or 'REML'"):
        FormulaMethod(FORMULA, None)


def test_method_and_ddf_in_any_case():
    from mlmsim.engine.control import FitControl

    fm = FormulaMethod(FORMULA, "reml", ddf="Satterthwaite", control={"max_iter": 50})
    assert (fm.method, fm.name, fm.ddf) == ("REML", "REML", "satterthwaite")
    assert fm.control == FitControl(max_iter=50)
    assert FormulaMethod(FORMULA, "Ml").name == "ML"
    assert FormulaMethod(FORMULA, "reml").descriptor() == FormulaMethod(FORMULA).descriptor()
    assert FormulaMethod(FORMULA, "REML", ddf="BETWEEN-WITHIN").ddf == "between-within"


def test_descriptor_of_the_defaults_is_unchanged_and_settings_change_it():
    """The descriptor enters the study's definition hash: a study defined before ddf and
    control existed must keep its hash (its results directory still resumes), and a
    study with them must get another one. The batch size is not in it: no record depends
    on it (test_records_do_not_depend_on_the_batch)."""
    from mlmsim.engine.control import FitControl

    base = FormulaMethod(FORMULA, "REML")
    assert base.descriptor() == {"formula": FORMULA, "method": "REML", "level": 0.95,
                                 "options": {"mapping": []}, "batch": True}
    assert FormulaMethod(FORMULA, "REML", batch_size=7).descriptor() == base.descriptor()
    variants = [FormulaMethod(FORMULA, "REML", ddf=k) for k in DDF_KINDS] + [
        FormulaMethod(FORMULA, "REML", control={"max_iter": 50}),
        FormulaMethod(FORMULA, "REML", control=FitControl(tol=1e-10))]
    descriptors = [base.descriptor()] + [m.descriptor() for m in variants]
    assert len({repr(d) for d in descriptors}) == len(descriptors)
    hashes = {Study(None, random_slopes, [m], n_reps=2, seed=1).definition_hash
              for m in [base, *variants]}
    assert len(hashes) == len(variants) + 1


def ddf_study(ddf, batch=True, n_reps=8, level=0.95):
    return Study({"n_groups": [10]}, random_slopes,
                 [FormulaMethod(FORMULA, "REML", ddf=ddf, batch=batch, level=level)],
                 truth=TRUTH, n_reps=n_reps, seed=7)


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("ddf", DDF_KINDS)
def test_ddf_records_carry_the_df_and_p_of_coef_table(ddf, batch):
    level = 0.9
    study = ddf_study(ddf, batch=batch, n_reps=4, level=level)
    rec = study.run(progress=False).records
    assert rec.error.isna().all()
    for rep in (0, 3):
        one = rec[rec.rep == rep].set_index("parameter")
        res = fit(FORMULA, study.regenerate(0, rep), method="REML")
        table = res.coef_table(ddf, level=level)
        assert np.isfinite(table.df).all()
        rtol = 1e-8 if batch else 1e-12
        for col in ("se", "df", "p", "ci_lower", "ci_upper"):
            np.testing.assert_allclose(one.loc[FIXED, col], table[col], rtol=rtol, err_msg=col)
        # the covariance parameters keep the Wald z interval, with no df or p
        cov = one.loc[COVPARMS]
        assert cov.df.isna().all() and cov.p.isna().all()
        z = 1.6448536269514722
        np.testing.assert_allclose(cov.ci_upper - cov.estimate, z * cov.se, rtol=1e-12)


def test_without_ddf_there_is_no_df_or_p():
    rec = ddf_study(None, n_reps=2).run(progress=False).records
    assert rec.df.isna().all() and rec.p.isna().all()
    z = 1.959963984540054
    np.testing.assert_allclose(rec.ci_upper - rec.estimate, z * rec.se, rtol=1e-12)


@pytest.mark.parametrize("ddf", ["satterthwaite", "containment", "between-within"])
def test_ddf_batched_equals_single(ddf):
    batched = ddf_study(ddf, n_reps=16).run(progress=False).records
    single = ddf_study(ddf, batch=False, n_reps=16).run(progress=False).records
    fixed = batched.parameter.isin(FIXED)
    assert fixed.sum() == 32 and batched.df[fixed].notna().all()
    for col in ("df", "p", "ci_lower", "ci_upper"):
        np.testing.assert_allclose(batched[col], single[col], rtol=1e-8, err_msg=col)
    assert (batched.df.isna() == single.df.isna()).all()


def test_a_nan_df_gives_nan_p_and_interval(monkeypatch):
    """Where the df cannot be computed (Satterthwaite's with a Hessian that is not
    positive definite), p and the interval are NaN: never the normal's."""
    from mlmsim.engine.batch import BatchFit
    from mlmsim.engine.result import FitResult

    real_single, real_batch = FitResult.ddf, BatchFit.ddf
    calls = []

    def single(self, kind="satterthwaite"):  # replicates are fitted in order: 0, 1, ...
        out = np.array(real_single(self, kind), dtype=float)
        if len(calls) % 2 == 0:
            out[1] = np.nan
        calls.append(kind)
        return out

    def batch(self, kind="satterthwaite"):
        out = np.array(real_batch(self, kind), dtype=float)
        out[::2, 1] = np.nan
        return out

    monkeypatch.setattr(FitResult, "ddf", single)
    monkeypatch.setattr(BatchFit, "ddf", batch)
    for batched in (True, False):
        rec = ddf_study("satterthwaite", batch=batched, n_reps=4).run(
            progress=False, chunk_size=4).records   # one batch: 0, 1, 2, 3
        x = rec[rec.parameter == "x"]
        nan = x.rep % 2 == 0
        assert x.se.notna().all() and x.estimate.notna().all()
        for col in ("df", "p", "ci_lower", "ci_upper"):
            assert x.loc[nan, col].isna().all(), col
            assert x.loc[~nan, col].notna().all(), col
        intercept = rec[rec.parameter == "Intercept"]
        assert intercept[["df", "p", "ci_lower", "ci_upper"]].notna().all().all()
        # summarise leaves those replicates out of coverage and rejection (t-based: no
        # normal-theory fallback) and counts the others
        s = summarise(rec).set_index(["parameter", "measure"])
        assert s.loc[("x", "cover"), "n"] == (~nan).sum()
        assert s.loc[("x", "rejection"), "n"] == (~nan).sum()
        assert s.loc[("x", "bias"), "n"] == 4


def _records(**cols):
    n = len(cols["estimate"])
    base = {"condition": 0, "rep": np.arange(n), "method": "m", "parameter": "b",
            "truth": 0.0, "se": 1.0, "ci_lower": np.nan, "ci_upper": np.nan,
            "converged": True, "singular": False, "hessian_pd": True, "identifiable": True,
            "error": None, "seconds": 0.0}
    base.update(cols)
    return pd.DataFrame(base)


def test_summarise_uses_the_t_test_of_the_recorded_df():
    from scipy import stats as sps

    # |t| = 2.2: rejected by z (1.96), not by t on 5 df (2.571), rejected on 60 df (2.0)
    est = np.array([2.2, 2.2, 2.2, -2.2, 0.1])
    df = np.array([5.0, 5.0, 60.0, 60.0, np.nan])
    crit = sps.t.ppf(0.975, np.nan_to_num(df, nan=1.0))
    p = np.where(np.isnan(df), np.nan, 2 * sps.t.sf(np.abs(est), np.nan_to_num(df, nan=1)))
    lo = np.where(np.isnan(df), np.nan, est - crit)
    hi = np.where(np.isnan(df), np.nan, est + crit)
    t_rec = _records(estimate=est, df=df, p=p, ci_lower=lo, ci_upper=hi)
    s = summarise(t_rec).set_index("measure")
    assert s.loc["rejection", "n"] == 4 and s.loc["rejection", "estimate"] == 0.5
    assert s.loc["cover", "n"] == 4
    assert s.loc["cover", "estimate"] == 0.5   # 0 lies in the 5-df intervals only
    assert s.loc["becover", "n"] == 4
    # without df (a method that records only estimates and SEs): the Wald z test and
    # interval, for every record, as before; old records without the column alike
    z_rec = _records(estimate=est)
    for rec in (z_rec, z_rec.assign(df=np.nan, p=np.nan)):
        s = summarise(rec).set_index("measure")
        assert s.loc["rejection", "n"] == 5 and s.loc["rejection", "estimate"] == 0.8
        assert s.loc["cover", "n"] == 5 and s.loc["cover", "estimate"] == 0.2


def test_unbounded_records_equal_single_unbounded_fits():
    study = Study({"n_groups": [10]}, random_slopes,
                  [FormulaMethod(FORMULA, "REML", bounded=False, ddf="satterthwaite")],
                  truth=TRUTH, n_reps=4, seed=7)
    assert FormulaMethod(FORMULA, "REML", bounded=False).descriptor()["bounded"] is False
    assert "bounded" not in FormulaMethod(FORMULA, "REML").descriptor()
    with pytest.raises(ValueError, match="bounded"):
        FormulaMethod(FORMULA, "REML", bounded="no")
    rec = study.run(progress=False).records
    for rep in range(4):
        one = rec[rec.rep == rep].set_index("parameter")
        res = fit(FORMULA, study.regenerate(0, rep), method="REML", bounded=False)
        np.testing.assert_allclose(one.loc[list(res.params.index), "estimate"], res.params,
                                   rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(one.loc[FIXED, "df"], res.ddf("satterthwaite"), rtol=1e-6)


@pytest.mark.parametrize("batch", [True, False])
def test_expected_information_records_the_scoring_ses(batch):
    """information="expected": the covariance parameters' SEs and Wald intervals are those
    of covparms_table("expected"); the fixed effects' are unchanged."""
    method = FormulaMethod(FORMULA, "REML", information="expected", batch=batch, batch_size=4)
    st = Study({"n_groups": [10]}, random_slopes, [method], truth=TRUTH, n_reps=4, seed=3)
    rec = st.run(progress=False).records
    assert method.descriptor()["information"] == "expected"
    for rep in (0, 3):
        one = rec[rec.rep == rep].set_index("parameter")
        res = fit(FORMULA, st.regenerate(0, rep), method="REML")
        exp = res.covparms_table("expected")["se"]
        np.testing.assert_allclose(one.loc[COVPARMS, "se"], exp[COVPARMS], rtol=1e-8)
        np.testing.assert_allclose(one.loc[FIXED, "se"], res.fixef_se[FIXED], rtol=1e-8)
        z = 1.959963984540054
        np.testing.assert_allclose(one.loc[COVPARMS, "ci_upper"] - one.loc[COVPARMS, "estimate"],
                                   z * exp[COVPARMS], rtol=1e-8)
    with pytest.raises(ValueError, match="information must be"):
        FormulaMethod(FORMULA, information="fisher")
