"""Speed of one fit: mlmsim against statsmodels MixedLM, mixedlm and lme4.

For each case the same data set is fitted repeatedly by every tool, end to end from
formula and DataFrame, and the median wall time per fit is reported with the criterion
(-2 log L for ML, -2 log L_R for REML) each tool reached, so a tool that stops at a wrong
optimum shows as a larger -2LL. How each tool is called: ``peers.py``.

Cases:
  1  HSB, ``mathach ~ cses + (1 + cses | school)``, ML (7185 rows, 160 schools)
  2  HSB, ``mathach ~ cses + female + minority + (1 + cses + female + minority | school)``, ML
  3  simulated, J = 30 groups of 5, ``y ~ x + (1 + x | g)``, REML
  4  simulated, J = 100,000 groups of 20 (2 million rows), ``y ~ x + (1 + x | g)``, ML

Run from the repository root::

    python benchmarks/bench_fit.py                      # all cases, all installed tools
    python benchmarks/bench_fit.py --cases 1,2,3 --repeats 50 --no-r --json out.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402  (the sibling module, importable when run as a script)
from peers import Model, PeerFit  # noqa: E402

TOOLS = ("mlmsim", "statsmodels", "mixedlm", "lme4")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def hsb() -> pd.DataFrame:
    """High School and Beyond with ``cses = ses - meanses`` (mlmsim's packaged copy)."""
    from mlmsim import datasets

    return datasets.load("hsb")


def simulate_slope(n_groups: int, group_size: int, seed: int) -> pd.DataFrame:
    """Random intercept and slope data, y = 1 + 0.5 x + U0 + U1 x + R.

    x ~ N(0, 1) at level 1; U_j ~ N(0, T) with T = [[1, 0.1], [0.1, 0.25]] (tau0^2 = 1,
    tau1^2 = 0.25, corr 0.2); R ~ N(0, sigma^2 = 1). Columns ``g`` (0..J-1), ``x``, ``y``.
    """
    rng = np.random.default_rng(seed)
    T = np.array([[1.0, 0.1], [0.1, 0.25]])
    u = rng.standard_normal((n_groups, 2)) @ np.linalg.cholesky(T).T
    g = np.repeat(np.arange(n_groups), group_size)
    x = rng.standard_normal(g.size)
    y = 1.0 + 0.5 * x + u[g, 0] + u[g, 1] * x + rng.standard_normal(g.size)
    return pd.DataFrame({"g": g, "x": x, "y": y})


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    model: Model
    method: str
    data: Callable[[], pd.DataFrame]
    large: bool = False


CASES = {
    c.key: c
    for c in (
        Case("1", "HSB cses slope, ML",
             Model.parse("mathach ~ cses + (1 + cses | school)"), "ML", hsb),
        Case("2", "HSB 4 random effects, ML",
             Model.parse("mathach ~ cses + female + minority"
                         " + (1 + cses + female + minority | school)"), "ML", hsb),
        Case("3", "sim J=30 n=5 slope, REML",
             Model.parse("y ~ x + (1 + x | g)"), "REML",
             lambda: simulate_slope(30, 5, seed=20240301)),
        Case("4", "sim J=100k n=20 slope, ML",
             Model.parse("y ~ x + (1 + x | g)"), "ML",
             lambda: simulate_slope(100_000, 20, seed=20240304), large=True),
    )
}


# ---------------------------------------------------------------------------
# Environment header
# ---------------------------------------------------------------------------


def _openblas_runtime() -> dict[str, str]:
    """Ask the OpenBLAS that numpy loaded for its core type, threads and config."""
    try:
        with open("/proc/self/maps") as fh:
            libs = {ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return {}
    info: dict[str, str] = {}
    for lib_path in sorted(libs):
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_", "scipy_"):
            for suffix in ("64_", ""):
                try:
                    corename = getattr(lib, f"{prefix}get_corename{suffix}")
                    config = getattr(lib, f"{prefix}get_config{suffix}")
                    threads = getattr(lib, f"{prefix}get_num_threads{suffix}")
                except AttributeError:
                    continue
                corename.restype = config.restype = ctypes.c_char_p
                info["library"] = os.path.basename(lib_path)
                info["core"] = corename().decode()
                info["config"] = config().decode().strip()
                info["threads"] = str(threads())
                return info
    return info


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def environment(tools: dict[str, tuple[bool, str]]) -> dict[str, object]:
    """What the numbers depend on: machine, BLAS, thread settings, tool versions."""
    blas: dict[str, object] = {}
    try:
        cfg = np.show_config(mode="dicts")
        dep = cfg["Build Dependencies"]["blas"]
        blas = {k: dep.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception:  # noqa: BLE001 - older numpy: no dict form
        pass
    return {
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "load_average": _loadavg(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "blas_build": blas,
        "blas_runtime": _openblas_runtime(),
        "thread_env": peers.thread_env(),
        "tools": {t: v for t, (ok, v) in tools.items()},
    }


def print_environment(env: dict[str, object]) -> None:
    print("mlmsim fit benchmark")
    print(f"  python {env['python']} on {env['machine']}, {env['cpus']} CPUs "
          f"(load average {env['load_average']}); numpy {env['numpy']}, pandas {env['pandas']}")
    blas = env["blas_build"] or {}
    if blas:
        print(f"  BLAS (build): {blas.get('name')} {blas.get('version')}"
              f"  [{(blas.get('openblas configuration') or '').strip()}]")
    rt = env["blas_runtime"] or {}
    if rt:
        print(f"  BLAS (runtime): {rt.get('library')}: core {rt.get('core')}, "
              f"{rt.get('threads')} threads")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS"):
        print(f"  {var}={os.environ.get(var, '(unset)')}")
    others = {k: v for k, v in env["thread_env"].items()
              if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                           "OMP_NUM_THREADS")}
    for k, v in others.items():
        print(f"  {k}={v}")
    for tool, version in env["tools"].items():
        print(f"  {tool}: {version}")


# ---------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------


def run_case(
    case: Case, tools: list[str], repeats: int, min_repeats: int, budget: float
) -> list[dict[str, object]]:
    data = case.data()
    warmup = 0 if case.large else 1
    print(f"\ncase {case.key}: {case.label}: {case.model.lme4}  "
          f"[{len(data):,} rows, {data[case.model.group].nunique():,} groups; "
          f"{repeats} fits, {warmup} warm-up; load average {_loadavg()}]", flush=True)
    rows = []
    for tool in tools:
        notes: list[str] = []
        t0 = time.perf_counter()
        try:
            fits: list[PeerFit] = peers.repeat_fit(
                tool, case.model, data, case.method, repeats, warmup=warmup, notes=notes,
                budget=budget, min_repeats=min_repeats)
        except Exception as exc:  # noqa: BLE001 - a failing peer is a result, not a crash
            print(f"  {tool}: failed: {type(exc).__name__}: {exc}", flush=True)
            rows.append({"case": case.key, "tool": tool, "error": f"{exc}"})
            continue
        secs = [f.seconds for f in fits]
        m2ll = [f.minus2ll for f in fits]
        row = {
            "case": case.key, "label": case.label, "formula": case.model.lme4,
            "method": case.method, "nobs": len(data), "tool": tool, "fits": len(fits),
            "median_s": peers.median(secs), "min_s": min(secs), "max_s": max(secs),
            "seconds": secs, "minus2ll": peers.median(m2ll),
            "minus2ll_spread": max(m2ll) - min(m2ll), "notes": notes,
        }
        rows.append(row)
        cut = ""
        if len(fits) < repeats:
            cut = f" (stopped at {len(fits)}: over the {budget:.0f} s budget)"
        print(f"  {tool}: median {1e3 * row['median_s']:.1f} ms over {len(fits)} fits{cut}, "
              f"-2LL {row['minus2ll']:.4f}  [{time.perf_counter() - t0:.1f} s]", flush=True)
        for n in notes[:6]:
            print(f"      note: {n}")
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    print("\n" + f"{'case':<28} {'tool':<12} {'fits':>5} {'median ms':>11} {'x mlmsim':>9} "
          f"{'-2LL':>16} {'-2LL - best':>12}")
    for key in dict.fromkeys(r["case"] for r in rows):
        group = [r for r in rows if r["case"] == key]
        ok = [r for r in group if "error" not in r]
        best = min((r["minus2ll"] for r in ok), default=float("nan"))
        base = next((r["median_s"] for r in ok if r["tool"] == "mlmsim"), None)
        label = CASES[key].label if key in CASES else key
        for r in group:
            if "error" in r:
                print(f"{label:<28} {r['tool']:<12} {'failed':>5}")
                continue
            ratio = f"{r['median_s'] / base:9.1f}" if base else f"{'-':>9}"
            print(f"{label:<28} {r['tool']:<12} {r['fits']:>5} {1e3 * r['median_s']:>11.2f} "
                  f"{ratio} {r['minus2ll']:>16.4f} {r['minus2ll'] - best:>12.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="1,2,3,4", help="comma-separated case numbers (1-4)")
    ap.add_argument("--repeats", type=int, default=20, help="timed fits per tool, cases 1-3")
    ap.add_argument("--large-repeats", type=int, default=3,
                    help="timed fits per tool for the 2-million-row case 4")
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds per tool and case after which a slow Python peer stops "
                         "(never below 5 fits, or --large-repeats for case 4)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset of "
                    + ", ".join(TOOLS))
    ap.add_argument("--no-r", action="store_true", help="skip lme4 (R)")
    ap.add_argument("--json", metavar="OUT", help="write environment and all timings here")
    args = ap.parse_args(argv)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    if bad := [t for t in wanted if t not in TOOLS]:
        ap.error(f"unknown tool(s) {bad}; choose from {', '.join(TOOLS)}")
    if args.no_r:
        wanted = [t for t in wanted if t != "lme4"]
    status = {t: peers.available(t) for t in wanted}
    env = environment(status)
    print_environment(env)
    tools = []
    for t in wanted:
        ok, why = status[t]
        if ok:
            tools.append(t)
        else:
            print(f"  skipping {t}: {why}")
    if args.no_r:
        print("  skipping lme4: --no-r")

    rows: list[dict[str, object]] = []
    for key in cases:
        case = CASES[key]
        repeats = args.large_repeats if case.large else args.repeats
        min_repeats = min(repeats, args.large_repeats if case.large else 5)
        rows += run_case(case, tools, repeats, min_repeats, args.budget)

    print_table(rows)
    print("\nmedian ms: wall time per fit, end to end from formula and DataFrame; "
          "x mlmsim: median / mlmsim's median;\n-2LL: ML deviance or REML criterion reached "
          "(median over fits); -2LL - best: distance from the lowest any tool reached.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "results": rows}, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
