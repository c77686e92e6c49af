"""A small CEL syntax tree for analysing conditions at load time (never used per event).

Parsed with cel-python's Lark grammar (the same parser the differential-test oracle uses), then
folded into a few node types. Analyses built on it: the event fields a condition reads (`matched`
and lint), free names (unknown macro/list), the cheap Python pre-filter, and the kernel deny subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lark import Token, Tree


@dataclass(frozen=True, slots=True)
class Lit:
    value: Any


@dataclass(frozen=True, slots=True)
class Ident:
    name: str


@dataclass(frozen=True, slots=True)
class Select:
    operand: Node
    field: str


@dataclass(frozen=True, slots=True)
class Call:
    """Operators are calls too: "_&&_", "_||_", "!_", "_==_", "_in_", "_[_]", "_?_:_", ..."""
    function: str
    args: tuple[Node, ...]
    target: Node | None = None


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class MapLit:
    entries: tuple[tuple[Node, Node], ...]


Node = Lit | Ident | Select | Call | ListLit | MapLit

COMPREHENSIONS = ("all", "exists", "exists_one", "map", "filter")

_BINARY = {"relation_lt": "_<_", "relation_le": "_<=_", "relation_gt": "_>_", "relation_ge": "_>=_",
           "relation_eq": "_==_", "relation_ne": "_!=_", "relation_in": "_in_",
           "addition_add": "_+_", "addition_sub": "_-_", "multiplication_mul": "_*_",
           "multiplication_div": "_/_", "multiplication_mod": "_%_"}


class Unsupported(Exception):
    pass


def parse(text: str) -> Node:
    """Parse CEL text; raises Unsupported when the reference grammar cannot read it."""
    from celpy.celparser import CELParseError, CELParser

    try:
        return _fold(CELParser().parse(text))
    except (CELParseError, RecursionError, ValueError) as exc:
        raise Unsupported(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def _literal(token: Token) -> Any:
    from celpy.evaluation import celbytes, celstr

    kind, text = token.type, str(token)
    if kind == "INT_LIT":
        return int(text, 0) if not text.startswith("-") else -int(text[1:], 0)
    if kind == "UINT_LIT":
        return int(text[:-1], 0)
    if kind == "FLOAT_LIT":
        return float(text)
    if kind in ("STRING_LIT", "MLSTRING_LIT"):
        return str(celstr(token))
    if kind == "BYTES_LIT":
        return bytes(celbytes(token))
    if kind == "BOOL_LIT":
        return text == "true"
    return None


def _exprlist(tree: Tree | None) -> tuple[Node, ...]:
    if tree is None:
        return ()
    return tuple(_fold(child) for child in tree.children)


def _fold(tree: Tree | Token) -> Node:
    if isinstance(tree, Token):
        raise Unsupported(f"unexpected token {tree!s}")
    kind, kids = tree.data, tree.children
    if kind in ("expr", "conditionalor", "conditionaland") and len(kids) == 1:
        return _fold(kids[0])
    if kind == "expr":
        return Call("_?_:_", (_fold(kids[0]), _fold(kids[1]), _fold(kids[2])))
    if kind == "conditionalor":
        return Call("_||_", (_fold(kids[0]), _fold(kids[1])))
    if kind == "conditionaland":
        return Call("_&&_", (_fold(kids[0]), _fold(kids[1])))
    if kind in ("relation", "addition", "multiplication"):
        if len(kids) == 1:
            return _fold(kids[0])
        operator = kids[0]
        return Call(_BINARY[operator.data], (_fold(operator.children[0]), _fold(kids[1])))
    if kind == "unary":
        if len(kids) == 1:
            return _fold(kids[0])
        return Call("!_" if kids[0].data == "unary_not" else "-_", (_fold(kids[1]),))
    if kind in ("member", "primary", "paren_expr"):
        return _fold(kids[0])
    if kind == "member_dot":
        return Select(_fold(kids[0]), str(kids[1]))
    if kind == "member_dot_arg":
        return Call(str(kids[1]), _exprlist(kids[2] if len(kids) > 2 else None), _fold(kids[0]))
    if kind == "member_index":
        return Call("_[_]", (_fold(kids[0]), _fold(kids[1])))
    if kind == "ident":
        return Ident(str(kids[0]))
    if kind == "ident_arg":
        return Call(str(kids[0]), _exprlist(kids[1] if len(kids) > 1 else None))
    if kind == "literal":
        return Lit(_literal(kids[0]))
    if kind == "list_lit":
        return ListLit(_exprlist(kids[0] if kids else None))
    if kind == "map_lit":
        if not kids:
            return MapLit(())
        items = [_fold(child) for child in kids[0].children]
        return MapLit(tuple(zip(items[0::2], items[1::2], strict=True)))
    raise Unsupported(f"CEL construct '{kind}' is not analysed")


def field_path(node: Node) -> tuple[str, ...] | None:
    """("file", "path") for `event.file.path`; None when the node is not a plain event field."""
    parts: list[str] = []
    while isinstance(node, Select):
        parts.append(node.field)
        node = node.operand
    if isinstance(node, Ident) and node.name == "event" and parts:
        return tuple(reversed(parts))
    return None


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Select):
        return (node.operand,)
    if isinstance(node, Call):
        return ((node.target,) if node.target is not None else ()) + node.args
    if isinstance(node, ListLit):
        return node.items
    if isinstance(node, MapLit):
        return tuple(part for entry in node.entries for part in entry)
    return ()


def referenced_fields(root: Node) -> list[tuple[str, ...]]:
    """Event field paths the condition reads, longest plain chains, in source order, no repeats."""
    found: list[tuple[str, ...]] = []
    stack = [root]
    while stack:
        node = stack.pop()
        path = field_path(node)
        if path is not None:
            if path not in found:
                found.append(path)
            continue
        if isinstance(node, Call) and node.function == "has" and len(node.args) == 1:
            continue  # has(event.x) reads nothing worth showing
        stack.extend(reversed(children(node)))
    return found


def free_names(root: Node) -> set[str]:
    """Identifiers that are neither `event` nor bound by a comprehension."""
    names: set[str] = set()

    def walk(node: Node, bound: frozenset[str]) -> None:
        if isinstance(node, Ident):
            if node.name != "event" and node.name not in bound:
                names.add(node.name)
            return
        if (isinstance(node, Call) and node.function in COMPREHENSIONS and node.target is not None
                and node.args and isinstance(node.args[0], Ident)):
            walk(node.target, bound)
            inner = bound | {node.args[0].name}
            for arg in node.args[1:]:
                walk(arg, inner)
            return
        for child in children(node):
            walk(child, bound)

    walk(root, frozenset())
    return names


def conjuncts(node: Node) -> list[Node]:
    if isinstance(node, Call) and node.function == "_&&_":
        return conjuncts(node.args[0]) + conjuncts(node.args[1])
    return [node]


def disjuncts(node: Node) -> list[Node]:
    if isinstance(node, Call) and node.function == "_||_":
        return disjuncts(node.args[0]) + disjuncts(node.args[1])
    return [node]


def literal_list(node: Node) -> list[Any] | None:
    if isinstance(node, ListLit) and all(isinstance(item, Lit) for item in node.items):
        return [item.value for item in node.items]  # type: ignore[union-attr]
    return None


def activation_paths(root: Node) -> set[tuple[str, ...]] | None:
    """Every event field path the condition can read (has() included); None if it reads `event`
    whole (then the activation must carry the whole event)."""
    paths: set[tuple[str, ...]] = set()
    whole = False

    def walk(node: Node) -> None:
        nonlocal whole
        path = field_path(node)
        if path is not None:
            paths.add(path)
            return
        if isinstance(node, Ident) and node.name == "event":
            whole = True
            return
        for child in children(node):
            walk(child)

    walk(root)
    return None if whole else paths
