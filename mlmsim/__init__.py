"""mlmsim: simulation and method studies of two-level linear mixed models."""

from __future__ import annotations

from mlmsim import datasets
from mlmsim.engine import BatchFit, FitResult, LRTResult, fit, fit_arrays, fit_batch, lrt

__version__ = "0.1.0"

__all__ = [
    "datasets",
    "fit",
    "fit_batch",
    "fit_arrays",
    "BatchFit",
    "FitResult",
    "lrt",
    "LRTResult",
    "__version__",
]
