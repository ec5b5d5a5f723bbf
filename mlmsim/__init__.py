"""mlmsim: simulation and method studies of two-level linear mixed models."""

from __future__ import annotations

from mlmsim import datasets

__version__ = "0.1.0"

__all__ = ["datasets", "__version__"]
