"""The package's import structure, read statically from its source: no private name
crosses a module boundary, the modules' top-level imports form no cycle, and imports
inside functions are only of the dependencies loaded on demand."""

from __future__ import annotations

import ast
from pathlib import Path

import mlmsim

ROOT = Path(mlmsim.__file__).parent


def _modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(f.read_text(), filename=str(f))
    return out


MODULES = _modules()
PACKAGES = {m for m in MODULES if (ROOT.parent / m.replace(".", "/") / "__init__.py").exists()}


def _source(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module that ``from ... import`` in ``module`` reads."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if module in PACKAGES else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _private_crossings(modules: dict[str, ast.Module]) -> list[tuple[str, str, str]]:
    """(importer, source, name) for each private name (``_x``, not ``__x__``) that a module
    imports from another of the package's modules, anywhere in its code."""
    out = []
    for module, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = _source(module, node)
                out += [(module, src, a.name) for a in node.names
                        if src.split(".")[0] == "mlmsim" and src != module
                        and a.name.startswith("_") and not a.name.endswith("__")]
    return out


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules an import statement in ``module`` names (``from a import b``: a.b where
    that is a module, else a)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    src = _source(module, node)
    return {f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src for a in node.names}


def _top_level_imports(module: str, tree: ast.Module) -> set[str]:
    """The package's modules that ``module`` imports when it is imported (not inside a
    function, not under ``if TYPE_CHECKING``), with the packages that hold them."""
    found: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.If | ast.Try):
            todo.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found |= _imported(module, node)
    # importing a.b.c runs the packages a and a.b first, but for those the importer is in
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    found |= parents - ancestors
    return {m for m in found if m in MODULES and m != module}


def _inner_imports(module: str, tree: ast.Module) -> set[str]:
    """The package's modules that ``module`` imports inside its functions."""
    found: set[str] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found |= _imported(module, node)
    return {m for m in found if m in MODULES and m != module}


def _inner_third_party(tree: ast.Module) -> set[str]:
    """The top-level names of what ``tree`` imports inside its functions, outside the
    package (relative imports aside)."""
    found: set[str] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    found.add((node.module or "").split(".")[0])
    return found - {"mlmsim"}


#: what is imported where it is first needed, for what only some runs use: figures
#: (matplotlib, seaborn), worker processes (joblib), progress bars (tqdm) and the dask
#: extra (distributed)
ON_DEMAND = {"matplotlib", "seaborn", "joblib", "tqdm", "distributed"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search meets in ``graph`` (module -> modules it imports)."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_private_name_is_imported_from_another_module():
    assert _private_crossings(MODULES) == []


def test_the_top_level_imports_form_no_cycle():
    graph = {m: _top_level_imports(m, t) for m, t in MODULES.items()}
    assert "mlmsim.engine.optimize" in graph["mlmsim.engine.fit"]   # the graph is read
    assert _cycles(graph) == []


def test_no_import_of_the_package_inside_a_function():
    """The package's own modules are imported at the top, which the no-cycle test then
    covers."""
    inner = sorted((m, n) for m, t in MODULES.items() for n in _inner_imports(m, t))
    assert inner == [], "import at the top of the module (untangle the cycle if there is one)"


def test_imports_inside_functions_are_the_on_demand_dependencies():
    """Inside a function only what some runs need and others never load (ON_DEMAND); the
    rest (numpy, pandas, scipy, pyarrow, the standard library) at the top of the module."""
    inner = {(m, n) for m, t in MODULES.items() for n in _inner_third_party(t)}
    assert sorted((m, n) for m, n in inner if n not in ON_DEMAND) == []
    assert {n for _, n in inner} == ON_DEMAND  # each is still loaded on demand somewhere


def test_the_checks_find_what_they_look_for():
    planted = {"mlmsim.simstudy.study": ast.parse("from ..engine.fit import _hidden\n"),
               "mlmsim.engine.fit": ast.parse("def f():\n    from .result import _x\n")}
    assert _private_crossings(planted) == [
        ("mlmsim.simstudy.study", "mlmsim.engine.fit", "_hidden"),
        ("mlmsim.engine.fit", "mlmsim.engine.result", "_x")]
    assert _top_level_imports("mlmsim.engine.chunked", ast.parse(
        "from mlmsim.simstudy.storage import MANIFEST\nfrom . import tolerances\n"
        "def f():\n    import mlmsim.cli\n")) == {
            "mlmsim.simstudy", "mlmsim.simstudy.storage", "mlmsim.engine.tolerances"}
    assert _inner_imports("mlmsim.engine.chunked", ast.parse(
        "import numpy\ndef f():\n    from ..progress import say\n    import scipy\n")) == {
            "mlmsim.progress"}
    assert _inner_third_party(ast.parse(
        "import numpy\ndef f():\n    from ..progress import say\n    import scipy.stats\n"
        "    from mlmsim import fit\n    from pyarrow import parquet\n")) == {"scipy",
                                                                           "pyarrow"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
