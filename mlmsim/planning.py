"""Power and sample size by simulation: simr's ``powerSim`` / ``powerCurve`` / ``extend``
and SimDesign's ``SimSolve``, with the test a small-sample analysis would use.

``power(model, effect, test=...)`` simulates ``nsim`` data sets from ``model`` -- a
:class:`~mlmsim.generate.spec.ModelSpec`, or a fitted model (simr's "start from a pilot fit":
the pilot's design, its estimates as the truth, effects overridable as simr's
``fixef<-``) -- fits each in batches and counts the tests of ``effect`` with p <= alpha.

The tests, for a fixed effect (t = gamma-hat / SE):

* ``"wald"``: z = t against N(0, 1) (lme4's t value read as z);
* ``"satterthwaite"``, ``"kenward-roger"``: t against t(df) with lmerTest's df, or
  KR's adjusted SE and df (REML fits; pbkrtest, SAS DDFM=KR);
* ``"lrt"``: -2 log L of the model without the effect minus the model's (ML fits),
  against chi2(k);
* ``"boot"``: that LRT against its parametric bootstrap (``nboot`` refits of both models
  to data simulated from the null fit, pbkrtest's ``PBmodcomp``).

A set of fixed effects is tested jointly: ``"wald"`` by the chi2(k) Wald statistic,
``"kenward-roger"`` by KR's F, ``"lrt"`` and ``"boot"`` as above. A random effect,
named by its variance (``"var(x)"``), is tested by ``"lrt"`` against the 50:50 mixture
0.5 chi2(k - 1) + 0.5 chi2(k) (k = its variance and covariances; Self and Liang 1987) or
by ``"boot"``.

Power is the share of the successful fits whose p-value is at most ``alpha``, with
its exact (Clopper-Pearson) binomial interval. A fit that fails, or gives no p-value,
is counted in ``n_failed`` and left out. Singular fits are kept and counted: they are
draws of the estimator, and a test on them is a test the study would run.

Reproducibility: replicates are simulated and fitted in chunks of 250. Chunk i draws
from the i-th child of a child of ``SeedSequence(rng)`` (:mod:`mlmsim.engine.chunked`), so
results do not depend on ``n_jobs``; from a pilot fit, the other child draws the groups of
the extended design, once per call. Each value of a power curve gets its own child seed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from mlmsim.engine import kenward_roger as kr
from mlmsim.engine.batch import fit_arrays
from mlmsim.engine.chunked import chunk_sizes, run_chunks, seeds
from mlmsim.engine.result import FitResult, simulate_responses
from mlmsim.generate.simulate import simulate_batch
from mlmsim.generate.spec import ModelSpec

__all__ = ["TESTS", "PowerResult", "PowerCurve", "SampleSize", "power", "power_curve",
           "sample_size", "crt_power"]

TESTS = ("wald", "satterthwaite", "kenward-roger", "lrt", "boot")
ALONG = ("n_groups", "group_size")


# ---------------------------------------------------------------------------------
# what is simulated
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draws:
    """R simulated data sets on one layout: y (R, N), X (R, N, p) or (N, p), Z likewise,
    group codes (N,)."""

    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    codes: np.ndarray
    n_groups: int
    fixed_names: tuple[str, ...]
    random_names: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class _FromSpec:
    """Data sets from a ModelSpec at n_groups groups of group_size."""

    spec: ModelSpec
    n_groups: int
    group_size: Any

    def draw(self, R: int, rng: np.random.Generator) -> _Draws:
        b = simulate_batch(self.spec, R, self.n_groups, group_size=self.group_size, rng=rng)
        q = len(b.random_names)
        return _Draws(b.y, b.X, b.Z, b.codes, b.n_groups, b.fixed_names, b.random_names,
                      (tuple(range(q)),))


@dataclass(frozen=True)
class _FromFit:
    """Data sets from a fitted model: its design (n_groups None) or n_groups of its
    groups (``pick``, drawn once per call of :func:`power`, with replacement where more
    groups than the pilot's are asked for: one extended design, as simr's ``extend``),
    y = X gamma + Z_j U_j + R with U_j ~ N(0, T-hat), R ~ N(0, sigma2-hat) and gamma-hat
    overridden by ``gamma``."""

    fit: FitResult
    gamma: np.ndarray
    n_groups: int | None
    pick: np.ndarray | None = None

    def with_design(self, rng: np.random.Generator) -> _FromFit:
        """This source with its groups drawn (the pilot's own design when n_groups is
        None)."""
        if self.n_groups is None:
            return self
        J = self.fit.design.ngroups
        return replace(self, pick=rng.choice(J, size=self.n_groups, replace=self.n_groups > J))

    def draw(self, R: int, rng: np.random.Generator) -> _Draws:
        d = self.fit.design
        X, Z, codes, J = d.X, d.Z, d.group_codes, d.ngroups
        if self.n_groups is not None:
            if self.pick is None:
                raise ValueError("draw the extended design first: with_design(rng)")
            pick = self.pick
            order = np.argsort(codes, kind="stable")
            starts = np.searchsorted(codes[order], np.arange(J + 1))
            rows = np.concatenate([order[starts[g]:starts[g + 1]] for g in pick])
            sizes = np.diff(starts)[pick]
            X, Z = X[rows], Z[rows]
            codes = np.repeat(np.arange(self.n_groups), sizes)
            J = self.n_groups
        y = simulate_responses(X, Z, codes, J, self.gamma, self.fit.T.to_numpy(),
                               self.fit.sigma2, R, rng)
        return _Draws(y, X, Z, codes, J, tuple(d.fixed_names), tuple(d.random_names),
                      tuple(d.blocks))


# ---------------------------------------------------------------------------------
# the hypothesis and its test
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hypothesis:
    """Fixed effects (columns of X) or one random effect (a column of Z) set to 0."""

    kind: str
    names: tuple[str, ...]
    test: str
    alpha: float
    nboot: int

    def label(self) -> str:
        return " + ".join(self.names) if self.kind == "fixed" else f"var({self.names[0]})"


def _hypothesis(effect, test: str, alpha: float, nboot: int, fixed: Sequence[str],
                random: Sequence[str]) -> _Hypothesis:
    kind_test = test.lower() if isinstance(test, str) else test
    if kind_test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}, got {test!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    names = (effect,) if isinstance(effect, str) else tuple(effect)
    if not names:
        raise ValueError("name the effect to test, e.g. effect='x:z' or effect='var(x)'")
    rand = [n[4:-1] for n in names if n.startswith("var(") and n.endswith(")")]
    if rand:
        if len(names) != 1 or rand[0] not in random:
            raise ValueError(f"a random effect is tested alone, by its variance: one of "
                             f"{[f'var({r})' for r in random]}; got {list(names)}")
        if kind_test not in ("lrt", "boot"):
            raise ValueError(f"a variance is tested by test='lrt' (the boundary mixture) or "
                             f"'boot', not {test!r}")
        if len(random) == 1:
            raise ValueError("the model's only random effect cannot be tested here: its "
                             "null has no random effect; see mlmsim.exact_lrt")
        return _Hypothesis("random", (rand[0],), kind_test, alpha, nboot)
    bad = [n for n in names if n not in fixed]
    if bad:
        raise ValueError(f"no fixed effect {bad[0]!r}; the fixed effects are {list(fixed)} "
                         f"and the variances {[f'var({r})' for r in random]}")
    if len(set(names)) != len(names):
        raise ValueError(f"an effect is named twice in {list(names)}")
    if len(names) > 1 and kind_test == "satterthwaite":
        raise ValueError("a set of fixed effects is tested by 'kenward-roger' (F), 'wald' "
                         "(chi-square), 'lrt' or 'boot'; Satterthwaite's F is not offered")
    return _Hypothesis("fixed", names, kind_test, alpha, nboot)


def _method(test: str) -> str:
    """The likelihood of the fits: ML for likelihood-ratio tests, REML otherwise."""
    return "ML" if test in ("lrt", "boot") else "REML"


def _fit(draws: _Draws, y, X, Z, blocks, method: str, names):
    return fit_arrays(y, X, Z, draws.codes, method=method, fixed_names=names[0],
                      random_names=names[1], blocks=blocks, n_groups=draws.n_groups)


def _null(draws: _Draws, hyp: _Hypothesis):
    """(X, Z, blocks, names) of the null model."""
    fixed, random = draws.fixed_names, draws.random_names
    if hyp.kind == "fixed":
        keep = [i for i, n in enumerate(fixed) if n not in hyp.names]
        return (draws.X[..., keep], draws.Z, draws.blocks,
                (tuple(fixed[i] for i in keep), random))
    k = random.index(hyp.names[0])
    keep = [i for i in range(len(random)) if i != k]
    new = {old: i for i, old in enumerate(keep)}
    blocks = tuple(tuple(new[i] for i in b if i != k) for b in draws.blocks)
    blocks = tuple(b for b in blocks if b)
    return draws.X, draws.Z[..., keep], blocks, (fixed, tuple(random[i] for i in keep))


def _removed_params(draws: _Draws, hyp: _Hypothesis) -> int:
    """Parameters the null drops: k fixed effects, or a variance and its covariances."""
    if hyp.kind == "fixed":
        return len(hyp.names)
    k = draws.random_names.index(hyp.names[0])
    block = next(b for b in draws.blocks if k in b)
    return len(block)


def _ok(bf) -> np.ndarray:
    ok = np.asarray(bf.converged, bool) & np.all(np.isfinite(bf.params), axis=1)
    if bf.errors:
        ok &= np.array([e is None for e in bf.errors])
    return ok


def _test_chunk(source, hyp: _Hypothesis, seed: np.random.SeedSequence, size: int
                ) -> pd.DataFrame:
    """Simulate ``size`` data sets and test ``hyp`` on each: statistic, df, p, flags."""
    rng = np.random.default_rng(seed)
    draws = source.draw(size, rng)
    method = _method(hyp.test)
    names = (draws.fixed_names, draws.random_names)
    bf = _fit(draws, draws.y, draws.X, draws.Z, draws.blocks, method, names)
    ok = _ok(bf)
    stat = np.full(size, np.nan)
    df = np.full(size, np.nan)
    p = np.full(size, np.nan)
    idx = [draws.fixed_names.index(n) for n in hyp.names] if hyp.kind == "fixed" else []
    beta = np.asarray(bf.estimates.beta, dtype=float)
    if hyp.test in ("wald", "satterthwaite", "kenward-roger") and len(idx) == 1:
        j = idx[0]
        if hyp.test == "wald":
            se = np.asarray(bf.estimates.beta_se, dtype=float)[:, j]
            stat = beta[:, j] / se
            p = 2.0 * sps.norm.sf(np.abs(stat))
        else:
            se, dfs = bf.fixef_se_df(hyp.test)
            stat, df = beta[:, j] / se[:, j], dfs[:, j]
            with np.errstate(invalid="ignore"):
                p = 2.0 * sps.t.sf(np.abs(stat), df)
    elif hyp.test == "wald":
        V = np.asarray(bf.estimates.vcov, dtype=float)[:, idx][:, :, idx]
        b = beta[:, idx]
        for r in np.flatnonzero(ok):
            try:
                stat[r] = b[r] @ np.linalg.solve(V[r], b[r])
            except np.linalg.LinAlgError:
                continue
        df[:] = len(idx)
        p = sps.chi2.sf(stat, len(idx))
    elif hyp.test == "kenward-roger":
        stat, df, p = _kr_f(bf, idx, ok)
    else:
        X0, Z0, blocks0, names0 = _null(draws, hyp)
        bf0 = _fit(draws, draws.y, X0, Z0, blocks0, "ML", names0)
        ok &= _ok(bf0)
        stat = np.maximum(np.asarray(bf0.deviance) - np.asarray(bf.deviance), 0.0)
        k = _removed_params(draws, hyp)
        df[:] = k
        if hyp.test == "lrt":
            p = sps.chi2.sf(stat, k)
            if hyp.kind == "random":  # the 50:50 boundary mixture
                low = sps.chi2.sf(stat, k - 1) if k > 1 else (stat <= 0.0).astype(float)
                p = 0.5 * low + 0.5 * p
        else:
            p = _boot_p(draws, bf0, (X0, Z0, blocks0, names0), names, stat, ok, hyp.nboot,
                        rng)
    ok &= np.isfinite(p)
    return pd.DataFrame({"statistic": stat, "df": df, "p": np.where(ok, p, np.nan),
                         "reject": ok & (p <= hyp.alpha), "ok": ok,
                         "singular": np.asarray(bf.singular, bool),
                         "converged": np.asarray(bf.converged, bool)})


def _kr_f(bf, idx: list[int], ok: np.ndarray):
    """KR's F test of gamma_idx = 0 in each replicate (docs/math.md (12.3))."""

    R, p = bf.estimates.beta.shape
    t = kr.mapped(kr.info_terms(bf.stats, bf.cov_structure, bf.estimates.phi, True),
                  bf.fixed_map)
    PhiA, W = kr.kr_adjust(t)
    L = np.eye(p)[idx]
    out = np.full((3, R), np.nan)
    for r in np.flatnonzero(ok):
        try:
            f = kr.kr_ftest(L, bf.estimates.beta[r], t, PhiA, W, r)
        except (np.linalg.LinAlgError, ValueError):
            continue
        out[:, r] = (f.F, f.ddf, f.p)
    return out[0], out[1], out[2]


