"""FitResult: what a fitted two-level model reports, and its summary.

Plain attributes in the seed's notation (``fixef`` = gamma-hat, ``T``,
``sigma2``, ``theta``), the SAS covariance-parameter table (``covparms``),
flags (``converged``, ``singular``, ``hessian_pd``, ``identifiable``) and
plain-language ``messages``. Nothing is printed as a side effect;
``summary()`` returns a string laid out like lme4's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from mlmsim import __version__
from mlmsim.engine import inference, kenward_roger
from mlmsim.engine.bootstrap import bootstrap
from mlmsim.engine.inference import (
    DDF_METHODS,
    INFORMATION,
    KR_NEEDS_REML,
    columns_varying_within,
)
from mlmsim.engine.likelihood_profile import profile, profile_confint
from mlmsim.model.layout import DesignLayout

if TYPE_CHECKING:
    from mlmsim.engine.control import OptSummary
    from mlmsim.engine.stats import GroupStats
    from mlmsim.model.formula import Design

__all__ = ["FitResult", "FitArrays", "simulate_responses"]


@dataclass(frozen=True)
class FitArrays:
    """The arrays behind a :class:`FitResult`'s labelled views: beta (p,), vcov (p, p),
    T (q, q), hessian and acov (m, m) in phi, U (J, q) EBLUPs, condvar (J, q, q) their
    conditional covariances; where the data were
    fitted in other units (:mod:`mlmsim.engine.units`), acov_fit (in those units) and se
    (p,) (the fixed effects' SEs, given even where their squares overflow)."""

    beta: np.ndarray
    vcov: np.ndarray
    T: np.ndarray
    hessian: np.ndarray
    acov: np.ndarray
    U: np.ndarray
    condvar: np.ndarray
    acov_fit: np.ndarray | None = None
    se: np.ndarray | None = None


@dataclass(frozen=True)
class FitResult:
    """A fitted two-level linear mixed model (ML or REML).

    Attributes
    ----------
    fixef, fixef_se : pd.Series
        gamma-hat and its standard errors sqrt(diag(vcov)).
    vcov : pd.DataFrame
        sigma2-hat * (X'V^{-1}X)^{-1} in sigma^2 units, as lme4's ``vcov``.
    T : pd.DataFrame
        T-hat = sigma2-hat Lambda Lambda', labelled by the random-effect names.
    sigma2 : float
        Residual variance: r2/N (ML) or r2/(N - p) (REML).
    theta : np.ndarray
        Free elements of Lambda (lme4's order), diagonal >= 0.
    deviance : float
        -2 log L (ML) or the REML criterion -2 log L_R (REML), as lme4 reports.
    loglik, aic, bic : float
        -deviance/2; deviance + 2 k; deviance + k log N, k = p + len(theta) + 1.
    converged, singular : bool
        The optimiser met its criterion; T-hat is rank-deficient: the smallest eigenvalue
        of T (Z'Z/N) / sigma^2 is below 1e-8 (docs/math.md (9.2): for a random intercept
        lme4's ``isSingular`` rule, and unchanged when a predictor is rescaled or shifted).
    hessian : pd.DataFrame
        H = d^2 (objective) / dphi dphi' at the estimate, phi = (T elements in
        ``covparms`` order, sigma^2), labelled by the covariance-parameter names.
    hessian_pd : bool
        The smallest eigenvalue of H's correlation form D^{-1/2} H D^{-1/2} (D = diag H)
        exceeds 1e-8: a verdict that does not depend on the units of the data
        (docs/math.md (9.1)); ``hessian_eigenvalues`` are those of the correlation form.
    identifiable : bool
        False when the random-effect columns are linearly dependent within every
        group (see ``messages``).
    covparms : pd.DataFrame
        SAS's "Covariance Parameter Estimates" with COVTEST: index the names of
        :func:`covparm_names`; columns ``sas``, ``estimate``, ``se``, ``z``, ``p``
        (one-sided for variances, two-sided for covariances, as SAS's Pr Z).
    covparms_cov : pd.DataFrame
        2 H^{-1}, NaN where H is not positive definite.
    ranef : pd.DataFrame
        EBLUPs U_j-hat = Lambda M_j^{-1} Lambda' (c_j - B_j gamma-hat), one row per group.
    fitted, resid : pd.Series
        X gamma-hat + Z_j U_j-hat, and y minus it, for the rows used, indexed by the input
        data's row labels (``.reindex(data.index)`` gives NaN for the rows not used).
    arrays : FitArrays
        The plain arrays behind these labelled views, in the engine's order (for code
        that computes with them).
    n_dropped : int
        Rows not used (missing or non-finite values).
    optsum : OptSummary
        How the optimisation went: why it stopped, iterations, evaluations, line-search
        halvings, restarts, the start, the final gradient and the settings (as
        MixedModels.jl's ``optsum``; for an unbounded fit, of its bounded start).
    bounded : bool
        False for an unbounded fit (``fit(..., bounded=False)``, SAS NOBOUND): T-hat may
        then have a negative variance, ``theta`` is NaN where T-hat is not positive
        semi-definite, and Satterthwaite's df are computed in phi.
    """

    formula: str
    method: str
    fixed_names: tuple[str, ...]
    random_names: tuple[str, ...]
    covparm_names: tuple[str, ...]
    covparm_sas: tuple[str, ...]
    sigma2: float
    theta: np.ndarray
    deviance: float
    loglik: float
    aic: float
    bic: float
    nobs: int
    ngroups: int
    converged: bool
    singular: bool
    hessian_eigenvalues: np.ndarray
    hessian_pd: bool
    identifiable: bool
    phi: np.ndarray
    arrays: FitArrays = field(repr=False)
    group_labels: np.ndarray = field(repr=False)
    n_dropped: int = 0
    messages: tuple[str, ...] = ()
    bounded: bool = True
    optsum: OptSummary | None = field(default=None, repr=False)
    design: Design | None = field(default=None, repr=False, compare=False)
    stats: GroupStats | None = field(default=None, repr=False, compare=False)
    cov_structure: Any = field(default=None, repr=False, compare=False)
    theta_map: Any = field(default=None, repr=False, compare=False)
    fixed_map: np.ndarray | None = field(default=None, repr=False, compare=False)
    units: Any = field(default=None, repr=False, compare=False)

    # ---- the fit's own units (mlmsim.engine.units), in which ``stats`` are ----------
    def _covparm_scale(self) -> np.ndarray:
        """c: phi = c phi_fit (ones when the data were fitted in their own units)."""
        if self.units is None:
            return np.ones(len(self.covparm_names))
        cs = self.cov_structure
        return self.units.covparms(cs.rows, cs.cols)

    def _fixef_scale(self) -> np.ndarray:
        """D: gamma = D gamma_fit (the fixed effects in the fit's units; ones if none)."""
        if self.units is None:
            return np.ones(len(self.fixed_names))
        return self.units.gamma

    def _acov_fit(self, information: str) -> np.ndarray:
        """The acov of phi in the fit's units from the ``information`` named."""
        if information not in INFORMATION:
            raise ValueError(f"information must be one of {', '.join(INFORMATION)}, got "
                             f"{information!r}")
        if information == "observed":
            return self.arrays.acov if self.arrays.acov_fit is None else self.arrays.acov_fit
        return kenward_roger.expected_acov(self._info.HE)[0]

    def _covparm_se(self, information: str) -> np.ndarray:
        """sqrt(diag(acov)), taken in the fit's units and scaled (so that an SE whose
        square is beyond the floating-point range is still given)."""
        return np.sqrt(np.diag(self._acov_fit(information))) * self._covparm_scale()

    @property
    def _fit_phi(self) -> np.ndarray:
        return self.phi / self._covparm_scale()

    @property
    def _fit_theta_sigma2(self) -> tuple[np.ndarray, float]:
        if self.units is None:
            return self.theta, self.sigma2
        return (self.units.theta_fit(self.theta, self.theta_map.rows),
                self.sigma2 * self.units.y ** 2)

    # ---- labelled views (built on first access) ------------------------------
    @cached_property
    def fixef(self) -> pd.Series:
        return pd.Series(self.arrays.beta, index=list(self.fixed_names), name="estimate")

    @cached_property
    def fixef_se(self) -> pd.Series:
        se = np.sqrt(np.diag(self.arrays.vcov)) if self.arrays.se is None else self.arrays.se
        return pd.Series(se, index=list(self.fixed_names), name="se")

    @cached_property
    def vcov(self) -> pd.DataFrame:
        names = list(self.fixed_names)
        return pd.DataFrame(self.arrays.vcov, index=names, columns=names)

    @cached_property
    def T(self) -> pd.DataFrame:  # noqa: N802 - the seed's notation
        names = list(self.random_names)
        return pd.DataFrame(self.arrays.T, index=names, columns=names)

    @cached_property
    def covparms(self) -> pd.DataFrame:
        return self.covparms_table("observed")

    def covparms_table(self, information: str = "observed") -> pd.DataFrame:
        """SAS's "Covariance Parameter Estimates" with COVTEST: estimate, se, z, p (one-sided
        for variances, two-sided for covariances, as SAS's Pr Z). ``information``:
        "observed", SEs from 2 H^{-1} of the observed Hessian (6.5) (SAS's default, and
        ``covparms``); "expected", from the inverse of the expected information
        1/2 tr(P V_k P V_l) (REML) or 1/2 tr(V^{-1}V_k V^{-1}V_l) (ML) (6.6) (SAS's
        SCORING=, MLwiN's IGLS)."""
        se = self._covparm_se(information)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = self.phi / se
        isvar = np.array([n.startswith("var(") or n == "sigma2" for n in self.covparm_names])
        p = np.where(isvar, sps.norm.sf(z), 2.0 * sps.norm.sf(np.abs(z)))
        return pd.DataFrame({"sas": list(self.covparm_sas), "estimate": self.phi, "se": se,
                             "z": z, "p": p}, index=list(self.covparm_names))

    def covparms_acov(self, information: str = "observed") -> np.ndarray:
        """The asymptotic covariance (m, m) of phi-hat from the ``information`` named
        ("observed": 2 H^{-1}; "expected": 2 H_E^{-1}); NaN where that information is not
        positive definite in its correlation form (9.1)."""
        if information == "observed" and self.arrays.acov_fit is None:
            return self.arrays.acov
        c = self._covparm_scale()
        with np.errstate(all="ignore"):  # (a covariance beyond floats is inf)
            return self._acov_fit(information) * np.outer(c, c)

    @cached_property
    def _info(self) -> kenward_roger.InfoTerms:
        """:class:`~mlmsim.engine.kenward_roger.InfoTerms` at the estimate, with the fixed
        effects in the reported coordinates (:func:`~mlmsim.engine.kenward_roger.mapped`)."""
        t = kenward_roger.info_terms(self.stats.select(None), self.cov_structure,
                                     self._fit_phi[None], self.reml)
        return kenward_roger.mapped(t, self.fixed_map)

    @cached_property
    def _kr(self) -> tuple[np.ndarray, ...]:
        """Phi_A (p, p), W (m, m), KR SEs and df (p,) (12.2)-(12.3); a REML fit only."""
        if not self.reml:
            raise ValueError(KR_NEEDS_REML)
        return tuple(a[0] for a in kenward_roger.kr_inference(self._info))

    @property
    def vcov_kr(self) -> pd.DataFrame:
        """Kenward-Roger's adjusted covariance of the fixed effects Phi_A (docs/math.md
        (12.2); pbkrtest's ``vcovAdj``, SAS DDFM=KR), for a REML fit; NaN where the
        expected information is not positive definite."""
        names = list(self.fixed_names)
        D = self._fixef_scale()
        return pd.DataFrame(self._kr[0] * np.outer(D, D), index=names, columns=names)

    @cached_property
    def covparms_cov(self) -> pd.DataFrame:
        names = list(self.covparm_names)
        return pd.DataFrame(self.arrays.acov, index=names, columns=names)

    @cached_property
    def hessian(self) -> pd.DataFrame:
        names = list(self.covparm_names)
        return pd.DataFrame(self.arrays.hessian, index=names, columns=names)

    @cached_property
    def fitted(self) -> pd.Series:
        """X gamma-hat + Z_j U_j-hat over the rows used (formed on request: about a tenth
        of a small fit's time)."""
        d, a = self.design, self.arrays
        values = d.X @ a.beta + np.einsum("nq,nq->n", d.Z, a.U[d.group_codes])
        return pd.Series(values, index=self._row_index, name="fitted")

    @cached_property
    def resid(self) -> pd.Series:
        """y - fitted."""
        return pd.Series(self.design.y - self.fitted.to_numpy(), index=self._row_index,
                         name="resid")

    @property
    def ranef_condvar(self) -> np.ndarray:
        """(J, q, q): sigma2-hat D_j, the conditional covariance of each group's EBLUPs
        (docs/math.md (8.2)), in ``ranef``'s row and column order."""
        return self.arrays.condvar

    @property
    def _row_index(self) -> pd.Index:
        d = self.design
        if d is not None and d.row_index is not None:
            return d.row_index
        return pd.RangeIndex(self.nobs)

    @cached_property
    def ranef(self) -> pd.DataFrame:
        grp = self.design.formula.group if self.design is not None else "group"
        return pd.DataFrame(self.arrays.U, index=pd.Index(self.group_labels, name=grp),
                            columns=list(self.random_names))

    # ---- derived quantities -------------------------------------------------
    @property
    def reml(self) -> bool:
        return self.method == "REML"

    @property
    def iterations(self) -> int:
        """Quasi-Newton iterations (``optsum.iterations``)."""
        return 0 if self.optsum is None else self.optsum.iterations

    @property
    def npar(self) -> int:
        """Number of parameters: fixed effects + theta + sigma (as lme4's df)."""
        return int(self.arrays.beta.shape[0] + self.theta.shape[0] + 1)

    @property
    def params(self) -> pd.Series:
        """Fixed effects then covariance parameters, one flat Series."""
        return pd.concat([self.fixef, self.covparms["estimate"]])

    @property
    def corr(self) -> pd.DataFrame:
        """Correlation matrix of the random effects (NaN where a variance is 0)."""
        sd = np.sqrt(np.diag(self.T.to_numpy()))
        with np.errstate(divide="ignore", invalid="ignore"):
            c = self.T.to_numpy() / np.outer(sd, sd)
        return pd.DataFrame(c, index=self.T.index, columns=self.T.columns)

    def coef_table(self, ddf: str = "satterthwaite", level: float = 0.95) -> pd.DataFrame:
        """Fixed effects: estimate, se, df, t, p (two-sided, t with df) and the CI.

        ``ddf``: "satterthwaite" (lmerTest), "kenward-roger" (pbkrtest, SAS DDFM=KR; REML
        only: the SE is then the adjusted sqrt(diag Phi_A), as lmerTest's
        ``summary(ddf = "Kenward-Roger")``), "containment" (SAS's default with
        RANDOM ... SUBJECT=), "between-within" (SAS DDFM=BW) or "residual"
        (N - p). Where the df cannot be computed (Satterthwaite with a Hessian that is
        not positive definite: see ``messages``) df, p and the CI are NaN; they never
        fall back to the normal distribution.
        """
        se, df = self.fixef_se_df(ddf)
        est = self.fixef.to_numpy()
        t = est / se
        p = inference.wald_p(t, df)
        with np.errstate(invalid="ignore"):
            crit = sps.t.ppf(0.5 + level / 2.0, df)
        return pd.DataFrame(
            {"estimate": est, "se": se, "df": df, "t": t, "p": p,
             "ci_lower": est - crit * se, "ci_upper": est + crit * se},
            index=self.fixef.index,
        )

    def fixef_se_df(self, ddf: str = "satterthwaite") -> tuple[np.ndarray, np.ndarray]:
        """The SE and df (p,) of each fixed effect's t test under ``ddf`` (see
        :meth:`coef_table`): the KR-adjusted SE for "kenward-roger", ``fixef_se`` else."""
        df = self.ddf(ddf)
        if ddf.lower() == "kenward-roger":
            return self._kr[2] * self._fixef_scale(), df
        return self.fixef_se.to_numpy(), df

    def ddf(self, method: str = "satterthwaite") -> np.ndarray:
        """Denominator degrees of freedom for each fixed effect (see :meth:`coef_table`)."""
        method = method.lower() if isinstance(method, str) else method
        if method not in DDF_METHODS:
            raise ValueError(
                f"unknown ddf method {method!r}; choose one of {', '.join(DDF_METHODS)}"
            )
        st, d = self.stats, self.design
        if method == "kenward-roger":
            return self._kr[3]
        if method == "residual":
            return np.full(self.fixef.shape[0], float(self.nobs - self.fixef.shape[0]))
        if method == "satterthwaite":
            return inference.satterthwaite_df(*self._satterthwaite_terms())
        if method == "containment":
            layout = (d.layout if d is not None else  # arrays without a formula: names
                      DesignLayout.from_names(self.fixef.index, self.random_names))
            return inference.containment_df(st, layout.fixed_variables(),
                                            layout.random_variables(), [])
        varies = columns_varying_within(d.X, d.group_codes, d.ngroups)
        return inference.between_within_df(st, varies)

    def _satterthwaite_terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """C, dC and Acov of Satterthwaite's df (10.3): in lmerTest's (theta, sigma), or in
        phi for an unbounded fit (where theta need not exist)."""
        if self.bounded:
            theta, sigma2 = self._fit_theta_sigma2
            return inference.satterthwaite_terms(self.stats, self.cov_structure,
                                                 self.theta_map, theta, sigma2,
                                                 self.reml, self.fixed_map)
        return inference.satterthwaite_phi_terms(self.stats, self.cov_structure,
                                                 self._fit_phi, self.reml, self.fixed_map)

    def ftest(self, L, rhs=None, ddf: str = "kenward-roger") -> kenward_roger.FTest:
        """F test of H0: L gamma = rhs (pbkrtest's ``KRmodcomp``, lmerTest's ``contest``).

        ``L``: a contrast matrix (r, p) over the fixed effects in ``fixef`` order, one row
        (p,), or a list of fixed-effect names (each = 0); ``rhs`` (r,) defaults to 0.
        ``ddf``: "kenward-roger" (REML; the scaled F of docs/math.md (12.3)) or
        "satterthwaite" (lmerTest's F with the df of (10.3)). A rank-deficient L is
        reduced to its row space. Returns an :class:`~mlmsim.engine.kenward_roger.FTest`.

        >>> from mlmsim import datasets, fit
        >>> res = fit("mathach ~ cses + (1 + cses | school)", datasets.load("hsb"))
        >>> round(res.ftest(["cses"]).ddf, 2)
        148.49
        """
        names = list(self.fixed_names)
        if isinstance(L, (list, tuple)) and L and all(isinstance(n, str) for n in L):
            missing = [n for n in L if n not in names]
            if missing:
                raise ValueError(f"unknown fixed effect(s) {missing}; the fixed effects are "
                                 f"{names}")
            L = np.eye(len(names))[[names.index(n) for n in L]]
        L = np.atleast_2d(np.asarray(L, dtype=float))
        if L.ndim != 2 or L.shape[1] != len(names):
            raise ValueError(f"L must have {len(names)} columns (one per fixed effect), got "
                             f"shape {L.shape}")
        rhs = np.zeros(L.shape[0]) if rhs is None else np.asarray(rhs, dtype=float).ravel()
        if rhs.shape != (L.shape[0],):
            raise ValueError(f"rhs must have {L.shape[0]} elements, got {rhs.size}")
        # L gamma - rhs = L (gamma - g0) for any g0 with L g0 = rhs (least squares)
        b = self.arrays.beta - np.linalg.lstsq(L, rhs, rcond=None)[0]
        # in the fit's units: L gamma = (L D) gamma_fit
        D = self._fixef_scale()
        L, b = L * D, b / D
        kind = ddf.lower() if isinstance(ddf, str) else ddf
        if kind == "kenward-roger":
            PhiA, W = self._kr[:2]
            return kenward_roger.kr_ftest(L, b, self._info, PhiA[None], W[None])
        if kind == "satterthwaite":
            return kenward_roger.satterthwaite_ftest(L, b, *self._satterthwaite_terms())
        raise ValueError(f"ddf for an F test must be 'kenward-roger' or 'satterthwaite', got "
                         f"{ddf!r}")

    def covparms_ci(self, level: float = 0.95, scale: str = "variance") -> pd.DataFrame:
        """Wald intervals for the covariance parameters.

        ``scale="variance"``: estimate +- z SE. ``scale="logsd"`` (variances
        only; covariances keep the variance scale): the interval for log sd =
        log(var)/2 with SE_var / (2 var), transformed back to the variance scale.
        """
        z = sps.norm.ppf(0.5 + level / 2.0)
        cp = self.covparms
        est, se = cp["estimate"].to_numpy(), cp["se"].to_numpy()
        lo, hi = est - z * se, est + z * se
        if scale == "logsd":
            isvar = self.cov_structure.is_variance
            with np.errstate(divide="ignore", invalid="ignore"):
                se_l = se / (2.0 * est)
                lsd = 0.5 * np.log(est)
                lo = np.where(isvar, np.exp(2 * (lsd - z * se_l)), lo)
                hi = np.where(isvar, np.exp(2 * (lsd + z * se_l)), hi)
        elif scale != "variance":
            raise ValueError("scale must be 'variance' or 'logsd'")
        return pd.DataFrame({"estimate": est, "ci_lower": lo, "ci_upper": hi}, index=cp.index)

    def confint(self, method: str = "profile", level: float = 0.95, parm=None, *,
                nsim: int = 1000, rng=None, n_jobs: int = 1, type: str = "perc",  # noqa: A002
                criterion: str | None = None, progress: bool | None = None) -> pd.DataFrame:
        """Confidence intervals for the fixed effects and covariance parameters, as lme4's
        ``confint``: one row per parameter (``parm``: names, default all), columns
        ``estimate``, ``lower``, ``upper``, ``scale`` and ``at_bound``.

        ``method="profile"``: likelihood-ratio intervals from the profiled criterion
        (:mod:`mlmsim.engine.likelihood_profile`; ``criterion="ML"`` profiles a REML fit
        by ML, as lme4 does; ``n_jobs`` profiles the parameters in parallel). ``"boot"``:
        parametric bootstrap (``nsim`` refits,
        reproducible from ``rng``, ``n_jobs`` workers; ``type`` "perc" or "basic"; see
        :meth:`bootstrap`). ``"wald"``: estimate +- z SE (covariances on their own
        scale). Variances and sigma^2 are on the variance scale (lme4's sd limits
        squared); covariances are correlations for profile and bootstrap.

        >>> import mlmsim
        >>> fit = mlmsim.fit("math ~ homework + (1 | school)",
        ...                  mlmsim.datasets.load("nels88"), method="ML")
        >>> fit.confint("profile").loc["homework", ["lower", "upper"]].round(3).tolist()
        [1.858, 2.946]
        """
        kind = method.lower() if isinstance(method, str) else method
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if kind == "boot" and type not in ("perc", "basic"):
            raise ValueError(f"type must be 'perc' or 'basic', got {type!r}")
        if kind == "profile":
            return profile_confint(self, parm, level, criterion, n_jobs=n_jobs)
        names = self._parm(parm)
        if kind not in ("boot", "wald"):
            raise ValueError(f"method must be 'profile', 'boot' or 'wald', got {method!r}")
        if kind == "boot":
            return self.bootstrap(nsim, rng, n_jobs=n_jobs, progress=progress).confint(
                level, type).loc[names]
        if kind == "wald":
            z = sps.norm.ppf(0.5 + level / 2.0)
            est = np.concatenate((self.fixef.to_numpy(), self.covparms["estimate"].to_numpy()))
            se = np.concatenate((self.fixef_se.to_numpy(), self.covparms["se"].to_numpy()))
            scale = (["fixed"] * len(self.fixed_names)
                     + ["variance" if v else "covariance"
                        for v in self.cov_structure.is_variance])
            out = pd.DataFrame({"estimate": est, "lower": est - z * se, "upper": est + z * se,
                                "scale": scale, "at_bound": ""},
                               index=pd.Index(list(self.fixed_names) + list(self.covparm_names),
                                              name="parameter"))
            return out.loc[names]
        raise ValueError(f"method must be 'profile', 'boot' or 'wald', got {method!r}")

    def _parm(self, parm) -> list[str]:
        allnames = list(self.fixed_names) + list(self.covparm_names)
        if parm is None:
            return allnames
        names = [parm] if isinstance(parm, str) else list(parm)
        bad = [n for n in names if n not in allnames]
        if bad:
            raise ValueError(f"no parameter {bad[0]!r}: choose from {allnames}")
        return names

    def profile(self, parm: str, *, level: float = 0.99, n: int = 21,
                criterion: str | None = None):
        """The likelihood profile of one parameter (zeta as in lme4, with the other
        parameters re-optimised), traced between its level-``level`` limits; ``.plot()``
        draws it (:class:`~mlmsim.engine.likelihood_profile.ParameterProfile`)."""
        return profile(self, parm, level=level, n=n, criterion=criterion)

    def bootstrap(self, nsim: int = 1000, rng=None, *, n_jobs: int = 1,
                  progress: bool | None = None):
        """Parametric bootstrap (lme4's ``bootMer(use.u = FALSE)``): ``nsim`` data sets
        from the fit, refitted in batches (:class:`~mlmsim.engine.bootstrap.Bootstrap`:
        the distribution, failed and singular counts, ``confint``)."""
        return bootstrap(self, nsim, rng, n_jobs=n_jobs, progress=progress)

    def simulate(self, nsim: int = 1, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Parametric bootstrap responses (nsim, N) on the same design, as lme4's simulate.

        y* = X gamma-hat + Z_j U*_j + R*, U*_j ~ N(0, T-hat), R* ~ N(0, sigma2-hat).
        T-hat is factored by its eigen-decomposition, so singular T-hat works (an
        unbounded fit's negative eigenvalues are taken as 0).
        """
        d = self.design
        return simulate_responses(d.X, d.Z, d.group_codes, self.ngroups,
                                  self.fixef.to_numpy(), self.T.to_numpy(), self.sigma2, nsim,
                                  np.random.default_rng(rng))

    def summary(self) -> str:
        """A text summary laid out like lme4's ``summary(lmer(...))``."""
        how = "maximum likelihood" if self.method == "ML" else "REML"
        lines = [f"Linear mixed model fit by {how} (mlmsim)", f"Formula: {self.formula}", ""]
        crit = "deviance" if self.method == "ML" else "REML criterion"
        lines.append(f"{'AIC':>12}{'BIC':>12}{'logLik':>12}{crit:>16}{'df.resid':>10}")
        lines.append(
            f"{self.aic:12.1f}{self.bic:12.1f}{self.loglik:12.1f}{self.deviance:16.1f}"
            f"{self.nobs - self.npar:10d}"
        )
        lines += ["", "Random effects:"]
        grp = self.design.formula.group if self.design is not None else "group"
        T = self.T.to_numpy()
        sd = np.sqrt(np.clip(np.diag(T), 0, None))
        corr = self.corr.to_numpy()
        names = self.random_names
        # columns as wide as their longest entry (lme4's layout for names that fit)
        gw = max(10, len(str(grp)) + 2)
        nw = max(16, max(len(n) for n in names) + 2)
        lines.append(f" {'Groups':<{gw}}{'Name':<{nw}}{'Variance':>12}{'Std.Dev.':>10}  Corr")
        for i, nm in enumerate(names):
            cor = " ".join(f"{corr[i, j]:6.2f}" for j in range(i))
            lines.append(f" {grp if i == 0 else '':<{gw}}{nm:<{nw}}{_num(T[i, i], 12)}"
                         f"{_num(sd[i], 10)}  {cor}")
        lines.append(f" {'Residual':<{gw}}{'':<{nw}}{_num(self.sigma2, 12)}"
                     f"{_num(np.sqrt(self.sigma2), 10)}")
        lines.append(f"Number of obs: {self.nobs}, groups: {grp}, {self.ngroups}")
        lines += ["", "Fixed effects:"]
        ct = self.coef_table("satterthwaite")
        fw = max(16, max(len(str(n)) for n in ct.index) + 2)
        lines.append(f"{'':<{fw}}{'Estimate':>12}{'Std. Error':>12}{'df':>10}{'t value':>10}"
                     f"{'Pr(>|t|)':>11}")
        for nm, row in ct.iterrows():
            lines.append(
                f"{nm:<{fw}}{_num(row.estimate, 12)}{_num(row.se, 12)}{row.df:10.1f}"
                f"{row.t:10.2f}{_fmt_p(row.p):>11}"
            )
        lines += ["", "Covariance parameters (COVTEST):"]
        width = max(22, max(len(n) for n in self.covparm_names) + 2)
        lines.append(f"{'':<{width}}{'SAS':<10}{'Estimate':>12}{'Std. Error':>12}{'Z':>8}"
                     f"{'Pr Z':>10}")
        for nm, row in self.covparms.iterrows():
            lines.append(
                f"{nm:<{width}}{row.sas:<10}{_num(row.estimate, 12)}{_num(row.se, 12)}{row.z:8.2f}"
                f"{_fmt_p_sas(row.p):>10}"
            )
        if self.n_dropped:
            lines.append(f"\nObservations not used: {self.n_dropped}")
        if self.messages:
            lines += [""] + [f"Note: {m}" for m in self.messages]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self, ddf: str = "satterthwaite", level: float = 0.95) -> dict[str, Any]:
        """Every number of the fit as plain JSON types (the keys are listed in docs/cli.md;
        ``mlmsim fit --json`` prints this).

        Floats are Python floats, NaN and infinities None; fixed effects come from
        ``self.coef_table(ddf)``, covariance parameters from ``self.covparms``.
        """
        ct = self.coef_table(ddf=ddf, level=level)
        fixed = {str(name): {k: _json_number(row[k]) for k in ("estimate", "se", "df", "t", "p",
                                                        "ci_lower", "ci_upper")}
                 for name, row in ct.iterrows()}
        cov = {}
        for name, row in self.covparms.iterrows():
            cov[str(name)] = {"sas": str(row["sas"]),
                              **{k: _json_number(row[k]) for k in ("estimate", "se", "z", "p")}}
        T = self.T
        group = self.design.formula.group if self.design is not None else None
        response = self.design.formula.response if self.design is not None else None

        return {
            "mlmsim_version": __version__,
            "formula": self.formula,
            "method": self.method,
            "response": response,
            "group": group,
            "nobs": int(self.nobs),
            "ngroups": int(self.ngroups),
            "n_dropped": int(self.n_dropped),
            "minus2ll": _json_number(self.deviance),
            "loglik": _json_number(self.loglik),
            "aic": _json_number(self.aic),
            "bic": _json_number(self.bic),
            "npar": int(self.npar),
            "ddf_method": ddf,
            "ci_level": float(level),
            "fixed_effects": fixed,
            "covparms": cov,
            "T": {"names": [str(n) for n in T.index],
                  "matrix": [[_json_number(v) for v in row] for row in T.to_numpy()]},
            "sigma2": _json_number(self.sigma2),
            "theta": [_json_number(v) for v in self.theta],
            "flags": {"converged": bool(self.converged), "singular": bool(self.singular),
                      "hessian_pd": bool(self.hessian_pd), "identifiable": bool(self.identifiable)},
            "messages": [str(m) for m in self.messages],
            "hessian_eigenvalues": [_json_number(v) for v in self.hessian_eigenvalues],
            "iterations": int(self.iterations),
        }


def simulate_responses(X: np.ndarray, Z: np.ndarray, codes: np.ndarray, n_groups: int,
                       gamma: np.ndarray, T: np.ndarray, sigma2: float, nsim: int,
                       rng: np.random.Generator) -> np.ndarray:
    """``nsim`` responses (nsim, N) of a two-level model on the design X (N, p), Z (N, q),
    group codes (N,): y = X gamma + Z_j U_j + R, U_j ~ N(0, T), R ~ N(0, sigma2 I). T is
    factored by its eigen-decomposition, so a singular T works (negative eigenvalues, of an
    unbounded estimate, are taken as 0). Draws: U (nsim, J, q), then R (nsim, N)."""
    w, V = np.linalg.eigh(T)
    F = V * np.sqrt(np.clip(w, 0.0, None))
    U = rng.standard_normal((nsim, n_groups, F.shape[0])) @ F.T
    mean = X @ gamma
    zu = np.einsum("nq,snq->sn", Z, U[:, codes, :])
    return mean + zu + np.sqrt(sigma2) * rng.standard_normal((nsim, X.shape[0]))


def _json_number(value: Any) -> float | None:
    """A float for JSON: NaN and infinities become None (null)."""
    v = float(value)
    return v if math.isfinite(v) else None


def _num(v: float, width: int) -> str:
    """``v`` in ``width`` characters: 4 decimals, or 4 significant digits in exponent form
    where 4 decimals would hide it or overflow the column (data in extreme units)."""
    if v == 0 or not np.isfinite(v) or 1e-3 <= abs(v) < 1e6:
        return f"{v:{width}.4f}"
    return f"{v:{width}.4g}"


def _fmt_p(p: float) -> str:
    """A p-value as lme4 prints it."""
    if not np.isfinite(p):
        return "NA"
    return "<2e-16" if p < 2e-16 else f"{p:.3g}"


def _fmt_p_sas(p: float) -> str:
    """A p-value as SAS prints it."""
    if not np.isfinite(p):
        return "."
    return "<.0001" if p < 1e-4 else f"{p:.4f}"
