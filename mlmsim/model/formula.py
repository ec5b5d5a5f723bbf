"""lme4-style formula -> fixed design X, random design Z, grouping factor.

A formula ``y ~ fixed + (re | g) + (re2 || g)`` is split into its response,
its fixed part and its bar terms; formulaic (a maintained Wilkinson-formula
library) parses every part and names the columns (``Intercept``, ``x``,
``x:z``, ``f[T.b]``). The only syntax mlmsim adds is lme4's bar: ``(expr | g)``
(correlated random effects), ``(expr || g)`` (uncorrelated: one block per
term). Several bar terms on the same grouping factor give a block-diagonal T.

Design construction has a fast path: when every factor of every term is a
plain numeric column, the columns are products of data columns, computed with
numpy (the same values and names formulaic gives; a test pins this). Anything
else (categorical columns, transforms such as ``C(x)`` or ``I(x**2)``) goes
through formulaic's materializer.

Rows with a missing or non-finite value in any used column are dropped and
counted (``Design.n_dropped``), as SAS reports "Observations Not Used".
"""

from __future__ import annotations

import itertools
import math
import pickle
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix
from formulaic.errors import FormulaicError, FormulaSyntaxError

from mlmsim.model.formula_safe import check_formula
from mlmsim.model.layout import PLAIN_NAME, Column, DesignLayout, LaidOut, Part
from mlmsim.model.terms import (
    column_max_abs,
    term_matrix,
    term_products,
    unit_powers,
    variable_array,
)

__all__ = ["RandomTerm", "ParsedFormula", "Design", "StackedDesign", "parse_formula",
           "parse_restricted_formula",
           "model_design", "stacked_design", "formula_layout", "clearly_full_rank",
           "term_factors", "required_columns", "needed_columns", "top_level_pieces"]


@dataclass(frozen=True)
class RandomTerm:
    """One bar term ``(expr | group)``; ``correlated`` is False for ``||``."""

    expr: str
    group: str
    correlated: bool


@dataclass(frozen=True)
class ParsedFormula:
    """An lme4 formula split into response, fixed part and bar terms."""

    formula: str
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def group(self) -> str:
        """The grouping factor (exactly one is supported)."""
        return self.random[0].group


@dataclass(frozen=True)
class Design(LaidOut):
    """Model matrices of a two-level model, rows in the order of the data used.

    y (N,), X (N, p), Z (N, q); ``group_codes`` (N,) in 0..J-1 index
    ``group_labels`` (J,). ``layout`` says what each column is made of
    (:class:`~mlmsim.model.layout.DesignLayout`): the columns' names and ``blocks``, per
    block of T the indices of the random-effect columns it covers (one block per ``|``
    term, one block per term of a ``||`` term). ``used_rows`` are the positions
    (0-based, in the input data) of the rows used, ``row_index`` their labels in the
    input's index.
    """

    formula: ParsedFormula
    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    group_codes: np.ndarray
    group_labels: np.ndarray
    layout: DesignLayout
    n_dropped: int
    used_rows: np.ndarray
    dropped_fixed: tuple[str, ...] = ()
    row_index: pd.Index | None = None

    @property
    def nobs(self) -> int:
        return int(self.y.shape[0])

    @property
    def ngroups(self) -> int:
        return int(self.group_labels.shape[0])


