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
(replicates, trial points). :func:`profile` computes the same quantities
vectorised in numpy and returns them all (M_j^{-1}, S_j, XtVX^{-1}, beta),
for reading estimates and EBLUPs off an optimum: the q x q algebra per group
is written out in closed form for q <= 3 (the inverse and determinant of M_j
from its cofactors), and the sums over groups are matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mlmsim.engine import kernels
from mlmsim.engine.stats import GroupStats

__all__ = ["ThetaMap", "Packed", "Profile", "pack", "profile", "deviance", "deviance_grad"]

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
    triangle); ``Aq`` (..., q, q, J): A_j with groups last; ``Af`` (..., J, q*q);
    ``BC`` (..., q, J, p + 1): Z_j'[X_j y_j] with the random-effect index first.
    """

    stats: GroupStats
    Av: np.ndarray
    Aq: np.ndarray
    Af: np.ndarray
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


@lru_cache(maxsize=16)
def _vech_index(q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices into Lambda (q*q,) for :func:`_vech_map`, and vech's diagonal slots."""
    a, b = _pairs(q)
    ia, ib, ic, id_ = a[:, None], b[:, None], a[None, :], b[None, :]
    first = (ic * q + ia, id_ * q + ib)
    second = (id_ * q + ia, ic * q + ib)
    off = np.broadcast_to((a != b)[None, :], first[0].shape)
    i1 = np.stack(first).reshape(2, -1)
    i2 = np.stack(second).reshape(2, -1)
    diag = np.cumsum(np.arange(1, q + 1)) - 1
    return i1, i2, off.reshape(-1), diag


def pack(stats: GroupStats) -> Packed:
    """Lay the statistics out for :func:`profile` (see :class:`Packed`)."""
    q, p = stats.q, stats.p
    a, b = _pairs(q)
    Av = np.ascontiguousarray(stats.A[..., a, b])
    Aq = np.ascontiguousarray(np.moveaxis(stats.A, -3, -1))
    Af = np.ascontiguousarray(stats.A.reshape(stats.A.shape[:-2] + (q * q,)))
    BC = np.concatenate((stats.B, stats.c[..., None]), axis=-1)
    BC = np.ascontiguousarray(np.moveaxis(BC, -2, -3))
    del p
    return Packed(stats, Av, Aq, Af, BC)


@dataclass(frozen=True)
class Profile:
    """What the profiled deviance computes at one theta (batched shapes).

    ``Lambda`` (..., q, q); ``Minv`` (..., J, q, q) = M_j^{-1};
    ``S`` (..., q, J, p + 1) = M_j^{-1} Lambda' [B_j c_j] (random-effect index
    first); ``XtVX`` (..., p, p) and its Cholesky factor; ``beta`` (..., p);
    ``r2`` (...); ``logdetM``, ``logdetX`` (...).
    """

    Lambda: np.ndarray
    Minv: np.ndarray
    S: np.ndarray
    XtVX: np.ndarray
    XtVX_inv: np.ndarray
    beta: np.ndarray
    r2: np.ndarray
    logdetM: np.ndarray
    logdetX: np.ndarray


def _vech_map(L: np.ndarray, q: int) -> np.ndarray:
    """K (..., s, s) with vech(Lambda' A Lambda) = K vech(A) for symmetric A.

    K[(a,b),(c,d)] = L[c,a] L[d,b] + [c != d] L[d,a] L[c,b].
    """
    i1, i2, off, _ = _vech_index(q)
    Lf = L.reshape(L.shape[:-2] + (q * q,))
    K = Lf[..., i1[0]] * Lf[..., i1[1]]
    K[..., off] += Lf[..., i2[0][off]] * Lf[..., i2[1][off]]
    s = q * (q + 1) // 2
    return K.reshape(L.shape[:-2] + (s, s))


