"""T, the covariance of the random effects: built from SDs and correlations, checked
(symmetric, positive semi-definite) and factored for drawing U_j; tau_0^2 from an ICC;
and the names of the covariance parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlmsim.generate.checks import number
from mlmsim.model.covparms import covparm_names as phi_names

__all__ = [
    "SYMMETRY_TOL",
    "PSD_TOL",
    "RANK_TOL",
    "T_from_sd_corr",
    "factor_T",
    "tau0_sq_from_icc",
    "covparm_names",
]


# relative tolerances for T (times max |T| or its largest eigenvalue): symmetry, positive
# semi-definiteness, and the rank of its factor (smaller eigenvalues count as 0)
SYMMETRY_TOL = 1e-10
PSD_TOL = 1e-10
RANK_TOL = 1e-10


def T_from_sd_corr(sd: Sequence[float], corr: Any = None) -> np.ndarray:  # noqa: N802
    """T = D C D with D = diag(sd), C the correlation matrix of U_j.

    ``corr`` is a q x q correlation matrix (symmetric, unit diagonal, entries in
    [-1, 1], positive semi-definite), a single correlation when q = 2, or None (the
    identity). A correlation of +-1 gives a singular T, which is allowed.

    >>> T_from_sd_corr([2.0, 0.5], -0.3)
    array([[ 4.  , -0.3 ],
           [-0.3 ,  0.25]])
    """
    sd = np.atleast_1d(np.asarray(sd, dtype=float))
    if sd.ndim != 1 or not np.isfinite(sd).all():
        raise ValueError(f"sd must be a list of finite numbers, got {sd!r}")
    if (sd < 0).any():
        raise ValueError(f"a standard deviation is negative: {sd.tolist()}")
    q = sd.shape[0]
    if corr is None:
        C = np.eye(q)
    elif np.ndim(corr) == 0:
        if q != 2:
            raise ValueError(f"a single correlation needs two sds, got {q}")
        r = number(corr, "the correlation")
        C = np.array([[1.0, r], [r, 1.0]])
    else:
        C = np.asarray(corr, dtype=float)
    if C.shape != (q, q):
        raise ValueError(f"corr must be {q} x {q} to match sd, got shape {C.shape}")
    if not np.isfinite(C).all() or not np.allclose(C, C.T, rtol=0, atol=1e-12):
        raise ValueError("corr must be a symmetric matrix of finite numbers")
    if not np.allclose(np.diag(C), 1.0, rtol=0, atol=1e-12):
        raise ValueError(f"corr must have a unit diagonal, got {np.diag(C).tolist()}")
    if (np.abs(C) > 1.0 + 1e-12).any():
        raise ValueError("correlations must lie in [-1, 1]")
    lam = np.linalg.eigvalsh(C).min()
    if lam < -PSD_TOL * q:
        raise ValueError(f"corr is not positive semi-definite: its most negative eigenvalue is "
                         f"{lam:.6g}")
    return sd[:, None] * C * sd[None, :]


def factor_T(T: Any) -> np.ndarray:  # noqa: N802 - the seed's notation
    """An eigen factor F (q x r) of a symmetric positive semi-definite T: F F' = T.

    T = V diag(lambda) V'; F = V_+ diag(sqrt(lambda_+)) over the r eigenvalues above
    ``RANK_TOL`` times the largest (the rest count as 0), largest first, each column's
    largest-magnitude entry positive (a fixed sign, so draws do not depend on the
    eigen solver's). U = F e then lies exactly (to rounding) in T's column space.
    For a diagonal T, F is diag(sqrt(tau_k^2)) up to column order.

    >>> factor_T([[4.0, 0.0], [0.0, 0.0]])
    array([[2.],
           [0.]])
    """
    T = np.asarray(T, dtype=float)
    if T.ndim != 2 or T.shape[0] != T.shape[1]:
        raise ValueError(f"T must be a square matrix, got shape {T.shape}")
    q = T.shape[0]
    if q == 0:
        return np.zeros((0, 0))
    lam, V = np.linalg.eigh(0.5 * (T + T.T))
    lam, V = lam[::-1], V[:, ::-1]
    top = max(float(lam[0]), 0.0)
    if lam[-1] < -PSD_TOL * max(top, float(np.abs(T).max())):
        raise ValueError(f"T is not positive semi-definite: its most negative eigenvalue is "
                         f"{lam[-1]:.6g}")
    keep = lam > RANK_TOL * top if top > 0 else np.zeros(q, dtype=bool)
    V = V[:, keep]
    if V.shape[1]:
        big = np.argmax(np.abs(V), axis=0)
        V = V * np.sign(V[big, np.arange(V.shape[1])])
    return V * np.sqrt(lam[keep])


def tau0_sq_from_icc(icc: float, sigma2: float) -> float:
    """The intercept variance tau0^2 giving intraclass correlation
    rho_I = tau0^2 / (tau0^2 + sigma^2) in a random intercept model:
    tau0^2 = sigma^2 rho_I / (1 - rho_I).

    >>> tau0_sq_from_icc(0.2, 8.0)
    2.0
    """
    icc = number(icc, "icc")
    sigma2 = number(sigma2, "sigma2")
    if not 0.0 <= icc < 1.0:
        raise ValueError(f"icc must lie in [0, 1), got {icc!r}")
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2!r}")
    return sigma2 * icc / (1.0 - icc)


def covparm_names(random_names: Sequence[str]) -> list[str]:
    """Covariance-parameter names of an unstructured T, as the engine names them: SAS's
    UN order (row-wise lower triangle, ``cov(a,b)`` with the row variable a first),
    then ``sigma2`` (:func:`mlmsim.model.covparms.covparm_names` for one full block).

    >>> covparm_names(["Intercept", "x"])
    ['var(Intercept)', 'cov(x,Intercept)', 'var(x)', 'sigma2']
    """
    rows, cols = np.tril_indices(len(random_names))
    return phi_names(list(random_names), rows, cols)[0]
