"""The data generator: reproducibility, the DataFrame and batch forms, and property tests
(hypothesis) of the seed's moments with tolerances derived from the spec and the sample
size; then the engine on simulated data (the seed's models (a), (b), (c); recovery).

Tolerances. A sample second moment S_ab = mean_i d_ia d_ib of n iid vectors d = G e
(e with independent standardised components, E e_k^4 = kappa_k) has, by the CLT,
standard error sqrt((V_aa V_bb + V_ab^2 + sum_k (kappa_k - 3) G_ak^2 G_bk^2) / n),
V = G G'. A linear statistic sum_i w_i' d_i has variance sum_i w_i' V_i w_i exactly.
Each check allows z standard errors, z the normal quantile for a family-wise false
alarm rate of 1e-6 over the elements checked (Bonferroni), so z is about 5.3 to 5.6.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps
from formulaic import model_matrix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlmsim.generate.covariance import T_from_sd_corr
from mlmsim.generate.distributions import ChiSquare, Discrete, Normal, StudentT
from mlmsim.generate.predictors import (
    Binary,
    Categorical,
    Complement,
    Continuous,
    GroupCentered,
    GroupMean,
    Indicator,
    Level2Binary,
    Level2Continuous,
    Values,
)
from mlmsim.generate.simulate import (
    SimBatch,
    as_generator,
    draw_effects,
    draw_group_sizes,
    factor_T,
    simulate,
    simulate_batch,
)
from mlmsim.generate.sizes import PoissonSizes, SizeList, UniformSizes
from mlmsim.generate.spec import ModelSpec

FAMILY_ALPHA = 1e-6
PROPERTY = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def z_for(m: int) -> float:
    """Normal quantile for m two-sided checks at family-wise level FAMILY_ALPHA."""
    return float(sps.norm.isf(FAMILY_ALPHA / (2 * m)))


def second_moment_se(G: np.ndarray, kurt: np.ndarray, n: int) -> np.ndarray:
    """SE of the sample second moments of d = G e over n iid draws (module docstring)."""
    V = G @ G.T
    d = np.diag(V)
    G2 = G ** 2
    var = np.outer(d, d) + V ** 2 + (G2 * (kurt - 3.0)) @ G2.T
    return np.sqrt(np.maximum(var, 0.0) / n)


def example_spec(**changes) -> ModelSpec:
    base = dict(
        predictors=(Continuous("x", var_between=0.3), Binary("female", p=0.5, p_sd=0.2),
                    Level2Continuous("z")),
        gamma={"Intercept": 1.0, "x": 0.5, "female": -0.4, "z": 0.3, "x:z": 0.2},
        random=("Intercept", "x", "female"),
        T=T_from_sd_corr([1.0, 0.5, 0.7], [[1, 0.3, -0.2], [0.3, 1, 0.1], [-0.2, 0.1, 1]]),
        sigma2=1.0,
        group_sizes=5,
    )
    base.update(changes)
    return ModelSpec(**base)


# ---------------------------------------------------------------------------
# hypothesis strategies: random valid specs
# ---------------------------------------------------------------------------

@st.composite
def loadings(draw, q: int) -> np.ndarray:
    """A (q x r) matrix A of halves in [-2, 2], r in 0..q: T = A A' is PSD with column
    space col(A), singular whenever rank A < q (exactly, as the entries are exact)."""
    r = draw(st.integers(0, q))
    vals = draw(st.lists(st.integers(-4, 4), min_size=q * r, max_size=q * r))
    return np.array(vals, dtype=float).reshape(q, r) / 2.0


distributions = st.one_of(
    st.just(Normal()),
    st.builds(StudentT, st.floats(6.0, 30.0)),
    st.builds(ChiSquare, st.floats(1.0, 20.0)),
    st.just(Discrete()),
    st.builds(Discrete, st.just((0.0, 1.0, 3.0)), st.just((0.5, 0.3, 0.2))),
)


def null_basis(A: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the complement of col(A) (exact A, well-separated spectrum)."""
    q = A.shape[0]
    if A.shape[1] == 0:
        return np.eye(q)
    U, s, _ = np.linalg.svd(A, full_matrices=True)
    rank = int((s > 1e-8 * max(s.max(), 1e-300)).sum()) if s.size else 0
    return U[:, rank:]


