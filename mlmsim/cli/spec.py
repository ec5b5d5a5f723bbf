"""``mlmsim simulate`` and ``mlmsim spec``: data sets drawn from a spec file, an example
spec, a spec checked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlmsim.cli.common import CLIError, check_writable, note, one_line, write_text
from mlmsim.generate.simulate import simulate
from mlmsim.generate.spec import ModelSpec

__all__ = ["load_spec", "cmd_simulate", "cmd_spec_example", "cmd_spec_check"]


def load_spec(path: str):
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
        text = one_line(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args
                         else str(exc))
        raise CLIError(f"invalid spec {path!r}: {text}",
                       "fix the spec ('mlmsim spec example' prints an annotated one)") from exc
    except OSError as exc:
        raise CLIError(f"cannot read the spec {path!r}: {exc.strerror or exc}",
                       "check the file") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    out = args.out
    check_writable(out)
    spec = load_spec(args.spec)
    if args.groups is None and spec.n_groups is None:
        raise CLIError(f"the spec {args.spec!r} sets no number of groups", "give --groups J")
    if args.size is None and spec.group_sizes is None:
        raise CLIError(f"the spec {args.spec!r} sets no group size", "give --size N")
    try:
        data = simulate(spec, args.groups, group_size=args.size, rng=args.seed)
    except ValueError as exc:
        raise CLIError(f"cannot simulate from {args.spec!r}: {one_line(str(exc))}",
                       "check --groups, --size and the spec") from exc
    write_text(out, data.to_csv(index=False))
    if out != "-":
        note(f"wrote {len(data)} rows to {out}")
    return 0


def cmd_spec_example(args: argparse.Namespace) -> int:
    text = ModelSpec.example_yaml()
    if args.out:
        write_text(args.out, text)
        note(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_spec_check(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    print(spec.to_yaml(), end="")
    note(f"{args.spec} is a valid spec")
    return 0
