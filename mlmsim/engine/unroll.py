"""q-specialised kernels, generated from the general code (a code template keyed on q).

The per-group algebra of the engine is written once, for any number q of random
effects, as loops over ``range(q)``. For q = 1 and 2 (random intercept; intercept and
slope: most models of the field) a loop-free copy is much faster: every q x q block then
lives in registers. :func:`specialise` makes that copy from the general function's own
source, so that there is nothing to keep in step by hand:

1. the name ``q`` (bound by ``q = q_of(qc, ...)``), or a size parameter such as ``n`` of
   the linear-algebra primitives, becomes the constant;
2. every ``for`` loop over a ``range`` whose bounds are then constant is unrolled, and
   constant expressions (``a == b``, ``1.0 if a == b else 0.0``, ``if q == 2:``) fold;
3. within straight-line code, an array element that was just stored or loaded is read
   back from a local variable instead of memory (the kernels' arrays never alias, which
   the compiler cannot know);
4. calls of small primitives listed as ``inline`` (a matrix product with explicit sizes,
   a triangular solve, the LDL' factorisation) are replaced by their bodies first, so that
   their loops unroll too: a call made as a statement, or ``targets = f(...)`` where f
   returns once, at its end;
5. small local arrays of constant shape, used only element by element, become scalars;
6. a call that passes the token ``qc`` or the size as a constant goes to the callee's
   specialised version (``rename``), and the dispatch statement (an ``if`` that tests
   ``qc``) is dropped.

The kernel that compiled code calls is made by :func:`by_q` from the general function
and its copy: it runs the copy where ``qc``, the token of
:func:`mlmsim.engine.gls.qtoken`, is that of q = 2 (a tuple whose length numba knows when
it compiles), and the general function otherwise. The choice is made when numba types the
call, so only the function that runs is compiled (a branch on ``len(qc)`` at the top of
the general function would cost nothing at run time, but numba would compile the general
body, and all it calls, as well). Tests compare every specialised kernel with the general
one (tests/engine/test_kernels.py).
"""

from __future__ import annotations

import ast
import copy
import inspect
import itertools
import textwrap

from numba import njit, types
from numba.core.imputils import lower_builtin
from numba.core.typing.templates import AbstractTemplate, infer_global, signature

__all__ = ["specialise", "source_of", "by_q"]


_PURE = {"abs", "min", "max", "float", "int", "len", "range"}


def _is_const(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant)


class _Fold(ast.NodeTransformer):
    """Substitute constants for names and fold constant expressions."""

    def __init__(self, consts: dict):
        self.consts = consts

    def visit_Name(self, node: ast.Name):
        if isinstance(node.ctx, ast.Load) and node.id in self.consts:
            return ast.copy_location(ast.Constant(self.consts[node.id]), node)
        return node

    def visit_BinOp(self, node: ast.BinOp):
        self.generic_visit(node)
        if _is_const(node.left) and _is_const(node.right):
            try:
                v = eval(compile(ast.Expression(node), "<fold>", "eval"))  # noqa: S307
            except Exception:
                return node
            return ast.copy_location(ast.Constant(v), node)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp):
        self.generic_visit(node)
        if _is_const(node.operand):
            v = eval(compile(ast.Expression(node), "<fold>", "eval"))  # noqa: S307
            return ast.copy_location(ast.Constant(v), node)
        return node

    def visit_Compare(self, node: ast.Compare):
        self.generic_visit(node)
        if _is_const(node.left) and all(_is_const(c) for c in node.comparators):
            v = eval(compile(ast.Expression(node), "<fold>", "eval"))  # noqa: S307
            return ast.copy_location(ast.Constant(v), node)
        return node

    def visit_BoolOp(self, node: ast.BoolOp):
        self.generic_visit(node)
        if all(_is_const(v) for v in node.values):
            v = eval(compile(ast.Expression(node), "<fold>", "eval"))  # noqa: S307
            return ast.copy_location(ast.Constant(v), node)
        return node

    def visit_IfExp(self, node: ast.IfExp):
        self.generic_visit(node)
        if _is_const(node.test):
            return node.body if node.test.value else node.orelse
        return node

    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        if (isinstance(node.func, ast.Name) and node.func.id in ("max", "min", "abs")
                and node.args and all(_is_const(a) for a in node.args) and not node.keywords):
            v = {"max": max, "min": min, "abs": abs}[node.func.id](*(a.value for a in node.args))
            return ast.copy_location(ast.Constant(v), node)
        return node


