"""Where two-level models meet the study runner: a method that fits an lme4 formula and
a generator that draws from a ``ModelSpec``.

The runner (:mod:`mlmsim.simstudy`) knows nothing of mixed models: it calls
``method(data)`` and ``generate(condition, rng)`` and records what they return.
:class:`FormulaMethod` fits a formula by ML or REML (batched through
:func:`mlmsim.fit_batch` where it can) and returns :class:`~mlmsim.simstudy.Estimates`
with SEs, intervals (Wald, profile or bootstrap), df and p; :class:`FromSpec` draws each
replicate with :func:`mlmsim.simulate` and gives the study its true values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from mlmsim.engine import kenward_roger
from mlmsim.engine.batch import fit_batch
from mlmsim.engine.compiled import compile_note
from mlmsim.engine.control import FitControl
from mlmsim.engine.fit import fit
from mlmsim.engine.inference import DDF_METHODS, INFORMATION
from mlmsim.generate.simulate import SimBatch, simulate_batch
from mlmsim.model.formula import parse_restricted_formula
from mlmsim.simstudy.conditions import Condition
from mlmsim.simstudy.identity import canonical
from mlmsim.simstudy.records import FLAGS, Estimates, t_inference, z_quantile

__all__ = ["FormulaMethod", "FromSpec", "INTERVALS", "each_alone_if_needed"]

#: the intervals a :class:`FormulaMethod` can record
INTERVALS = ("wald", "profile", "boot")


def each_alone_if_needed(fit_together: Callable[[list], list], datasets: list,
                         failed: Callable[[Exception], Any]) -> list:
    """``fit_together(datasets)``, or, where the batch cannot be fitted together (it
    raises: data sets that give different columns), each data set through
    ``fit_together([d])``, and ``failed(exception)`` for one that cannot be fitted even
    alone: so no data set's result depends on the batch it came in."""
    try:
        return fit_together(datasets)
    except Exception as exc:  # noqa: BLE001 - each data set's own outcome instead
        if len(datasets) == 1:
            return [failed(exc)]
        return [each_alone_if_needed(fit_together, [d], failed)[0] for d in datasets]


