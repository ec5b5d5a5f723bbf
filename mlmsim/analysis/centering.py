"""Centering a level-1 predictor, and the exact maps between equivalent parameterisations.

This module owns the seed lecture's five ways to put a level-1 predictor x_ij
into a two-level model, and the question of which of them are the same model:

    RS        x_ij                           (raw score)
    GMC       x_ij - xbar                    (grand-mean centred; xbar the mean over all N)
    GpMC      x_ij - xbar_j                  (group-mean centred; xbar_j the mean of group j)
    RS+GpM    x_ij and xbar_j                (raw score plus the group mean, a level-2 variable)
    GpMC+GpM  x_ij - xbar_j and xbar_j

Two models are *statistically equivalent* when they are one family of
distributions for y written in two parameterisations: the fixed-effect columns
span the same space (X_a = X_b M) and the random-effect columns are one linear
transform of each other, the same in every group (Z_a = Z_b A), with T's
structure preserved. Then gamma_b = M gamma_a, U_bj = A U_aj, T_b = A T_a A',
sigma^2 is unchanged, the deviances (-2 log L) are equal and so are the fitted
values. Which pairs are equivalent:

* RS and GMC, random intercept or random slope: x_ij - xbar = x_ij - constant.
  gamma_00 = gamma'_00 - gamma'_10 xbar; with a random slope also
  U_0j = U'_0j - U'_1j xbar, so T = A T' A', A = [[1, -xbar], [0, 1]].
* RS+GpM and GpMC+GpM, random intercept: x_ij = (x_ij - xbar_j) + xbar_j, so
  gamma*_01 = gamma~_01 - gamma~_10 (and gamma~_01 = gamma*_10 + gamma*_01).
* Not with a random slope of the group-mean-centred x: U_1j (x_ij - xbar_j) =
  U_1j x_ij - U_1j xbar_j, a random-intercept shift whose coefficient xbar_j
  differs by group, so the map A_j = [[1, -xbar_j], [0, 1]] would differ by group
  and no single T reproduces the other model.
* GpMC is never equivalent to RS or GMC (when the xbar_j differ): it drops
  xbar_j from the fixed part, fixing the between-group effect of x at 0, where
  RS fixes it to equal the within-group effect gamma_10.

Parts: column helpers (:func:`add_grand_mean_centered`,
:func:`add_group_mean_centered`, :func:`add_group_mean`, :func:`add_centered`),
:func:`centered_forms` (the five formulas, a :class:`CenteredForms`), the maps
(:class:`ParameterMap`, :class:`ModelMap`, :func:`model_map`, and the seed's
closed forms :meth:`CenteredForms.model_map`) and :func:`equivalence`, which
compares two fits and says plainly why they are, or are not, the same model.

Column names say what a column is: ``<x>_gmc`` (grand-mean centred),
``<x>_gpmc`` (group-mean centred), ``<x>_gpm`` (the group mean); ``equivalence``
uses these suffixes to name the forms it compares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlmsim.engine.evaluate import evaluate
from mlmsim.engine.fit import fit, fit_design
from mlmsim.engine.inference import CovStructure
from mlmsim.model.covparms import covparm_names
from mlmsim.model.formula import (
    model_design,
    needed_columns,
    parse_formula,
    required_columns,
    term_factors,
    top_level_pieces,
)

if TYPE_CHECKING:
    from mlmsim.engine.result import FitResult
    from mlmsim.model.formula import Design

__all__ = [
    "FORMS",
    "SUFFIXES",
    "centered_names",
    "add_grand_mean_centered",
    "add_group_mean_centered",
    "add_group_mean",
    "add_centered",
    "centered_forms",
    "CenteredForms",
    "ParameterMap",
    "ModelMap",
    "NotEquivalentError",
    "model_map",
    "refit_mapped",
    "Equivalence",
    "equivalence",
]

FORMS = ("RS", "GMC", "GpMC", "RS+GpM", "GpMC+GpM")
"""The seed's five forms, in the order of its tables."""

SUFFIXES = {"GMC": "_gmc", "GpMC": "_gpmc", "GpM": "_gpm"}
"""Name suffix of each derived column: ``homework_gmc``, ``homework_gpmc``, ``homework_gpm``."""

_TOL = 1e-8  # relative residual below which a column is a linear combination of others


class NotEquivalentError(ValueError):
    """Two models are not reparameterisations of each other; the message says why."""


# ---- columns -----------------------------------------------------------------------------


def centered_names(x: str) -> dict[str, str]:
    """The derived column names for predictor ``x``, keyed ``GMC``, ``GpMC``, ``GpM``.

    >>> centered_names("homework")
    {'GMC': 'homework_gmc', 'GpMC': 'homework_gpmc', 'GpM': 'homework_gpm'}
    """
    return {k: f"{x}{s}" for k, s in SUFFIXES.items()}


def _column(data: pd.DataFrame, x: str) -> pd.Series:
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if x not in data.columns:
        raise ValueError(f"column {x!r} is not in the data; available: "
                         f"{', '.join(map(str, data.columns))}")
    col = data[x]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise ValueError(f"column {x!r} must be numeric to be centred, got dtype {col.dtype}")
    if not np.isfinite(col.to_numpy(dtype=float, na_value=np.nan)).any():
        raise ValueError(f"column {x!r} has no finite values")
    return col.astype(float)


def _group_column(data: pd.DataFrame, group: str) -> None:
    if group not in data.columns:
        raise ValueError(f"grouping column {group!r} is not in the data; available: "
                         f"{', '.join(map(str, data.columns))}")


def add_grand_mean_centered(data: pd.DataFrame, x: str, *, name: str | None = None
                            ) -> pd.DataFrame:
    """A copy of ``data`` with ``<x>_gmc`` = x_ij - xbar, xbar the mean over all rows.

    xbar is the mean over every observation (each student counts once, as in the
    seed: xbar = 1.9710983 for NELS-88 homework), missing values skipped.

    >>> d = pd.DataFrame({"g": [1, 1, 2], "x": [1.0, 2.0, 6.0]})
    >>> add_grand_mean_centered(d, "x")["x_gmc"].tolist()
    [-2.0, -1.0, 3.0]
    """
    col = _column(data, x)
    return data.assign(**{name or f"{x}{SUFFIXES['GMC']}": col - float(col.mean())})


def _group_means(data: pd.DataFrame, x: str, group: str) -> pd.Series:
    col = _column(data, x)
    _group_column(data, group)
    return col.groupby(data[group], sort=False).transform("mean")