def _boot_p(draws: _Draws, bf0, null, names, stat, ok, nboot: int, rng) -> np.ndarray:
    """Parametric-bootstrap p-value of each replicate's LRT (pbkrtest's PBmodcomp):
    ``nboot`` data sets from that replicate's null fit, both models refitted."""
    X0, Z0, blocks0, names0 = null
    p = np.full(stat.shape, np.nan)
    est = bf0.estimates
    for r in np.flatnonzero(ok):
        Xr0 = X0[r] if X0.ndim == 3 else X0
        Zr0 = Z0[r] if Z0.ndim == 3 else Z0
        ys = simulate_responses(Xr0, Zr0, draws.codes, draws.n_groups, est.beta[r], est.T[r],
                                est.sigma2[r], nboot, rng)
        Xr = draws.X[r] if draws.X.ndim == 3 else draws.X
        Zr = draws.Z[r] if draws.Z.ndim == 3 else draws.Z
        b1 = _fit(draws, ys, Xr, Zr, draws.blocks, "ML", names)
        b0 = _fit(draws, ys, Xr0, Zr0, blocks0, "ML", names0)
        good = _ok(b1) & _ok(b0)
        ref = np.maximum(np.asarray(b0.deviance) - np.asarray(b1.deviance), 0.0)[good]
        p[r] = (1.0 + np.count_nonzero(ref >= stat[r])) / (1.0 + ref.size)
    return p


