"""The loop-free copies of mlmsim.engine.unroll compute what the general code computes.

The kernels' own copies are compared with the general kernels in test_kernels.py
(test_q_specialised_kernels_equal_the_general_ones); here the transformations themselves
are checked on small functions, including the cases where reading an element back from a
local would be wrong.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest
from numba import njit

from mlmsim.engine import gls, kernels, linalg, newton, phi_kernel
from mlmsim.engine.linalg import ldl_at, matmul
from mlmsim.engine.unroll import source_of, specialise


def _sandwich(A, L, out, n):
    """out = L' A L + I for (n, n) arrays: loops over n and two calls of the primitive
    ``matmul`` (inlined in the copy)."""
    AL = np.empty((n, n))
    Lt = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            Lt[a, b] = L[b, a]
    matmul(AL, A, L, n, n, n)
    matmul(out, Lt, AL, n, n, n)
    for a in range(n):
        out[a, a] += 1.0
    return out[0, 0] + out[n - 1, n - 1]


def _aliasing(X, i, k):
    """Stores through two run-time indices that may be equal: a read after the second
    store must see it."""
    X[i, 0] = 1.0
    X[k, 0] = 2.0
    a = X[i, 0]
    X[i, 1] = a + X[k, 0]
    return X[i, 1]


def _through_call(X, n):
    """A call that writes X between a store and a read."""
    X[0, 0] = 1.0
    _bump(X, n)
    return X[0, 0]


@njit
def _bump(X, n):
    for a in range(n):
        X[a, a] += 10.0


def _loops(tree: ast.AST) -> list[ast.For]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.For)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_unrolled_copy_equals_the_loops(n):
    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, n))
    A = A @ A.T
    L = np.tril(rng.normal(size=(n, n)))
    fast = specialise(_sandwich, {"n": n}, f"_sandwich_q{n}", inline=(linalg.matmul,))
    src = source_of(_sandwich, {"n": n}, "x", {}, {"matmul": linalg.matmul})
    assert not _loops(ast.parse(src)), "every loop over n should be unrolled"
    assert "np.empty" not in src, "the small local arrays should become scalars"
    assert "matmul" not in src, "the primitive should be inlined"
    o1, o2 = np.empty((n, n)), np.empty((n, n))
    assert fast(A, L, o1, n) == _sandwich(A, L, o2, n)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_allclose(o1, L.T @ A @ L + np.eye(n), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("i, k", [(0, 0), (0, 1)])
def test_forwarding_respects_indices_that_may_alias(i, k):
    fast = specialise(_aliasing, {}, "_aliasing_q")
    X1, X2 = np.zeros((2, 2)), np.zeros((2, 2))
    assert fast(X1, i, k) == _aliasing(X2, i, k)
    np.testing.assert_array_equal(X1, X2)


def test_forwarding_stops_at_a_call_that_takes_the_array():
    fast = specialise(_through_call, {"n": 2}, "_through_call_q")
    X = np.zeros((2, 2))
    assert fast(X, 2) == 11.0


@pytest.mark.parametrize("func", [gls.gls_pass_any, gls.group_D_any, kernels.deviance_one_any,
                                  phi_kernel.phi_terms_any, newton.moment_start_one_any,
                                  newton.transformed_stats_any, linalg.ldl_at,
                                  linalg.ldl_solve_at])
def test_the_kernels_copies_have_no_loop_over_q(func):
    """Every loop left in a q = 2 copy runs over groups, fixed effects or parameters."""
    size = "n" if func in (linalg.ldl_at, linalg.ldl_solve_at) else "q"
    tree = ast.parse(source_of(func, {size: 2}, "x", {}))
    for loop in _loops(tree):
        it = loop.iter
        assert isinstance(it, ast.Call) and it.func.id == "range"
        assert not all(isinstance(a, ast.Constant) for a in it.args), ast.unparse(loop)[:80]
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            assert "qc" not in names, "the dispatch to the copy must not be in the copy"


def _two_returns(x):
    if x > 0.0:
        return 1.0
    return 2.0


def _calls_two_returns(x):
    v = _two_returns(x)
    return v


def test_a_function_with_an_early_return_is_not_inlined():
    with pytest.raises(ValueError, match="cannot be inlined"):
        source_of(_calls_two_returns, {}, "x", {}, {"_two_returns": _two_returns})


def test_inlined_factorisation_in_an_assignment_equals_the_call():
    """ldl_at, inlined where its result is assigned (as gls_pass's copy does), gives the
    factor, the determinant parts and the count of negative pivots of the call."""
    src = source_of(gls.gls_pass_any, {"q": 2}, "x", {}, {"ldl_at": linalg.ldl_at})
    assert "ldl_at" not in src
    rng = np.random.default_rng(3)
    for signs in ([1.0, 1.0], [1.0, -1.0]):
        M = rng.normal(size=(2, 2))
        M = M @ M.T + np.diag(signs) * 3.0
        F1, F2 = M[None].copy(), M[None].copy()
        assert "ldl_at" not in source_of(_factor, {}, "x", {}, {"ldl_at": ldl_at})
        got = specialise(_factor, {}, "_factor_q", (), (ldl_at,))(F1)
        assert got == _factor(F2)
        np.testing.assert_array_equal(np.tril(F1[0]), np.tril(F2[0]))


def _factor(F):
    lp, dp, neg = ldl_at(F, 0, 2)
    return lp, dp, neg


def test_by_q_compiles_only_the_copy_that_runs():
    """A kernel made by by_q runs its q = 2 copy for the token of q = 2 and the general
    code for any other token; numba compiles only the one that runs, and one version
    serves calls with literal and with run-time arguments."""
    from mlmsim.engine.unroll import by_q

    @njit
    def general(x, flag, qc):
        return x + 1.0 if flag else x

    @njit
    def copy2(x, flag, qc):
        return x + 2.0 if flag else -x

    f = by_q(general, copy2, "f")

    @njit
    def call(x, flag, qc):
        return f(x, True, qc) + f(x, flag, qc)

    assert call(1.0, False, (0, 0)) == 3.0 + -1.0
    assert not general.signatures
    assert len(copy2.signatures) == 1
    assert call(1.0, False, (0,)) == 2.0 + 1.0
    assert call(1.0, True, ()) == 4.0
    assert len(general.signatures) == 2 and len(copy2.signatures) == 1
