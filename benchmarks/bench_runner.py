"""Overhead of the study runner: seconds of bookkeeping per replicate x method record.

With a trivial data generator and a method that returns a constant, everything measured
is the runner's own work: per-replicate seeds and generators, calling, timing and error
handling, building the record columns, writing checksummed Parquet chunks, and reading
them back. The target is under 20 microseconds per record at 100,000 replicates, so that
fitting, not bookkeeping, sets the pace of a study.

    python benchmarks/bench_runner.py [n_reps]
"""

from __future__ import annotations

import sys
import tempfile
import time

from mlmsim.simstudy import Study, load_study, summarise


def nothing(condition, rng):
    return None


def constant(data):
    return 1.0


SIX = {"Intercept": 1.0, "x": 0.5, "var(Intercept)": 0.5, "cov(x,Intercept)": 0.1,
       "var(x)": 0.2, "sigma2": 1.0}


def six_parameters(data):
    return SIX


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(n_reps: int = 100_000) -> dict[str, float]:
    study = Study(None, nothing, {"constant": constant}, truth={"b": 1.0}, n_reps=n_reps,
                  seed=1)
    out: dict[str, float] = {}
    out["in memory, n_jobs=1"] = best_of(lambda: study.run(progress=False).records)
    with tempfile.TemporaryDirectory() as d:
        def to_disk():
            with tempfile.TemporaryDirectory(dir=d) as sub:
                study.run(sub, progress=False)

        out["to Parquet chunks, n_jobs=1"] = best_of(to_disk)
        res = study.run(d, progress=False)
        out["resume (all chunks done)"] = best_of(lambda: study.run(d, progress=False))
        out["read back (verified)"] = best_of(lambda: load_study(d).records)
        out["summarise from disk"] = best_of(lambda: summarise(res), repeat=1)
    wide = Study(None, nothing, {"ML": six_parameters, "REML": six_parameters}, truth=SIX,
                 n_reps=n_reps, seed=1)
    out["2 methods x 6 parameters (per fit)"] = best_of(
        lambda: wide.run(progress=False).records) / 2
    print(f"{n_reps} replicates; a record is one replicate x method (a fit)")
    for name, seconds in out.items():
        print(f"{name:36s} {seconds:7.3f} s  {1e6 * seconds / n_reps:6.2f} us/record")
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
