"""Speed of the data generator: R replicates of J groups of n with a random slope.

Two paths are timed, each on one core (the best of a few repeats):

- batch: ``simulate_batch(spec, R, J, n)``, all replicates drawn at once as arrays
  y (R, N), X (R, N, p), Z (R, N, q), U (R, J, q); the target is under 0.2 s for
  R = 1,000 replicates of J = 30 groups of 5;
- DataFrame: R calls of ``simulate(spec, J, n)``, one DataFrame per replicate (what a
  study runner that fits DataFrames uses).

The spec is the seed's random intercept and slope model, y_ij = gamma_00 + gamma_10 x_ij
+ U_0j + U_1j x_ij + R_ij, x_ij = b_j + w_ij, T = [[1, 0.1], [0.1, 0.25]], sigma^2 = 1.

    python benchmarks/bench_simulate.py [R] [J] [n]
"""

from __future__ import annotations

import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core (set before numpy is imported)

import numpy as np  # noqa: E402

from mlmsim.generate.predictors import Continuous  # noqa: E402
from mlmsim.generate.simulate import simulate, simulate_batch  # noqa: E402
from mlmsim.generate.spec import ModelSpec  # noqa: E402

TARGET_BATCH = 0.2  # seconds for 1,000 replicates of 30 groups of 5


def random_slope_spec() -> ModelSpec:
    return ModelSpec(predictors=(Continuous("x", var_between=0.2, var_within=1.0),),
                     gamma={"Intercept": 1.0, "x": 0.5}, random=("Intercept", "x"),
                     T=[[1.0, 0.1], [0.1, 0.25]], sigma2=1.0)


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(R: int = 1000, J: int = 30, n: int = 5) -> dict[str, float]:
    spec = random_slope_spec()
    seeds = np.random.SeedSequence(2024).spawn(R)
    simulate_batch(spec, 2, J, n, rng=0)  # warm-up (imports, caches)
    out = {
        "batch (arrays)": best_of(lambda: simulate_batch(spec, R, J, n, rng=1)),
        "DataFrame per replicate": best_of(
            lambda: [simulate(spec, J, n, rng=s) for s in seeds], repeat=3),
    }
    print(f"{R} replicates of J = {J} groups of n = {n} (N = {J * n} rows each), random "
          "intercept and slope, one core")
    for name, seconds in out.items():
        print(f"  {name:26s} {seconds:8.4f} s  {1e6 * seconds / R:8.1f} us/replicate")
    if (R, J, n) == (1000, 30, 5):
        ok = out["batch (arrays)"] < TARGET_BATCH
        print(f"  batch target < {TARGET_BATCH} s: {'met' if ok else 'NOT met'}")
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]]
    main(*args)