def add_group_mean(data: pd.DataFrame, x: str, group: str, *, name: str | None = None
                   ) -> pd.DataFrame:
    """A copy of ``data`` with ``<x>_gpm`` = xbar_j, the mean of x in the row's group.

    A level-2 variable (constant within each group); missing x values are skipped
    in the mean.

    >>> d = pd.DataFrame({"g": [1, 1, 2], "x": [1.0, 2.0, 6.0]})
    >>> add_group_mean(d, "x", "g")["x_gpm"].tolist()
    [1.5, 1.5, 6.0]
    """
    return data.assign(**{name or f"{x}{SUFFIXES['GpM']}": _group_means(data, x, group)})


def add_group_mean_centered(data: pd.DataFrame, x: str, group: str, *, name: str | None = None
                            ) -> pd.DataFrame:
    """A copy of ``data`` with ``<x>_gpmc`` = x_ij - xbar_j (group-mean centred).

    >>> d = pd.DataFrame({"g": [1, 1, 2], "x": [1.0, 2.0, 6.0]})
    >>> add_group_mean_centered(d, "x", "g")["x_gpmc"].tolist()
    [-0.5, 0.5, 0.0]
    """
    dev = data[x].astype(float) - _group_means(data, x, group)
    return data.assign(**{name or f"{x}{SUFFIXES['GpMC']}": dev})


def add_centered(data: pd.DataFrame, x: str, group: str) -> pd.DataFrame:
    """A copy of ``data`` with all three: ``<x>_gmc``, ``<x>_gpmc`` and ``<x>_gpm``.

    x_ij = xbar + (x_ij - xbar) = xbar_j + (x_ij - xbar_j) hold row by row.

    >>> d = pd.DataFrame({"g": [1, 1, 2], "x": [1.0, 2.0, 6.0]})
    >>> list(add_centered(d, "x", "g").columns)
    ['g', 'x', 'x_gmc', 'x_gpmc', 'x_gpm']
    """
    means = _group_means(data, x, group)
    col = data[x].astype(float)
    n = centered_names(x)
    return data.assign(**{n["GMC"]: col - float(col.mean()), n["GpMC"]: col - means,
                          n["GpM"]: means})


# ---- the five formulas -------------------------------------------------------------------


def _terms_of(piece: str) -> list[tuple[str, ...]]:
    """The terms a piece of a right-hand side stands for, each the tuple of its factors,
    as the formula parser reads them ('x*z' -> x, z, x:z), without the implicit
    intercept."""
    return [t for t in term_factors(piece) if t != ("1",)]


def _enters(piece: str, x: str) -> bool:
    """Whether ``x`` is a factor of a term of the piece (x, x:z, x*z). A transform of x
    (log(x), I(x**2)) is refused: the five forms replace x itself."""
    if piece in ("0", "1", "-1"):
        return False
    if any(x in t for t in _terms_of(piece)):
        return True
    if x in required_columns(piece):
        raise ValueError(f"{x!r} enters {piece!r} through a transform; the centred forms "
                         "replace x itself: make the transform a column of its own")
    return False


def _with_column(piece: str, x: str, col: str) -> str:
    """The piece with the factor ``x`` replaced by ``col``, written from its terms (the
    piece as written when x is not in it)."""
    if not _enters(piece, x):
        return piece
    return " + ".join(":".join(col if f == x else f for f in t) for t in _terms_of(piece))


def _normalise_form(form: str) -> str:
    key = re.sub(r"\s+", "", str(form)).lower()
    for f in FORMS:
        if f.lower() == key:
            return f
    raise ValueError(f"unknown form {form!r}; the forms are {', '.join(FORMS)}")


@dataclass(frozen=True)
class CenteredForms:
    """The five models of the seed for one predictor x: formulas, column names and xbar.

    ``formulas[form]`` for form in :data:`FORMS`; ``columns`` maps ``GMC``, ``GpMC``,
    ``GpM`` to column names; ``xbar`` is the grand mean (None without data);
    ``data`` the data with the derived columns added (None without data);
    ``random_slope`` says whether x (in its centred form) has a random slope.
    """

    formula: str
    x: str
    group: str
    random_slope: bool
    columns: dict[str, str]
    formulas: dict[str, str]
    xbar: float | None = None
    data: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def __getitem__(self, form: str) -> str:
        return self.formulas[_normalise_form(form)]

    def __iter__(self):
        return iter(FORMS)

    def items(self):
        """(form, formula) pairs in the seed's order."""
        return ((f, self.formulas[f]) for f in FORMS)

    def fit(self, method: str = "ML", data: pd.DataFrame | None = None) -> dict[str, FitResult]:
        """Fit all five forms (``data`` defaults to the data given to :func:`centered_forms`).

        Returns {form: FitResult} in the seed's order.
        """

        data = self._data(data)
        return {f: fit(self.formulas[f], data, method=method) for f in FORMS}

    def _data(self, data: pd.DataFrame | None) -> pd.DataFrame:
        if data is None:
            if self.data is None:
                raise ValueError("no data: pass data here or to centered_forms()")
            return self.data
        missing = [c for c in self.columns.values() if c not in data.columns]
        return add_centered(data, self.x, self.group) if missing else data

    def form_of(self, fit_or_formula) -> str | None:
        """Which of the five forms a fit (or formula) is, by its column names; None if none.

        >>> fm = centered_forms("math ~ homework + (1 | school)", "homework")
        >>> fm.form_of("math ~ homework_gpmc + homework_gpm + (1 | school)")
        'GpMC+GpM'
        """
        if isinstance(fit_or_formula, str):
            pf = parse_formula(fit_or_formula)
            fixed = [":".join(t) for t in term_factors(pf.fixed)]
            rand = [":".join(t) for r in pf.random for t in term_factors(r.expr)]
        else:
            fixed, rand = list(fit_or_formula.fixed_names), list(fit_or_formula.random_names)
        got = _classify(fixed, rand, self.x, self.columns)
        return None if got is None else got[0]

    def model_map(self, source: str, target: str) -> ModelMap:
        """The seed's closed-form map from the ``source`` form's parameters to ``target``'s.

        RS -> GMC: gamma'_00 = gamma_00 + gamma_10 xbar, gamma'_10 = gamma_10; with a
        random slope U'_0j = U_0j + U_1j xbar (A = [[1, xbar], [0, 1]], T' = A T A').
        GMC -> RS is the inverse (A = [[1, -xbar], [0, 1]]). RS+GpM -> GpMC+GpM
        (random intercept): gamma~_01 = gamma*_01 + gamma*_10, everything else
        unchanged. Other pairs are not equivalent: NotEquivalentError says why.
        The map is laid out on the parameter names of the two models (other
        covariates map to themselves); x must enter only as a main effect.
        """
        src, tgt = _normalise_form(source), _normalise_form(target)
        if self.xbar is None or self.data is None:
            raise ValueError("the closed-form maps need xbar: give data to centered_forms()")
        why = _form_reason(src, tgt, self.random_slope, self.x)
        if not why[0]:
            raise NotEquivalentError(why[1])
        da = model_design(self.formulas[src], self.data)
        db = model_design(self.formulas[tgt], self.data)
        xa, xb = _x_column(src, self.x, self.columns), _x_column(tgt, self.x, self.columns)
        for d, col in ((da, xa), (db, xb)):
            other = [c.name for c in (*d.layout.fixed, *d.layout.random)
                     if col in c.variables and c.name != col]
            if other:
                raise ValueError(
                    f"the closed form needs {col!r} as a main effect only, but the model has "
                    f"{', '.join(other)}; use model_map(fit_a, fit_b), which derives the map "
                    "from the designs"
                )
        fixed_a = list(da.fixed_names)
        rename = {xa: xb}
        to_fixed = [rename.get(n, n) for n in fixed_a]
        if to_fixed != list(db.fixed_names):
            raise ValueError(f"unexpected fixed-effect names {db.fixed_names} for {tgt}")
        M = np.eye(len(fixed_a))
        A = np.eye(len(da.random_names))
        to_random = [rename.get(n, n) for n in da.random_names]
        pair = {src, tgt}
        if pair == {"RS", "GMC"}:
            sign = 1.0 if src == "RS" else -1.0
            if "Intercept" not in fixed_a:
                raise NotEquivalentError("without a fixed intercept, x - xbar and x span "
                                         "different columns: RS and GMC differ")
            M[fixed_a.index("Intercept"), fixed_a.index(xa)] = sign * self.xbar
            if xa in da.random_names:
                ra = list(da.random_names)
                if "Intercept" not in ra:
                    raise NotEquivalentError(
                        "a random slope without a random intercept: U_1j (x_ij - xbar) needs a "
                        "random intercept to absorb -U_1j xbar; RS and GMC differ")
                A[ra.index("Intercept"), ra.index(xa)] = sign * self.xbar
        elif pair == {"RS+GpM", "GpMC+GpM"}:
            gpm = self.columns["GpM"]
            sign = 1.0 if src == "RS+GpM" else -1.0
            M[fixed_a.index(gpm), fixed_a.index(xa)] = sign
        name = f"{src} -> {tgt}"
        return _assemble(name, M, fixed_a, to_fixed, A, da, db, to_random)


