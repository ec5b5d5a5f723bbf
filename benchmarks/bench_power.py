"""A power curve: mlmsim against lme4 + lmerTest in a loop (simr's way), in the same run.

    python benchmarks/bench_power.py [--nsim 1000] [--peer-reps 25]

The curve: ``ModelSpec.example()`` (y ~ 1 + x + z + x:z + (1 + x | g), a random slope),
the Satterthwaite t test of the cross-level interaction x:z, J = 20, 25, 30, 40, 50, 60,
70, 80 groups of 20, ``--nsim`` data sets per value: ``mlmsim.power_curve`` end to end
(simulation, batched REML fits, df and p), after one warm-up. The peer fits
``--peer-reps`` data sets per value, drawn by mlmsim's generator, with
``lmerTest::lmer`` and reads the p-value from ``summary()`` (``lmertest_power.R``). Its
time for the whole curve is the mean seconds per fit at each value times ``--nsim``,
summed over the values. Prints both and the ratio; the peer needs Rscript with lmerTest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import mlmsim

HERE = Path(__file__).parent
VALUES = [20, 25, 30, 40, 50, 60, 70, 80]
SIZE = 20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--peer-reps", type=int, default=25)
    args = ap.parse_args(argv)
    spec = mlmsim.ModelSpec.example()
    kw = dict(values=VALUES, group_size=SIZE, test="satterthwaite", nsim=args.nsim,
              progress=False)
    mlmsim.power_curve(spec, "x:z", rng=0, **{**kw, "nsim": 50})  # warm-up
    t0 = time.perf_counter()
    curve = mlmsim.power_curve(spec, "x:z", rng=1, **kw)
    ours = time.perf_counter() - t0
    print(f"mlmsim: {len(VALUES)} values x {args.nsim} simulations, Satterthwaite: "
          f"{ours:.2f} s")
    print(curve.table[["n_groups", "power", "ci_lower", "ci_upper", "seconds"]]
          .round(3).to_string(index=False))
    if not shutil.which("Rscript"):
        print("(no Rscript: the peer is not timed)")
        return 0
    rng = np.random.default_rng(2)
    frames = []
    for J in VALUES:
        for r in range(args.peer_reps):
            d = mlmsim.simulate(spec, J, SIZE, rng=rng)
            frames.append(d.assign(**{".value": J, ".rep": r}))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sims.csv")
        pd.concat(frames).to_csv(path, index=False)
        out = subprocess.run(["Rscript", "--vanilla", str(HERE / "lmertest_power.R"), path,
                              spec.formula, "x:z"], capture_output=True, text=True,
                             check=True).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.startswith("fit\t")]
    fits = pd.DataFrame({"value": [int(r[1]) for r in rows],
                         "seconds": [float(r[3]) for r in rows]})
    per_fit = fits.groupby("value")["seconds"].mean()
    peer = float((per_fit * args.nsim).sum())
    print(f"lme4 + lmerTest: {len(fits)} fits timed, mean {fits.seconds.mean() * 1e3:.1f} ms "
          f"per fit; the curve's {len(VALUES) * args.nsim} fits: {peer:.0f} s")
    print(f"ratio (lme4 + lmerTest / mlmsim): {peer / ours:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
