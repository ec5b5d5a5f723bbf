"""Spec files: YAML or JSON text read into plain data and checked before anything is
built from it (a safe loader; bounds on size, nesting and alias expansion; strict keys
and types), and the annotated example."""

from __future__ import annotations

import json
import os
import re
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mlmsim.generate.checks import MAX_COUNT, digits
from mlmsim.generate.covariance import T_from_sd_corr
from mlmsim.generate.distributions import DISTRIBUTIONS
from mlmsim.generate.predictors import PREDICTORS
from mlmsim.generate.sizes import SIZES, GroupSizes, SizeList, group_sizes

__all__ = [
    "MAX_SPEC_BYTES",
    "MAX_SPEC_DEPTH",
    "MAX_SPEC_NODES",
    "EXAMPLE_YAML",
    "size_message",
    "depth_message",
    "check_size",
    "check_plain",
    "load_yaml",
    "looks_like_path",
    "spec_kwargs",
]


# Bounds on a spec read from a file or text (YAML or JSON), checked before any object is
# built from it. A spec is a page of text (the annotated example is 2 KiB, 5 levels deep,
# about 60 values); these refuse only input made to exhaust memory or time: a YAML alias
# bomb ("billion laughs", whose aliases expand 500 bytes into 10^9 values), an alias that
# contains itself (an endless expansion), nesting that overflows the parser's stack, a file
# of megabytes. Each refusal is a one-line ValueError naming the limit and its value.
MAX_SPEC_BYTES = 256 * 1024
"""Largest spec file or text, in bytes of UTF-8: 256 KiB."""
MAX_SPEC_DEPTH = 32
"""Deepest nesting of lists and mappings in a spec (a plain value counts as a level, the
document itself is level 1), counted through YAML aliases."""
MAX_SPEC_NODES = 100_000
"""Most values in a spec (scalars, lists and mappings, and the keys of mappings) once its
YAML aliases are expanded: every alias counts the whole value it stands for."""


EXAMPLE_YAML = """\
# An mlmsim model spec: the true two-level model a simulation draws from, in the
# seed's notation (random intercept and slope of x, level-2 z, cross-level x:z):
#   Level 1:  y_ij = beta_0j + beta_1j x_ij + R_ij,             var(R_ij) = sigma2
#   Level 2:  beta_0j = gamma_00 + gamma_01 z_j + U_0j
#             beta_1j = gamma_10 + gamma_11 z_j + U_1j,         cov(U_0j, U_1j) = T
response: y              # name of the response column
group: g                 # name of the group-id column
predictors:
  # level 1: x_ij = mean + b_j + w_ij, var(b_j) = var_between, var(w_ij) = var_within
  - {kind: continuous, name: x, mean: 0.0, var_between: 0.2, var_within: 1.0}
  # level 2, constant within a group (also: level2_continuous with mean and var)
  - {kind: level2_binary, name: z, p: 0.5}
  # other kinds: binary (p, p_sd), categorical (levels, probs), values (values, per),
  # complement (of), indicator (of, category), group_mean (of), group_centered (of)
gamma:                   # fixed effects, keyed by the column names formulaic gives
  Intercept: 10.0        # gamma_00
  x: 2.0                 # gamma_10
  z: 1.0                 # gamma_01
  x:z: 0.5               # gamma_11, the cross-level interaction
random: [Intercept, x]   # the columns with a random coefficient U_j
T:                       # cov(U_j), rows and columns in the order of random
  - [4.0, 0.5]           # tau0^2, tau10
  - [0.5, 1.0]           # tau10,  tau1^2
sigma2: 9.0              # residual variance sigma^2
u_dist: {kind: normal}   # or {kind: t, df: 5}, {kind: chisq, df: 4}, {kind: discrete};
                         # or per random effect (those left out normal), e.g.
                         # {x: {kind: discrete}}, if x is uncorrelated with the others in T
r_dist: {kind: normal}
group_sizes: 10          # or [8, 12, ...], {kind: poisson, mean: 10},
                         # {kind: uniform, low: 5, high: 15}, {kind: dataset, name: hsb}
"""


