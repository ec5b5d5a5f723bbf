"""mlmsim: simulation and method studies of two-level linear mixed models.

The data flow, one module (or package) each: a :class:`ModelSpec` (gamma, T,
sigma^2, predictors, groups) -> :func:`simulate` (data sets) -> :func:`fit`
(ML/REML from an lme4 formula: :class:`FitResult`) -> :class:`Study`
(conditions x replicates x methods, seeds, parallel, resumable) ->
:func:`summarise` (performance measures with Monte Carlo SEs) and figures;
:func:`power`, :func:`power_curve` and :func:`sample_size` plan a study.

``import mlmsim`` loads nothing but this file: each public name is imported from its
module on first use (PEP 562), so that a script or the command line that needs only
the generator does not wait for the fitting engine's compiled kernels, scipy or pyarrow.
The names and their modules are listed once, in the type stub ``__init__.pyi`` (which
type checkers and editors read); this file reads its imports.
"""

from __future__ import annotations

import ast
from importlib import import_module
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def _public_names() -> tuple[dict[str, str], list[str]]:
    """From the stub ``__init__.pyi``: each public name -> the module it is imported from
    (a submodule of mlmsim, such as ``datasets``, maps to itself), and ``__all__``."""
    tree = ast.parse(Path(__file__).with_suffix(".pyi").read_text())
    where: dict[str, str] = {}
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith(__name__):
            for alias in node.names:
                where[alias.name] = (f"{node.module}.{alias.name}"
                                     if node.module == __name__ else node.module)
        elif isinstance(node, ast.Assign) and node.targets[0].id == "__all__":
            names = ast.literal_eval(node.value)
    return where, names


_WHERE, __all__ = _public_names()


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use, and keep the name here. A name the
    stub imports from a package is the package's attribute, or else its submodule
    (``from mlmsim.analysis import centering``)."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = import_module(_WHERE[name])
    if module.__name__ == f"{__name__}.{name}":
        value = module
    elif hasattr(module, name):
        value = getattr(module, name)
    else:
        value = import_module(f"{module.__name__}.{name}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