def _jumps_out(body: list[ast.stmt]) -> bool:
    """A break or continue of this loop (not of a loop nested in it)."""
    for stmt in body:
        for node in _walk_same_loop(stmt):
            if isinstance(node, (ast.Break, ast.Continue)):
                return True
    return False


def _walk_same_loop(node: ast.AST):
    yield node
    if isinstance(node, (ast.For, ast.While)):
        for s in node.orelse:
            yield from _walk_same_loop(s)
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk_same_loop(child)


class _Rename(ast.NodeTransformer):
    def __init__(self, names: dict):
        self.names = names

    def visit_Name(self, node: ast.Name):
        if node.id in self.names:
            return ast.copy_location(ast.Name(self.names[node.id], node.ctx), node)
        return node


def _unroll(body: list[ast.stmt], consts: dict, drop_dispatch: bool) -> list[ast.stmt]:
    """Fold constants in a statement list and unroll the loops with constant ranges."""
    out: list[ast.stmt] = []
    for stmt in body:
        stmt = _Fold(consts).visit(copy.deepcopy(stmt))
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(
                stmt.targets[0], ast.Name) and stmt.targets[0].id in consts:
            continue  # q = q_of(qc, ...): q is the constant now
        if isinstance(stmt, ast.If):
            test = stmt.test
            if drop_dispatch and any(isinstance(n, ast.Name) and n.id == "qc"
                                     for n in ast.walk(test)):
                continue
            if _is_const(test):
                out.extend(_unroll(stmt.body if test.value else stmt.orelse, consts,
                                   drop_dispatch))
                continue
            stmt.body = _unroll(stmt.body, consts, drop_dispatch) or [ast.Pass()]
            stmt.orelse = _unroll(stmt.orelse, consts, drop_dispatch)
            out.append(stmt)
            continue
        if isinstance(stmt, ast.For):
            it = stmt.iter
            if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
                    and it.func.id == "range" and all(_is_const(a) for a in it.args)
                    and isinstance(stmt.target, ast.Name) and not stmt.orelse
                    and not _jumps_out(stmt.body)):
                for v in range(*(a.value for a in it.args)):
                    inner = dict(consts)
                    inner[stmt.target.id] = v
                    out.extend(_unroll(stmt.body, inner, drop_dispatch))
                continue
            if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name)
                    and it.func.id == "range" and len(it.args) == 2
                    and isinstance(stmt.target, ast.Name) and not stmt.orelse
                    and not _jumps_out(stmt.body)
                    and ast.dump(it.args[1]) == ast.dump(ast.BinOp(
                        it.args[0], ast.Add(), ast.Constant(1)))
                    and isinstance(it.args[0], ast.Name)
                    and it.args[0].id not in _writes(stmt)[2]):
                # range(e, e + 1): one pass with the target bound to e
                sub = _Rename({stmt.target.id: it.args[0].id})
                out.extend(_unroll([sub.visit(copy.deepcopy(b)) for b in stmt.body], consts,
                                   drop_dispatch))
                continue
            stmt.body = _unroll(stmt.body, consts, drop_dispatch) or [ast.Pass()]
            out.append(stmt)
            continue
        if isinstance(stmt, ast.While):
            stmt.body = _unroll(stmt.body, consts, drop_dispatch) or [ast.Pass()]
            out.append(stmt)
            continue
        out.append(stmt)
    return out


