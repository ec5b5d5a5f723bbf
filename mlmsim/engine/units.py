"""Units near 1 for the fit: exact power-of-2 rescaling of y, X and Z, and the map back.

A model does not depend on the units of its data, but floating point does: with a
predictor in units of 1e-160 the sums x'x underflow, with y in units of 1e100 the Hessian
in (T, sigma^2) underflows. :func:`unit_scale` picks, for y and for each column of X and
Z, a power of 2

    k = 2^(1 - e),  e the binary exponent of the column's largest |value|

(for y: of y - mean(y)), which brings that value into [1, 2), where it lies outside
[2^-24, 2^25) (:func:`mlmsim.model.terms.unit_powers`); inside, k = 1, so ordinary data are
fitted exactly as given. Scaling by a power of 2 is exact in floating point. The fit of
y_s = k_y y on X_s = X diag(k_x), Z_s = Z diag(k_z) has the estimates (docs/math.md (1.1))

    gamma = diag(k_x) gamma_s / k_y,       U_j = diag(k_z) U_sj / k_y,
    T = diag(k_z) T_s diag(k_z) / k_y^2,   sigma^2 = sigma_s^2 / k_y^2,
    Lambda = diag(k_z) Lambda_s  (theta_i = k_z[row_i] theta_si),

a covariance parameter phi_i = T_ab (or sigma^2) scales by c_i = k_z,a k_z,b / k_y^2 (or
1 / k_y^2), its Hessian by 1 / (c_i c_l), and the criterion shifts by the log-Jacobian

    -2 log L = -2 log L_s - 2 N log k_y                                    (ML)
    -2 log L_R = -2 log L_Rs - 2 (N - p) log k_y - 2 sum_i log k_x,i      (REML).

t values, df, p-values and the diagnostics are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from numba import njit

from mlmsim.engine.stats import Centering
from mlmsim.model.terms import UNITS_NEAR_ONE, max_abs_by_column, unit_powers

__all__ = ["UnitScale", "unit_scale"]

@dataclass(frozen=True)
class UnitScale:
    """The powers of 2 the fit's data were multiplied by: ``y`` (a float), ``x`` (p,) for
    the columns of X and ``z`` (q,) for those of Z (module docstring)."""

    y: float
    x: np.ndarray
    z: np.ndarray
    identity: bool = False
    """True when every factor is 1 (the data are fitted as given)."""

    def design(self, design):
        """The design with y, X and Z in the fit's units."""
        return replace(design, y=design.y * self.y, X=design.X * self.x, Z=design.Z * self.z)

    @property
    def gamma(self) -> np.ndarray:
        """D = k_x / k_y (p,): gamma = D gamma_s."""
        return self.x / self.y

    def centering(self, c: Centering) -> Centering:
        """The map from the centred fit's gamma to the data's: diag(D) after ``c``."""
        d = self.gamma
        return Centering(d[:, None] * c.L, d * c.offset)

    def theta(self, theta_s: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """theta_i = k_z[row_i] theta_si."""
        return theta_s * self.z[rows]

    def theta_fit(self, theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`theta`: the fit's theta from the data's."""
        return theta / self.z[rows]

    def covparms(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """c (m,): phi = c phi_s for the covariance parameters T[rows, cols] and sigma^2."""
        return np.append(self.z[rows] * self.z[cols], 1.0) / self.y ** 2

    def deviance(self, dev_s: float, N: float, reml: bool) -> float:
        """The criterion in the data's units from that of the fit (module docstring)."""
        p = self.x.shape[0]
        if reml:
            return (dev_s - 2.0 * (N - p) * math.log(self.y)
                    - 2.0 * float(np.sum(np.log(self.x))))
        return dev_s - 2.0 * N * math.log(self.y)


    def check_finite(self, design, variances: dict, gamma: np.ndarray) -> None:
        """A ValueError where an estimate, finite in the fit's units, has no floating-point
        value in the data's: a variance (``variances``, by name) or a fixed effect beyond
        the largest float, or a non-zero variance below the smallest normal one."""
        tiny = np.finfo(float).tiny
        bad = [what for what, v in variances.items()
               if not np.all(np.isfinite(v)) or np.any((v != 0) & (np.abs(v) < tiny))]
        if not np.all(np.isfinite(gamma)):
            bad.append("the fixed effects")
        if not bad:
            return
        far = [n for n, k in zip(design.fixed_names, self.x, strict=True) if k != 1]
        far += [n for n, k in zip(design.random_names, self.z, strict=True)
                if k != 1 and n not in far]
        if self.y != 1:
            far.insert(0, design.formula.response)
        raise ValueError(
            f"{bad[0]} in the data's units lie outside the floating-point range; rescale "
            f"{', '.join(map(repr, far))} (their values are near 1e-150 or 1e150 or beyond)")


@njit(cache=True)
def _extremes(y, X, Z):
    """(max |y_i - mean(y)|, max |X_ic| and max |Z_ic| per column, and whether all of them
    lie in [2^-UNITS_NEAR_ONE, 2^(UNITS_NEAR_ONE + 1))), in one compiled pass (a NaN
    lies in no range)."""
    lo, hi = 2.0 ** -UNITS_NEAR_ONE, 2.0 ** (UNITS_NEAR_ONE + 1)
    m = np.mean(y)  # max |y_i - m| (subtraction is monotone, so this is exact)
    by = max(np.max(y) - m, m - np.min(y))
    bx, bz = max_abs_by_column(X), max_abs_by_column(Z)
    near = lo <= by < hi
    for b in bx:
        near = near and lo <= b < hi
    for b in bz:
        near = near and lo <= b < hi
    return by, bx, bz, near


def unit_scale(design) -> UnitScale:
    """The :class:`UnitScale` for a design's y, X and Z (module docstring)."""
    by, bx, bz, near = _extremes(np.asarray(design.y, dtype=float), design.X, design.Z)
    if near:  # the common case
        return UnitScale(1.0, np.ones(bx.shape[0]), np.ones(bz.shape[0]), True)
    by = float(by)
    ky = float(unit_powers(by))
    if not 2.0 ** -510 < ky < 2.0 ** 510:
        raise ValueError(
            f"the response {design.formula.response!r} varies on a scale near "
            f"{1.0 / ky:.0e}, where its variances (its square) lie outside the floating-point "
            "range; rescale it")
    kx, kz = unit_powers(bx), unit_powers(bz)
    return UnitScale(ky, kx, kz, ky == 1.0 and bool(np.all(kx == 1.0) and np.all(kz == 1.0)))
