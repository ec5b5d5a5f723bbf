"""The ``mlmsim`` command: fit a model to a CSV file, simulate data from a spec, run studies.

One argparse subcommand per task (``fit``, ``simulate``, ``spec``, ``study``), each a
small ``_cmd_*`` function that reads its arguments, calls the library and writes the
result: the summary or JSON on stdout, notes ("wrote ...") and warnings on stderr, one
line each. A failure caused by the input (a missing file, an unknown column, a bad
formula or spec, an unwritable output path) prints one line on stderr naming the problem
and the fix, and exits with status 2; ``--debug`` adds the traceback. Status 1 is kept
for mlmsim's own bugs. ``main(argv)`` returns the exit status, so the command can be
tested in-process as well as in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import os
import re
import sys
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mlmsim
from mlmsim import __version__
from mlmsim import modelplots as mp
from mlmsim.engine.inference import DDF_METHODS
from mlmsim.generate.simulate import simulate
from mlmsim.generate.spec import ModelSpec
from mlmsim.planning import power_curve
from mlmsim.simstudy import IncompleteStudyWarning, load_study, summarise, summary_table
from mlmsim.simstudy.storage import CorruptChunkWarning, OverlappingChunksWarning
from mlmsim.studies import RunOptions, write_index

__all__ = ["main", "build_parser", "fit_to_dict", "CLIError", "EXIT_ERROR", "EXIT_BUG"]

EXIT_ERROR = 2  # a problem with the input: one line on stderr, fixable by the user
EXIT_BUG = 1  # an unexpected exception inside mlmsim

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FORMULA_HELP = 'write it as lme4 does, e.g. "y ~ 1 + x + (1 + x | g)"'


class CLIError(Exception):
    """A user error: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem if not fix else f"{problem.rstrip('.')}; {fix}")
        self.problem, self.fix = problem, fix


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised as CLIError, exit status 2)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        where = f"{self.prog}: " if " " in self.prog else ""
        raise CLIError(f"{where}{message}", f"see '{self.prog} --help'")


# ---------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative whole number, got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative whole number, got {value}")
    return value


# ---------------------------------------------------------------------------
# reading and writing files
# ---------------------------------------------------------------------------

def _read_table(path: str):
    """A data frame from a CSV file (``-`` reads stdin; .tsv/.tab are tab-separated,
    .parquet is Parquet). A one-column result whose header holds ';' or tabs is read
    again with that separator."""

    name = "standard input" if path == "-" else repr(path)
    suffixes = [s.lower() for s in Path(path).suffixes]
    try:
        if path == "-":
            data = pd.read_csv(sys.stdin)
        elif suffixes and suffixes[-1] in (".parquet", ".pq"):
            data = pd.read_parquet(path)
        else:
            sep = "\t" if any(s in (".tsv", ".tab") for s in suffixes) else ","
            data = pd.read_csv(path, sep=sep)
            if data.shape[1] == 1 and sep == ",":
                header = str(data.columns[0])
                for other in (";", "\t"):
                    if other in header:
                        data = pd.read_csv(path, sep=other)
                        sep = other
                        break
            if sep != ",":
                data = _decimal_commas(data)
    except FileNotFoundError:
        raise CLIError(f"cannot read {name}: no such file",
                       "check the path (or use --dataset hsb|nels88 for the packaged data)") \
            from None
    except IsADirectoryError:
        raise CLIError(f"cannot read {name}: it is a directory",
                       "give the path of a CSV file") from None
    except PermissionError:
        raise CLIError(f"cannot read {name}: permission denied",
                       "check the file's permissions") from None
    except pd.errors.EmptyDataError:
        raise CLIError(f"{name} is empty",
                       "give a CSV file with a header row and one row per observation") \
            from None
    except pd.errors.ParserError as exc:
        raise CLIError(f"cannot parse {name} as CSV ({_one_line(str(exc))})",
                       "check that every line has the same number of comma-separated "
                       "fields") from None
    except UnicodeDecodeError:
        raise CLIError(f"{name} is not a text CSV file (it is not UTF-8)",
                       "export the data as a UTF-8 CSV file") from None
    except (OSError, ValueError) as exc:  # e.g. a corrupt Parquet file
        raise CLIError(f"cannot read {name}: {_one_line(str(exc))}",
                       "give a CSV (or Parquet) file") from None
    if data.shape[0] == 0:
        raise CLIError(f"{name} has a header but no rows of data",
                       "give a file with one row per observation")
    return data


def _check_writable(path: str) -> None:
    """Fail early, with the fix, if ``path`` cannot be written as a file."""
    if path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"cannot write {path!r}: it is a directory",
                       "give a file name, e.g. -o out.csv")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise CLIError(f"cannot write {path!r}: the directory {str(parent)!r} does not exist",
                       "create it first or choose another output path")
    if not parent.is_dir():
        raise CLIError(f"cannot write {path!r}: {str(parent)!r} is not a directory",
                       "choose another output path")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CLIError(f"cannot write {path!r}: permission denied",
                       "choose a path you can write to")