def _x_column(form: str, x: str, columns: dict[str, str]) -> str:
    return {"RS": x, "GMC": columns["GMC"], "GpMC": columns["GpMC"], "RS+GpM": x,
            "GpMC+GpM": columns["GpMC"]}[form]


def centered_forms(formula: str, x: str, data: pd.DataFrame | None = None, *,
                   random_slope: bool | None = None) -> CenteredForms:
    """The five model formulas RS, GMC, GpMC, RS+GpM, GpMC+GpM for predictor ``x``.

    ``formula`` is the raw-score (RS) model in lme4 syntax; x is added to its fixed
    part if absent. ``random_slope``: None keeps the random part as written, True
    adds a random slope of x to the first bar term, False removes x from the
    random part. In each form x is replaced by its column (``<x>_gmc`` or
    ``<x>_gpmc``) in the fixed and the random part, and the +GpM forms add the
    level-2 variable ``<x>_gpm`` after x's term. With ``data``, the derived
    columns are added (see :func:`add_centered`) and xbar is recorded.

    >>> fm = centered_forms("math ~ 1 + homework + (1 | school)", "homework", random_slope=True)
    >>> for form, f in fm.items():
    ...     print(f"{form:9}", f)
    RS        math ~ 1 + homework + (1 + homework | school)
    GMC       math ~ 1 + homework_gmc + (1 + homework_gmc | school)
    GpMC      math ~ 1 + homework_gpmc + (1 + homework_gpmc | school)
    RS+GpM    math ~ 1 + homework + homework_gpm + (1 + homework | school)
    GpMC+GpM  math ~ 1 + homework_gpmc + homework_gpm + (1 + homework_gpmc | school)
    """
    pf = parse_formula(formula)
    group = pf.group
    if x == group or x == pf.response:
        raise ValueError(f"{x!r} is the {'grouping factor' if x == group else 'response'}; "
                         "centre a level-1 predictor")
    cols = centered_names(x)
    used = [c for c in cols.values() if c in needed_columns(pf)]
    if used:
        raise ValueError(f"pass the raw-score (RS) formula: {formula!r} already uses "
                         f"{', '.join(used)}")
    fixed = top_level_pieces(pf.fixed)
    if not any(_enters(t, x) for t in fixed):
        fixed.append(x)
    bars = [(top_level_pieces(r.expr), r.correlated) for r in pf.random]
    has_slope = any(_enters(t, x) for terms, _ in bars for t in terms)
    if random_slope is True and not has_slope:
        bars[0] = (bars[0][0] + [x], bars[0][1])
    elif random_slope is False and has_slope:
        kept = [([t for t in terms if not _enters(t, x)], c) for terms, c in bars]
        bars = [(t, c) for t, c in kept if any(s not in ("0", "-1") for s in t)]
        if not bars:
            bars = [(["1"], True)]
    slope = any(_enters(t, x) for terms, _ in bars for t in terms)
    formulas = {}
    for form in FORMS:
        col = _x_column(form, x, cols)
        fx = [_with_column(t, x, col) for t in fixed]
        if form.endswith("+GpM"):
            at = 1 + (fixed.index(x) if x in fixed
                      else max(i for i, t in enumerate(fixed) if _enters(t, x)))
            fx.insert(at, cols["GpM"])
        rand = [f"({' + '.join(_with_column(t, x, col) for t in terms)} "
                f"{'|' if c else '||'} {group})" for terms, c in bars]
        formulas[form] = f"{pf.response} ~ {' + '.join(fx)} + {' + '.join(rand)}"
    xbar = None
    if data is not None:
        data = add_centered(data, x, group)
        xbar = float(data[x].astype(float).mean())
    return CenteredForms(formula=formula, x=x, group=group, random_slope=slope, columns=cols,
                         formulas=formulas, xbar=xbar, data=data)


