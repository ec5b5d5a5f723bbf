"""Inference in the covariance parameters phi = (distinct elements of T, sigma^2), and df.

docs/math.md sections 6 and 10. With the fixed effects profiled out, the objective in phi
is (6.1)

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

The objective, its gradient (6.2), the observed Hessian H (6.3) and dC/dphi (10.2) come
from one compiled pass over the groups (:func:`mlmsim.engine.phi_kernel.phi_pass`, on the
one GLS core); :func:`phi_hessian_fd`, central differences of the gradient, checks H.
The asymptotic covariance of phi-hat is 2 H^{-1} (SAS's ASYCOV, COVTEST SEs).

Satterthwaite df (as lmerTest, docs/math.md (10.1)-(10.3)) for a contrast l'beta: with
var(l'beta-hat) = l'C(phi)l, dC/dphi_k = C (X'V^{-1} dV/dphi_k V^{-1}X) C and
Acov = 2 H^{-1}:  df = 2 (l'Cl)^2 / (g' Acov g),  g_k = l' dC/dphi_k l. They are decided
on the Hessian's correlation form, so they do not depend on the units of the data; where
that Hessian is not positive definite they are NaN (never a normal fallback).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mlmsim.engine import kernels, phi_kernel, tolerances
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array

__all__ = [
    "CovStructure",
    "phi_objective",
    "phi_gradient",
    "phi_hessian",
    "phi_hessian_fd",
    "satterthwaite_df",
    "satterthwaite_theta",
    "satterthwaite_terms",
    "satterthwaite_phi_terms",
    "satterthwaite_many",
    "phi_pass",
    "theta_jacobians",
    "DDF_METHODS",
    "INFORMATION",
    "KR_NEEDS_REML",
    "columns_varying_within",
    "containment_df",
    "between_within_df",
]

#: the denominator-df methods of the fixed effects' t tests
DDF_METHODS = ("satterthwaite", "kenward-roger", "containment", "between-within", "residual")
#: where the covariance parameters' SEs come from: the observed or the expected information
INFORMATION = ("observed", "expected")
KR_NEEDS_REML = ("Kenward-Roger needs a REML fit (as lmerTest and SAS DDFM=KR); refit with "
                 "method='REML'")


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


def phi_pass(stats: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool,
             want_dC: bool = False) -> tuple[np.ndarray, ...]:
    """The compiled pass of :func:`mlmsim.engine.phi_kernel.phi_many` over the broadcast
    batch shape of ``stats`` and ``phi`` (..., m): the objective f (...) (6.1), its gradient
    g (..., m) (6.2), the observed Hessian H (..., m, m) (6.3), C = (X'V^{-1}X)^{-1}
    (..., p, p) and, with ``want_dC``, dC/dphi (..., m, p, p) (10.2). All nan where some
    V_j is not positive definite (any symmetric T with every V_j positive definite works)."""
    phi = np.asarray(phi, dtype=float)
    batch = np.broadcast_shapes(np.shape(stats.yty), phi.shape[:-1])
    m = phi.shape[-1]
    if m != cs.size:
        raise ValueError(f"phi must have {cs.size} elements (T's distinct elements, then "
                         f"sigma^2), got {m}")
    st = Stats(*flat_arrays(stats, batch))
    f, g, H, C, dC = phi_kernel.phi_many(st, cs.rows, cs.cols, kernel_array(phi, batch, (m,)),
                                         bool(reml), bool(want_dC), 0, qtoken(cs.q))[:5]
    p = C.shape[-1]
    return (f.reshape(batch), g.reshape(batch + (m,)), H.reshape(batch + (m, m)),
            C.reshape(batch + (p, p)), dC.reshape(batch + dC.shape[1:]))


def phi_objective(stats: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool
                  ) -> np.ndarray:
    """f(phi) or f_R(phi), docs/math.md (6.1) (+inf where some V_j is not PD)."""
    f = phi_pass(stats, cs, phi, reml)[0]
    return np.where(np.isnan(f), np.inf, f)


def phi_gradient(stats: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool
                 ) -> np.ndarray:
    """The analytic gradient of f (or f_R) in phi, docs/math.md (6.2); shape (..., m)."""
    return phi_pass(stats, cs, phi, reml)[1]


def phi_hessian(stats: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool
                ) -> np.ndarray:
    """The observed Hessian H of f (ML) or f_R (REML) in phi, docs/math.md (6.3)-(6.4):
    with V_k = dV/dphi_k, r = y - X beta-hat, C = (X'V^{-1}X)^{-1},
    w_k = X'V^{-1}V_kV^{-1}r and M_k = X'V^{-1}V_kV^{-1}X,

        T1_kl = tr(V^{-1}V_k V^{-1}V_l)        T2_kl = r'V^{-1}V_k V^{-1}V_l V^{-1}r
        T3_kl = w_k' C w_l                     T4_kl = tr(C X'V^{-1}V_k V^{-1}V_l V^{-1}X)
        T5_kl = tr(C M_k C M_l)
        ML:   H = -T1 + 2 T2 - 2 T3            REML: H = -T1 + 2 T4 - T5 + 2 T2 - 2 T3

    Batched over leading dimensions of ``stats`` and ``phi``."""
    return phi_pass(stats, cs, phi, reml)[2]


def _steps(cs: CovStructure, phi: np.ndarray) -> np.ndarray:
    """Central-difference steps: 1e-4 times the scale of each phi element."""
    T = cs.T(phi)
    d = np.sqrt(np.abs(np.diagonal(T, axis1=-2, axis2=-1)))
    s2 = phi[..., -1:]
    scale_T = d[..., cs.rows] * d[..., cs.cols] + 1e-2 * s2
    scale = np.concatenate((np.maximum(np.abs(phi[..., :-1]), scale_T), s2), -1)
    return 1e-4 * scale


def phi_hessian_fd(stats: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool
                   ) -> np.ndarray:
    """H by central differences of the analytic gradient (a check on :func:`phi_hessian`).

    Batched: ``stats`` with batch shape (R,) and phi (R, m), or unbatched. About 8
    significant digits.
    (docs/math.md (6.3))
    """
    phi = np.asarray(phi, dtype=float)
    m = phi.shape[-1]
    h = _steps(cs, phi)
    E = np.eye(m)
    pts = np.concatenate((phi[..., None, :] + h[..., None, :] * E,
                          phi[..., None, :] - h[..., None, :] * E), axis=-2)
    st = stats
    if phi.ndim > 1:
        st = GroupStats(*(np.asarray(getattr(stats, f))[:, None]
                          for f in GroupStats.__dataclass_fields__))
    g = phi_gradient(st, cs, pts, reml)
    H = (g[..., :m, :] - g[..., m:, :]) / (2.0 * h[..., :, None])
    return 0.5 * (H + np.swapaxes(H, -1, -2))


def theta_jacobians(cs: CovStructure, tmap, theta: np.ndarray, sigma: float):
    """d phi / d psi (m, k+1) and d^2 phi / d psi^2 (m, k+1, k+1) for psi = (theta, sigma).

    phi_e = sigma^2 (Lambda Lambda')_ab for T's element e = (a, b), phi_m = sigma^2. With
    theta_t at Lambda[r_t, c_t]: d(Lambda Lambda')_ab / d theta_t = [a = r_t] Lambda[b, c_t]
    + [b = r_t] Lambda[a, c_t], and d^2 / d theta_t d theta_u = [c_t = c_u] ([a = r_t]
    [b = r_u] + [a = r_u][b = r_t]).
    (docs/math.md (10.1))
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


def satterthwaite_df(C: np.ndarray, dC: np.ndarray, acov: np.ndarray,
                     L: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite df for each row l of L (default: each coefficient).

    df = 2 (l'Cl)^2 / (g' Acov g), g_k = l' dC_k l. NaN where Acov is NaN.
    (docs/math.md (10.3))
    """
    p = C.shape[-1]
    L = np.eye(p) if L is None else np.atleast_2d(L)
    v = np.einsum("ip,pr,ir->i", L, C, L)
    g = np.einsum("ip,kpr,ir->ik", L, dC, L)
    denom = np.einsum("ik,kl,il->i", g, acov, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * v**2 / denom


def satterthwaite_terms(stats: GroupStats, cs: CovStructure, tmap, theta: np.ndarray,
                        sigma2: float, reml: bool, fixed_map: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C, dC/dpsi and Acov = 2 H_psi^{-1} in psi = (theta, sigma), as lmerTest computes
    them, docs/math.md (10.1)-(10.3).

    The asymptotic covariance of psi-hat is 2 H_psi^{-1}, with H_psi = J' H_phi J +
    sum_e (df/dphi_e) d^2 phi_e / dpsi^2 the Hessian of the objective in psi (the
    second term matters where a variance sits on the boundary), and dC/dpsi = sum_e
    dC/dphi_e J_e. Inside the parameter space this equals the phi-space result
    (Satterthwaite's df do not depend on the parameterisation); on the boundary a
    column of Lambda at 0 has d phi / d theta = 0 and drops out, as in lmerTest.
    H_psi is judged and inverted in its correlation form (docs/math.md (9.1)), so the df
    do not depend on the units of the data; where it is not positive definite Acov is
    NaN. ``fixed_map`` maps the fixed effects of ``stats`` to the reported ones
    (C -> M C M').
    """
    T = sigma2 * (tmap.Lambda(theta) @ tmap.Lambda(theta).T)
    phi = cs.phi(T, sigma2)
    _, g_phi, H_phi, C, dC = phi_pass(stats, cs, phi, reml, True)
    J, H2 = theta_jacobians(cs, tmap, theta, float(np.sqrt(sigma2)))
    H = J.T @ H_phi @ J + np.einsum("e,eij->ij", g_phi, H2)
    H = 0.5 * (H + H.T)
    dC_psi = np.einsum("epq,ej->jpq", dC, J)
    if fixed_map is not None:
        C = fixed_map @ C @ fixed_map.T
        dC_psi = fixed_map @ dC_psi @ fixed_map.T
    return C, dC_psi, psi_acov(H)


def satterthwaite_phi_terms(stats: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool,
                            fixed_map: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """C, dC/dphi and Acov = 2 H_phi^{-1} at phi (10.2): the terms of Satterthwaite's df
    (10.3) in phi, for any symmetric T with every V_j positive definite (an unbounded fit,
    where theta does not exist). Inside the parameter space they give the df of
    :func:`satterthwaite_terms`. ``fixed_map`` as there."""
    _, _, H, C, dC = phi_pass(stats, cs, phi, reml, True)
    if fixed_map is not None:
        C = fixed_map @ C @ fixed_map.T
        dC = fixed_map @ dC @ fixed_map.T
    return C, dC, psi_acov(H)


def satterthwaite_theta(stats: GroupStats, cs: CovStructure, tmap, theta: np.ndarray,
                        sigma2: float, reml: bool, fixed_map: np.ndarray | None = None,
                        L: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite df as lmerTest computes them, for each row of L (default: each
    coefficient), from :func:`satterthwaite_terms`; NaN where H_psi is not positive
    definite."""
    return satterthwaite_df(*satterthwaite_terms(stats, cs, tmap, theta, sigma2, reml,
                                                 fixed_map), L)


def psi_acov(H: np.ndarray) -> np.ndarray:
    """2 H^{-1} for H (..., m, m) where H is positive definite in its correlation form
    (docs/math.md (9.1)), computed in that form; NaN otherwise
    (:func:`mlmsim.engine.kernels.acov_many`)."""
    H = np.asarray(H, dtype=float)
    m = H.shape[-1]
    flat = np.ascontiguousarray(H.reshape(-1, m, m))
    return kernels.acov_many(flat)[0].reshape(H.shape)


def _psd_rank(M: np.ndarray, tol: float = tolerances.RANK_TOL, ref: float | None = None) -> int:
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
    (docs/math.md (10.4))
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
    N - J - rank(within-group columns).
    (docs/math.md (10.5))"""
    J = int((st.n > 0).sum())
    N = int(st.N)
    p_between = int((~X_varies).sum())
    p_within = int(X_varies.sum())
    return np.where(X_varies, N - J - p_within, J - p_between).astype(float)


def columns_varying_within(X: np.ndarray, codes: np.ndarray, J: int) -> np.ndarray:
    """True for columns of X that are not constant within every group."""
    n = np.bincount(codes, minlength=J)
    s = np.zeros((J, X.shape[1]))
    np.add.at(s, codes, X)
    mean = s / np.maximum(n, 1)[:, None]
    dev = np.abs(X - mean[codes]).max(axis=0)
    scale = np.maximum(np.abs(X).max(axis=0), 1e-300)
    return dev > 1e-10 * scale


def wald_p(t: np.ndarray, df: np.ndarray | None) -> np.ndarray:
    """Two-sided p-value of t: Student t with df (normal where df is inf), or the normal
    for every element where df is None (Wald z). A NaN df gives a NaN p-value: a df that
    could not be computed is never replaced by the normal."""
    t = np.asarray(t, dtype=float)
    if df is None:
        return 2.0 * sps.norm.sf(np.abs(t))
    df = np.broadcast_to(np.asarray(df, dtype=float), t.shape)
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(df), 2.0 * sps.norm.sf(np.abs(t)),
                        2.0 * sps.t.sf(np.abs(t), np.where(np.isinf(df), 1.0, df)))


def satterthwaite_many(stats: GroupStats, tmap, cs: CovStructure, theta: np.ndarray,
                       sigma2: np.ndarray, reml: bool,
                       fixed_map: np.ndarray | None = None,
                       phi: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite df (R, p) of every fixed effect for R replicates: ``stats`` with batch
    axis R, theta (R, k), sigma2 (R,), ``fixed_map`` None or (R, p, p) (see
    :func:`satterthwaite_theta`); with ``phi`` (R, m) (unbounded fits), in phi
    (:func:`satterthwaite_phi_terms`). NaN for a replicate where the df cannot be computed.
    (docs/math.md (10.3))"""
    theta = np.atleast_2d(theta)
    sigma2 = np.atleast_1d(sigma2)
    R, p = theta.shape[0], stats.p
    out = np.full((R, p), np.nan)
    for r in range(R):
        point = theta[r] if phi is None else phi[r]
        if not np.all(np.isfinite(point)) or not np.isfinite(sigma2[r]):
            continue
        one = stats.select(np.array([r]))
        one = GroupStats(*(getattr(one, f)[0] for f in GroupStats.__dataclass_fields__))
        fm = None if fixed_map is None else fixed_map[r]
        if phi is None:
            out[r] = satterthwaite_theta(one, cs, tmap, theta[r], float(sigma2[r]), reml, fm)
        else:
            out[r] = satterthwaite_df(*satterthwaite_phi_terms(one, cs, phi[r], reml, fm))
    return out
