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
  level, no transform), so that it can be recomputed from the data.

Arrays fitted without a formula (:func:`mlmsim.engine.batch.fit_arrays`) carry only column
names; :meth:`DesignLayout.from_names` reads those, the one place where names are parsed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Column", "DesignLayout", "LaidOut"]

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class Column:
    """One design column: its ``name``, the model ``variables`` (its term's factors) it is
    made of, and whether it is ``plain`` (a product of numeric data columns as they are:
    the intercept, ``x``, ``x:z``); ``factors`` are those data columns in the term's order
    when it is plain, else empty; ``parts`` the one-factor columns it is the product of
    (``x:f[T.b]`` -> ``x``, ``f[T.b]``: a data column, a factor level's dummy or a
    transform; none for the intercept)."""

    name: str
    variables: frozenset[str]
    plain: bool
    factors: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()

    @classmethod
    def from_name(cls, name: str) -> Column:
        """A column known only by its name, as formulaic names columns: 'Intercept', 'x',
        'x:z' (plain), 'f[T.b]' or 'x:f[T.b]' (a factor level), 'log(x)' (a transform)."""
        if name == "Intercept":
            return cls(name, frozenset(), True)
        parts = tuple(name.split(":"))
        plain = all(_PLAIN.match(p) for p in parts)
        variables = frozenset(p.split("[")[0] for p in parts)
        return cls(name, variables, plain, parts if plain else (), parts)

    @classmethod
    def product(cls, name: str, factors: Sequence[str]) -> Column:
        """A plain column, the product of the data columns ``factors`` (none: the
        intercept)."""
        return cls(name, frozenset(factors), True, tuple(factors), tuple(factors))


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
    from it (``Design``, ``StackedDesign``)."""

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