# ---- linear maps -------------------------------------------------------------------------


def _fmt_matrix(L: np.ndarray, rows, cols, indent: str = "    ") -> str:
    width = max(10, *(len(c) + 2 for c in cols))
    rw = max(len(r) for r in rows) + 2
    head = indent + " " * rw + "".join(f"{c:>{width}}" for c in cols)
    body = [indent + f"{r:<{rw}}" + "".join(f"{v:>{width}.6g}" for v in row)
            for r, row in zip(rows, L, strict=True)]
    return "\n".join([head] + body)


@dataclass(frozen=True)
class ParameterMap:
    """A linear map between two parameter vectors: ``to = L @ from``.

    L has shape (len(to_names), len(from_names)). For estimates with covariance
    Sigma the mapped covariance is L Sigma L' (exact, as the map is linear); the
    seed writes the one-row case as L' Sigma L with L a column.
    """

    name: str
    L: np.ndarray
    from_names: tuple[str, ...]
    to_names: tuple[str, ...]

    def __post_init__(self):
        L = np.asarray(self.L, dtype=float)
        if L.shape != (len(self.to_names), len(self.from_names)):
            raise ValueError(f"L has shape {L.shape}, expected "
                             f"({len(self.to_names)}, {len(self.from_names)})")
        object.__setattr__(self, "L", L)

    @property
    def matrix(self) -> pd.DataFrame:
        """L labelled: rows the target names, columns the source names."""
        return pd.DataFrame(self.L, index=list(self.to_names), columns=list(self.from_names))

    def _vector(self, values) -> np.ndarray:
        if isinstance(values, pd.Series):
            missing = [n for n in self.from_names if n not in values.index]
            if missing:
                raise ValueError(f"values lack {', '.join(missing)}")
            return values.loc[list(self.from_names)].to_numpy(dtype=float)
        v = np.asarray(values, dtype=float)
        if v.shape[-1] != len(self.from_names):
            raise ValueError(f"expected {len(self.from_names)} values, got {v.shape[-1]}")
        return v

    def apply(self, values) -> pd.Series:
        """L v, labelled by ``to_names`` (``values``: a Series with ``from_names`` or an array)."""
        return pd.Series(self.L @ self._vector(values), index=list(self.to_names),
                         name=self.name)

    def apply_cov(self, cov) -> pd.DataFrame:
        """L Sigma L' (``cov``: a DataFrame labelled by ``from_names`` or an array)."""
        if isinstance(cov, pd.DataFrame):
            cov = cov.loc[list(self.from_names), list(self.from_names)].to_numpy(dtype=float)
        C = self.L @ np.asarray(cov, dtype=float) @ self.L.T
        return pd.DataFrame(C, index=list(self.to_names), columns=list(self.to_names))

    def se(self, cov) -> pd.Series:
        """Standard errors of the mapped values: sqrt(diag(L Sigma L'))."""
        return pd.Series(np.sqrt(np.diag(self.apply_cov(cov).to_numpy())),
                         index=list(self.to_names), name="se")

    def inverse(self) -> ParameterMap:
        """The map back: L^{-1} (square maps only)."""
        return ParameterMap(_inverse_name(self.name), np.linalg.inv(self.L), self.to_names,
                            self.from_names)


def _inverse_name(name: str) -> str:
    a, sep, b = name.partition(" -> ")
    return f"{b} -> {a}" if sep else f"inverse of {name}"


def _vech_map(A: np.ndarray, rows_a, cols_a, rows_b, cols_b) -> tuple[np.ndarray, float]:
    """K with phi_b = K phi_a for T_b = A T_a A' on the distinct elements of T.

    phi_a[k] sets T_a[i, j] = T_a[j, i] (i = rows_a[k] >= j = cols_a[k]); then
    dT_b[r, c] / dphi_a[k] = A[r, i] A[c, j] + [i != j] A[r, j] A[c, i]. K holds these
    for the elements (r, c) = (rows_b, cols_b) of T_b; the second value returned is
    the largest such coefficient on a structural zero of T_b (0 when the map keeps
    T_b's block structure; T_a's structural zeros are zero by construction).
    """
    rows_a, cols_a = np.asarray(rows_a), np.asarray(cols_a)
    i, j = rows_a[None, :], cols_a[None, :]
    q = A.shape[0]
    r_all, c_all = np.tril_indices(q)
    r, c = r_all[:, None], c_all[:, None]
    full = A[r, i] * A[c, j] + (i != j) * A[r, j] * A[c, i]
    pos = {(a, b): k for k, (a, b) in enumerate(zip(r_all, c_all, strict=True))}
    keep = [pos[(a, b)] for a, b in zip(rows_b, cols_b, strict=True)]
    zeros = np.setdiff1d(np.arange(r_all.size), keep)
    leak = float(np.abs(full[zeros]).max()) if zeros.size else 0.0
    return full[keep], leak


@dataclass(frozen=True)
class ModelMap:
    """The exact map from one parameterisation of a model (a) to an equivalent one (b).

    ``fixed``: gamma_b = M gamma_a (from X_a = X_b M). ``ranef``: U_bj = A U_aj
    (from Z_a = Z_b A), hence T_b = A T_a A'. ``covparms``: phi_b = K phi_a on
    phi = (distinct elements of T in ``covparms`` order, sigma^2), K the map that
    T_b = A T_a A' induces on them, with sigma^2 -> sigma^2. The covariances of the
    mapped estimates are M Sigma_gamma M' and K (2 H^{-1}) K'.
    """

    name: str
    fixed: ParameterMap
    ranef: ParameterMap
    covparms: ParameterMap

    @property
    def M(self) -> np.ndarray:  # noqa: N802 - the matrix's name
        return self.fixed.L

    @property
    def A(self) -> np.ndarray:  # noqa: N802 - the matrix's name
        return self.ranef.L

    @property
    def reml_shift(self) -> float:
        """d_R(a) - d_R(b) = 2 log|det M|: REML criteria differ by this constant (ML: 0)."""
        return float(2.0 * np.linalg.slogdet(self.M)[1])

    def map_T(self, T) -> pd.DataFrame:
        """A T A', labelled by the target's random-effect names."""
        T = T.to_numpy() if isinstance(T, pd.DataFrame) else np.asarray(T, dtype=float)
        names = list(self.ranef.to_names)
        return pd.DataFrame(self.A @ T @ self.A.T, index=names, columns=names)

    def inverse(self) -> ModelMap:
        return ModelMap(_inverse_name(self.name), self.fixed.inverse(), self.ranef.inverse(),
                        self.covparms.inverse())

    def apply(self, fit: FitResult) -> pd.DataFrame:
        """The fit's estimates mapped to the target parameters, with their SEs.

        Rows: the target's fixed effects then covariance parameters; columns
        ``estimate`` (M gamma-hat, K phi-hat) and ``se`` (from M vcov M' and
        K covparms_cov K').
        """
        est = pd.concat([self.fixed.apply(fit.fixef),
                         self.covparms.apply(fit.covparms["estimate"])])
        se = pd.concat([self.fixed.se(fit.vcov), self.covparms.se(fit.covparms_cov)])
        return pd.DataFrame({"estimate": est, "se": se})

    def summary(self) -> str:
        lines = [f"Map {self.name}: gamma_b = M gamma_a, U_bj = A U_aj, T_b = A T_a A'",
                 "  M (fixed effects):",
                 _fmt_matrix(self.M, self.fixed.to_names, self.fixed.from_names),
                 "  A (random effects):",
                 _fmt_matrix(self.A, self.ranef.to_names, self.ranef.from_names)]
        return "\n".join(lines)


