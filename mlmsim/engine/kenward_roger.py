"""Small-sample inference for the fixed effects: Kenward-Roger, expected information, and
F tests of contrasts. docs/math.md section 12.

With phi = (T's distinct elements, sigma^2) and V_k = dV/dphi_k (Z E_k Z' for an element of
T, I for sigma^2; V is linear in phi), C = (X'V^{-1}X)^{-1} at the REML estimates,

    M_k  = X'V^{-1} V_k V^{-1} X,    Q_kl = X'V^{-1} V_k V^{-1} V_l V^{-1} X          (12.1)
    H_E  = E[d^2 (-2 log L_R) / dphi dphi'] = tr(P V_k P V_l),  P the REML projection  (6.6)
    W    = 2 H_E^{-1}  (the inverse of the expected information 1/2 tr(P V_k P V_l))

(computed per group by the one GLS pass, :func:`mlmsim.engine.phi_kernel.phi_terms`), and
Kenward & Roger (1997), as pbkrtest's ``vcovAdj`` computes it (P_k = -M_k, R_kl = 0):

    Phi_A = C + 2 C [sum_kl W_kl (Q_kl - M_k C M_l)] C                                 (12.2)

For a contrast matrix L (r rows, rank r), Theta = L'(L C L')^{-1} L, u_k = Theta C M_k C:

    A1 = sum_kl W_kl tr(u_k) tr(u_l),   A2 = sum_kl W_kl tr(u_k u_l)
    B  = (A1 + 6 A2) / (2r),  g = ((r+1) A1 - (r+4) A2) / ((r+2) A2),  d = 3r + 2(1-g)
    c1 = g/d,  c2 = (r-g)/d,  c3 = (r+2-g)/d
    rho = [(1 - A2/r) / (1 - c2 B)]^2 (1 + c1 B) / (r (1 - c3 B))
    m = 4 + (r+2) / (r rho - 1),   lambda = m (1 - A2/r) / (m - 2)                     (12.3)
    F = lambda (L b)'(L Phi_A L')^{-1}(L b) / r  ~  F(r, m)

(pbkrtest's ``KRmodcomp``; lambda = 1 when |m - 2| < 0.01). For one row, A1 = A2 and
m = 2 / A2 = 2 (l'Cl)^2 / (g'W g), g_k = l'C M_k C l: Satterthwaite's formula with the
expected-information W (lmerTest's ``summary(ddf = "Kenward-Roger")``, with the SE
sqrt(l'Phi_A l)).

One departure from pbkrtest, for invariance to units: pbkrtest inverts H_E when its
smallest |eigenvalue| exceeds 1e-10 (an absolute number, which changes with the units of
y and the predictors) and otherwise takes a generalised inverse; here H_E is judged and
inverted in its correlation form, as the observed Hessian (9.1), and where it is not
positive definite KR is not available (NaN, never a silent fallback).

Satterthwaite's F for a contrast matrix (lmerTest's ``contest``): with L C L' = P diag(d)
P', the rows of P'L are independent contrasts with df nu_i (10.3); the F statistic is
sum_i (P'L b)_i^2 / d_i / r, and its df 2E / (E - r), E = sum_i nu_i / (nu_i - 2) (2 if
some nu_i <= 2; the common value when all nu_i agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mlmsim.engine import phi_kernel
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.inference import CovStructure, psi_acov, satterthwaite_df
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array

__all__ = ["InfoTerms", "info_terms", "mapped", "expected_acov", "kr_adjust", "kr_coef_df",
           "kr_inference",
           "kr_ftest", "satterthwaite_ftest", "FTest"]


@dataclass(frozen=True)
class InfoTerms:
    """The second-order terms at phi for R replicates (leading axis R), in the
    coordinates of the statistics they came from: C (R, p, p), M (R, m, p, p), Q (R, m, m,
    p, p) of (12.1), the expected Hessian HE (R, m, m) of (6.6) and the observed Hessian H
    (R, m, m) of (6.3) of -2 log L (REML or ML)."""

    C: np.ndarray
    M: np.ndarray
    Q: np.ndarray
    HE: np.ndarray
    H: np.ndarray


def info_terms(stats: GroupStats, cs: CovStructure, phi: np.ndarray, reml: bool
               ) -> InfoTerms:
    """:class:`InfoTerms` at phi (R, m) for statistics with batch shape (R,), from one
    compiled pass (:func:`mlmsim.engine.phi_kernel.phi_many`)."""
    phi = np.atleast_2d(np.asarray(phi, dtype=float))
    R, m = phi.shape
    st = Stats(*flat_arrays(stats, (R,)))
    out = phi_kernel.phi_many(st, cs.rows, cs.cols, kernel_array(phi, (R,), (m,)),
                              bool(reml), False, 2, qtoken(cs.q))
    _, _, H, C, _, _, _, _, HE, M, Q = out
    return InfoTerms(C=C, M=M, Q=Q, HE=HE, H=H)


def mapped(t: InfoTerms, F: np.ndarray | None) -> InfoTerms:
    """``t`` with the fixed effects mapped by F (R, p, p) or (p, p), beta -> F beta (the
    centred fixed effects to the reported ones, :class:`mlmsim.engine.stats.Centering`):
    C -> F C F', M_k, Q_kl -> F^{-T} M_k F^{-1} (X -> X F^{-1}); None: unchanged."""
    if F is None:
        return t
    F = np.broadcast_to(F, t.C.shape)
    Fi = np.linalg.inv(F)
    FiT = np.swapaxes(Fi, -1, -2)
    return InfoTerms(C=F @ t.C @ np.swapaxes(F, -1, -2),
                     M=FiT[:, None] @ t.M @ Fi[:, None],
                     Q=FiT[:, None, None] @ t.Q @ Fi[:, None, None], HE=t.HE, H=t.H)