def _inv_logdet(Mv: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """M_j^{-1} (..., J, q, q) and log|M_j| (..., J) from vech(M_j) (..., J, s).

    Closed form (cofactors) for q <= 3; LAPACK for larger q.
    """
    if q == 1:
        m = Mv[..., 0]
        return (1.0 / m)[..., None, None], np.log(m)
    if q == 2:
        m00, m10, m11 = Mv[..., 0], Mv[..., 1], Mv[..., 2]
        det = m00 * m11 - m10 * m10
        inv = np.stack((m11, -m10, -m10, m00), axis=-1) / det[..., None]
        return inv.reshape(det.shape + (2, 2)), np.log(det)
    if q == 3:
        m00, m10, m11, m20, m21, m22 = (Mv[..., i] for i in range(6))
        c00 = m11 * m22 - m21 * m21
        c01 = m20 * m21 - m10 * m22
        c02 = m10 * m21 - m11 * m20
        c11 = m00 * m22 - m20 * m20
        c12 = m10 * m20 - m00 * m21
        c22 = m00 * m11 - m10 * m10
        det = m00 * c00 + m10 * c01 + m20 * c02
        inv = np.stack((c00, c01, c02, c01, c11, c12, c02, c12, c22), axis=-1) / det[..., None]
        return inv.reshape(det.shape + (3, 3)), np.log(det)
    a, b = _pairs(q)
    M = np.zeros(Mv.shape[:-1] + (q, q))
    M[..., a, b] = Mv
    M[..., b, a] = Mv
    chol = np.linalg.cholesky(M)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    return np.linalg.inv(M), logdet


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


def profile(pk: Packed, theta: np.ndarray, tmap: ThetaMap) -> Profile:
    """Evaluate the profiled quantities of the module docstring at theta (..., k)."""
    st = pk.stats
    q, p = pk.q, pk.p
    L = tmap.Lambda(theta)
    K = _vech_map(L, q)
    Mv = pk.Av @ np.swapaxes(K, -1, -2)
    Mv[..., _vech_index(q)[3]] += 1.0
    Minv, logdet_j = _inv_logdet(Mv, q)
    logdetM = logdet_j.sum(-1)
    Lt = np.swapaxes(L, -1, -2)
    J = pk.BC.shape[-2]
    R = (Lt @ pk.BC.reshape(pk.BC.shape[:-2] + (J * (p + 1),))).reshape(
        np.broadcast_shapes(Lt.shape[:-2], pk.BC.shape[:-3]) + (q, J, p + 1)
    )
    S = _group_apply(Minv, R)
    Rf = R.reshape(R.shape[:-3] + (q * J, p + 1))
    Sf = S.reshape(S.shape[:-3] + (q * J, p + 1))
    corr = np.swapaxes(Rf, -1, -2) @ Sf
    XtVX = st.XtX - corr[..., :p, :p]
    XtVX = 0.5 * (XtVX + np.swapaxes(XtVX, -1, -2))
    XtVy = st.Xty - corr[..., :p, p]
    ytVy = st.yty - corr[..., p, p]
    cholX = np.linalg.cholesky(XtVX)
    sol = np.linalg.solve(XtVX, np.concatenate((XtVy[..., None], _eye(p, XtVX.shape)), axis=-1))
    beta, C = sol[..., 0], sol[..., 1:]
    r2 = ytVy - np.einsum("...a,...a->...", beta, XtVy)
    logdetX = 2.0 * np.log(np.diagonal(cholX, axis1=-2, axis2=-1)).sum(axis=-1)
    return Profile(L, Minv, S, XtVX, C, beta, r2, logdetM, logdetX)


def _eye(p: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.eye(p), shape)


def _evaluate(pk: Packed, theta: np.ndarray, tmap: ThetaMap, reml: bool, want_grad: bool):
    """The compiled evaluation (:func:`mlmsim.engine.kernels.devgrad_many`) over the
    broadcast batch shape of the statistics and theta."""
    st = pk.stats
    theta = np.asarray(theta, dtype=float)
    batch = np.broadcast_shapes(st.yty.shape, theta.shape[:-1])
    R = int(np.prod(batch, dtype=np.int64))

    def flat(a: np.ndarray, tail: int) -> np.ndarray:
        a = np.asarray(a, dtype=float)
        return np.ascontiguousarray(
            np.broadcast_to(a, batch + a.shape[a.ndim - tail:]).reshape((R,) + a.shape[
                a.ndim - tail:]))

    th = flat(theta, 1)[:, None, :]
    d, g = kernels.devgrad_many(th, flat(st.A, 3), flat(st.B, 3), flat(st.c, 2),
                                flat(st.XtX, 2), flat(st.Xty, 1), flat(st.yty, 0),
                                flat(st.N, 0), tmap.rows, tmap.cols, bool(reml), want_grad)
    return d[:, 0].reshape(batch), g[:, 0].reshape(batch + (tmap.size,))


def deviance(pk: Packed, theta: np.ndarray, tmap: ThetaMap, reml: bool) -> np.ndarray:
    """The profiled deviance d(theta) (ML) or REML criterion d_R(theta); shape (...)."""
    return _evaluate(pk, theta, tmap, reml, False)[0]


def residual_effects(pk: Packed, pr: Profile) -> tuple[np.ndarray, np.ndarray]:
    """u_j = c_j - B_j beta and P_j u_j = M_j^{-1} Lambda' u_j, both (..., q, J)."""
    p = pk.p
    b = pr.beta[..., None, :, None]
    u = pk.BC[..., p] - (pk.BC[..., :p] @ b)[..., 0]
    Pu = pr.S[..., p] - (pr.S[..., :p] @ b)[..., 0]
    return u, Pu


def deviance_grad(
    pk: Packed, theta: np.ndarray, tmap: ThetaMap, reml: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The deviance (...) and its gradient in theta (..., k), from the formulas above."""
    return _evaluate(pk, theta, tmap, reml, True)
