"""``import mlmsim``: light (each public name loaded on first use), and every public name
there, from the module its stub says."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mlmsim

HEAVY = ("numba", "scipy", "pandas", "pyarrow", "formulaic", "matplotlib", "joblib",
         "mlmsim.engine", "mlmsim.simstudy", "mlmsim.studies", "mlmsim.generate.spec")


def test_import_mlmsim_loads_none_of_the_heavy_modules():
    code = ("import json, sys, mlmsim; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []


def test_every_public_name_is_its_modules_object():
    stub = ast.parse(Path(mlmsim.__file__).with_suffix(".pyi").read_text())
    seen = 0
    for node in stub.body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith("mlmsim"):
            module = __import__(node.module, fromlist=["_"])
            for alias in node.names:
                assert getattr(mlmsim, alias.name) is getattr(module, alias.name)
                assert alias.name in mlmsim.__all__
                seen += 1
    assert seen == len(mlmsim.__all__) - 1            # and __version__
    assert set(mlmsim.__all__) <= set(dir(mlmsim))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'fitt'"):
        mlmsim.fitt  # noqa: B018
    with pytest.raises(ImportError):
        from mlmsim import fitt  # noqa: F401
