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

The observed Hessian H is analytic (:func:`phi_hessian`; the central
difference of this gradient, :func:`phi_hessian_fd`, checks it). The
asymptotic covariance of phi-hat is 2 H^{-1} (SAS's ASYCOV, COVTEST SEs).

Satterthwaite df (as lmerTest) for a contrast l'beta: with
var(l'beta-hat) = l'C(phi)l, dC/dphi_k = C (X'V^{-1} dV/dphi_k V^{-1}X) C and
Acov = 2 H^{-1}:  df = 2 (l'Cl)^2 / (g' Acov g),  g_k = l' dC/dphi_k l.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as sps

from mlmsim.engine import phi_kernel
from mlmsim.engine.deviance import Packed, _group_apply, pack, take
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array

__all__ = [
    "CovStructure",
    "phi_objective",
    "phi_gradient",
    "phi_hessian",
    "phi_hessian_fd",
    "satterthwaite_df",
    "satterthwaite_theta",
    "theta_jacobians",
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


@lru_cache(maxsize=16)
def _general_index(q: int):
    """Index maps for M'_j = sigma^2 I + T A_j as a linear map of vech(A_j), and for
    sum_j A_j D_j A_j as a linear map of the D_j (both built from flat indices)."""
    a, b = np.tril_indices(q)
    s = a.shape[0]
    # vech position of A[c, b] for every (c, b)
    pos = np.empty((q, q), dtype=np.intp)
    pos[a, b] = np.arange(s)
    pos[b, a] = np.arange(s)
    return pos


def _as_packed(st) -> Packed:
    return st if isinstance(st, Packed) else pack(st)


def _inv_det_general(Mf: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse (..., q*q, row-major) and determinant of general q x q matrices given flat."""
    if q == 1:
        return 1.0 / Mf, Mf[..., 0]
    if q == 2:
        a, b, c, d = (Mf[..., i] for i in range(4))
        det = a * d - b * c
        return np.stack((d, -b, -c, a), axis=-1) / det[..., None], det
    if q == 3:
        m = [Mf[..., i] for i in range(9)]
        c00 = m[4] * m[8] - m[5] * m[7]
        c01 = m[2] * m[7] - m[1] * m[8]
        c02 = m[1] * m[5] - m[2] * m[4]
        c10 = m[5] * m[6] - m[3] * m[8]
        c11 = m[0] * m[8] - m[2] * m[6]
        c12 = m[2] * m[3] - m[0] * m[5]
        c20 = m[3] * m[7] - m[4] * m[6]
        c21 = m[1] * m[6] - m[0] * m[7]
        c22 = m[0] * m[4] - m[1] * m[3]
        det = m[0] * c00 + m[1] * c10 + m[2] * c20
        adj = np.stack((c00, c01, c02, c10, c11, c12, c20, c21, c22), axis=-1)
        return adj / det[..., None], det
    M = Mf.reshape(Mf.shape[:-1] + (q, q))
    return np.linalg.inv(M).reshape(Mf.shape), np.linalg.det(M)


@dataclass(frozen=True)
class _PhiParts:
    """At phi (batched): D_j (..., J, q, q); D_j [B_j c_j] (..., q, J, p+1); XtVX and its
    inverse; beta; r2; sigma^2; sum_j log|I + T A_j / sigma^2|; all V_j PD."""

    D: np.ndarray
    DBC: np.ndarray
    XtVX: np.ndarray
    XtVX_inv: np.ndarray
    beta: np.ndarray
    r2: np.ndarray
    sigma2: np.ndarray
    logdet: np.ndarray
    valid: np.ndarray


def _parts(pk: Packed, cs: CovStructure, phi: np.ndarray) -> _PhiParts:
    """D_j = (sigma^2 I + T A_j)^{-1} T and the GLS quantities at phi."""
    q, p = cs.q, pk.p
    T = cs.T(phi)
    s2 = phi[..., -1]
    pos = _general_index(q)
    # M'_j[a, b] = sigma^2 [a = b] + sum_c T[a, c] A_j[c, b]: gather A's columns from vech
    Acol = pk.Av[..., pos]  # (..., J, q, q) = A_j[c, b]
    Mf = (T[..., None, :, :] @ Acol).reshape(np.broadcast_shapes(
        T[..., None, :, :].shape, Acol.shape)[:-2] + (q * q,))
    Mf[..., :: q + 1] += s2[..., None, None]
    inv, det = _inv_det_general(Mf, q)
    J = inv.shape[-2]
    D = (inv.reshape(inv.shape[:-2] + (J * q, q)) @ T).reshape(inv.shape[:-2] + (J, q, q))
    D = 0.5 * (D + np.swapaxes(D, -1, -2))
    DBC = _group_apply(D, pk.BC)
    BCf = pk.BC.reshape(pk.BC.shape[:-3] + (q * J, p + 1))
    DBCf = DBC.reshape(DBC.shape[:-3] + (q * J, p + 1))
    corr = np.swapaxes(BCf, -1, -2) @ DBCf
    st = pk.stats
    XtVX = st.XtX - corr[..., :p, :p]
    XtVX = 0.5 * (XtVX + np.swapaxes(XtVX, -1, -2))
    XtVy = st.Xty - corr[..., :p, p]
    ytVy = st.yty - corr[..., p, p]
    sol = np.linalg.solve(XtVX, np.concatenate(
        (XtVy[..., None], np.broadcast_to(np.eye(p), XtVX.shape)), axis=-1))
    beta, Cs = sol[..., 0], sol[..., 1:]
    r2 = ytVy - np.einsum("...a,...a->...", beta, XtVy)
    valid = np.all(det > 0, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        logdet = (np.log(det) - q * np.log(s2)[..., None]).sum(-1)
    return _PhiParts(D, DBC, XtVX, Cs, beta, r2, s2, logdet, valid)


def phi_objective(st, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    """f(phi) or f_R(phi) of the module docstring (+inf where some V_j is not PD).

    ``st``: GroupStats or its packed form.
    """
    pk = _as_packed(st)
    pp = _parts(pk, cs, np.asarray(phi, dtype=float))
    N, p = pk.stats.N, pk.p
    nu = N - p if reml else N
    f = nu * (_LOG2PI + np.log(pp.sigma2)) + pp.logdet + pp.r2 / pp.sigma2
    if reml:
        f = f + np.linalg.slogdet(pp.XtVX)[1]
    return np.where(pp.valid, f, np.inf)


def _grad_pieces(pk: Packed, cs: CovStructure, phi: np.ndarray, reml: bool):
    """The gradient in phi and, for Satterthwaite, F_j (..., q, J, p), C and X'V^{-2}X."""
    q, p = cs.q, pk.p
    st = pk.stats
    pp = _parts(pk, cs, phi)
    s2 = pp.sigma2
    beta = pp.beta
    J = pp.D.shape[-3]
    b = beta[..., None, :, None]
    u = pk.BC[..., p] - (pk.BC[..., :p] @ b)[..., 0]                   # (..., q, J)
    Du = pp.DBC[..., p] - (pp.DBC[..., :p] @ b)[..., 0]                # (..., q, J)
    ADu = (pk.Aq * Du[..., None, :, :]).sum(-2)                         # (..., q, J)
    s = (u - ADu) / s2[..., None, None]
    # sum_j A_j D_j A_j: A_j[a, c] D_j[c, d] A_j[d, b]
    ADA = np.einsum("...acj,...jcd,...dbj->...ab", pk.Aq, pp.D, pk.Aq)
    G = (st.A.sum(-3) - ADA) / s2[..., None, None] - s @ np.swapaxes(s, -1, -2)
    DB = pp.DBC[..., :p]
    ADB = (pk.Aq[..., None] * DB[..., None, :, :, :]).sum(-3)          # (..., q, J, p)
    F = (pk.BC[..., :p] - ADB) / s2[..., None, None, None]
    C = pp.XtVX_inv * s2[..., None, None]
    BCf = pk.BC[..., :p].reshape(pk.BC.shape[:-3] + (q * J, p))
    DBf = DB.reshape(DB.shape[:-3] + (q * J, p))
    ADBf = ADB.reshape(ADB.shape[:-3] + (q * J, p))
    BDB = np.swapaxes(BCf, -1, -2) @ DBf
    BDADB = np.swapaxes(DBf, -1, -2) @ ADBf
    XV2X = (st.XtX - 2.0 * BDB + BDADB) / (s2**2)[..., None, None]
    ee = (st.yty - 2.0 * np.einsum("...a,...a->...", beta, st.Xty)
          + np.einsum("...a,...ab,...b->...", beta, st.XtX, beta))
    uDu = (u * Du).sum((-1, -2))
    uDADu = (Du * ADu).sum((-1, -2))
    rV2r = (ee - 2.0 * uDu + uDADu) / s2**2
    trDA = np.einsum("...jab,...abj->...", pp.D, pk.Aq)
    g_s2 = (st.N - trDA) / s2 - rV2r
    if reml:
        FC = F @ C[..., None, :, :]
        G = G - FC.reshape(FC.shape[:-3] + (q, J * p)) @ np.swapaxes(
            F.reshape(F.shape[:-3] + (q, J * p)), -1, -2)
        g_s2 = g_s2 - np.einsum("...ab,...ba->...", C, XV2X)
    mult = np.where(cs.rows == cs.cols, 1.0, 2.0)
    g = np.concatenate((G[..., cs.rows, cs.cols] * mult, g_s2[..., None]), -1)
    return g, pp, F, C, XV2X


def phi_gradient(st, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    """The analytic gradient of f (or f_R) in phi; shape (..., m)."""
    return _grad_pieces(_as_packed(st), cs, np.asarray(phi, dtype=float), reml)[0]


def _steps(cs: CovStructure, phi: np.ndarray) -> np.ndarray:
    """Central-difference steps: 1e-4 times the scale of each phi element."""
    T = cs.T(phi)
    d = np.sqrt(np.abs(np.diagonal(T, axis1=-2, axis2=-1)))
    s2 = phi[..., -1:]
    scale_T = d[..., cs.rows] * d[..., cs.cols] + 1e-2 * s2
    scale = np.concatenate((np.maximum(np.abs(phi[..., :-1]), scale_T), s2), -1)
    return 1e-4 * scale


def phi_hessian_fd(st, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    """H by central differences of the analytic gradient (a check on :func:`phi_hessian`).

    Batched: ``st`` with batch shape (R,) and phi (R, m), or unbatched. One
    vectorised gradient evaluation at 2m points; about 8 significant digits.
    """
    phi = np.asarray(phi, dtype=float)
    m = phi.shape[-1]
    h = _steps(cs, phi)
    E = np.eye(m)
    pts = np.concatenate((phi[..., None, :] + h[..., None, :] * E,
                          phi[..., None, :] - h[..., None, :] * E), axis=-2)
    pk = _as_packed(st)
    if phi.ndim > 1:
        pk = take(pk, np.arange(phi.shape[0]), expand=1)
    g = _grad_pieces(pk, cs, pts, reml)[0]
    H = (g[..., :m, :] - g[..., m:, :]) / (2.0 * h[..., :, None])
    return 0.5 * (H + np.swapaxes(H, -1, -2))


def phi_hessian(st, cs: CovStructure, phi: np.ndarray, reml: bool) -> np.ndarray:
    """The observed Hessian H of f (ML) or f_R (REML) in phi, analytically.

    With V_k = dV/dphi_k (Z_j E_k Z_j' for an element of T, I for sigma^2),
    r = y - X beta-hat, C = (X'V^{-1}X)^{-1}, w_k = X'V^{-1}V_kV^{-1}r and
    M_k = X'V^{-1}V_kV^{-1}X:

        T1_kl = tr(V^{-1}V_k V^{-1}V_l)        T2_kl = r'V^{-1}V_k V^{-1}V_l V^{-1}r
        T3_kl = w_k' C w_l                     T4_kl = tr(C X'V^{-1}V_k V^{-1}V_l V^{-1}X)
        T5_kl = tr(C M_k C M_l)
        ML:   H = -T1 + 2 T2 - 2 T3            (beta profiled: the -2 T3 term)
        REML: H = -T1 + 2 T4 - T5 + 2 T2 - 2 T3  (= -tr(P V_k P V_l) + 2 y'P V_k P V_l P y)

    Per group, with K_j = sigma^2 V_j^{-1} = I - Z_j D_j Z_j' and G_j = I - A_j D_j,
    Z_j'K_j^m = G_j^m Z_j', so every term reduces to q x q, q x p and p x p
    sums over groups, and the powers X'K^m X, r'K^m r, tr K^m follow from
    X'K^{m+1}X = X'K^m X - (G^m B)' D B (and likewise). Batched over leading
    dimensions of ``st`` and ``phi``. Computed in compiled loops over groups
    (:func:`mlmsim.engine.phi_kernel.phi_hessian_many`).
    """
    stats = st.stats if isinstance(st, Packed) else st
    phi = np.asarray(phi, dtype=float)
    batch = np.broadcast_shapes(np.shape(stats.yty), phi.shape[:-1])
    m = phi.shape[-1]
    A, B, c, XtX, Xty, yty, N, _ = flat_arrays(stats, batch)
    H = phi_kernel.phi_hessian_many(
        A, B, c, XtX, Xty, yty, N, cs.rows, cs.cols,
        kernel_array(phi, batch, (m,)), bool(reml))
    return H.reshape(batch + (m, m))


def vcov_derivatives(st: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool):
    """C = (X'V^{-1}X)^{-1} (p, p) and dC/dphi_k = C M_k C (m, p, p), with
    M_k = X'V^{-1} (dV/dphi_k) V^{-1}X: sum_j F_j' E_ab F_j for T_ab, X'V^{-2}X for sigma^2."""
    _, _, F, C, XV2X = _grad_pieces(_as_packed(st), cs, np.asarray(phi, dtype=float), reml)
    # M_k for T_ab: sum_j F_j[a]' F_j[b] (+ transpose when a != b)
    FF = np.einsum("...ajp,...bjr->...abpr", F, F)
    Mk = FF[..., cs.rows, cs.cols, :, :]
    Mk = Mk + np.swapaxes(Mk, -1, -2) * (cs.rows != cs.cols)[:, None, None]
    Mk = np.concatenate((Mk, XV2X[..., None, :, :]), axis=-3)
    dC = C[..., None, :, :] @ Mk @ C[..., None, :, :]
    return C, dC


def theta_jacobians(cs: CovStructure, tmap, theta: np.ndarray, sigma: float):
    """d phi / d psi (m, k+1) and d^2 phi / d psi^2 (m, k+1, k+1) for psi = (theta, sigma).

    phi_e = sigma^2 (Lambda Lambda')_ab for T's element e = (a, b), phi_m = sigma^2. With
    theta_t at Lambda[r_t, c_t]: d(Lambda Lambda')_ab / d theta_t = [a = r_t] Lambda[b, c_t]
    + [b = r_t] Lambda[a, c_t], and d^2 / d theta_t d theta_u = [c_t = c_u] ([a = r_t]
    [b = r_u] + [a = r_u][b = r_t]).
    """
    L = tmap.Lambda(theta)
    LL = L @ L.T
    a, b = cs.rows, cs.cols
    r, c = tmap.rows, tmap.cols
    k, K = r.shape[0], a.shape[0]
    ar = np.equal.outer(a, r).astype(float)   # [a_e = r_t]  (K, k)
    br = np.equal.outer(b, r).astype(float)
    D = ar * L[b][:, c] + br * L[a][:, c]     # (K, k)
    same_c = np.equal.outer(c, c).astype(float)
    D2 = (ar[:, :, None] * br[:, None, :] + ar[:, None, :] * br[:, :, None]) * same_c
    J = np.zeros((K + 1, k + 1))
    J[:K, :k] = sigma**2 * D
    J[:K, k] = 2.0 * sigma * LL[a, b]
    J[K, k] = 2.0 * sigma
    H2 = np.zeros((K + 1, k + 1, k + 1))
    H2[:K, :k, :k] = sigma**2 * D2
    H2[:K, :k, k] = H2[:K, k, :k] = 2.0 * sigma * D
    H2[:K, k, k] = 2.0 * LL[a, b]
    H2[K, k, k] = 2.0
    return J, H2


def satterthwaite_theta(st, cs: CovStructure, tmap, theta: np.ndarray, sigma2: float,
                        reml: bool, fixed_map: np.ndarray | None = None,
                        L: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite df as lmerTest computes them: in psi = (theta, sigma).

    The asymptotic covariance of psi-hat is 2 H_psi^{-1}, with H_psi = J' H_phi J +
    sum_e (df/dphi_e) d^2 phi_e / dpsi^2 the Hessian of the objective in psi (the
    second term matters where a variance sits on the boundary), and dC/dpsi = sum_e
    dC/dphi_e J_e. Inside the parameter space this equals the phi-space result
    (Satterthwaite's df do not depend on the parameterisation); on the boundary a
    column of Lambda at 0 has d phi / d theta = 0 and drops out, as in lmerTest.
    ``fixed_map`` maps the fixed effects of ``st`` to the reported ones (C -> M C M').
    """
    pk = _as_packed(st)
    T = sigma2 * (tmap.Lambda(theta) @ tmap.Lambda(theta).T)
    phi = cs.phi(T, sigma2)
    H_phi = phi_hessian(pk, cs, phi, reml)
    g_phi = phi_gradient(pk, cs, phi, reml)
    C, dC = vcov_derivatives(pk, cs, phi, reml)
    J, H2 = theta_jacobians(cs, tmap, theta, float(np.sqrt(sigma2)))
    H = J.T @ H_phi @ J + np.einsum("e,eij->ij", g_phi, H2)
    H = 0.5 * (H + H.T)
    dC_psi = np.einsum("epq,ej->jpq", dC, J)
    if fixed_map is not None:
        C = fixed_map @ C @ fixed_map.T
        dC_psi = fixed_map @ dC_psi @ fixed_map.T
    w = np.linalg.eigvalsh(H)
    if w[0] <= 1e-10 * np.abs(w).max():
        return np.full(C.shape[-1] if L is None else np.atleast_2d(L).shape[0], np.nan)
    acov = 2.0 * np.linalg.inv(H)
    return satterthwaite_df(C, dC_psi, acov, L)


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


def satterthwaite_many(stats: GroupStats, tmap, cs: CovStructure, theta: np.ndarray,
                       sigma2: np.ndarray, reml: bool,
                       fixed_map: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite df (R, p) of every fixed effect for R replicates: ``stats`` with batch
    axis R, theta (R, k), sigma2 (R,), ``fixed_map`` None or (R, p, p) (see
    :func:`satterthwaite_theta`). NaN for a replicate where the df cannot be computed."""
    theta = np.atleast_2d(theta)
    sigma2 = np.atleast_1d(sigma2)
    R, p = theta.shape[0], stats.p
    out = np.full((R, p), np.nan)
    for r in range(R):
        if not np.all(np.isfinite(theta[r])) or not np.isfinite(sigma2[r]):
            continue
        one = stats.select(np.array([r]))
        one = GroupStats(*(getattr(one, f)[0] for f in GroupStats.__dataclass_fields__))
        out[r] = satterthwaite_theta(one, cs, tmap, theta[r], float(sigma2[r]), reml,
                                     None if fixed_map is None else fixed_map[r])
    return out
