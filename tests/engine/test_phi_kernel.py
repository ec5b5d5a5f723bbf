"""The compiled phi Hessian (:mod:`mlmsim.engine.phi_kernel`) against finite differences.

Reference: :func:`mlmsim.engine.inference.phi_hessian_fd`, central differences of the
analytic gradient in phi (which tests/engine/test_deviance.py checks against Richardson
differences of the objective, itself checked against the dense likelihood), to
1e-5 relative to the largest absolute element of H; random data sets for q = 1..4,
p = 1..3, balanced and unbalanced groups, padded empty groups, block-diagonal T,
singular T, ML and REML; the batched driver against the batched numpy call; and
the fitted HSB model's Hessian at its optimum.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as hst

import mlmsim
from mlmsim.engine import inference
from mlmsim.engine.inference import CovStructure
from mlmsim.engine.stats import GroupStats, group_stats, stack_stats

RTOL = 1e-5

STRUCTURES = [
    (1, ((0,),)),
    (2, ((0, 1),)),
    (2, ((0,), (1,))),
    (3, ((0, 1, 2),)),
    (3, ((0,), (1, 2))),
    (4, ((0, 1, 2, 3),)),
    (4, ((0, 1), (2, 3))),
]
STRUCTURE_IDS = [f"q{q}-" + "|".join("".join(map(str, b)) for b in blocks)
                 for q, blocks in STRUCTURES]


def simulate_stats(rng: np.random.Generator, q: int, p: int, J: int, balanced: bool,
                   n_empty: int = 0) -> GroupStats:
    """Statistics of a random two-level data set with J non-empty groups; ``n_empty`` more
    groups without observations (A_j, B_j, c_j = 0) sit at random positions among them."""
    sizes = np.full(J, 6) if balanced else rng.integers(1, 15, J)
    labels = np.sort(rng.permutation(J + n_empty)[:J])
    codes = np.repeat(labels, sizes)
    N = codes.shape[0]
    W = rng.standard_normal((N, max(p - 1, q - 1) + 1))
    X = np.column_stack([np.ones(N), W[:, : p - 1]])
    # random slopes of the first covariates (shared with X as far as p allows)
    Z = np.column_stack([np.ones(N), W[:, : q - 1]])
    U = rng.standard_normal((J + n_empty, q)) * 0.7
    y = X @ rng.standard_normal(p) + np.einsum("nq,nq->n", Z, U[codes]) \
        + rng.standard_normal(N)
    return group_stats(y, X, Z, codes, J + n_empty)


def random_phi(rng: np.random.Generator, cs: CovStructure, blocks, zero: int | None = None
               ) -> np.ndarray:
    """phi from a block-diagonal T = scale L L' (random Cholesky factors per block) and
    sigma^2 near 1; with ``zero``, that variance and its covariances set to 0 (T singular)."""
    T = np.zeros((cs.q, cs.q))
    for block in blocks:
        idx = np.array(block)
        L = np.tril(rng.standard_normal((idx.size, idx.size)))
        T[np.ix_(idx, idx)] = rng.uniform(0.2, 2.0) * (L @ L.T) / idx.size
    if zero is not None:
        T[zero, :] = 0.0
        T[:, zero] = 0.0
    return cs.phi(T, rng.uniform(0.6, 1.5))


def kernel_one(st: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    return inference.phi_hessian(st, cs, np.asarray(phi, dtype=float), reml)


def replicate(stk: GroupStats, r: int) -> GroupStats:
    """Replicate r of stacked statistics (with the stack's padding)."""
    return GroupStats(**{f.name: np.asarray(getattr(stk, f.name))[r] for f in fields(GroupStats)})


def assert_matches(H: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> None:
    assert H.shape == ref.shape
    assert np.all(np.isfinite(H))
    scale = np.abs(ref).max(axis=(-2, -1), keepdims=True)
    err = np.abs(H - ref) / scale
    assert err.max() <= rtol, f"max relative error {err.max():.3g}"
    np.testing.assert_array_equal(H, np.swapaxes(H, -1, -2))


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("n_empty", [0, 3], ids=["dense", "padded"])
@pytest.mark.parametrize("balanced", [True, False], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("q,blocks", STRUCTURES, ids=STRUCTURE_IDS)
def test_one_matches_differences(q, blocks, p, balanced, n_empty, reml):
    rng = np.random.default_rng([q, len(blocks), p, balanced, n_empty, reml])
    st = simulate_stats(rng, q, p, 25, balanced, n_empty)
    cs = CovStructure.from_blocks(q, blocks)
    phi = random_phi(rng, cs, blocks)
    assert_matches(kernel_one(st, cs, phi, reml), inference.phi_hessian_fd(st, cs, phi, reml))


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("q,blocks", STRUCTURES, ids=STRUCTURE_IDS)
def test_one_matches_differences_singular_T(q, blocks, reml):
    """A zero variance with zero covariances (q = 1: T = 0), in every position."""
    for zero in range(q):
        rng = np.random.default_rng([q, len(blocks), zero, reml])
        st = simulate_stats(rng, q, 2, 20, False, 2)
        cs = CovStructure.from_blocks(q, blocks)
        phi = random_phi(rng, cs, blocks, zero=zero)
        assert np.linalg.matrix_rank(cs.T(phi)) < q
        assert_matches(kernel_one(st, cs, phi, reml), inference.phi_hessian_fd(st, cs, phi, reml))


def test_padding_contributes_nothing():
    """Extra empty groups leave H unchanged (up to rounding)."""
    rng = np.random.default_rng(7)
    q, blocks = 3, ((0,), (1, 2))
    cs = CovStructure.from_blocks(q, blocks)
    st = simulate_stats(rng, q, 2, 15, False)
    padded = stack_stats([st, simulate_stats(rng, q, 2, 19, False)])
    phi = random_phi(rng, cs, blocks)
    st_pad = replicate(padded, 0)
    assert st_pad.A.shape[0] == 19
    for reml in (False, True):
        assert_matches(kernel_one(st_pad, cs, phi, reml), kernel_one(st, cs, phi, reml), 1e-12)


@pytest.mark.parametrize("reml", [False, True], ids=["ML", "REML"])
@pytest.mark.parametrize("q,blocks", STRUCTURES, ids=STRUCTURE_IDS)
def test_many_matches_batched_differences(q, blocks, reml):
    """Replicates with different numbers of groups (stack_stats pads) and their own phi,
    one of them with a singular T."""
    rng = np.random.default_rng([q, len(blocks), reml, 11])
    cs = CovStructure.from_blocks(q, blocks)
    sts = [simulate_stats(rng, q, 2, J, balanced=J % 2 == 0) for J in (12, 20, 7, 16, 20)]
    phis = [random_phi(rng, cs, blocks, zero=0 if r == 2 else None) for r in range(len(sts))]
    stk = stack_stats(sts)
    phi = np.stack(phis)
    H = inference.phi_hessian(stk, cs, phi, reml)
    assert_matches(H, inference.phi_hessian_fd(stk, cs, phi, reml))
    for r, st in enumerate(sts):
        assert_matches(H[r], kernel_one(st, cs, phis[r], reml), 1e-12)


@settings(max_examples=40, deadline=None)
@given(structure=hst.sampled_from(STRUCTURES), p=hst.integers(1, 3), J=hst.integers(2, 40),
       balanced=hst.booleans(), n_empty=hst.integers(0, 3), reml=hst.booleans(),
       seed=hst.integers(0, 2**32 - 1))
def test_one_matches_differences_random(structure, p, J, balanced, n_empty, reml, seed):
    q, blocks = structure
    rng = np.random.default_rng(seed)
    st = simulate_stats(rng, q, p, J, balanced, n_empty)
    # X'V^{-1}X must be positive definite: more rows than fixed effects
    assume(float(st.N) > p)
    cs = CovStructure.from_blocks(q, blocks)
    phi = random_phi(rng, cs, blocks)
    # central differences carry O(h^2) truncation error, larger where T is ill-conditioned
    assert_matches(kernel_one(st, cs, phi, reml), inference.phi_hessian_fd(st, cs, phi, reml),
                   1e-4)


def test_singular_system_gives_nan_and_bad_phi_raises():
    rng = np.random.default_rng(5)
    q, blocks = 2, ((0, 1),)
    cs = CovStructure.from_blocks(q, blocks)
    st = simulate_stats(rng, q, 2, 10, True)
    # sigma^2 = 0 and T = 0: sigma^2 I + T A_j = 0
    assert np.all(np.isnan(kernel_one(st, cs, np.zeros(cs.size), False)))
    # a T that makes some V_j indefinite (a large negative variance)
    phi = np.array([-50.0, 0.0, 1.0, 1.0])
    assert np.all(np.isnan(kernel_one(st, cs, phi, False)))
    with pytest.raises(ValueError, match="sigma"):
        kernel_one(st, cs, np.ones(cs.size + 1), False)


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_hsb_fitted_optimum(hsb, method):
    res = mlmsim.fit("mathach ~ cses + (1 + cses | school)", hsb, method=method)
    assert res.reml == (method == "REML")
    H = kernel_one(res.stats, res.cov_structure, res.phi, res.reml)
    # the fit reports this kernel's H (to rounding: the fit's arrays are laid out otherwise)
    np.testing.assert_allclose(H, res.hessian, rtol=1e-12, atol=1e-14 * np.abs(H).max())
    assert_matches(H, inference.phi_hessian_fd(res.stats, res.cov_structure, res.phi,
                                               res.reml))
    assert np.all(np.linalg.eigvalsh(H) > 0)
