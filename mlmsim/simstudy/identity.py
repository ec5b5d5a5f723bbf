"""The identity of a study definition: a canonical, complete form of what the records depend on.

A study directory may only be resumed by the study that started it, so the runner needs a
fingerprint of everything a replicate's records depend on: the conditions, the
data-generating callable, the methods and their options, the true values, the root seed.
This module turns such objects into a canonical JSON form (:func:`canonical`) whose
SHA-256 is their identity (:func:`digest`), and refuses objects whose value cannot be
captured, rather than hashing what it can see of them.

How objects are captured (and why):

- Data: None, booleans, numbers, strings, bytes, enums, numpy scalars and arrays (dtype,
  shape and a hash of the bytes), pandas objects, lists, tuples, sets and mappings, by
  value; dataclasses (``ModelSpec`` and its parts among them) by their class and
  ``dataclasses.fields``.
- Declared parameters: an object with ``__mlmsim_params__`` (a value or a method
  returning one), a ``params()`` method, or a ``descriptor()`` method (as
  :class:`~mlmsim.methods.FormulaMethod` and :class:`~mlmsim.methods.FromSpec` have) is
  captured by what that returns, plus its class. This is the way to make a generator or
  method whose state is not plain data hashable: declare its parameters.
- Functions of the user's code (scripts, notebooks, local modules, ``mlmsim.studies``):
  the syntax tree of their source (comments and layout do not count; the bytecode when
  there is no source), their defaults, the values in their closure cells and the values
  of every global name their code loads, followed recursively, whatever module the
  referenced function or object lives in. So a module-level ``ModelSpec`` used by a
  generator, or a helper function imported from another module of the user's code, are
  part of the identity: editing either changes it.
- Classes of the user's code: the source of the class and every function defined in it
  (with the globals those use); instances of them: their class and ``__dict__``.
- Functions, classes and modules of the standard library and of installed packages (in
  site-packages): their qualified name, as they are not the user's to edit between a run
  and its resume; those of mlmsim itself (but ``mlmsim.studies``): qualified name and the
  mlmsim version, which the study directory's manifest also pins.
- Anything else (an open file, a lock, a random ``Generator`` or ``RandomState``, a
  generator object, an object without state that can be read) is refused with a
  :class:`DefinitionError` naming the object, its type and where the definition refers to
  it: its effect on the records cannot be known from its value, so no hash of it could
  promise that equal hashes mean equal records. Keep such objects out of module-level
  names that generators use, or give their owner a ``__mlmsim_params__``.

The module name of a function is not part of its identity, so a function imported under
another module path (a script run directly, or imported) keeps its identity.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import dis
import enum
import fractions
import functools
import hashlib
import inspect
import io
import json
import logging
import site
import sys
import sysconfig
import textwrap
import threading
import types
from collections.abc import Mapping
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from mlmsim import __version__

__all__ = ["DefinitionError", "canonical", "changed_parts", "describe_callable", "digest",
           "form_digest", "form_parts", "identity_parts"]


class DefinitionError(ValueError):
    """A study definition refers to an object whose value cannot be captured in its
    identity (an open file, a lock, a random Generator, ...); the message names it."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dumps(form: object) -> str:
    return json.dumps(form, sort_keys=False, separators=(",", ":"), allow_nan=True)


def digest(obj: object) -> str:
    """SHA-256 (hex) of the canonical JSON form of ``obj`` (see :func:`canonical`)."""
    return form_digest(canonical(obj))


def form_digest(form: object) -> str:
    """SHA-256 (hex) of an already canonical form: ``digest(x) == form_digest(canonical(x))``."""
    return _sha256(_dumps(form).encode())


# ---------------------------------------------------------------------------
# Where code comes from: the user's, or a library's
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[Path, ...]:
    """Directories of installed packages and of the standard library."""
    paths = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        value = sysconfig.get_paths().get(key)
        if value:
            paths.add(value)
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - virtualenvs without it
        pass
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        paths.add(user)
    return tuple(Path(p).resolve() for p in paths)


