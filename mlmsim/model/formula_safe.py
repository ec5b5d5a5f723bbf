"""A restricted reader of model formulas: column names, numbers, operators, a few functions.

formulaic evaluates every factor of a formula as Python, so a formula is code:
``I(x.__array__.__globals__['__builtins__']['open'](path, 'w').write('1') + x)`` writes a
file. That is the user's own business when the formula is typed on the command line or
passed to :func:`mlmsim.fit` (which keep formulaic's full power), but not when a formula
comes with a study definition, a spec or any file someone else may have written. Those
go through :func:`check_formula` first, which accepts only

- column names (Python identifiers, or any name in backticks: `` `ses mean` ``) and numbers;
- the operators of a formula: ``~ + - * / : ^ ** | ||`` and parentheses;
- the functions ``log``, ``log2``, ``log10``, ``exp``, ``sqrt``, ``center`` and ``scale``
  of an arithmetic expression, ``I()`` of an arithmetic expression (names, numbers,
  ``+ - * / **``, parentheses and those functions), and ``C(name)``, optionally with a
  contrast (``C(f, Treatment('b'))``, ``C(f, contr.sum)``) or ``levels=[...]`` of literals;

and refuses everything else (attributes, subscripts, strings outside ``C()``, other
functions, formulaic's ``{...}`` Python quoting, double underscores, keywords) with a
one-line :class:`UnsafeFormulaError`. The check is a parser of its own (a tokenizer and a
recursive descent over the grammar above), not a sandbox around Python's: what it does
not know, it refuses. A formula it accepts is then built by formulaic as before, so the
columns and their names are formulaic's.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

__all__ = ["ALLOWED_FUNCTIONS", "UnsafeFormulaError", "check_formula"]

#: Functions of an arithmetic expression a checked formula may call (besides I and C).
ALLOWED_FUNCTIONS = frozenset({"log", "log2", "log10", "exp", "sqrt", "center", "scale"})
_CONTRASTS = frozenset({"Treatment", "Sum", "Helmert", "Poly", "Diff", "T", "S",
                        "contr.treatment", "contr.sum", "contr.helmert", "contr.poly",
                        "contr.diff"})
_MAX_LENGTH = 10_000
_MAX_POWER = 100.0  # 9 ** 99999999 of Python integers would take the CPU for hours
_HELP = ("column names, numbers, ~ + - * / : ^ ** | ||, parentheses, I() of arithmetic, "
         "C(), and log, log2, log10, exp, sqrt, center, scale")


class UnsafeFormulaError(ValueError):
    """A formula that uses more than :func:`check_formula` allows (one line)."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "number", "string", "op", "end"
    text: str
    at: int


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<quoted>`[^`]*`)
  | (?P<name>[A-Za-z_.][A-Za-z0-9_.]*)
  | (?P<string>'[^'\\]*'|"[^"\\]*")
  | (?P<op>\|\||\*\*|[~+\-*/:^|(),=\[\]])
""", re.VERBOSE)


def _tokens(text: str) -> list[_Token]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _Refusal(f"{text[pos]!r} at position {pos}")
        kind = m.lastgroup
        if kind == "quoted":
            out.append(_Token("name", m.group(), pos))
        elif kind != "space":
            out.append(_Token(kind, m.group(), pos))
        pos = m.end()
    out.append(_Token("end", "", len(text)))
    return out


class _Refusal(Exception):
    """Raised inside the parser; :func:`check_formula` turns it into one line."""


class _Parser:
    """Recursive descent over the grammar of the module docstring."""

    _LEVELS = (("|", "||"), ("+", "-"), ("*", "/"), (":",))

    def __init__(self, text: str):
        self.tokens = _tokens(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self, text: str | None = None, kind: str | None = None) -> _Token:
        tok = self.tok
        if (text is not None and tok.text != text) or (kind is not None and tok.kind != kind):
            want = text or kind
            got = tok.text or "the end"
            raise _Refusal(f"expected {want!r} at position {tok.at}, found {got!r}")
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in texts

    # formula := [expr] "~" expr | expr
    def formula(self) -> None:
        if not self.at("~"):
            self.expr(0)
        if self.at("~"):
            self.take("~")
            self.expr(0)
        self.take(kind="end")

    def expr(self, level: int) -> None:
        if level == len(self._LEVELS):
            return self.power(arith=False)
        self.expr(level + 1)
        while self.at(*self._LEVELS[level]):
            self.take()
            self.expr(level + 1)
        return None

    def power(self, arith: bool) -> None:
        self.unary(arith)
        if self.at("**") or (not arith and self.at("^")):
            self.take()
            tok = self.tok
            if tok.kind == "number" and abs(float(tok.text)) > _MAX_POWER:
                raise _Refusal(f"the power {tok.text} at position {tok.at} (at most "
                               f"{_MAX_POWER:g})")
            self.unary(arith)

    def unary(self, arith: bool) -> None:
        if self.at("-", "+"):
            self.take()
            return self.unary(arith)
        return self.atom(arith)

    def atom(self, arith: bool) -> None:
        tok = self.tok
        if tok.kind == "number":
            self.take()
            return
        if self.at("("):
            self.take("(")
            self.arith() if arith else self.expr(0)
            self.take(")")
            return
        if tok.kind == "name":
            self.take()
            if self.at("("):
                return self.call(tok)
            _check_name(tok)
            return
        raise _Refusal(f"{tok.text or 'the end'!r} at position {tok.at}")

    # arith := term (("+" | "-") term)*;  term := power (("*" | "/") power)*
    def arith(self) -> None:
        self.arith_term()
        while self.at("+", "-"):
            self.take()
            self.arith_term()

    def arith_term(self) -> None:
        self.power(arith=True)
        while self.at("*", "/"):
            self.take()
            self.power(arith=True)

    def call(self, name: _Token) -> None:
        fn = name.text
        self.take("(")
        if fn == "C":
            self.categorical()
        elif fn == "I" or fn in ALLOWED_FUNCTIONS:
            self.arith()
        else:
            raise _Refusal(f"the function {fn!r} at position {name.at}")
        self.take(")")

    def categorical(self) -> None:
        """C(name [, contrast] [, levels=[literals]])."""
        _check_name(self.take(kind="name"))
        while self.at(","):
            self.take(",")
            tok = self.tok
            if tok.kind == "name" and tok.text == "levels":
                self.take()
                self.take("=")
                self.literal_list()
            elif tok.kind == "name" and tok.text in _CONTRASTS:
                self.take()
                if self.at("("):
                    self.take("(")
                    self.literals_until(")")
            else:
                raise _Refusal(f"{tok.text or 'the end'!r} in C() at position {tok.at}")

    def literal(self) -> None:
        if self.tok.kind in ("string", "number"):
            self.take()
        elif self.at("-"):
            self.take()
            self.take(kind="number")
        elif self.at("["):
            self.literal_list()
        else:
            raise _Refusal(f"{self.tok.text or 'the end'!r} at position {self.tok.at}")

    def literal_list(self) -> None:
        self.take("[")
        self.literals_until("]")

    def literals_until(self, close: str) -> None:
        """``literal (',' literal)*``, possibly empty, then ``close``."""
        if not self.at(close):
            self.literal()
            while self.at(","):
                self.take(",")
                self.literal()
        self.take(close)


def _check_name(tok: _Token) -> None:
    name = tok.text
    if name.startswith("`"):
        return  # formulaic looks a quoted name up in the data, never evaluates it
    if "__" in name or keyword.iskeyword(name):
        raise _Refusal(f"the name {name!r} at position {tok.at}")
    if "." in name and name != ".":
        raise _Refusal(f"the name {name!r} at position {tok.at} (formulaic would read the "
                       f"dot as Python; quote the column as `{name}`)")


