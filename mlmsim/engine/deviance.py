"""Profiled deviance of a two-level LMM as a function of theta, and its gradient.

T = sigma^2 Lambda Lambda', Lambda (q x q) lower triangular (block-diagonal for
several bar terms or ``||``), theta its free elements in lme4's order. For a
given theta, from the per-group statistics (``stats.GroupStats``):

    M_j   = Lambda' A_j Lambda + I_q
    R_j   = Lambda' [B_j  c_j]            S_j = M_j^{-1} R_j
    XtVX  = X'X - sum_j R_jB' S_jB        XtVy = X'y - sum_j R_jB' S_jc
    ytVy  = y'y - sum_j R_jc' S_jc
    beta  = XtVX^{-1} XtVy                r2 = ytVy - beta' XtVy
    ML    d(theta)   = sum_j log|M_j| + N (1 + log(2 pi r2 / N))
    REML  d_R(theta) = sum_j log|M_j| + log|XtVX| + (N - p)(1 + log(2 pi r2 / (N - p)))

(XtVX etc. are sigma^2 X'V^{-1}X and so on.) The gradient with respect to the
elements of Lambda, with u_j = c_j - B_j beta, P_j = M_j^{-1} Lambda',
W_j = Lambda P_j and G_j = I - W_j A_j:

    d log|M_j|   / d Lambda =  2 A_j Lambda M_j^{-1}
    d r2         / d Lambda = -2 sum_j (G_j' u_j)(P_j u_j)'
    d log|XtVX|  / d Lambda = -2 sum_j G_j' B_j XtVX^{-1} (P_j B_j)'

:func:`deviance` and :func:`deviance_grad` evaluate these in compiled loops
over groups (:mod:`mlmsim.engine.kernels`), for any leading batch dimensions
(replicates, trial points); :func:`mlmsim.engine.kernels.readout_many` reads
beta, XtVX^{-1} and the EBLUPs off an optimum. :func:`pack` lays the
statistics out for the vectorised inference in phi.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mlmsim.engine import kernels
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array

__all__ = ["ThetaMap", "Packed", "pack", "take", "deviance", "deviance_grad"]

@dataclass(frozen=True)
class ThetaMap:
    """Where theta's elements sit in Lambda: ``Lambda[rows[k], cols[k]] = theta[k]``.

    Built from the blocks of T; within a block, the lower triangle column by
    column (lme4's order).
    """

    q: int
    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def from_blocks(cls, q: int, blocks: tuple[tuple[int, ...], ...]) -> ThetaMap:
        rows, cols = [], []
        for block in blocks:
            for ci, c in enumerate(block):
                for r in block[ci:]:
                    rows.append(r)
                    cols.append(c)
        return cls(q=q, rows=np.array(rows, dtype=np.intp), cols=np.array(cols, dtype=np.intp))

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def diagonal(self) -> np.ndarray:
        """Boolean mask of theta elements on Lambda's diagonal (lme4 bounds them at 0)."""
        return self.rows == self.cols

    def start(self) -> np.ndarray:
        """lme4's start: Lambda = I (diagonal 1, off-diagonal 0)."""
        return self.diagonal.astype(float)

    def Lambda(self, theta: np.ndarray) -> np.ndarray:
        """Lambda (..., q, q) from theta (..., k)."""
        theta = np.asarray(theta, dtype=float)
        L = np.zeros(theta.shape[:-1] + (self.q, self.q))
        L[..., self.rows, self.cols] = theta
        return L

    def theta(self, Lambda: np.ndarray) -> np.ndarray:
        return np.asarray(Lambda)[..., self.rows, self.cols]


@dataclass(frozen=True)
class Packed:
    """The statistics laid out for fast evaluation (computed once per fit).

    ``Av`` (..., J, s): the s = q(q+1)/2 distinct elements of A_j (row-wise lower
    triangle); ``Aq`` (..., q, q, J): A_j with groups last;
    ``BC`` (..., q, J, p + 1): Z_j'[X_j y_j] with the random-effect index first.
    """

    stats: GroupStats
    Av: np.ndarray
    Aq: np.ndarray
    BC: np.ndarray

    @property
    def q(self) -> int:
        return self.stats.q

    @property
    def p(self) -> int:
        return self.stats.p


@lru_cache(maxsize=16)
def _pairs(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the row-wise lower triangle (vech order)."""
    return np.tril_indices(q)


def pack(stats: GroupStats) -> Packed:
    """Lay the statistics out for the vectorised inference (see :class:`Packed`)."""
    q, p = stats.q, stats.p
    a, b = _pairs(q)
    Av = np.ascontiguousarray(stats.A[..., a, b])
    Aq = np.ascontiguousarray(np.moveaxis(stats.A, -3, -1))
    BC = np.concatenate((stats.B, stats.c[..., None]), axis=-1)
    BC = np.ascontiguousarray(np.moveaxis(BC, -2, -3))
    del p
    return Packed(stats, Av, Aq, BC)


def take(pk: Packed, idx: np.ndarray | None, expand: int = 0) -> Packed:
    """Select replicates ``idx`` of batched statistics (None adds a batch axis of 1),
    then insert ``expand`` unit axes after the batch axis (for trial points)."""

    if idx is not None and expand == 0 and idx.size == pk.Av.shape[0]:
        if np.array_equal(idx, np.arange(idx.size)):
            return pk

    def sel(a: np.ndarray) -> np.ndarray:
        out = a[None] if idx is None else a[idx]
        return out.reshape(out.shape[:1] + (1,) * expand + out.shape[1:])

    st = pk.stats
    stats = GroupStats(*(sel(getattr(st, f)) for f in GroupStats.__dataclass_fields__))
    return Packed(stats, sel(pk.Av), sel(pk.Aq), sel(pk.BC))


def _group_apply(Mq: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Per group j: (M_j V_j) for M (..., J, q, q) and V (..., q, J, m) -> (..., q, J, m)."""
    q = Mq.shape[-1]
    rows = []
    for r in range(q):
        acc = Mq[..., r, 0][..., :, None] * V[..., 0, :, :]
        for c in range(1, q):
            acc = acc + Mq[..., r, c][..., :, None] * V[..., c, :, :]
        rows.append(acc)
    return np.stack(rows, axis=-3)


def _evaluate(pk: Packed, theta: np.ndarray, tmap: ThetaMap, reml: bool, want_grad: bool):
    """The compiled evaluation (:func:`mlmsim.engine.kernels.devgrad_many`) over the
    broadcast batch shape of the statistics and theta."""
    theta = np.asarray(theta, dtype=float)
    batch = np.broadcast_shapes(np.shape(pk.stats.yty), theta.shape[:-1])
    R = int(np.prod(batch, dtype=np.int64))
    A, B, c, XtX, Xty, yty, N, _ = flat_arrays(pk.stats, batch)
    th = kernel_array(theta, batch, theta.shape[-1:]).reshape(R, 1, theta.shape[-1])
    d, g = kernels.devgrad_many(th, A, B, c, XtX, Xty, yty, N, tmap.rows, tmap.cols,
                                bool(reml), want_grad)
    return d[:, 0].reshape(batch), g[:, 0].reshape(batch + (tmap.size,))


def deviance(pk: Packed, theta: np.ndarray, tmap: ThetaMap, reml: bool) -> np.ndarray:
    """The profiled deviance d(theta) (ML) or REML criterion d_R(theta); shape (...)."""
    return _evaluate(pk, theta, tmap, reml, False)[0]


def deviance_grad(
    pk: Packed, theta: np.ndarray, tmap: ThetaMap, reml: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The deviance (...) and its gradient in theta (..., k), from the formulas above."""
    return _evaluate(pk, theta, tmap, reml, True)
