"""Optimiser settings (:class:`FitControl`) and what the optimiser reports (:class:`OptSummary`).

As lme4's ``lmerControl`` and MixedModels.jl's ``OptSummary``: the settings a user may
change, checked when built, and a record of how a fit ended (why the optimiser stopped,
how many evaluations it spent, the gradient where it stopped). The numbers behind the
defaults, with their reasons, are in :mod:`mlmsim.engine.tolerances`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields

import numpy as np

from mlmsim.engine import tolerances as tols

__all__ = ["FitControl", "StopReason", "OptSummary"]


@dataclass(frozen=True)
class FitControl:
    """Settings of the optimiser of the profiled deviance (docs/math.md, section 7).

    max_iter : int
        Largest number of quasi-Newton steps per start.
    tol : float
        Convergence when the Newton decrement g'|H|^{-1}g falls below this (deviance units).
    gtol : float
        ... or when the largest element of the gradient in the optimiser's (scaled)
        parameters falls below this.
    max_step : float
        Largest change of one scaled theta element in one step.
    edge : float
        A diagonal element of the scaled Lambda below this is "near the edge": convergence
        there is judged on the exact (finite-difference) Hessian, never on BFGS.
    restart : bool
        With the moment start, refit a fit that ends singular or not converged from
        lme4's start Lambda = I and keep the lower deviance.
    """

    max_iter: int = tols.MAX_ITER
    tol: float = tols.DECREMENT_TOL
    gtol: float = tols.GRADIENT_TOL
    max_step: float = tols.MAX_STEP
    edge: float = tols.EDGE
    restart: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)):
            raise ValueError(f"FitControl: max_iter must be an integer, got {self.max_iter!r}")
        if self.max_iter < 1:
            raise ValueError(f"FitControl: max_iter must be at least 1, got {self.max_iter}")
        for name in ("tol", "gtol", "max_step", "edge"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
                raise ValueError(f"FitControl: {name} must be a number, got {v!r}")
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"FitControl: {name} must be positive and finite, got {v!r}")
        if not isinstance(self.restart, (bool, np.bool_)):
            raise ValueError(f"FitControl: restart must be True or False, got {self.restart!r}")

    @classmethod
    def coerce(cls, control: FitControl | dict | None) -> FitControl:
        """A FitControl from None (the defaults), a FitControl, or a dict of its fields
        (an unknown key is a ValueError naming the valid ones)."""
        if control is None:
            return _DEFAULT
        if isinstance(control, cls):
            return control
        if isinstance(control, dict):
            known = {f.name for f in fields(cls)}
            bad = sorted(set(control) - known)
            if bad:
                raise ValueError(f"unknown FitControl setting(s) {', '.join(bad)}; valid: "
                                 f"{', '.join(sorted(known))}")
            return cls(**control)
        raise ValueError(f"control must be a FitControl or a dict, got {type(control).__name__}")


_DEFAULT = FitControl()  # frozen, so one instance serves every fit


class StopReason(enum.IntEnum):
    """Why the optimiser stopped (the codes the compiled optimiser returns)."""

    DECREMENT = 0
    """The Newton decrement fell below ``tol``: converged."""
    GRADIENT = 1
    """The largest gradient element fell below ``gtol``: converged."""
    ROUNDING_FLOOR = 2
    """No step lowered the deviance with a decrement below the floor (1e-6): the
    deviance's rounding noise was reached: converged."""
    MAX_ITER = 3
    """The iteration limit was reached: not converged."""
    LINE_SEARCH = 4
    """No descent step was found with the exact Hessian and a decrement above the floor:
    not converged."""
    NOT_FINITE = 5
    """The deviance was not finite at the start: not converged."""

    @property
    def converged(self) -> bool:
        return self in (StopReason.DECREMENT, StopReason.GRADIENT, StopReason.ROUNDING_FLOOR)


@dataclass(frozen=True)
class OptSummary:
    """How one fit's optimisation went (MixedModels.jl's ``OptSummary``).

    stop : StopReason
        Why the kept run stopped.
    iterations, evaluations, halvings : int
        Quasi-Newton steps, deviance (and gradient) evaluations and line-search halvings,
        summed over every run of this fit (restarts included).
    restarts : int
        Runs after the first (0 or 1: the refit from Lambda = I).
    start : str
        Where the kept run started: "moment", "Lambda = I" or "given".
    final_gradient : np.ndarray
        The gradient of the deviance in theta at the estimate.
    control : FitControl
        The settings used.
    """

    stop: StopReason
    iterations: int
    evaluations: int
    halvings: int
    restarts: int
    start: str
    final_gradient: np.ndarray
    control: FitControl

    @property
    def converged(self) -> bool:
        return self.stop.converged

    def __str__(self) -> str:
        return (f"stopped: {self.stop.name.lower().replace('_', ' ')}; {self.iterations} "
                f"iterations, {self.evaluations} evaluations, {self.halvings} halvings, "
                f"{self.restarts} restart(s); start {self.start}")
