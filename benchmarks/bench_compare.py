"""mlmsim against another version of itself, in one process, fits interleaved.

    python benchmarks/bench_compare.py --baseline REV        # a git revision of this checkout

On a shared or throttled machine, two benchmark runs taken minutes apart can differ by
30% with no change to the code, which hides a 10% change of speed. Here the baseline is
imported next to the working tree (a copy of its ``mlmsim`` package renamed to
``mlmsim_baseline``), and every timed fit of the working tree is followed by the same fit
of the baseline, so that both see the same machine. Reported: the time per fit of each
and their ratio, baseline / working tree (above 1: the working tree is faster); the ratio
of the medians and of the minima.

Single fits are ``bench_fit.py``'s first three cases (``mlmsim.fit`` end to end); batched
fits are ``fit_arrays`` on R = 128 data sets drawn once (slope30, hsb160, int10 and
J = 100 groups of 20), per replicate.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_fit  # noqa: E402


def baseline_package(rev: str, root: Path) -> Path:
    """The package of revision ``rev`` as ``mlmsim_baseline`` under a temporary folder."""
    tmp = Path(tempfile.mkdtemp(prefix="mlmsim-baseline-"))
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)
    try:
        shutil.copytree(tree / "mlmsim", tmp / "mlmsim_baseline",
                        ignore=shutil.ignore_patterns("__pycache__"))
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                       check=True, capture_output=True)
    for f in (tmp / "mlmsim_baseline").rglob("*.py"):
        text = f.read_text()
        text = re.sub(r"\bmlmsim\.", "mlmsim_baseline.", text)
        text = re.sub(r"\bfrom mlmsim import\b", "from mlmsim_baseline import", text)
        text = re.sub(r"^import mlmsim$", "import mlmsim_baseline", text, flags=re.M)
        f.write_text(text)
    return tmp


def draw(R: int, J: int, n: int, q: int, seed: int = 1):
    """R data sets of J groups of n: y = 1 + 0.5 x + u0 [+ u1 x] + e, x ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    N = J * n
    codes = np.repeat(np.arange(J), n)
    x = rng.normal(size=(R, N))
    if q == 2:
        U = rng.multivariate_normal([0, 0], [[1, .1], [.1, .25]], size=(R, J))
        y = 1 + .5 * x + U[:, codes, 0] + U[:, codes, 1] * x + rng.normal(size=(R, N))
        Z = np.stack([np.ones((R, N)), x], -1)
    else:
        y = 1 + .5 * x + 0.5 * rng.normal(size=(R, J))[:, codes] + rng.normal(size=(R, N))
        Z = np.ones((R, N, 1))
    return y, np.stack([np.ones((R, N)), x], -1), Z, codes


def interleaved(work, base, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of ``work()`` and ``base()``, alternately, after one call of each."""
    work(), base()
    tw, tb = [], []
    for _ in range(repeats):
        for fn, out in ((work, tw), (base, tb)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return np.array(tw), np.array(tb)


def line(name: str, unit: float, label: str, tw: np.ndarray, tb: np.ndarray) -> str:
    mw, mb = np.median(tw) * unit, np.median(tb) * unit
    return (f"{name:28s} work {mw:9.2f} {label}  baseline {mb:9.2f} {label}  "
            f"baseline / work: median {mb / mw:5.2f}, min {tb.min() / tw.min():5.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="git revision to compare with")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    tmp = baseline_package(args.baseline, HERE.parent)
    sys.path.insert(0, str(tmp))
    import mlmsim_baseline
    from mlmsim_baseline.engine.batch import fit_arrays as base_arrays

    import mlmsim
    from mlmsim.engine.batch import fit_arrays as work_arrays

    print(f"working tree vs {args.baseline}; {args.repeats} interleaved repeats", flush=True)
    hsb = bench_fit.hsb()
    single = [("HSB slope, ML", hsb, "mathach ~ cses + (1 + cses | school)", "ML"),
              ("HSB 4 random effects, ML", hsb,
               "mathach ~ cses + female + minority + (1 + cses + female + minority | school)",
               "ML"),
              ("J = 30 groups of 5, REML", bench_fit.simulate_slope(30, 5, seed=20240301),
               "y ~ 1 + x + (1 + x | g)", "REML")]
    for name, data, formula, method in single:
        call = (formula, data)
        tw, tb = interleaved(partial(mlmsim.fit, *call, method=method),
                             partial(mlmsim_baseline.fit, *call, method=method), args.repeats)
        print(line(name, 1e3, "ms", tw, tb), flush=True)
    R = 128
    for name, J, n, q, method in (("batched slope30, REML", 30, 5, 2, "REML"),
                                  ("batched hsb160, ML", 160, 45, 2, "ML"),
                                  ("batched int10, REML", 10, 10, 1, "REML"),
                                  ("batched J = 100 x 20, REML", 100, 20, 2, "REML")):
        y, X, Z, codes = draw(R, J, n, q)
        kw = dict(method=method, fixed_names=["(Intercept)", "x"],
                  random_names=["(Intercept)", "x"][:q])
        tw, tb = interleaved(partial(work_arrays, y, X, Z, codes, **kw),
                             partial(base_arrays, y, X, Z, codes, **kw), max(args.repeats // 2, 3))
        print(line(name, 1e6 / R, "us", tw, tb), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