def _inline(A: np.ndarray) -> str:
    return "[" + ", ".join("[" + ", ".join(f"{v:.6g}" for v in row) + "]" for row in A) + "]"


def _assemble(name: str, M: np.ndarray, fixed_a, fixed_b, A: np.ndarray, da: Design,
              db: Design, random_b) -> ModelMap:
    """A ModelMap from M and A; raises NotEquivalentError if A breaks T_b's structure."""

    csa = CovStructure.from_blocks(len(da.random_names), da.blocks)
    csb = CovStructure.from_blocks(len(db.random_names), db.blocks)
    K, leak = _vech_map(A, csa.rows, csa.cols, csb.rows, csb.cols)
    if leak > _TOL * max(1.0, np.abs(A).max() ** 2):
        raise NotEquivalentError(
            f"the map A = {_inline(A)} turns a T with structural "
            "zeros (uncorrelated random effects, '||' or separate bar terms) into one with "
            "non-zero covariances there, so the two models restrict T differently"
        )
    # A T_a A' stays in T_b's structure; with as many free elements on both sides the
    # map is one-to-one (A is invertible), so each structure maps onto the other
    if len(csa.rows) != len(csb.rows):
        raise NotEquivalentError(
            f"T has {len(csa.rows)} free elements in one model and {len(csb.rows)} in the other")
    names_a = covparm_names(list(da.random_names), csa.rows, csa.cols)[0]
    names_b = covparm_names(list(db.random_names), csb.rows, csb.cols)[0]
    Kfull = np.zeros((K.shape[0] + 1, K.shape[1] + 1))
    Kfull[:-1, :-1] = K
    Kfull[-1, -1] = 1.0
    return ModelMap(
        name,
        ParameterMap(f"{name} (fixed effects)", M, tuple(fixed_a), tuple(fixed_b)),
        ParameterMap(f"{name} (random effects)", A, tuple(da.random_names), tuple(random_b)),
        ParameterMap(f"{name} (covariance parameters)", Kfull, tuple(names_a), tuple(names_b)),
    )


