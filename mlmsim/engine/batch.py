"""Fit many replicates of the same model at once.

A method study fits one formula to thousands of simulated data sets. Their
designs stack into arrays with a leading replicate axis (y (R, N), X (R, N, p),
Z (R, N, q)), and every stage runs on the whole stack in compiled loops
(:mod:`mlmsim.engine.kernels`): the per-group statistics A (R, J, q, q),
B (R, J, q, p), ... in one pass over the rows; the optimiser, replicate after
replicate with no Python in between; and the read-out of estimates, the
Hessian in phi and the flags. Replicates with fewer groups are padded with
empty groups, which contribute nothing.

Each replicate runs the very code of a single fit (the same start, iterations
and stopping rule), so its result equals the single fit's to rounding. A
replicate that does not converge in the batch is refitted alone from lme4's
start (Lambda = I) with a larger iteration limit, and its messages say so.

:meth:`BatchFit.ddf` gives the denominator degrees of freedom of the fixed
effects' t tests for every replicate, as :meth:`FitResult.ddf
<mlmsim.engine.result.FitResult.ddf>` gives them for one fit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from mlmsim.engine import inference, kenward_roger
from mlmsim.engine.control import FitControl, StopReason
from mlmsim.engine.deviance import ThetaMap, method_name
from mlmsim.engine.estimates import Estimates, estimates, messages
from mlmsim.engine.inference import (
    DDF_METHODS,
    KR_NEEDS_REML,
    columns_varying_within,
)
from mlmsim.engine.optimize import OptResult, minimize_theta
from mlmsim.engine.stats import (
    Centering,
    GroupStats,
    centred_group_stats,
    residual_check,
    stack_stats,
)
from mlmsim.engine.unbounded import unbounded_estimates
from mlmsim.generate.simulate import SimBatch
from mlmsim.model.covparms import covparm_names
from mlmsim.model.formula import StackedDesign, clearly_full_rank, model_design, stacked_design
from mlmsim.model.layout import DesignLayout
from mlmsim.model.terms import term_products

__all__ = ["BatchFit", "fit_batch", "fit_arrays", "fit_stats"]


def _per_replicate(name: str, doc: str) -> property:
    """A read-only attribute of :class:`BatchFit` that is the Estimates field ``name``."""
    return property(lambda self: getattr(self.estimates, name), doc=doc)


@dataclass(frozen=True)
class BatchFit:
    """Results of R fits of one model (arrays with leading dimension R).

    ``params`` (R, p + m): fixed effects then covariance parameters (names in
    ``param_names``, as ``FitResult.params``); ``se`` the matching standard
    errors (fixed effects: sqrt(diag vcov); covariance parameters: from 2 H^{-1},
    NaN where H is not positive definite). ``estimates`` holds everything else
    (T, sigma2, theta, Hessians, flags); ``messages`` one tuple per replicate;
    ``errors`` None, or why a replicate could not be fitted (its estimates are NaN).

    For :meth:`ddf` it keeps what a ``FitResult`` keeps for its own: the statistics
    ``stats`` the replicates were fitted from (batch axis R; of the centred data when
    ``fixed_map`` is given), the ``theta_map`` and ``cov_structure`` of the model,
    ``fixed_map`` (R, p, p), the map of the fixed effects of ``stats`` to the reported
    ones (:class:`~mlmsim.engine.stats.Centering`'s ``L``; None: the identity), and
    ``varies_within``, a callable giving (R, p) whether each fixed column varies
    within groups (computed on request from the data the batch was fitted from, to which
    it keeps a reference; None when fitted from statistics alone).
    """

    method: str
    fixed_names: tuple[str, ...]
    random_names: tuple[str, ...]
    covparm_names: tuple[str, ...]
    estimates: Estimates
    messages: tuple[tuple[str, ...], ...]
    refitted: np.ndarray
    errors: tuple[str | None, ...] = ()
    stats: GroupStats | None = field(default=None, repr=False, compare=False)
    theta_map: ThetaMap | None = field(default=None, repr=False, compare=False)
    cov_structure: inference.CovStructure | None = field(default=None, repr=False,
                                                         compare=False)
    fixed_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    varies_within: Callable[[], np.ndarray] | None = field(default=None, repr=False,
                                                           compare=False)
    bounded: bool = True
    layout: DesignLayout | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.estimates.beta.shape[0])

    @property
    def reml(self) -> bool:
        return self.method == "REML"

    def ddf(self, kind: str = "satterthwaite") -> np.ndarray:
        """Denominator degrees of freedom (R, p) of each fixed effect in each replicate,
        as :meth:`FitResult.ddf <mlmsim.engine.result.FitResult.ddf>` computes them for
        a single fit: ``kind`` is "satterthwaite" (lmerTest), "containment" (SAS's
        default), "between-within" (SAS DDFM=BW) or "residual" (N - p), in any case.
        NaN for a replicate that could not be fitted, and where the df cannot be
        computed (Satterthwaite's when the Hessian in the covariance parameters is not
        positive definite)."""
        kind = _ddf_kind(kind)
        if self.stats is None:
            raise ValueError("this BatchFit carries no statistics; degrees of freedom need "
                             "a fit by fit_stats, fit_arrays or fit_batch")
        R, p = self.n, len(self.fixed_names)
        fitted = np.array([e is None for e in self.errors], dtype=bool) if self.errors \
            else np.ones(R, dtype=bool)
        stats = self.stats
        out = np.full((R, p), np.nan)
        if kind == "residual":
            out[:] = (np.asarray(stats.N, dtype=float).reshape(R) - p)[:, None]
        elif kind == "satterthwaite":
            est = self.estimates
            out = np.asarray(inference.satterthwaite_many(
                stats, self.theta_map, self.cov_structure, est.theta, est.sigma2, self.reml,
                self.fixed_map, None if self.bounded else est.phi),
                dtype=float).reshape(R, p).copy()
        elif kind == "kenward-roger":
            out = self._kr()[3].copy()
        elif kind == "containment":
            layout = self.layout or DesignLayout.from_names(self.fixed_names,
                                                            self.random_names)
            fv, rv = layout.fixed_variables(), layout.random_variables()
            for r in np.flatnonzero(fitted):
                out[r] = inference.containment_df(_one(stats, r), fv, rv, [])
        else:
            if self.varies_within is None:
                raise ValueError("between-within df need the fixed design (which columns "
                                 "vary within groups); fit with fit_arrays or fit_batch")
            varies = np.asarray(self.varies_within(), dtype=bool).reshape(R, p)
            for r in np.flatnonzero(fitted):
                out[r] = inference.between_within_df(_one(stats, r), varies[r])
        out[~fitted] = np.nan
        return out

    def _kr(self) -> tuple[np.ndarray, ...]:
        """Kenward-Roger per replicate (:func:`~mlmsim.engine.kenward_roger.kr_inference`):
        Phi_A, W, SEs and df, in one compiled pass over the replicates; NaN for a
        replicate that could not be fitted."""
        if not self.reml:
            raise ValueError(KR_NEEDS_REML)
        if self.stats is None:
            raise ValueError("this BatchFit carries no statistics; Kenward-Roger needs a fit "
                             "by fit_stats, fit_arrays or fit_batch")
        t = kenward_roger.info_terms(self.stats, self.cov_structure, self.estimates.phi, True)
        return kenward_roger.kr_inference(kenward_roger.mapped(t, self.fixed_map))

    def fixef_se_df(self, kind: str = "satterthwaite") -> tuple[np.ndarray, np.ndarray]:
        """The SE and df (R, p) of each fixed effect's t test under ``kind`` (see
        :meth:`ddf`): the KR-adjusted SE for "kenward-roger", sqrt(diag vcov) else."""
        kind = _ddf_kind(kind)
        if kind == "kenward-roger":
            _, _, se, df = self._kr()
            return se, df
        return self.estimates.beta_se, self.ddf(kind)

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.fixed_names + self.covparm_names

    @property
    def params(self) -> np.ndarray:
        return np.concatenate((self.estimates.beta, self.estimates.phi), axis=-1)

    @property
    def se(self) -> np.ndarray:
        return np.concatenate((self.estimates.beta_se, self.estimates.phi_se), axis=-1)

    deviance = _per_replicate("deviance", "The criterion reached (R,): -2 log L or the "
                              "REML criterion.")
    converged = _per_replicate("converged", "Whether the optimiser converged (R,).")
    singular = _per_replicate("singular", "Whether T-hat is singular (R,), docs/math.md (9.2).")
    hessian_pd = _per_replicate("hessian_pd", "Whether the Hessian in phi is positive "
                                "definite (R,), docs/math.md (9.1).")
    identifiable = _per_replicate("identifiable", "Whether the model is identifiable (R,).")
    evaluations = _per_replicate("evaluations", "Deviance evaluations the optimiser spent "
                                 "(R,), restarts included (as ``FitResult.optsum``).")

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per replicate x parameter (estimate, se, flags)."""
        R, P = self.params.shape
        return pd.DataFrame({
            "replicate": np.repeat(np.arange(R), P),
            "parameter": np.tile(np.array(self.param_names, dtype=object), R),
            "estimate": self.params.ravel(),
            "se": self.se.ravel(),
            "converged": np.repeat(self.converged, P),
            "singular": np.repeat(self.singular, P),
            "hessian_pd": np.repeat(self.hessian_pd, P),
            "identifiable": np.repeat(self.identifiable, P),
        })