def _write_text(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    _check_writable(path)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise CLIError(f"cannot write {path!r}: {exc.strerror or exc}",
                       "choose another output path") from None


def _note(text: str) -> None:
    print(f"mlmsim: {text}", file=sys.stderr)


_DECIMAL_COMMA = re.compile(r"^\s*[-+]?\d*,\d+(?:[eE][-+]?\d+)?\s*$|^\s*[-+]?\d+\s*$")


def _decimal_commas(data):
    """Text columns of a ';'- or tab-separated file whose every value is a number written
    with a decimal comma (``1,5``, as spreadsheets in many locales export them) are read
    as numbers, with a note naming them."""
    converted = []
    for c in data.columns:
        col = data[c]
        if col.dtype.kind in "biufcmM":
            continue
        values = col.dropna().astype(str)
        if len(values) and values.str.match(_DECIMAL_COMMA).all() \
                and values.str.contains(",").any():
            data[c] = values.str.replace(",", ".", regex=False).astype(float) \
                .reindex(col.index)
            converted.append(str(c))
    if converted:
        _note(f"read {', '.join(map(repr, converted))} with decimal commas")
    return data


def _one_line(text: str) -> str:
    """One line of an exception's text: ANSI colours removed; a pointer block under the
    first line (formulaic marks the offending part of a formula so) dropped; other line
    breaks joined."""
    coloured = bool(_ANSI.search(text))
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    if not lines:
        return ""
    if coloured or any(ch in ln for ln in lines[1:] for ch in "\u29db\u29da"):
        return lines[0]
    return " ".join(lines)


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    """A float for JSON: NaN and infinities become None (null)."""
    v = float(value)
    return v if math.isfinite(v) else None


def fit_to_dict(res, ddf: str = "satterthwaite", level: float = 0.95) -> dict[str, Any]:
    """Every number of a FitResult as plain JSON types (the keys are listed in docs/cli.md).

    Floats are Python floats, NaN and infinities None; fixed effects come from
    ``res.coef_table(ddf)``, covariance parameters from ``res.covparms``.
    """
    ct = res.coef_table(ddf=ddf, level=level)
    fixed = {str(name): {k: _num(row[k]) for k in ("estimate", "se", "df", "t", "p",
                                                    "ci_lower", "ci_upper")}
             for name, row in ct.iterrows()}
    cov = {}
    for name, row in res.covparms.iterrows():
        cov[str(name)] = {"sas": str(row["sas"]),
                          **{k: _num(row[k]) for k in ("estimate", "se", "z", "p")}}
    T = res.T
    group = res.design.formula.group if res.design is not None else None
    response = res.design.formula.response if res.design is not None else None

    return {
        "mlmsim_version": __version__,
        "formula": res.formula,
        "method": res.method,
        "response": response,
        "group": group,
        "nobs": int(res.nobs),
        "ngroups": int(res.ngroups),
        "n_dropped": int(res.n_dropped),
        "minus2ll": _num(res.deviance),
        "loglik": _num(res.loglik),
        "aic": _num(res.aic),
        "bic": _num(res.bic),
        "npar": int(res.npar),
        "ddf_method": ddf,
        "ci_level": float(level),
        "fixed_effects": fixed,
        "covparms": cov,
        "T": {"names": [str(n) for n in T.index],
              "matrix": [[_num(v) for v in row] for row in T.to_numpy()]},
        "sigma2": _num(res.sigma2),
        "theta": [_num(v) for v in res.theta],
        "flags": {"converged": bool(res.converged), "singular": bool(res.singular),
                  "hessian_pd": bool(res.hessian_pd), "identifiable": bool(res.identifiable)},
        "messages": [str(m) for m in res.messages],
        "hessian_eigenvalues": [_num(v) for v in res.hessian_eigenvalues],
        "iterations": int(res.iterations),
    }


def _fit_hint(message: str) -> str:
    """The engine's ValueError text, with the fix added where the text lacks one."""
    msg = _one_line(message)
    low = msg.lower()
    if "formula" in low and ("syntax" in low or "unmatched" in low or "parse" in low):
        return f"{msg.rstrip('.')}; {_FORMULA_HELP}"
    if "must be numeric" in low:
        return f"{msg.rstrip('.')}; choose a numeric response, or recode the column as numbers"
    return msg


def _text_summary(res, ddf: str) -> str:
    """``res.summary()``, its fixed-effects table recomputed with ``ddf`` degrees of
    freedom when that is not Satterthwaite's."""
    text = res.summary()
    if ddf == "satterthwaite":
        return text
    ct = res.coef_table(ddf=ddf)
    rows = [f"Fixed effects ({ddf} df):",
            f"{'':<16}{'Estimate':>12}{'Std. Error':>12}{'df':>10}{'t value':>10}"
            f"{'Pr(>|t|)':>11}"]
    for name, r in ct.iterrows():
        p = "NA" if not math.isfinite(r.p) else ("<2e-16" if r.p < 2e-16 else f"{r.p:.4g}")
        rows.append(f"{name:<16}{r.estimate:12.4f}{r.se:12.4f}{r.df:10.1f}{r.t:10.2f}{p:>11}")
    lines = text.split("\n")
    try:
        start = lines.index("Fixed effects:")
        stop = lines.index("", start)
    except ValueError:
        return text + "\n\n" + "\n".join(rows)
    return "\n".join(lines[:start] + rows + lines[stop:])


def _cmd_fit(args: argparse.Namespace) -> int:
    given = [a for a in (args.data, args.formula) if a is not None]
    if args.dataset is not None:
        if len(given) != 1:
            raise CLIError("with --dataset give only the formula",
                           f'e.g. mlmsim fit --dataset {args.dataset} "FORMULA"')
        try:
            data = mlmsim.datasets.load(args.dataset)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        formula = given[0]
    else:
        if len(given) != 2:
            raise CLIError("give the data file and the formula",
                           'e.g. mlmsim fit data.csv "y ~ x + (1 + x | g)", or --dataset hsb '
                           '"FORMULA"')
        if "~" in args.data and "~" not in args.formula:
            raise CLIError("the data file comes first, then the formula",
                           f'e.g. mlmsim fit {args.formula} "{args.data}"')
        data = _read_table(args.data)
        formula = args.formula
    if "~" not in formula:
        raise CLIError(f"{formula!r} is not a formula (no '~')", _FORMULA_HELP)
    if args.ddf not in DDF_METHODS:
        raise CLIError(f"unknown --ddf {args.ddf!r}", f"choose one of {', '.join(DDF_METHODS)}")
    method = "ML" if args.ml else "REML"
    if args.ddf == "kenward-roger" and method == "ML":
        raise CLIError("--ddf kenward-roger needs a REML fit", "drop --ml (REML is the default)")
    if args.plot is not None:
        _plot_dir(Path(args.plot))
    try:
        res = mlmsim.fit(formula, data, method=method, bounded=not args.nobound)
    except ValueError as exc:
        raise CLIError(_fit_hint(str(exc))) from exc
    if args.json:
        print(json.dumps(fit_to_dict(res, ddf=args.ddf), indent=2, allow_nan=False))
    else:
        print(_text_summary(res, args.ddf))
    if args.plot is not None:
        _write_fit_plots(res, data, Path(args.plot), args.plot_x)
    return 0


def _safe_name(term: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", term).strip("_") or "term"


def _plot_dir(out: Path) -> None:
    """Create the --plot directory (and its parents), or say why it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CLIError(f"cannot write plots to {str(out)!r}: it is a file",
                       "give a directory for --plot") from None
    except OSError as exc:
        raise CLIError(f"cannot create the plot directory {str(out)!r}: "
                       f"{exc.strerror or exc}", "give another directory for --plot") from None
    if not os.access(out, os.W_OK):
        raise CLIError(f"cannot write plots to {str(out)!r}: permission denied",
                       "give another directory for --plot")


def _write_fit_plots(res, data, out: Path, x: str | None) -> list[Path]:
    """The model plots of ``res`` as PNG files in ``out`` (created if needed)."""
    _plot_dir(out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(ax, name: str) -> None:
        path = out / name
        try:
            ax.figure.savefig(path, dpi=120)
        except OSError as exc:
            raise CLIError(f"cannot write {str(path)!r}: {exc.strerror or exc}",
                           "give another directory for --plot") from None
        finally:
            plt.close(ax.figure)
        written.append(path)
        _note(f"wrote {path}")

    try:
        x = mp.default_x(res) if x is None else x
    except ValueError as exc:
        _note(f"no group-lines or variance plot: {exc}")
        x = None
    if x is not None:
        try:
            save(mp.plot_group_lines(res, x=x, data=data), "group_lines.png")
        except ValueError as exc:
            raise CLIError(f"--plot: {exc}", "choose the x variable with --plot-x") from None
        if x in res.random_names and x != "Intercept":
            save(mp.plot_variance_function(res, x=x), "variance_function.png")
        else:
            _note(f"no variance-function plot: {x!r} has no random slope in this model")
        y, group = res.design.formula.response, res.design.formula.group
        if x in data.columns and _varies_both_ways(data, x, group):
            save(mp.plot_within_between(data, x, y, group), "within_between.png")
        else:
            _note(f"no within/between plot: {x!r} is not a data column whose values vary both "
                  "within and between groups (plot the uncentred variable with "
                  "mlmsim.plot_within_between)")
    for term in res.random_names:
        save(mp.plot_caterpillar(res, term=term), f"caterpillar_{_safe_name(term)}.png")
    return written


def _varies_both_ways(data, x: str, group: str) -> bool:
    """x has a within-group and a between-group variance, each at least 0.1% of the total."""

    if not pd.api.types.is_numeric_dtype(data[x]) or pd.api.types.is_bool_dtype(data[x]):
        return False
    df = data[[x, group]].dropna()
    if df.empty:
        return False
    xv = df[x].astype(float)
    total = float(xv.var())
    if not np.isfinite(total) or total <= 0:
        return False
    means = xv.groupby(df[group]).transform("mean")
    between = float(means.var())
    within = float((xv - means).var())
    return between > 1e-3 * total and within > 1e-3 * total


# ---------------------------------------------------------------------------
# simulate and spec
# ---------------------------------------------------------------------------

def _load_spec(path: str):
    p = Path(path)
    if not p.exists():
        raise CLIError(f"cannot read the spec {path!r}: no such file",
                       "check the path; 'mlmsim spec example' prints a spec to start from")
    if p.is_dir():
        raise CLIError(f"cannot read the spec {path!r}: it is a directory",
                       "give the path of a YAML or JSON spec file")
    try:
        return ModelSpec.load(p)
    except (ValueError, KeyError, TypeError) as exc:
        text = _one_line(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args
                         else str(exc))
        raise CLIError(f"invalid spec {path!r}: {text}",
                       "fix the spec ('mlmsim spec example' prints an annotated one)") from exc
    except OSError as exc:
        raise CLIError(f"cannot read the spec {path!r}: {exc.strerror or exc}",
                       "check the file") from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] == "yaml":
            raise CLIError(f"the spec {path!r} is not valid YAML ({_one_line(str(exc))})",
                           "compare it with 'mlmsim spec example'") from None
        raise


def _cmd_simulate(args: argparse.Namespace) -> int:
    out = args.out
    _check_writable(out)
    spec = _load_spec(args.spec)
    if args.groups is None and getattr(spec, "n_groups", None) is None:
        raise CLIError(f"the spec {args.spec!r} sets no number of groups", "give --groups J")
    if args.size is None and getattr(spec, "group_sizes", None) is None:
        raise CLIError(f"the spec {args.spec!r} sets no group size", "give --size N")
    try:
        data = simulate(spec, args.groups, group_size=args.size, rng=args.seed)
    except ValueError as exc:
        raise CLIError(f"cannot simulate from {args.spec!r}: {_one_line(str(exc))}",
                       "check --groups, --size and the spec") from exc
    _write_text(out, data.to_csv(index=False))
    if out != "-":
        _note(f"wrote {len(data)} rows to {out}")
    return 0


def _cmd_spec_example(args: argparse.Namespace) -> int:
    text = ModelSpec.example_yaml()
    if args.out:
        _write_text(args.out, text)
        _note(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_spec_check(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    print(spec.to_yaml() if hasattr(spec, "to_yaml") else repr(spec), end="")
    _note(f"{args.spec} is a valid spec")
    return 0


# ---------------------------------------------------------------------------
# study
# ---------------------------------------------------------------------------

class _Registry:
    """The studies of ``mlmsim.studies_registry()``, loaded one at a time when asked for.

    The registry may return a mapping name -> study, or an object with ``names()`` and
    ``get(name)`` (such as the :mod:`mlmsim.studies` package)."""

    def __init__(self, reg: Any):
        if isinstance(reg, Mapping):
            self.names, self._get = list(reg), reg.__getitem__
        elif callable(getattr(reg, "names", None)) and callable(getattr(reg, "get", None)):
            self.names, self._get = list(reg.names()), reg.get
        else:
            raise CLIError(f"mlmsim.studies_registry() returned a {type(reg).__name__}, not a "
                           "mapping of study names", "report this as a bug")

    def key(self, name: str) -> str | None:
        for candidate in (name, name.replace("-", "_").lower()):
            if candidate in self.names:
                return candidate
        return None

    def get(self, name: str) -> Any:
        key = self.key(name)
        if key is None:
            raise CLIError(f"unknown study {name!r}",
                           f"choose one of {', '.join(self.names) or '(none)'}; "
                           "'mlmsim study list' describes them")
        return self._get(key)


def _registry() -> _Registry:
    """The studies of ``mlmsim.studies_registry()``."""
    return _Registry(mlmsim.studies_registry())


def _is_module_study(entry: Any) -> bool:
    """A study module (or object) with ``run(out_dir, options)`` and ``report(out_dir)``,
    rather than a factory returning a :class:`mlmsim.simstudy.Study`."""
    return (inspect.ismodule(entry) or not callable(entry)) and callable(
        getattr(entry, "run", None))


def _describe(entry: Any) -> str:
    text = (getattr(entry, "TITLE", None) or getattr(entry, "description", None)
            or inspect.getdoc(entry) or "")
    return str(text).strip().split("\n")[0]


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The options of a study module's ``run`` (without ``--seed``, RunOptions' seed)."""
    values = {"quick": args.quick, "reps": args.reps, "n_jobs": args.jobs,
              "backend": args.backend, "scheduler": args.scheduler, "seed": args.seed}
    if args.seed is None:
        del values["seed"]
    return RunOptions(**values)


def _build_study(name: str, entry: Any, quick: bool, reps: int | None, seed: int | None):
    build = entry.build if hasattr(entry, "build") else entry
    wanted = {"quick": quick, "n_reps": reps, "seed": seed}
    try:
        params = inspect.signature(build).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for key, value in wanted.items():
        if key in params or takes_all:
            kwargs[key] = value
        elif key != "quick" and value is not None:
            flag = {"n_reps": "--reps", "seed": "--seed"}[key]
            raise CLIError(f"study {name!r} does not take {flag}", f"run it without {flag}")
        elif key == "quick" and value:
            raise CLIError(f"study {name!r} has no quick version", "run it without --quick")
    return build(**kwargs)


def _cmd_study_list(args: argparse.Namespace) -> int:
    reg = _registry()
    width = max((len(n) for n in reg.names), default=0)
    for name in reg.names:
        try:
            text = _describe(reg.get(name))
        except ImportError as exc:  # a study module that cannot be loaded: say so, go on
            text = f"(cannot be loaded: {_one_line(str(exc))})"
        print(f"{name:<{width}}  {text}".rstrip())
    return 0


def _cmd_study_run(args: argparse.Namespace) -> int:
    entry = _registry().get(args.name)
    if args.scheduler is not None and args.backend != "dask":
        raise CLIError("--scheduler needs --backend dask", "add --backend dask")
    if args.jobs == 0 or args.jobs < -1:
        raise CLIError(f"--jobs {args.jobs}: the number of worker processes must be at least "
                       "1 (or -1 for one per core)", "give --jobs 1, 2, ... or -1")
    default = Path(QUICK_RESULTS if args.quick else "results") / args.name
    out = Path(args.out) if args.out is not None else default
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file", "give a directory for the study")
    if args.quick and out.resolve().is_relative_to(Path("results").resolve()):
        raise CLIError(f"a quick run does not write into {str(out)!r}: results/ holds the "
                       "full runs, and only a full run may change them",
                       f"write it under {QUICK_RESULTS}/ (the default), or drop --quick")
    out.mkdir(parents=True, exist_ok=True)
    _write_text(str(out / STUDY_FILE), json.dumps({"study": args.name}) + "\n")
    if _is_module_study(entry):
        entry.run(out, _run_options(args))
        _note(f"study {args.name!r} is in {out}")
        _print_report(out)
        return 0
    study = _build_study(args.name, entry, args.quick, args.reps, args.seed)
    result = study.run(out, n_jobs=args.jobs, backend=args.backend, scheduler=args.scheduler)
    _note(f"records of study {args.name!r} are in {out}")
    report = getattr(entry, "report", None)
    if callable(report):
        report(result, out)
    else:
        _print_summary(result)
    return 0


def _print_report(out: Path) -> bool:
    """Print ``out/report.md`` if the study wrote one; return whether it did. A study
    directory inside ``results/`` also refreshes the index ``results/README.md``."""
    report = out / "report.md"
    if report.is_file() and out.resolve().parent.name == "results":
        write_index(out.resolve().parent)
    if not report.is_file():
        return False
    sys.stdout.write(report.read_text())
    _note(f"the report is {report}")
    return True


def _print_summary(source: Any, csv: str | None = None) -> None:
    summary = summarise(source)
    if csv:
        _write_text(csv, summary.to_csv(index=False))
        _note(f"wrote {csv}")
    table = summary_table(summary)

    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.max_rows", None, "display.max_colwidth", 40):
        print(table.to_string())


QUICK_RESULTS = "results-quick"
"""Where quick runs go: results/ holds full runs only (a quick run refuses to write there)."""

STUDY_FILE = "study.json"
"""The file in a study's output folder that names the study ('study report' reads it)."""


def _study_of_directory(d: Path, name: str | None) -> Any | None:
    """The registered study module that wrote ``d``: ``--study NAME``, else the one named in
    ``d/study.json`` (written by 'study run'), else the one named like the directory
    (results/bias -> bias); None if there is no such module."""

    if name is None:  # the name 'study run' wrote beside the records
        with contextlib.suppress(OSError, ValueError, AttributeError):
            name = json.loads((d / STUDY_FILE).read_text()).get("study")
    reg = _registry()
    if name is not None:
        entry = reg.get(name)
    else:
        key = reg.key(d.resolve().name)
        entry = None if key is None else reg.get(key)
    return entry if entry is not None and _is_module_study(entry) else None


def _record_roots(d: Path) -> list[Path]:
    """The study directories (with a manifest) a report reads: ``d`` itself, ``d/records``,
    or one subdirectory of ``d/records`` per block of a study."""
    if (d / "manifest.json").exists():
        return [d]
    if (d / "records" / "manifest.json").exists():
        return [d / "records"]
    return [m.parent for m in sorted(d.glob("records/**/manifest.json"))]


def _integrity_lines(roots: list[Path]) -> tuple[list[str], bool]:
    """Per records directory, its replicates expected, present, missing and duplicated
    (:meth:`mlmsim.simstudy.StudyResult.replicate_count`); and whether every one is
    complete and consistent. Only directories that are not, or that hold replicates
    beyond their latest run's, are given a line."""

    lines, sound = [], True
    for root in roots:
        with warnings.catch_warnings():
            # the report says it at the top instead
            warnings.simplefilter("ignore", IncompleteStudyWarning)
            count = load_study(root).replicate_count()
        ok = count.complete and count.consistent
        sound = sound and ok
        if not ok or count.beyond:
            where = f" ({root.name})" if len(roots) > 1 else ""
            lines.append(f"{count.describe()}{where}")
    return lines, sound


def _cmd_study_report(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    if not d.is_dir():
        raise CLIError(f"{args.dir!r} is not a directory",
                       "give the --out directory of 'mlmsim study run'")
    if args.csv:
        _check_writable(args.csv)
    module = _study_of_directory(d, args.study)
    roots = _record_roots(d)
    if not roots:
        raise CLIError(f"{args.dir!r} holds no study records (no manifest.json)",
                       "give the --out directory of 'mlmsim study run'")
    # at the top: what is missing or held twice (the records are read once here, the
    # manifests' checksums verified, before anything is summarised)
    lines, sound = _integrity_lines(roots)
    for line in lines:
        print(line)
    if lines:
        sys.stdout.flush()
    with warnings.catch_warnings():  # each said once, above
        for said in (IncompleteStudyWarning, CorruptChunkWarning, OverlappingChunksWarning):
            warnings.simplefilter("ignore", said)
        if module is not None:
            module.report(d)
            if args.csv or not _print_report(d):
                parts = [summarise(load_study(r)).assign(block=r.name) for r in roots]
                summary = pd.concat(parts, ignore_index=True)
                if args.csv:
                    summary.to_csv(args.csv, index=False)
                    _note(f"measures written to {args.csv}")
        else:
            _print_summary(load_study(roots[0]), args.csv)
    if args.strict and not sound:
        _note("--strict: the records are incomplete or inconsistent (first lines above)")
        return EXIT_ERROR
    return 0


def _range(text: str) -> list[int]:
    """``10:80:10`` (start:stop:step, stop included), ``10,20,40`` or ``30``."""
    try:
        if ":" in text:
            parts = [int(v) for v in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            if step < 1 or stop < start:
                raise ValueError
            values = list(range(start, stop + 1, step))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of whole numbers: write START:STOP:STEP (e.g. 10:80:10) "
            "or 10,20,40") from None
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 2")
    return values


def _cmd_power(args: argparse.Namespace) -> int:
    """Power of a test of one effect against the number of groups or the group size."""

    spec = _load_spec(args.spec)
    if args.groups is None and spec.n_groups is None:
        raise CLIError(f"the spec {args.spec!r} sets no number of groups",
                       "give --groups, e.g. 10:80:10")
    if args.size is None and spec.group_sizes is None:
        raise CLIError(f"the spec {args.spec!r} sets no group size", "give --size N or a list")
    groups = args.groups or [spec.n_groups]
    sizes = args.size or [None]
    if len(groups) > 1 and len(sizes) > 1:
        raise CLIError("give a list for --groups or for --size, not both",
                       "fix one of them to a single number")
    along, values, fixed = (("group_size", sizes, {"n_groups": groups[0]}) if len(sizes) > 1
                            else ("n_groups", groups, {"group_size": sizes[0]}))
    if args.jobs == 0:
        raise CLIError("--jobs must not be 0", "give 1, a number of workers, or -1 for all")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise CLIError(f"--out {args.out!r} is a file", "give a directory")
    effect = args.effect.split("+") if "+" in args.effect else args.effect
    effect = [e.strip() for e in effect] if isinstance(effect, list) else effect.strip()
    try:
        curve = power_curve(spec, effect, along=along, values=values, target=args.target,
                            test=args.test, nsim=args.nsim, nboot=args.nboot,
                            alpha=args.alpha, rng=args.seed,
                            n_jobs=args.jobs, progress=None if not args.json else False,
                            **fixed)
    except ValueError as exc:
        raise CLIError(_one_line(str(exc)), "check --effect, --test and the spec") from exc
    table = curve.table
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "power.csv", index=False)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ax = curve.plot()
        ax.figure.tight_layout()
        ax.figure.savefig(out / "power.png", dpi=120)
        plt.close(ax.figure)
        (out / "report.md").write_text(_power_report(curve, args, fixed), encoding="utf-8")
    if args.json:
        print(json.dumps({"effect": curve.effect, "test": curve.test, "alpha": curve.alpha,
                          "along": along, **fixed, "target": curve.target,
                          "rows": json.loads(table.to_json(orient="records"))}))
    else:
        print(_power_report(curve, args, fixed), end="")
    if out is not None:
        _note(f"wrote power.csv, power.png and report.md to {out}")
    return 0


def _power_report(curve, args, fixed: dict) -> str:
    t = curve.table
    other = ", ".join(f"{k} = {v}" for k, v in fixed.items() if v is not None)
    lines = [f"# Power: {curve.effect}, {curve.test} test, alpha = {curve.alpha:g}", "",
             f"Spec: {args.spec}; {other or 'sizes from the spec'}; {args.nsim} simulations "
             f"per value; seed {args.seed}.", "",
             f"| {curve.along} | power | 95% CI (exact) | failed | singular |",
             "|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {int(r[curve.along])} | {r['power']:.3f} | "
                     f"[{r['ci_lower']:.3f}, {r['ci_upper']:.3f}] | {int(r['n_failed'])} | "
                     f"{int(r['n_singular'])} |")
    if curve.target is not None:
        hit = t[t["power"] >= curve.target]
        lines += ["", (f"The first value with estimated power >= {curve.target:g}: "
                       f"{curve.along} = {int(hit.iloc[0][curve.along])}." if len(hit) else
                       f"No value reaches power {curve.target:g}; try larger values.")]
    lines.append(f"Run time: {t['seconds'].sum():.1f} s.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``mlmsim`` argument parser: subcommands fit, simulate, spec, study, power."""

    common = _common()
    parser = _Parser(prog="mlmsim", description="Simulation and method studies of two-level "
                     "linear mixed models.", parents=[common])
    parser.add_argument("--version", action="version", version=f"mlmsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    f = sub.add_parser("fit", parents=[common], help="fit a model to data (ML or REML)",
                       usage="mlmsim fit [options] (DATA | --dataset NAME) FORMULA",
                       description="Fit a two-level linear mixed model given as an lme4 "
                       'formula, e.g. "mathach ~ 1 + cses + (1 + cses | school)". The summary '
                       "goes to stdout (JSON with --json).")
    f.add_argument("data", nargs="?", metavar="DATA",
                   help="a CSV file ('-' reads stdin; .tsv and .parquet also work)")
    f.add_argument("formula", nargs="?", metavar="FORMULA", help="the model, an lme4 formula")
    f.add_argument("--dataset", metavar="NAME", help="use packaged data: hsb or nels88")
    m = f.add_mutually_exclusive_group()
    m.add_argument("--ml", action="store_true", help="maximum likelihood")
    m.add_argument("--reml", action="store_true", help="restricted ML (the default)")
    f.add_argument("--ddf", default="satterthwaite", choices=DDF_METHODS, metavar="METHOD",
                   help=f"denominator df of the t tests: {', '.join(DDF_METHODS)} "
                   "(default satterthwaite)")
    f.add_argument("--nobound", action="store_true",
                   help="let variances be estimated below zero (SAS NOBOUND)")
    f.add_argument("--json", action="store_true", help="print every number as one JSON object")
    f.add_argument("--plot", metavar="DIR", help="write the model plots (PNG) into DIR")
    f.add_argument("--plot-x", metavar="NAME", help="the x variable of the plots (default: the "
                   "first random slope)")
    f.set_defaults(func=_cmd_fit)

    s = sub.add_parser("simulate", parents=[common], help="simulate a data set from a spec",
                       description="Draw one data set from a ModelSpec (YAML or JSON) and "
                       "write it as CSV.")
    s.add_argument("spec", metavar="SPEC", help="a ModelSpec file (.yaml, .yml or .json)")
    s.add_argument("--groups", "-J", type=_positive_int, metavar="J",
                   help="number of groups (default: the spec's n_groups)")
    s.add_argument("--size", "-n", type=_positive_int, metavar="N",
                   help="observations per group (default: the spec's group_sizes)")
    s.add_argument("--seed", type=_seed, metavar="S", help="random seed (default: fresh)")
    s.add_argument("-o", "--out", default="-", metavar="OUT.csv",
                   help="output CSV file (default: stdout)")
    s.set_defaults(func=_cmd_simulate)

    sp = sub.add_parser("spec", parents=[common], help="model specs: an example, a check")
    spsub = sp.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    ex = spsub.add_parser("example", parents=[common], help="print an annotated example spec")
    ex.add_argument("-o", "--out", metavar="FILE", help="write it to FILE instead of stdout")
    ex.set_defaults(func=_cmd_spec_example)
    ck = spsub.add_parser("check", parents=[common], help="validate a spec and print it")
    ck.add_argument("spec", metavar="SPEC")
    ck.set_defaults(func=_cmd_spec_check)

    st = sub.add_parser("study", parents=[common], help="the method studies: list, run, report")
    stsub = st.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    ls = stsub.add_parser("list", parents=[common], help="list the studies")
    ls.set_defaults(func=_cmd_study_list)
    run = stsub.add_parser("run", parents=[common], help="run a study (resumes in --out)")
    run.add_argument("name", metavar="NAME")
    run.add_argument("--quick", action="store_true", help="the small version (minutes)")
    run.add_argument("--reps", type=_positive_int, metavar="N", help="replicates per condition")
    run.add_argument("--jobs", type=int, default=1, metavar="K",
                     help="parallel workers (-1: all cores; default 1)")
    run.add_argument("--backend", choices=("loky", "dask"), default="loky")
    run.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address")
    run.add_argument("--out", metavar="DIR", help="study directory (default results/NAME; "
                     "with --quick results-quick/NAME)")
    run.add_argument("--seed", type=_seed, metavar="S", help="root seed")
    run.set_defaults(func=_cmd_study_run)
    rep = stsub.add_parser("report", parents=[common], help="summarise a study directory")
    rep.add_argument("dir", metavar="DIR")
    rep.add_argument("--csv", metavar="FILE", help="also write the tidy measures as CSV")
    rep.add_argument("--study", metavar="NAME", help="the study that wrote DIR (default: the "
                     "one named like DIR)")
    rep.add_argument("--strict", action="store_true", help="exit with status 2 when replicates "
                     "are missing or held twice, or chunk files are corrupt")
    rep.set_defaults(func=_cmd_study_report)

    pw = sub.add_parser("power", parents=[common], help="power of a test, by simulation",
                        usage="mlmsim power SPEC --effect NAME [options]",
                        description="Power to detect one effect of a ModelSpec (YAML or "
                        "JSON) against the number of groups or the group size: a table, a "
                        "figure and a short report (simr's powerCurve).")
    pw.add_argument("spec", metavar="SPEC", help="a ModelSpec file (.yaml, .yml or .json)")
    pw.add_argument("--effect", required=True, metavar="NAME",
                    help="a fixed effect (e.g. x:z), several joined by + for a joint test, or "
                    "a variance, e.g. var(x)")
    pw.add_argument("--test", default="satterthwaite",
                    choices=("wald", "satterthwaite", "kenward-roger", "lrt", "boot"),
                    help="the test (default satterthwaite)")
    pw.add_argument("--groups", "-J", type=_range, metavar="J",
                    help="numbers of groups: 30, 10,20,40 or 10:80:10 (default: the spec's)")
    pw.add_argument("--size", "-n", type=_range, metavar="N",
                    help="group sizes, the same forms (default: the spec's)")
    pw.add_argument("--nsim", type=_positive_int, default=1000, metavar="N",
                    help="simulations per value (default 1000)")
    pw.add_argument("--nboot", type=_positive_int, default=199, metavar="B",
                    help="bootstrap refits per simulated data set with --test boot "
                    "(default 199)")
    pw.add_argument("--alpha", type=float, default=0.05, help="the level (default 0.05)")
    pw.add_argument("--target", type=float, default=0.8, help="the power sought (default 0.8)")
    pw.add_argument("--seed", type=_seed, metavar="S", help="random seed (default: fresh)")
    pw.add_argument("--jobs", type=int, default=1, metavar="K",
                    help="parallel workers (-1: all cores; default 1)")
    pw.add_argument("--out", metavar="DIR", help="write power.csv, power.png and report.md")
    pw.add_argument("--json", action="store_true", help="print the table as JSON")
    pw.set_defaults(func=_cmd_power)
    return parser


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _note(f"warning: {_one_line(str(message))}")


def _error_line(exc: BaseException) -> tuple[str, int]:
    """The one line printed for ``exc`` and the exit status."""
    if isinstance(exc, CLIError):
        return _one_line(str(exc)), EXIT_ERROR
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError
                  | PermissionError):
        what = f" {exc.filename!r}" if exc.filename else ""
        return (f"cannot use{what}: {exc.strerror or exc}; check the path and its "
                "permissions", EXIT_ERROR)
    if isinstance(exc, ValueError | OSError):
        return _one_line(str(exc)) or type(exc).__name__, EXIT_ERROR
    return (f"internal error ({type(exc).__name__}: {_one_line(str(exc))}); rerun with "
            "--debug for the traceback and report it", EXIT_BUG)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlmsim`` command with ``argv`` (default ``sys.argv[1:]``); return the exit
    status: 0 success, 2 a user error (one line on stderr), 1 a bug in mlmsim."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args = build_parser().parse_args(argv)
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            _note("interrupted")
            return 130
        except BrokenPipeError:  # e.g. `mlmsim fit ... | head`
            with contextlib.suppress(Exception):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return 0
        except Exception as exc:  # every failure ends as one line (and a status)
            if debug:
                traceback.print_exc()
            line, status = _error_line(exc)
            print(f"mlmsim: error: {line}", file=sys.stderr)
            return status


if __name__ == "__main__":
    sys.exit(main())
