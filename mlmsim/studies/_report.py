"""Small helpers the study reports share: markdown tables and number formats."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["markdown_table", "fmt", "with_mcse"]


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (NaN as an em dash)."""
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.{digits}g}"


def with_mcse(estimate: float, mcse: float, digits: int = 3) -> str:
    """``estimate (mcse)`` as a report prints a performance measure."""
    return f"{fmt(estimate, digits)} ({fmt(mcse, 2)})"


def markdown_table(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a GitHub markdown table (values as they print)."""
    frame = df.reset_index() if index else df
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        cells = [v if isinstance(v, str) else fmt(v, 4) if isinstance(v, float) else str(v)
                 for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
