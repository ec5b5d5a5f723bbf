"""Profile and parametric-bootstrap intervals: mlmsim against lme4, in the same run.

    python benchmarks/bench_intervals.py [--nsim 1000] [--repeats 3]

HSB (``mathach ~ cses + (1 + cses | school)``, REML): ``nsim`` bootstrap refits
(mlmsim's ``fit.bootstrap`` against lme4's ``bootMer(use.u = FALSE)``), and profile
intervals for all six parameters (``fit.confint("profile")`` against lme4's
``confint(method = "profile")``). mlmsim's time is the median of ``--repeats`` runs after
one warm-up (the compiled kernels cached); lme4 runs once (``lme4_intervals.R``), as it
takes minutes. Prints seconds and the ratio lme4 / mlmsim; needs Rscript with lme4 for
the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlmsim

HERE = Path(__file__).parent
FORMULA = "mathach ~ cses + (1 + cses | school)"


def _time(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    hsb = mlmsim.datasets.load("hsb")
    hsb["cses"] = hsb["ses"] - hsb["meanses"]
    fit = mlmsim.fit(FORMULA, hsb, method="REML")
    ours = {
        "boot": _time(lambda: fit.bootstrap(args.nsim, rng=1, progress=False), args.repeats),
        "profile": _time(lambda: fit.confint("profile"), args.repeats),
    }
    theirs: dict[str, float] = {}
    if shutil.which("Rscript"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hsb.csv")
            hsb[["mathach", "cses", "school"]].to_csv(path, index=False)
            out = subprocess.run(["Rscript", "--vanilla", str(HERE / "lme4_intervals.R"), path,
                                  FORMULA, "TRUE", str(args.nsim)],
                                 capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            what, sec = line.split("\t")
            theirs[what] = float(sec)
    print(f"HSB {FORMULA}, REML; bootstrap nsim = {args.nsim}")
    print(f"{'task':<10}{'mlmsim s':>12}{'lme4 s':>12}{'lme4/mlmsim':>14}")
    for what, sec in ours.items():
        r = theirs.get(what)
        ratio = f"{r / sec:14.1f}" if r else f"{'(no R)':>14}"
        print(f"{what:<10}{sec:12.3f}{(r or float('nan')):12.2f}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
