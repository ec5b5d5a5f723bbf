"""Minimise the profiled deviance over theta, for one data set or R at once.

The optimiser (docs/math.md section 7) is a quasi-Newton method, compiled and run
replicate by replicate (:mod:`mlmsim.engine.newton`), in the scaled parameterisation of
docs/math.md (7.1): Z's columns divided by their root mean square, so that every setting
below means the same in any units of the data. It starts from a method-of-moments
estimate with a forward-difference Hessian H of the analytic gradient, and
steps p = -|H|^{-1} g, with |H| the Hessian whose eigenvalues are replaced by
their absolute values (floored), so that a saddle is left rather than
approached; a backtracking line search (Armijo) keeps every accepted step a
descent step, and BFGS updates the working Hessian after each step. Where the
BFGS matrix cannot be trusted (a failed line search, or an apparent optimum
with a diagonal element of Lambda near 0, where saddles arise) the Hessian is
recomputed by differences and the decision taken on it.

The bound on Lambda's diagonal. The deviance is unchanged when a column of
Lambda changes sign (T = sigma^2 Lambda Lambda'), so the bound theta_ii >= 0
of lme4 is a symmetry, not a constraint: the optimiser works over all of
R^k and the result is reflected to the canonical form (diagonal >= 0). A
boundary fit (a variance estimated as 0) is then an interior minimum at
theta_ii = 0, which Newton's method reaches without the stalls of a bounded
optimiser at the edge (the reason lme4 needs ``restart_edge``). A theta with
a whole column exactly 0 is a stationary point by symmetry; the start
(Lambda = I, as lme4) and the saddle-avoiding step keep the iterates away
from it unless it is the minimum.

Convergence (:class:`mlmsim.engine.control.StopReason`): the Newton decrement
g'|H|^{-1}g falls below ``tol`` = 1e-12
(deviance units: each parameter within about 1e-6 of its standard error of
the optimum), or the gradient's largest element is below ``gtol``, or, with
a decrement below ROUNDING_FLOOR |d| = 2e-11 |d|, the Newton step no longer lowers the deviance: the
numerical floor of the deviance (roughly 1e-13 of |d|, about
5e-9 for HSB's d = 46,711) is reached. Away from the edge that step is tried
at full length and three halvings, not forty; near the edge only once the
exact Hessian has confirmed the decrement. A step accepted only after more halvings
than that continues from the exact Hessian, not a BFGS update (a direction far too long
near the edge once made a boundary fit crawl through thousands of halvings).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mlmsim.engine import newton
from mlmsim.engine.compiled import compiling_alongside
from mlmsim.engine.control import FitControl, OptSummary, StopReason
from mlmsim.engine.deviance import ThetaMap
from mlmsim.engine.gls import Stats, qtoken
from mlmsim.engine.stats import GroupStats, flat_arrays, kernel_array

__all__ = ["OptResult", "minimize_theta"]

_STARTS = ("moment", "Lambda = I", "given")


@dataclass(frozen=True)
class OptResult:
    """Per replicate (leading dimension R): theta (R, k), deviance (R,), grad (R, k),
    hessian (R, k, k) of the deviance in theta, iterations (R,), converged (R,), and
    ``info`` (R, 6): iterations, stop code (:class:`StopReason`), evaluations, line-search
    halvings, restarts, start (0 moment, 1 Lambda = I, 2 given); ``control`` the
    settings used."""

    theta: np.ndarray
    deviance: np.ndarray
    grad: np.ndarray
    hessian: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    info: np.ndarray
    control: FitControl

    def summary(self, r: int = 0) -> OptSummary:
        """Replicate r's :class:`OptSummary`."""
        it, stop, ev, hv, rs, start = (int(v) for v in self.info[r])
        return OptSummary(StopReason(stop), it, ev, hv, rs, _STARTS[start],
                          self.grad[r].copy(), self.control)

    def select(self, idx: np.ndarray) -> OptResult:
        """Replicates ``idx``."""
        return OptResult(self.theta[idx], self.deviance[idx], self.grad[idx],
                         self.hessian[idx], self.iterations[idx], self.converged[idx],
                         self.info[idx], self.control)


def minimize_theta(
    stats: GroupStats,
    tmap: ThetaMap,
    reml: bool,
    theta0: np.ndarray | None = None,
    control: FitControl | dict | None = None,
    *,
    max_iter: int | None = None,
) -> OptResult:
    """Minimise d(theta) (ML) or d_R(theta) (REML) for each of R replicates.

    ``stats`` carry batch shape (R,) (use R = 1 for one data set); ``theta0`` is
    (R, k), or None for the moment start (:func:`mlmsim.engine.newton.moment_start_one`).
    A profiled likelihood can have more than one local minimum, typically one on the
    boundary (|corr| = 1 or a zero variance) and one inside. So, with the
    moment start, a replicate that ends singular (T-hat of rank < q) or not
    converged is fitted again from lme4's start, Lambda = I, and the lower
    deviance is kept (``control.restart``). ``control`` (:class:`FitControl`, a dict of its
    fields, or None for the defaults) holds the settings; ``max_iter`` overrides its
    iteration limit. Returns theta in canonical form (Lambda's diagonal >= 0) with the
    deviance, gradient and Hessian in theta there.
    (docs/math.md (7.2))
    """
    control = FitControl.coerce(control)
    if max_iter is not None:
        control = replace(control, max_iter=int(max_iter))
    st = Stats(*flat_arrays(stats))
    R, k = st.A.shape[0], tmap.size
    use_start = theta0 is not None
    start = kernel_array(theta0, (R,), (k,)) if use_start else np.zeros((R, k))
    with compiling_alongside(tmap.q):
        theta, dev, g, H, info = newton.minimize_many(
            st, tmap.rows, tmap.cols, bool(reml), start, use_start, int(control.max_iter),
            float(control.tol), float(control.gtol), float(control.max_step),
            float(control.edge), bool(control.restart), qtoken(tmap.q))
    converged = info[:, 1] <= int(StopReason.ROUNDING_FLOOR)
    return OptResult(theta, dev, g, H, info[:, 0].copy(), converged, info, control)