_BAR = re.compile(r"\|\|?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _split_bars(rhs: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """Cut ``( lhs | g )`` and ``( lhs || g )`` groups out of a right-hand side.

    Returns the rest (the fixed part) and the bar terms as (lhs, group,
    correlated). Only parentheses that contain a top-level bar are cut.
    """
    fixed: list[str] = []
    bars: list[tuple[str, str, bool]] = []
    i, depth, start = 0, 0, None
    for i, ch in enumerate(rhs):
        if ch == "(":
            if depth == 0:
                start = i
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"formula has an unmatched ')' at position {i}: {rhs!r}")
            if depth == 0 and start is not None:
                inner = rhs[start + 1 : i]
                top = _top_level_bar(inner)
                if top is None:
                    fixed.append(rhs[start : i + 1])
                else:
                    pos, width = top
                    bars.append((inner[:pos].strip(), inner[pos + width :].strip(), width == 1))
                start = None
        elif depth == 0:
            fixed.append(ch)
    if depth != 0:
        raise ValueError(f"formula has an unmatched '(': {rhs!r}")
    return "".join(fixed), bars


def _top_level_bar(inner: str) -> tuple[int, int] | None:
    depth = 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return i, 2 if inner[i + 1 : i + 2] == "|" else 1
    return None


@lru_cache(maxsize=256)
def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and bar terms.

    >>> p = parse_formula("y ~ x + (1 + x | g)")
    >>> p.response, p.fixed, p.random[0].expr, p.group
    ('y', 'x', '1 + x', 'g')
    """
    if not isinstance(formula, str) or "~" not in formula:
        raise ValueError(f"formula must be a string 'response ~ terms', got {formula!r}")
    if formula.count("~") > 1:
        raise ValueError(f"formula has more than one '~': {formula!r}; write 'response ~ terms'")
    lhs, _, rhs = formula.partition("~")
    response = lhs.strip()
    if not response:
        raise ValueError(f"formula has no response on the left of '~': {formula!r}")
    if not re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_.]*", response):
        raise ValueError(
            f"the response must be a column name, got {response!r} in {formula!r}"
        )
    fixed_text, bars = _split_bars(rhs)
    if not bars:
        raise ValueError(
            f"formula {formula!r} has no random-effects term such as (1 | group); "
            "a mixed model needs at least one"
        )
    fixed = _fixed_terms_text(fixed_text, formula)
    groups = {g for _, g, _ in bars}
    for lhs_b, g, _ in bars:
        if not re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_.]*", g):
            if "/" in g or ":" in g:
                raise ValueError(
                    f"nested grouping '{g}' (three-level model) is out of scope: "
                    "mlmsim fits two-level models with one grouping factor"
                )
            raise ValueError(f"the grouping factor must be a column name, got {g!r}")
        if not lhs_b:
            raise ValueError(f"empty random-effects term in {formula!r}")
        _check_syntax(lhs_b, formula)
    if len(groups) > 1:
        raise ValueError(
            f"formula {formula!r} has {len(groups)} grouping factors "
            f"({', '.join(sorted(groups))}); "
            "crossed or multi-level random effects are out of scope: one grouping factor only"
        )
    random = tuple(RandomTerm(e, g, c) for e, g, c in bars)
    return ParsedFormula(formula=formula, response=response, fixed=fixed, random=random)


def parse_restricted_formula(formula: str) -> ParsedFormula:
    """:func:`parse_formula` of a formula that comes from a file, a spec or a study
    definition: first read with the restricted grammar of :mod:`mlmsim.model.formula_safe`
    (column names, numbers, operators, a few functions), since formulaic evaluates a
    formula's factors as Python. Anything more is refused with a one-line
    ``UnsafeFormulaError`` (a ValueError); ``fit`` itself keeps formulaic's power."""

    return parse_formula(check_formula(formula))


def top_level_pieces(text: str) -> list[str]:
    """The ``+``-separated pieces of a right-hand side outside any parentheses, as
    written and without empty ones: 'x + (1 + x | g) + log(z + 1)' -> ['x',
    '(1 + x | g)', 'log(z + 1)']."""
    pieces, depth, current = [], 0, []
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "+" and depth == 0:
            pieces.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current).strip())
    return [p for p in pieces if p]


def _fixed_terms_text(text: str, formula: str) -> str:
    """The fixed part as a formulaic right-hand side, with the cut-out bars' ``+`` removed.

    Only bar terms given means an intercept-only fixed part, as in lme4.
    """
    cleaned = " + ".join(top_level_pieces(text)) or "1"
    _check_syntax(cleaned, formula)
    return cleaned


def _check_syntax(rhs: str, formula: str) -> None:
    try:
        _parse_rhs(rhs)
    except (FormulaSyntaxError, Exception) as exc:  # formulaic raises several types
        text = _ANSI.sub("", str(exc))
        raise ValueError(f"formula syntax error in {formula!r} (part {rhs!r}): {text}") from None


@lru_cache(maxsize=512)
def _parse_rhs(rhs: str) -> Formula:
    return Formula(rhs)


@lru_cache(maxsize=512)
def term_factors(rhs: str) -> tuple[tuple[str, ...], ...]:
    """The terms of a right-hand side as tuples of factor expressions ('1' is the intercept)."""
    return tuple(tuple(str(f) for f in term.factors) for term in _parse_rhs(rhs))


@lru_cache(maxsize=512)
def required_columns(rhs: str) -> frozenset[str]:
    """The data columns a right-hand side reads (inside transforms too)."""
    return frozenset(_parse_rhs(rhs).required_variables)


@lru_cache(maxsize=256)
def needed_columns(pf: ParsedFormula) -> tuple[str, ...]:
    """Every data column the formula uses (response, grouping factor, predictors)."""
    needed = {pf.response, pf.group} | required_columns(pf.fixed)
    for term in pf.random:
        needed |= required_columns(term.expr)
    return tuple(sorted(needed))


