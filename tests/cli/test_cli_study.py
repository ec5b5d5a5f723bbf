"""`mlmsim study run` / `study report` as a user meets them: the report finds its study
from the folder, quick runs stay out of results/, and a bad --jobs writes nothing."""

import subprocess
import sys

import pytest


def mlmsim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mlmsim", *args], capture_output=True,
                          text=True, timeout=900, cwd=cwd)


def test_report_of_a_quick_run_in_any_folder_finds_its_study(tmp_path):
    out = tmp_path / "X"
    run = mlmsim("study", "run", "bias", "--quick", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert (out / "study.json").is_file()
    (out / "report.md").unlink()
    rep = mlmsim("study", "report", str(out))
    assert rep.returncode == 0, rep.stderr
    assert (out / "report.md").is_file()  # the bias study's own report, written again
    assert rep.stdout.startswith("# ")


def test_quick_run_refuses_results_and_defaults_to_results_quick(tmp_path):
    (tmp_path / "results" / "hessian").mkdir(parents=True)
    (tmp_path / "results" / "hessian" / "report.md").write_text("the full run\n")
    proc = mlmsim("study", "run", "hessian", "--quick", "--out", "results/hessian",
                  cwd=tmp_path)
    assert proc.returncode == 2
    assert "quick run does not write into" in proc.stderr and "results-quick" in proc.stderr
    assert (tmp_path / "results" / "hessian" / "report.md").read_text() == "the full run\n"
    assert sorted(p.name for p in (tmp_path / "results" / "hessian").iterdir()) == ["report.md"]


@pytest.mark.parametrize("jobs", ["0", "-3"])
def test_bad_jobs_is_refused_before_anything_is_written(tmp_path, jobs):
    out = tmp_path / "never"
    proc = mlmsim("study", "run", "bias", "--quick", "--jobs", jobs, "--out", str(out))
    assert proc.returncode == 2
    assert f"--jobs {jobs}" in proc.stderr
    assert not out.exists()