# ---------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------


def _binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion k / n (NaN for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class PowerResult:
    """Power of one test at one design.

    ``power`` = rejections / ``n_tested`` (the fits that gave a p-value) with its
    Clopper-Pearson interval (``ci_lower``, ``ci_upper`` at ``level``); ``n_failed`` fits
    gave none; ``n_singular`` of the fits were singular (kept). ``records`` has one row
    per simulated data set: ``statistic``, ``df``, ``p``, ``reject``, ``ok``,
    ``singular``, ``converged``."""

    effect: str
    test: str
    alpha: float
    nsim: int
    n_groups: int | None
    group_size: Any
    power: float
    ci_lower: float
    ci_upper: float
    n_rejected: int
    n_tested: int
    n_failed: int
    n_singular: int
    seconds: float
    level: float = 0.95
    records: pd.DataFrame = field(default=None, repr=False)

    def summary(self) -> str:
        size = "" if self.group_size is None else f" of {self.group_size}"
        groups = "the pilot's groups" if self.n_groups is None else f"{self.n_groups} groups"
        return (f"Power to detect {self.effect} ({self.test} test, alpha = {self.alpha}): "
                f"{self.power:.3f} [{self.ci_lower:.3f}, {self.ci_upper:.3f}] "
                f"({self.level:.0%} exact CI)\n"
                f"  {self.n_rejected} of {self.n_tested} tests rejected; {groups}{size}; "
                f"{self.nsim} simulations, {self.n_failed} failed, {self.n_singular} "
                f"singular; {self.seconds:.1f} s")

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in self.__dict__.items() if k != "records"}


