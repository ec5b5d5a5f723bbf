"""The ``mlmsim`` command, driven as a user drives it: in subprocesses (``python -m mlmsim``)
for fit (text, JSON, plots), simulate, spec and study, and for bad input (one line on
stderr, exit status 2); in-process (``main(argv)``) for the finer points."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, lme4_name

import mlmsim
from mlmsim import cli
from mlmsim.simstudy import load_study

HSB_RIS = "mathach ~ 1 + cses + (1 + cses | school)"
NELS_RIS = "math ~ homework + (1 + homework | school)"


def run(*args: str, cwd: Path | None = None, stdin: str | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "mlmsim", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _no_nan_json(text: str):
    def refuse(token):
        raise AssertionError(f"JSON holds {token}; numbers must be finite or null")
    return json.loads(text, parse_constant=refuse)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a failed command printed (asserting that there is exactly one)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mlmsim: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def nels_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "nels.csv"
    mlmsim.datasets.load("nels88").to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------
# fit, in subprocesses
# ---------------------------------------------------------------------------

def test_fit_json_hsb_is_lme4s():
    """`mlmsim fit --dataset hsb ... --ml --json` carries lme4's numbers (model ris_cses,
    reml false, tests/data/hsb_lme4.json)."""
    ref = next(e for e in json.loads((DATA / "hsb_lme4.json").read_text())
               if e["model"] == "ris_cses" and e["reml"] is False)
    assert ref["formula"] == HSB_RIS
    proc = run("fit", "--dataset", "hsb", HSB_RIS, "--ml", "--json")
    assert proc.returncode == 0, proc.stderr
    out = _no_nan_json(proc.stdout)
    assert out["method"] == "ML" and out["formula"] == HSB_RIS
    assert out["nobs"] == ref["nobs"] and out["ngroups"] == 160 and out["n_dropped"] == 0
    assert out["minus2ll"] == pytest.approx(ref["minus2ll"], abs=1e-3)
    for key in ("loglik", "aic", "bic"):
        assert out[key] == pytest.approx(ref[key], abs=1e-3), key
    assert out["npar"] == 6
    fe = out["fixed_effects"]
    assert list(fe) == [lme4_name(k) for k in ref["fixef"]]
    for k in ref["fixef"]:
        row = fe[lme4_name(k)]
        assert row["estimate"] == pytest.approx(ref["fixef"][k], rel=1e-5)
        assert row["se"] == pytest.approx(ref["se"][k], rel=1e-3)
        assert row["df"] == pytest.approx(ref["satterthwaite_df"][k], rel=1e-3)
        assert row["t"] == pytest.approx(row["estimate"] / row["se"])
        assert 0.0 <= row["p"] < 1e-30
        assert row["ci_lower"] < row["estimate"] < row["ci_upper"]
    T = dict(zip(out["T"]["names"], out["T"]["matrix"], strict=True))
    names = out["T"]["names"]
    for vc in ref["varcorr"]:
        if vc["grp"] == "Residual":
            assert out["sigma2"] == pytest.approx(vc["vcov"], rel=1e-3)
            assert out["covparms"]["sigma2"]["estimate"] == pytest.approx(vc["vcov"], rel=1e-3)
            continue
        a = lme4_name(vc["var1"])
        b = lme4_name(vc["var2"]) if vc["var2"] else a
        assert T[a][names.index(b)] == pytest.approx(vc["vcov"], rel=1e-3, abs=1e-4)
    cp = out["covparms"]
    assert list(cp) == ["var(Intercept)", "cov(cses,Intercept)", "var(cses)", "sigma2"]
    assert [v["sas"] for v in cp.values()] == ["UN(1,1)", "UN(2,1)", "UN(2,2)", "Residual"]
    assert all(v["se"] > 0 and v["z"] == pytest.approx(v["estimate"] / v["se"])
               for v in cp.values())
    assert out["flags"] == {"converged": True, "singular": ref["singular"],
                            "hessian_pd": True, "identifiable": True}
    assert out["messages"] == ref["messages"] == []
    assert out["ddf_method"] == "satterthwaite"
    assert len(out["theta"]) == 3 and len(out["hessian_eigenvalues"]) == 4


def test_fit_text_from_csv_with_plots(nels_csv, tmp_path):
    plots = tmp_path / "plots"
    proc = run("fit", str(nels_csv), NELS_RIS, "--ml", "--plot", str(plots))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Linear mixed model fit by maximum likelihood" in text
    assert "Number of obs: 519, groups: school, 23" in text
    assert "3639.0" in text  # lme4's -2LL 3639.037 (mlmsim/datasets/README.md)
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.strip()}
    assert float(rows["Intercept"][1]) == pytest.approx(46.3225, abs=2e-3)
    assert float(rows["homework"][1]) == pytest.approx(1.9869, abs=2e-3)
    assert float(rows["homework"][2]) == pytest.approx(0.9060, abs=2e-3)
    expected = {"group_lines.png", "variance_function.png", "within_between.png",
                "caterpillar_Intercept.png", "caterpillar_homework.png"}
    assert {p.name for p in plots.iterdir()} == expected
    for p in plots.iterdir():
        assert p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"
        assert f"wrote {p}" in proc.stderr


# ---------------------------------------------------------------------------
# bad input: one clear line, exit status 2
# ---------------------------------------------------------------------------

def _bad_cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, words the error line must contain)."""
    nels = root / "nels.csv"
    data = mlmsim.datasets.load("nels88")
    data.to_csv(nels, index=False)
    (root / "empty.csv").write_text("")
    (root / "header_only.csv").write_text("school,math,homework\n")
    (root / "ragged.csv").write_text("a,b\n1,2\n3,4,5,6\n")
    data.assign(math=data["sex"].map({1: "boy", 2: "girl"})).to_csv(root / "text_y.csv",
                                                                    index=False)
    (root / "not_a_spec.yaml").write_text("gamma: [1, 2\n  - oops: {\n")
    cases = {
        "missing file": (["fit", str(root / "nowhere.csv"), NELS_RIS],
                         ["nowhere.csv", "no such file", "check the path"]),
        "empty file": (["fit", str(root / "empty.csv"), NELS_RIS], ["empty.csv", "is empty"]),
        "header only": (["fit", str(root / "header_only.csv"), NELS_RIS], ["no rows"]),
        "ragged csv": (["fit", str(root / "ragged.csv"), "a ~ b + (1 | a)"],
                       ["cannot parse", "same number of"]),
        "directory as data": (["fit", str(root), NELS_RIS], ["is a directory"]),
        "unknown column": (["fit", str(nels), "math ~ homwork + (1 | school)"],
                           ["'homwork'", "not in the data", "available columns", "homework"]),
        "unknown group": (["fit", str(nels), "math ~ homework + (1 | schol)"], ["'schol'"]),
        "bad formula": (["fit", str(nels), "math ~ homework + (1 | school"],
                        ["unmatched", "lme4", "(1 + x | g)"]),
        "formula syntax": (["fit", str(nels), "math ~ homework +* (1 | school)"],
                           ["syntax", "lme4"]),
        "not a formula": (["fit", str(nels), "math"], ["not a formula"]),
        "formula before data": (["fit", NELS_RIS, str(nels)], ["data file comes first"]),
        "no random effects": (["fit", str(nels), "math ~ homework"], ["random-effects term"]),
        "non-numeric response": (["fit", str(root / "text_y.csv"), NELS_RIS],
                                 ["'math'", "numeric", "recode"]),
        "unknown dataset": (["fit", "--dataset", "hsbb", HSB_RIS], ["'hsbb'", "hsb, nels88"]),
        "bad ddf": (["fit", str(nels), NELS_RIS, "--ddf", "kenward"], ["--ddf", "choose from"]),
        "plot dir is a file": (["fit", str(nels), NELS_RIS, "--plot", str(nels)],
                               ["is a file", "--plot"]),
        "negative group size": (["simulate", "spec.yaml", "--groups", "10", "--size", "-5"],
                                ["--size", "positive", "-5"]),
        "zero groups": (["simulate", "spec.yaml", "--groups", "0"], ["--groups", "positive"]),
        "unknown command": (["fitt"], ["invalid choice", "'fitt'"]),
        "study report of no study": (["study", "report", str(root / "nothing")],
                                     ["not a directory"]),
    }
    cases.update(_spec_cases(root))
    return cases


