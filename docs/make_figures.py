"""Make the figures the README shows (docs/img/*.png): model plots from the packaged data
and the power curve of "Plan a study".

Run from anywhere: ``python docs/make_figures.py``. The figures are drawn from the
NELS-88 random intercept and slope model of the seed lecture (math on homework, 23
schools, ML), whose lme4 numbers are in mlmsim/datasets/README.md.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import mlmsim  # noqa: E402
from mlmsim.analysis import modelplots  # noqa: E402

OUT = Path(__file__).resolve().parent / "img"


def main() -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    nels = mlmsim.datasets.load("nels88")
    res = mlmsim.fit("math ~ homework + (1 + homework | school)", nels, method="ML")
    written = []
    for name, ax in [
        ("group_lines_nels88.png", modelplots.plot_group_lines(res)),
        ("variance_function_nels88.png", modelplots.plot_variance_function(res)),
    ]:
        path = OUT / name
        ax.figure.savefig(path, dpi=90, metadata={"Software": None})
        plt.close(ax.figure)
        written.append(path)
        print(f"wrote {path.relative_to(OUT.parent.parent)}")
    # the README's "Plan a study": power of the KR test of a cross-level interaction
    spec = mlmsim.ModelSpec.example()
    curve = mlmsim.power_curve(spec, "x:z", values=[10, 20, 30, 40, 50, 60, 80],
                               group_size=20, test="kenward-roger", effects={"x:z": 1.0},
                               nsim=1000, rng=1, progress=False)
    ax = curve.plot()
    ax.figure.tight_layout()
    path = OUT / "power_curve.png"
    ax.figure.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(ax.figure)
    written.append(path)
    print(f"wrote {path.relative_to(OUT.parent.parent)}")
    return written


if __name__ == "__main__":
    main()
