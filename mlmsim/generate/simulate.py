"""Draw simulated data sets from a :class:`~mlmsim.generate.spec.ModelSpec`.

One data set is a DataFrame (:func:`simulate`); R replicates at once are arrays
(:func:`simulate_batch`), drawn in one vectorised pass, for a study runner and a
batched fitting engine. Both follow the seed's model::

    y_j = X_j gamma + Z_j U_j + R_j,   U_j = F e_j,   R_ij = sigma e_ij,

where F (q x r) is an eigen factor of T (F F' = T, r = rank T), so a singular T is
drawn exactly in its column space, and e has iid standardised components of the
spec's distributions. With a distribution per component of U_j (``u_dist`` a mapping),
the normal components are F_N e_N (F_N F_N' = their block of T) and each other one is
sqrt(T_kk) e_kj on its own (:attr:`ModelSpec.u_components` says when T allows that).
Randomness comes only from the ``numpy.random.Generator`` (or
``SeedSequence`` / int seed) passed in: the same seed gives the same data, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from mlmsim.generate.checks import whole_number
from mlmsim.generate.covariance import SYMMETRY_TOL, factor_T
from mlmsim.generate.distributions import Distribution, Normal
from mlmsim.generate.predictors import (
    Binary,
    Categorical,
    Complement,
    Continuous,
    GroupCentered,
    GroupMean,
    Indicator,
    Level2Binary,
    Level2Continuous,
    Values,
)
from mlmsim.generate.sizes import PoissonSizes, SizeList, UniformSizes, group_sizes
from mlmsim.generate.spec import ModelSpec
from mlmsim.model.layout import DesignLayout, LaidOut
from mlmsim.model.terms import fill_terms, term_products, variable_array

__all__ = ["simulate", "simulate_batch", "SimBatch", "factor_T", "draw_effects",
           "draw_group_sizes", "as_generator"]


def as_generator(rng: Any = None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator (used as is), a ``SeedSequence`` or
    an int seed, or None (fresh entropy). No global random state is ever used."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence | int | np.integer):
        return np.random.default_rng(rng)
    raise ValueError(f"rng must be a numpy Generator, a SeedSequence, an int seed or None, "
                     f"got {type(rng).__name__}")


def draw_effects(T: Any, size: int | tuple[int, ...], rng: Any = None,
                 dist: Distribution | Sequence[Distribution] | None = None) -> np.ndarray:
    """Random effects U (shape ``size + (q,)``) with cov(U) = T.

    One ``dist`` (normal by default): U = F e, F from :func:`factor_T`, e with iid
    components of the standardised ``dist``, drawn as one array of shape ``size + (r,)``.

    A sequence of q distributions, one per component of U (T's order): each non-normal
    component U_k = sqrt(T_kk) e_k has exactly its distribution (scaled to variance
    T_kk), and the normal ones are F_N e_N jointly, F_N = :func:`factor_T` of their
    block of T. cov(U) = T requires every non-normal component to be uncorrelated with
    the others; any other T raises a ValueError naming the covariance. Drawn in this
    order: e_N (``size + (r_N,)``), then each non-normal e_k (``size``) in T's order.
    """
    size = (size,) if isinstance(size, int | np.integer) else tuple(size)
    gen = as_generator(rng)
    if dist is None or isinstance(dist, Distribution):
        F = factor_T(T)
        dist = Normal() if dist is None else dist
        return dist.standard(gen, size + (F.shape[1],)) @ F.T
    T = np.asarray(T, dtype=float)
    dists = tuple(dist)
    q = T.shape[0] if T.ndim == 2 else -1
    if len(dists) != q or not all(isinstance(d, Distribution) for d in dists):
        raise ValueError(f"dist must be one Distribution or one per component of U "
                         f"({q} for this T), got {dist!r}")
    scale = max(float(np.abs(T).max()), 1e-300) if T.size else 1.0
    for k, d in enumerate(dists):
        others = np.delete(np.abs(T[k]), k)
        if not isinstance(d, Normal) and others.size and others.max() > SYMMETRY_TOL * scale:
            m = int(np.argmax(np.abs(np.where(np.arange(q) == k, 0.0, T[k]))))
            raise ValueError(f"component {k} of U has a {d.kind} distribution but is "
                             f"correlated with component {m} (T[{k},{m}] = {T[k, m]!r}): "
                             "a non-normal component must be uncorrelated with the others")
    return _draw_components(T, dists, size, gen)


def _draw_components(T: np.ndarray, dists: tuple[Distribution, ...], size: tuple[int, ...],
                     gen: np.random.Generator) -> np.ndarray:
    """U (``size + (q,)``) with a distribution per component: the normal block as
    F_N e_N, then each non-normal U_k = sqrt(T_kk) e_k (T checked by the caller)."""
    q = len(dists)
    normal = [k for k, d in enumerate(dists) if isinstance(d, Normal)]
    U = np.zeros(size + (q,))
    if normal:
        F = factor_T(T[np.ix_(normal, normal)])
        U[..., normal] = gen.standard_normal(size + (F.shape[1],)) @ F.T
    for k, d in enumerate(dists):
        if not isinstance(d, Normal):
            U[..., k] = math.sqrt(max(float(T[k, k]), 0.0)) * d.standard(gen, size)
    return U


def draw_group_sizes(rule: Any, n_groups: int | None, rng: Any = None) -> np.ndarray:
    """Group sizes (J,) from a rule: an int n (all n), a list or :class:`SizeList`
    (as given; ``resample=True`` draws J of them with replacement),
    :class:`PoissonSizes` or :class:`UniformSizes` (drawn). ``n_groups`` may be None
    for a list used as given."""
    rule = group_sizes(rule)
    if n_groups is None:
        if isinstance(rule, SizeList) and not rule.resample:
            n_groups = len(rule.sizes)
        else:
            raise ValueError("the number of groups is needed: pass n_groups (or set the spec's "
                             "n_groups)")
    J = whole_number(n_groups, "n_groups (the number of groups)")
    if isinstance(rule, int):
        return np.full(J, rule, dtype=np.int64)
    if isinstance(rule, SizeList):
        sizes = np.asarray(rule.sizes, dtype=np.int64)
        if rule.resample:
            return as_generator(rng).choice(sizes, size=J, replace=True)
        if sizes.shape[0] != J:
            raise ValueError(f"the group sizes list {sizes.shape[0]} groups but n_groups is {J}; "
                             "use SizeList(..., resample=True) to draw J sizes from the list")
        return sizes
    gen = as_generator(rng)
    if isinstance(rule, PoissonSizes):
        return rule.minimum + gen.poisson(rule.mean - rule.minimum, size=J).astype(np.int64)
    if isinstance(rule, UniformSizes):
        return gen.integers(rule.low, rule.high + 1, size=J, dtype=np.int64)
    raise ValueError(f"unknown group-size rule {rule!r}")  # pragma: no cover


# ---------------------------------------------------------------------------
# the batch
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SimBatch(LaidOut):
    """R simulated data sets of one spec with one group layout, as arrays.

    Shapes (R replicates, J groups, N = sum n_j rows, p fixed and q random effects):

    - ``y`` (R, N): the response.
    - ``X`` (R, N, p): the true model's fixed design, columns ``fixed_names`` (the
      engine's order for ``spec.formula``); ``X @ spec.truth.gamma`` is E(y | X).
    - ``Z`` (R, N, q): the random design, columns ``random_names``.
    - ``U`` (R, J, q): the drawn U_j, columns ``random_names``.
    - ``codes`` (N,): group of each row, 0..J-1, rows sorted by group (formed from
      ``sizes`` (J,) when first asked for).
      Shared by all replicates: random group sizes are drawn once per batch.
    - ``columns``: each numeric predictor, (R, N); ``categories``: each categorical
      predictor as level codes (R, N) into its ``levels``.
    - ``variables`` (R, N, k): what X and Z are products of, ``spec.compiled.variables``
      (the predictor columns and coding columns they use), by the compiled terms.

    X and Z are formed from the columns when first asked for (the draw itself and a
    batched fit never need them: see :mod:`mlmsim.model.terms`).
    ``fit_arrays(**batch.arrays(), method="REML")`` fits the true model to all R
    replicates; :meth:`frame` gives replicate r as :func:`simulate`'s DataFrame.
    """

    spec: ModelSpec
    y: np.ndarray
    U: np.ndarray
    sizes: np.ndarray
    columns: dict[str, np.ndarray] = field(repr=False)
    categories: dict[str, np.ndarray] = field(repr=False)
    variables: np.ndarray = field(repr=False)

    @cached_property
    def codes(self) -> np.ndarray:
        return _codes(self.sizes)

    @cached_property
    def X(self) -> np.ndarray:
        return term_products(self.variables, self.spec.compiled.fixed_terms)

    @cached_property
    def Z(self) -> np.ndarray:
        return term_products(self.variables, self.spec.compiled.random_terms)

    @property
    def n_replicates(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def nobs(self) -> int:
        return int(self.y.shape[1])

    @property
    def layout(self) -> DesignLayout:
        """The spec's :class:`~mlmsim.model.layout.DesignLayout` (X's and Z's columns)."""
        return self.spec.layout

    def arrays(self) -> dict[str, Any]:
        """Keyword arguments for ``mlmsim.fit_arrays``: y, X, Z, codes, fixed_names,
        random_names, n_groups."""
        return {"y": self.y, "X": self.X, "Z": self.Z, "codes": self.codes,
                "fixed_names": self.fixed_names, "random_names": self.random_names,
                "n_groups": self.n_groups}

    def frame(self, r: int = 0, effects: bool = False) -> pd.DataFrame:
        """Replicate r as a DataFrame: the group id, the predictors (in the spec's
        order; 0/1 columns as integers, categorical ones as pandas categoricals), y, and
        with ``effects=True`` the true U_j as columns ``U_<name>``."""
        spec = self.spec
        data: dict[str, Any] = {spec.group: self.codes.copy()}
        for p in spec.predictors:
            if isinstance(p, Categorical):
                data[p.name] = pd.Categorical.from_codes(self.categories[p.name][r],
                                                         categories=list(p.levels))
            elif isinstance(p, Binary | Complement | Indicator | Level2Binary):
                data[p.name] = self.columns[p.name][r].astype(np.int64)
            else:
                data[p.name] = np.array(self.columns[p.name][r], dtype=float)
        data[spec.response] = self.y[r].copy()
        if effects:
            U = self.U[r][self.codes]
            for k, name in enumerate(self.random_names):
                col = f"U_{name}"
                if col in data:
                    raise ValueError(f"the effect column {col!r} clashes with a predictor")
                data[col] = U[:, k]
        return pd.DataFrame(data)

    def frames(self, effects: bool = False) -> list[pd.DataFrame]:
        """All replicates as DataFrames."""
        return [self.frame(r, effects) for r in range(self.n_replicates)]


def simulate_batch(spec: ModelSpec, n_replicates: int, n_groups: int | None = None,
                   group_size: Any = None, rng: Any = None) -> SimBatch:
    """Draw R replicates of a spec at once, vectorised over replicates (no Python loop
    over replicates or groups); see :class:`SimBatch` for the arrays.

    ``n_groups`` defaults to the spec's; ``group_size`` (an int, a list, or a size
    rule) overrides the spec's ``group_sizes``. Random group sizes are drawn once for
    the whole batch, so all replicates share one layout (as a batched fit needs).
    The draws, in this order from ``rng``: the group sizes (if random), each drawn
    predictor in the spec's order, e for U (R, J, r; per component of U: see
    :func:`draw_effects`), e for R (R, N).

    >>> from mlmsim.generate.spec import ModelSpec
    >>> b = simulate_batch(ModelSpec.example(), 1000, 30, 5, rng=1)
    >>> b.y.shape, b.X.shape, b.Z.shape, b.U.shape, b.codes.shape
    ((1000, 150), (1000, 150, 4), (1000, 150, 2), (1000, 30, 2), (150,))
    """
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    R = whole_number(n_replicates, "n_replicates (the number of replicates)")
    gen = as_generator(rng)
    rule = spec.group_sizes if group_size is None else group_sizes(group_size)
    if rule is None:
        raise ValueError("no group size: pass group_size or set the spec's group_sizes")
    sizes = draw_group_sizes(rule, spec.n_groups if n_groups is None else n_groups, gen)
    J, N = int(sizes.shape[0]), int(sizes.sum())
    codes = _codes(sizes)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
    columns, categories = _draw_predictors(spec, R, sizes, codes, starts, gen)
    if spec.u_components is None:
        F = spec.compiled.factor
        U = spec.u_dist.standard(gen, (R, J, F.shape[1])) @ F.T
    else:  # checked when the spec was built
        U = _draw_components(spec.T_engine, spec.u_components, (R, J), gen)
    resid = spec.r_dist.standard(gen, (R, N))
    compiled = spec.compiled
    variables = _variables(spec, columns, categories, (R, N))
    y = _response_many(variables, compiled.fixed_terms, compiled.gamma, compiled.random_terms, U,
                       codes, math.sqrt(spec.sigma2), resid)
    return SimBatch(spec, y, U, sizes, columns, categories, variables)


def simulate(spec: ModelSpec, n_groups: int | None = None, group_size: Any = None,
             rng: Any = None, *, effects: bool = False) -> pd.DataFrame:
    """Draw one data set from a spec: a DataFrame with one row per level-1 unit.

    Columns: the group id (``spec.group``, 0..J-1), the predictors, y
    (``spec.response``) and, with ``effects=True``, the true U_j as ``U_<name>``.
    ``n_groups`` J defaults to the spec's; ``group_size`` (an int n, a list of sizes,
    or a size rule) overrides the spec's ``group_sizes``. ``rng``: a Generator, a
    SeedSequence or an int seed (None: fresh entropy). Equal to
    ``simulate_batch(spec, 1, n_groups, group_size, rng).frame(0, effects)``.

    >>> from mlmsim.generate.spec import ModelSpec
    >>> data = simulate(ModelSpec.example(), 30, 5, rng=1)
    >>> data.shape, list(data.columns)
    ((150, 4), ['g', 'x', 'z', 'y'])
    """
    return simulate_batch(spec, 1, n_groups, group_size, rng).frame(0, effects)


def _codes(sizes: np.ndarray) -> np.ndarray:
    """The group of each row (N,), rows sorted by group: 0 (n_0 times), 1, ..., J - 1."""
    return np.repeat(np.arange(sizes.shape[0], dtype=np.intp), sizes)


# ---------------------------------------------------------------------------
# predictors and design columns
# ---------------------------------------------------------------------------

def _group_mean(x: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
                codes: np.ndarray) -> np.ndarray:
    """Per-row sample group mean x-bar_j of x (R, N); rows sorted by group."""
    return (np.add.reduceat(x, starts, axis=1) / sizes)[:, codes]


def _draw_predictors(spec: ModelSpec, R: int, sizes: np.ndarray, codes: np.ndarray,
                     starts: np.ndarray, gen: np.random.Generator):
    """Numeric predictor columns (R, N) and categorical level codes (R, N)."""
    J, N = int(sizes.shape[0]), int(codes.shape[0])
    cols: dict[str, np.ndarray] = {}
    cats: dict[str, np.ndarray] = {}
    for p in spec.predictors:
        if isinstance(p, Continuous):
            b = gen.standard_normal((R, J))
            w = gen.standard_normal((R, N))
            cols[p.name] = p.mean + np.sqrt(p.var_between) * b[:, codes] \
                + np.sqrt(p.var_within) * w
        elif isinstance(p, Binary):
            if p.p_sd ** 2 > 0:  # (a p_sd so small that its square is 0 means p_j = p)
                a, b_ = p.beta_parameters()
                pj = gen.beta(a, b_, (R, J))[:, codes]
            else:
                pj = p.p
            cols[p.name] = (gen.random((R, N)) < pj).astype(float)
        elif isinstance(p, Categorical):
            cum = np.cumsum(p.probabilities)
            cats[p.name] = np.searchsorted(cum[:-1] / cum[-1], gen.random((R, N)),
                                           side="right").astype(np.intp)
        elif isinstance(p, Values):
            v = np.asarray(p.values, dtype=float)
            if p.per == "position":
                pos = np.arange(N) - starts[codes]
                col = v[pos % v.shape[0]]
            else:
                if v.shape[0] != N:
                    raise ValueError(f"values {p.name!r} has {v.shape[0]} values (per row) but "
                                     f"the data set has {N} rows")
                col = v
            cols[p.name] = np.broadcast_to(col, (R, N))
        elif isinstance(p, Level2Continuous):
            cols[p.name] = (p.mean + np.sqrt(p.var) * gen.standard_normal((R, J)))[:, codes]
        elif isinstance(p, Level2Binary):
            u = gen.random((R, J))
            if p.balanced:  # exactly round(p J) groups, at random: the ranks of u
                u = np.argsort(np.argsort(u, axis=1), axis=1) / J
                cols[p.name] = (u < round(p.p * J) / J).astype(float)[:, codes]
            else:
                cols[p.name] = (u < p.p).astype(float)[:, codes]
    for p in spec.predictors:
        if isinstance(p, Complement):
            cols[p.name] = 1.0 - cols[p.of]
        elif isinstance(p, Indicator):
            src = spec.predictor(p.of)
            cols[p.name] = (cats[p.of] == src.levels.index(p.category)).astype(float)
        elif isinstance(p, GroupMean):
            cols[p.name] = _group_mean(cols[p.of], starts, sizes, codes)
        elif isinstance(p, GroupCentered):
            cols[p.name] = cols[p.of] - _group_mean(cols[p.of], starts, sizes, codes)
    return cols, cats


def _variables(spec: ModelSpec, cols: dict[str, np.ndarray], cats: dict[str, np.ndarray],
               shape: tuple[int, int]) -> np.ndarray:
    """The variables (R, N, k) that the fixed and random design columns are products of
    (``spec.compiled.variables``; its ``fixed_terms`` and ``random_terms`` say how, see
    :mod:`mlmsim.model.terms`); ``shape`` is (R, N). A variable is a predictor column, or
    a column of a categorical predictor's coding (a :class:`~mlmsim.model.layout.Part`
    such as ``f[T.b]``): its coding's value at each row's level code."""
    values = []
    for part in spec.compiled.variables:
        if part.kind == "level":
            coding = np.asarray(part.values(spec.predictor(part.variable).levels))  # type: ignore[attr-defined]
            values.append(coding[cats[part.variable]])
        else:
            values.append(cols[part.name])
    return np.require(variable_array(values, shape), np.float64, ["C", "W"])


@njit(cache=True, error_model="numpy")
def _response_many(V, fixed_terms, gamma, random_terms, U, codes, sigma, resid):
    """y[r, i] = sum_c gamma_c X[r, i, c] + sum_k U[r, codes[i], k] Z[r, i, k]
    + sigma resid[r, i], summed in that order, with X and Z the products of the variables
    V (R, N, k) by their terms (:func:`mlmsim.model.terms.fill_terms`), one replicate's columns
    at a time and each term as one pass over the rows (which vectorises)."""
    R, N = resid.shape
    p, q = fixed_terms.shape[0], random_terms.shape[0]
    W = np.empty((p + q, N))
    order = np.empty(0, dtype=np.intp)  # rows in place
    y = np.zeros((R, N))
    for r in range(R):
        fill_terms(W, 0, V[r], fixed_terms, order, True)
        fill_terms(W, p, V[r], random_terms, order, True)
        yr = y[r]
        for c in range(p):
            g, w = gamma[c], W[c]
            for i in range(N):
                yr[i] += g * w[i]
        for k in range(q):
            u, w = U[r, :, k], W[p + k]
            for i in range(N):
                yr[i] += u[codes[i]] * w[i]
        e = resid[r]
        for i in range(N):
            yr[i] += sigma * e[i]
    return y