def _source(model, n_groups, group_size, effects):
    """The simulator of ``model`` at a design, with ``effects`` overriding gamma."""
    effects = dict(effects or {})
    if isinstance(model, ModelSpec):
        bad = [k for k in effects if k not in model.gamma]
        if bad:
            raise ValueError(f"effects name {bad[0]!r}, not a fixed effect of the spec "
                             f"({list(model.gamma)})")
        spec = replace(model, gamma={**model.gamma, **effects}) if effects else model
        J = n_groups if n_groups is not None else spec.n_groups
        if J is None:
            raise ValueError("give n_groups (the spec has no default)")
        if group_size is None and spec.group_sizes is None:
            raise ValueError("give group_size (the spec has no group sizes)")
        return _FromSpec(spec, int(J), group_size)
    if isinstance(model, FitResult):
        if model.design is None:
            raise ValueError("the pilot fit has no design (a fit from mlmsim.fit)")
        if group_size is not None:
            raise ValueError("from a pilot fit the groups keep their sizes: vary n_groups "
                             "(its groups are resampled, as simr's extend)")
        gamma = model.fixef.copy()
        bad = [k for k in effects if k not in gamma.index]
        if bad:
            raise ValueError(f"effects name {bad[0]!r}, not a fixed effect of the fit "
                             f"({list(gamma.index)})")
        for k, v in effects.items():
            gamma[k] = float(v)
        return _FromFit(model, gamma.to_numpy(dtype=float),
                        None if n_groups is None else int(n_groups))
    raise ValueError(f"model must be a ModelSpec or a fitted model (FitResult), got "
                     f"{type(model).__name__}")


