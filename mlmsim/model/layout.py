"""The layout of a two-level design: its columns and what each is made of.

A :class:`DesignLayout` says, for each fixed and random-effect column of a design, which
term of the formula made it and which data variables it is a function of
(:class:`Column`), and how the random-effect columns fall into blocks of T. The formula
parser builds it from the formula's term structure (:func:`mlmsim.model.formula.model_design`
and :func:`~mlmsim.model.formula.stacked_design`), so that its consumers (the containment
df, the model plots) ask it instead of reading the column names back:

- ``variables``: the model variables the column is made of, the factors of its term:
  'Intercept' -> {}, 'x:z' -> {x, z}, 'f[T.b]' -> {f}; a transform is a variable of its
  own, 'log(x)' -> {log(x)}, as a column computed before the fit is in SAS;
- ``plain``: the column is a product of numeric data columns as they are (no factor
  level, no transform), so that it can be recomputed from the data;
- ``parts``: the one-factor columns it is the product of (:class:`Part`): a data column,
  a transform, or one column of a categorical variable's coding, with that coding's value
  at each level, so that the generator can draw it from a level code.

Arrays fitted without a formula (:func:`mlmsim.engine.batch.fit_arrays`) carry only column
names; :meth:`DesignLayout.from_names` reads those, the one place where names are parsed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Column", "DesignLayout", "LaidOut", "Part", "PLAIN_NAME"]

#: the name of a data column as it is (not a transform, not a factor level), to be
#: ``fullmatch``-ed: ``x``, ``ses.centered``, ``_x``
PLAIN_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


@dataclass(frozen=True)
class Part:
    """One factor of a design column, as formulaic encodes it: ``kind`` is ``"data"`` (a
    numeric data column as it is, ``x``), ``"level"`` (one column of the coding of the
    categorical ``variable``, ``f[T.b]``: its value is ``coding[k]`` where the variable is
    ``levels[k]``) or ``"transform"`` (``log(x)``, a variable of its own). ``levels`` and
    ``coding`` are empty when the part is known only by its name (:meth:`from_name`)."""

    name: str
    variable: str
    kind: str = "data"
    levels: tuple = ()
    coding: tuple[float, ...] = ()

    @classmethod
    def from_name(cls, name: str) -> Part:
        """A part known only by its name: 'x' (data), 'f[T.b]' (a level), 'log(x)'."""
        if PLAIN_NAME.fullmatch(name):
            return cls(name, name)
        variable = name.split("[")[0]
        return cls(name, variable, "level" if variable != name else "transform")

    def values(self, levels: Sequence) -> tuple[float, ...]:
        """The part's value at each of ``levels`` (a level's coding), e.g. the dummy
        f[T.b] is (0, 1, 0) at ('a', 'b', 'c')."""
        at = dict(zip(self.levels, self.coding, strict=True))
        missing = [lv for lv in levels if lv not in at]
        if self.kind != "level" or missing:
            raise ValueError(f"{self.name!r} has no coding at the levels {missing or levels}")
        return tuple(at[lv] for lv in levels)


@dataclass(frozen=True)
class Column:
    """One design column: its ``name``, the model ``variables`` (its term's factors) it is
    made of, and whether it is ``plain`` (a product of numeric data columns as they are:
    the intercept, ``x``, ``x:z``); ``factors`` are those data columns in the term's order
    when it is plain, else empty; ``parts`` the one-factor columns it is the product of
    (:class:`Part`; ``x:f[T.b]`` -> ``x``, ``f[T.b]``; none for the intercept, and none
    where formulaic's encoding of the term could not be followed, such as a transform
    that makes several columns, ``poly(x, 2)``); ``inputs`` the data columns its value
    depends on (``log(x)`` -> {x}, where ``variables`` is {log(x)})."""

    name: str
    variables: frozenset[str]
    plain: bool
    factors: tuple[str, ...] = ()
    parts: tuple[Part, ...] = ()
    inputs: frozenset[str] = frozenset()

    @classmethod
    def from_name(cls, name: str) -> Column:
        """A column known only by its name, as formulaic names columns: 'Intercept', 'x',
        'x:z' (plain), 'f[T.b]' or 'x:f[T.b]' (a factor level), 'log(x)' (a transform,
        whose inputs a name does not tell: taken as its variable)."""
        if name == "Intercept":
            return cls(name, frozenset(), True)
        parts = tuple(Part.from_name(p) for p in name.split(":"))
        plain = all(p.kind == "data" for p in parts)
        variables = frozenset(p.variable for p in parts)
        return cls(name, variables, plain, tuple(p.name for p in parts) if plain else (),
                   parts, variables)

    @classmethod
    def product(cls, name: str, factors: Sequence[str]) -> Column:
        """A plain column, the product of the data columns ``factors`` (none: the
        intercept)."""
        return cls(name, frozenset(factors), True, tuple(factors),
                   tuple(Part(f, f) for f in factors), frozenset(factors))


@dataclass(frozen=True)
class DesignLayout:
    """The fixed and random-effect columns of a design (:class:`Column`, in the design's
    order) and the blocks of T (the random columns each covers)."""

    fixed: tuple[Column, ...]
    random: tuple[Column, ...]
    blocks: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def from_names(cls, fixed_names: Sequence[str], random_names: Sequence[str],
                   blocks: tuple[tuple[int, ...], ...] = ()) -> DesignLayout:
        """The layout of columns known only by their names (:meth:`Column.from_name`)."""
        return cls(tuple(Column.from_name(str(n)) for n in fixed_names),
                   tuple(Column.from_name(str(n)) for n in random_names), tuple(blocks))

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.fixed)

    @property
    def random_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.random)

    def column(self, name: str) -> Column:
        """The fixed or random column called ``name`` (KeyError if there is none)."""
        for c in (*self.fixed, *self.random):
            if c.name == name:
                return c
        raise KeyError(name)

    def fixed_variables(self) -> list[frozenset[str]]:
        """The data variables of each fixed column (what SAS's containment rule reads)."""
        return [c.variables for c in self.fixed]

    def random_variables(self) -> list[frozenset[str]]:
        """The data variables of each random-effect column."""
        return [c.variables for c in self.random]


class LaidOut:
    """A design that carries its ``layout`` and reads its column names and blocks of T
    from it (``Design``, ``StackedDesign``, the true model's ``ModelSpec`` and its draws'
    ``SimBatch``)."""

    layout: DesignLayout

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return self.layout.fixed_names

    @property
    def random_names(self) -> tuple[str, ...]:
        return self.layout.random_names

    @property
    def blocks(self) -> tuple[tuple[int, ...], ...]:
        return self.layout.blocks