def _is_numeric(values: pd.Series) -> bool:
    return _numeric_dtype(values.dtype)


def _numeric_dtype(dt) -> bool:
    if isinstance(dt, np.dtype):
        return dt.kind in "iuf"
    return pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_bool_dtype(dt)


def _is_date_or_time(dt) -> bool:
    """A datetime, timedelta or period dtype (numpy's directly: pandas' type checks cost
    about 15 us a column)."""
    if isinstance(dt, np.dtype):
        return dt.kind in "mM"
    return (pd.api.types.is_datetime64_any_dtype(dt) or pd.api.types.is_timedelta64_dtype(dt)
            or isinstance(dt, pd.PeriodDtype))


def group_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The codes 0..J-1 (N,) of a numeric grouping column's values (N,) by sorted label,
    and the J labels: whole numbers as int64 where int64 holds them exactly (|label| <=
    2^53; a float beyond is kept as it is, since its neighbours would collapse to one
    integer). Whole-number labels in a range of at most 4 N + 1024 (ids, the common
    case) are coded by counting where N >= 1000, about twice as fast as ``np.unique``'s
    sort there (below, the sort costs less than the counting's extra numpy calls)."""
    values = np.asarray(values)
    n = values.shape[0]
    lo, hi = (float(values.min()), float(values.max())) \
        if n >= 1000 and values.dtype.kind in "iuf" else (np.nan, np.nan)
    if -2.0 ** 53 <= lo and hi <= 2.0 ** 53 and hi - lo < 4 * n + 1024:
        whole = values.astype(np.int64)
        if (whole == values).all():
            offset = whole - int(lo)
            present = np.zeros(int(hi - lo) + 1, dtype=bool)
            present[offset] = True
            codes = (np.cumsum(present) - 1)[offset]
            return codes.astype(np.intp, copy=False), np.flatnonzero(present) + int(lo)
    labels, codes = np.unique(values, return_inverse=True)
    if labels.dtype.kind == "f" and -2.0 ** 53 <= labels[0] and labels[-1] <= 2.0 ** 53:
        whole = labels.astype(np.int64)  # (sorted: the range is that of the ends)
        if (whole == labels).all():
            labels = whole
    return np.asarray(codes, dtype=np.intp), labels


def _float_values(values: pd.Series) -> np.ndarray:
    """The column as float64, missing values as NaN (numpy int/float columns directly)."""
    if isinstance(values.dtype, np.dtype) and values.dtype.kind in "iuf":
        return values.to_numpy(dtype=float)
    return values.to_numpy(dtype=float, na_value=np.nan)




def _is_fast(terms, cols: dict[str, np.ndarray]) -> bool:
    """True when every factor is a plain name of a numeric column (no transforms)."""
    return all(f == "1" or (f in cols and PLAIN_NAME.fullmatch(f)) for fs in terms for f in fs)


def _matrix(rhs: str, data: pd.DataFrame, cols: dict[str, np.ndarray], n: int):
    """The design columns of a right-hand side: (matrix (n, k), names, the columns of each
    formula term, their :class:`~mlmsim.model.layout.Column` (what each is made of, from
    the formula's terms))."""
    terms = term_factors(rhs)
    if _is_fast(terms, cols):  # products of plain columns, as the batched fast lane has them
        used = sorted({f for fs in terms for f in fs if f != "1"})
        idx, names = _term_indices(terms, {v: k for k, v in enumerate(used)})
        mat = term_products(variable_array([cols[v] for v in used], (n,)), term_matrix(idx))
        return mat, names, [[i] for i in range(len(names))], _product_columns(terms, names)
    try:
        with np.errstate(all="ignore"):  # non-finite values of transforms: dropped, counted
            mm = model_matrix(rhs, data, na_action="ignore", ensure_full_rank=True)
    except FormulaicError as e:  # a transform of a column it does not apply to
        raise ValueError(f"cannot build the design of {rhs!r}: {str(e).splitlines()[0]}"
                         ) from None
    names = list(mm.columns)
    # group columns by the formula term that produced them (for '||' blocks)
    spec = mm.model_spec
    groups = [list(idx) for idx in spec.term_indices.values()]
    columns: list[Column] = []
    data_columns = spec.variables_by_source.get("data", set())
    for structure, idx in zip(spec.structure, spec.term_indices.values(), strict=True):
        factors = [str(f) for f in structure.term.factors if str(f) != "1"]
        plain = all(f in cols and PLAIN_NAME.fullmatch(f) for f in factors)
        variables = frozenset(factors)  # a factor or a transform is a variable of its own
        inputs = frozenset(spec.term_variables[structure.term] & data_columns)
        parts = _term_parts(spec, structure, cols)
        for k, i in enumerate(idx):
            columns.append(Column(names[i], variables, plain, tuple(factors) if plain else (),
                                  parts[k] if parts else (), inputs))
    return np.asarray(mm, dtype=float), names, groups, columns


def _factor_parts(spec, factor: str, reduced: bool, cols: dict[str, np.ndarray]) -> list[Part]:
    """The columns formulaic encodes one factor of a term into: a categorical variable's
    coding columns (named by its contrasts, with the coding's value at each level), else
    the factor itself as one column (a data column or a transform)."""
    state = spec.encoder_state.get(factor, (None, {}))[1]
    contrasts = state.get("contrasts") if isinstance(state, dict) else None
    if contrasts is None:
        kind = "data" if factor in cols and PLAIN_NAME.fullmatch(factor) else "transform"
        return [Part(factor, factor, kind)]
    name, fields, levels, values = _coding(_Contrasts(contrasts, reduced))
    return [Part(name.format(name=factor, field=field), factor, "level", levels, values[j])
            for j, field in enumerate(fields)]


class _Contrasts:
    """formulaic's contrasts of a categorical factor (its ``ContrastsState``) and the
    rank asked for, hashed by what the coding depends on: the contrasts (their pickled
    bytes, exact where a printed custom matrix would be abridged) and the levels."""

    def __init__(self, state, reduced: bool):
        self.state, self.reduced = state, reduced
        self.key = (pickle.dumps(state.contrasts), tuple(state.levels), reduced)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Contrasts) and self.key == other.key