class _Forward:
    """Store-to-load forwarding and load reuse of array elements in straight-line code.

    An element ``X[i, j]`` stored or loaded once is held in a local until ``X`` may be
    written otherwise (a store with other indices, a call that takes ``X``, a nested
    block that writes it) or a name in its indices is rebound."""

    def __init__(self):
        self.count = 0

    def block(self, body: list[ast.stmt]) -> list[ast.stmt]:
        known: dict[str, tuple[str, str, set]] = {}
        out: list[ast.stmt] = []
        for stmt in body:
            if isinstance(stmt, (ast.For, ast.While, ast.If)):
                arrays, stores, names = _writes(stmt)
                _forget(known, arrays, stores, names)
                if isinstance(stmt, ast.If):
                    stmt.test = _Replace(known).visit(stmt.test)
                    stmt.body = self.block(stmt.body)
                    stmt.orelse = self.block(stmt.orelse)
                elif isinstance(stmt, ast.For):
                    stmt.iter = _Replace(known).visit(stmt.iter)
                    stmt.body = self.block(stmt.body)
                    for moved in _hoist_loop_loads(stmt):
                        hit = known.get(ast.dump(moved.value))
                        if hit is not None:  # known before the loop: no load at all
                            moved.value = ast.Name(hit[0], ast.Load())
                        out.append(moved)
                else:
                    stmt.body = self.block(stmt.body)
                _forget(known, arrays, stores, names)
                out.append(stmt)
                continue
            # loads worth a local: unconditional subscripts of names with simple indices
            for sub in _plain_loads(stmt):
                key = ast.dump(sub)
                if key not in known:
                    local = self._new()
                    out.append(ast.Assign([ast.Name(local, ast.Store())], copy.deepcopy(sub),
                                          lineno=0))
                    known[key] = (local, sub.value.id, _index_names(sub), sub)
            stmt = _Replace(known).visit(stmt)
            arrays, stores, names = _writes(stmt)
            stored = None
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                    and _simple_subscript(stmt.targets[0])):
                stored = stmt.targets[0]
            _forget(known, arrays, stores, names)
            if stored is not None:
                local = self._new()
                out.append(ast.Assign([ast.Name(local, ast.Store())], stmt.value, lineno=0))
                stmt.value = ast.Name(local, ast.Load())
                load = _as_load(stored)
                known[ast.dump(load)] = (local, stored.value.id, _index_names(stored), load)
            out.append(stmt)
        return out

    def _new(self) -> str:
        self.count += 1
        return f"_e{self.count}"


def _hoist_loop_loads(loop: ast.For) -> list[ast.stmt]:
    """Loads that the loop repeats unchanged, moved before it: ``_eN = X[...]`` at the top
    level of the body where the loop writes no element of X (nor passes X to a call) and
    binds no name of the indices."""
    arrays, stores, names = _writes(loop)
    written = arrays | {st.value.id for st in stores} | names
    keep, moved = [], []
    for stmt in loop.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id.startswith("_e")
                and _simple_subscript(stmt.value) and stmt.value.value.id not in written
                and not (_index_names(stmt.value) & written)):
            moved.append(stmt)
        else:
            keep.append(stmt)
    loop.body = keep or [ast.Pass()]
    return moved


def _as_load(sub: ast.Subscript) -> ast.Subscript:
    s = copy.deepcopy(sub)
    s.ctx = ast.Load()
    return s


def _simple_subscript(node: ast.AST) -> bool:
    """X[i, j, ...] with X a name and every index a name or an integer constant."""
    if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)):
        return False
    idx = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    return all(isinstance(i, ast.Name) or (isinstance(i, ast.Constant)
                                           and isinstance(i.value, int)) for i in idx)