@functools.lru_cache(maxsize=4096)
def _origin(module: str | None) -> str:
    """"mlmsim" (mlmsim's own code, pinned by its version), "library" (standard library
    or an installed package: identified by name), or "user" (hashed by content).

    ``mlmsim.studies`` counts as user code: its study definitions are edited like a
    user's and hashed by content."""
    if not module:
        return "user"
    top = module.split(".", 1)[0]
    if top == "mlmsim":
        return "user" if module.startswith("mlmsim.studies") else "mlmsim"
    if top in sys.stdlib_module_names or top == "builtins":
        return "library"
    mod = sys.modules.get(top)
    file = getattr(mod, "__file__", None)
    if file is None:
        return "user"
    where = Path(file).resolve()
    return "library" if any(where.is_relative_to(d) for d in _library_dirs()) else "user"


def _named(kind: str, obj: object) -> dict:
    """A library object by qualified name (and mlmsim's version for mlmsim's own)."""
    module = getattr(obj, "__module__", None) or ""
    name = f"{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    out = {kind: name}
    if _origin(module) == "mlmsim":
        out["mlmsim"] = __version__
    return out


# ---------------------------------------------------------------------------
# Canonical forms
# ---------------------------------------------------------------------------

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
_REFUSED = (io.IOBase, np.random.Generator, np.random.BitGenerator, np.random.RandomState,
            types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType,
            types.FrameType, types.TracebackType, threading.Thread, threading.Event,
            threading.Condition, *_LOCK_TYPES)


def _refuse(obj: object, where: str, why: str) -> DefinitionError:
    text = repr(obj)
    if len(text) > 80:
        text = text[:77] + "..."
    return DefinitionError(
        f"the study definition refers to {text} (type {type(obj).__module__}."
        f"{type(obj).__qualname__}) at {where or 'its top level'}, whose value cannot be "
        f"captured in the study's identity ({why}); pass what it stands for as data, or "
        "give its class a __mlmsim_params__ that states its parameters")


def _declared(obj: object) -> tuple[bool, object]:
    """(True, parameters) for an object that declares them; (False, None) otherwise."""
    if isinstance(obj, type):
        return False, None
    value = getattr(obj, "__mlmsim_params__", None)
    if value is not None:
        return True, value() if callable(value) else value
    for name in ("params", "descriptor"):
        method = getattr(type(obj), name, None)
        if isinstance(method, types.FunctionType):
            return True, getattr(obj, name)()
    return False, None