@st.composite
def slope_specs(draw) -> ModelSpec:
    """Specs with continuous, binary (group-varying p), categorical and level-2
    predictors, a cross-level interaction, up to three random effects (any PSD T) and
    any of the distributions."""
    slopes = draw(st.lists(st.sampled_from(["x", "female"]), unique=True, max_size=2))
    random = ("Intercept", *slopes)
    A = draw(loadings(len(random)))
    coef = st.floats(-2.0, 2.0)
    gamma = {"Intercept": draw(coef), "x": draw(coef), "z": draw(coef), "x:z": draw(coef),
             "grade[T.b]": draw(coef)}
    if draw(st.booleans()):
        gamma["female"] = draw(coef)
    p = draw(st.floats(0.1, 0.9))
    return ModelSpec(
        predictors=(Continuous("x", mean=draw(st.floats(-1, 1)),
                               var_between=draw(st.floats(0, 1)),
                               var_within=draw(st.floats(0.1, 2))),
                    Binary("female", p=p, p_sd=draw(st.floats(0, 0.9)) * np.sqrt(p * (1 - p))),
                    Categorical("grade", ("a", "b", "c")),
                    draw(st.sampled_from([Level2Continuous("z", var=0.5), Level2Binary("z")]))),
        gamma=gamma, random=random, T=A @ A.T, sigma2=draw(st.floats(0.1, 4.0)),
        u_dist=draw(distributions), r_dist=draw(distributions),
    )


# ---------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------

