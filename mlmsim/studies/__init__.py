"""The method studies of the seed lecture, each one module in the ADEMP frame.

A study module defines ``TITLE`` (one line), ``run(out_dir, options)`` (run
the replicates into ``out_dir/records`` through :class:`mlmsim.Study`, then
report) and ``report(out_dir)`` (summarise the saved records into CSV tables,
PNG figures and ``report.md`` in ``out_dir``; rerunnable without refitting).
``mlmsim study list|run|report`` and the scripts in ``studies/`` call them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

__all__ = ["RunOptions", "names", "get"]

_MODULES = {
    "bias": "mlmsim.studies.bias",
    "maas_hox": "mlmsim.studies.maas_hox",
    "hessian": "mlmsim.studies.hessian",
    "centering": "mlmsim.studies.centering",
    "seed_tables": "mlmsim.studies.seed_tables",
}


@dataclass(frozen=True)
class RunOptions:
    """How to run a study: ``quick`` is the small version for CI and smoke tests;
    ``reps`` overrides the replicates per condition; the rest go to ``Study.run``."""

    quick: bool = False
    reps: int | None = None
    n_jobs: int = 1
    backend: str = "loky"
    scheduler: str | None = None
    seed: int = 20261125
    progress: bool | None = None


def names() -> list[str]:
    """The registered study names."""
    return list(_MODULES)


def get(name: str) -> ModuleType:
    """The study module called ``name`` (ValueError naming the choices otherwise)."""
    key = name.replace("-", "_").lower()
    if key not in _MODULES:
        raise ValueError(f"unknown study {name!r}; available: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[key])