def _spec_cases(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    spec = root / "spec.yaml"
    assert cli.main(["spec", "example", "-o", str(spec)]) == 0
    bad_T = root / "bad_T.yaml"
    bad_T.write_text(_with_non_psd_T(spec.read_text()))
    out = str(root / "out.csv")
    cases = {
        "spec check, non-PSD T": (["spec", "check", str(bad_T)],
                                  ["bad_T.yaml", "positive semi-definite"]),
        "spec not YAML": (["spec", "check", str(root / "not_a_spec.yaml")],
                          ["not_a_spec.yaml", "not valid YAML"]),
        "missing spec": (["spec", "check", str(root / "none.yaml")], ["none.yaml", "no such"]),
        "spec example to a missing directory": (
            ["spec", "example", "-o", str(root / "no_such_dir" / "spec.yaml")],
            ["cannot write", "does not exist", "create it"]),
    }
    cases.update({
        "spec with non-PSD T": (["simulate", str(bad_T), "--groups", "10", "--size", "5",
                                 "-o", out], ["bad_T.yaml", "positive semi-definite"]),
        "unwritable output path": (["simulate", str(spec), "--groups", "10", "--size", "5",
                                    "-o", str(root / "no_such_dir" / "out.csv")],
                                   ["cannot write", "does not exist", "create it"]),
        "output path is a directory": (["simulate", str(spec), "--groups", "10", "-o",
                                        str(root)], ["is a directory"]),
    })
    return cases


def _with_non_psd_T(text: str) -> str:
    """The example spec with T replaced by [[1, 2], [2, 1]] (eigenvalues 3 and -1)."""
    import yaml

    from mlmsim.generate.spec import ModelSpec

    raw = ModelSpec.from_yaml(text).to_dict()
    assert raw["T"] == [[4.0, 0.5], [0.5, 1.0]]
    raw["T"] = [[1.0, 2.0], [2.0, 1.0]]
    return yaml.safe_dump(raw)


# the kinds the issue names run as subprocesses (two at a time); the others in-process
SUBPROCESS_KINDS = ("missing file", "empty file", "unknown column", "bad formula",
                    "non-numeric response", "negative group size", "spec with non-PSD T",
                    "unwritable output path")


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cases = _bad_cases(root)
    sub = [name for name in cases if name in SUBPROCESS_KINDS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = dict(zip(sub, pool.map(lambda name: run(*cases[name][0], cwd=root), sub),
                         strict=True))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name in cases:
            if name not in procs:
                procs[name] = _in_process(cases[name][0])
    finally:
        os.chdir(cwd)
    return {name: (procs[name], words) for name, (_, words) in cases.items()}


def _in_process(argv: list[str]) -> subprocess.CompletedProcess:
    """``cli.main(argv)`` with stdout and stderr captured, as a CompletedProcess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_bad_input_kinds(bad_runs):
    """The eight kinds the issue names are all fed to a subprocess."""
    ran = {name for name, (proc, _) in bad_runs.items() if proc.args[0] == sys.executable}
    required = set(SUBPROCESS_KINDS)
    assert required <= ran
    assert len(bad_runs) >= 8


@pytest.mark.parametrize("name", [
    "missing file", "empty file", "header only", "ragged csv", "directory as data",
    "unknown column", "unknown group", "bad formula", "formula syntax", "not a formula",
    "formula before data", "no random effects", "non-numeric response", "unknown dataset",
    "bad ddf", "plot dir is a file", "negative group size", "zero groups", "unknown command",
    "study report of no study",
    "spec check, non-PSD T",
    "spec not YAML",
    "missing spec",
    "spec example to a missing directory",
    "spec with non-PSD T",
    "unwritable output path",
    "output path is a directory",
])
def test_bad_input_one_line_status_2(bad_runs, name):
    proc, words = bad_runs[name]
    assert proc.returncode == 2, (name, proc.stderr)
    line = _error_line(proc)
    for w in words:
        assert w.lower() in line.lower(), (name, w, line)
    assert "\x1b[" not in line
    assert proc.stdout == ""


def test_debug_shows_the_traceback(tmp_path):
    proc = _in_process(["fit", str(tmp_path / "nowhere.csv"), NELS_RIS, "--debug"])
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("mlmsim: error: cannot read")


# ---------------------------------------------------------------------------
# in-process: the finer points
# ---------------------------------------------------------------------------

def test_json_nan_is_null(capsys):
    path = DATA / "lme4_dummies.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["fit", str(path), "y ~ female + (1 + female + male | g)", "--ml",
                         "--json"])
    assert code == 0
    out = _no_nan_json(capsys.readouterr().out)
    assert out["flags"]["identifiable"] is False and out["flags"]["hessian_pd"] is False
    assert all(v["se"] is None for v in out["covparms"].values())
    assert all(isinstance(v["estimate"], float) for v in out["covparms"].values())
    assert any("not identifiable" in m for m in out["messages"])


def test_ddf_method_changes_the_table(capsys):
    assert cli.main(["fit", "--dataset", "hsb", HSB_RIS, "--ml", "--ddf", "containment"]) == 0
    text = capsys.readouterr().out
    assert "Fixed effects (containment df):" in text and "Fixed effects:" not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("cses"))
    assert float(line.split()[3]) == pytest.approx(159.0)  # J - 1: cses has a random slope
    assert cli.main(["fit", "--dataset", "hsb", HSB_RIS, "--ml", "--json", "--ddf",
                     "residual"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ddf_method"] == "residual"
    assert out["fixed_effects"]["cses"]["df"] == 7185 - 2


def test_warnings_are_one_line_each(capsys, monkeypatch):
    data = mlmsim.datasets.load("nels88")
    data.loc[:4, "math"] = np.nan
    monkeypatch.setattr(sys, "stdin", io.StringIO(data.to_csv(index=False)))
    assert cli.main(["fit", "-", NELS_RIS]) == 0
    out = capsys.readouterr()
    assert "Linear mixed model fit by REML" in out.out  # REML is the default
    assert "Observations not used: 5" in out.out
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("mlmsim: warning: ") for ln in lines)
    assert any("5" in ln for ln in lines)


def test_internal_error_is_status_1(capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(mlmsim, "fit", broken)
    assert cli.main(["fit", "--dataset", "hsb", HSB_RIS]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "internal error" in err and "boom" in err and "--debug" in err


def test_semicolon_separated_file_is_read(tmp_path, capsys):
    path = tmp_path / "semi.csv"
    mlmsim.datasets.load("nels88").to_csv(path, sep=";", index=False)
    assert cli.main(["fit", str(path), "math ~ homework + (1 | school)", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nobs"] == 519


def test_fit_to_dict_keys_are_documented():
    res = mlmsim.fit(NELS_RIS, mlmsim.datasets.load("nels88"), method="ML")
    d = res.to_dict()
    doc = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for key in d:
        assert f"`{key}`" in doc, key
    for key in list(d["fixed_effects"]["homework"]) + list(d["covparms"]["sigma2"]) + list(
            d["flags"]):
        assert f"`{key}`" in doc, key


@pytest.mark.parametrize("argv", [[], ["fit"], ["simulate"], ["spec"], ["study"],
                                  ["study", "run"], ["spec", "example"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: mlmsim")
    if not argv:
        for command in ("fit", "simulate", "spec", "study"):
            assert command in text
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"mlmsim {mlmsim.__version__}"


def test_missing_subcommand_is_one_line(capsys):
    assert cli.main([]) == 2
    assert cli.main(["study"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("required" in ln and "--help" in ln for ln in err)


# ---------------------------------------------------------------------------
# study: the command over the registry (a tiny study registered here; the real ones below)
# ---------------------------------------------------------------------------

def _tiny_study(quick: bool = False, n_reps: int | None = None, seed: int | None = None):
    """A tiny study: the mean of normal data (for the CLI tests)."""
    from mlmsim.simstudy import Study

    def generate(cond, rng):
        return rng.normal(1.0, 1.0, size=cond["size"])

    def mean(data):
        return {"mu": {"estimate": float(np.mean(data)),
                       "se": float(np.std(data, ddof=1) / np.sqrt(len(data)))}}

    return Study({"size": [5] if quick else [5, 20]}, generate, {"mean": mean},
                 truth={"mu": 1.0}, n_reps=n_reps or 10, seed=seed if seed is not None else 1)


def _register_tiny(register_study, name: str, calls: list) -> None:
    """A study module as mlmsim.studies defines them: TITLE, run(out_dir, options),
    report(out_dir) writing report.md."""

    def run(out_dir, options):
        calls.append(("run", Path(out_dir), options))
        _tiny_study(quick=options.quick, n_reps=options.reps, seed=options.seed).run(
            Path(out_dir) / "records")
        report(out_dir)

    def report(out_dir):
        calls.append(("report", Path(out_dir)))
        n = len(load_study(Path(out_dir) / "records").records)
        (Path(out_dir) / "report.md").write_text(f"# Tiny\n\n{n} records\n")

    register_study(name, "Tiny: the mean of normal data", run, report)


def test_study_modules_through_the_registry(register_study, capsys, tmp_path):
    calls: list = []
    _register_tiny(register_study, "tiny_mean", calls)
    assert cli.main(["study", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1] == "tiny_mean     Tiny: the mean of normal data"
    assert [ln.split()[0] for ln in listed] == mlmsim.studies.names()
    out = tmp_path / "tiny_mean"
    assert cli.main(["study", "run", "tiny-mean", "--quick", "--reps", "4", "--seed", "9",
                     "--jobs", "1", "--out", str(out)]) == 0
    ran = capsys.readouterr()
    assert ran.out == "# Tiny\n\n4 records\n"
    assert json.loads((out / "study.json").read_text()) == {"study": "tiny_mean"}
    (kind, where, options), _ = calls[:2]
    assert kind == "run" and where == out
    assert (options.quick, options.reps, options.seed, options.n_jobs) == (True, 4, 9, 1)
    assert options.backend == "loky" and options.scheduler is None
    (out / "report.md").unlink()
    # report: found by the directory's name, or by --study
    assert cli.main(["study", "report", str(out)]) == 0
    assert capsys.readouterr().out == "# Tiny\n\n4 records\n"
    elsewhere = tmp_path / "copy"
    out.rename(elsewhere)
    assert cli.main(["study", "report", str(elsewhere), "--study", "tiny_mean"]) == 0
    assert capsys.readouterr().out == "# Tiny\n\n4 records\n"
    assert [c[0] for c in calls] == ["run", "report", "report", "report"]
    # renamed, the folder still names its study (study.json, written by 'study run')
    assert cli.main(["study", "report", str(elsewhere)]) == 0
    assert capsys.readouterr().out == "# Tiny\n\n4 records\n"
    # --csv: the report, and the measures of the records beside it
    assert cli.main(["study", "report", str(elsewhere), "--csv", str(tmp_path / "m.csv")]) == 0
    assert capsys.readouterr().out == "# Tiny\n\n4 records\n"
    measures = pd.read_csv(tmp_path / "m.csv")
    n = measures.loc[(measures.parameter == "mu") & (measures.measure == "bias"), "n"]
    assert n.tolist() == [4]
    assert measures.loc[measures.measure == "n_errors", "estimate"].tolist() == [0]
    # without it, a directory of records is still summarised generically
    (elsewhere / "study.json").unlink()
    assert cli.main(["study", "report", str(elsewhere)]) == 0
    assert "bias" in capsys.readouterr().out
    assert cli.main(["study", "report", str(tmp_path)]) == 2
    assert "no study records" in capsys.readouterr().err


def test_study_run_refuses_what_it_cannot_do(register_study, capsys, tmp_path):
    _register_tiny(register_study, "tiny", [])
    assert cli.main(["study", "run", "nope"]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert cli.main(["study", "report", str(tmp_path), "--study", "nope"]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert cli.main(["study", "run", "tiny", "--scheduler", "tcp://x:1"]) == 2
    assert "--backend dask" in capsys.readouterr().err


def test_quick_study_subprocess(tmp_path):
    """The real registry: `mlmsim study list`, a quick run of its first study (in a
    subprocess) and a report of it."""
    listed = _in_process(["study", "list"])
    assert listed.returncode == 0, listed.stderr
    names = [ln.split()[0] for ln in listed.stdout.splitlines()]
    assert names == mlmsim.studies.names(), listed.stdout
    name = names[0]
    out = tmp_path / name
    proc = run("study", "run", name, "--quick", "--reps", "2", "--seed", "1", "--out", str(out),
               timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert out.is_dir() and any(out.iterdir())
    assert proc.stdout.strip()
    rep = _in_process(["study", "report", str(out)])
    assert rep.returncode == 0, rep.stderr
    assert rep.stdout.strip()


# ---------------------------------------------------------------------------
# simulate and spec (the generator)
# ---------------------------------------------------------------------------

def test_spec_example_and_check(tmp_path, capsys):
    from mlmsim.generate.spec import ModelSpec

    assert cli.main(["spec", "example"]) == 0
    example = capsys.readouterr().out
    assert example.startswith("#") and example.count("\n#") >= 3  # annotated
    assert "gamma" in example and "T:" in example and "sigma2" in example
    assert ModelSpec.from_yaml(example) == ModelSpec.example()
    path = tmp_path / "spec.yaml"
    assert cli.main(["spec", "example", "-o", str(path)]) == 0
    assert path.read_text() == example
    assert f"wrote {path}" in capsys.readouterr().err
    assert cli.main(["spec", "check", str(path)]) == 0
    checked = capsys.readouterr()
    assert "is a valid spec" in checked.err
    assert ModelSpec.from_yaml(checked.out) == ModelSpec.example()
    broken = tmp_path / "broken.yaml"
    broken.write_text("gamma: {Intercept: 1.0\nsigma2: [1, 2\n")
    assert cli.main(["spec", "check", str(broken)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"invalid spec {str(broken)!r}" in err[0] and "is not valid YAML" in err[0]
    assert len(err) == 1


def test_spec_example_simulate_and_fit(tmp_path):
    from mlmsim.generate.spec import ModelSpec

    spec = tmp_path / "spec.yaml"
    assert cli.main(["spec", "example", "-o", str(spec)]) == 0
    out = tmp_path / "sim.csv"
    proc = run("simulate", str(spec), "--groups", "30", "--size", "8", "--seed", "11",
               "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 240 rows to {out}" in proc.stderr
    data = pd.read_csv(out)
    assert len(data) == 240
    loaded = ModelSpec.load(spec)
    group = _group_column(loaded, data)
    assert data[group].nunique() == 30
    assert (data.groupby(group).size() == 8).all()
    # the same seed, the same data (here in-process, to stdout)
    again = _in_process(["simulate", str(spec), "--groups", "30", "--size", "8", "--seed",
                         "11"])
    assert again.returncode == 0 and again.stderr == ""
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(again.stdout)), data)
    other = _in_process(["simulate", str(spec), "-J", "30", "-n", "8", "--seed", "12"])
    assert not pd.read_csv(io.StringIO(other.stdout)).equals(data)
    fitted = _in_process(["fit", str(out), _formula_of(loaded), "--json"])
    assert fitted.returncode == 0, fitted.stderr
    assert _no_nan_json(fitted.stdout)["ngroups"] == 30


def _group_column(spec, data: pd.DataFrame) -> str:
    for attr in ("group", "group_name", "group_column"):
        value = getattr(spec, attr, None)
        if isinstance(value, str) and value in data.columns:
            return value
    return "g" if "g" in data.columns else data.columns[0]


def _formula_of(spec) -> str:
    value = getattr(spec, "formula", None)
    return value() if callable(value) else value


def test_fit_kenward_roger_and_nobound(nels_csv):
    """--ddf kenward-roger reports KR's adjusted SEs and df; --nobound an unbounded fit;
    --ddf kenward-roger with --ml is a one-line error."""
    out = _in_process(["fit", str(nels_csv), NELS_RIS, "--ddf", "kenward-roger", "--nobound",
                       "--json"])
    assert out.returncode == 0, out.stderr
    got = _no_nan_json(out.stdout)["fixed_effects"]
    res = mlmsim.fit(NELS_RIS, mlmsim.datasets.load("nels88"), bounded=False)
    table = res.coef_table("kenward-roger")
    for name, row in table.iterrows():
        assert got[name]["se"] == pytest.approx(row["se"], rel=1e-12)
        assert got[name]["df"] == pytest.approx(row["df"], rel=1e-12)
    bad = _in_process(["fit", str(nels_csv), NELS_RIS, "--ddf", "kenward-roger", "--ml"])
    assert bad.returncode == 2
    assert "REML" in _error_line(bad)
