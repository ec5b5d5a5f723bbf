"""`mlmsim study report` streams: its peak memory does not grow with the number of records
(the Maas and Hox design, 27 conditions, at 1,000 and 16,000 replicates per condition,
written as synthetic records by ``benchmarks/bench_report_memory.py``)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_report_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_report_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("/usr/bin/time") is None, reason="needs /usr/bin/time -v")
def test_report_memory_is_bounded_by_the_chunk_not_the_records(tmp_path):
    bench = _bench()
    peaks = {}
    for reps in (1000, 16000):
        out = tmp_path / f"records_{reps}"
        bench.write_study(out, reps)
        peaks[reps], _ = bench.peak_rss_mb(out)
        shutil.rmtree(out)
    print(f"peak RSS: {peaks[1000]:.0f} MB at 27 x 1,000, {peaks[16000]:.0f} MB at 27 x 16,000")
    assert peaks[16000] <= 1.5 * peaks[1000], peaks
