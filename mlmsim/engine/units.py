"""Units near 1 for the fit: exact power-of-2 rescaling of y, X and Z, and the map back.

A model does not depend on the units of its data, but floating point does: with a
predictor in units of 1e-160 the sums x'x underflow, with y in units of 1e100 the Hessian
in (T, sigma^2) underflows. :func:`unit_scale` picks, for y and for each column of X and
Z, a power of 2

    k = 2^(1 - e),  e the binary exponent of the column's largest |value|

(for y: of y - mean(y)), which brings that value into [1, 2), where it lies outside
[2^-24, 2^24]; inside, k = 1, so ordinary data are fitted exactly as given. Scaling by a
power of 2 is exact in floating point. The fit of y_s = k_y y on X_s = X diag(k_x),
Z_s = Z diag(k_z) has the estimates (docs/math.md (1.1))

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

from mlmsim.engine.stats import Centering
from mlmsim.terms import column_max_abs

__all__ = ["UnitScale", "unit_scale"]

WIDE = 24
"""Columns whose largest |value| lies in [2^-WIDE, 2^WIDE] are left in their units."""


def _power(big: np.ndarray) -> np.ndarray:
    """2^(1 - e) for the binary exponent e of ``big`` (1 where ``big`` is 0, not finite,
    or within [2^-WIDE, 2^WIDE])."""
    big = np.asarray(big, dtype=float)
    ok = np.isfinite(big) & (big > 0)
    e = np.frexp(np.where(ok, big, 1.0))[1]
    far = ok & ((e - 1 > WIDE) | (e - 1 < -WIDE))
    return np.ldexp(1.0, np.where(far, 1 - e, 0))


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

    def centering(self, c: Centering) -> Centering:
        """The map from the centred fit's gamma to the data's: diag(k_x / k_y) after ``c``."""
        d = self.x / self.y
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
        if self.identity:
            return dev_s
        p = self.x.shape[0]
        if reml:
            return (dev_s - 2.0 * (N - p) * math.log(self.y)
                    - 2.0 * float(np.sum(np.log(self.x))))
        return dev_s - 2.0 * N * math.log(self.y)


    def check_finite(self, design, estimates: dict) -> None:
        """A ValueError where an estimate, finite in the fit's units, is not a finite
        non-zero number in the data's (a variance of 1e-400 has no floating-point value)."""
        for what, v in estimates.items():
            v = np.asarray(v, dtype=float)
            if not np.all(np.isfinite(v)) or (what != "the fixed effects" and np.any(
                    (v != 0) & (np.abs(v) < np.finfo(float).tiny))):
                far = [n for n, k in zip(design.fixed_names, self.x, strict=True) if k != 1]
                far += [n for n, k in zip(design.random_names, self.z, strict=True)
                        if k != 1 and n not in far]
                if self.y != 1:
                    far.insert(0, design.formula.response)
                raise ValueError(
                    f"{what} in the data's units lie outside the floating-point range; "
                    f"rescale {', '.join(map(repr, far))} (their values are near "
                    "1e-150 or 1e150 or beyond)")


def unit_scale(design) -> UnitScale:
    """The :class:`UnitScale` for a design's y, X and Z (module docstring)."""
    y = np.asarray(design.y, dtype=float)
    bx, bz = column_max_abs(design.X), column_max_abs(design.Z)
    by = float(np.max(np.abs(y - y.mean())))
    lo, hi = min(bx.min(), bz.min(), by), max(bx.max(), bz.max(), by)
    if lo >= 2.0 ** -WIDE and hi < 2.0 ** (WIDE + 1):  # the common case: units near 1
        return UnitScale(1.0, np.ones(bx.shape[0]), np.ones(bz.shape[0]), True)
    ky = float(_power(by))
    if not 2.0 ** -510 < ky < 2.0 ** 510:
        raise ValueError(
            f"the response {design.formula.response!r} varies on a scale near "
            f"{1.0 / ky:.0e}, where its variances (its square) lie outside the floating-point "
            "range; rescale it")
    kx, kz = _power(bx), _power(bz)
    return UnitScale(ky, kx, kz, ky == 1.0 and bool(np.all(kx == 1.0) and np.all(kz == 1.0)))