def _index_names(sub: ast.Subscript) -> set:
    return {n.id for n in ast.walk(sub.slice) if isinstance(n, ast.Name)}


def _plain_loads(stmt: ast.stmt) -> list[ast.Subscript]:
    """Simple subscript loads that are evaluated whenever ``stmt`` is (not inside the
    branches of a conditional expression or a short-circuit operator)."""
    found: list[ast.Subscript] = []
    for node in ast.walk(stmt):
        # a call may write an array before a later operand is read: keep the order
        if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "math") and not (
                isinstance(node.func, ast.Name) and node.func.id in _PURE):
            return found

    def visit(node):
        if isinstance(node, (ast.IfExp, ast.BoolOp, ast.Lambda)):
            if isinstance(node, ast.IfExp):
                visit(node.test)
            return
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                _simple_subscript(node):
            found.append(node)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.Expr, ast.Return)):
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Subscript):
            visit(stmt.value)
        elif stmt.value is not None:
            visit(stmt.value)
    return found


class _Replace(ast.NodeTransformer):
    def __init__(self, known):
        self.known = known

    def visit_Subscript(self, node: ast.Subscript):
        if isinstance(node.ctx, ast.Load):
            hit = self.known.get(ast.dump(node))
            if hit is not None:
                return ast.copy_location(ast.Name(hit[0], ast.Load()), node)
        self.generic_visit(node)
        return node


def _writes(stmt: ast.AST) -> tuple[set, list, set]:
    """What a statement may write: whole arrays (passed to a call, or stored with other
    than simple indices), simple element stores, and the names it binds."""
    arrays: set = set()
    stores: list = []
    names: set = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            if _simple_subscript(node):
                stores.append(node)
            else:
                base = node.value
                while isinstance(base, ast.Subscript):
                    base = base.value
                if isinstance(base, ast.Name):
                    arrays.add(base.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Subscript):
            if _simple_subscript(node.target):
                stores.append(node.target)
            elif isinstance(node.target.value, ast.Name):
                arrays.add(node.target.value.id)
        elif isinstance(node, ast.Call):
            for a in node.args:
                for n in ast.walk(a):
                    if isinstance(n, ast.Name):
                        arrays.add(n.id)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return arrays, stores, names


def _index(sub: ast.Subscript) -> list:
    return sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]


def _distinct(a: ast.Subscript, b: ast.Subscript) -> bool:
    """Two simple subscripts of one array that cannot be the same element: some index is
    a different integer constant in each."""
    ia, ib = _index(a), _index(b)
    if len(ia) != len(ib):
        return False
    return any(isinstance(x, ast.Constant) and isinstance(y, ast.Constant)
               and x.value != y.value for x, y in zip(ia, ib, strict=True))


def _forget(known: dict, arrays: set, stores: list, names: set) -> None:
    """Drop what a write may have changed (see :func:`_writes`)."""
    drop = []
    for key, (_, arr, idx, sub) in known.items():
        if arr in arrays or arr in names or idx & names:
            drop.append(key)
            continue
        for st in stores:
            if st.value.id == arr and not _distinct(st, sub):
                drop.append(key)
                break
    for key in drop:
        del known[key]