@PROPERTY
@given(q=st.integers(1, 3), data=st.data(), dist=distributions, seed=st.integers(0, 2**32))
def test_U_covariance_matches_T_and_lies_in_its_column_space(q, data, dist, seed):
    A = data.draw(loadings(q))
    names = ("Intercept", "x1", "x2")[:q]
    spec = ModelSpec(predictors=(Continuous("x1"), Continuous("x2")), gamma={}, random=names,
                     T=A @ A.T, sigma2=1.0, u_dist=dist)
    assert spec.random_names == names  # engine order = the order given
    J = 20_000
    U = simulate_batch(spec, 1, J, 1, rng=seed).U[0]
    assert U.shape == (J, q)
    # every draw lies in T's column space, col(A), to 1e-10
    N = null_basis(A)
    assert np.abs(U @ N).max(initial=0.0) <= 1e-10
    # the sample covariance (known mean 0) matches T within z SEs
    F = factor_T(spec.T)
    S = U.T @ U / J
    se = second_moment_se(F, np.full(F.shape[1], dist.kurtosis), J)
    z = z_for(q * (q + 1) // 2)
    assert (np.abs(S - spec.T) <= z * se + 1e-12).all(), (S, spec.T, se)


@PROPERTY
@given(spec=slope_specs(), n=st.integers(2, 6), seed=st.integers(0, 2**32))
def test_mean_of_y_given_the_predictors_is_X_gamma(spec, n, seed):
    R, J = 100, 20
    b = simulate_batch(spec, R, J, n, rng=seed)
    gamma = spec.truth.gamma.to_numpy()
    d = b.y - b.X @ gamma                       # = Z U + R given X, mean 0 if E(y|X) = X gamma
    stat = np.einsum("rnk,rn->k", b.X, d)        # sum_r X_r' d_r, one per column of X
    # var(X_r' d_r | X) = sum_j a_j' T a_j + sigma^2 sum_n x_n^2, a_j = Z_j' x_j
    starts = np.concatenate(([0], np.cumsum(b.sizes)[:-1]))
    a = np.add.reduceat(b.Z[..., :, None] * b.X[..., None, :], starts, axis=1)  # (R, J, q, p)
    var = np.einsum("rjak,ab,rjbk->k", a, spec.T_engine, a) \
        + spec.sigma2 * np.einsum("rnk,rnk->k", b.X, b.X)
    tol = z_for(gamma.size) * np.sqrt(var) + 1e-9 * (1 + np.abs(stat))
    assert (np.abs(stat) <= tol).all(), (stat, np.sqrt(var))


@PROPERTY
@given(xs=st.lists(st.integers(-4, 4), min_size=2, max_size=4), data=st.data(),
       sigma2=st.floats(0.1, 4.0), u_dist=distributions, r_dist=distributions,
       seed=st.integers(0, 2**32))
def test_marginal_variance_and_within_group_covariance_at_given_x(xs, data, sigma2, u_dist,
                                                                  r_dist, seed):
    x = np.array(xs, dtype=float) / 2.0
    A = data.draw(loadings(2))
    spec = ModelSpec(predictors=(Values("x", tuple(x)),), gamma={"Intercept": 1.0, "x": -0.5},
                     random=("Intercept", "x"), T=A @ A.T, sigma2=sigma2,
                     u_dist=u_dist, r_dist=r_dist)
    n, J = x.size, 20_000
    b = simulate_batch(spec, 1, J, n, rng=seed)
    d = (b.y[0] - (1.0 - 0.5 * b.columns["x"][0])).reshape(J, n)  # the units' deviations
    S = d.T @ d / J
    (t0, t10), (_, t1) = spec.T
    # the seed: var(Y_ij) = tau0^2 + 2 tau10 x + tau1^2 x^2 + sigma^2 and
    # cov(Y_ij, Y_i'j) = tau0^2 + tau10 (x + x') + tau1^2 x x'
    V = t0 + t10 * (x[:, None] + x[None, :]) + t1 * np.outer(x, x) + sigma2 * np.eye(n)
    Zj = np.column_stack([np.ones(n), x])
    F = factor_T(spec.T)
    G = np.hstack([Zj @ F, np.sqrt(sigma2) * np.eye(n)])
    kurt = np.r_[np.full(F.shape[1], u_dist.kurtosis), np.full(n, r_dist.kurtosis)]
    np.testing.assert_allclose(G @ G.T, V, atol=1e-12)
    se = second_moment_se(G, kurt, J)
    assert (np.abs(S - V) <= z_for(n * (n + 1) // 2) * se + 1e-12).all(), (S, V, se)


@PROPERTY
@given(spec=slope_specs(), seed=st.integers(0, 2**32))
def test_random_specs_survive_files_and_simulate_identically(spec, seed):
    """A study definition reloaded from its YAML or JSON file draws the same data."""
    data = simulate(spec, 5, 3, rng=seed)
    for again in (ModelSpec.from_yaml(spec.to_yaml()), ModelSpec.from_json(spec.to_json())):
        assert again == spec
        pd.testing.assert_frame_equal(simulate(again, 5, 3, rng=seed), data, check_exact=True)


def test_singular_T_examples():
    for T in (T_from_sd_corr([1.0, 2.0], 1.0), T_from_sd_corr([1.0, 2.0], -1.0),
              np.outer([1.0, -1.0, 2.0], [1.0, -1.0, 2.0]), np.zeros((2, 2)),
              np.diag([2.0, 0.0, 1.0])):
        q = T.shape[0]
        F = factor_T(T)
        np.testing.assert_allclose(F @ F.T, T, atol=1e-14)
        assert F.shape[1] == np.linalg.matrix_rank(T)
        U = draw_effects(T, 5000, rng=1)
        w, V = np.linalg.eigh(T)
        null = V[:, w < 1e-12 * max(w.max(), 1)]
        assert U.shape == (5000, q) and np.abs(U @ null).max(initial=0.0) <= 1e-10
    assert (draw_effects(np.zeros((2, 2)), 10, rng=1) == 0).all()
    with pytest.raises(ValueError, match="most negative eigenvalue is -1"):
        factor_T([[1.0, 2.0], [2.0, 1.0]])


def test_discrete_U_takes_finitely_many_values():
    spec = example_spec(u_dist=Discrete())
    U = simulate_batch(spec, 2, 500, 1, rng=3).U.reshape(-1, 3)
    assert len(np.unique(U.round(12), axis=0)) <= 2 ** 3


def per_component_spec(**changes) -> ModelSpec:
    """A normal random intercept and slope of z, correlated, and a two-point random slope
    of x, uncorrelated with both (so T allows a distribution per component)."""
    T = np.array([[2.0, 0.0, 0.6], [0.0, 0.5, 0.0], [0.6, 0.0, 1.0]])
    base = dict(predictors=(Continuous("x"), Continuous("w")),
                gamma={"Intercept": 1.0, "x": 0.5, "w": 0.2}, random=("Intercept", "x", "w"),
                T=T, sigma2=1.0, group_sizes=1,
                u_dist={"Intercept": Normal(), "x": Discrete(), "w": Normal()})
    base.update(changes)
    return ModelSpec(**base)


def test_per_component_u_dist_two_point_slope_and_normal_intercept():
    spec = per_component_spec()
    J = 40_000
    U = simulate_batch(spec, 1, J, rng=11).U[0]
    assert spec.random_names == ("Intercept", "x", "w")
    T = spec.T_engine
    z = z_for(12)
    # the slope of x takes exactly the two points +- sqrt(T_xx), each with probability 1/2
    slope = U[:, 1]
    np.testing.assert_allclose(np.unique(slope), [-np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-14)
    share = np.mean(slope > 0)
    assert abs(share - 0.5) < z * np.sqrt(0.25 / J)
    # second moments: cov(U) = T, the slope's fourth moment that of a two-point law
    kurt = np.array([3.0, 1.0, 3.0])
    G = np.zeros((3, 3))
    G[np.ix_([0, 2], [0, 2])] = np.linalg.cholesky(T[np.ix_([0, 2], [0, 2])])
    G[1, 1] = np.sqrt(T[1, 1])
    se = second_moment_se(G, kurt, J)
    S = U.T @ U / J  # (the slope's variance is exact: its square is always T_xx)
    assert (np.abs(S - T) <= z * se + 1e-12).all(), (S, T)
    # the intercept (and w) stay normal: skewness and excess kurtosis near 0
    for k in (0, 2):
        u = U[:, k]
        assert abs(sps.skew(u)) < z * np.sqrt(6.0 / J)
        assert abs(sps.kurtosis(u)) < z * np.sqrt(24.0 / J)
    # a single distribution for the whole vector would mix the two-point component into
    # the others: per component it must not
    assert len(np.unique(U[:, 0])) == J


def test_per_component_u_dist_refuses_a_correlated_non_normal_component():
    T = np.array([[2.0, 0.3, 0.0], [0.3, 0.5, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"x a discrete distribution.*cov\(x,Intercept\) = "
                                         r"0\.3.*uncorrelated"):
        per_component_spec(T=T)
    # normal components may be correlated with each other
    ok = per_component_spec(T=T, u_dist={"x": Normal(), "w": ChiSquare(4)})
    assert ok.u_components == (Normal(), Normal(), ChiSquare(4))
    with pytest.raises(ValueError, match="'v', which is not a random effect"):
        per_component_spec(u_dist={"v": Discrete()})
    with pytest.raises(ValueError, match=r"u_dist\['x'\]"):
        per_component_spec(u_dist={"x": "discrete"})
    with pytest.raises(ValueError, match="uncorrelated"):
        draw_effects(T, 10, rng=1, dist=[Normal(), Discrete(), Normal()])
    U = draw_effects(np.diag([4.0, 1.0]), 1000, rng=1, dist=[Discrete(), StudentT(5)])
    np.testing.assert_allclose(np.unique(U[:, 0]), [-2.0, 2.0])


def test_per_component_u_dist_is_reproducible_and_names_default_to_normal():
    spec = per_component_spec(u_dist={"x": Discrete()})
    assert spec.u_components == (Normal(), Discrete(), Normal())
    a, b = (simulate_batch(spec, 3, 50, rng=5) for _ in range(2))
    np.testing.assert_array_equal(a.U, b.U)
    np.testing.assert_array_equal(a.y, b.y)
    assert example_spec().u_components is None


# ---------------------------------------------------------------------------
# reproducibility and randomness
# ---------------------------------------------------------------------------

def test_same_seed_same_data_bit_for_bit():
    spec = example_spec(group_sizes=PoissonSizes(6.0), u_dist=StudentT(5), r_dist=ChiSquare(2))
    a = simulate(spec, 20, rng=42, effects=True)
    pd.testing.assert_frame_equal(a, simulate(spec, 20, rng=42, effects=True), check_exact=True)
    pd.testing.assert_frame_equal(a, simulate(spec, 20, rng=np.random.SeedSequence(42),
                                              effects=True), check_exact=True)
    pd.testing.assert_frame_equal(a, simulate(spec, 20, rng=np.random.default_rng(42),
                                              effects=True), check_exact=True)
    assert not a.equals(simulate(spec, 20, rng=43, effects=True))
    b1, b2 = (simulate_batch(spec, 50, 20, rng=7) for _ in range(2))
    for name in ("y", "X", "Z", "U", "codes", "sizes"):
        np.testing.assert_array_equal(getattr(b1, name), getattr(b2, name))
    # simulate() is the batch form with one replicate
    pd.testing.assert_frame_equal(a, simulate_batch(spec, 1, 20, rng=42).frame(0, effects=True),
                                  check_exact=True)


def test_no_global_random_state():
    spec = example_spec()
    np.random.seed(0)  # noqa: NPY002 - the legacy global state must not matter
    a = simulate(spec, 10, rng=5)
    np.random.seed(1)  # noqa: NPY002
    pd.testing.assert_frame_equal(a, simulate(spec, 10, rng=5), check_exact=True)
    assert not simulate(spec, 10).equals(simulate(spec, 10))  # None: fresh entropy
    gen = np.random.default_rng(0)
    assert as_generator(gen) is gen
    with pytest.raises(ValueError, match="rng"):
        simulate(spec, 10, rng="seed")


# ---------------------------------------------------------------------------
# the DataFrame and batch forms
# ---------------------------------------------------------------------------

def every_kind_spec() -> ModelSpec:
    return ModelSpec(
        predictors=(Continuous("x", mean=1.0, var_between=0.5), Binary("female", p=0.4),
                    Complement("male", of="female"),
                    Categorical("grade", ("a", "b", "c"), probs=(0.2, 0.3, 0.5)),
                    Indicator("grade_c", of="grade", category="c"), Values("t", (0.0, 1.0, 2.0)),
                    GroupMean("xbar", of="x"), GroupCentered("xc", of="x"),
                    Level2Continuous("z"), Level2Binary("private", p=0.3)),
        gamma={"Intercept": 1.0, "xc": 0.5, "xbar": 0.2, "female": -1.0, "grade[T.b]": 0.3,
               "grade[T.c]:xc": 0.4, "t": 0.2, "z": 0.1, "xc:z": -0.2, "private": 0.7,
               "t:female:z": 0.05},
        random=("Intercept", "female", "male", "t"), T=np.diag([1.0, 0.5, 0.25, 0.1]),
        sigma2=1.0, group_sizes=UniformSizes(2, 7), group="school", response="score",
    )


def test_frame_columns_and_derived_predictors():
    spec = every_kind_spec()
    data = simulate(spec, 40, rng=11, effects=True)
    names = ["school", "x", "female", "male", "grade", "grade_c", "t", "xbar", "xc", "z",
             "private", "score"]
    assert list(data.columns) == names + ["U_Intercept", "U_female", "U_male", "U_t"]
    assert data["school"].nunique() == 40 and data["school"].is_monotonic_increasing
    sizes = data.groupby("school").size()
    assert sizes.between(2, 7).all()
    assert isinstance(data["grade"].dtype, pd.CategoricalDtype)
    assert list(data["grade"].cat.categories) == ["a", "b", "c"]
    assert data["female"].dtype == np.int64 and set(data["female"]) <= {0, 1}
    assert (data["male"] == 1 - data["female"]).all()
    assert (data["grade_c"] == (data["grade"] == "c")).all()
    g = data.groupby("school")
    np.testing.assert_allclose(data["xbar"], g["x"].transform("mean"), atol=1e-12)
    np.testing.assert_allclose(g["xc"].sum(), 0.0, atol=1e-12)
    assert (g["z"].nunique() == 1).all() and (g["private"].nunique() == 1).all()
    assert (g["U_female"].nunique() == 1).all()
    np.testing.assert_array_equal(data["t"], g.cumcount() % 3)  # values per position


def test_batch_design_equals_formulaics_and_y_decomposes():
    spec = every_kind_spec()
    b = simulate_batch(spec, 3, 25, rng=5)
    assert isinstance(b, SimBatch)
    R, N = b.y.shape
    assert b.X.shape == (R, N, len(spec.fixed_names)) and b.Z.shape == (R, N, 4)
    fixed = spec.formula.split("~")[1].split("+ (")[0]
    rand = spec.formula.split("(")[1].split("|")[0]
    for r in range(R):
        frame = b.frame(r, effects=True)
        mm = model_matrix(fixed, frame)
        assert list(mm.columns) == list(b.fixed_names)
        np.testing.assert_allclose(b.X[r], mm.to_numpy(), rtol=0, atol=1e-12)
        zz = model_matrix(rand, frame)
        assert list(zz.columns) == list(b.random_names)
        np.testing.assert_allclose(b.Z[r], zz.to_numpy(), rtol=0, atol=1e-12)
        U = frame[[f"U_{k}" for k in b.random_names]].to_numpy()
        resid = frame["score"] - mm.to_numpy() @ spec.truth.gamma.to_numpy() - (b.Z[r] * U).sum(1)
        assert abs(resid.mean()) < 5 * np.sqrt(spec.sigma2 / N)


def test_continuous_predictor_between_and_within_variance():
    vb, vw, n, J = 0.7, 1.3, 4, 20_000
    spec = ModelSpec(predictors=(Continuous("x", mean=2.0, var_between=vb, var_within=vw),),
                     gamma={}, random=("Intercept",), T=1.0, sigma2=1.0)
    x = simulate_batch(spec, 1, J, n, rng=9).columns["x"][0].reshape(J, n)
    means = x.mean(1)
    within = ((x - means[:, None]) ** 2).sum(1) / (n - 1)
    # mean: SE sqrt((vb + vw/n)/J); group-mean variance vb + vw/n: chi-square SE
    # sqrt(2/(J-1)) times it; within variance vw: SE vw sqrt(2/(J (n-1)))
    z = z_for(3)
    assert abs(means.mean() - 2.0) <= z * np.sqrt((vb + vw / n) / J)
    assert abs(means.var(ddof=1) - (vb + vw / n)) <= z * (vb + vw / n) * np.sqrt(2 / (J - 1))
    assert abs(within.mean() - vw) <= z * vw * np.sqrt(2 / (J * (n - 1)))


def test_binary_group_probabilities_vary_as_asked():
    p, p_sd, n, J = 0.3, 0.2, 50, 4000
    spec = ModelSpec(predictors=(Binary("f", p=p, p_sd=p_sd),), gamma={}, random=("Intercept",),
                     T=1.0, sigma2=1.0)
    f = simulate_batch(spec, 1, J, n, rng=4).columns["f"][0].reshape(J, n)
    props = f.mean(1)
    # var(prop_j) = var(p_j) + E[p_j (1 - p_j)] / n = p_sd^2 + (p (1 - p) - p_sd^2) / n
    target = p_sd ** 2 + (p * (1 - p) - p_sd ** 2) / n
    assert abs(props.mean() - p) <= z_for(2) * np.sqrt(target / J)
    # chi-square-like SE of a variance, inflated for the Beta mixture's kurtosis (< 3 here)
    assert abs(props.var(ddof=1) - target) <= z_for(2) * target * np.sqrt(2 / (J - 1))


def test_group_size_rules():
    rng = np.random.default_rng(0)
    assert (draw_group_sizes(4, 10, rng) == 4).all()
    np.testing.assert_array_equal(draw_group_sizes([3, 1, 2], None, rng), [3, 1, 2])
    with pytest.raises(ValueError, match="resample=True"):
        draw_group_sizes([3, 1, 2], 5, rng)
    res = draw_group_sizes(SizeList((3, 1, 2), resample=True), 500, rng)
    assert res.shape == (500,) and set(res) == {1, 2, 3}
    pois = draw_group_sizes(PoissonSizes(6.0, minimum=2), 20_000, rng)
    assert pois.min() >= 2 and abs(pois.mean() - 6.0) <= z_for(1) * np.sqrt(4.0 / 20_000)
    uni = draw_group_sizes(UniformSizes(3, 5), 1000, rng)
    assert set(uni) == {3, 4, 5}
    hsb = SizeList.from_dataset("hsb")
    data = simulate(example_spec(group_sizes=hsb), rng=1)
    assert data["g"].nunique() == 160 and len(data) == 7185
    with pytest.raises(ValueError, match="n_groups"):
        simulate(example_spec(), 0, rng=1)
    with pytest.raises(ValueError, match="at least 1"):
        simulate(example_spec(), 10, 0, rng=1)
    with pytest.raises(ValueError, match="number of groups is needed"):
        simulate(example_spec(), rng=1)
    with pytest.raises(ValueError, match="no group size"):
        simulate(example_spec(group_sizes=None), 10, rng=1)
    assert len(simulate(example_spec(n_groups=7), rng=1)) == 35


def test_values_per_row_must_match_the_rows():
    spec = ModelSpec(predictors=(Values("w", (1.0, 2.0, 3.0, 4.0), per="row"),),
                     gamma={"w": 1.0}, random=("Intercept",), T=1.0, sigma2=1.0)
    assert simulate(spec, 2, 2, rng=1)["w"].tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="4 values"):
        simulate(spec, 3, 2, rng=1)


# ---------------------------------------------------------------------------
# with the engine
# ---------------------------------------------------------------------------

def hsb_like(random: tuple[str, ...], T) -> ModelSpec:
    """The seed's discrete-slope models (a), (b), (c) on HSB's 160 school sizes."""
    return ModelSpec(
        predictors=(Continuous("ses", var_between=0.4, var_within=0.45),
                    GroupCentered("cses", of="ses"), GroupMean("meanses", of="ses"),
                    Binary("female", p=0.5, p_sd=0.15), Complement("male", of="female")),
        gamma={"Intercept": 13.0, "cses": 2.2, "meanses": 5.0, "female": -1.2},
        random=random, T=T, sigma2=36.0, group="school", response="math",
        group_sizes=SizeList.from_dataset("hsb"),
    )


def test_seed_models_a_b_c_fitted_to_data_from_b():
    from mlmsim import fit

    b = hsb_like(("Intercept", "female"), [[8.0, -1.0], [-1.0, 1.0]])
    a = hsb_like(("Intercept", "female", "male"), np.diag([8.0, 1.0, 0.0]))
    c = hsb_like(("female", "male"), [[7.0, 7.0], [7.0, 8.0]])
    data = simulate(b, rng=2024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = {name: fit(s.formula, data, method="REML") for name, s in
                (("a", a), ("b", b), ("c", c))}
    for name, s in (("a", a), ("b", b), ("c", c)):
        assert list(fits[name].params.index) == list(s.truth.params.index)
    fb, fc, fa = fits["b"], fits["c"], fits["a"]
    assert fb.converged and fc.converged and fb.hessian_pd and fc.hessian_pd
    # (b) and (c) are one model in two parametrisations: same fit, T mapped by
    # (female intercept, male intercept) = (u0 + u1, u0)
    assert fc.deviance == pytest.approx(fb.deviance, abs=1e-6)
    np.testing.assert_allclose(fc.fixef, fb.fixef, rtol=1e-5)
    M = np.array([[1.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(fc.T.to_numpy(), M @ fb.T.to_numpy() @ M.T, rtol=1e-3)
    # the true T of (c) is the same map of (b)'s
    np.testing.assert_allclose(c.T, M @ b.T @ M.T)
    # (a) has a redundant random effect: same likelihood, flagged
    assert fa.deviance == pytest.approx(fb.deviance, abs=1e-3)
    assert not fa.identifiable or not fa.hessian_pd
    assert any("not positive definite" in m or "identifiable" in m for m in fa.messages)


def test_batch_arrays_fit_as_the_frames_do():
    from mlmsim import fit, fit_arrays

    spec = example_spec(random=("Intercept", "x"), T=[[1.0, 0.2], [0.2, 0.5]])
    b = simulate_batch(spec, 3, 30, 5, rng=8)
    batch = fit_arrays(**b.arrays(), method="REML")
    assert list(batch.param_names) == list(spec.truth.params.index)
    for r in range(3):
        one = fit(spec.formula, b.frame(r), method="REML")
        np.testing.assert_allclose(batch.params[r], one.params.to_numpy(), rtol=1e-5, atol=1e-7)


def test_true_model_recovered_from_2000_groups_of_10():
    """gamma, T and sigma^2 within 3 SEs (fixed effects: sqrt(diag vcov); covariance
    parameters: sqrt(diag 2 H^-1)) from one large data set: random intercept and two
    random slopes, one of them on a binary variable."""
    from mlmsim import fit

    spec = example_spec()
    data = simulate(spec, 2000, 10, rng=20240601)
    res = fit(spec.formula, data, method="REML")
    assert res.converged and res.hessian_pd
    truth = spec.truth.params
    est = res.params[truth.index]
    se = pd.concat([res.fixef_se, res.covparms["se"]])[truth.index]
    assert np.isfinite(se).all()
    z = (est - truth) / se
    assert (z.abs() <= 3).all(), z


def test_balanced_level2_binary_treats_exactly_round_p_j_groups():
    import mlmsim

    spec = mlmsim.ModelSpec(predictors=[mlmsim.Level2Binary("w", p=0.3, balanced=True)],
                            gamma={"Intercept": 0.0, "w": 1.0}, random=["Intercept"], T=0.1,
                            sigma2=1.0)
    b = mlmsim.simulate_batch(spec, 50, 11, 4, rng=3)
    w = b.X[:, ::4, 1]  # one row per group
    assert np.all(w.sum(axis=1) == 3)  # round(0.3 * 11)
    assert len({tuple(r) for r in w}) > 10  # which groups varies between replicates
    assert mlmsim.ModelSpec.from_yaml(spec.to_yaml()) == spec
    plain = mlmsim.Level2Binary("w")
    assert "balanced" not in plain.to_dict()  # specs written before keep their form
    with pytest.raises(ValueError, match="balanced"):
        mlmsim.Level2Binary("w", balanced="yes")