class FormulaMethod:
    """Fit ``formula`` by ML or REML with ``mlmsim.fit`` and record ``res.params``.

    Records, per parameter (fixed effects gamma, then the covariance parameters
    ``var(...)``, ``cov(...)``, ``sigma2``): the estimate, its SE, the Wald interval
    estimate +- z_{(1+level)/2} SE, and the fit's flags ``converged``, ``singular``,
    ``hessian_pd``, ``identifiable`` and ``messages``.

    Parameters
    ----------
    formula : an lme4-style formula.
    method : "ML" or "REML", in any case.
    level : the level of the intervals.
    name : the method's name in the records (default: the method, "ML" or "REML").
    batch, batch_size : the batched path (below).
    ddf : None (the fixed effects get Wald z intervals, as the covariance parameters) or
        a denominator-df method of ``FitResult.ddf``: "satterthwaite", "kenward-roger"
        (REML only; the SE is then KR's adjusted one), "containment", "between-within" or
        "residual" (any case). Then each fixed effect's records also
        carry ``df`` and ``p``, the two-sided p-value of t = estimate / SE on df, and the
        interval is estimate +- t_{df, (1+level)/2} SE; where the df cannot be computed
        (NaN), p and the interval are NaN too, never a normal approximation.
    control : None (the engine's defaults), a ``mlmsim.engine.control.FitControl`` or a
        dict of its fields: the optimiser's settings.
    bounded : False for unbounded variance estimates (SAS NOBOUND; ``mlmsim.fit(...,
        bounded=False)``), batched as well.
    intervals : "wald" (the default: estimate +- z SE, or the t interval with ``ddf``),
        "profile" (``FitResult.confint("profile")``: likelihood-ratio intervals) or "boot"
        (parametric-bootstrap percentile intervals from ``nsim`` refits, batched per
        replicate, drawn from the replicate's method stream so a study stays
        reproducible). These record intervals for the fixed effects, variances and
        sigma^2; a covariance's profile and bootstrap intervals are for the correlation,
        which the records' true covariance does not measure, so its interval is NaN.
        Replicates are then fitted one at a time (the bootstrap refits are batched). A
        replicate whose profile or bootstrap fails keeps its estimates with NaN
        intervals and a message saying why.
    nsim : bootstrap refits per replicate (``intervals="boot"``).
    parm : with profile or bootstrap intervals, the parameters that get them (default
        all; the others keep NaN intervals): profiling only the variances costs a third
        of profiling every parameter of a random-slope model.
    information : "observed" (the default: the covariance parameters' SEs and Wald
        intervals from 2 H^{-1}) or "expected" (from the inverse expected information,
        ``FitResult.covparms_table("expected")``: SAS's SCORING=, MLwiN's IGLS), batched
        as well.

    Every setting is checked here, when the study is defined: an unknown keyword is a
    TypeError, a bad value a ValueError (rather than an error in every replicate). The
    formula is read with :func:`mlmsim.model.formula_safe.check_formula`: column names,
    numbers, operators and a few functions (log, exp, sqrt, center, scale, ``I()`` of
    arithmetic, ``C()``), since formulaic evaluates a formula as Python and a study
    definition may come from someone else; anything more is refused in one line.

    With ``batch=True`` (the default) the runner fits the replicates of a chunk together
    through :meth:`fit_batch` (``mlmsim.engine.batch.fit_batch``: all replicates in one
    vectorised pass), in blocks of up to ``batch_size`` replicates. A replicate's result
    does not depend on the block it is fitted in, bit for bit: the batched fit iterates
    each replicate on its own, and a block that cannot be fitted together (its data sets
    give different columns, a factor level missing from one) is fitted as batches of one.
    So ``batch_size`` changes the speed and the memory held, never a record, and is not
    part of the study's identity. ``batch=False`` fits every replicate alone with
    ``mlmsim.fit``: the same numbers to rounding on ordinary data, but not bit for bit
    (:func:`mlmsim.fit` also rescales columns in extreme units, which the batched path does
    not, and where the likelihood is flat, a handful of rows per random effect, the two
    optimiser paths may stop at different points), so ``batch`` is part of the identity.
    """

    takes_rng = False
    takes_sim_batch = True
    """Accepts a one-replicate :class:`mlmsim.generate.simulate.SimBatch` wherever a
    DataFrame goes."""

    def __init__(self, formula: str, method: str = "REML", *, level: float = 0.95,
                 name: str | None = None, batch: bool = True, batch_size: int = 256,
                 ddf: str | None = None, control: Any = None, bounded: bool = True,
                 intervals: str = "wald", nsim: int = 200, information: str = "observed",
                 parm: Sequence[str] | None = None):
        norm = method.upper() if isinstance(method, str) else None
        if norm not in ("ML", "REML"):
            raise ValueError(f"method must be 'ML' or 'REML' (any case), got {method!r}")
        if not 0.0 < level < 1.0:
            raise ValueError("level must lie in (0, 1)")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be at least 1")
        if ddf is not None:
            kind = ddf.lower() if isinstance(ddf, str) else None
            if kind not in DDF_METHODS:
                raise ValueError(
                    "ddf must be None (Wald z) or one of "
                    f"{', '.join(repr(k) for k in DDF_METHODS)} (any case), got {ddf!r}")
            if kind == "kenward-roger" and norm != "REML":
                raise ValueError("ddf='kenward-roger' needs method='REML' (as lmerTest and "
                                 "SAS DDFM=KR)")
            ddf = kind
        if control is not None:
            control = FitControl.coerce(control)

        parse_restricted_formula(formula)  # a study definition runs no code; lme4 form
        self.formula = formula
        self.method = norm
        self.level = float(level)
        self.name = name or norm
        self.batch = bool(batch)
        self.batch_size = int(batch_size)
        if not isinstance(bounded, (bool, np.bool_)):
            raise ValueError(f"bounded must be True or False, got {bounded!r}")
        self.ddf = ddf
        self.control = control
        self.bounded = bool(bounded)
        if intervals not in INTERVALS:
            raise ValueError(f"intervals must be one of {', '.join(map(repr, INTERVALS))}, "
                             f"got {intervals!r}")
        if not (isinstance(nsim, (int, np.integer)) and nsim >= 2):
            raise ValueError(f"nsim must be an integer >= 2, got {nsim!r}")
        if intervals == "profile" and not self.bounded:
            raise ValueError("intervals='profile' needs bounded=True (a profile is over "
                             "variances >= 0); use intervals='boot' or 'wald' for unbounded fits")
        if parm is not None and intervals == "wald":
            raise ValueError("parm goes with intervals='profile' or 'boot'")
        if isinstance(parm, str):
            parm = [parm]
        if parm is not None and (not parm or len(set(parm)) != len(parm)):
            raise ValueError(f"parm must name each parameter once, got {parm!r}")
        self.parm = None if parm is None else [str(p) for p in parm]
        self.intervals = intervals
        self.nsim = int(nsim)

        if information not in INFORMATION:
            raise ValueError(f"information must be one of {', '.join(INFORMATION)}, got "
                             f"{information!r}")
        self.information = information
        self.takes_rng = intervals == "boot"

    def __call__(self, data: Any, rng: np.random.Generator | None = None) -> Estimates:
        if isinstance(data, SimBatch):
            data = data.frame(0)
        res = fit(self.formula, data, method=self.method, **self._fit_options())
        est = Estimates.from_fit(res, self.level, ddf=self.ddf, information=self.information)
        if self.intervals == "wald":
            return est
        return self._likelihood_intervals(res, est, rng)

    def _likelihood_intervals(self, res: Any, est: Estimates, rng) -> Estimates:
        """``est`` with profile or bootstrap intervals (NaN for covariances, and for all
        where they could not be computed, with a message)."""
        names = list(est.estimate.index)
        unknown = [p for p in self.parm or () if p not in names]
        if unknown:  # a setting, not a replicate's failure: the replicate records the error
            raise ValueError(f"parm names {unknown[0]!r}, not a parameter of {self.formula!r}: "
                             f"{names}")
        lo = pd.Series(np.nan, index=names)
        hi = pd.Series(np.nan, index=names)
        messages = tuple(est.messages)
        try:
            if self.intervals == "profile":
                ci = res.confint("profile", level=self.level, parm=self.parm)
            else:
                ci = res.bootstrap(self.nsim, rng, progress=False).confint(self.level)
                ci = ci if self.parm is None else ci.loc[self.parm]
            keep = ci.index[ci["scale"] != "correlation"]
            lo[keep], hi[keep] = ci.loc[keep, "lower"], ci.loc[keep, "upper"]
        except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError) as e:
            messages += (f"{self.intervals} intervals failed: {type(e).__name__}: {e}",)
        return replace(est, ci_lower=lo, ci_upper=hi, messages=messages)

    @property
    def fit_batch(self) -> Callable[[list], list] | None:
        """``fit_batch(datasets) -> list of Estimates``, or None when batching is off
        (and with profile or bootstrap intervals)."""
        if not self.batch or self.intervals != "wald":
            return None
        return self._fit_batch

    def _fit_options(self) -> dict:
        """control and bounded, each only when set (the engine's defaults otherwise)."""
        out = {} if self.control is None else {"control": self.control}
        if not self.bounded:
            out["bounded"] = False
        return out

    def _fit_batch(self, datasets: list) -> list[Estimates | Exception]:
        """One result per data set: its Estimates, or the exception that says why it could
        not be fitted (as ``mlmsim.fit`` would raise it). A block that cannot be fitted
        together is fitted one data set at a time, through the same batched path, so that
        no result depends on the block."""
        return each_alone_if_needed(self._fit_together, datasets, lambda exc: exc)

    def _fit_together(self, datasets: list) -> list[Estimates | Exception]:
        res = fit_batch(self.formula, datasets, method=self.method, **self._fit_options())
        names = list(res.param_names)
        z = z_quantile(self.level)
        params, se = np.asarray(res.params, dtype=float), np.asarray(res.se, dtype=float)
        if self.information == "expected":
            se[:, len(res.fixed_names):] = _expected_se(res)
        with np.errstate(invalid="ignore"):
            lo, hi = params - z * se, params + z * se
        df = pv = None
        if self.ddf is not None:
            k = len(res.fixed_names)
            df = np.full(params.shape, np.nan)
            pv = np.full(params.shape, np.nan)
            se[:, :k], df[:, :k] = res.fixef_se_df(self.ddf)
            lo[:, :k], hi[:, :k], pv[:, :k] = t_inference(params[:, :k], se[:, :k],
                                                           df[:, :k], self.level)
        flags = [np.asarray(getattr(res, f), dtype=bool) for f in FLAGS]

        def row(a: np.ndarray | None, r: int) -> dict | None:
            return None if a is None else dict(zip(names, a[r].tolist(), strict=True))

        return [
            ValueError(res.errors[r]) if res.errors and res.errors[r] is not None else
            Estimates(row(params, r), se=row(se, r), ci_lower=row(lo, r),
                      ci_upper=row(hi, r), df=row(df, r), p=row(pv, r),
                      converged=bool(flags[0][r]), singular=bool(flags[1][r]),
                      hessian_pd=bool(flags[2][r]), identifiable=bool(flags[3][r]),
                      messages=tuple(res.messages[r]), evaluations=int(res.evaluations[r]))
            for r in range(len(datasets))
        ]

    def run_note(self) -> str | None:
        """The line a run shows before its first replicate: on a fresh install, that numba
        compiles the fitting kernels first (:func:`mlmsim.engine.compiled.compile_note`)."""
        return compile_note()

    def descriptor(self) -> dict:
        # "options" is what **options used to be (now always empty); ddf and control are
        # added only when set, so that a study without them keeps its definition hash;
        # batch_size is not part of it (no record depends on it).
        out = {"formula": self.formula, "method": self.method, "level": self.level,
               "options": canonical({}), "batch": self.fit_batch is not None}
        if self.ddf is not None:
            out["ddf"] = self.ddf
        if self.control is not None:
            out["control"] = canonical(self.control)
        if not self.bounded:
            out["bounded"] = False
        if self.information != "observed":
            out["information"] = self.information
        if self.intervals != "wald":
            out["intervals"] = self.intervals
            if self.intervals == "boot":
                out["nsim"] = self.nsim
            if self.parm is not None:
                out["parm"] = list(self.parm)
        return out

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in (("ddf", self.ddf),
                                                     ("control", self.control),
                                                     ("bounded", None if self.bounded
                                                      else False),
                                                     ("intervals", None
                                                      if self.intervals == "wald"
                                                      else self.intervals))
                        if v is not None)
        return f"FormulaMethod({self.formula!r}, method={self.method!r}{extra})"