@lru_cache(maxsize=256)
def _coding(contrasts: _Contrasts) -> tuple[str, tuple, tuple, tuple[tuple[float, ...], ...]]:
    """(name format, field of each coding column, levels, each column's value at the
    levels) of a factor's coding; kept across fits, since formulaic builds its coding
    matrix as a DataFrame (0.2 ms) each time it is asked."""
    state, reduced = contrasts.state, contrasts.reduced
    coding = state.get_coding_matrix(reduced_rank=reduced)
    values = coding.to_numpy(dtype=float)
    return (state.contrasts.get_factor_format(state.levels, reduced_rank=reduced),
            tuple(coding.columns), tuple(coding.index),
            tuple(tuple(values[:, j].tolist()) for j in range(values.shape[1])))


def _term_parts(spec, structure, cols: dict[str, np.ndarray]) -> list[tuple[Part, ...]] | None:
    r"""The :class:`~mlmsim.model.layout.Part`\ s of each column of one encoded formula
    term, in formulaic's order: for each of the term's scoped terms, the row-wise Kronecker
    product of its factors' encodings, the last factor varying slowest. None when that
    does not give the term's columns by name (a transform that makes several columns, a
    scaled term): the columns then carry no parts."""
    out: list[tuple[Part, ...]] = []
    for scoped in structure.scoped_terms:
        if scoped.scale != 1:
            return None
        factors = [_factor_parts(spec, str(f.factor), f.reduced, cols)
                   for f in scoped.factors]
        out.extend(product[::-1] for product in itertools.product(*reversed(factors)))
    names = [":".join(p.name for p in parts) or "Intercept" for parts in out]
    return out if names == list(structure.columns) else None


def _product_columns(terms, names: list[str]) -> list[Column]:
    """The plain product columns of terms over data columns (``_term_indices``' names)."""
    return [Column.product(nm, [f for f in fs if f != "1"])
            for nm, fs in zip(names, terms, strict=True)]


def _random_part(pf: ParsedFormula, data: pd.DataFrame, cols: dict[str, np.ndarray], n: int
                 ) -> tuple[list[np.ndarray], list[str], list[tuple[int, ...]], list[Column]]:
    r"""The random-effect columns of every bar term: their matrices, names, blocks of T (one
    per ``|`` term, one per term of a ``||`` term) and :class:`Column`\ s."""
    Zs, names, blocks, columns = [], [], [], []
    offset = 0
    for term in pf.random:
        Zt, names_t, groups_t, columns_t = _matrix(term.expr, data, cols, n)
        if Zt.shape[1] == 0:
            raise ValueError(f"random-effects term ({term.expr} | {term.group}) has no columns")
        if term.correlated:
            blocks.append(tuple(range(offset, offset + Zt.shape[1])))
        else:
            blocks.extend(tuple(offset + i for i in grp) for grp in groups_t)
        Zs.append(Zt)
        names.extend(names_t)
        columns.extend(columns_t)
        offset += Zt.shape[1]
    return Zs, names, blocks, columns


