"""Throughput of a simulation study: fits per second, end to end, mlmsim against peers' loops.

A method study draws thousands of data sets and fits each. This benchmark measures how
many fits per second that comes to, end to end (data generation + fit + records), for:

- **mlmsim batched**: ``Study(None, FromSpec(spec, J, sizes), [FormulaMethod(formula,
  method, batch=True, batch_size=B)], n_reps=R).run(n_jobs=2)``, for each B of
  ``--batch-sizes`` (the runner fits blocks of B replicates in one vectorised pass and
  aligns its chunks to B);
- **mlmsim one at a time**: the same with ``batch=False`` (one ``mlmsim.fit`` per
  replicate), on fewer replicates;
- **peers**: a loop of single fits, one process (one core), over replicates of the same
  study (``study.regenerate``) drawn before timing: statsmodels ``MixedLM``, mixedlm and
  lme4 (one ``Rscript`` process looping ``lmer()``, timed inside R), each called as
  ``peers.py`` calls it. Peers' generation is *excluded*: their fits/s is fits / the sum
  of their fit times. A peer's "x2 cores (ideal)" rate is twice its one-core rate (two
  such loops side by side, with no overhead), the fair yardstick for mlmsim on 2 cores.

Cases (``--cases``, default all):

  slope30  J = 30 groups of 5, ``y ~ 1 + x + (1 + x | g)``, REML
  hsb160   J = 160 groups sized as HSB's schools (7,185 rows), ``y ~ 1 + x + (1 + x | g)``, ML
  int10    J = 10 groups of 5, ``y ~ 1 + x + (1 | g)``, REML, ICC 0.05 (about 40% singular)

mlmsim's fits/s = replicates x methods / wall seconds of ``run()`` plus building the
records DataFrame (``result.records``), kept in memory (``--disk``: Parquet chunks in a
temporary directory, read back and verified). The loky workers are started by an untimed
warm-up run first. Per case, a one-core stage split follows (in this process, one
batch size): generation, the batched fit (``fit_batch`` on the generated DataFrames),
the runner's own work (seeds, Estimates, records), and for reference the array path
(``simulate_batch`` + ``fit_arrays``) that skips DataFrames.

``--ddf kenward-roger`` (REML cases) makes every mlmsim record carry each fixed effect's KR
df and p (batched: one compiled pass of the KR terms per block), and the lme4 peer compute
pbkrtest's ``vcovAdj`` and each coefficient's KR df after every fit (the other peers have
no KR and are left out).

``--maas-hox`` also runs the Maas and Hox (2005) sized design, 27 conditions x 1000
replicates, REML with a random intercept and slope (tau00, tau01, tau11), through the
runner from a cold start of the workers, and reports its wall time and flag counts.

Run from the repository root::

    python benchmarks/bench_study.py                       # all cases, every installed peer
    python benchmarks/bench_study.py --cases slope30 --no-r --maas-hox --json out.json
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_study.py    # one BLAS thread everywhere
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mlmsim
from mlmsim import (
    Continuous,
    FormulaMethod,
    FromSpec,
    Level2Continuous,
    ModelSpec,
    SizeList,
    Study,
    fit_arrays,
    fit_batch,
    simulate,
    simulate_batch,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fit  # noqa: E402  (sibling module: the environment header)
import peers  # noqa: E402
from peers import Model, PeerFit  # noqa: E402

PEERS = ("statsmodels", "mixedlm", "lme4")
TOOLS = ("mlmsim",) + PEERS
BATCH_SIZES = (32, 128, 256, 512, 1000)
TARGET_FITS = 10_000  # fits/s, slope30, mlmsim batched on 2 cores
TARGET_RATIO = 15.0   # x the best peer's loop, every case
TARGET_MAAS_HOX = 60.0  # seconds


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------


def slope_spec() -> ModelSpec:
    """y = 1 + 0.5 x + U0 + U1 x + R; x ~ N(0, 1); T = [[1, .1], [.1, .25]]; sigma^2 = 1."""
    return ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                     random=["Intercept", "x"], T=[[1.0, 0.1], [0.1, 0.25]], sigma2=1.0)


def hsb_spec() -> ModelSpec:
    """HSB's ``mathach ~ cses + (1 + cses | school)`` ML estimates as the truth; x is
    within-school (var 0.44, as cses)."""
    return ModelSpec(predictors=[Continuous("x", var_within=0.44)],
                     gamma={"Intercept": 12.65, "x": 2.19}, random=["Intercept", "x"],
                     T=[[8.62, 0.05], [0.05, 0.68]], sigma2=36.7)


def intercept_spec() -> ModelSpec:
    """y = 1 + 0.5 x + U0 + R; tau00 = 0.05, sigma^2 = 1 (ICC 0.048): many boundary fits."""
    return ModelSpec(predictors=[Continuous("x")], gamma={"Intercept": 1.0, "x": 0.5},
                     random=["Intercept"], T=0.05, sigma2=1.0)


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    spec: Callable[[], ModelSpec]
    n_groups: int
    group_size: int | str  # an int, or "hsb" for HSB's 160 school sizes
    method: str
    reps: int         # batched runner replicates
    single_reps: int  # one-at-a-time runner replicates
    split_reps: int   # one-core stage split
    peer_reps: int    # data sets per peer (fewer when a Python peer runs over --budget)
    seed: int

    def sizes(self) -> int | SizeList:
        if self.group_size == "hsb":
            return SizeList.from_dataset("hsb")
        return int(self.group_size)

    def generator(self) -> FromSpec:
        return FromSpec(self.spec(), self.n_groups, self.sizes())

    @property
    def formula(self) -> str:
        return self.spec().formula


CASES = {
    c.key: c
    for c in (
        Case("slope30", "J=30 x 5, slope, REML", slope_spec, 30, 5, "REML",
             reps=20_000, single_reps=1_000, split_reps=4_000, peer_reps=200, seed=301),
        Case("hsb160", "J=160 HSB sizes, slope, ML", hsb_spec, 160, "hsb", "ML",
             reps=2_000, single_reps=200, split_reps=500, peer_reps=100, seed=302),
        Case("int10", "J=10 x 5, intercept, REML", intercept_spec, 10, 5, "REML",
             reps=20_000, single_reps=1_000, split_reps=4_000, peer_reps=200, seed=303),
    )
}
ALIASES = {"1": "slope30", "2": "hsb160", "3": "int10"}


# ---------------------------------------------------------------------------
# Measuring: wall time and the CPU other processes took meanwhile
# ---------------------------------------------------------------------------


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class CpuMeter:
    """Wall seconds of a block, and CPU seconds other processes used meanwhile.

    Others' CPU = the machine's busy CPU time minus that of this process and its
    children (the loky workers, Rscript); needs psutil, else None.
    """

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - depends on the environment
            psutil = None
        self.psutil = psutil

    def _own(self) -> float:
        p = self.psutil.Process()
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in p.children(recursive=True):
            try:
                c = child.cpu_times()
                total += c.user + c.system
            except self.psutil.Error:
                pass
        return total

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        return sum(t) - idle

    def __enter__(self) -> CpuMeter:
        self.others: float | None = None
        if self.psutil is not None:
            self._b0, self._o0 = self._busy(), self._own()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        if self.psutil is not None:
            busy, own = self._busy() - self._b0, self._own() - self._o0
            self.others = max(0.0, busy - own)

    def idle_sample(self, seconds: float = 1.0) -> float | None:
        """Cores other processes keep busy, sampled while this benchmark sleeps."""
        if self.psutil is None:
            return None
        with self:
            time.sleep(seconds)
        return self.others / self.wall


def _others_text(meter: CpuMeter) -> str:
    if meter.others is None:
        return ""
    return f"others {meter.others / meter.wall:.2f} cores"


# ---------------------------------------------------------------------------
# mlmsim through the study runner
# ---------------------------------------------------------------------------


def rows_of(data: pd.DataFrame) -> float:
    """A trivial method: generation (and the runner) alone."""
    return float(len(data))


def _fit_counts(records: pd.DataFrame) -> dict[str, int]:
    """Per fit (one record per parameter): singular, not converged, errors, non-PD H."""
    fits = records.drop_duplicates(["condition", "rep", "method"])

    def count(col: str, value: bool) -> int:
        return int((fits[col].fillna(not value) == value).sum())

    return {"fits": len(fits), "singular": count("singular", True),
            "not_converged": count("converged", False), "errors": int(fits.error.notna().sum()),
            "hessian_not_pd": count("hessian_pd", False),
            "refitted": int(fits.messages.fillna("").str.contains("refitted alone").sum())}


def run_study(study: Study, n_jobs: int, disk: bool) -> tuple[CpuMeter, pd.DataFrame]:
    """Run a study and build its records DataFrame, timed; records in memory or on disk."""
    with tempfile.TemporaryDirectory(prefix="mlmsim-bench-") as tmp:
        with CpuMeter() as meter:
            res = study.run(tmp if disk else None, n_jobs=n_jobs, progress=False)
            records = res.records
    return meter, records


def warm_up(n_jobs: int) -> None:
    """Start the loky workers and import mlmsim in them (untimed)."""
    case = CASES["slope30"]
    # both routes, so that every worker has loaded the compiled code of each (a worker's
    # first use of a compiled function reads it from numba's cache)
    for batch in (True, False):
        study = Study(None, case.generator(),
                      [FormulaMethod(case.formula, "REML", batch=batch, batch_size=32)],
                      n_reps=64 * max(1, n_jobs), seed=1)
        study.run(n_jobs=n_jobs, progress=False, chunk_size=32)


def mlmsim_runs(case: Case, reps: int, single_reps: int, batch_sizes: list[int], n_jobs: int,
                disk: bool, ddf: str | None = None) -> list[dict[str, Any]]:
    rows = []
    gen = case.generator()
    for bs in batch_sizes:
        method = FormulaMethod(case.formula, case.method, batch=True, batch_size=bs, ddf=ddf)
        study = Study(None, gen, [method], n_reps=reps, seed=case.seed)
        meter, records = run_study(study, n_jobs, disk)
        rows.append(_runner_row(case, f"mlmsim batched, batch_size {bs}", "batched", bs, reps,
                                n_jobs, meter, _fit_counts(records)))
    if single_reps:
        method = FormulaMethod(case.formula, case.method, batch=False, ddf=ddf)
        study = Study(None, gen, [method], n_reps=single_reps, seed=case.seed)
        meter, records = run_study(study, n_jobs, disk)
        rows.append(_runner_row(case, "mlmsim one at a time", "single", None, single_reps,
                                n_jobs, meter, _fit_counts(records)))
    study = Study(None, gen, {"rows": rows_of}, truth={"rows": math.nan}, n_reps=reps,
                  seed=case.seed)
    meter, _ = run_study(study, n_jobs, disk)
    rows.append(_runner_row(case, "generation only (trivial method)", "generate", None, reps,
                            n_jobs, meter, {}))
    return rows


def _runner_row(case: Case, label: str, mode: str, bs: int | None, reps: int, n_jobs: int,
                meter: CpuMeter, counts: dict[str, int]) -> dict[str, Any]:
    row = {"case": case.key, "tool": "mlmsim", "label": label, "mode": mode,
           "batch_size": bs, "cores": n_jobs, "reps": reps, "wall_s": meter.wall,
           "fits_per_s": reps / meter.wall, "others_cpu_s": meter.others, **counts}
    flags = ""
    if counts:
        flags = (f"singular {counts['singular']}, not converged {counts['not_converged']}, "
                 f"errors {counts['errors']}")
    print(f"  {label}: {reps:,} reps in {meter.wall:.2f} s = {row['fits_per_s']:,.0f} fits/s"
          f"  [{_others_text(meter)}{'; ' + flags if flags else ''}]", flush=True)
    return row


# ---------------------------------------------------------------------------
# One-core stage split (in this process)
# ---------------------------------------------------------------------------


class TimedGenerate:
    """``generate`` that adds up the seconds spent in it (in-process runs only)."""

    def __init__(self, inner: FromSpec):
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, condition: Any, rng: np.random.Generator) -> Any:
        t0 = time.perf_counter()
        out = self.inner(condition, rng)
        self.seconds += time.perf_counter() - t0
        return out

    def draw(self, condition: Any, rng: np.random.Generator) -> Any:
        t0 = time.perf_counter()
        out = self.inner.draw(condition, rng)
        self.seconds += time.perf_counter() - t0
        return out

    def truth(self, condition: Any) -> pd.Series:
        return self.inner.truth(condition)

    def descriptor(self) -> dict:
        return {"timed": self.inner.descriptor()}


class TimedMethod:
    """A FormulaMethod whose (batched) fits add up their seconds (engine + Estimates)."""

    takes_rng = False
    takes_sim_batch = True

    def __init__(self, inner: FormulaMethod):
        self.inner = inner
        self.name = inner.name
        self.batch = inner.batch
        self.batch_size = inner.batch_size
        self.seconds = 0.0

    def __call__(self, data: Any) -> Any:
        t0 = time.perf_counter()
        out = self.inner(data)
        self.seconds += time.perf_counter() - t0
        return out

    @property
    def fit_batch(self) -> Callable[[list], list] | None:
        inner = self.inner.fit_batch
        if inner is None:
            return None

        def timed(datasets: list) -> list:
            t0 = time.perf_counter()
            out = inner(datasets)
            self.seconds += time.perf_counter() - t0
            return out

        return timed

    def descriptor(self) -> dict:
        return {"timed": self.inner.descriptor()}


def stage_split(case: Case, bs: int, n: int, batch_sizes: list[int]) -> dict[str, Any]:
    """Microseconds per replicate of each stage, one core, in this process."""
    gen = TimedGenerate(case.generator())
    method = TimedMethod(FormulaMethod(case.formula, case.method, batch=True, batch_size=bs))
    study = Study(None, gen, [method], n_reps=n, seed=case.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Study(None, gen, [method], n_reps=min(n, bs), seed=1).run(n_jobs=1, progress=False)
        gen.seconds = method.seconds = 0.0
        with CpuMeter() as meter:
            _ = study.run(n_jobs=1, progress=False).records
    us = 1e6 / n
    out: dict[str, Any] = {
        "case": case.key, "batch_size": bs, "reps": n,
        "runner_total_us": meter.wall * us,
        "generate_us": gen.seconds * us,
        "fit_batch_and_estimates_us": method.seconds * us,
        "runner_rest_us": (meter.wall - gen.seconds - method.seconds) * us,
        "others_cpu_s": meter.others,
    }
    # the batched fit alone, on DataFrames drawn beforehand (what the runner hands it)
    spec, sizes = case.spec(), case.sizes()
    datasets = [simulate(spec, case.n_groups, sizes, rng=np.random.default_rng(i))
                for i in range(n)]
    fit_alone = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_batch(case.formula, datasets[:min(n, 32)], case.method)
        for b in batch_sizes:
            t0 = time.perf_counter()
            for a in range(0, n, b):
                fit_batch(case.formula, datasets[a:a + b], case.method)
            fit_alone[b] = (time.perf_counter() - t0) * us
        # the array path: simulate_batch + fit_arrays, no DataFrames
        t_gen = t_fit = 0.0
        for a in range(0, n, bs):
            t0 = time.perf_counter()
            sb = simulate_batch(spec, min(bs, n - a), case.n_groups, sizes,
                                rng=np.random.default_rng(a))
            t1 = time.perf_counter()
            fit_arrays(**sb.arrays(), method=case.method)
            t_fit += time.perf_counter() - t1
            t_gen += t1 - t0
    out["fit_batch_alone_us"] = fit_alone
    out["array_path_generate_us"] = t_gen * us
    out["array_path_fit_us"] = t_fit * us
    return out


def print_split(s: dict[str, Any], n_jobs: int) -> None:
    def rate(us: float) -> str:
        return f"{1e6 / us:,.0f}/s"

    print(f"  stage split, one core in this process, batch_size {s['batch_size']}, "
          f"{s['reps']:,} reps (us per replicate):")
    print(f"    runner end to end  {s['runner_total_us']:8.1f}  ({rate(s['runner_total_us'])}"
          f"; x{n_jobs} ideal {n_jobs * 1e6 / s['runner_total_us']:,.0f}/s)")
    print(f"      generate (arrays per replicate)     {s['generate_us']:8.1f}")
    print(f"      fit_batch + Estimates               {s['fit_batch_and_estimates_us']:8.1f}")
    print(f"      runner rest (seeds, records)        {s['runner_rest_us']:8.1f}")
    alone = ", ".join(f"B={b}: {us:.0f}" for b, us in s["fit_batch_alone_us"].items())
    print(f"    fit_batch alone on drawn DataFrames: {alone}")
    print(f"    array path (simulate_batch + fit_arrays, B={s['batch_size']}): generate "
          f"{s['array_path_generate_us']:.1f} + fit {s['array_path_fit_us']:.1f} us "
          f"(x{n_jobs} ideal "
          f"{n_jobs * 1e6 / (s['array_path_generate_us'] + s['array_path_fit_us']):,.0f}/s)")


# ---------------------------------------------------------------------------
# Peers: single-process loops over pre-drawn replicates
# ---------------------------------------------------------------------------


def peer_datasets(case: Case, n: int) -> list[pd.DataFrame]:
    """Replicates 0..n-1 of the case's study (the same data the runner fits first)."""
    study = Study(None, case.generator(), {"rows": rows_of}, truth={"rows": math.nan},
                  n_reps=max(n, 1), seed=case.seed)
    return [study.regenerate(0, r) for r in range(n)]