def _small_allocation(stmt: ast.stmt):
    """(name, shape) for ``X = np.empty(shape)`` / ``np.zeros(shape)`` with a constant shape."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Call)):
        return None
    f = stmt.value.func
    if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
            and f.value.id == "np" and f.attr in ("empty", "zeros")
            and len(stmt.value.args) == 1 and not stmt.value.keywords):
        return None
    shape = stmt.value.args[0]
    dims = shape.elts if isinstance(shape, ast.Tuple) else [shape]
    if not all(isinstance(d, ast.Constant) and isinstance(d.value, int) for d in dims):
        return None
    return stmt.targets[0].id, tuple(d.value for d in dims)


def _split_tuple_assignments(body: list[ast.stmt]) -> list[ast.stmt]:
    """``a, b = x, y`` as ``a = x; b = y`` where the values are allocations (so that each
    is seen by :func:`_scalars`)."""
    out = []
    for stmt in body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Tuple) and isinstance(stmt.value, ast.Tuple)
                and len(stmt.targets[0].elts) == len(stmt.value.elts)
                and all(isinstance(t, ast.Name) for t in stmt.targets[0].elts)
                and all(_small_allocation(ast.Assign([ast.Name("_", ast.Store())], v, lineno=0))
                        for v in stmt.value.elts)):
            for t, v in zip(stmt.targets[0].elts, stmt.value.elts, strict=True):
                out.append(ast.Assign([ast.Name(t.id, ast.Store())], v, lineno=0))
        else:
            out.append(stmt)
    return out


def _scalars(body: list[ast.stmt]) -> list[ast.stmt]:
    """Scalar replacement of small local arrays: an array allocated with a constant shape
    whose every use is an element at constant indices becomes one local per element."""
    body = _split_tuple_assignments(body)
    wrapper = ast.Module(body=body, type_ignores=[])
    allocs: dict[str, list] = {}
    for node in ast.walk(wrapper):
        if isinstance(node, ast.stmt):
            hit = _small_allocation(node)
            if hit is not None:
                allocs.setdefault(hit[0], []).append(hit[1] if node in body else None)
    names = {}
    for name, shapes in allocs.items():
        if len(shapes) != 1 or shapes[0] is None:
            continue
        ok = True
        for node in ast.walk(wrapper):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and \
                    node.value.id == name:
                idx = _index(node)
                if not all(isinstance(i, ast.Constant) and isinstance(i.value, int)
                           for i in idx):
                    ok = False
        uses = sum(1 for n in ast.walk(wrapper) if isinstance(n, ast.Name) and n.id == name)
        direct = sum(1 for n in ast.walk(wrapper) if isinstance(n, ast.Subscript)
                     and isinstance(n.value, ast.Name) and n.value.id == name)
        if ok and uses == direct + 1:
            names[name] = shapes[0]
    if not names:
        return body

    class Sub(ast.NodeTransformer):
        def visit_Subscript(self, node):
            if isinstance(node.value, ast.Name) and node.value.id in names:
                label = "_".join(str(i.value) for i in _index(node))
                return ast.copy_location(ast.Name(f"{node.value.id}_{label}", node.ctx), node)
            self.generic_visit(node)
            return node

    out = []
    for stmt in body:
        hit = _small_allocation(stmt)
        if hit is not None and hit[0] in names:
            for idx in itertools.product(*(range(d) for d in hit[1])):
                label = "_".join(str(i) for i in idx)
                out.append(ast.Assign([ast.Name(f"{hit[0]}_{label}", ast.Store())],
                                      ast.Constant(0.0), lineno=0))
            continue
        out.append(Sub().visit(stmt))
    return out


def _hoist_invariants(fdef: ast.FunctionDef, body: list[ast.stmt]) -> list[ast.stmt]:
    """Loads of a parameter array at constant indices, where the function never writes
    that array (no store, never passed to a call) nor rebinds its name, are read once at
    the start (e.g. Lambda's elements in the loop over groups)."""
    params = {a.arg for a in fdef.args.args}
    written: set = set()
    for stmt in body:
        arrays, stores, names = _writes(stmt)
        written |= arrays | names | {st.value.id for st in stores}
    found: dict[str, ast.Subscript] = {}
    for stmt in body:
        for node in ast.walk(stmt):
            if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
                    and isinstance(node.value, ast.Name) and node.value.id in params
                    and node.value.id not in written
                    and all(isinstance(i, ast.Constant) for i in _index(node))):
                found.setdefault(ast.dump(node), node)
    if not found:
        return body
    names = {key: f"_h{i}" for i, key in enumerate(found)}

    class Sub(ast.NodeTransformer):
        def visit_Subscript(self, node):
            key = ast.dump(node)
            if isinstance(node.ctx, ast.Load) and key in names:
                return ast.copy_location(ast.Name(names[key], ast.Load()), node)
            self.generic_visit(node)
            return node

    head = [ast.Assign([ast.Name(names[k], ast.Store())], copy.deepcopy(n), lineno=0)
            for k, n in found.items()]
    return head + [Sub().visit(stmt) for stmt in body]


