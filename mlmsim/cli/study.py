"""``mlmsim study list|run|report``: the method studies, found in :mod:`mlmsim.studies`,
run into a directory and reported from it (with its integrity: replicates present,
missing, duplicated)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from mlmsim import studies
from mlmsim.cli.common import EXIT_ERROR, CLIError, check_writable, note, write_text
from mlmsim.simstudy import IncompleteStudyWarning, load_study, summarise, summary_table
from mlmsim.simstudy.storage import CorruptChunkWarning, OverlappingChunksWarning
from mlmsim.studies import RunOptions, write_index

__all__ = ["cmd_study_list", "cmd_study_run", "QUICK_RESULTS", "STUDY_FILE", "cmd_study_report"]


def _study(name: str) -> ModuleType:
    """The registered study module called ``name`` (:func:`mlmsim.studies.get`)."""
    if studies.key(name) is None:
        raise CLIError(f"unknown study {name!r}",
                       f"choose one of {', '.join(studies.names())}; "
                       "'mlmsim study list' describes them")
    return studies.get(name)


def _run_options(args: argparse.Namespace) -> RunOptions:
    """The options of a study module's ``run`` (without ``--seed``, RunOptions' seed)."""
    values = {"quick": args.quick, "reps": args.reps, "n_jobs": args.jobs,
              "backend": args.backend, "scheduler": args.scheduler, "seed": args.seed}
    if args.seed is None:
        del values["seed"]
    return RunOptions(**values)


def cmd_study_list(args: argparse.Namespace) -> int:
    width = max(len(n) for n in studies.names())
    for name in studies.names():
        print(f"{name:<{width}}  {studies.get(name).TITLE}")
    return 0


def cmd_study_run(args: argparse.Namespace) -> int:
    module = _study(args.name)
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
    write_text(str(out / STUDY_FILE), json.dumps({"study": studies.key(args.name)}) + "\n")
    module.run(out, _run_options(args))
    note(f"study {args.name!r} is in {out}")
    _print_report(out)
    return 0


def _print_report(out: Path) -> None:
    """Print ``out/report.md`` if the study wrote one. A study directory inside
    ``results/`` also refreshes the index ``results/README.md``."""
    report = out / "report.md"
    if not report.is_file():
        return
    if out.resolve().parent.name == "results":
        write_index(out.resolve().parent)
    sys.stdout.write(report.read_text())
    note(f"the report is {report}")


def _print_summary(source: Any, csv: str | None = None) -> None:
    summary = summarise(source)
    if csv:
        write_text(csv, summary.to_csv(index=False))
        note(f"measures written to {csv}")
    table = summary_table(summary)

    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.max_rows", None, "display.max_colwidth", 40):
        print(table.to_string())


QUICK_RESULTS = "results-quick"
"""Where quick runs go: results/ holds full runs only (a quick run refuses to write there)."""

STUDY_FILE = "study.json"
"""The file in a study's output folder that names the study ('study report' reads it)."""


def _study_of_directory(d: Path, name: str | None) -> ModuleType | None:
    """The registered study module that wrote ``d``: ``--study NAME``, else the one named in
    ``d/study.json`` (written by 'study run'), else the one named like the directory
    (results/bias -> bias); None if there is no such module (records a Study wrote)."""
    if name is None:  # the name 'study run' wrote beside the records
        with contextlib.suppress(OSError, ValueError, AttributeError):
            name = json.loads((d / STUDY_FILE).read_text()).get("study")
    if name is not None:
        return _study(name)
    found = studies.key(d.resolve().name)
    return None if found is None else studies.get(found)


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


def cmd_study_report(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    if not d.is_dir():
        raise CLIError(f"{args.dir!r} is not a directory",
                       "give the --out directory of 'mlmsim study run'")
    if args.csv:
        check_writable(args.csv)
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
            _print_report(d)
            if args.csv:  # the measures of every block, beside the study's own tables
                parts = [summarise(load_study(r)).assign(block=r.name) for r in roots]
                write_text(args.csv, pd.concat(parts, ignore_index=True).to_csv(index=False))
                note(f"measures written to {args.csv}")
        else:
            _print_summary(load_study(roots[0]), args.csv)
    if args.strict and not sound:
        note("--strict: the records are incomplete or inconsistent (first lines above)")
        return EXIT_ERROR
    return 0
