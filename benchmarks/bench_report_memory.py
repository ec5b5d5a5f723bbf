"""Peak memory of `mlmsim study report` against the number of records.

The Maas and Hox (2005) design (27 conditions, one REML method, 8 parameters per fit) is
written with R replicates per condition as synthetic records (drawn around the truth, not
fitted: the report reads records, it does not care how they were made) in chunk files of
1,000 replicates, with the study's real manifest; then `mlmsim study report DIR` runs
under `/usr/bin/time -v` and its "Maximum resident set size" is printed. The report
streams its tables from the chunks, so the peak should not grow with R.

    python benchmarks/bench_report_memory.py [R ...]     # default: 1000 16000
    python benchmarks/bench_report_memory.py --study maas_hox [R ...]   # the study's own report
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

CHUNK = 1000  # replicates per chunk file


def synthetic_chunk(study, condition: int, start: int, stop: int) -> pa.Table:
    """Records of replicates [start, stop) of one condition, drawn around the truth."""
    from mlmsim.simstudy.records import record_schema

    truth = study.truths[condition]
    names = list(truth)
    k, n = len(names), stop - start
    rng = np.random.default_rng([condition, start])
    value = np.tile(np.array([truth[p] for p in names]), n)
    se = np.full(n * k, 0.1)
    estimate = value + rng.normal(0.0, 0.1, n * k)
    cond = study.conditions.iloc[condition]
    columns = {
        "condition": np.full(n * k, condition), "rep": np.repeat(np.arange(start, stop), k),
        "method": ["REML"] * (n * k), "parameter": names * n, "truth": value,
        "estimate": estimate, "se": se, "ci_lower": estimate - 1.96 * se,
        "ci_upper": estimate + 1.96 * se, "df": np.full(n * k, np.nan),
        "p": np.full(n * k, np.nan), "converged": np.ones(n * k, bool),
        "singular": np.zeros(n * k, bool), "hessian_pd": np.ones(n * k, bool),
        "identifiable": np.ones(n * k, bool), "evaluations": np.full(n * k, 12),
        "error": pa.nulls(n * k, pa.string()), "messages": [""] * (n * k),
        "seconds": np.full(n * k, 1e-3),
        "seed": np.repeat(np.arange(start, stop, dtype=np.uint64), k),
    }
    for var in study.conditions.columns:
        columns[var] = np.full(n * k, cond[var])
    schema = record_schema(pa.Schema.from_pandas(
        study.conditions, preserve_index=False).remove_metadata())
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema},
                    schema=schema)


def write_study(out: Path, reps: int) -> None:
    from mlmsim.simstudy.storage import StudyDirectory
    from mlmsim.studies import RunOptions, maas_hox

    study = maas_hox.study(RunOptions(reps=reps))
    directory = StudyDirectory(out)
    manifest = study._manifest()
    directory.open_for(manifest)
    for c in range(len(study.conditions)):
        for a in range(0, reps, CHUNK):
            b = min(reps, a + CHUNK)
            directory.write_chunk(synthetic_chunk(study, c, a, b), c, a, b,
                                  manifest["definition_hash"])


def peak_rss_mb(directory: Path, study: str | None = None) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `mlmsim study report directory [--study study]`."""
    extra = ["--study", study] if study else []
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "mlmsim", "study",
                           "report", str(directory), *extra], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
                     done.stderr)[1]
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    return kb / 1024, seconds


def main(argv: list[str]) -> None:
    study = None
    if argv[:1] == ["--study"]:
        study, argv = argv[1], argv[2:]
    sizes = [int(a) for a in argv] or [1000, 16000]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for reps in sizes:
            out = Path(tmp) / f"records_{reps}"
            write_study(out / "records" if study else out, reps)
            mb, seconds = peak_rss_mb(out, study)
            rows.append((reps, 27 * reps * 8, mb, seconds))
            print(f"27 x {reps:>6} replicates ({27 * reps * 8:>9,} records): "
                  f"peak RSS {mb:7.1f} MB, {seconds:6.1f} s", flush=True)
        if len(rows) > 1:
            print(f"ratio of peaks, largest / smallest: {rows[-1][2] / rows[0][2]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
