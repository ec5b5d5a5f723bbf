"""Make the model-plot figures the README shows (docs/img/*.png) from the packaged data.

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
from mlmsim import modelplots  # noqa: E402

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
    return written


if __name__ == "__main__":
    main()
