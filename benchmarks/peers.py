"""Peer runners: one two-level model fitted by mlmsim, statsmodels, mixedlm or lme4, timed.

The benchmarks compare mlmsim with the tools its users would otherwise reach for. This
module owns how each tool is called, how its time is measured and where its -2 log L
comes from, so that every benchmark (one fit at a time in ``bench_fit.py``, many
replicates in a study benchmark) calls the peers the same way.

A model is given as formula pieces (:class:`Model`): the response, the fixed-effect terms,
the random-effect terms of one grouping factor. Every runner takes ``(model, data, method)``
with ``method`` ``"ML"`` or ``"REML"`` and returns a :class:`PeerFit` ``(seconds, minus2ll)``:
the wall time of one fit, end to end from formula and DataFrame (parsing, design matrices,
optimisation, the tool's own post-fit checks), and the criterion the tool reached, -2 log L
for ML or -2 log L_R (lme4's REML criterion) for REML. Warnings a tool raises are not
printed; pass a list as ``notes`` to collect them.

lme4 runs in R through ``Rscript benchmarks/lme4_fit.R``; the data go over once as a CSV
file and R times each fit itself, so R's start-up and the CSV transfer are not counted.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

__all__ = [
    "LME4_SCRIPT",
    "Model",
    "PeerFit",
    "RUNNERS",
    "available",
    "fit_lme4",
    "fit_lme4_many",
    "fit_mixedlm",
    "fit_mlmsim",
    "fit_statsmodels",
    "median",
    "repeat_fit",
    "thread_env",
]

LME4_SCRIPT = Path(__file__).with_name("lme4_fit.R")
METHODS = ("ML", "REML")


class PeerFit(NamedTuple):
    """One timed fit: wall seconds and the criterion reached (-2 log L or -2 log L_R)."""

    seconds: float
    minus2ll: float


@dataclass(frozen=True)
class Model:
    """Formula pieces of a two-level model with one grouping factor.

    ``fixed`` are the fixed-effect terms besides the intercept (always included), ``random``
    the random-effect terms besides the random intercept, ``random_intercept`` whether
    there is one. ``Model("y", ("x",), ("x",), "g")`` is lme4's ``y ~ 1 + x + (1 + x | g)``.
    """

    response: str
    fixed: tuple[str, ...] = ()
    random: tuple[str, ...] = ()
    group: str = "g"
    random_intercept: bool = True

    @classmethod
    def parse(cls, formula: str) -> Model:
        """Read ``"y ~ x + z + (1 + x | g)"`` (one bar term, correlated effects)."""
        m = re.fullmatch(r"\s*([\w.]+)\s*~(.*)", formula)
        if m is None:
            raise ValueError(f"not a formula: {formula!r}")
        response, rhs = m.groups()
        bars = re.findall(r"\(([^()|]*)\|\s*([\w.]+)\s*\)", rhs)
        if len(bars) != 1:
            raise ValueError(f"need exactly one (terms | group) term: {formula!r}")
        re_terms, group = bars[0]
        fixed_rhs = re.sub(r"\([^()|]*\|[^()]*\)", "", rhs)
        fixed = tuple(t for t in _terms(fixed_rhs) if t not in ("1", "0"))
        random = _terms(re_terms)
        return cls(
            response=response,
            fixed=fixed,
            random=tuple(t for t in random if t not in ("1", "0")),
            group=group,
            random_intercept="0" not in random,
        )

    @property
    def lme4(self) -> str:
        """The lme4 formula, e.g. ``y ~ 1 + x + (1 + x | g)``."""
        re_terms = " + ".join(("1" if self.random_intercept else "0",) + self.random)
        return f"{self.fixed_formula} + ({re_terms} | {self.group})"

    @property
    def fixed_formula(self) -> str:
        """The fixed part as a formula, e.g. ``y ~ 1 + x`` (statsmodels' ``formula``)."""
        return f"{self.response} ~ " + " + ".join(("1",) + self.fixed)

    @property
    def re_formula(self) -> str:
        """statsmodels' ``re_formula``, e.g. ``~1 + x``."""
        return "~" + " + ".join(("1" if self.random_intercept else "0",) + self.random)

    @property
    def columns(self) -> list[str]:
        """Data columns the model reads (a rough cut: terms split on ``:`` and ``*``)."""
        names = [self.response, self.group]
        for term in self.fixed + self.random:
            names += [v.strip() for v in re.split(r"[:*]", term)]
        return list(dict.fromkeys(names))


def _terms(rhs: str) -> list[str]:
    return [t.strip() for t in rhs.split("+") if t.strip()]


def _check_method(method: str) -> str:
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"method must be 'ML' or 'REML', not {method!r}")
    return method


