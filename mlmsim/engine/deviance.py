"""Profiled deviance of a two-level LMM as a function of theta, and its gradient.

docs/math.md sections 4 and 5; computed by the one GLS core (:mod:`mlmsim.engine.gls`)
in :func:`mlmsim.engine.kernels.deviance_one`. In brief:

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
D_j = Lambda P_j and G_j = I - A_j D_j (docs/math.md (5.1)-(5.3)):

    d log|M_j|   / d Lambda =  2 A_j Lambda M_j^{-1}
    d r2         / d Lambda = -2 sum_j (G_j u_j)(P_j u_j)'
    d log|XtVX|  / d Lambda = -2 sum_j (G_j B_j) XtVX^{-1} (P_j B_j)'

:func:`deviance` and :func:`deviance_grad` evaluate these in compiled loops
over groups (:mod:`mlmsim.engine.kernels`), for any leading batch dimensions
(replicates, trial points); :func:`mlmsim.engine.kernels.estimates_many` reads
beta, XtVX^{-1} and the EBLUPs off an optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlmsim.engine import kernels
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array

__all__ = ["METHODS", "ThetaMap", "deviance", "deviance_grad", "method_name"]

#: the two criteria: the profiled -2 log-likelihood (ML) and the restricted one (REML)
METHODS = ("ML", "REML")


def method_name(method: str) -> str:
    """'ML' or 'REML' (case-insensitive), else a ValueError naming the choices."""
    m = str(method).upper()
    if m not in METHODS:
        raise ValueError(f"method must be 'ML' or 'REML', got {method!r}")
    return m


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

    def theta_of(self, Psi: np.ndarray) -> np.ndarray | None:
        """theta for a positive semi-definite Psi = T / sigma^2 (q, q): the lower Cholesky
        factor Lambda, a zero pivot giving a zero column (so a singular T has a theta too);
        None where Psi is not positive semi-definite (a negative variance)."""
        S = 0.5 * (np.asarray(Psi, dtype=float) + np.asarray(Psi, dtype=float).T)
        q = S.shape[0]
        L = np.zeros_like(S)
        scale = max(1.0, float(np.abs(np.diag(S)).max(initial=0.0)))
        for j in range(q):
            d = S[j, j] - L[j, :j] @ L[j, :j]
            if d < -1e-10 * scale:
                return None
            if d <= 1e-12 * max(1.0, abs(S[j, j])):
                continue
            L[j, j] = np.sqrt(d)
            L[j + 1:, j] = (S[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
        if not np.allclose(L @ L.T, S, rtol=1e-8, atol=1e-10 * scale):
            return None
        return self.theta(L)


def _evaluate(stats: GroupStats, theta: np.ndarray, tmap: ThetaMap, reml: bool,
              want_grad: bool):
    """The compiled evaluation (:func:`mlmsim.engine.kernels.deviance_many`) over the
    broadcast batch shape of the statistics and theta."""
    theta = np.asarray(theta, dtype=float)
    batch = np.broadcast_shapes(np.shape(stats.yty), theta.shape[:-1])
    R = int(np.prod(batch, dtype=np.int64))
    st = Stats(*flat_arrays(stats, batch))
    th = kernel_array(theta, batch, theta.shape[-1:]).reshape(R, 1, theta.shape[-1])
    d, g = kernels.deviance_many(th, st, tmap.rows, tmap.cols, bool(reml), want_grad,
                                 qtoken(tmap.q))
    return d[:, 0].reshape(batch), g[:, 0].reshape(batch + (tmap.size,))


def deviance(stats: GroupStats, theta: np.ndarray, tmap: ThetaMap, reml: bool) -> np.ndarray:
    """The profiled deviance d(theta) (ML) or REML criterion d_R(theta); shape (...)
    (docs/math.md (4.1), (4.2))."""
    return _evaluate(stats, theta, tmap, reml, False)[0]


def deviance_grad(
    stats: GroupStats, theta: np.ndarray, tmap: ThetaMap, reml: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The deviance (...) and its gradient in theta (..., k), docs/math.md (5.4)."""
    return _evaluate(stats, theta, tmap, reml, True)