def _ddf_kind(kind: str) -> str:
    """``kind`` in lower case if it names a df method, else a ValueError naming them."""
    m = kind.lower() if isinstance(kind, str) else kind
    if m not in DDF_METHODS:
        raise ValueError(f"unknown ddf method {kind!r}; choose one of {', '.join(DDF_METHODS)}")
    return m


def _one(stats: GroupStats, r: int) -> GroupStats:
    """Replicate r of batched statistics, without the batch axis (as a single fit's)."""
    return GroupStats(*(np.asarray(getattr(stats, f))[r]
                        for f in GroupStats.__dataclass_fields__))


def fit_stats(stats: GroupStats, blocks: tuple[tuple[int, ...], ...], method: str,
              fixed_names: Sequence[str], random_names: Sequence[str],
              control: FitControl | dict | None = None,
              centering: Centering | None = None, bounded: bool = True) -> BatchFit:
    """Fit R replicates from stacked statistics (batch axis R first).

    A replicate that cannot be fitted (its fixed effects fit y exactly) gets NaN
    estimates and its reason in ``errors``; the others are fitted as usual. With
    ``centering`` (batched), the statistics are of centred data and the fixed
    effects are mapped back, as in the single fit. ``control`` (a
    :class:`~mlmsim.engine.control.FitControl`, a dict of its fields, or None for the
    defaults) goes to the optimiser; a replicate refitted alone gets 5 times its
    ``max_iter``. ``bounded=False``: unbounded variance estimates (SAS NOBOUND,
    :mod:`mlmsim.engine.unbounded`), all replicates iterated together.
    """
    reml = method_name(method) == "REML"
    control = FitControl.coerce(control)
    q = stats.A.shape[-1]
    tmap = ThetaMap.from_blocks(q, blocks)
    cs = inference.CovStructure.from_blocks(q, blocks)
    errors = residual_check(stats)
    R = errors.shape[0]
    good = np.flatnonzero(np.equal(errors, None))
    pk = stats.select(good)
    refitted = np.zeros(R, dtype=bool)
    if good.size:
        opt = minimize_theta(pk, tmap, reml, None, control)
        refit = np.flatnonzero(~opt.converged)
        if refit.size:
            opt = _refit_alone(pk, tmap, reml, opt, refit, control)
            refitted[good[refit]] = True
        est = estimates(pk, tmap, cs, opt, reml)
        if not bounded:
            est = unbounded_estimates(pk, cs, tmap, est, reml, control)[0]
        if centering is not None:
            sub = centering.select(good)
            est = replace(est, beta=sub.beta(est.beta), vcov=sub.cov(est.vcov))
        est = _scatter(est, good, R)
    else:
        est = _scatter(None, good, R, like=(stats, tmap, cs))
    rnames = list(random_names)
    notes = []
    for r in range(R):
        if errors[r] is not None:
            notes.append((f"error: {errors[r]}",))
            continue
        flagged = (refitted[r] or not est.converged[r] or not est.grad_ok[r]
                   or not est.hessian_pd[r] or est.singular[r] or est.dependent[r].any())
        m = messages(est, r, rnames, bounded=bounded) if flagged else []
        if refitted[r]:
            m.insert(0, "did not converge in the batch; refitted alone from Lambda = I")
        notes.append(tuple(m))
    cp_names, _ = covparm_names(rnames, cs.rows, cs.cols)
    return BatchFit("REML" if reml else "ML", tuple(fixed_names), tuple(rnames),
                    tuple(cp_names), est, tuple(notes), refitted, tuple(errors.tolist()),
                    stats=stats, theta_map=tmap, cov_structure=cs,
                    fixed_map=None if centering is None else centering.L,
                    bounded=bool(bounded))