def size_message(n_bytes: int | None, what: str = "the spec") -> str:
    """``n_bytes`` None: the size is unknown (a device or a pipe), but over the limit."""
    size = f"{n_bytes} bytes" if n_bytes is not None else f"over {MAX_SPEC_BYTES} bytes"
    return (f"{what} is {size}, more than the limit MAX_SPEC_BYTES = {MAX_SPEC_BYTES} bytes "
            f"({MAX_SPEC_BYTES // 1024} KiB): a spec is a page of text")


def depth_message(where: str = "") -> str:
    return (f"the spec nests lists and mappings deeper than the limit MAX_SPEC_DEPTH = "
            f"{MAX_SPEC_DEPTH} levels{where}")


def _nodes_message() -> str:
    return (f"the spec holds more than the limit MAX_SPEC_NODES = {MAX_SPEC_NODES} values once "
            "its aliases are expanded (a YAML alias counts the whole value it stands for)")


def check_size(text: str) -> None:
    """Refuse text of more than :data:`MAX_SPEC_BYTES` bytes of UTF-8."""
    if len(text) > MAX_SPEC_BYTES:  # at least one byte per character: no need to encode it
        raise ValueError(size_message(None, f"the spec ({len(text)} characters)"))
    n_bytes = len(text.encode("utf-8", "surrogatepass"))
    if n_bytes > MAX_SPEC_BYTES:
        raise ValueError(size_message(n_bytes))


def check_plain(raw: Any) -> None:
    """Refuse parsed JSON nested deeper than :data:`MAX_SPEC_DEPTH` or holding more than
    :data:`MAX_SPEC_NODES` values (JSON has no aliases: this walk is as long as the text)."""
    count = 0

    def visit(value: Any, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_SPEC_NODES:
            raise ValueError(_nodes_message())
        if depth > MAX_SPEC_DEPTH:
            raise ValueError(depth_message())
        if isinstance(value, dict):
            for k, v in value.items():
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(value, list):
            for v in value:
                visit(v, depth + 1)

    visit(raw, 1)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a number (YAML 1.2) as well.

    Nesting deeper than :data:`MAX_SPEC_DEPTH` is refused while the document is
    composed: the composer recurses once per level, so deep nesting would otherwise
    exhaust Python's stack before any check could run."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_SPEC_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ValueError(depth_message(f" (line {line})"))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq",
                                                  "map")}
_INT_TAG = "tag:yaml.org,2002:int"
_MAX_INT_CHARS = 4300
"""Longest whole-number literal read (Python's default limit on converting text to an
int). Any number of more than 309 digits is beyond every float and count; those up to
this length reach the reader, which names the key, and longer ones are refused here."""


