"""What every ``mlmsim`` command shares: the user error (:class:`CLIError`) and the exit
statuses, argparse that fails in one line, argument types, and reading and writing
files (a CSV in any common dialect, outputs checked before any work is done)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd

__all__ = [
    "EXIT_ERROR",
    "EXIT_BUG",
    "FORMULA_HELP",
    "CLIError",
    "Parser",
    "positive_int",
    "seed_value",
    "read_table",
    "check_writable",
    "write_text",
    "note",
    "one_line",
]


EXIT_ERROR = 2  # a problem with the input: one line on stderr, fixable by the user
EXIT_BUG = 1  # an unexpected exception inside mlmsim

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
FORMULA_HELP = 'write it as lme4 does, e.g. "y ~ 1 + x + (1 + x | g)"'


class CLIError(Exception):
    """A user error: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem if not fix else f"{problem.rstrip('.')}; {fix}")
        self.problem, self.fix = problem, fix


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (raised as CLIError, exit status 2)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        where = f"{self.prog}: " if " " in self.prog else ""
        raise CLIError(f"{where}{message}", f"see '{self.prog} --help'")


# argument types

def _whole(text: str, minimum: int, what: str) -> int:
    """``text`` as a whole number of at least ``minimum``, else argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {what} whole number, got {text!r}") \
            from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be a {what} whole number, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1, "positive")


def seed_value(text: str) -> int:
    return _whole(text, 0, "non-negative")


# reading and writing files

def read_table(path: str):
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
        raise CLIError(f"cannot parse {name} as CSV ({one_line(str(exc))})",
                       "check that every line has the same number of comma-separated "
                       "fields") from None
    except UnicodeDecodeError:
        raise CLIError(f"{name} is not a text CSV file (it is not UTF-8)",
                       "export the data as a UTF-8 CSV file") from None
    except (OSError, ValueError) as exc:  # e.g. a corrupt Parquet file
        raise CLIError(f"cannot read {name}: {one_line(str(exc))}",
                       "give a CSV (or Parquet) file") from None
    if data.shape[0] == 0:
        raise CLIError(f"{name} has a header but no rows of data",
                       "give a file with one row per observation")
    return data


def check_writable(path: str) -> None:
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


def write_text(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    check_writable(path)
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise CLIError(f"cannot write {path!r}: {exc.strerror or exc}",
                       "choose another output path") from None


def note(text: str) -> None:
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
        note(f"read {', '.join(map(repr, converted))} with decimal commas")
    return data


def one_line(text: str) -> str:
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
