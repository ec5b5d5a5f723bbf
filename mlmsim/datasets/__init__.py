"""The real data sets of the seed lecture, shipped with the package.

``load("hsb")`` returns High School and Beyond (7185 students in 160 schools)
with the derived columns the seed uses: ``cses = ses - meanses`` (centred on
the shipped school mean, as the seed's SAS and lme4 tables do), ``size100 =
size / 100`` and ``male = 1 - female``. ``load("nels88")`` returns the
NELS-88 23-school subsample (519 students) with ``private = 1 - public``.
Provenance: ``README.md`` beside this file.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["load", "names"]

_FILES = {"hsb": "hsb.csv", "nels88": "nels88_23.csv"}


def names() -> list[str]:
    """The names accepted by :func:`load`."""
    return sorted(_FILES)


def load(name: str) -> pd.DataFrame:
    """Load a packaged data set by name (``"hsb"`` or ``"nels88"``).

    Examples
    --------
    >>> hsb = load("hsb")
    >>> hsb.shape[0], hsb["school"].nunique()
    (7185, 160)
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key in ("nels", "nels8823"):
        key = "nels88"
    if key not in _FILES:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(names())}")
    with resources.files(__package__).joinpath(_FILES[key]).open("r") as fh:
        data = pd.read_csv(fh)
    if key == "hsb":
        data["cses"] = data["ses"] - data["meanses"]
        data["size100"] = data["size"] / 100.0
        data["male"] = 1 - data["female"]
    else:
        data["private"] = 1 - data["public"]
    return data