def formula_layout(formula: str | ParsedFormula, frame: pd.DataFrame) -> DesignLayout:
    """The :class:`~mlmsim.model.layout.DesignLayout` that ``formula`` gives on data with
    ``frame``'s columns and types (a few rows suffice; none of a fit's checks): what a
    :class:`~mlmsim.generate.spec.ModelSpec` compiles its generator from, so that the
    generator and the fit read one layout of the same formula."""
    pf = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    cols = {str(c): _float_values(v) for c, v in frame.items() if _is_numeric(v)}
    n = int(frame.shape[0])
    _, _, _, fixed_columns = _matrix(pf.fixed, frame, cols, n)
    _, _, blocks, rcolumns = _random_part(pf, frame, cols, n)
    return DesignLayout(tuple(fixed_columns), tuple(rcolumns), tuple(blocks))


def model_design(formula: str | ParsedFormula, data: pd.DataFrame) -> Design:
    """Build y, X, Z and the grouping factor from an lme4 formula and a DataFrame.

    Raises ValueError naming the problem for: a missing column, a non-numeric
    response, an empty data set, a single group, or as many groups as
    observations, a formula without fixed effects, duplicated column names, a
    date or time column, and design columns of the same name (a data column called
    ``Intercept``). Rows with NaN/inf in any used column, or where a transform of
    the formula is NaN/inf (``log(x)`` at x <= 0), are dropped with a warning and
    counted in ``n_dropped``. Linearly dependent fixed-effect
    columns are dropped (the later ones, as lme4 does) with a warning, and
    named in ``dropped_fixed``.
    """
    pf = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if data.shape[0] == 0:
        raise ValueError("data has no rows: an empty data frame cannot be fitted")
    g = pf.group
    needed = needed_columns(pf)
    missing = [c for c in needed if c not in data.columns]
    if missing:
        raise ValueError(
            f"column(s) {', '.join(repr(m) for m in missing)} named in the formula are not in the "
            f"data; available columns: {', '.join(map(str, data.columns))}"
        )
    dup = [] if data.columns.is_unique else sorted(
        {str(c) for c in data.columns[data.columns.duplicated()] if c in needed})
    if dup:
        raise ValueError(f"the data have more than one column named {', '.join(map(repr, dup))}"
                         "; column names must be unique")
    series = {c: data[c] for c in needed}
    for c, v in series.items():
        if _is_date_or_time(v.dtype):
            raise ValueError(f"column {c!r} holds dates or times ({v.dtype}); convert it to a "
                             "number first (e.g. days since a reference date)")
    if not _is_numeric(series[pf.response]):
        raise ValueError(
            f"the response {pf.response!r} must be numeric, but has dtype "
            f"{series[pf.response].dtype}"
        )
    cols = {c: _float_values(v) for c, v in series.items() if _is_numeric(v)}
    keep = None
    for c, v in series.items():
        bad = ~np.isfinite(cols[c]) if c in cols else v.isna().to_numpy()
        if bad.any():
            keep = ~bad if keep is None else keep & ~bad
    n_dropped = 0 if keep is None else int((~keep).sum())
    if n_dropped:
        warnings.warn(
            f"{n_dropped} row(s) with missing or non-finite values in the model's columns "
            "were dropped (observations not used)",
            stacklevel=3,
        )
        data = data.loc[keep]
        cols = {c: v[keep] for c, v in cols.items()}
        series = {c: v.loc[keep] for c, v in series.items()}
    n = int(data.shape[0])
    if n == 0:
        raise ValueError("no rows left after dropping rows with missing or non-finite values")
    used_rows = np.arange(n) if keep is None else np.flatnonzero(keep)
    X, fixed_names, _, fixed_columns = _matrix(pf.fixed, data, cols, n)
    Zs, rnames, blocks, rcolumns = _random_part(pf, data, cols, n)
    Z = np.column_stack(Zs) if len(Zs) > 1 else Zs[0]
    # a transform of finite data can be non-finite (log of a value <= 0): those rows are
    # dropped as a missing value is
    n_bad = 0
    if not (np.isfinite(X).all() and np.isfinite(Z).all()):  # (a row-wise all() is slow)
        bad = ~(np.isfinite(X).all(axis=1) & np.isfinite(Z).all(axis=1))
        n_bad = int(bad.sum())
    if n_bad:
        warnings.warn(
            f"{n_bad} row(s) where the formula's transforms give missing or non-finite values "
            "(such as log of a value <= 0) were dropped (observations not used)",
            stacklevel=3,
        )
        ok = ~bad
        X, Z, data = X[ok], Z[ok], data.loc[ok]
        cols = {c: v[ok] for c, v in cols.items()}
        series = {c: v.loc[ok] for c, v in series.items()}
        used_rows = used_rows[ok]
        n_dropped += n_bad
        n = int(data.shape[0])
        if n == 0:
            raise ValueError("no rows left after dropping rows with missing or non-finite "
                             "values")
    y = cols[pf.response]
    if g in cols:
        codes, labels = group_codes(cols[g])
    else:
        codes, labels = pd.factorize(series[g], sort=True)
        labels = np.asarray(labels)
    codes = np.asarray(codes, dtype=np.intp)
    J = labels.shape[0]
    if J < 2:
        raise ValueError(
            f"the grouping factor {g!r} has {J} level(s); a two-level model needs at least 2 groups"
        )
    if J >= n:
        raise ValueError(
            f"the grouping factor {g!r} has {J} levels for {n} observations; the number of groups "
            "must be smaller than the number of observations (else the random effects and the "
            "residual cannot be told apart)"
        )
    if X.shape[1] == 0:
        raise ValueError(f"formula {pf.formula!r} has no fixed effects; mlmsim needs at least "
                         "one (drop the '0 +' or '- 1' to keep the intercept)")
    for kind, names in (("fixed", fixed_names), ("random", rnames)):
        twice = sorted({nm for nm in names if names.count(nm) > 1})
        if twice:
            where = f"in more than one bar term for {g!r}, or " if kind == "random" else ""
            raise ValueError(
                f"{kind} effect(s) {', '.join(map(repr, twice))} appear more than once: "
                f"{where}as a data column named like a design column (such as "
                "'Intercept'), which must then be renamed")
    X, fixed_names, dropped = _drop_dependent(X, fixed_names)
    if X.shape[1] >= n:
        raise ValueError(
            f"the fixed-effects design has rank {X.shape[1]} for {n} observations: no residual "
            "degrees of freedom are left; use fewer fixed effects"
        )
    return Design(
        formula=pf,
        y=y,
        X=np.ascontiguousarray(X),
        Z=np.ascontiguousarray(Z),
        group_codes=codes,
        group_labels=labels,
        layout=DesignLayout(tuple(c for c in fixed_columns if c.name in fixed_names),
                            tuple(rcolumns), tuple(blocks)),
        n_dropped=n_dropped,
        used_rows=used_rows,
        dropped_fixed=tuple(dropped),
        row_index=data.index,
    )


