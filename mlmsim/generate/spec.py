"""Model specifications: the true two-level model that a simulation draws data from.

A :class:`ModelSpec` states, in the seed's notation, everything a data-generating
mechanism needs: the predictors (level-1 and level-2, how each is drawn), the fixed
effects gamma, which columns carry a random coefficient and their covariance T, the
residual variance sigma^2, the distributions of U_j and R_ij, and the group sizes::

    Level 1:  Y_ij = beta_0j + sum_k beta_kj x_kij + R_ij,      var(R_ij) = sigma^2
    Level 2:  beta_kj = gamma_k0 + sum_l gamma_kl z_lj + U_kj,   cov(U_j) = T
    Matrix:   Y_j = X_j gamma + Z_j U_j + R_j

The spec is data, validated when it is built (a ValueError names the problem), and it
reads and writes YAML or JSON (:mod:`mlmsim.generate.spec_files`). Its parts have a module
each: :mod:`~mlmsim.generate.predictors`, :mod:`~mlmsim.generate.distributions`,
:mod:`~mlmsim.generate.sizes`, :mod:`~mlmsim.generate.covariance`. It
knows its own truth: :attr:`ModelSpec.formula` (the lme4 formula of the true model)
and :attr:`ModelSpec.truth` (gamma, T and sigma^2 named as the engine names its
estimates). Drawing data from it is :mod:`mlmsim.generate.simulate`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mlmsim.generate.checks import check_name, number, set_field, whole_number
from mlmsim.generate.covariance import PSD_TOL, SYMMETRY_TOL, covparm_names, factor_T
from mlmsim.generate.distributions import Distribution, Normal
from mlmsim.generate.predictors import (
    Binary,
    Categorical,
    Continuous,
    Indicator,
    Level2Binary,
    Predictor,
    Values,
)
from mlmsim.generate.sizes import GroupSizes, group_sizes
from mlmsim.generate.spec_files import (
    EXAMPLE_YAML,
    load_json,
    load_yaml,
    looks_like_path,
    read_spec_file,
    spec_kwargs,
)
from mlmsim.model.formula import formula_layout
from mlmsim.model.layout import Column, DesignLayout, LaidOut, Part
from mlmsim.model.terms import term_matrix

__all__ = [
    "Truth",
    "Compiled",
    "ModelSpec",
]


@dataclass(frozen=True, eq=False)
class Truth:
    """The true parameters, named as the engine names its estimates: ``gamma``
    (indexed as ``FitResult.fixef``), ``T`` (as ``FitResult.T``), ``sigma2``, and
    ``params`` (as ``FitResult.params``: gamma, then vech T in SAS's UN order, then
    sigma2)."""

    gamma: pd.Series
    T: pd.DataFrame
    sigma2: float

    @property
    def params(self) -> pd.Series:
        names = list(self.T.index)
        T = self.T.to_numpy()
        vals = [T[r, c] for r in range(len(names)) for c in range(r + 1)] + [self.sigma2]
        cov = pd.Series(vals, index=covparm_names(names), dtype=float)
        return pd.concat([self.gamma, cov]).rename("truth")


class _ReadOnlyDict(dict):
    """A dict that refuses changes (a spec's gamma); pickles and compares as a dict."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a ModelSpec is immutable: use dataclasses.replace(spec, gamma=...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore
    __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return (_ReadOnlyDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


@dataclass(frozen=True)
class Compiled:
    """The arrays the generator draws a spec's data with (built once, when the spec is).

    ``layout`` is the :class:`~mlmsim.model.layout.DesignLayout` of ``formula`` (the one
    the fit of the data reads); ``random_order[k]`` is the position in ``spec.random`` of
    ``layout.random_names[k]``; ``gamma`` the true fixed effects in ``layout.fixed_names``
    order (0 for columns the formula makes that gamma does not name); ``factor`` F
    (q x r), :func:`factor_T` of T in ``layout.random_names`` order. ``variables``: the
    parts the design columns are products of (predictor columns, and columns of a
    categorical predictor's coding such as ``f[T.b]``), and ``fixed_terms`` /
    ``random_terms`` the two designs as terms over them (:mod:`mlmsim.model.terms`)."""

    formula: str
    layout: DesignLayout
    random_order: tuple[int, ...]
    gamma: np.ndarray
    factor: np.ndarray
    variables: tuple[Part, ...]
    fixed_terms: np.ndarray
    random_terms: np.ndarray

    def __setstate__(self, state: dict) -> None:
        # unpickled arrays come back writeable: a spec sent to a worker stays read-only
        # (and the compiled kernels it feeds see one array type, not two)
        self.__dict__.update(state)
        for a in (self.gamma, self.factor, self.fixed_terms, self.random_terms):
            a.setflags(write=False)


@dataclass(frozen=True, eq=False)
class ModelSpec(LaidOut):
    """The true two-level model of a simulation (the seed's notation). Like a design, it
    reads its ``fixed_names`` and ``random_names`` (in the engine's order for
    :attr:`formula`) from its :attr:`layout`.

    Parameters
    ----------
    predictors
        The predictor columns, in order: level 1 (:class:`Continuous`, :class:`Binary`,
        :class:`Categorical`, :class:`Values`), level 2 (:class:`Level2Continuous`,
        :class:`Level2Binary`), and derived ones (:class:`Complement`,
        :class:`Indicator`, :class:`GroupMean`, :class:`GroupCentered`).
    gamma
        Fixed effects keyed by the names formulaic gives the columns: ``"Intercept"``
        (gamma_00), ``"x"`` (gamma_10), ``"z"`` (gamma_01), ``"x:z"`` (gamma_11, a
        cross-level interaction), ``"grade[T.b]"``. The true model has an intercept
        (gamma_00 = 0 when not named) and every term named here.
    random
        The columns with a random coefficient U_kj, e.g. ``("Intercept", "x")``;
        redundant codings are allowed (``("Intercept", "female", "male")``).
    T
        cov(U_j), q x q in the order of ``random``: symmetric positive semi-definite
        (singular allowed). A number is taken as the 1 x 1 matrix.
    sigma2
        The residual variance sigma^2 > 0.
    u_dist, r_dist
        Standardised distributions of U_j (via U_j = F e_j, F F' = T) and of
        R_ij = sigma e_ij: :class:`Normal` (default), :class:`StudentT`,
        :class:`ChiSquare` (skewed) or :class:`Discrete`. Each keeps cov(U_j) = T and
        var(R_ij) = sigma^2. ``u_dist`` may instead map random-effect names to
        distributions, one per component of U_j (names left out are normal), e.g.
        ``{"Intercept": Normal(), "x": Discrete()}`` for a normal random intercept and
        a two-point random slope; see :meth:`u_components` for which T allow it.
    group_sizes
        n for all groups, a list (:class:`SizeList`), :class:`PoissonSizes` or
        :class:`UniformSizes`; None means the size must be given to ``simulate``.
    n_groups
        Default number of groups J for ``simulate`` (None: give it there).
    group, response
        Column names of the group id and of y.

    >>> spec = ModelSpec(predictors=[Continuous("x", var_between=0.2)],
    ...                  gamma={"Intercept": 10.0, "x": 2.0}, random=["Intercept", "x"],
    ...                  T=[[4.0, 0.5], [0.5, 1.0]], sigma2=9.0)
    >>> spec.formula
    'y ~ 1 + x + (1 + x | g)'
    >>> spec.truth.params.to_dict()
    {'Intercept': 10.0, 'x': 2.0, 'var(Intercept)': 4.0, 'cov(x,Intercept)': 0.5,
     'var(x)': 1.0, 'sigma2': 9.0}
    """

    predictors: tuple[Predictor, ...]
    gamma: Mapping[str, float]
    random: tuple[str, ...]
    T: np.ndarray
    sigma2: float
    u_dist: Distribution | Mapping[str, Distribution] = Normal()
    r_dist: Distribution = Normal()
    group_sizes: GroupSizes | None = None
    n_groups: int | None = None
    group: str = "g"
    response: str = "y"

    # ---- validation -------------------------------------------------------
    def __post_init__(self) -> None:
        group = check_name(self.group, "the group column name")
        response = check_name(self.response, "the response column name")
        if group == response:
            raise ValueError(f"the group and response columns have the same name {group!r}")
        preds = self._check_predictors(group, response)
        set_field(self, "predictors", preds)
        set_field(self, "sigma2", self._check_sigma2())
        random = self._check_random(preds)
        set_field(self, "random", random)
        set_field(self, "T", self._check_T(random))
        set_field(self, "gamma", self._check_gamma(preds))
        if isinstance(self.u_dist, Mapping):
            set_field(self, "u_dist", self._check_u_mapping(random))
        for attr, what in (("u_dist", "U_j"), ("r_dist", "R_ij")):
            if attr == "u_dist" and isinstance(self.u_dist, Mapping):
                continue
            if not isinstance(getattr(self, attr), Distribution):
                also = (", or a mapping of random-effect names to them"
                        if attr == "u_dist" else "")
                raise ValueError(f"{attr} (the distribution of {what}) must be Normal(), "
                                 f"StudentT(df), ChiSquare(df) or Discrete(...){also}, "
                                 f"got {getattr(self, attr)!r}")
        if self.group_sizes is not None:
            set_field(self, "group_sizes", group_sizes(self.group_sizes))
        if self.n_groups is not None:
            set_field(self, "n_groups",
                      whole_number(self.n_groups, "n_groups (the number of groups)"))
        set_field(self, "_compiled", self._compile())
        set_field(self, "_u_components", self._check_u_components())

    def _check_u_mapping(self, random: tuple[str, ...]) -> _ReadOnlyDict:
        """``u_dist`` given per component: every key a random-effect name, every value a
        Distribution; the names left out are normal. Kept in the order of ``random``."""
        given = self.u_dist
        for key, dist in given.items():  # type: ignore[union-attr]
            if key not in random:
                raise ValueError(f"u_dist names {key!r}, which is not a random effect; the "
                                 f"random effects are {', '.join(random)}")
            if not isinstance(dist, Distribution):
                raise ValueError(f"u_dist[{key!r}] (the distribution of U_{key}) must be "
                                 f"Normal(), StudentT(df), ChiSquare(df) or Discrete(...), "
                                 f"got {dist!r}")
        return _ReadOnlyDict({name: given.get(name, Normal())  # type: ignore[union-attr]
                              for name in random})

    def _check_u_components(self) -> tuple[Distribution, ...] | None:
        """The per-component distributions in :attr:`random_names` order (None for one
        distribution of the whole vector), after checking that T allows them: a
        component whose distribution is not normal must have covariance 0 with every
        other component (relative tolerance ``SYMMETRY_TOL`` of max |T|)."""
        if not isinstance(self.u_dist, Mapping):
            return None
        names = self.random_names
        dists = tuple(self.u_dist[name] for name in names)
        T = self.T_engine
        scale = max(float(np.abs(T).max()), 1e-300)
        for k, dist in enumerate(dists):
            if isinstance(dist, Normal):
                continue
            for m in range(len(names)):
                if m != k and abs(T[k, m]) > SYMMETRY_TOL * scale:
                    cov = f"cov({names[max(k, m)]},{names[min(k, m)]})"  # the engine's name
                    raise ValueError(
                        f"u_dist gives {names[k]} a {dist.kind} distribution, but T has "
                        f"{cov} = {float(T[k, m])!r}: a component of "
                        "U_j with its own non-normal distribution must be uncorrelated with "
                        "every other component (it is drawn alone, as sqrt(T_kk) e_kj, so "
                        "that it keeps its distribution); set that covariance to 0, or give "
                        "one distribution for the whole vector U_j (u_dist=...), which "
                        "mixes the components through a factor of T")
        return dists

    @property
    def u_components(self) -> tuple[Distribution, ...] | None:
        """The distribution of each component of U_j, in :attr:`random_names` order, when
        ``u_dist`` is given per component (None when it is one distribution).

        With one distribution, U_j = F e_j with F F' = T and e_j's components iid of that
        distribution: cov(U_j) = T for any T, but unless F is diagonal each U_kj is a
        sum of several e's, so its distribution is not the one named (a two-point e
        gives U_kj up to 2^r values). Per component, each U_kj must have exactly the
        named distribution with variance T_kk, and cov(U_j) must still be T. That is
        possible when every non-normal component is uncorrelated with all the others
        (T block-diagonal: one block per non-normal component, one block of the normal
        ones): the non-normal U_kj = sqrt(T_kk) e_kj are drawn independently, and the
        normal block as F_N e_N with F_N F_N' = T_NN, which keeps it jointly normal with
        its own correlations. Any other T is refused when the spec is built, with a
        ValueError naming the offending covariance: with a correlated non-normal
        component there is in general no joint distribution with those marginals and
        that covariance that this construction could draw.
        """
        return self._u_components  # type: ignore[attr-defined]

    def _check_predictors(self, group: str, response: str) -> tuple[Predictor, ...]:
        preds = self.predictors
        if isinstance(preds, Predictor):
            preds = (preds,)
        if not isinstance(preds, Sequence):
            raise ValueError(f"predictors must be a list of predictors, got {preds!r}")
        preds = tuple(preds)
        names: dict[str, Predictor] = {}
        for p in preds:
            if not isinstance(p, Predictor):
                raise ValueError(f"{p!r} is not a predictor (Continuous, Binary, Categorical, ...)")
            if p.name in names:
                raise ValueError(f"two predictors are called {p.name!r}")
            if p.name in (group, response):
                raise ValueError(f"predictor {p.name!r} has the name of the "
                                 f"{'group' if p.name == group else 'response'} column")
            names[p.name] = p
        for p in preds:
            if not p.derived:
                continue
            src = names.get(p.of)  # type: ignore[attr-defined]
            if src is None:
                raise ValueError(f"{p.kind} {p.name!r} refers to an unknown predictor "
                                 f"{p.of!r}")  # type: ignore[attr-defined]
            ok = {
                "complement": isinstance(src, Binary | Level2Binary),
                "indicator": isinstance(src, Categorical),
                "group_mean": isinstance(src, Continuous | Binary | Values),
                "group_centered": isinstance(src, Continuous | Binary | Values),
            }[p.kind]
            if not ok:
                need = {"complement": "a binary predictor", "indicator": "a categorical predictor",
                        "group_mean": "a drawn level-1 numeric predictor",
                        "group_centered": "a drawn level-1 numeric predictor"}[p.kind]
                raise ValueError(f"{p.kind} {p.name!r} needs {need}, but {p.of!r} is "  # type: ignore[attr-defined]
                                 f"{src.kind}")
            if isinstance(p, Indicator) and p.category not in src.levels:  # type: ignore[attr-defined]
                raise ValueError(f"indicator {p.name!r}: {p.of!r} has no level {p.category!r} "
                                 f"(levels: {', '.join(src.levels)})")  # type: ignore[attr-defined]
        return preds

    def _check_sigma2(self) -> float:
        s2 = number(self.sigma2, "sigma2 (the residual variance sigma^2)")
        if s2 <= 0:
            raise ValueError(f"sigma2 (the residual variance sigma^2) must be positive, got {s2!r}")
        return s2

    def columns(self) -> dict[str, str]:
        """Every column name a term may use, mapped to its formula term: the intercept,
        numeric predictors, and the dummies of categorical predictors."""
        out = {"Intercept": "1"}
        for p in self.predictors:
            if isinstance(p, Categorical):
                for i, lv in enumerate(p.levels):
                    if i:
                        out[f"{p.name}[T.{lv}]"] = p.name
                    out[f"{p.name}[{lv}]"] = p.name
            else:
                out[p.name] = p.name
        return out

    def _check_random(self, preds: tuple[Predictor, ...]) -> tuple[str, ...]:
        random = self.random
        if isinstance(random, str):
            random = (random,)
        if not isinstance(random, Sequence) or not random:
            raise ValueError("random must list at least one column with a random coefficient, "
                             "e.g. ['Intercept'] or ['Intercept', 'x']")
        random = tuple(random)
        known = self.columns()
        for name in random:
            if name not in known:
                raise ValueError(f"random names an unknown column {name!r}; known columns: "
                                 f"{', '.join(known)}")
        dup = sorted({r for r in random if random.count(r) > 1})
        if dup:
            raise ValueError(f"random lists {', '.join(dup)} more than once")
        return random

    def _check_T(self, random: tuple[str, ...]) -> np.ndarray:
        try:
            T = np.array(self.T, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"T must be a matrix of numbers, got {self.T!r}") from None
        q = len(random)
        if T.ndim == 0 and q == 1:
            T = T.reshape(1, 1)
        if T.ndim != 2 or T.shape != (q, q):
            raise ValueError(f"T has shape {T.shape} but there are {q} random effects "
                             f"({', '.join(random)}): T must be {q} x {q}")
        if not np.isfinite(T).all():
            raise ValueError("T has a missing or infinite element")
        scale = max(float(np.abs(T).max()), 1e-300)
        asym = np.abs(T - T.T)
        if asym.max() > SYMMETRY_TOL * scale:
            j, i = sorted(int(v) for v in np.unravel_index(int(np.argmax(asym)), asym.shape))
            raise ValueError(f"T is not symmetric: T[{i},{j}] = {float(T[i, j])!r} but "
                             f"T[{j},{i}] = {float(T[j, i])!r} (the covariance of {random[i]} "
                             f"and {random[j]})")
        T = 0.5 * (T + T.T)
        neg = np.flatnonzero(np.diag(T) < 0)
        if neg.size:
            k = int(neg[0])
            raise ValueError(f"T has a negative variance: var({random[k]}) = T[{k},{k}] = "
                             f"{float(T[k, k])!r}")
        lam = np.linalg.eigvalsh(T)
        if lam[0] < -PSD_TOL * scale:
            raise ValueError(f"T is not positive semi-definite: its most negative eigenvalue is "
                             f"{lam[0]:.6g} (eigenvalues {np.array2string(lam, precision=4)})")
        T.setflags(write=False)
        return T

    def _check_gamma(self, preds: tuple[Predictor, ...]) -> _ReadOnlyDict:
        if not isinstance(self.gamma, Mapping):
            raise ValueError(f"gamma must map column names to fixed effects, got {self.gamma!r}")
        known = self.columns()
        out = {}
        for key, value in self.gamma.items():
            if not isinstance(key, str):
                raise ValueError(f"gamma names must be strings, got {key!r}")
            factors = key.split(":")
            bad = [f for f in factors if f not in known or (f == "Intercept" and len(factors) > 1)]
            if bad:
                raise ValueError(f"gamma names an unknown term {key!r} ({bad[0]!r} is not a "
                                 f"column); known columns: {', '.join(known)}")
            out[key] = number(value, f"gamma[{key!r}]")
        return _ReadOnlyDict(out)

    def _compile(self) -> Compiled:
        known = self.columns()
        terms: list[str] = []
        for key in self.gamma:
            if key != "Intercept":
                term = ":".join(known[f] for f in key.split(":"))
                if term not in terms:
                    terms.append(term)
        fixed = " + ".join(["1"] + terms)
        rterms = ["1" if "Intercept" in self.random else "0"]
        for key in self.random:
            if key != "Intercept" and known[key] not in rterms:
                rterms.append(known[key])
        rand = " + ".join(rterms)
        formula = f"{self.response} ~ {fixed} + ({rand} | {self.group})"
        sample = {}
        for p in self.predictors:
            if isinstance(p, Categorical):
                sample[p.name] = pd.Categorical([p.levels[0]] * 2, categories=list(p.levels))
            else:
                sample[p.name] = np.array([0.0, 1.0])
        frame = pd.DataFrame(sample, index=range(2))
        layout = formula_layout(formula, frame)  # the layout the fit will read
        fixed_names, random_names = layout.fixed_names, layout.random_names
        for key in self.gamma:
            if key not in fixed_names:
                raise ValueError(
                    f"gamma names {key!r}, which the true model's fixed part {fixed!r} does not "
                    f"produce (its columns: {', '.join(fixed_names)})")
        if sorted(random_names) != sorted(self.random):
            raise ValueError(
                f"random {list(self.random)} cannot be written as one lme4 term: "
                f"({rand} | {self.group}) gives the columns {list(random_names)}; list exactly "
                "those, or use an Indicator predictor for a single dummy")
        order = tuple(self.random.index(r) for r in random_names)
        gamma = np.array([self.gamma.get(n, 0.0) for n in fixed_names])
        factor = factor_T(self.T[np.ix_(order, order)])
        variables: list[Part] = []

        def terms(columns: tuple[Column, ...]) -> np.ndarray:
            """Each column as the product of its parts (data columns, a level's coding)."""
            for c in columns:  # (the intercept is the product of no parts, of nothing)
                if not c.parts and c.variables:
                    raise ValueError(f"the generator cannot draw the column {c.name!r}")
            for part in (p for c in columns for p in c.parts if p not in variables):
                variables.append(part)
            return term_matrix([[variables.index(p) for p in c.parts] for c in columns])

        fixed_terms, random_terms = terms(layout.fixed), terms(layout.random)
        for a in (gamma, factor, fixed_terms, random_terms):
            a.setflags(write=False)
        return Compiled(formula, layout, order, gamma, factor, tuple(variables), fixed_terms,
                        random_terms)

    # ---- derived ----------------------------------------------------------
    @property
    def compiled(self) -> Compiled:
        """The generator's arrays (:class:`Compiled`)."""
        return self._compiled  # type: ignore[attr-defined]

    @property
    def layout(self) -> DesignLayout:
        """The :class:`~mlmsim.model.layout.DesignLayout` of :attr:`formula`: the columns
        the fit of the spec's data has, and what each is made of."""
        return self.compiled.layout

    @property
    def formula(self) -> str:
        """The lme4 formula of the true model, e.g. ``y ~ 1 + x + z + x:z + (1 + x | g)``."""
        return self.compiled.formula

    @property
    def T_engine(self) -> np.ndarray:  # noqa: N802 - the seed's notation
        """T with rows and columns in :attr:`random_names` order."""
        o = list(self.compiled.random_order)
        return self.T[np.ix_(o, o)]

    @property
    def truth(self) -> Truth:
        """The true gamma, T and sigma^2, named and ordered as the engine's estimates."""
        names = list(self.random_names)
        return Truth(
            gamma=pd.Series(self.compiled.gamma, index=list(self.fixed_names), name="gamma"),
            T=pd.DataFrame(self.T_engine, index=names, columns=names),
            sigma2=self.sigma2,
        )

    def predictor(self, name: str) -> Predictor:
        for p in self.predictors:
            if p.name == name:
                return p
        raise KeyError(name)

    # ---- equality ---------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelSpec):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # ---- files ------------------------------------------------------------
    def to_dict(self) -> dict:
        """The spec as plain data (str, float, int, bool, list, dict): what files hold."""
        out: dict[str, Any] = {
            "response": self.response,
            "group": self.group,
            "predictors": [p.to_dict() for p in self.predictors],
            "gamma": dict(self.gamma),
            "random": list(self.random),
            "T": self.T.tolist(),
            "sigma2": self.sigma2,
            "u_dist": ({name: d.to_dict() for name, d in self.u_dist.items()}
                       if isinstance(self.u_dist, Mapping) else self.u_dist.to_dict()),
            "r_dist": self.r_dist.to_dict(),
        }
        if self.group_sizes is not None:
            gs = self.group_sizes
            out["group_sizes"] = gs if isinstance(gs, int) else gs.to_dict()
        if self.n_groups is not None:
            out["n_groups"] = self.n_groups
        return out

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        """Build a spec from plain data, refusing unknown keys and wrong types with a
        ValueError that names the key."""
        return cls(**spec_kwargs(raw))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None,
                              width=100)

    @classmethod
    def from_yaml(cls, text: str) -> ModelSpec:
        """Read a spec from YAML text (a safe loader: tags that build objects are refused).

        Text beyond :data:`MAX_SPEC_BYTES`, nesting beyond :data:`MAX_SPEC_DEPTH`, more
        than :data:`MAX_SPEC_NODES` values once aliases are expanded, and an alias that
        contains itself are refused with a ValueError before anything is built. Given a
        file's name instead of its text, the error says to use :meth:`load`."""
        raw = load_yaml(text)
        if isinstance(raw, str) and looks_like_path(raw):
            raise ValueError(f"from_yaml reads YAML text, and {raw!r} is the name of a file: "
                             "read a spec file with ModelSpec.load(path)")
        return cls(**spec_kwargs(raw))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Read a spec from JSON text: a repeated key, text beyond
        :data:`MAX_SPEC_BYTES`, nesting beyond :data:`MAX_SPEC_DEPTH` and more than
        :data:`MAX_SPEC_NODES` values are refused with a ValueError."""
        return cls(**spec_kwargs(load_json(text)))

    def save(self, path: str | Path) -> None:
        """Write the spec as JSON (``.json``) or YAML (any other suffix)."""
        path = Path(path)
        text = self.to_json() if path.suffix.lower() == ".json" else self.to_yaml()
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        """Read a spec file (UTF-8): JSON for ``.json``, YAML otherwise.

        A file larger than :data:`MAX_SPEC_BYTES` is refused with a ValueError after
        reading at most that many bytes (so a device or a growing file is refused too);
        the text then goes through :meth:`from_json` or :meth:`from_yaml`."""
        path = Path(path)
        text = read_spec_file(path)
        if path.suffix.lower() == ".json":
            return cls.from_json(text)
        return cls.from_yaml(text)

    @classmethod
    def example(cls) -> ModelSpec:
        """The annotated example of :meth:`example_yaml`: a random intercept and slope
        model with a cross-level interaction."""
        return cls.from_yaml(EXAMPLE_YAML)

    @staticmethod
    def example_yaml() -> str:
        """An annotated example spec file (YAML) to start from."""
        return EXAMPLE_YAML