def _unfitted(field_name: str, dtype: np.dtype):
    """The value of an Estimates field for a replicate that was not fitted: False, NaN,
    the stop code NOT_FINITE, or 0 evaluations."""
    if np.issubdtype(dtype, np.bool_):
        return False
    if np.issubdtype(dtype, np.integer):
        return int(StopReason.NOT_FINITE) if field_name == "stop" else 0
    return np.nan


def _scatter(est: Estimates | None, good: np.ndarray, R: int, like=None) -> Estimates:
    """Estimates for all R replicates: the fitted ones at ``good``, NaN/False elsewhere."""
    if est is not None and good.size == R:
        return est
    if est is None:
        stats, tmap, cs = like
        q, p, k, m = stats.A.shape[-1], stats.B.shape[-1], tmap.size, cs.size
        shapes = {"theta": (k,), "beta": (p,), "vcov": (p, p), "sigma2": (), "T": (q, q),
                  "phi": (m,), "hessian": (m, m), "hessian_eigenvalues": (m,), "acov": (m, m),
                  "deviance": (), "scaled_grad": (k,), "hessian_pd": (), "converged": (),
                  "grad_ok": (), "singular": (), "dependent": (q,), "singular_value": (),
                  "zscale": (q,), "stop": (), "evaluations": ()}
        dtypes = {f: bool for f in ("hessian_pd", "converged", "grad_ok", "singular",
                                    "dependent")}
        dtypes["stop"] = dtypes["evaluations"] = np.int64
        fields = {f: np.full((R,) + shp, _unfitted(f, np.dtype(dtypes.get(f, float))),
                             dtype=dtypes.get(f, float))
                  for f, shp in shapes.items()}
        return Estimates(**fields)
    fields = {}
    for f in Estimates.__dataclass_fields__:
        a = getattr(est, f)
        out = np.full((R,) + a.shape[1:], _unfitted(f, a.dtype), dtype=a.dtype)
        out[good] = a
        fields[f] = out
    return Estimates(**fields)


