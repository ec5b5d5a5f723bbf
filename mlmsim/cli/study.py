"""``mlmsim study list|run|report``: the method studies, found in :mod:`mlmsim.studies`,
run into a directory and reported from it (with its integrity: replicates present,
missing, duplicated)."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import mlmsim
from mlmsim.cli.common import EXIT_ERROR, CLIError, check_writable, note, one_line, write_text
from mlmsim.simstudy import IncompleteStudyWarning, load_study, summarise, summary_table
from mlmsim.simstudy.storage import CorruptChunkWarning, OverlappingChunksWarning
from mlmsim.studies import RunOptions, write_index

__all__ = ["cmd_study_list", "cmd_study_run", "QUICK_RESULTS", "STUDY_FILE", "cmd_study_report"]


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


def cmd_study_list(args: argparse.Namespace) -> int:
    reg = _registry()
    width = max((len(n) for n in reg.names), default=0)
    for name in reg.names:
        try:
            text = _describe(reg.get(name))
        except ImportError as exc:  # a study module that cannot be loaded: say so, go on
            text = f"(cannot be loaded: {one_line(str(exc))})"
        print(f"{name:<{width}}  {text}".rstrip())
    return 0


def cmd_study_run(args: argparse.Namespace) -> int:
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
    write_text(str(out / STUDY_FILE), json.dumps({"study": args.name}) + "\n")
    if _is_module_study(entry):
        entry.run(out, _run_options(args))
        note(f"study {args.name!r} is in {out}")
        _print_report(out)
        return 0
    study = _build_study(args.name, entry, args.quick, args.reps, args.seed)
    result = study.run(out, n_jobs=args.jobs, backend=args.backend, scheduler=args.scheduler)
    note(f"records of study {args.name!r} are in {out}")
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
    note(f"the report is {report}")
    return True


def _print_summary(source: Any, csv: str | None = None) -> None:
    summary = summarise(source)
    if csv:
        write_text(csv, summary.to_csv(index=False))
        note(f"wrote {csv}")
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
            if args.csv or not _print_report(d):
                parts = [summarise(load_study(r)).assign(block=r.name) for r in roots]
                summary = pd.concat(parts, ignore_index=True)
                if args.csv:
                    summary.to_csv(args.csv, index=False)
                    note(f"measures written to {args.csv}")
        else:
            _print_summary(load_study(roots[0]), args.csv)
    if args.strict and not sound:
        note("--strict: the records are incomplete or inconsistent (first lines above)")
        return EXIT_ERROR
    return 0