def kr_inference(t: InfoTerms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per replicate of a REML fit: Phi_A (R, p, p), W (R, m, m), and each fixed effect's
    KR SE sqrt(diag Phi_A) and df (R, p) ((12.2), (12.3) with r = 1)."""
    PhiA, W = kr_adjust(t)
    p = PhiA.shape[-1]
    se = np.sqrt(np.einsum("rii->ri", PhiA))
    return PhiA, W, se, kr_coef_df(t, W, np.eye(p))


def expected_acov(HE: np.ndarray) -> np.ndarray:
    """W = 2 H_E^{-1} (R, m, m), the inverse of the expected information, from the expected
    Hessian of -2 log L; judged and inverted in its correlation form (docs/math.md (9.1)),
    NaN where that is not positive definite."""
    return psi_acov(HE)


def kr_adjust(t: InfoTerms) -> tuple[np.ndarray, np.ndarray]:
    """Phi_A (R, p, p) of (12.2) and W (R, m, m) from :class:`InfoTerms` of a REML fit."""
    W = expected_acov(t.HE)
    C, M, Q = t.C, t.M, t.Q
    MCM = np.einsum("rkab,rbc,rlcd->rklad", M, C, M)
    U = np.einsum("rkl,rklab->rab", W, Q - MCM)
    PhiA = C + 2.0 * C @ U @ C
    return 0.5 * (PhiA + np.swapaxes(PhiA, -1, -2)), W


def _cmc(t: InfoTerms) -> np.ndarray:
    """C M_k C (R, m, p, p) = -dC/dphi_k."""
    return np.einsum("rab,rkbc,rcd->rkad", t.C, t.M, t.C)


def kr_coef_df(t: InfoTerms, W: np.ndarray, Lrows: np.ndarray) -> np.ndarray:
    """KR df (R, n) of each one-row contrast l (rows of ``Lrows`` (n, p), in the
    coordinates of ``t``): m = 2 (l'Cl)^2 / (g'W g), g_k = l'C M_k C l ((12.3), r = 1)."""
    v = np.einsum("ip,rpq,iq->ri", Lrows, t.C, Lrows)
    g = np.einsum("ip,rkpq,iq->rik", Lrows, _cmc(t), Lrows)
    den = np.einsum("rik,rkl,ril->ri", g, W, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2.0 * v**2 / den


@dataclass(frozen=True)
class FTest:
    """An F test of H0: L beta = rhs. ``F`` the statistic (KR: scaled by ``scale``, the
    lambda of (12.3); Satterthwaite: 1), ``ndf`` = rank of L, ``ddf`` the denominator df,
    ``p`` = P(F(ndf, ddf) > F); ``method`` "kenward-roger" or "satterthwaite"."""

    F: float
    ndf: int
    ddf: float
    p: float
    scale: float
    method: str

    def to_dict(self) -> dict:
        return {"F": self.F, "ndf": self.ndf, "ddf": self.ddf, "p": self.p,
                "scale": self.scale, "method": self.method}


def _row_basis(L: np.ndarray) -> np.ndarray:
    """An orthonormal basis of L's row space (rank-deficient L: its independent part, as
    pbkrtest does); a ValueError for L = 0."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    _, s, Vt = np.linalg.svd(L, full_matrices=False)
    r = int(np.sum(s > s.max(initial=0.0) * max(L.shape) * np.finfo(float).eps))
    if r == 0:
        raise ValueError("the contrast matrix L is zero")
    return Vt[:r]


def kr_ftest(L: np.ndarray, b: np.ndarray, t: InfoTerms, PhiA: np.ndarray, W: np.ndarray,
             r: int = 0) -> FTest:
    """The KR F test (12.3) of L b = 0 for replicate r (``b`` = L's coefficients minus
    the hypothesised values, ``L`` (n, p); all in the coordinates of ``t``)."""
    Lb = _row_basis(L)
    n = Lb.shape[0]
    C = t.C[r]
    # rhs: L b = L beta - h, expressed through the basis: the same quadratic form
    Theta = Lb.T @ np.linalg.solve(Lb @ C @ Lb.T, Lb)
    u = np.einsum("ab,kbc->kac", Theta, _cmc(t)[r])
    tr = np.einsum("kaa->k", u)
    A1 = tr @ W[r] @ tr
    A2 = np.einsum("kl,kab,lba->", W[r], u, u)
    B = (A1 + 6.0 * A2) / (2.0 * n)
    g = ((n + 1) * A1 - (n + 4) * A2) / ((n + 2) * A2)
    d = 3.0 * n + 2.0 * (1.0 - g)
    c1, c2, c3 = g / d, (n - g) / d, (n + 2 - g) / d
    v0 = 1.0 + c1 * B
    v0 = 0.0 if abs(v0) < 1e-10 else v0
    rho = ((1.0 - A2 / n) / (1.0 - c2 * B)) ** 2 * v0 / (n * (1.0 - c3 * B))
    m = 4.0 + (n + 2.0) / (n * rho - 1.0)
    lam = 1.0 if abs(m - 2.0) < 1e-2 else m * (1.0 - A2 / n) / (m - 2.0)
    Lbv = Lb @ b
    F = lam * float(Lbv @ np.linalg.solve(Lb @ PhiA[r] @ Lb.T, Lbv)) / n
    p = float(sps.f.sf(F, n, m)) if np.isfinite(F) and m > 0 else np.nan
    return FTest(F=float(F), ndf=n, ddf=float(m), p=p, scale=float(lam), method="kenward-roger")


def _fstat_ddf(nu: np.ndarray) -> float:
    """lmerTest's get_Fstat_ddf: the df of an F built from independent t's with df nu."""
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(nu.mean())
    if np.any(nu <= 2.0):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - nu.size)


def satterthwaite_ftest(L: np.ndarray, b: np.ndarray, C: np.ndarray, dC: np.ndarray,
                        acov: np.ndarray) -> FTest:
    """Satterthwaite's F test of L b = 0 (lmerTest's ``contest``; formula in the module
    docstring): C (p, p), dC (k, p, p) and acov (k, k) in any parameterisation of the
    covariance parameters (:func:`mlmsim.engine.inference.satterthwaite_df`)."""
    Lb = _row_basis(L)
    d, P = np.linalg.eigh(Lb @ C @ Lb.T)
    PtL = P.T @ Lb
    t2 = (PtL @ b) ** 2 / d
    nu = satterthwaite_df(C, dC, acov, PtL)
    n = Lb.shape[0]
    F = float(t2.sum() / n)
    ddf = _fstat_ddf(nu) if np.all(np.isfinite(nu)) else np.nan
    p = float(sps.f.sf(F, n, ddf)) if np.isfinite(ddf) else np.nan
    return FTest(F=F, ndf=n, ddf=ddf, p=p, scale=1.0, method="satterthwaite")