def _refit_alone(pk, tmap, reml, opt: OptResult, idx: np.ndarray,
                control: FitControl | None = None) -> OptResult:
    """Refit replicates ``idx`` one by one (start Lambda = I, 5x the iterations of
    ``control``); keep the refit where it converged or reached a lower deviance."""
    control = FitControl.coerce(control)
    longer = replace(control, max_iter=5 * control.max_iter)
    names = ("theta", "deviance", "grad", "hessian", "iterations", "converged", "info")
    out = {f: getattr(opt, f).copy() for f in names}
    for r in idx:
        one = minimize_theta(pk.select(np.array([r])), tmap, reml, tmap.start()[None, :],
                             longer)
        if one.converged[0] or one.deviance[0] < out["deviance"][r]:
            for f in names:
                out[f][r] = getattr(one, f)[0]
    return replace(opt, **out)


def fit_arrays(y: np.ndarray, X: np.ndarray, Z: np.ndarray, codes: np.ndarray, *,
               method: str = "REML", fixed_names: Sequence[str], random_names: Sequence[str],
               blocks: tuple[tuple[int, ...], ...] | None = None, n_groups: int | None = None,
               control: FitControl | dict | None = None, bounded: bool = True) -> BatchFit:
    """Fit R data sets given as arrays: y (R, N), X (R, N, p) or (N, p), Z (R, N, q) or
    (N, q), group codes (N,) shared by all replicates. ``blocks`` defaults to one
    unstructured T over all q random effects; ``control`` goes to the optimiser
    (:func:`fit_stats`), as does ``bounded``."""
    codes = np.asarray(codes)
    J = int(codes.max()) + 1 if n_groups is None else int(n_groups)
    q = np.shape(Z)[-1]
    blocks = (tuple(range(q)),) if blocks is None else blocks
    stats, centering = centred_group_stats(y, X, Z, codes, J)
    fitted = fit_stats(stats, blocks, method, fixed_names, random_names, control, centering,
                       bounded)
    R = int(np.asarray(stats.yty).reshape(-1).shape[0])
    return replace(fitted, varies_within=functools.partial(_varies_arrays, X, codes, J, R))