def peer_loop(tool: str, model: Model, datasets: list[pd.DataFrame], method: str,
              budget: float, min_fits: int = 5, ddf: str | None = None
              ) -> tuple[list[PeerFit], list[str]]:
    """Fit the data sets one after another (after one untimed warm-up fit).

    A Python tool stops after ``min_fits`` fits once its fit time exceeds ``budget``;
    lme4 fits them all in one R process (with ``ddf="kenward-roger"``, each fit followed by
    pbkrtest's KR adjustment and df).
    """
    notes: list[str] = []
    if tool == "lme4":
        out = peers.fit_lme4_many(model, datasets, method, repeats=1, warmup=1, notes=notes,
                                  ddf=ddf)
        return [f[0] for f in out], notes
    runner = peers.RUNNERS[tool]
    runner(model, datasets[0], method)
    fits: list[PeerFit] = []
    total = 0.0
    for d in datasets:
        fits.append(runner(model, d, method, notes))
        total += fits[-1].seconds
        if len(fits) >= min_fits and total > budget:
            break
    return fits, notes


def peer_runs(case: Case, tools: list[str], n: int, budget: float,
              with_mlmsim: bool = True, ddf: str | None = None) -> list[dict[str, Any]]:
    model = Model.parse(case.formula)
    datasets = peer_datasets(case, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(fit_batch(case.formula, datasets, case.method).deviance)
    rows = []
    if ddf is not None:  # only lme4 (+ pbkrtest) computes KR df among the peers
        tools, with_mlmsim = [t for t in tools if t == "lme4"], False
    for tool in (["mlmsim"] if with_mlmsim else []) + tools:
        label = "mlmsim fit loop (no generation)" if tool == "mlmsim" else f"{tool} loop"
        with CpuMeter() as meter:
            try:
                fits, notes = peer_loop(tool, model, datasets, case.method, budget,
                                        ddf=ddf)
            except Exception as exc:  # noqa: BLE001 - a failing peer is a result
                print(f"  {label}: failed: {type(exc).__name__}: {exc}", flush=True)
                rows.append({"case": case.key, "tool": tool, "label": label, "error": str(exc)})
                continue
        secs = np.array([f.seconds for f in fits])
        m2ll = np.array([f.minus2ll for f in fits])
        diff = m2ll - ref[:len(fits)]
        row = {"case": case.key, "tool": tool, "label": label, "mode": "loop", "cores": 1,
               "reps": len(fits), "wall_s": float(secs.sum()),
               "fits_per_s": len(fits) / float(secs.sum()), "median_ms": 1e3 * np.median(secs),
               "loop_wall_s": meter.wall, "others_cpu_s": meter.others,
               "above_mlmsim": int((diff > 1e-3).sum()), "below_mlmsim": int((diff < -1e-3).sum()),
               "max_below": float(-diff.min()) if diff.size else math.nan, "notes": notes}
        rows.append(row)
        cut = f" (stopped at {len(fits)}: over {budget:.0f} s)" if len(fits) < n else ""
        print(f"  {label}: {len(fits)} fits{cut}, {row['fits_per_s']:,.1f} fits/s (median "
              f"{row['median_ms']:.2f} ms); -2LL vs mlmsim's: {row['above_mlmsim']} higher, "
              f"{row['below_mlmsim']} lower by > 1e-3  [{_others_text(meter)}]", flush=True)
        for text in notes[:3]:
            print(f"      note: {text[:110]}")
    return rows


# ---------------------------------------------------------------------------
# Maas and Hox (2005) sized design
# ---------------------------------------------------------------------------


MAAS_HOX_GRID = {"n_groups": [30, 50, 100], "group_size": [5, 30, 50], "icc": [0.1, 0.2, 0.3]}


def maas_hox_spec(condition: Any) -> ModelSpec:
    """y = 1 + .3 X + .3 Z + .3 XZ + u0 + u1 X + e; sigma^2 = .5, tau00 = tau11 =
    ICC * .5 / (1 - ICC), tau01 = 0; X level 1 and Z level 2, standard normal."""
    tau = condition["icc"] * 0.5 / (1.0 - condition["icc"])
    return ModelSpec(predictors=[Continuous("X"), Level2Continuous("Z")],
                     gamma={"Intercept": 1.0, "X": 0.3, "Z": 0.3, "X:Z": 0.3},
                     random=["Intercept", "X"], T=np.diag([tau, tau]), sigma2=0.5)


def _stop_workers() -> None:
    """Shut the reusable loky executor (this benchmark's own workers) for a cold start."""
    try:
        from joblib.externals.loky import get_reusable_executor
    except ImportError:  # pragma: no cover
        return
    get_reusable_executor().shutdown(wait=True)


def run_maas_hox(reps: int, batch_size: int, n_jobs: int, disk: bool,
                 cold: bool = True) -> dict[str, Any]:
    formula = maas_hox_spec({"icc": 0.2}).formula
    study = Study(MAAS_HOX_GRID, FromSpec(maas_hox_spec, "n_groups", "group_size"),
                  [FormulaMethod(formula, "REML", batch=True, batch_size=batch_size)],
                  n_reps=reps, seed=2005)
    n_cond = len(study.conditions)
    print(f"\nMaas and Hox (2005) sized design: {n_cond} conditions x {reps:,} replicates, "
          f"{formula}, REML, batch_size {batch_size}, n_jobs={n_jobs}, "
          f"{'cold start (workers started inside the timing)' if cold else 'warm workers'}; "
          f"load average {_loadavg()}, others {CpuMeter().idle_sample() or 0:.2f} cores",
          flush=True)
    if cold:
        _stop_workers()
    meter, records = run_study(study, n_jobs, disk)
    counts = _fit_counts(records)
    fits = records.drop_duplicates(["condition", "rep", "method"])
    by_size = fits.groupby("group_size").singular.apply(lambda s: int(s.fillna(False).sum()))
    out = {"conditions": n_cond, "reps": reps, "batch_size": batch_size, "n_jobs": n_jobs,
           "cold": cold, "wall_s": meter.wall, "fits_per_s": counts["fits"] / meter.wall,
           "others_cpu_s": meter.others, "records": len(records), **counts,
           "singular_by_group_size": {int(k): v for k, v in by_size.items()}}
    ok = "met" if meter.wall < TARGET_MAAS_HOX else "NOT met"
    print(f"  {counts['fits']:,} fits in {meter.wall:.1f} s ({out['fits_per_s']:,.0f} fits/s; "
          f"target < {TARGET_MAAS_HOX:.0f} s: {ok})  [{_others_text(meter)}]")
    print(f"  singular {counts['singular']} (by group size {out['singular_by_group_size']}), "
          f"not converged {counts['not_converged']}, errors {counts['errors']}, "
          f"non-PD Hessian {counts['hessian_not_pd']}, refitted alone {counts['refitted']}")
    return out


# ---------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------


def best_peer(rows: list[dict[str, Any]], case: str) -> dict[str, Any] | None:
    cands = [r for r in rows if r["case"] == case and r.get("tool") in PEERS and "error" not in r]
    return max(cands, key=lambda r: r["fits_per_s"], default=None)


def print_table(rows: list[dict[str, Any]], n_jobs: int) -> list[dict[str, Any]]:
    head = (f"{'case':<8} {'what':<36} {'cores':>5} {'reps':>7} {'wall s':>8} {'fits/s':>10} "
            f"{'x2 ideal':>9} {'/ best peer':>11} {'/ peer x2':>9} {'sing':>6} {'nconv':>5}")
    print("\n" + head)
    print("-" * len(head))
    verdicts = []
    for case in dict.fromkeys(r["case"] for r in rows):
        peer = best_peer(rows, case)
        base = peer["fits_per_s"] if peer else None
        for r in (r for r in rows if r["case"] == case):
            if "error" in r:
                print(f"{case:<8} {r['label']:<36} {'failed':>5}")
                continue
            ideal = f"{2 * r['fits_per_s']:>9,.0f}" if r["cores"] == 1 else f"{'':>9}"
            if base and r["tool"] == "mlmsim" and r["mode"] != "generate":
                ratio = f"{r['fits_per_s'] / base:>10.1f}x {r['fits_per_s'] / (2 * base):>8.1f}x"
            else:
                ratio = f"{'':>11} {'':>9}"
            sing = f"{r['singular']:>6}" if "singular" in r else f"{'':>6}"
            nconv = f"{r['not_converged']:>5}" if "not_converged" in r else f"{'':>5}"
            print(f"{case:<8} {r['label'][:36]:<36} {r['cores']:>5} {r['reps']:>7,} "
                  f"{r['wall_s']:>8.2f} {r['fits_per_s']:>10,.1f} {ideal} {ratio} {sing} {nconv}")
        batched = [r for r in rows if r["case"] == case and r.get("mode") == "batched"]
        if batched:
            top = max(batched, key=lambda r: r["fits_per_s"])
            v = {"case": case, "mlmsim_batched_fits_per_s": top["fits_per_s"],
                 "batch_size": top["batch_size"],
                 "best_peer": peer["tool"] if peer else None,
                 "best_peer_fits_per_s": base,
                 "ratio_1core": top["fits_per_s"] / base if base else None,
                 "ratio_x2": top["fits_per_s"] / (2 * base) if base else None}
            verdicts.append(v)
    print(f"\nfits/s: replicates x methods / wall s (mlmsim: runner end to end with "
          f"generation and records, n_jobs={n_jobs};\n  peers: fits / summed fit seconds, one "
          "process, generation excluded); x2 ideal: twice a one-core loop;\n  / best peer: vs "
          "the fastest peer's one-core loop; / peer x2: vs twice it. sing, nconv: singular "
          "and non-converged fits.")
    print(f"\nacceptance (mlmsim batched, best batch size, {n_jobs} cores):")
    for v in verdicts:
        line = (f"  {v['case']:<8} {v['mlmsim_batched_fits_per_s']:>9,.0f} fits/s "
                f"(B={v['batch_size']})")
        if v["case"] == "slope30":
            ok = v["mlmsim_batched_fits_per_s"] >= TARGET_FITS
            line += f"  >= {TARGET_FITS:,}: {'met' if ok else 'NOT met'};"
        if v["ratio_1core"] is not None:
            for key, what in (("ratio_1core", "1 core"), ("ratio_x2", "x2 ideal")):
                ok = v[key] >= TARGET_RATIO
                line += (f"  {v[key]:.1f}x {v['best_peer']} ({what}): "
                         f"{'met' if ok else 'NOT met'};")
        print(line.rstrip(";"))
    return verdicts


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def print_header(env: dict[str, Any], n_jobs: int, disk: bool, idle: float | None) -> None:
    print("mlmsim study throughput benchmark")
    print(f"  python {env['python']} on {env['machine']}, {env['cpus']} CPUs, n_jobs={n_jobs}; "
          f"numpy {env['numpy']}, pandas {env['pandas']}, mlmsim {mlmsim.__version__}")
    print(f"  load average {env['load_average']}; other processes keep "
          f"{'?' if idle is None else f'{idle:.2f}'} cores busy (1 s sample)")
    # the load average also counts this benchmark's own recent work: trust the sample
    busy = idle if idle is not None else (env["load_average"] or [0.0])[0]
    if busy > 0.2:
        print("  WARNING: other work occupies the CPUs: timings are pessimistic (and peers "
              "that run BLAS threads, e.g. mixedlm, erratic); rerun when idle")
    rt = env["blas_runtime"] or {}
    if rt:
        print(f"  BLAS (runtime): {rt.get('library')}: core {rt.get('core')}, "
              f"{rt.get('threads')} threads")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE",
                "RAYON_NUM_THREADS"):
        print(f"  {var}={os.environ.get(var, '(unset)')}")
    for tool, version in env["tools"].items():
        print(f"  {tool}: {version}")
    print(f"  records: {'Parquet chunks in a temporary directory' if disk else 'in memory'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated: {', '.join(CASES)} (or 1,2,3), or 'none'")
    ap.add_argument("--reps", type=int, help="replicates per batched runner run (default per "
                    "case: " + ", ".join(f"{c.key} {c.reps:,}" for c in CASES.values()) + ")")
    ap.add_argument("--single-reps", type=int, help="replicates for mlmsim one at a time "
                    "(default: " + ", ".join(f"{c.key} {c.single_reps:,}"
                                             for c in CASES.values()) + "; 0 skips)")
    ap.add_argument("--peer-reps", type=int, help="data sets per peer loop (default: "
                    + ", ".join(f"{c.key} {c.peer_reps}" for c in CASES.values()) + ")")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds of fitting per Python peer and case before it stops "
                         "(never below 5 fits)")
    ap.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)),
                    help="batch sizes for the batched runner")
    ap.add_argument("--n-jobs", type=int, default=2, help="runner workers (default 2)")
    ap.add_argument("--ddf", default=None,
                    help="df of mlmsim's fixed-effect t tests in the records (e.g. "
                         "kenward-roger; REML cases only); default none (Wald z)")
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help="comma-separated subset of " + ", ".join(TOOLS))
    ap.add_argument("--no-r", action="store_true", help="skip lme4 (R)")
    ap.add_argument("--no-split", action="store_true", help="skip the one-core stage split")
    ap.add_argument("--disk", action="store_true",
                    help="write records to a temporary study directory, not memory")
    ap.add_argument("--maas-hox", action="store_true",
                    help="also run the Maas-Hox sized design (27 conditions)")
    ap.add_argument("--maas-hox-reps", type=int, default=1000)
    ap.add_argument("--maas-hox-batch-size", type=int, default=250)
    ap.add_argument("--json", metavar="OUT", help="write environment and all results here")
    args = ap.parse_args(argv)

    keys = [] if args.cases.strip().lower() == "none" else [
        ALIASES.get(c.strip(), c.strip()) for c in args.cases.split(",") if c.strip()]
    if bad := [k for k in keys if k not in CASES]:
        ap.error(f"unknown case(s) {bad}; choose from {', '.join(CASES)}")
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    if bad := [t for t in wanted if t not in TOOLS]:
        ap.error(f"unknown tool(s) {bad}; choose from {', '.join(TOOLS)}")
    if args.no_r:
        wanted = [t for t in wanted if t != "lme4"]
    batch_sizes = _ints(args.batch_sizes)
    status = {t: peers.available(t) for t in wanted if t in PEERS}
    env = bench_fit.environment({"mlmsim": (True, mlmsim.__version__), **status})
    idle = CpuMeter().idle_sample()
    print_header(env, args.n_jobs, args.disk, idle)
    tools = [t for t in wanted if t in PEERS and status[t][0]]
    for t in wanted:
        if t in PEERS and not status[t][0]:
            print(f"  skipping {t}: {status[t][1]}")
    if args.no_r:
        print("  skipping lme4: --no-r")
    run_mlmsim = "mlmsim" in wanted

    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    splits: list[dict[str, Any]] = []
    if keys and run_mlmsim:
        warm_up(args.n_jobs)
    for key in keys:
        case = CASES[key]
        reps = args.reps or case.reps
        single = case.single_reps if args.single_reps is None else args.single_reps
        n_peer = args.peer_reps or case.peer_reps
        print(f"\ncase {key}: {case.label}: {case.formula}  [load average {_loadavg()}, "
              f"others {CpuMeter().idle_sample() or 0:.2f} cores]", flush=True)
        if run_mlmsim:
            rows += mlmsim_runs(case, reps, single, batch_sizes, args.n_jobs, args.disk,
                                args.ddf)
            if not args.no_split:
                batched = [r for r in rows if r["case"] == key and r["mode"] == "batched"]
                best = max(batched, key=lambda r: r["fits_per_s"])["batch_size"] \
                    if batched else 256
                split = stage_split(case, best, min(case.split_reps, reps), batch_sizes)
                print_split(split, args.n_jobs)
                splits.append(split)
        rows += peer_runs(case, tools, n_peer, args.budget, with_mlmsim=run_mlmsim,
                          ddf=args.ddf)
    verdicts = print_table(rows, args.n_jobs) if rows else []
    maas_hox = None
    if args.maas_hox:
        maas_hox = run_maas_hox(args.maas_hox_reps, args.maas_hox_batch_size, args.n_jobs,
                                args.disk)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average now {_loadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "idle_others_cores": idle, "results": rows,
                       "stage_split": splits, "acceptance": verdicts, "maas_hox": maas_hox},
                      fh, indent=1, default=_json_default)
        print(f"wrote {args.json}")
    return 0


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
