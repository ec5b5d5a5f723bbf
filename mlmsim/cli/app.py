"""The ``mlmsim`` command: fit a model to a CSV file, simulate data from a spec, run studies.

One argparse subcommand per task (``fit``, ``simulate``, ``spec``, ``study``, ``power``),
each a small ``cmd_*`` function in the module of its task that reads its arguments, calls
the library and writes the result: the summary or JSON on stdout, notes ("wrote ...")
and warnings on stderr, one line each. A failure caused by the input (a missing file, an
unknown column, a bad formula or spec, an unwritable output path) prints one line on
stderr naming the problem and the fix, and exits with status 2; ``--debug`` adds the
traceback. Status 1 is kept for mlmsim's own bugs. ``main(argv)`` returns the exit
status, so the command can be tested in-process as well as in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from mlmsim import __version__
from mlmsim.cli.common import (
    EXIT_BUG,
    EXIT_ERROR,
    CLIError,
    Parser,
    note,
    one_line,
    positive_int,
    seed_value,
)
from mlmsim.cli.fit import cmd_fit
from mlmsim.cli.power import cmd_power, int_range
from mlmsim.cli.spec import cmd_simulate, cmd_spec_check, cmd_spec_example
from mlmsim.cli.study import cmd_study_list, cmd_study_report, cmd_study_run
from mlmsim.engine.inference import DDF_METHODS

__all__ = ["build_parser", "main"]


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``mlmsim`` argument parser: subcommands fit, simulate, spec, study, power."""

    common = _common()
    parser = Parser(prog="mlmsim", description="Simulation and method studies of two-level "
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
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("simulate", parents=[common], help="simulate a data set from a spec",
                       description="Draw one data set from a ModelSpec (YAML or JSON) and "
                       "write it as CSV.")
    s.add_argument("spec", metavar="SPEC", help="a ModelSpec file (.yaml, .yml or .json)")
    s.add_argument("--groups", "-J", type=positive_int, metavar="J",
                   help="number of groups (default: the spec's n_groups)")
    s.add_argument("--size", "-n", type=positive_int, metavar="N",
                   help="observations per group (default: the spec's group_sizes)")
    s.add_argument("--seed", type=seed_value, metavar="S", help="random seed (default: fresh)")
    s.add_argument("-o", "--out", default="-", metavar="OUT.csv",
                   help="output CSV file (default: stdout)")
    s.set_defaults(func=cmd_simulate)

    sp = sub.add_parser("spec", parents=[common], help="model specs: an example, a check")
    spsub = sp.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    ex = spsub.add_parser("example", parents=[common], help="print an annotated example spec")
    ex.add_argument("-o", "--out", metavar="FILE", help="write it to FILE instead of stdout")
    ex.set_defaults(func=cmd_spec_example)
    ck = spsub.add_parser("check", parents=[common], help="validate a spec and print it")
    ck.add_argument("spec", metavar="SPEC")
    ck.set_defaults(func=cmd_spec_check)

    st = sub.add_parser("study", parents=[common], help="the method studies: list, run, report")
    stsub = st.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    ls = stsub.add_parser("list", parents=[common], help="list the studies")
    ls.set_defaults(func=cmd_study_list)
    run = stsub.add_parser("run", parents=[common], help="run a study (resumes in --out)")
    run.add_argument("name", metavar="NAME")
    run.add_argument("--quick", action="store_true", help="the small version (minutes)")
    run.add_argument("--reps", type=positive_int, metavar="N", help="replicates per condition")
    run.add_argument("--jobs", type=int, default=1, metavar="K",
                     help="parallel workers (-1: all cores; default 1)")
    run.add_argument("--backend", choices=("loky", "dask"), default="loky")
    run.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address")
    run.add_argument("--out", metavar="DIR", help="study directory (default results/NAME; "
                     "with --quick results-quick/NAME)")
    run.add_argument("--seed", type=seed_value, metavar="S", help="root seed")
    run.set_defaults(func=cmd_study_run)
    rep = stsub.add_parser("report", parents=[common], help="summarise a study directory")
    rep.add_argument("dir", metavar="DIR")
    rep.add_argument("--csv", metavar="FILE", help="also write the tidy measures as CSV")
    rep.add_argument("--study", metavar="NAME", help="the study that wrote DIR (default: the "
                     "one named like DIR)")
    rep.add_argument("--strict", action="store_true", help="exit with status 2 when replicates "
                     "are missing or held twice, or chunk files are corrupt")
    rep.set_defaults(func=cmd_study_report)

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
    pw.add_argument("--groups", "-J", type=int_range, metavar="J",
                    help="numbers of groups: 30, 10,20,40 or 10:80:10 (default: the spec's)")
    pw.add_argument("--size", "-n", type=int_range, metavar="N",
                    help="group sizes, the same forms (default: the spec's)")
    pw.add_argument("--nsim", type=positive_int, default=1000, metavar="N",
                    help="simulations per value (default 1000)")
    pw.add_argument("--nboot", type=positive_int, default=199, metavar="B",
                    help="bootstrap refits per simulated data set with --test boot "
                    "(default 199)")
    pw.add_argument("--alpha", type=float, default=0.05, help="the level (default 0.05)")
    pw.add_argument("--target", type=float, default=0.8, help="the power sought (default 0.8)")
    pw.add_argument("--seed", type=seed_value, metavar="S", help="random seed (default: fresh)")
    pw.add_argument("--jobs", type=int, default=1, metavar="K",
                    help="parallel workers (-1: all cores; default 1)")
    pw.add_argument("--out", metavar="DIR", help="write power.csv, power.png and report.md")
    pw.add_argument("--json", action="store_true", help="print the table as JSON")
    pw.set_defaults(func=cmd_power)
    return parser


# main

def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    note(f"warning: {one_line(str(message))}")


def _error_line(exc: BaseException) -> tuple[str, int]:
    """The one line printed for ``exc`` and the exit status."""
    if isinstance(exc, CLIError):
        return one_line(str(exc)), EXIT_ERROR
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError
                  | PermissionError):
        what = f" {exc.filename!r}" if exc.filename else ""
        return (f"cannot use{what}: {exc.strerror or exc}; check the path and its "
                "permissions", EXIT_ERROR)
    if isinstance(exc, ValueError | OSError):
        return one_line(str(exc)) or type(exc).__name__, EXIT_ERROR
    return (f"internal error ({type(exc).__name__}: {one_line(str(exc))}); rerun with "
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
            note("interrupted")
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
