"""``mlmsim fit``: fit a formula to a CSV file; print the summary, JSON, or model plots."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

import mlmsim
from mlmsim.analysis import modelplots as mp
from mlmsim.cli.common import FORMULA_HELP, CLIError, note, one_line, read_table
from mlmsim.engine.inference import DDF_METHODS

__all__ = ["cmd_fit"]


def _fit_hint(message: str) -> str:
    """The engine's ValueError text, with the fix added where the text lacks one."""
    msg = one_line(message)
    low = msg.lower()
    if "formula" in low and ("syntax" in low or "unmatched" in low or "parse" in low):
        return f"{msg.rstrip('.')}; {FORMULA_HELP}"
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


def cmd_fit(args: argparse.Namespace) -> int:
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
        data = read_table(args.data)
        formula = args.formula
    if "~" not in formula:
        raise CLIError(f"{formula!r} is not a formula (no '~')", FORMULA_HELP)
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
        print(json.dumps(res.to_dict(ddf=args.ddf), indent=2, allow_nan=False))
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
        note(f"wrote {path}")

    try:
        x = mp.default_x(res) if x is None else x
    except ValueError as exc:
        note(f"no group-lines or variance plot: {exc}")
        x = None
    if x is not None:
        try:
            save(mp.plot_group_lines(res, x=x, data=data), "group_lines.png")
        except ValueError as exc:
            raise CLIError(f"--plot: {exc}", "choose the x variable with --plot-x") from None
        if x in res.random_names and x != "Intercept":
            save(mp.plot_variance_function(res, x=x), "variance_function.png")
        else:
            note(f"no variance-function plot: {x!r} has no random slope in this model")
        y, group = res.design.formula.response, res.design.formula.group
        if x in data.columns and _varies_both_ways(data, x, group):
            save(mp.plot_within_between(data, x, y, group), "within_between.png")
        else:
            note(f"no within/between plot: {x!r} is not a data column whose values vary both "
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
