"""Shared fixtures: the packaged data sets, the lme4 reference fits, a small simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlmsim

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def lme4_name(name: str) -> str:
    """lme4 name -> mlmsim name: ``(Intercept)`` -> ``Intercept``, ``fb`` -> ``f[T.b]``."""
    if name == "(Intercept)":
        return "Intercept"
    return {"fb": "f[T.b]", "fc": "f[T.c]"}.get(name, name)


def lme4_T(entry) -> dict[tuple[str, str], float]:
    """lme4's varcorr as {(row, col): value} for T (both orders of a covariance)."""
    out = {}
    for row in entry["varcorr"]:
        if row["grp"] == "Residual":
            continue
        a = lme4_name(row["var1"])
        b = lme4_name(row["var2"]) if row["var2"] is not None else a
        out[(a, b)] = out[(b, a)] = row["vcov"]
    return out


@pytest.fixture(scope="session")
def hsb() -> pd.DataFrame:
    return mlmsim.datasets.load("hsb")


@pytest.fixture(scope="session")
def nels() -> pd.DataFrame:
    return mlmsim.datasets.load("nels88")


@pytest.fixture(scope="session")
def hsb_ref() -> list[dict]:
    return json.loads((DATA / "hsb_lme4.json").read_text())


@pytest.fixture(scope="session")
def boundary_ref() -> list[dict]:
    path = DATA / "lme4_boundary.json"
    if not path.exists():
        pytest.skip("tests/data/lme4_boundary.json has not been produced yet")
    return json.loads(path.read_text())


def simulate_two_level(rng: np.random.Generator, sizes, q: int, T=None, sigma2: float = 1.0,
                       p_extra: int = 1, beta=None) -> pd.DataFrame:
    """A two-level data set: group sizes ``sizes``, random intercept plus q - 1 random
    slopes of x1.., p_extra level-1 covariates x1..; columns g, y, x1, x2, ..."""
    sizes = np.asarray(sizes, dtype=int)
    J, N = sizes.size, int(sizes.sum())
    k = max(q - 1, p_extra)
    g = np.repeat(np.arange(J), sizes)
    X = rng.standard_normal((N, k))
    if T is None:
        A = rng.standard_normal((q, q))
        T = 0.5 * (A @ A.T) / q + 0.2 * np.eye(q)
    U = rng.multivariate_normal(np.zeros(q), T, size=J)
    Z = np.column_stack([np.ones(N), X[:, : q - 1]])
    beta = np.ones(k + 1) if beta is None else np.asarray(beta)
    mean = beta[0] + X @ beta[1:]
    y = mean + np.einsum("nq,nq->n", Z, U[g]) + np.sqrt(sigma2) * rng.standard_normal(N)
    df = pd.DataFrame({"g": g, "y": y})
    for i in range(k):
        df[f"x{i + 1}"] = X[:, i]
    return df


@pytest.fixture(scope="session")
def simulate():
    """The simulator :func:`simulate_two_level`, as a (session) fixture."""
    return simulate_two_level


def random_formula(q: int, p_extra: int = 1) -> str:
    fixed = " + ".join(["1"] + [f"x{i + 1}" for i in range(max(q - 1, p_extra))])
    rand = " + ".join(["1"] + [f"x{i + 1}" for i in range(q - 1)])
    return f"y ~ {fixed} + ({rand} | g)"


@pytest.fixture(scope="session")
def formula_for():
    """``formula_for(q, p_extra)``: the formula matching :func:`simulate_two_level`."""
    return random_formula


@pytest.fixture
def register_study(monkeypatch):
    """Add a study module (``TITLE``, ``run(out_dir, options)``, ``report(out_dir)``) to
    the registry the CLI reads, :data:`mlmsim.studies.STUDIES`, for one test: it is
    imported by the registry's own ``importlib`` path, as a study of one's own is."""
    import sys
    import types

    from mlmsim import studies

    def register(name: str, title: str, run, report) -> None:
        module = types.ModuleType(f"registered_study_{name}")
        module.TITLE, module.run, module.report = title, run, report
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(studies.STUDIES, name, module.__name__)

    return register