def clearly_full_rank(G: np.ndarray) -> np.ndarray:
    """For Gram matrices G = X'X (..., p, p): True where no column of X can be dropped by
    lme4's QR rule (:func:`_drop_dependent`). |R_jj| / ||x_j|| = sqrt(1 - R^2 of x_j on
    the columns before it) is at least the square root of the smallest eigenvalue of the
    norm-scaled G; with that eigenvalue above 1e-8 it is above 1e-4, far from the
    tolerance 1e-7, so the QR would keep every column."""
    if G.shape == (2, 2):  # eigenvalues of the norm-scaled G: 1 +- r (r: X's correlation)
        g00, g01, g11 = float(G[0, 0]), float(G[0, 1]), float(G[1, 1])
        r = g01 / (math.sqrt(g00) * math.sqrt(g11)) if g00 > 0 and g11 > 0 else 1.0
        return np.bool_(1.0 - abs(r) > 1e-8)
    if G.shape == (1, 1):
        return np.bool_(G[0, 0] > 0)
    d = np.sqrt(np.einsum("...ii->...i", G))
    ok = (d > 0).all(axis=-1)
    dd = np.where(d > 0, d, 1.0)
    w = np.linalg.eigvalsh(G / (dd[..., :, None] * dd[..., None, :]))
    return ok & (w[..., 0] > 1e-8)


