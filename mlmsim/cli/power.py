"""``mlmsim power``: power of a fixed effect's test over a range of numbers of groups,
by simulation from a spec."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlmsim.cli.common import CLIError, note, one_line
from mlmsim.cli.spec import load_spec
from mlmsim.planning import power_curve

__all__ = ["int_range", "cmd_power"]


def int_range(text: str) -> list[int]:
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


def cmd_power(args: argparse.Namespace) -> int:
    """Power of a test of one effect against the number of groups or the group size."""

    spec = load_spec(args.spec)
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
        raise CLIError(one_line(str(exc)), "check --effect, --test and the spec") from exc
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
        note(f"wrote power.csv, power.png and report.md to {out}")
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