def _note_warnings(caught: Sequence[warnings.WarningMessage], notes: list[str] | None) -> None:
    if notes is None:
        return
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
        if text not in notes:
            notes.append(text)


# ---------------------------------------------------------------------------
# Python tools: timed in-process with time.perf_counter
# ---------------------------------------------------------------------------


def fit_mlmsim(
    model: Model, data: pd.DataFrame, method: str, notes: list[str] | None = None
) -> PeerFit:
    """``mlmsim.fit(formula, data, method=...)``; -2LL is ``FitResult.deviance``."""
    from mlmsim import fit

    method = _check_method(method)
    formula = model.lme4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = fit(formula, data, method=method)
        seconds = time.perf_counter() - t0
    _note_warnings(caught, notes)
    if notes is not None and not res.converged:
        notes.extend(m for m in res.messages if m not in notes)
    return PeerFit(seconds, float(res.deviance))


def fit_statsmodels(
    model: Model, data: pd.DataFrame, method: str, notes: list[str] | None = None
) -> PeerFit:
    """statsmodels ``smf.mixedlm(fixed, data, groups=g, re_formula=...).fit(reml=...)``.

    Called with its defaults, as a user would. -2LL is ``-2 * result.llf``; statsmodels'
    ``llf`` is on lme4's scale (it matches lme4 where both find the same optimum), so a
    larger value means statsmodels stopped short of the optimum.
    """
    import statsmodels.formula.api as smf

    method = _check_method(method)
    fixed, re_formula = model.fixed_formula, model.re_formula
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        mod = smf.mixedlm(fixed, data, groups=model.group, re_formula=re_formula)
        res = mod.fit(reml=method == "REML")
        seconds = time.perf_counter() - t0
    _note_warnings(caught, notes)
    if notes is not None and not res.converged and "not converged" not in notes:
        notes.append("not converged")
    return PeerFit(seconds, -2.0 * float(res.llf))


def fit_mixedlm(
    model: Model, data: pd.DataFrame, method: str, notes: list[str] | None = None
) -> PeerFit:
    """mixedlm (Rust-backed lme4 port) ``lmer(formula, data, REML=...)``.

    -2LL is ``result.deviance``, its objective: the ML deviance or the REML criterion.
    """
    import mixedlm

    method = _check_method(method)
    formula = model.lme4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        res = mixedlm.lmer(formula, data, REML=method == "REML")
        seconds = time.perf_counter() - t0
    _note_warnings(caught, notes)
    return PeerFit(seconds, float(res.deviance))


# ---------------------------------------------------------------------------
# lme4 through Rscript: data written once as CSV, each fit timed inside R
# ---------------------------------------------------------------------------


def _rscript() -> str | None:
    return shutil.which("Rscript")


def fit_lme4_many(
    model: Model,
    datasets: Sequence[pd.DataFrame],
    method: str,
    repeats: int = 1,
    warmup: int = 1,
    notes: list[str] | None = None,
    timeout: float | None = None,
    ddf: str | None = None,
) -> list[list[PeerFit]]:
    """Fit ``model`` with lme4 to each data set, ``repeats`` times each, timed inside R.
    With ``ddf="kenward-roger"`` each timed fit also computes pbkrtest's ``vcovAdj`` and
    every coefficient's KR df (``Lb_ddf``).

    All data sets go to R in one CSV file (a replicate column tells them apart), one
    ``Rscript`` process fits them all: ``warmup`` untimed fits of the first data set,
    then for each data set ``repeats`` timed calls of ``lmer(formula, data, REML=...)``.
    Returns one list of :class:`PeerFit` per data set. lme4 runs with its defaults
    (optimizer nloptwrap; finite-difference Hessian check when n < 10,000).
    """
    method = _check_method(method)
    rscript = _rscript()
    if rscript is None:
        raise RuntimeError("Rscript not found")
    cols = model.columns
    with tempfile.TemporaryDirectory(prefix="mlmsim-bench-") as tmp:
        path = Path(tmp) / "data.csv"
        frames = [d[cols].assign(**{".rep": i}) for i, d in enumerate(datasets)]
        # repr-exact floats, so R sees the same doubles as the Python tools
        pd.concat(frames, ignore_index=True).to_csv(path, index=False)
        cmd = [
            rscript, "--vanilla", str(LME4_SCRIPT), str(path), model.lme4,
            "TRUE" if method == "REML" else "FALSE", str(repeats), str(warmup),
            ddf or "none",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"lme4_fit.R failed:\n{proc.stderr[-2000:]}")
    out: list[list[PeerFit]] = [[] for _ in datasets]
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if fields[0] == "fit":
            rep, seconds, m2ll = int(fields[1]), float(fields[3]), float(fields[4])
            out[rep].append(PeerFit(seconds, m2ll))
        elif fields[0] == "msg" and notes is not None and fields[2] not in notes:
            notes.append(fields[2])
    return out


