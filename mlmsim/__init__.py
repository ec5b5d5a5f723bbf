"""mlmsim: simulation and method studies of two-level linear mixed models."""

from __future__ import annotations

from mlmsim import datasets
from mlmsim.engine import FitResult, LRTResult, fit, lrt

__version__ = "0.1.0"

__all__ = ["datasets", "fit", "FitResult", "lrt", "LRTResult", "__version__"]
