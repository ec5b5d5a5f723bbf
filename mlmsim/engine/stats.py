"""Per-group sufficient statistics of a two-level linear mixed model.

One pass over the data gives everything the deviance needs, for any theta:

    A_j = Z_j'Z_j (q x q),   B_j = Z_j'X_j (q x p),   c_j = Z_j'y_j (q,)
    and the totals X'X (p x p), X'y (p,), y'y, N, and n_j.

Arrays may carry leading batch dimensions (replicates): A (..., J, q, q),
B (..., J, q, p), c (..., J, q), XtX (..., p, p), Xty (..., p), yty (...,).
Groups with n_j = 0 (padding, so that replicates with different numbers of
groups stack) contribute nothing: M_j = I and log|M_j| = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GroupStats", "group_stats"]


@dataclass(frozen=True)
class GroupStats:
    """Sufficient statistics; see the module docstring for the formulas and shapes."""

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: np.ndarray
    n: np.ndarray
    N: np.ndarray

    @property
    def q(self) -> int:
        return int(self.A.shape[-1])

    @property
    def p(self) -> int:
        return int(self.B.shape[-1])


def group_stats(
    y: np.ndarray, X: np.ndarray, Z: np.ndarray, codes: np.ndarray, J: int
) -> GroupStats:
    """Accumulate A_j, B_j, c_j and the totals from one data set.

    y (N,), X (N, p), Z (N, q), codes (N,) integers in 0..J-1. Rows sorted by
    group are summed with ``np.add.reduceat``; otherwise each needed product
    column is summed with ``np.bincount`` (both O(N (q + p + 1) q)).
    """
    N, p = X.shape
    q = Z.shape[1]
    F = np.empty((N, q + p + 1))
    F[:, :q] = Z
    F[:, q : q + p] = X
    F[:, q + p] = y
    n = np.bincount(codes, minlength=J)
    ordered = N < 2 or bool(np.all(codes[1:] >= codes[:-1]))
    S = np.empty((J, q, q + p + 1))
    if ordered:
        starts = np.concatenate(([0], np.cumsum(n)[:-1]))
        nonempty = n > 0
        for a in range(q):
            prod = F * Z[:, a : a + 1]
            S[nonempty, a, :] = np.add.reduceat(prod, starts[nonempty], axis=0)
            S[~nonempty, a, :] = 0.0
    else:
        for a in range(q):
            for b in range(q + p + 1):
                S[:, a, b] = np.bincount(codes, weights=Z[:, a] * F[:, b], minlength=J)
    A = S[:, :, :q]
    A = 0.5 * (A + np.swapaxes(A, -1, -2))
    XtX = X.T @ X
    return GroupStats(
        A=np.ascontiguousarray(A),
        B=np.ascontiguousarray(S[:, :, q : q + p]),
        c=np.ascontiguousarray(S[:, :, q + p]),
        XtX=0.5 * (XtX + XtX.T),
        Xty=X.T @ y,
        yty=np.asarray(y @ y),
        n=n,
        N=np.asarray(N),
    )