def fit_lme4(
    model: Model, data: pd.DataFrame, method: str, notes: list[str] | None = None
) -> PeerFit:
    """One lme4 fit (an ``Rscript`` process per call: use :func:`fit_lme4_many` for loops)."""
    return fit_lme4_many(model, [data], method, repeats=1, warmup=0, notes=notes)[0][0]


# ---------------------------------------------------------------------------
# Availability and repetition
# ---------------------------------------------------------------------------


RUNNERS: dict[str, Callable[..., PeerFit]] = {
    "mlmsim": fit_mlmsim,
    "statsmodels": fit_statsmodels,
    "mixedlm": fit_mixedlm,
    "lme4": fit_lme4,
}


@functools.cache
def available(tool: str) -> tuple[bool, str]:
    """``(True, version)`` if ``tool`` can run here, else ``(False, reason)``."""
    if tool == "lme4":
        rscript = _rscript()
        if rscript is None:
            return False, "Rscript not on PATH"
        expr = 'cat(as.character(packageVersion("lme4")), R.version$major, R.version$minor)'
        proc = subprocess.run(
            [rscript, "--vanilla", "-e", expr], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            return False, "R package lme4 not installed"
        lme4_version, major, minor = proc.stdout.split()
        return True, f"{lme4_version} (R {major}.{minor})"
    module = {"mlmsim": "mlmsim", "statsmodels": "statsmodels", "mixedlm": "mixedlm"}[tool]
    try:
        version = importlib.metadata.version(module)
        if tool == "mlmsim":
            from mlmsim import fit  # noqa: F401  (the engine may not be there yet)
        else:
            __import__(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip this tool"
        return False, f"not importable ({type(exc).__name__}: {exc})"
    return True, version


def repeat_fit(
    tool: str,
    model: Model,
    data: pd.DataFrame,
    method: str,
    repeats: int,
    warmup: int = 1,
    notes: list[str] | None = None,
    budget: float | None = None,
    min_repeats: int = 5,
) -> list[PeerFit]:
    """Fit the same data ``repeats`` times with ``tool`` after ``warmup`` untimed fits.

    With ``budget`` (seconds), a Python tool stops after ``min_repeats`` fits once its
    total time exceeds the budget (the caller reports how many fits were made).
    lme4 always makes ``repeats`` fits, in one R process.
    """
    if tool == "lme4":
        return fit_lme4_many(model, [data], method, repeats, warmup, notes)[0]
    runner = RUNNERS[tool]
    for _ in range(warmup):
        runner(model, data, method, notes)
    fits: list[PeerFit] = []
    total = 0.0
    for _ in range(repeats):
        fits.append(runner(model, data, method, notes))
        total += fits[-1].seconds
        if budget is not None and len(fits) >= min_repeats and total > budget:
            break
    return fits


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (NaN when empty)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = len(s) // 2
    return s[k] if len(s) % 2 else 0.5 * (s[k - 1] + s[k])


def thread_env() -> dict[str, str]:
    """Environment variables that set BLAS / OpenMP / Rayon threads and kernels."""
    keys = ("OPENBLAS_", "OMP_", "MKL_", "RAYON_", "BLIS_")
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(keys)}