def _expected_se(res: Any) -> np.ndarray:
    """SEs (R, m) of the covariance parameters of a batch from the inverse expected
    information (docs/math.md (6.6)), NaN where it is not positive definite."""

    t = kenward_roger.info_terms(res.stats, res.cov_structure, res.estimates.phi, res.reml)
    W = kenward_roger.expected_acov(t.HE)
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.einsum("rii->ri", W))


class FromSpec:
    """Data generation from a model specification: :func:`mlmsim.simulate` per replicate.

    ``FromSpec(spec, n_groups="n_groups", group_size="group_size")`` is a ``generate``
    for :class:`Study`: ``spec`` is a ``ModelSpec`` or a callable ``spec(condition) ->
    ModelSpec``; ``n_groups`` and ``group_size`` are numbers or names of condition
    variables. Each replicate is ``simulate(spec, n_groups, group_size, rng=rng)``, and
    the study's true values default to ``spec.truth.params`` of each condition.
    """

    def __init__(self, spec: Any, n_groups: int | str = "n_groups",
                 group_size: int | str | None = None):
        self.spec = spec
        self.n_groups = n_groups
        self.group_size = group_size
        self._specs: dict[int, Any] = {}

    def _value(self, value: Any, condition: Condition) -> Any:
        return condition[value] if isinstance(value, str) else value

    def model(self, condition: Condition) -> Any:
        """The ModelSpec of a condition (built once per condition and process)."""
        key = getattr(condition, "index", None)
        if key is not None and key in self._specs:
            return self._specs[key]
        spec = self.spec(condition) if callable(self.spec) else self.spec
        if key is not None:
            self._specs[key] = spec
        return spec

    def __call__(self, condition: Condition, rng: np.random.Generator) -> Any:
        return self.draw(condition, rng).frame(0)

    def draw(self, condition: Condition, rng: np.random.Generator) -> Any:
        """The replicate as a one-replicate :class:`mlmsim.generate.simulate.SimBatch` (arrays, no
        DataFrame): the same draws as ``self(condition, rng)``, whose DataFrame is its
        ``frame(0)``. The runner hands these to methods that take them
        (``takes_sim_batch``), which skips building a DataFrame per replicate."""

        return simulate_batch(self.model(condition), 1, self._value(self.n_groups, condition),
                              group_size=self._value(self.group_size, condition), rng=rng)

    def truth(self, condition: Condition) -> pd.Series:
        """True parameter values of a condition: ``spec.truth.params``."""
        return self.model(condition).truth.params

    def descriptor(self) -> dict:
        return {"spec": canonical(self.spec), "n_groups": self.n_groups,
                "group_size": self.group_size}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_specs": {}}