def load_yaml(text: str) -> Any:
    """Parse YAML text as data only, refusing with a ValueError before anything is
    constructed: text over :data:`MAX_SPEC_BYTES`; nesting over :data:`MAX_SPEC_DEPTH`;
    more than :data:`MAX_SPEC_NODES` values with the aliases expanded (an alias bomb) or
    an alias inside the value it names (an endless expansion); any node whose tag is not a
    plain scalar, list or mapping (``!!python/object``, ``!!binary``, custom tags, dates),
    named by its key. The document is composed once and constructed from that."""
    if not isinstance(text, str):
        raise ValueError(f"spec text must be a string, got {type(text).__name__}")
    check_size(text)
    loader = _SpecLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise ValueError(f"the spec is not valid YAML: {' '.join(str(exc).split())}"
                             ) from None
        if node is None:
            raise ValueError("the spec file is empty")
        _check_expansion(node)
        _check_nodes(node, "")
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise ValueError(f"the spec is not valid YAML: {' '.join(str(exc).split())}"
                             ) from None
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a composed YAML document whose aliases expand beyond the limits.

    An alias is the very node of its anchor, so the document is a graph, and its
    expansion (what a walk over the constructed data visits) can be exponentially larger
    than the text. Each node's expanded size and height are computed once and reused
    wherever an alias repeats it, so this costs time in the size of the text, not of the
    expansion. Refused: more than :data:`MAX_SPEC_NODES` values in the expansion, nesting
    beyond :data:`MAX_SPEC_DEPTH`, and a node reachable from itself (``a: &a [*a]``).
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    open_nodes: set[int] = set()  # the nodes being measured, from the root down

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key not in measured:
            line = f" (line {node.start_mark.line + 1})"
            if depth > MAX_SPEC_DEPTH:
                raise ValueError(depth_message(line))
            if key in open_nodes:
                raise ValueError("the spec has a YAML alias inside the value it names"
                                 f"{line}: its expansion never ends")
            open_nodes.add(key)
            count, height = 1, 1
            for child in _children(node):
                n, h = visit(child, depth + 1)
                count, height = count + n, max(height, h + 1)
                if count > MAX_SPEC_NODES:
                    raise ValueError(_nodes_message())
            open_nodes.discard(key)
            measured[key] = (count, height)
        count, height = measured[key]
        if depth + height - 1 > MAX_SPEC_DEPTH:
            raise ValueError(depth_message(f" (line {node.start_mark.line + 1})"))
        return count, height

    visit(root, 1)