def _solve(Xb: np.ndarray, Xa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M minimising ||Xa - Xb M|| column by column, and each column's relative residual.

    Entries within 1e-12 of an integer are snapped to it (the 0s and 1s of a
    reparameterisation come out of least squares as 1e-16 or 1 +- 1e-16).
    """
    M = np.linalg.lstsq(Xb, Xa, rcond=None)[0]
    near = np.round(M)
    M = np.where(np.abs(M - near) < 1e-12, near, M) + 0.0
    res = np.linalg.norm(Xa - Xb @ M, axis=0)
    scale = np.maximum(np.linalg.norm(Xa, axis=0), 1e-300)
    return M, res / scale


def _groupwise_residual(Za: np.ndarray, Zb: np.ndarray, codes: np.ndarray, J: int) -> float:
    """Largest relative residual of Za_j = Zb_j A_j with a separate A_j for each group j."""
    q = Zb.shape[1]
    G = np.zeros((J, q, q))
    C = np.zeros((J, q, Za.shape[1]))
    np.add.at(G, codes, Zb[:, :, None] * Zb[:, None, :])
    np.add.at(C, codes, Zb[:, :, None] * Za[:, None, :])
    Aj = np.linalg.pinv(G) @ C
    res = Za - np.einsum("nq,nqr->nr", Zb, Aj[codes])
    return float((np.linalg.norm(res, axis=0)
                  / np.maximum(np.linalg.norm(Za, axis=0), 1e-300)).max())


def _design(fit: FitResult) -> Design:
    if getattr(fit, "design", None) is None:
        raise ValueError("the fit carries no design (a batch fit?); refit it with mlmsim.fit")
    return fit.design


def _same_data(da: Design, db: Design) -> str:
    """'' when the two designs are on the same rows, response and groups; else why not."""
    if da.nobs != db.nobs or not np.array_equal(da.used_rows, db.used_rows):
        return (f"the fits use different rows ({da.nobs} vs {db.nobs} observations): "
                "models are compared on the same data only")
    if not np.array_equal(da.y, db.y):
        return "the fits have different responses"
    if not (np.array_equal(da.group_codes, db.group_codes)
            and np.array_equal(da.group_labels, db.group_labels)):
        return "the fits group the observations differently"
    return ""


def _derive(fit_a: FitResult, fit_b: FitResult, name: str = "fit_a -> fit_b"
            ) -> tuple[ModelMap | None, list[str]]:
    """The map a -> b read off the two designs, or None and the reasons there is none."""
    da, db = _design(fit_a), _design(fit_b)
    why = _same_data(da, db)
    if why:
        return None, [why]
    reasons = []
    fa, fb = list(da.fixed_names), list(db.fixed_names)
    M, res_ab = _solve(db.X, da.X)  # X_a = X_b M
    _, res_ba = _solve(da.X, db.X)
    out_a = [n for n, r in zip(fa, res_ab, strict=True) if r > _TOL]
    out_b = [n for n, r in zip(fb, res_ba, strict=True) if r > _TOL]
    if out_a or out_b:
        if not out_a:
            reasons.append(
                f"the fixed part of fit_b contains fit_a's and adds {', '.join(out_b)}: nested "
                "models, not equivalent (compare them with a likelihood-ratio test, mlmsim.lrt)")
        elif not out_b:
            reasons.append(
                f"the fixed part of fit_a contains fit_b's and adds {', '.join(out_a)}: nested "
                "models, not equivalent (compare them with a likelihood-ratio test, mlmsim.lrt)")
        else:
            reasons.append(
                f"the fixed parts span different columns: {', '.join(out_a)} (fit_a) is not a "
                f"linear combination of fit_b's columns, nor {', '.join(out_b)} (fit_b) of "
                "fit_a's")
    ra, rb = list(da.random_names), list(db.random_names)
    A = None
    if len(ra) != len(rb):
        reasons.append(f"different numbers of random effects ({len(ra)} vs {len(rb)})")
    else:
        A, res_z = _solve(db.Z, da.Z)  # Z_a = Z_b A, so U_b = A U_a
        _, res_z2 = _solve(da.Z, db.Z)
        if max(res_z.max(), res_z2.max()) > _TOL:
            within = max(_groupwise_residual(da.Z, db.Z, da.group_codes, da.ngroups),
                         _groupwise_residual(db.Z, da.Z, db.group_codes, db.ngroups))
            if within <= _TOL:
                reasons.append(
                    "the random parts are related by a different matrix A_j in each group "
                    "(Z_a = Z_b A_j), so T_b = A_j T_a A_j' would have to vary by group: no "
                    "single T gives the same model")
            else:
                reasons.append("the random-effect columns span different spaces within groups")
            A = None
    if reasons:
        return None, reasons
    try:
        mm = _assemble(name, M, fa, fb, A, da, db, rb)
    except NotEquivalentError as exc:
        return None, [str(exc)]
    return mm, []


def model_map(fit_a: FitResult, fit_b: FitResult) -> ModelMap:
    """The exact map from ``fit_a``'s parameters to ``fit_b``'s, read off their designs.

    Solves X_a = X_b M and Z_a = Z_b A (one A for all groups) by least squares and
    requires exact solutions (relative residual < 1e-8) both ways; then
    gamma_b = M gamma_a, U_bj = A U_aj, T_b = A T_a A' and phi_b = K phi_a (see
    :class:`ModelMap`). Raises NotEquivalentError saying why when no such map exists.
    Works for any reparameterisation (centring, rescaling, recoding), not only the
    seed's five forms.
    """
    mm, reasons = _derive(fit_a, fit_b)
    if mm is None:
        raise NotEquivalentError("; ".join(reasons))
    return mm


def refit_mapped(fit_from: FitResult, fit_to: FitResult) -> FitResult:
    """Refit ``fit_to``'s model with the optimiser started at ``fit_from``'s estimates,
    mapped exactly into ``fit_to``'s parameterisation (T_to = A T_from A').

    The likelihood of a random-slope model can have more than one local optimum, and
    which one an optimiser reaches from its default start (Lambda = I) depends on the
    parameterisation: RS and GMC fits of the same data can then end at different
    deviances (lme4 shows the same). Equivalent models share their optima, so
    restarting from the other fit's mapped optimum finds the better one.
    """

    mm = model_map(fit_from, fit_to)
    d = _design(fit_to)
    T = mm.map_T(fit_from.T).to_numpy()
    phi = fit_to.cov_structure.phi(0.5 * (T + T.T), fit_from.sigma2)
    start = evaluate(d, phi=phi, method=fit_to.method)
    return fit_design(d, fit_to.method, theta0=start.theta)


# ---- recognising the forms ---------------------------------------------------------------


def _classify(fixed, random, x: str, columns: dict[str, str]) -> tuple[str, bool] | None:
    """(form, random_slope) from column names, or None when they are not one of the forms."""
    fixed, random = set(fixed), set(random)
    level1 = [c for c in (x, columns["GMC"], columns["GpMC"]) if c in fixed]
    if len(level1) != 1:
        return None
    col = level1[0]
    base = {x: "RS", columns["GMC"]: "GMC", columns["GpMC"]: "GpMC"}[col]
    form = base + ("+GpM" if columns["GpM"] in fixed else "")
    others = {x, columns["GMC"], columns["GpMC"]} - {col}
    if random & others:
        return None
    return form, col in random


def _detect(fit_a: FitResult, fit_b: FitResult, forms: CenteredForms | None):
    """((form_a, slope_a), (form_b, slope_b), x) recognised from names, or Nones."""
    if forms is not None:
        candidates = [(forms.x, forms.columns)]
    else:
        names = set(fit_a.fixed_names) | set(fit_b.fixed_names)
        bases = [n[: -len(s)] for n in names for s in SUFFIXES.values()
                 if n.endswith(s) and len(n) > len(s)]
        candidates = [(b, centered_names(b)) for b in dict.fromkeys(bases)]
    for x, cols in candidates:
        ca = _classify(fit_a.fixed_names, fit_a.random_names, x, cols)
        cb = _classify(fit_b.fixed_names, fit_b.random_names, x, cols)
        if ca is not None and cb is not None:
            return ca, cb, x
    return None, None, None


def _form_reason(a: str, b: str, slope: bool, x: str = "x") -> tuple[bool, str]:
    """(equivalent, why) for two of the seed's forms, in the seed's notation."""
    pair = {a, b}
    if a == b:
        return True, f"both fits are {a}: the same model"
    if pair == {"RS", "GMC"}:
        why = (f"RS and GMC are equivalent: x_ij - xbar differs from x_ij (x = {x}) by the "
               "constant xbar, so the fixed parts span the same columns: gamma_00 = "
               "gamma'_00 - gamma'_10 xbar, gamma_10 = gamma'_10")
        if slope:
            why += ("; with a random slope, U_0j + U_1j x_ij = (U_0j + U_1j xbar) + "
                    "U_1j (x_ij - xbar), so U_0j = U'_0j - U'_1j xbar and T = A T' A' with "
                    "A = [[1, -xbar], [0, 1]]: tau_0^2 and tau_10 change, tau_1^2 and sigma^2 "
                    "do not")
        else:
            why += "; U_0j, tau_0^2 and sigma^2 are the same"
        return True, why
    if pair == {"RS+GpM", "GpMC+GpM"}:
        if not slope:
            return True, ("RS+GpM and GpMC+GpM are equivalent in random-intercept models: "
                          "x_ij = (x_ij - xbar_j) + xbar_j, so the fixed parts span the same "
                          "columns and gamma*_01 = gamma~_01 - gamma~_10 (gamma~_01 = gamma*_10 "
                          "+ gamma*_01: the between-group effect is the within-group effect "
                          "plus the contextual effect); U_0j, tau_0^2 and sigma^2 are the same")
        return False, ("RS+GpM and GpMC+GpM are not equivalent with a random slope: "
                       "U~_1j (x_ij - xbar_j) = U~_1j x_ij - U~_1j xbar_j, a random-intercept "
                       "shift whose coefficient xbar_j differs by group, so U*_j = A_j U~_j "
                       "with A_j = [[1, -xbar_j], [0, 1]] and T* = A_j T~ A_j' would have to "
                       "vary by group: no single T* gives the same model (group-mean "
                       "centring with a random slope changes the model)")
    gp = {"GpMC"}
    if pair & gp and pair & {"RS", "GMC"}:
        why = (f"{a} and {b} are not equivalent: group-mean centring removes xbar_j from the "
               "fixed part (x_ij - xbar_j is not a combination of 1 and x_ij when the group "
               "means differ); RS and GMC force the between-group effect of x to equal the "
               "within-group effect gamma_10, GpMC forces it to 0 (add xbar_j, the +GpM "
               "forms, to free it)")
        if slope:
            why += ("; with a random slope the random parts differ too: U_1j (x_ij - xbar_j) "
                    "= U_1j x_ij - U_1j xbar_j needs a group-specific A_j")
        return False, why
    with_gpm = [f for f in (a, b) if f.endswith("+GpM")]
    if len(with_gpm) == 1:
        big = with_gpm[0]
        small = a if big == b else b
        why = (f"{a} and {b} are not equivalent: {big} adds the group mean xbar_j as a level-2 "
               "variable")
        constraint = {("RS", "RS+GpM"): "gamma*_01 = 0",
                      ("GMC", "RS+GpM"): "gamma*_01 = 0",
                      ("GpMC", "GpMC+GpM"): "gamma~_01 = 0",
                      ("GpMC", "RS+GpM"): "gamma*_01 = -gamma*_10",
                      ("RS", "GpMC+GpM"): "gamma~_01 = gamma~_10",
                      ("GMC", "GpMC+GpM"): "gamma~_01 = gamma~_10"}[(small, big)]
        if slope and small.startswith("GpMC") != big.startswith("GpMC"):
            why += ("; with a random slope the random parts differ too: U_1j (x_ij - xbar_j) "
                    "= U_1j x_ij - U_1j xbar_j needs a group-specific A_j")
        else:
            why += (f"; {small} is {big} with {constraint}, a nested model: compare them with a "
                    "likelihood-ratio test (mlmsim.lrt)")
        return False, why
    return False, f"{a} and {b} are not equivalent"


# ---- comparing two fits ------------------------------------------------------------------


@dataclass(frozen=True)
class Equivalence:
    """How two fits of the same data compare: the answer of :func:`equivalence`.

    Attributes
    ----------
    equivalent : bool
        The two models are one model in two parameterisations (a map exists).
    reason : str
        Why, or why not, in the seed's notation.
    deviance_a, deviance_b, deviance_difference : float
        -2 log L (or the REML criterion) of each fit and deviance_a - deviance_b.
    expected_difference : float
        What that difference is for equivalent models: 0 by ML; 2 log|det M| by
        REML (the REML criterion depends on the scale of the fixed-effect columns).
    fitted_agree : bool
        max |fitted_a - fitted_b| <= fitted_rtol * sd(y).
    fitted_max_difference : float
    fits_agree : bool
        Deviances (within deviance_rtol) and fitted values agree. For equivalent
        models False means a fit stopped short of the optimum.
    forms : tuple
        The seed's form of each fit ("RS", "GMC", ...) when recognised from the
        column names, else None.
    map : ModelMap or None
        The exact map a -> b, when the models are equivalent.
    mapped : pd.DataFrame or None
        Index ``parameter`` (fit_b's fixed effects then covariance parameters);
        columns ``fit_a_mapped`` (fit_a's estimates through the map), ``fit_b``,
        ``difference`` (mapped minus fit_b), ``se_mapped`` (from M Sigma M' and
        K (2H^{-1}) K') and ``se_fit_b``.
    """

    method: str
    formula_a: str
    formula_b: str
    forms: tuple[str | None, str | None]
    random_slope: tuple[bool | None, bool | None]
    deviance_a: float
    deviance_b: float
    deviance_difference: float
    expected_difference: float
    fitted_agree: bool
    fitted_max_difference: float
    fits_agree: bool
    equivalent: bool
    reason: str
    map: ModelMap | None = field(default=None, repr=False)
    mapped: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def max_mapped_difference(self) -> float:
        """Largest |difference| / max(1, |fit_b|) over the mapped parameters (NaN if none)."""
        if self.mapped is None:
            return float("nan")
        m = self.mapped
        return float((m["difference"].abs() / np.maximum(1.0, m["fit_b"].abs())).max())

    def summary(self) -> str:
        def label(i):
            f, s = self.forms[i], self.random_slope[i]
            if f is None:
                return ""
            return f"  [{f}, {'random slope' if s else 'random intercept'}]"

        crit = "-2LL" if self.method == "ML" else "REML criterion"
        lines = [
            f"Equivalence of two {self.method} fits",
            f"  fit_a: {self.formula_a}{label(0)}",
            f"  fit_b: {self.formula_b}{label(1)}",
            f"  {crit}: {self.deviance_a:.4f} (a) vs {self.deviance_b:.4f} (b), "
            f"difference {self.deviance_difference:.3g}"
            + (f" (expected {self.expected_difference:.6g})"
               if self.expected_difference != 0.0 else ""),
            f"  fitted values agree: {'yes' if self.fitted_agree else 'no'} "
            f"(max |difference| {self.fitted_max_difference:.3g})",
            f"  Equivalent: {'yes' if self.equivalent else 'NO'}. {self.reason}",
        ]
        if self.equivalent and not self.fits_agree:
            worse, better = ("a", "b") if self.deviance_difference > self.expected_difference \
                else ("b", "a")
            lines.append(
                "  Warning: the models are equivalent but the fits disagree: fit_"
                f"{worse} has the higher criterion, so it stopped at a local optimum or short "
                f"of the optimum; refit_mapped(fit_{better}, fit_{worse}) restarts it from "
                f"fit_{better}'s mapped estimates")
        if self.map is not None:
            lines += ["", self.map.summary(), ""]
            m = self.mapped
            w = max(12, max(len(str(n)) for n in m.index) + 2)
            lines.append(f"  {'parameter':<{w}}{'fit_a mapped':>14}{'fit_b':>14}"
                         f"{'difference':>12}{'se mapped':>12}{'se fit_b':>12}")
            for n, r in m.iterrows():
                lines.append(f"  {n:<{w}}{r.fit_a_mapped:14.6g}{r.fit_b:14.6g}"
                             f"{r.difference:12.3g}{r.se_mapped:12.4g}{r.se_fit_b:12.4g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def equivalence(fit_a: FitResult, fit_b: FitResult, *, forms: CenteredForms | None = None,
                deviance_rtol: float = 1e-6, fitted_rtol: float = 1e-5) -> Equivalence:
    """Compare two fits of the same data: are they one model in two parameterisations?

    The answer comes from the designs (see :func:`model_map`): equivalent when
    X_a = X_b M and Z_a = Z_b A with one A for all groups and T's structure kept.
    Then the deviances are equal (by ML; by REML they differ by 2 log|det M|), the
    fitted values agree, and fit_a's estimates mapped by M and K match fit_b's;
    ``mapped`` shows them side by side with SEs from M Sigma M' and K (2H^{-1}) K'.
    Otherwise ``reason`` says why not (for example, group-mean centring with a
    random slope changes the model). The seed's forms are recognised from the
    column suffixes ``_gmc``, ``_gpmc``, ``_gpm`` (or from ``forms``) to phrase
    the reason in the seed's notation.

    >>> import mlmsim
    >>> fm = centered_forms("math ~ homework + (1 | school)", "homework",
    ...                     mlmsim.datasets.load("nels88"))
    >>> fits = fm.fit("ML")
    >>> eq = equivalence(fits["GMC"], fits["RS"])
    >>> eq.equivalent, round(float(eq.mapped.loc["Intercept", "fit_a_mapped"]), 4)
    (True, 46.3495)
    >>> equivalence(fits["RS"], fits["GpMC"]).equivalent
    False
    """
    da, db = _design(fit_a), _design(fit_b)
    fa, fb, x = _detect(fit_a, fit_b, forms)
    known = fa is not None and fb is not None
    name = f"{fa[0]} -> {fb[0]}" if known else "fit_a -> fit_b"
    if fit_a.method != fit_b.method:
        mm, reasons = None, [f"fit_a is {fit_a.method} and fit_b is {fit_b.method}: the criteria "
                             "differ, so the fits cannot be compared; refit both the same way"]
    else:
        mm, reasons = _derive(fit_a, fit_b, name)
    equivalent = mm is not None
    if known and (equivalent or not _same_data(da, db)) and fit_a.method == fit_b.method:
        reason = _known_reason(fa, fb, x, equivalent, reasons, da, db)
    elif equivalent:
        reason = ("one model in two parameterisations: X_a = X_b M and Z_a = Z_b A with one A "
                  "for all groups")
    else:
        reason = "not equivalent: " + "; ".join(reasons)
    same_rows = fit_a.fitted.shape == fit_b.fitted.shape and not _same_data(da, db)
    if same_rows:
        fdiff = float(np.abs(fit_a.fitted - fit_b.fitted).max())
        scale = float(np.std(da.y)) or 1.0
        fitted_agree = fdiff <= fitted_rtol * scale
    else:
        fdiff, fitted_agree = float("nan"), False
    expected = 0.0
    if mm is not None and fit_a.method == "REML":
        expected = mm.reml_shift
    ddiff = float(fit_a.deviance - fit_b.deviance)
    dev_ok = abs(ddiff - expected) <= deviance_rtol * max(1.0, abs(fit_b.deviance))
    mapped = None
    if mm is not None:
        m = mm.apply(fit_a)
        est_b = pd.concat([fit_b.fixef, fit_b.covparms["estimate"]])
        se_b = pd.concat([fit_b.fixef_se, fit_b.covparms["se"]])
        mapped = pd.DataFrame({"fit_a_mapped": m["estimate"], "fit_b": est_b,
                               "difference": m["estimate"] - est_b, "se_mapped": m["se"],
                               "se_fit_b": se_b})
        mapped.index.name = "parameter"
    return Equivalence(
        method=fit_a.method if fit_a.method == fit_b.method else f"{fit_a.method}/{fit_b.method}",
        formula_a=fit_a.formula, formula_b=fit_b.formula,
        forms=(fa[0], fb[0]) if known else (None, None),
        random_slope=(fa[1], fb[1]) if known else (None, None),
        deviance_a=float(fit_a.deviance), deviance_b=float(fit_b.deviance),
        deviance_difference=ddiff, expected_difference=expected,
        fitted_agree=bool(fitted_agree), fitted_max_difference=fdiff,
        fits_agree=bool(dev_ok and fitted_agree), equivalent=equivalent, reason=reason,
        map=mm, mapped=mapped,
    )


def _known_reason(fa, fb, x: str, equivalent: bool, reasons: list[str], da: Design,
                  db: Design) -> str:
    """The reason in the seed's words for two recognised forms, checked against the designs."""
    if fa[1] != fb[1]:
        why = (f"{fa[0]} and {fb[0]} differ in their random part: one has a random slope of "
               f"{x}, the other does not")
        return why if not equivalent else "one model in two parameterisations (X_a = X_b M, " \
            "Z_a = Z_b A)"
    ok, why = _form_reason(fa[0], fb[0], fa[1], x)
    if ok and equivalent:
        return why
    if not ok and not equivalent:
        return why + (_spread(da, db, x) if "GpMC" in fa[0] + fb[0] else "")
    if equivalent:  # e.g. GpMC vs RS when every group has the same mean of x
        return ("one model in two parameterisations here (X_a = X_b M, Z_a = Z_b A), although "
                f"{fa[0]} and {fb[0]} differ in general: in these data the group means of {x} "
                "do not separate them")
    return f"{fa[0]} and {fb[0]} would be equivalent, but: " + "; ".join(reasons)


def _spread(da: Design, db: Design, x: str) -> str:
    """' (the group means of x range from a to b)' from whichever design holds x or its mean."""
    for d in (da, db):
        names = list(d.fixed_names)
        for col in (x, f"{x}{SUFFIXES['GpM']}", f"{x}{SUFFIXES['GMC']}"):
            if col in names:
                v = d.X[:, names.index(col)]
                n = np.bincount(d.group_codes, minlength=d.ngroups)
                means = np.bincount(d.group_codes, weights=v, minlength=d.ngroups) / n
                if col.endswith(SUFFIXES["GMC"]):
                    return f" (the group means of {x} - xbar range from {means.min():.4g} to " \
                           f"{means.max():.4g})"
                return f" (the group means of {x} range from {means.min():.4g} to " \
                       f"{means.max():.4g})"
    return ""
