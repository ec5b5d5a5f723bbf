"""Fit time against the number of groups: interior and boundary optima, 10^3 .. 10^6 groups.

A fit whose optimum is on the boundary (a variance estimated as 0) must cost about what an
interior fit of the same size costs, and the cost per row must not grow with J. For each
J of ``--groups`` and group size n of ``--sizes``, data are drawn with numpy
(``default_rng(seed)``: ``g = repeat(arange(J), n)``, x ~ N(0, 1), e ~ N(0, 1)):

  slope model      ``y ~ x + (1 + x | g)``: y = x + U0_g + U1_g x + e, var(U0) = 1 and
                   var(U1) = 0.25 (interior) or 0 (boundary: the truth has no slope)
  intercept model  ``y ~ x + (1 | g)``: y = x + U0_g + e, var(U0) = 1 (interior) or 0

and each model is fitted by ML and REML with ``mlmsim.fit`` (end to end from the
DataFrame; best of ``--repeats``), next to lme4 (its default optimiser) and mixedlm for
ML where they finish: a peer is skipped at a size where its time at the previous size,
scaled by the number of rows, would exceed ``--peer-limit`` seconds. Reported: seconds,
seconds per million rows, iterations and evaluations (``optsum``), whether the fit is
singular, and the peers' criteria next to mlmsim's.

``--issue-table`` also reruns the table of boundary fits that once took 40 to 500 s:
``y ~ x + (1 + x | g)``, ML, n = 3, J = 3,000 .. 333,334, ``default_rng(5)``,
y = x + N(0, 1)[g] + N(0, 1).

    python benchmarks/bench_scale.py                          # the grid and the plot
    python benchmarks/bench_scale.py --issue-table --no-peers
    python benchmarks/bench_scale.py --groups 1000,10000 --sizes 3 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from peers import Model  # noqa: E402

import mlmsim  # noqa: E402

FORMULAS = {"slope": "y ~ x + (1 + x | g)", "intercept": "y ~ x + (1 | g)"}
ISSUE_J = (3_000, 10_000, 30_000, 100_000, 200_000, 333_334)


def draw(J: int, n: int, model: str, truth: str, seed: int = 1) -> pd.DataFrame:
    """One data set of J groups of n (module docstring)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    sd0 = 0.0 if (model == "intercept" and truth == "boundary") else 1.0
    sd1 = 0.5 if (model == "slope" and truth == "interior") else 0.0
    y = x + sd0 * rng.normal(size=J)[g] + sd1 * rng.normal(size=J)[g] * x \
        + rng.normal(size=J * n)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def issue_data(J: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(J), 3)
    x = rng.normal(size=g.size)
    y = x + rng.normal(size=J)[g] + rng.normal(size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def time_mlmsim(formula: str, data: pd.DataFrame, method: str, repeats: int) -> dict:
    best, res = np.inf, None
    for _ in range(repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            res = mlmsim.fit(formula, data, method=method)
            best = min(best, time.perf_counter() - t0)
    o = res.optsum
    return {"seconds": best, "criterion": res.deviance, "singular": bool(res.singular),
            "converged": bool(res.converged), "iterations": o.iterations,
            "evaluations": o.evaluations, "halvings": o.halvings, "restarts": o.restarts}


def time_peer(tool: str, formula: str, data: pd.DataFrame, method: str) -> dict:
    model = Model.parse(formula)
    fit = peers.RUNNERS[tool](model, data, method, [])
    return {"seconds": fit.seconds, "criterion": fit.minus2ll}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", default="1000,10000,100000,1000000",
                    help="numbers of groups J (comma-separated)")
    ap.add_argument("--sizes", default="3,20", help="group sizes n (comma-separated)")
    ap.add_argument("--models", default="slope,intercept")
    ap.add_argument("--methods", default="ML,REML")
    ap.add_argument("--repeats", type=int, default=2, help="mlmsim fits per case (best kept)")
    ap.add_argument("--max-rows", type=float, default=2.1e7, help="skip larger data sets")
    ap.add_argument("--no-peers", action="store_true", help="mlmsim only")
    ap.add_argument("--peer-limit", type=float, default=60.0,
                    help="skip a peer at a size its previous time predicts over this (s)")
    ap.add_argument("--issue-table", action="store_true",
                    help="also rerun the boundary table of J = 3,000 .. 333,334")
    ap.add_argument("--out", metavar="DIR", help="write results.json and time_per_row.png")
    args = ap.parse_args(argv)
    groups = [int(float(v)) for v in args.groups.split(",")]
    sizes = [int(v) for v in args.sizes.split(",")]
    tools = [] if args.no_peers else [t for t in ("lme4", "mixedlm")
                                      if peers.available(t)[0]]
    rows: list[dict] = []
    mlmsim.fit("y ~ x + (1 + x | g)", draw(50, 5, "slope", "interior"))   # compile first
    mlmsim.fit("y ~ x + (1 | g)", draw(50, 5, "intercept", "interior"))
    if args.issue_table:
        print("issue table: y ~ x + (1 + x | g), ML, n = 3, default_rng(5)", flush=True)
        for J in ISSUE_J:
            r = time_mlmsim(FORMULAS["slope"], issue_data(J), "ML", 1)
            r.update(table="issue", J=J, n=3, model="slope", method="ML", truth="rng(5)",
                     tool="mlmsim")
            rows.append(r)
            print(f"  J = {J:>7,}: {r['seconds']:6.2f} s, {r['iterations']} iterations, "
                  f"{r['evaluations']} evaluations, {r['halvings']} halvings, singular "
                  f"{r['singular']}, converged {r['converged']}", flush=True)
    for n in sizes:
        for model in args.models.split(","):
            last: dict[tuple, tuple[int, float]] = {}
            for J in groups:
                if J * n > args.max_rows:
                    continue
                for truth in ("interior", "boundary"):
                    data = draw(J, n, model, truth)
                    for method in args.methods.split(","):
                        r = time_mlmsim(FORMULAS[model], data, method, args.repeats)
                        r.update(table="grid", J=J, n=n, model=model, method=method,
                                 truth=truth, tool="mlmsim")
                        rows.append(r)
                        line = (f"n = {n:>2} {model:9s} {truth:8s} {method:4s} J = {J:>9,}: "
                                f"mlmsim {r['seconds']:7.3f} s ({1e6 * r['seconds'] / (J * n):.2f}"
                                f" s per 10^6 rows; {r['evaluations']} evaluations, singular "
                                f"{r['singular']})")
                        for tool in tools if method == "ML" else []:
                            prev = last.get((tool, truth))
                            if prev and prev[1] * J * n / prev[0] > args.peer_limit:
                                line += f"; {tool} skipped"
                                continue
                            try:
                                pr = time_peer(tool, FORMULAS[model], data, method)
                            except Exception as exc:  # noqa: BLE001 - a failed peer is a result
                                line += f"; {tool} failed ({type(exc).__name__})"
                                continue
                            last[(tool, truth)] = (J * n, pr["seconds"])
                            pr.update(table="grid", J=J, n=n, model=model, method=method,
                                      truth=truth, tool=tool)
                            rows.append(pr)
                            line += (f"; {tool} {pr['seconds']:.2f} s (criterion "
                                     f"{pr['criterion'] - r['criterion']:+.2e})")
                        print(line, flush=True)
    frame = pd.DataFrame(rows)
    grid = frame[(frame.table == "grid") & (frame.tool == "mlmsim")] if len(frame) else frame
    if len(grid):
        key = ["n", "model", "method", "J"]
        wide = grid.pivot_table(index=key, columns="truth", values="seconds")
        ratio = (wide["boundary"] / wide["interior"]).rename("boundary / interior")
        print("\nboundary / interior time, same data size:")
        print(ratio.round(2).to_string())
        per_row = grid.assign(us_per_row=1e6 * grid.seconds / (grid.J * grid.n))
        print("\nmicroseconds per row (max / min over J >= 10^4, per n, model, method, truth):")
        big = per_row[per_row.J >= 10_000]
        spread = big.groupby(["n", "model", "method", "truth"]).us_per_row.agg(
            lambda v: v.max() / v.min())
        print(spread.round(2).to_string())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1, default=float))
        if len(grid):
            _plot(frame, out / "time_per_row.png")
        print(f"\nwrote {out}")
    return 0


def _plot(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = frame[frame.table == "grid"].assign(
        us_per_row=lambda d: 1e6 * d.seconds / (d.J * d.n))
    panels = sorted(set(zip(grid.n, grid.model, strict=True)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True,
                             squeeze=False)
    for ax, (n, model) in zip(axes[0], panels, strict=True):
        sub = grid[(grid.n == n) & (grid.model == model)]
        for (tool, method, truth), d in sub.groupby(["tool", "method", "truth"]):
            d = d.sort_values("J")
            ax.plot(d.J, d.us_per_row, marker="o", ls="-" if truth == "interior" else "--",
                    label=f"{tool} {method} {truth}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("groups J")
        ax.set_title(f"{model}, n = {n}")
    axes[0][0].set_ylabel("microseconds per row")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
