"""Names of the covariance parameters phi = (T's distinct elements, sigma^2), shared by the
generator (a spec's true values) and the fitting engine (a fit's estimates)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["covparm_names"]


def covparm_names(random_names: Sequence[str], rows, cols) -> tuple[list[str], list[str]]:
    """Names of phi's elements for T's elements at (``rows``, ``cols``): ``var(a)``,
    ``cov(a,b)`` (row variable first), then ``sigma2``; and SAS's ``UN(i,j)`` /
    ``Residual`` labels.

    >>> covparm_names(["Intercept", "x"], [0, 1, 1], [0, 0, 1])[0]
    ['var(Intercept)', 'cov(x,Intercept)', 'var(x)', 'sigma2']
    """
    names, sas = [], []
    for r, c in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True):
        a, b = random_names[r], random_names[c]
        names.append(f"var({a})" if r == c else f"cov({a},{b})")
        sas.append(f"UN({r + 1},{c + 1})")
    return names + ["sigma2"], sas + ["Residual"]