def check_formula(formula: str) -> str:
    """``formula`` itself if it uses only what the restricted grammar allows (module
    docstring), else :class:`UnsafeFormulaError` (a ValueError) in one line naming the
    first thing refused and its position.

    >>> check_formula("y ~ log(x) + I(x**2) + C(f) + (1 + x | g)")
    'y ~ log(x) + I(x**2) + C(f) + (1 + x | g)'
    >>> check_formula("y ~ I(x.__class__) + (1 | g)")
    Traceback (most recent call last):
    ...
    mlmsim.model.formula_safe.UnsafeFormulaError: formula 'y ~ I(x.__class__) + ...
    """
    if not isinstance(formula, str):
        raise UnsafeFormulaError(f"a formula must be a string, got {type(formula).__name__}")
    if len(formula) > _MAX_LENGTH:
        raise UnsafeFormulaError(f"formula of {len(formula)} characters refused (at most "
                                 f"{_MAX_LENGTH})")
    try:
        _Parser(formula).formula()
    except _Refusal as exc:
        text = formula if len(formula) <= 120 else formula[:117] + "..."
        raise UnsafeFormulaError(
            f"formula {text!r} is refused: {exc}; a formula read from a file, a spec or a "
            f"study definition may use only {_HELP}") from None
    except RecursionError:
        raise UnsafeFormulaError("formula refused: nested too deeply") from None
    return formula