def canonical(obj: object, _seen: frozenset[int] = frozenset(), _where: str = "") -> object:
    """A JSON-able form of ``obj`` that is equal for equal data, across processes and runs.

    See the module docstring for what is captured of each kind of object; raises
    :class:`DefinitionError` for objects whose value cannot be captured.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else repr(float(obj))
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, complex | np.complexfloating):
        return {"complex": [canonical(obj.real), canonical(obj.imag)]}
    if isinstance(obj, bytes):
        return {"bytes": _sha256(obj)}
    if isinstance(obj, enum.Enum):
        return {"enum": type(obj).__qualname__, "name": obj.name}
    if isinstance(obj, decimal.Decimal | fractions.Fraction):
        return {type(obj).__name__.lower(): str(obj)}
    if isinstance(obj, datetime.date | datetime.time | datetime.timedelta):
        return {type(obj).__name__: str(obj)}
    if isinstance(obj, PurePath):
        return {"path": str(obj)}
    if isinstance(obj, range | slice):
        return {type(obj).__name__: [obj.start, obj.stop, obj.step]}
    if isinstance(obj, np.dtype):
        return {"dtype": obj.str}
    if isinstance(obj, types.ModuleType):
        return {"module": obj.__name__}
    if isinstance(obj, logging.Logger):  # writes messages, never records
        return {"logger": obj.name}
    if id(obj) in _seen:
        return {"cycle": type(obj).__qualname__}
    seen = _seen | {id(obj)}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return {"ndarray": "object", "shape": list(obj.shape),
                    "values": [canonical(v, seen, _where) for v in obj.ravel().tolist()]}
        return {"ndarray": obj.dtype.str, "shape": list(obj.shape),
                "sha256": _sha256(np.ascontiguousarray(obj).tobytes())}
    if isinstance(obj, pd.DataFrame):
        return {"frame": [canonical(c, seen, _where) for c in obj.columns],
                "index": canonical(obj.index.tolist(), seen, _where),
                "data": [canonical(obj[c].tolist(), seen, _where) for c in obj.columns]}
    if isinstance(obj, pd.Series):
        return {"series": canonical(obj.name, seen, _where),
                "index": canonical(obj.index.tolist(), seen, _where),
                "values": canonical(obj.tolist(), seen, _where)}
    if isinstance(obj, pd.Index):
        return {"index": canonical(obj.tolist(), seen, _where)}
    if isinstance(obj, list | tuple):
        return [canonical(v, seen, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        items = [canonical(v, seen, _where) for v in obj]
        return {"set": sorted(items, key=lambda v: json.dumps(v, sort_keys=True))}
    if isinstance(obj, Mapping):
        return {"mapping": [[canonical(k, seen, _where), canonical(v, seen, f"{_where}.{k}")]
                            for k, v in obj.items()]}
    if isinstance(obj, _REFUSED):
        raise _refuse(obj, _where, "it holds state that changes as it is used")
    declared, params = _declared(obj)
    if declared:
        return {"object": _class_form(type(obj), seen),
                "params": canonical(params, seen, f"{_where}<params>")}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {"dataclass": _class_form(type(obj), seen),
                "fields": canonical(fields, seen, _where)}
    if isinstance(obj, type):
        return _class_form(obj, seen)
    if callable(obj):
        return describe_callable(obj, seen, _where)
    return _instance_form(obj, seen, _where)


def _instance_form(obj: object, seen: frozenset[int], where: str) -> dict:
    """An object of a plain class: its class and its ``__dict__`` (and slots)."""
    state = getattr(obj, "__dict__", None)
    slots = [s for c in type(obj).__mro__ for s in getattr(c, "__slots__", ())
             if isinstance(s, str) and s not in ("__dict__", "__weakref__")]
    if state is None and not slots:
        raise _refuse(obj, where, "it has no readable state")
    values = dict(state or {})
    for s in slots:
        if hasattr(obj, s):
            values.setdefault(s, getattr(obj, s))
    return {"object": _class_form(type(obj), seen), "state": canonical(values, seen, where)}


def _class_form(cls: type, seen: frozenset[int] = frozenset()) -> dict:
    """A class: by name (library, mlmsim), or by its source and the functions defined in
    it, with what they use (the user's code)."""
    if _origin(cls.__module__) != "user":
        return _named("class", cls)
    if id(cls) in seen:
        return {"class": cls.__qualname__, "cycle": True}
    seen = seen | {id(cls)}
    members = {}
    for name, value in vars(cls).items():
        where = f"{cls.__qualname__}.{name}"
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if isinstance(value, types.FunctionType):
            members[name] = describe_callable(value, seen, where)
        elif not (name.startswith("__") and name.endswith("__")) and not callable(value) \
                and not isinstance(value, property | types.MemberDescriptorType
                                   | types.GetSetDescriptorType):
            members[name] = canonical(value, seen, where)  # a class attribute's value
    bases = [_class_form(b, seen) for b in cls.__bases__ if b is not object]
    return {"class": cls.__qualname__, "code": _code_digest(cls), "members": members,
            "bases": bases}


def _code_digest(obj: object) -> str:
    """Hash of a function's or class's source: its syntax tree, else its text or bytecode."""
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        return _bytecode_digest(code) if code is not None else "no-source"
    try:
        return _sha256(ast.dump(ast.parse(source)).encode())
    except SyntaxError:
        # A lambda inside a larger expression: hash its lines without indentation.
        return _sha256("\n".join(line.strip() for line in source.splitlines()).encode())


def _bytecode_digest(code: types.CodeType) -> str:
    def parts(c: types.CodeType) -> list:
        consts = [parts(k) if isinstance(k, types.CodeType) else repr(k) for k in c.co_consts]
        return [c.co_code.hex(), consts, list(c.co_names), list(c.co_varnames)]

    return _sha256(json.dumps(parts(code)).encode())


def _loaded_globals(code: types.CodeType) -> list[str]:
    """The global names a code object (and the functions, lambdas and comprehensions
    nested in it) loads: LOAD_GLOBAL and LOAD_NAME, not attribute names."""
    names = []
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
            names.append(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_loaded_globals(const))
    return list(dict.fromkeys(names))


def describe_callable(fn: object, _seen: frozenset[int] = frozenset(),
                      _where: str = "") -> dict:
    """Identify a callable by what it computes (module docstring).

    - functions and lambdas of the user's code: qualified name, source hash, defaults,
      closure values, and the value of every global name they load (functions,
      classes, data, objects: captured in turn, from whatever module);
    - functions of the standard library, installed packages and mlmsim: their name;
    - ``functools.partial``: the function and its bound arguments;
    - bound methods: the function and the instance;
    - objects that declare their parameters (``__mlmsim_params__``, ``params()``,
      ``descriptor()``): their class and those; other callable objects: their class and
      ``__dict__``; a wrapper with ``__wrapped__`` (``functools.lru_cache``): the wrapped
      function.
    """
    seen = _seen | {id(fn)}
    where = _where or getattr(fn, "__qualname__", type(fn).__qualname__)
    declared, params = _declared(fn)
    if declared:
        return {"object": _class_form(type(fn), seen),
                "params": canonical(params, seen, f"{where}<params>")}
    if isinstance(fn, functools.partial):
        return {"partial": canonical(fn.func, seen, where),
                "args": canonical(list(fn.args), seen, where),
                "keywords": canonical(dict(fn.keywords), seen, where)}
    if isinstance(fn, types.MethodType):
        return {"method": describe_callable(fn.__func__, seen, where),
                "self": canonical(fn.__self__, seen, f"{where}.__self__")}
    if isinstance(fn, types.FunctionType):
        if _origin(fn.__module__) != "user":
            return _named("function", fn)
        return _function_form(fn, seen, where)
    if isinstance(fn, types.BuiltinFunctionType | types.BuiltinMethodType):
        return {"builtin": f"{getattr(fn, '__module__', '') or ''}.{fn.__qualname__}"}
    if isinstance(fn, type):
        return _class_form(fn, seen)
    wrapped = getattr(fn, "__wrapped__", None)
    if callable(wrapped):  # functools.lru_cache and other wrappers
        return {"wrapper": type(fn).__qualname__,
                "wrapped": describe_callable(wrapped, seen, where)}
    if _origin(type(fn).__module__) != "user" and not hasattr(fn, "__dict__"):
        # a numpy ufunc and the like: its type and its own name
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
        if name is None:
            raise _refuse(fn, where, "a library object without a name or readable state")
        return {"callable": f"{type(fn).__module__}.{type(fn).__qualname__}", "name": name}
    return _instance_form(fn, seen, where)


def _function_form(fn: types.FunctionType, seen: frozenset[int], where: str) -> dict:
    closure = {}
    if fn.__closure__:
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            closure[name] = canonical(value, seen, f"{where}: closure {name!r}")
    used = {}
    for name in _loaded_globals(fn.__code__):
        if name not in fn.__globals__:
            continue  # a builtin
        value = fn.__globals__[name]
        used[name] = canonical(value, seen, f"{where}: global {name!r}")
    return {"function": fn.__qualname__, "code": _code_digest(fn),
            "defaults": canonical(fn.__defaults__, seen, f"{where}: defaults"),
            "kwdefaults": canonical(fn.__kwdefaults__, seen, f"{where}: defaults"),
            "closure": closure, "globals": used}


# ---------------------------------------------------------------------------
# Parts: which piece of a definition changed
# ---------------------------------------------------------------------------


def identity_parts(name: str, obj: object, depth: int = 3) -> dict[str, str]:
    """Digests of the pieces of ``obj``'s canonical form, keyed ``name.key.key``, down to
    ``depth`` levels: comparing two such maps names what changed (a method's name, a
    generator's global ``SPEC``, its code, a closure value) rather than only that
    something did."""
    return form_parts(name, canonical(obj), depth)


def form_parts(name: str, form: object, depth: int = 3) -> dict[str, str]:
    """:func:`identity_parts` of an already canonical form."""
    out: dict[str, str] = {}

    def walk(path: str, form: object, level: int) -> None:
        out[path] = _sha256(_dumps(form).encode())
        if level >= depth:
            return
        if isinstance(form, dict):
            if set(form) == {"mapping"}:
                for key, value in form["mapping"]:
                    walk(f"{path}.{key if isinstance(key, str) else _dumps(key)}", value,
                         level + 1)
                return
            for key, value in form.items():
                walk(f"{path}.{key}", value, level + 1)

    walk(name, form, 0)
    return out


def changed_parts(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """The deepest paths whose digests differ between two :func:`identity_parts` maps
    (a path whose children all agree is named itself)."""
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [k for k in changed
            if not any(other.startswith(k + ".") for other in changed if other != k)]

