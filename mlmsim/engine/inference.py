"""Inference in the covariance parameters phi = (distinct elements of T, sigma^2).

With the fixed effects profiled out, the objective in phi is (DESIGN.md s.3)

    ML    f(phi)   = N log 2pi + N log sigma^2 + sum_j log|I + T A_j / sigma^2| + r2(phi) / sigma^2
    REML  f_R(phi) = (N-p) log 2pi + (N-p) log sigma^2 + sum_j log|I + T A_j / sigma^2|
                     + log|XtVX| + r2(phi) / sigma^2

with D_j = (sigma^2 I + T A_j)^{-1} T, sigma^2 V_j^{-1} = I - Z_j D_j Z_j' and
XtVX = X'X - sum_j B_j' D_j B_j etc. No T^{-1} appears, so f is defined (and
smooth) also where T-hat is singular, as long as every V_j is positive
definite. Its gradient, with r_j = y_j - X_j beta, u_j = Z_j' r_j,
Q_j = Z_j'V_j^{-1}Z_j = (A_j - A_j D_j A_j) / sigma^2,
s_j = Z_j'V_j^{-1} r_j = (u_j - A_j D_j u_j) / sigma^2 and
F_j = Z_j'V_j^{-1}X_j = (B_j - A_j D_j B_j) / sigma^2, C = (X'V^{-1}X)^{-1}:

    df/dT_ab      = (2 - [a = b]) (sum_j Q_j - s_j s_j' [- F_j C F_j' for REML])_ab
    df/dsigma^2   = tr V^{-1} - r'V^{-2}r [- tr(C X'V^{-2}X) for REML]

The Hessian H is the central difference of this analytic gradient. The
asymptotic covariance of phi-hat is 2 H^{-1} (SAS's ASYCOV, COVTEST SEs).

Satterthwaite df (as lmerTest) for a contrast l'beta: with
var(l'beta-hat) = l'C(phi)l, dC/dphi_k = C (X'V^{-1} dV/dphi_k V^{-1}X) C and
Acov = 2 H^{-1}:  df = 2 (l'Cl)^2 / (g' Acov g),  g_k = l' dC/dphi_k l.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mlmsim.engine.stats import GroupStats

__all__ = [
    "CovStructure",
    "phi_objective",
    "phi_gradient",
    "phi_hessian",
    "satterthwaite_df",
    "containment_df",
    "between_within_df",
]

_LOG2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class CovStructure:
    """The distinct elements of T: ``T[rows[k], cols[k]] = phi[k]`` (rows >= cols),
    in SAS's UN order (row-wise lower triangle) without structural zeros; sigma^2
    is phi's last element."""

    q: int
    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def from_blocks(cls, q: int, blocks: tuple[tuple[int, ...], ...]) -> CovStructure:
        block_of = np.empty(q, dtype=int)
        for b, idx in enumerate(blocks):
            block_of[list(idx)] = b
        rows, cols = [], []
        for a in range(q):
            for b in range(a + 1):
                if block_of[a] == block_of[b]:
                    rows.append(a)
                    cols.append(b)
        return cls(q, np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp))

    @property
    def size(self) -> int:
        """Number of phi elements (T's distinct elements plus sigma^2)."""
        return int(self.rows.shape[0]) + 1

    @property
    def is_variance(self) -> np.ndarray:
        """True for diagonal elements of T and for sigma^2."""
        return np.append(self.rows == self.cols, True)

    def phi(self, T: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
        T = np.asarray(T, dtype=float)
        return np.concatenate((T[..., self.rows, self.cols], np.asarray(sigma2)[..., None]), -1)

    def T(self, phi: np.ndarray) -> np.ndarray:
        phi = np.asarray(phi, dtype=float)
        T = np.zeros(phi.shape[:-1] + (self.q, self.q))
        T[..., self.rows, self.cols] = phi[..., :-1]
        T[..., self.cols, self.rows] = phi[..., :-1]
        return T


@dataclass(frozen=True)
class _PhiParts:
    D: np.ndarray
    XtVX: np.ndarray
    beta: np.ndarray
    r2: np.ndarray
    sigma2: np.ndarray
    logdet: np.ndarray
    sign: np.ndarray


def _parts(st: GroupStats, cs: CovStructure, phi: np.ndarray) -> _PhiParts:
    T = cs.T(phi)
    s2 = phi[..., -1]
    q = cs.q
    Tg = np.broadcast_to(T[..., None, :, :], np.broadcast_shapes(T[..., None, :, :].shape,
                                                                  st.A.shape))
    Mj = s2[..., None, None, None] * np.eye(q) + Tg @ st.A
    sign, logdet = np.linalg.slogdet(Mj)
    D = np.linalg.solve(Mj, Tg)
    D = 0.5 * (D + np.swapaxes(D, -1, -2))
    DB = D @ st.B
    Dc = (D @ st.c[..., None])[..., 0]
    XtVX = st.XtX - np.einsum("...jqa,...jqb->...ab", st.B, DB)
    XtVX = 0.5 * (XtVX + np.swapaxes(XtVX, -1, -2))
    XtVy = st.Xty - np.einsum("...jqa,...jq->...a", st.B, Dc)
    ytVy = st.yty - np.einsum("...jq,...jq->...", st.c, Dc)
    beta = np.linalg.solve(XtVX, XtVy[..., None])[..., 0]
    r2 = ytVy - np.einsum("...a,...a->...", beta, XtVy)
    return _PhiParts(D, XtVX, beta, r2, s2, (logdet - q * np.log(s2)[..., None]).sum(-1),
                     np.all(sign > 0, axis=-1))


def phi_objective(st: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    """f(phi) or f_R(phi) of the module docstring (+inf where some V_j is not PD)."""
    pp = _parts(st, cs, np.asarray(phi, dtype=float))
    N, p = st.N, st.p
    nu = N - p if reml else N
    f = nu * (_LOG2PI + np.log(pp.sigma2)) + pp.logdet + pp.r2 / pp.sigma2
    if reml:
        f = f + np.linalg.slogdet(pp.XtVX)[1]
    return np.where(pp.sign, f, np.inf)


def _grad_pieces(st: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool):
    pp = _parts(st, cs, phi)
    s2 = pp.sigma2
    inv_s2 = (1.0 / s2)[..., None, None, None]
    D = pp.D
    AD = st.A @ D
    u = st.c - np.einsum("...jqp,...p->...jq", st.B, pp.beta)
    Du = (D @ u[..., None])[..., 0]
    Q = (st.A - AD @ st.A) * inv_s2
    s = (u - (st.A @ Du[..., None])[..., 0]) * inv_s2[..., 0]
    F = (st.B - AD @ st.B) * inv_s2
    C = np.linalg.inv(pp.XtVX) * s2[..., None, None]
    G = Q.sum(-3) - np.einsum("...ja,...jb->...ab", s, s)
    # X'V^{-2}X and r'V^{-2}r from the totals (sum over groups is linear)
    DB = D @ st.B
    BDB = np.einsum("...jqa,...jqb->...ab", st.B, DB)
    BDADB = np.einsum("...jqa,...jqb->...ab", DB, st.A @ DB)
    XV2X = (st.XtX - 2.0 * BDB + BDADB) / (s2**2)[..., None, None]
    beta = pp.beta
    ee = (st.yty - 2.0 * np.einsum("...a,...a->...", beta, st.Xty)
          + np.einsum("...a,...ab,...b->...", beta, st.XtX, beta))
    uDu = np.einsum("...jq,...jq->...", u, Du)
    uDADu = np.einsum("...jq,...jq->...", Du, (st.A @ Du[..., None])[..., 0])
    rV2r = (ee - 2.0 * uDu + uDADu) / s2**2
    trVinv = (st.N - np.einsum("...jab,...jba->...", D, st.A)) / s2
    g_s2 = trVinv - rV2r
    if reml:
        FC = F @ C[..., None, :, :]
        G = G - np.einsum("...jap,...jbp->...ab", FC, F)
        g_s2 = g_s2 - np.einsum("...ab,...ba->...", C, XV2X)
    mult = np.where(cs.rows == cs.cols, 1.0, 2.0)
    g = np.concatenate((G[..., cs.rows, cs.cols] * mult, g_s2[..., None]), -1)
    return g, pp, F, C, XV2X


def phi_gradient(st: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    """The analytic gradient of f (or f_R) in phi; shape (..., m)."""
    return _grad_pieces(st, cs, np.asarray(phi, dtype=float), reml)[0]


def _steps(cs: CovStructure, phi: np.ndarray) -> np.ndarray:
    """Central-difference steps: 1e-4 times the scale of each phi element."""
    T = cs.T(phi)
    d = np.sqrt(np.abs(np.diagonal(T, axis1=-2, axis2=-1)))
    s2 = phi[..., -1:]
    scale_T = d[..., cs.rows] * d[..., cs.cols] + 1e-2 * s2
    scale = np.concatenate((np.maximum(np.abs(phi[..., :-1]), scale_T), s2), -1)
    return 1e-4 * scale


def phi_hessian(st: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    """H = d^2 f / dphi dphi' by central differences of the analytic gradient.

    Batched: ``st`` with batch shape (R,) and phi (R, m), or unbatched. One
    vectorised gradient evaluation at 2m points. Accurate to about 8 significant
    digits (truncation O(h^2) with h = 1e-4 of each element's scale).
    """
    phi = np.asarray(phi, dtype=float)
    m = phi.shape[-1]
    h = _steps(cs, phi)
    E = np.eye(m)
    pts = np.concatenate((phi[..., None, :] + h[..., None, :] * E,
                          phi[..., None, :] - h[..., None, :] * E), axis=-2)
    st_e = GroupStats(*(np.expand_dims(getattr(st, f), phi.ndim - 1)
                        for f in GroupStats.__dataclass_fields__))
    g = phi_gradient(st_e, cs, pts, reml)
    H = (g[..., :m, :] - g[..., m:, :]) / (2.0 * h[..., :, None])
    return 0.5 * (H + np.swapaxes(H, -1, -2))


def vcov_derivatives(st: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool):
    """C = (X'V^{-1}X)^{-1} (p, p) and dC/dphi_k = C M_k C (m, p, p), with
    M_k = X'V^{-1} (dV/dphi_k) V^{-1}X: sum_j F_j' E_ab F_j for T_ab, X'V^{-2}X for sigma^2."""
    _, _, F, C, XV2X = _grad_pieces(st, cs, np.asarray(phi, dtype=float), reml)
    Fa = F[..., cs.rows, :]
    Fb = F[..., cs.cols, :]
    Mk = np.einsum("...jkp,...jkr->...kpr", Fa, Fb)
    Mk = Mk + np.swapaxes(Mk, -1, -2) * (cs.rows != cs.cols)[:, None, None]
    Mk = np.concatenate((Mk, XV2X[..., None, :, :]), axis=-3)
    dC = C[..., None, :, :] @ Mk @ C[..., None, :, :]
    return C, dC


def satterthwaite_df(C: np.ndarray, dC: np.ndarray, acov: np.ndarray,
                     L: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite df for each row l of L (default: each coefficient).

    df = 2 (l'Cl)^2 / (g' Acov g), g_k = l' dC_k l. NaN where Acov is NaN.
    """
    p = C.shape[-1]
    L = np.eye(p) if L is None else np.atleast_2d(L)
    v = np.einsum("ip,pr,ir->i", L, C, L)
    g = np.einsum("ip,kpr,ir->ik", L, dC, L)
    denom = np.einsum("ik,kl,il->i", g, acov, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * v**2 / denom


def _psd_rank(M: np.ndarray, tol: float = 1e-9, ref: float | None = None) -> int:
    """Rank of a symmetric PSD matrix: eigenvalues above tol * ref (default: the largest)."""
    if M.size == 0:
        return 0
    w = np.linalg.eigvalsh(0.5 * (M + M.T))
    return int((w > tol * (max(w.max(), 1e-300) if ref is None else ref)).sum())


def _rank_XZ(st: GroupStats, zcols: np.ndarray) -> int:
    """rank [X Z_full] with Z restricted to columns ``zcols`` (block diagonal over groups):
    sum_j rank(Z_j) + rank(X'X - sum_j B_j' A_j^+ B_j)."""
    A = st.A[:, zcols][:, :, zcols]
    B = st.B[:, zcols, :]
    if zcols.size == 0:
        return _psd_rank(st.XtX)
    w, V = np.linalg.eigh(A)
    wmax = np.maximum(w.max(axis=-1, keepdims=True), 1e-300)
    keep = w > 1e-9 * wmax
    rank_z = int(keep.sum())
    winv = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
    Apinv = np.einsum("jab,jb,jcb->jac", V, winv, V)
    resid = st.XtX - np.einsum("jqa,jqr,jrb->ab", B, Apinv, B)
    scale = np.sqrt(np.maximum(np.diag(st.XtX), 1e-300))
    return rank_z + _psd_rank(resid / np.outer(scale, scale), ref=1.0)


def containment_df(st: GroupStats, fixed_vars: list[frozenset], random_vars: list[frozenset],
                   blocks_of_random: list[int]) -> np.ndarray:
    """SAS's containment df for each fixed effect (DDFM=CONTAIN).

    A fixed effect is contained in a random effect whose variables include all of
    its variables (the intercept, with none, is contained in every random effect).
    Its df is the smallest rank contribution of a containing random effect to
    [X Z]: rank[X Z] - rank[X Z without that effect's columns], over all groups;
    without a containing effect, N - rank[X Z].
    """
    q = st.q
    allz = np.arange(q)
    full = _rank_XZ(st, allz)
    resid_df = int(st.N) - full
    contrib = {}
    out = np.empty(len(fixed_vars))
    for i, fv in enumerate(fixed_vars):
        best = None
        for r, rv in enumerate(random_vars):
            if fv <= rv:
                if r not in contrib:
                    contrib[r] = full - _rank_XZ(st, allz[allz != r])
                best = contrib[r] if best is None else min(best, contrib[r])
        out[i] = resid_df if best is None else best
    del blocks_of_random
    return out


def between_within_df(st: GroupStats, X_varies: np.ndarray) -> np.ndarray:
    """SAS's between-within df (DDFM=BW): effects constant within every group get
    J - rank(between-group columns); effects that vary within groups get
    N - J - rank(within-group columns)."""
    J = int((st.n > 0).sum())
    N = int(st.N)
    p_between = int((~X_varies).sum())
    p_within = int(X_varies.sum())
    return np.where(X_varies, N - J - p_within, J - p_between).astype(float)


def wald_p(t: np.ndarray, df: np.ndarray | None) -> np.ndarray:
    """Two-sided p-value of t: Student t with df, or the normal where df is None/inf."""
    t = np.asarray(t, dtype=float)
    if df is None:
        return 2.0 * sps.norm.sf(np.abs(t))
    df = np.asarray(df, dtype=float)
    return np.where(np.isfinite(df), 2.0 * sps.t.sf(np.abs(t), np.where(np.isfinite(df), df, 1)),
                    2.0 * sps.norm.sf(np.abs(t)))