def _drop_dependent(X: np.ndarray, names: list[str], tol: float = 1e-7):
    """Drop columns of X in the span of earlier ones (lme4 keeps the earlier columns).

    As lme4 (``qr(X, tol = 1e-7)``): in the Householder QR factor of X, a column
    whose |R_jj| is below ``tol`` times its norm adds nothing to the span of the
    columns before it.
    """
    p = X.shape[1]
    if p == 0:
        return X, names, []
    # the test is relative to each column's norm, so it does not depend on the columns'
    # units. X'X is formed as it is when its diagonal shows neither overflow nor underflow
    # (the norm-scaled X'X is then that of the columns in any units); else a column in
    # units far from 1 is scaled by a power of 2 (exactly) first.
    Xs = X
    G = X.T @ X
    sq = np.diagonal(G)
    if not np.all((sq > 2.0 ** -700) & (sq < 2.0 ** 700)):
        Xs = X * unit_powers(column_max_abs(X))
        G = Xs.T @ Xs
    if clearly_full_rank(G):
        return X, names, []
    norms = np.linalg.norm(Xs, axis=0)
    R = np.linalg.qr(Xs, mode="r")
    keep = np.flatnonzero(np.abs(np.diagonal(R)[:p]) > tol * np.maximum(norms, 1e-300))
    keep = keep[norms[keep] > 0]
    if keep.size == p:
        return X, names, []
    dropped = [names[j] for j in range(p) if j not in set(keep)]
    warnings.warn(
        "fixed-effect model matrix is rank deficient so dropping "
        f"{len(dropped)} column(s): {', '.join(dropped)}",
        stacklevel=3,
    )
    return X[:, keep], [names[j] for j in keep], dropped


@dataclass(frozen=True)
class StackedDesign(LaidOut):
    """The designs of R data sets with one layout, without forming X and Z.

    ``y`` holds each data set's response (N,); ``variables`` each data set's predictor
    columns (N, k) that the formula names (``variable_names``). The design columns are
    their products: column t of X is the product of the variables at the indices >= 0
    in row t of ``fixed_terms`` (p, s) (-1 pads; a row of -1 alone is the intercept),
    Z likewise by ``random_terms`` (q, s), as :func:`mlmsim.engine.stats.group_stats`
    takes them (:func:`mlmsim.model.terms.term_products` forms them). Group codes (N,) are
    shared by all (the same grouping column); ``layout`` names the columns and the
    blocks of T (:class:`~mlmsim.model.layout.DesignLayout`). The data sets stay separate arrays: a
    stack of R x N values would be allocated afresh at every batch, and the memory
    system charges each fresh page (measured: 27 page faults per HSB-sized replicate).
    """

    formula: ParsedFormula
    y: tuple[np.ndarray, ...]
    variables: tuple[np.ndarray, ...]
    variable_names: tuple[str, ...]
    fixed_terms: np.ndarray
    random_terms: np.ndarray
    group_codes: np.ndarray
    group_labels: np.ndarray
    layout: DesignLayout


def stacked_design(formula: str | ParsedFormula, datasets) -> StackedDesign | None:
    """Stack the designs of many data sets in one pass, or None when that is not safe.

    The fast lane of a simulation study: every data set has the same rows and
    grouping column (as a generator with fixed group sizes produces), and every
    term is a plain numeric column or a product of such. Then each column is read
    once per data set into (R, N) arrays, and the design is described by its terms
    (see :class:`StackedDesign`). In any other case the caller builds each design with
    :func:`model_design`, which handles it all. Two things are for the caller to check
    from the statistics, which show them in O(J) instead of O(N): that no value is
    missing or infinite (the sums of squares are then finite) and that the fixed design
    has full rank (from X'X).

    ``datasets``: DataFrames, or simulated data sets as
    :class:`mlmsim.generate.simulate.SimBatch` objects of one replicate each (their
    columns are read straight from the arrays, with no DataFrame in between).
    """
    pf = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
    datasets = list(datasets)
    if not datasets:
        return None
    if all(isinstance(d, pd.DataFrame) for d in datasets):
        read = _frame_columns(pf, datasets)
    elif all(_is_sim_batch(d) for d in datasets):
        read = _batch_columns(pf, datasets)
    else:
        return None
    if read is None:
        return None
    cols, groups, n = read
    return _stack(pf, cols, groups, n)


def _is_sim_batch(d) -> bool:
    return all(hasattr(d, a) for a in ("spec", "columns", "codes", "y")) and d.y.shape[0] == 1


def _plain_terms(pf: ParsedFormula) -> bool:
    """Every term is "1", a column name or a product of column names."""
    needed = needed_columns(pf)
    terms = [term_factors(pf.fixed)] + [term_factors(t.expr) for t in pf.random]
    plain = {f for ts in terms for fs in ts for f in fs if f != "1"}
    return all(PLAIN_NAME.fullmatch(f) and f in needed for f in plain)