class _MergeSubscripts(ast.NodeTransformer):
    """X[i][a, b] -> X[i, a, b] (left by substituting X[i] for a parameter)."""

    def visit_Subscript(self, node: ast.Subscript):
        self.generic_visit(node)
        if isinstance(node.value, ast.Subscript):
            inner = node.value
            return ast.copy_location(ast.Subscript(
                inner.value, ast.Tuple(_index(inner) + _index(node), ast.Load()), node.ctx),
                node)
        return node


class _Arguments(ast.NodeTransformer):
    """A primitive's parameters replaced by the call's arguments, its own names tagged
    (so that they cannot meet the caller's)."""

    def __init__(self, args: dict, local: set, tag: str):
        self.args, self.local, self.tag = args, local, tag

    def visit_Name(self, node: ast.Name):
        if node.id in self.args:
            return copy.deepcopy(self.args[node.id])
        if node.id in self.local:
            return ast.copy_location(ast.Name(node.id + self.tag, node.ctx), node)
        return node


def _inline(body: list[ast.stmt], inline: dict) -> list[ast.stmt]:
    """Replace statements ``f(args)`` for f in ``inline`` (name -> function) by f's body
    with its parameters replaced by the arguments (which must have no side effects)."""
    out = []
    for stmt in body:
        call = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id in inline):
            py = getattr(inline[call.func.id], "py_func", inline[call.func.id])
            fdef = ast.parse(textwrap.dedent(inspect.getsource(py))).body[0]
            params = [a.arg for a in fdef.args.args]
            args = dict(zip(params, call.args, strict=True))
            inner = fdef.body[1:] if isinstance(fdef.body[0], ast.Expr) else fdef.body
            returns = [n for s in inner for n in ast.walk(s) if isinstance(n, ast.Return)]
            if isinstance(stmt, ast.Assign):
                # targets = f(...): f must return once, at its end
                if len(returns) != 1 or inner[-1] is not returns[0]:
                    raise ValueError(f"{call.func.id} cannot be inlined in an assignment")
                inner = inner[:-1]
            elif returns:
                raise ValueError(f"{call.func.id} returns a value; inline it as f(...) only "
                                 "in an assignment")

            local = {n.id for s in inner for n in ast.walk(s)
                     if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            sub = _Arguments(args, local, f"_in{len(out)}")
            out.extend(_MergeSubscripts().visit(sub.visit(copy.deepcopy(s))) for s in inner)
            if isinstance(stmt, ast.Assign):
                value = _MergeSubscripts().visit(sub.visit(copy.deepcopy(returns[0].value)))
                out.append(ast.Assign(stmt.targets, value, lineno=0))
            continue
        for field in ("body", "orelse"):
            if isinstance(getattr(stmt, field, None), list):
                setattr(stmt, field, _inline(getattr(stmt, field), inline))
        out.append(stmt)
    return out


def source_of(func, consts: dict, name: str, rename: dict, inline: dict | None = None) -> str:
    """The source of the specialised copy of the (numba-compiled or plain) ``func``:
    ``consts`` maps names to their constant values, ``rename`` maps called names to the
    names of their specialised versions; the copy is called ``name``."""
    py = getattr(func, "py_func", func)
    tree = ast.parse(textwrap.dedent(inspect.getsource(py)))
    fdef = tree.body[0]
    fdef.decorator_list = []
    fdef.name = name
    if fdef.body and isinstance(fdef.body[0], ast.Expr) and isinstance(
            getattr(fdef.body[0], "value", None), ast.Constant):
        fdef.body = fdef.body[1:]
    body = fdef.body
    for _ in range(3):
        body = _inline(body, inline or {})
    body = _scalars(_unroll(body, consts, True))
    sizes = set(consts.values())
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        # a call in the q context: it passes the token qc or the size as a constant
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in rename and any(
                    (isinstance(a, ast.Name) and a.id == "qc")
                    or (isinstance(a, ast.Constant) and a.value in sizes
                        and not isinstance(a.value, bool)) for a in node.args):
            node.func.id = rename[node.func.id]
    fdef.body = _Forward().block(_hoist_invariants(fdef, body))
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


def specialise(func, consts: dict, name: str, calls: tuple = (), inline: tuple = ()):
    """Compile the specialised copy of ``func`` (see :func:`source_of`) in the general
    function's module globals and bind it there as ``name``. ``calls``: the specialised
    copies of the functions it calls, which its calls in the q context go to (a copy
    ``f_q2`` made by this function stands for ``f``); ``inline``: small primitives
    (statements that call them, with explicit sizes) whose bodies are put in place of
    the call before unrolling."""
    py = getattr(func, "py_func", func)
    ns = py.__globals__
    rename = {}
    for copy_ in calls:
        cname = getattr(copy_, "py_func", copy_).__name__
        rename[cname.rsplit("_q", 1)[0]] = cname
        ns[cname] = copy_
    for f in inline:  # the globals an inlined body reads (constants, other kernels)
        fpy = getattr(f, "py_func", f)
        for g in fpy.__code__.co_names:
            if g not in ns and g in fpy.__globals__:
                ns[g] = fpy.__globals__[g]
    src = source_of(func, consts, name, rename,
                    {getattr(f, "py_func", f).__name__: f for f in inline})
    code = compile(src, f"<{py.__module__}.{name}>", "exec")
    exec(code, ns)  # noqa: S102
    compiled = njit(error_model="numpy")(ns[name])
    ns[name] = compiled
    return compiled


def by_q(general, copy, name: str):
    """The kernel ``name`` for numba-compiled callers: a call runs ``copy`` (the q = 2 copy
    of :func:`specialise`) where its argument ``qc`` (:func:`mlmsim.engine.gls.qtoken`) is
    the token of q = 2, and ``general`` otherwise. numba makes the choice from the type of
    ``qc`` when it types the call, compiles only the function chosen, and calls it
    directly (no wrapper in between). Arguments are typed as values, not as literals
    (``True``, ``0``), so that one compiled version serves every call. The returned
    function has ``general``'s parameters and docstring; it is not callable from Python."""
    py = getattr(general, "py_func", general)
    params = list(inspect.signature(py).parameters)
    at = params.index("qc")
    ns: dict = {}
    exec(f"def {name}({', '.join(params)}):\n"  # noqa: S102
         f"    raise TypeError('{name} is called from numba-compiled code')\n", ns)
    stub = ns[name]
    stub.__doc__ = py.__doc__
    stub.__module__ = py.__module__

    def choose(qc):
        return copy if isinstance(qc, types.BaseTuple) and len(qc) == 2 else general

    class Pick(AbstractTemplate):
        key = stub

        def generic(self, args, kws):
            if kws or len(args) != len(params):
                return None
            args = tuple(types.unliteral(a) for a in args)
            target = self.context.resolve_value_type(choose(args[at]))
            sig = target.get_call_type(self.context, args, {})
            return None if sig is None else signature(sig.return_type, *args)

    infer_global(stub, types.Function(Pick))

    @lower_builtin(stub, types.VarArg(types.Any))
    def call(context, builder, sig, args):
        target = context.typing_context.resolve_value_type(choose(sig.args[at]))
        return context.get_function(target, sig)(builder, args)

    return stub