def fit_batch(formula: str, datasets: Sequence[pd.DataFrame], method: str = "REML",
              control: FitControl | dict | None = None, bounded: bool = True) -> BatchFit:
    """Fit one lme4 formula to each DataFrame of ``datasets`` in one batch.

    All data sets must give the same fixed and random columns (the same names);
    the number of groups and rows may differ. Data sets with the same rows and
    grouping column and plain numeric terms take a fast lane
    (:func:`mlmsim.model.formula.stacked_design`): one stacked design for all. A data set
    may also be a one-replicate :class:`mlmsim.generate.simulate.SimBatch` (what a study's
    generator draws), read without a DataFrame where the fast lane applies.
    ``control`` goes to the optimiser (:func:`fit_stats`); ``bounded=False`` gives
    unbounded variance estimates (SAS NOBOUND).

    >>> import mlmsim
    >>> nels = mlmsim.datasets.load("nels88")
    >>> b = fit_batch("math ~ homework + (1 | school)", [nels, nels], method="ML")
    >>> [round(float(d), 3) for d in b.deviance]
    [3730.494, 3730.494]
    """
    method_name(method)
    control = FitControl.coerce(control)
    stacked = stacked_design(formula, datasets)
    if stacked is not None:
        fitted = _fit_stacked(stacked, method, control, bounded)
        if fitted is not None:
            return fitted
    frames = [d.frame(0) if isinstance(d, SimBatch) else d for d in datasets]
    designs = [model_design(formula, d) for d in frames]
    first = designs[0]
    for i, d in enumerate(designs[1:], start=1):
        if d.fixed_names != first.fixed_names or d.random_names != first.random_names:
            raise ValueError(
                f"data set {i} gives columns {d.fixed_names} / {d.random_names}, unlike data set "
                f"0's {first.fixed_names} / {first.random_names}: a batch needs one design layout"
            )
    parts = [centred_group_stats(d.y, d.X, d.Z, d.group_codes, d.ngroups) for d in designs]
    stats = stack_stats([st for st, _ in parts])
    centering = Centering(np.stack([c.L for _, c in parts]), np.stack([c.offset for _, c in parts]))
    fitted = fit_stats(stats, first.blocks, method, first.fixed_names, first.random_names,
                       control, centering, bounded)
    return replace(fitted, varies_within=functools.partial(_varies_designs, designs),
                   layout=first.layout)


def _fit_stacked(stacked: StackedDesign, method: str, control: FitControl | None = None,
                 bounded: bool = True) -> BatchFit | None:
    """Fit a stacked design from its variables and terms (X and Z never formed), or None
    when a replicate needs :func:`mlmsim.model.formula.model_design`: a value is missing or
    infinite (then a sum of squares, y'y, a diagonal of X'X or of some A_j, is not
    finite: squares are never negative, so nothing cancels a NaN or an inf), or the
    fixed design is not of full rank (:func:`_full_rank`), where the QR decides which
    columns to drop."""
    V = list(stacked.variables)
    stats, centering = centred_group_stats(
        list(stacked.y), V, V, stacked.group_codes, stacked.group_labels.shape[0],
        fixed_terms=stacked.fixed_terms, random_terms=stacked.random_terms)
    squares = (stats.yty, np.einsum("...ii->...i", stats.XtX),
               np.einsum("...jii->...ji", stats.A))
    if not all(np.isfinite(s).all() for s in squares):
        return None
    if not _full_rank(stats.XtX, centering.L):
        return None
    fitted = fit_stats(stats, stacked.blocks, method, stacked.fixed_names,
                       stacked.random_names, control, centering, bounded)
    return replace(fitted, varies_within=functools.partial(
        _varies_stacked, stacked.variables, stacked.fixed_terms, stacked.group_codes,
        stacked.group_labels.shape[0]), layout=stacked.layout)


def _full_rank(XtX_c: np.ndarray, L: np.ndarray) -> bool:
    """Whether no fixed column of any replicate can be in the span of the others, by
    :func:`mlmsim.model.formula.clearly_full_rank` (the test with which ``model_design`` skips
    its QR) on X'X. X'X is recovered from the centred X_c'X_c: X = X_c M with
    M = L^{-1} = 2 I - L (L = I - e_0 m', (e_0 m')^2 = 0), so X'X = M' X_c'X_c M."""
    M = 2.0 * np.eye(L.shape[-1]) - L
    return bool(clearly_full_rank(np.swapaxes(M, -1, -2) @ XtX_c @ M).all())


# Which fixed columns vary within groups (for between-within df), per replicate, from
# the data the batch was fitted from: the rule of a single fit's ``FitResult.ddf``.

def _varies_designs(designs: Sequence) -> np.ndarray:
    return np.stack([columns_varying_within(d.X, d.group_codes, d.ngroups) for d in designs])


def _varies_arrays(X, codes: np.ndarray, J: int, R: int) -> np.ndarray:
    if isinstance(X, list | tuple) and X and all(isinstance(x, np.ndarray) for x in X):
        return np.stack([columns_varying_within(np.asarray(x, dtype=float), codes, J) for x in X])
    X = np.asarray(X, dtype=float)
    if X.ndim == 2:  # one design shared by all replicates
        return np.broadcast_to(columns_varying_within(X, codes, J), (R, X.shape[-1]))
    X = X.reshape(-1, *X.shape[-2:])
    return np.stack([columns_varying_within(x, codes, J) for x in X])


def _varies_stacked(variables: Sequence[np.ndarray], fixed_terms: np.ndarray,
                    codes: np.ndarray, J: int) -> np.ndarray:
    return np.stack([columns_varying_within(term_products(np.asarray(v, dtype=float), fixed_terms),
                                    codes, J) for v in variables])