def _frame_columns(pf: ParsedFormula, datasets):
    """The needed columns of R DataFrames with one layout: per column name a list of R
    float arrays (N,); the grouping column's values (N,) and N. None unless every data
    set has the same grouping column, with no value missing."""
    first = datasets[0]
    needed = needed_columns(pf)
    if any(c not in first.columns for c in needed) or not _plain_terms(pf):
        return None
    if any(not _is_numeric(first[c]) for c in needed):
        return None
    names0 = first.columns
    dtypes0 = [first[c].dtype for c in needed]
    for d in datasets:
        if d.shape != first.shape or not d.columns.equals(names0):
            return None
    try:
        cols = {}
        for c, dt in zip(needed, dtypes0, strict=True):
            arrs = []
            for d in datasets:
                col = d[c]
                if col.dtype != dt:
                    return None
                arrs.append(col.to_numpy(dtype=float))
            cols[c] = arrs
    except (TypeError, ValueError):
        return None
    g = cols[pf.group]
    if not np.isfinite(g[0]).all() or not all(np.array_equal(gr, g[0]) for gr in g[1:]):
        return None
    return cols, g[0], first.shape[0]


def _batch_columns(pf: ParsedFormula, batches):
    """The needed columns of R one-replicate SimBatches with one layout: per column name
    (but the grouping column's) a list of R arrays (N,); the group codes (N,) and N.
    A SimBatch's rows are sorted by group, so equal group sizes mean equal codes."""
    first = batches[0]
    spec = first.spec
    needed = needed_columns(pf)
    if not _plain_terms(pf):
        return None
    for b in batches:
        if b.spec.group != spec.group or b.spec.response != spec.response or (
                b.sizes is not first.sizes and not np.array_equal(b.sizes, first.sizes)):
            return None
    cols = {}
    for c in needed:
        if c == spec.group:
            continue
        if c == spec.response:
            cols[c] = [b.y[0] for b in batches]
        elif all(c in b.columns for b in batches):
            cols[c] = [b.columns[c][0] for b in batches]
        else:
            return None
    return cols, first.codes, int(first.codes.shape[0])


def _stack(pf: ParsedFormula, cols: dict[str, list[np.ndarray]], groups: np.ndarray,
           n: int) -> StackedDesign | None:
    """The stacked design from the needed columns (per name, R arrays (N,)) and the
    grouping column's values (N,), or None (see stacked_design)."""
    codes, labels = group_codes(groups)
    J = labels.shape[0]
    if J < 2 or J >= n:
        return None
    terms = [term_factors(pf.fixed)] + [term_factors(t.expr) for t in pf.random]
    names = tuple(sorted({f for ts in terms for fs in ts for f in fs if f != "1"}))
    if any(v not in cols for v in names):  # e.g. the grouping factor of a SimBatch
        return None
    index = {v: k for k, v in enumerate(names)}
    fixed_terms, fixed_names = _term_indices(terms[0], index)
    if not fixed_names or len(fixed_names) >= n:
        return None
    rterms, rnames, blocks, offset, rcolumns = [], [], [], 0, []
    for term, factors in zip(pf.random, terms[1:], strict=True):
        t_idx, names_t = _term_indices(factors, index)
        rcolumns.extend(_product_columns(factors, names_t))
        if term.correlated:
            blocks.append(tuple(range(offset, offset + len(names_t))))
        else:
            blocks.extend((offset + i,) for i in range(len(names_t)))
        rterms.extend(t_idx)
        rnames.extend(names_t)
        offset += len(names_t)
    if len(set(rnames)) != len(rnames) or not rnames:
        return None
    y = tuple(cols[pf.response])
    per_set = zip(*(cols[name] for name in names), strict=True) if names else [()] * len(y)
    variables = tuple(variable_array(values, (n,)) for values in per_set)
    layout = DesignLayout(tuple(_product_columns(terms[0], fixed_names)),
                          tuple(rcolumns), tuple(blocks))
    return StackedDesign(pf, y, variables, names, term_matrix(fixed_terms),
                         term_matrix(rterms), codes, labels, layout)


def _term_indices(terms, index: dict[str, int]) -> tuple[list[list[int]], list[str]]:
    """Each term as the indices of its factors among the variables, and its column name
    ("Intercept" for the intercept, "x:z" for a product)."""
    idx, names = [], []
    for factors in terms:
        if factors == ("1",):
            idx.append([])
            names.append("Intercept")
        else:
            idx.append([index[f] for f in factors])
            names.append(":".join(factors))
    return idx, names