def _check_nodes(node: yaml.Node, path: str) -> None:
    where = f"spec key {path!r}" if path else "the spec"
    if node.tag not in _PLAIN_TAGS:
        raise ValueError(f"{where} has the YAML tag {node.tag!r}: a spec file is data, not code, "
                         "and tags that build Python objects (or any other objects) are refused")
    if node.tag == _INT_TAG and len(node.value) > _MAX_INT_CHARS:
        raise ValueError(f"{where} is a whole number of {len(node.value)} characters, too large "
                         "for any number in a spec (a float holds at most about 1.8e308, a "
                         "count at most 2**63 - 1)")
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else "?"
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(knode, yaml.ScalarNode) or knode.tag not in _PLAIN_TAGS:
                raise ValueError(f"{where} has a key that is not a plain string ({knode.tag})")
            if key in seen:
                raise ValueError(f"{where} repeats the key {key!r}")
            seen.add(key)
            _check_nodes(vnode, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_nodes(item, f"{path}[{i}]")


def _type_name(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "null"}.get(type(value),
                                                                        type(value).__name__)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` (plain data) against the annotation ``tp``; name ``key`` if not."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"spec key {key!r} must be a number, got {value!r} "
                             f"({_type_name(value)})")
        try:
            return float(value)
        except OverflowError:  # a whole number beyond the largest float, about 1.8e308
            raise ValueError(f"spec key {key!r} must be a finite number, got a whole number "
                             f"of {digits(value)} digits, too large for a float") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"spec key {key!r} must be a whole number, got {value!r} "
                             f"({_type_name(value)})")
        if abs(value) > MAX_COUNT:
            raise ValueError(f"spec key {key!r} must be a whole number of at most 2**63 - 1, "
                             f"got one of {digits(value)} digits")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"spec key {key!r} must be a string, got {value!r} "
                             f"({_type_name(value)})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"spec key {key!r} must be true or false, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"spec key {key!r} must be a list, got {value!r} "
                             f"({_type_name(value)})")
        (item,) = (a for a in typing.get_args(tp) if a is not Ellipsis)
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"no reader for {tp!r}")  # pragma: no cover - a programming error


def _build(registry: dict[str, type], raw: Any, key: str, what: str) -> Any:
    """A small dataclass from ``{kind: ..., field: value, ...}``, strictly."""
    if not isinstance(raw, dict):
        raise ValueError(f"spec key {key!r} must be a mapping with a 'kind' ({what}), got "
                         f"{raw!r}")
    kind = raw.get("kind")
    if kind not in registry:
        raise ValueError(f"spec key {key + '.kind'!r} must be one of {', '.join(registry)}, "
                         f"got {kind!r}")
    cls = registry[kind]
    hints = typing.get_type_hints(cls)
    init = {f.name: f for f in fields(cls) if f.init}
    for k in raw:
        if k != "kind" and k not in init:
            raise ValueError(f"unknown key {key + '.' + str(k)!r} for a {kind} {what}; allowed: "
                             f"{', '.join(['kind', *init])}")
    for name, f in init.items():
        if name not in raw and f.default is MISSING:
            raise ValueError(f"spec key {key!r} ({kind} {what}) lacks the key {name!r}")
    kwargs = {k: _coerce(v, hints[k], f"{key}.{k}") for k, v in raw.items() if k != "kind"}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ValueError(f"spec key {key!r}: {exc}") from None


def _read_distribution(raw: Any, key: str) -> Any:
    """A distribution ``{kind: ..., ...}``; for ``u_dist`` also a mapping of random-effect
    names to distributions (told apart by ``kind``: a string in the first, absent or a
    mapping, for a random effect called ``kind``, in the second)."""
    if key == "u_dist" and isinstance(raw, dict) and raw and not isinstance(raw.get("kind"),
                                                                            str):
        return {_coerce(name, str, key): _build(DISTRIBUTIONS, value, f"{key}.{name}",
                                                "distribution")
                for name, value in raw.items()}
    return _build(DISTRIBUTIONS, raw, key, "distribution")


def _read_sizes(raw: Any) -> GroupSizes:
    key = "group_sizes"
    if isinstance(raw, bool):
        raise ValueError(f"spec key {key!r} must be a whole number, a list or a mapping, "
                         f"got {raw!r}")
    if isinstance(raw, int):
        try:
            return group_sizes(raw)
        except ValueError as exc:
            raise ValueError(f"spec key {key!r}: {exc}") from None
    if isinstance(raw, list):
        return _build(SIZES, {"kind": "list", "sizes": raw}, key, "group-size rule")
    if isinstance(raw, dict) and raw.get("kind") == "dataset":
        extra = set(raw) - {"kind", "name", "resample"}
        if extra:
            raise ValueError(f"unknown key {key + '.' + sorted(extra)[0]!r}; allowed: kind, "
                             "name, resample")
        name = _coerce(raw.get("name"), str, f"{key}.name")
        resample = _coerce(raw.get("resample", False), bool, f"{key}.resample")
        try:
            return SizeList.from_dataset(name, resample=resample)
        except ValueError as exc:
            raise ValueError(f"spec key {key + '.name'!r}: {exc}") from None
    return _build(SIZES, raw, key, "group-size rule")


_SPEC_KEYS = ("response", "group", "predictors", "gamma", "random", "T", "sigma2", "u_dist",
              "r_dist", "group_sizes", "n_groups")
_REQUIRED = ("gamma", "random", "T", "sigma2")


def looks_like_path(text: str) -> bool:
    """A one-line string that names an existing file or ends in a spec file's suffix."""
    text = text.strip()
    if not text or "\n" in text:
        return False
    return text.lower().endswith((".yaml", ".yml", ".json")) or Path(text).is_file()


def spec_kwargs(raw: Any) -> dict[str, Any]:
    """The keyword arguments of ``ModelSpec`` from plain data (a spec file read), refusing
    unknown keys and wrong types with a ValueError that names the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"a spec must be a mapping of keys to values, got {_type_name(raw)}")
    for k in raw:
        if k not in _SPEC_KEYS:
            raise ValueError(f"unknown key {k!r} in the spec; allowed keys: "
                             f"{', '.join(_SPEC_KEYS)}")
    for k in _REQUIRED:
        if k not in raw:
            raise ValueError(f"the spec lacks the key {k!r}")
    kw: dict[str, Any] = {}
    for k in ("response", "group"):
        if k in raw:
            kw[k] = _coerce(raw[k], str, k)
    preds = raw.get("predictors", [])
    if preds is None:
        preds = []
    if not isinstance(preds, list):
        raise ValueError(f"spec key 'predictors' must be a list, got {_type_name(preds)}")
    kw["predictors"] = tuple(_build(PREDICTORS, p, f"predictors[{i}]", "predictor")
                             for i, p in enumerate(preds))
    gamma = raw["gamma"]
    if not isinstance(gamma, dict):
        raise ValueError(f"spec key 'gamma' must be a mapping of column names to numbers, got "
                         f"{_type_name(gamma)}")
    kw["gamma"] = {_coerce(k, str, "gamma"): _coerce(v, float, f"gamma.{k}")
                   for k, v in gamma.items()}
    random = raw["random"]
    if isinstance(random, str):
        random = [random]
    kw["random"] = _coerce(random, tuple[str, ...], "random")
    T = raw["T"]
    if isinstance(T, dict):
        extra = set(T) - {"sd", "corr"}
        if extra or "sd" not in T:
            raise ValueError("spec key 'T' must be a matrix (a list of rows) or a mapping with "
                             "'sd' and optionally 'corr'")
        sd = _coerce(T["sd"], tuple[float, ...], "T.sd")
        corr = T.get("corr")
        if isinstance(corr, list):
            corr = [_coerce(row, tuple[float, ...], f"T.corr[{i}]") for i, row in enumerate(corr)]
        elif corr is not None:
            corr = _coerce(corr, float, "T.corr")
        try:
            kw["T"] = T_from_sd_corr(sd, corr)
        except ValueError as exc:
            raise ValueError(f"spec key 'T': {exc}") from None
    elif isinstance(T, list):
        rows = [_coerce(row if isinstance(row, list) else [row], tuple[float, ...], f"T[{i}]")
                for i, row in enumerate(T)]
        if len({len(r) for r in rows}) > 1:
            raise ValueError("spec key 'T': the rows of T have different lengths")
        kw["T"] = np.array(rows, dtype=float)
    else:
        kw["T"] = _coerce(T, float, "T")
    kw["sigma2"] = _coerce(raw["sigma2"], float, "sigma2")
    for k in ("u_dist", "r_dist"):
        if k in raw:
            kw[k] = _read_distribution(raw[k], k)
    if raw.get("group_sizes") is not None:
        kw["group_sizes"] = _read_sizes(raw["group_sizes"])
    if raw.get("n_groups") is not None:
        kw["n_groups"] = _coerce(raw["n_groups"], int, "n_groups")
    return kw


def load_json(text: str) -> Any:
    """Plain data from JSON spec text: a repeated key, text beyond :data:`MAX_SPEC_BYTES`,
    nesting beyond :data:`MAX_SPEC_DEPTH` and more than :data:`MAX_SPEC_NODES` values are
    refused with a ValueError."""

    def pairs(items: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in items]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"the spec repeats the key {dup[0]!r}")
        return dict(items)

    if not isinstance(text, str):
        raise ValueError(f"spec text must be a string, got {type(text).__name__}")
    check_size(text)
    try:
        raw = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the spec is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise ValueError(depth_message()) from None
    check_plain(raw)
    return raw


def read_spec_file(path: Path) -> str:
    """The text of a spec file (UTF-8, newlines normalised). A file larger than
    :data:`MAX_SPEC_BYTES` is refused with a ValueError after reading at most that many
    bytes (so a device or a growing file is refused too)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            size = os.fstat(fh.fileno()).st_size  # 0 for a device or a pipe
            raise ValueError(size_message(size if size > MAX_SPEC_BYTES else None,
                                           f"the spec file {str(path)!r}"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the spec file {str(path)!r} is not UTF-8 text (byte "
                         f"{exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
