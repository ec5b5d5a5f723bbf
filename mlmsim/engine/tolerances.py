"""Every numerical tolerance of the engine, in one place, each with its reason.

Decisions that must not depend on the units of the data (docs/math.md, section 9) are
taken on dimensionless quantities: the Hessian scaled by its diagonal, T relative to
sigma^2 and to the spread of Z, the optimiser's theta for Z scaled to unit root mean
square. The constants below are therefore pure numbers. The compiled kernels read them
as module globals (numba freezes them at compile time).
"""

from __future__ import annotations

__all__ = [
    "MAX_ITER", "DECREMENT_TOL", "GRADIENT_TOL", "MAX_STEP", "EDGE", "ROUNDING_FLOOR",
    "FD_STEP", "CURVATURE_FLOOR", "SADDLE", "ARMIJO", "BFGS_CURVATURE", "MAX_HALVINGS",
    "FLOOR_HALVINGS", "ROUNDING_NOISE", "RESTART_MARGIN", "PROBES", "FULL_RESTART_GROUPS",
    "SINGULAR",
    "HESSIAN_PD", "GRAD_CHECK",
    "START_DET", "START_CLIP", "DEPENDENT_SCREEN", "DEPENDENT_EIG", "RANK_TOL",
]

# ---- the optimiser (defaults of FitControl) --------------------------------------------
MAX_ITER = 300
"""Quasi-Newton steps per start. Fits of two-level models take 5-30; 300 only stops a
run that is going nowhere."""

DECREMENT_TOL = 1e-12
"""Newton decrement g'|H|^{-1}g (deviance units) at convergence: every parameter within
about 1e-6 of its standard error of the optimum. Affine invariant, so the same in any
units of the data."""

GRADIENT_TOL = 1e-8
"""Largest gradient element (deviance per unit of scaled theta) at convergence."""

MAX_STEP = 2.0
"""Largest change of one scaled theta element per step (scaled theta is of order 1)."""

EDGE = 1e-2
"""A diagonal element of the scaled Lambda below this is near the edge theta_ii = 0,
where saddles arise: convergence is then judged on the exact Hessian, not on BFGS."""

ROUNDING_FLOOR = 2e-11
"""A decrement below this times max(|d|, 1), with no step lowering the deviance, is the
deviance's rounding floor: convergence. The deviance's rounding noise is about 1e-13 of
|d| (5e-9 for HSB's d = 46,711, where this gives 1e-6); relative to |d|, so that a small
deviance is not declared converged on a decrement its noise cannot explain."""

ROUNDING_NOISE = 1e-13
"""The deviance's rounding noise relative to |d|. A decrement below this times
max(|d|, 1) predicts a decrease that no evaluation can tell from noise (at J = 10^6
groups of 3, ML: |d| = 10^7, the gradient's own rounding is 0.1 and the decrement
1e-8): on the exact Hessian, the optimiser takes that last Newton step when it does not
raise the deviance, and stops (at the rounding floor) instead of line-searching on
noise."""

FLOOR_HALVINGS = 3
"""Line-search halvings at the rounding floor (a Newton step there is taken whole or not
at all; halving it further spends evaluations on noise)."""

MAX_HALVINGS = 40
"""Line-search halvings elsewhere."""

FD_STEP = 1e-6
"""Forward-difference step of the Hessian in theta: h_i = FD_STEP (1 + |theta_i|); about
half the digits of the analytic gradient."""

CURVATURE_FLOOR = 1e-8
"""|H|'s eigenvalues are floored at this times the largest, so a step stays bounded."""

SADDLE = -1e-5
"""An exact Hessian whose smallest eigenvalue is below this times the largest absolute
one marks a saddle: the optimiser steps along the negative curvature."""

ARMIJO = 1e-4
"""Sufficient decrease of the Armijo line search."""

BFGS_CURVATURE = 1e-10
"""A BFGS update is skipped unless s'y exceeds this times sqrt(s'Bs y'y)."""

RESTART_MARGIN = 1e-10
"""Relative margin by which the restart from Lambda = I must beat the first run."""

PROBES = (0.25, 0.5, 1.0)
"""Where a converged boundary fit of at least FULL_RESTART_GROUPS groups looks toward
Lambda = I before refitting from there: theta + a (theta_I - theta) for these a (a
deviance evaluation each). A second basin of the deviance toward lme4's start shows as a
point below the boundary optimum on that segment."""

FULL_RESTART_GROUPS = 1000
"""Below this many groups a boundary fit is always refitted from Lambda = I. Second
basins of the profiled deviance are a small-sample effect (the seeded cases of the test
suite that have one: 6 to 24 groups; one of them lies off the segment that PROBES
sample), and there a second fit costs a few milliseconds. With more groups the second fit
doubles the cost of the fits that end on the boundary, which is common with large data,
so the segment is probed first."""

# ---- the flags ----------------------------------------------------------------------
SINGULAR = 1e-8
"""T-hat is singular (a boundary fit) when the smallest eigenvalue of
T (Z'Z / N) / sigma^2 is below this: invariant to the units of y and to any linear
recoding of the random-effect columns (rescaling or shifting a predictor). For a random
intercept this is tau^2 / sigma^2 < 1e-8, i.e. lme4's isSingular rule theta < 1e-4."""

HESSIAN_PD = 1e-8
"""H is positive definite when the smallest eigenvalue of D^{-1/2} H D^{-1/2} (D its
diagonal, the correlation form: invariant to the units of every parameter) exceeds
this; a diagonal element <= 0 is not positive definite."""

GRAD_CHECK = 2e-3
"""lme4's check.conv.grad tolerance on the gradient scaled by the Hessian in theta
(H^{-1} g: a Newton step, invariant to the scale of theta)."""

# ---- the start, identifiability and rank ----------------------------------------------
START_DET = 1e-8
"""A group enters the moment start when its correlation-scaled A_j has determinant above
this (its least-squares coefficients exist)."""

START_CLIP = 1e2
"""The moment start's T0 / sigma0^2 eigenvalues are clipped to [1 / START_CLIP,
START_CLIP] (a start, not an estimate)."""

DEPENDENT_SCREEN = 1e-6
"""Screen: a group's correlation-scaled A_j with determinant below this may be singular."""

DEPENDENT_EIG = 1e-9
"""Random-effect columns are dependent in a group when the correlation-scaled A_j has an
eigenvalue below this times its largest."""

RANK_TOL = 1e-9
"""Rank of a PSD matrix (containment df): eigenvalues above this times the largest."""