def _names(model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The fixed and random effect names of a ModelSpec or a fit (both name them so)."""
    return tuple(model.fixed_names), tuple(model.random_names)


def power(model: ModelSpec | FitResult, effect: str | Sequence[str], *,
          test: str = "satterthwaite", nsim: int = 1000, alpha: float = 0.05,
          n_groups: int | None = None, group_size: Any = None,
          effects: Mapping[str, float] | None = None, nboot: int = 199, rng=None,
          n_jobs: int = 1, progress: bool | None = None, level: float = 0.95
          ) -> PowerResult:
    """Power of ``test`` for ``effect`` by simulation (see the module docstring).

    ``model``: a ModelSpec (``n_groups`` and ``group_size`` default to its own) or a
    fitted model (its design, or ``n_groups`` of its groups resampled). ``effects``
    overrides fixed effects (e.g. ``{"x:z": 0.3}``; 0 gives the type I error rate).
    ``effect``: a fixed-effect name, several (a joint test), or ``"var(x)"``.
    ``nboot``: bootstrap refits per data set for ``test="boot"``.

    >>> import mlmsim
    >>> spec = mlmsim.ModelSpec.example()
    >>> res = mlmsim.power(spec, "x:z", n_groups=30, group_size=5, nsim=200, rng=1,
    ...                    progress=False)
    >>> res.nsim, res.n_failed, 0.0 <= res.power <= 1.0
    (200, 0, True)
    """
    t0 = time.perf_counter()
    src = _source(model, n_groups, group_size, effects)
    hyp = _hypothesis(effect, test, alpha, int(nboot), *_names(model))
    if hyp.test == "boot" and int(nboot) < 19:
        raise ValueError(f"nboot must be at least 19 for a bootstrap test, got {nboot}")
    sizes = chunk_sizes(nsim)
    design_seed, sims_seed = seeds(rng, 2)
    if isinstance(src, _FromFit):
        src = src.with_design(np.random.default_rng(design_seed))
    parts = run_chunks(_test_chunk, sizes, sims_seed, n_jobs=n_jobs,
                       progress=progress, label=f"power {hyp.label()}", args=(src, hyp))
    rec = pd.concat(parts, ignore_index=True)
    n_tested = int(rec["ok"].sum())
    k = int(rec["reject"].sum())
    lo, hi = _binomial_ci(k, n_tested, level)
    return PowerResult(
        effect=hyp.label(), test=hyp.test, alpha=float(alpha), nsim=int(nsim),
        n_groups=getattr(src, "n_groups", None),
        group_size=getattr(src, "group_size", None),
        power=k / n_tested if n_tested else float("nan"), ci_lower=lo, ci_upper=hi,
        n_rejected=k, n_tested=n_tested, n_failed=int(nsim) - n_tested,
        n_singular=int((rec["singular"] & rec["ok"]).sum()),
        seconds=time.perf_counter() - t0,
        level=float(level), records=rec)


@dataclass(frozen=True)
class PowerCurve:
    """Power against a design variable (simr's ``powerCurve``): ``table`` has one row
    per value (``power``, ``ci_lower``, ``ci_upper``, ``n_tested``, ``n_failed``,
    ``n_singular``, ``seconds``); ``results`` the :class:`PowerResult` of each."""

    along: str
    effect: str
    test: str
    alpha: float
    target: float | None
    table: pd.DataFrame
    results: tuple[PowerResult, ...] = field(repr=False)

    def plot(self, ax=None):
        """Power with its exact CI against the values (spaced by value), the target
        line and alpha."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6.0, 4.0))
        t = self.table
        x = t[self.along].to_numpy(dtype=float)
        y = t["power"].to_numpy(dtype=float)
        err = np.vstack([np.clip(y - t["ci_lower"], 0, None), np.clip(t["ci_upper"] - y, 0,
                                                                         None)])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, lw=1.5)
        if self.target is not None:
            ax.axhline(self.target, color="grey", ls="--", lw=1,
                       label=f"target {self.target:g}")
        ax.axhline(self.alpha, color="grey", ls=":", lw=1, label=f"alpha {self.alpha:g}")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel({"n_groups": "number of groups J", "group_size": "group size n"}
                      [self.along])
        ax.set_ylabel("power")
        ax.set_title(f"{self.effect}: {self.test} test")
        ax.legend(loc="lower right", frameon=False)
        return ax


def power_curve(model: ModelSpec | FitResult, effect: str | Sequence[str], *,
                along: str = "n_groups", values: Sequence[int], target: float | None = 0.8,
                rng=None, progress: bool | None = None, **kwargs) -> PowerCurve:
    """:func:`power` at each of ``values`` of ``along`` ("n_groups" or "group_size"),
    each from its own child seed of ``rng``; ``kwargs`` go to :func:`power`. Passing
    larger values is simr's ``extend``."""
    if along not in ALONG:
        raise ValueError(f"along must be one of {ALONG}, got {along!r}")
    values = list(values)
    if not values:
        raise ValueError("give at least one value")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"values must be whole numbers, got {values}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"values must increase, got {values}")
    if target is not None and not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    results = []
    for v, s in zip(values, seeds(rng, len(values)), strict=True):
        results.append(power(model, effect, rng=s, progress=progress,
                             **{along: v}, **kwargs))
    table = pd.DataFrame({along: values,
                          "power": [r.power for r in results],
                          "ci_lower": [r.ci_lower for r in results],
                          "ci_upper": [r.ci_upper for r in results],
                          "n_tested": [r.n_tested for r in results],
                          "n_failed": [r.n_failed for r in results],
                          "n_singular": [r.n_singular for r in results],
                          "seconds": [r.seconds for r in results]})
    first = results[0]
    return PowerCurve(along, first.effect, first.test, first.alpha, target, table,
                      tuple(results))


@dataclass(frozen=True)
class SampleSize:
    """The smallest value of ``along`` whose power reaches ``target``: ``value``, its
    ``power`` with CI, and ``path``, every evaluation of the search (value, nsim so far,
    power, CI, verdict)."""

    along: str
    target: float
    value: int | None
    power: float
    ci_lower: float
    ci_upper: float
    path: pd.DataFrame
    note: str = ""

    def summary(self) -> str:
        if self.value is None:
            return f"no value reaches power {self.target}: {self.note}"
        return (f"{self.along} = {self.value}: power {self.power:.3f} "
                f"[{self.ci_lower:.3f}, {self.ci_upper:.3f}] >= {self.target} "
                f"({len(self.path)} evaluations)")


def sample_size(model: ModelSpec | FitResult, effect: str | Sequence[str], *,
                target: float = 0.8, along: str = "n_groups", lower: int = 5,
                upper: int = 200, step_nsim: int = 250, max_nsim: int = 2000, rng=None,
                progress: bool | None = False, **kwargs) -> SampleSize:
    """The smallest integer ``along`` in [``lower``, ``upper``] with power >= ``target``,
    by bisection with Monte Carlo error control (in the spirit of SimDesign's
    ``SimSolve``): at each value, replicates are added ``step_nsim`` at a time until
    the 95% exact CI of the power excludes the target or ``max_nsim`` are spent, and the
    verdict is then the point estimate. Power is assumed to grow with the value.
    ``kwargs`` go to :func:`power` (``test``, ``alpha``, ``group_size``, ...)."""
    if along not in ALONG:
        raise ValueError(f"along must be one of {ALONG}, got {along!r}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target}")
    if not (int(lower) >= 2 and int(upper) > int(lower)):
        raise ValueError(f"need 2 <= lower < upper, got {lower}, {upper}")
    if step_nsim < 1 or max_nsim < step_nsim:
        raise ValueError("need 1 <= step_nsim <= max_nsim")
    root = seeds(rng, 1)[0]
    path: list[dict] = []
    cache: dict[int, tuple[bool, dict]] = {}

    def evaluate(v: int) -> bool:
        if v in cache:
            return cache[v][0]
        recs: list[pd.DataFrame] = []
        value_seeds = np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, v)
                                             ).spawn(-(-max_nsim // step_nsim))
        row: dict = {}
        for i, s in enumerate(value_seeds):
            res = power(model, effect, nsim=step_nsim, rng=s, progress=progress,
                        **{along: v}, **kwargs)
            recs.append(res.records)
            rec = pd.concat(recs, ignore_index=True)
            n = int(rec["ok"].sum())
            k = int(rec["reject"].sum())
            lo, hi = _binomial_ci(k, n)
            pw = k / n if n else float("nan")
            row = {along: v, "nsim": len(rec), "power": pw, "ci_lower": lo, "ci_upper": hi}
            if lo > target or hi < target or (i + 1) * step_nsim >= max_nsim:
                break
        verdict = bool(row["power"] >= target)
        row["reaches_target"] = verdict
        path.append(row)
        cache[v] = (verdict, row)
        return verdict

    lo_v, hi_v = int(lower), int(upper)
    if not evaluate(hi_v):
        row = cache[hi_v][1]
        return SampleSize(along, target, None, row["power"], row["ci_lower"], row["ci_upper"],
                          pd.DataFrame(path), note=f"power at {along} = {hi_v} is "
                          f"{row['power']:.3f}; raise upper")
    if evaluate(lo_v):
        hi_v = lo_v
    else:
        while hi_v - lo_v > 1:
            mid = (lo_v + hi_v) // 2
            if evaluate(mid):
                hi_v = mid
            else:
                lo_v = mid
    row = cache[hi_v][1]
    return SampleSize(along, target, hi_v, row["power"], row["ci_lower"], row["ci_upper"],
                      pd.DataFrame(path))


def crt_power(effect: float, tau: float, sigma2: float, n_groups: int, group_size: int,
              alpha: float = 0.05, p: float = 0.5) -> float:
    """Exact power of the two-sided t test of the treatment effect in a cluster-randomised
    design (Raudenbush 1997; Optimal Design, PowerUpR): J groups of n, round(p J) treated,
    a random intercept with variance tau, residual variance sigma2. The estimator is the
    difference of the arms' means of group means, with variance
    (tau + sigma2 / n) (1 / J_1 + 1 / J_0), and t follows the noncentral t on J - 2 df
    with noncentrality lambda = effect / sqrt(that variance)."""
    J1 = round(p * n_groups)
    J0 = n_groups - J1
    if min(J1, J0) < 1 or n_groups < 3:
        raise ValueError("need at least one group per arm and J >= 3")
    lam = effect / np.sqrt((tau + sigma2 / group_size) * (1.0 / J1 + 1.0 / J0))
    df = n_groups - 2
    tc = sps.t.ppf(1.0 - alpha / 2.0, df)
    return float(sps.nct.sf(tc, df, lam) + sps.nct.cdf(-tc, df, lam))
