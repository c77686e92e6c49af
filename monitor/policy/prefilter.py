"""Cheap Python pre-filters derived from a condition: a necessary condition checked before CEL.

`necessary(ast)` returns a predicate over the event dict that is True whenever the CEL condition
could be true (it may also be True when CEL says false: CEL still decides). Derived only from
shapes with exact Python equivalents: startsWith/endsWith/contains/matches (RE2, as CEL), ==, in a
literal list, a literal in a list field, numeric <, <=, >, >=, has(), a bare bool field, and &&/||
of these. Anything else (negation, comprehensions, arithmetic) gives no filter for that branch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.policy.ast import Call, ListLit, Lit, Node, field_path, literal_list

Predicate = Callable[[dict[str, Any]], bool]
MISSING = object()

try:
    import re2 as _re2  # google-re2: the same regex engine and semantics as CEL's matches()
except ImportError:  # pragma: no cover - installed with cel-python
    _re2 = None


def getter(path: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
    if len(path) == 1:
        (key,) = path
        return lambda data: data.get(key, MISSING)
    if len(path) == 2:
        outer, inner = path

        def get2(data: dict[str, Any]) -> Any:
            value = data.get(outer)
            return value.get(inner, MISSING) if type(value) is dict else MISSING
        return get2

    def get_deep(data: dict[str, Any]) -> Any:
        value: Any = data
        for key in path:
            if type(value) is not dict:
                return MISSING
            value = value.get(key, MISSING)
        return value
    return get_deep


@dataclass
class FieldTest:
    """An OR of simple tests on one field."""
    path: tuple[str, ...]
    starts: set[str] = field(default_factory=set)
    ends: set[str] = field(default_factory=set)
    contains: set[str] = field(default_factory=set)
    equals: set[Any] = field(default_factory=set)
    regexes: set[str] = field(default_factory=set)
    has_item: set[Any] = field(default_factory=set)

    def merge(self, other: FieldTest) -> FieldTest:
        return FieldTest(self.path, self.starts | other.starts, self.ends | other.ends,
                         self.contains | other.contains, self.equals | other.equals,
                         self.regexes | other.regexes, self.has_item | other.has_item)


@dataclass
class Opaque:
    predicate: Predicate


@dataclass
class AllOf:
    parts: list[Any]


@dataclass
class AnyOf:
    parts: list[Any]


Need = FieldTest | Opaque | AllOf | AnyOf

_COMPARE = {"_<_": operator.lt, "_<=_": operator.le, "_>_": operator.gt, "_>=_": operator.ge}
_FLIP = {"_<_": "_>_", "_<=_": "_>=_", "_>_": "_<_", "_>=_": "_<=_"}


def _hashable(values: list[Any]) -> bool:
    return all(isinstance(v, str | int | float) for v in values)


def _compare_predicate(get: Callable[[dict[str, Any]], Any], compare: Callable[[Any, Any], bool],
                       bound: float) -> Predicate:
    return lambda data: type(v := get(data)) in (int, float) and compare(v, bound)


def _leaf(node: Node) -> Need | None:
    if not isinstance(node, Call):
        path = field_path(node)
        if path is not None:  # a bare field used as a condition must be the bool true
            get = getter(path)
            return Opaque(lambda data: get(data) is True)
        return None
    fn, args = node.function, node.args
    target_path = field_path(node.target) if node.target is not None else None
    if target_path and len(args) == 1 and isinstance(args[0], Lit) and isinstance(args[0].value, str):
        text = args[0].value
        if fn == "startsWith":
            return FieldTest(target_path, starts={text})
        if fn == "endsWith":
            return FieldTest(target_path, ends={text})
        if fn == "contains":
            return FieldTest(target_path, contains={text})
        if fn == "matches" and _re2 is not None:
            try:
                _re2.compile(text)
            except Exception:
                return None
            return FieldTest(target_path, regexes={text})
        return None
    if fn == "has" and len(args) == 1:
        path = field_path(args[0])
        if path is None:
            return None
        parent, key = getter(path[:-1]) if len(path) > 1 else (lambda data: data), path[-1]
        return Opaque(lambda data: (type(p := parent(data)) is dict) and key in p)
    if fn == "_==_" and len(args) == 2:
        for left, right in (args, args[::-1]):
            path = field_path(left)
            if path and isinstance(right, Lit) and _hashable([right.value]):
                return FieldTest(path, equals={right.value})
        return None
    if fn == "_in_" and len(args) == 2:
        path, values = field_path(args[0]), literal_list(args[1])
        if path and values is not None and _hashable(values):
            return FieldTest(path, equals=set(values))
        container = field_path(args[1])
        if container and isinstance(args[0], Lit) and _hashable([args[0].value]):
            return FieldTest(container, has_item={args[0].value})
        return None
    if fn in _COMPARE and len(args) == 2:
        for left, right, name in ((args[0], args[1], fn), (args[1], args[0], _FLIP[fn])):
            path = field_path(left)
            if path and isinstance(right, Lit) and type(right.value) in (int, float):
                return Opaque(_compare_predicate(getter(path), _COMPARE[name], right.value))
        return None
    if fn == "in_cidr" and len(args) == 2 and isinstance(args[1], Lit):
        path = field_path(args[0])
        if path and isinstance(args[1].value, str):
            from monitor.policy.engine import in_cidr

            get, cidr = getter(path), args[1].value
            return Opaque(lambda data: type(v := get(data)) is str and in_cidr(v, cidr))
    return None


def _need(node: Node) -> Need | None:
    if isinstance(node, Call) and node.function == "_&&_":
        parts = [p for p in (_need(node.args[0]), _need(node.args[1])) if p is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else AllOf(parts)
    if isinstance(node, Call) and node.function == "_||_":
        left, right = _need(node.args[0]), _need(node.args[1])
        if left is None or right is None:
            return None
        if isinstance(left, FieldTest) and isinstance(right, FieldTest) and left.path == right.path:
            return left.merge(right)
        return AnyOf([left, right])
    return _leaf(node)


def _field_predicate(test: FieldTest) -> Predicate:
    get = getter(test.path)
    starts, ends = tuple(test.starts), tuple(test.ends)
    contains, equals = tuple(test.contains), frozenset(test.equals)
    regexes = tuple(_re2.compile(r).search for r in test.regexes) if test.regexes else ()
    items = frozenset(test.has_item)
    string_checks: list[Predicate] = []
    if starts:
        string_checks.append(lambda v: v.startswith(starts))
    if ends:
        string_checks.append(lambda v: v.endswith(ends))
    if equals:
        string_checks.append(lambda v: v in equals)
    if contains:
        string_checks.append(lambda v: any(c in v for c in contains))
    if regexes:
        string_checks.append(lambda v: any(search(v) for search in regexes))
    if len(string_checks) == 1 and not items:
        (only,) = string_checks
        if equals and not (starts or ends or contains or regexes):
            def equal_only(data: dict[str, Any]) -> bool:
                value = get(data)
                try:
                    return value in equals
                except TypeError:
                    return False
            return equal_only

        def one(data: dict[str, Any]) -> bool:
            value = get(data)
            return type(value) is str and only(value)
        return one

    def many(data: dict[str, Any]) -> bool:
        value = get(data)
        if type(value) is str:
            return any(check(value) for check in string_checks)
        if items and type(value) in (list, dict):
            return any(item in value for item in items)
        try:
            return bool(equals) and value in equals
        except TypeError:
            return False
    return many


def compile_need(need: Need) -> Predicate:
    if isinstance(need, FieldTest):
        return _field_predicate(need)
    if isinstance(need, Opaque):
        return need.predicate
    parts = tuple(compile_need(p) for p in need.parts)
    if isinstance(need, AllOf):
        if len(parts) == 2:
            first, second = parts
            return lambda data: first(data) and second(data)
        return lambda data: all(p(data) for p in parts)
    return lambda data: any(p(data) for p in parts)


def _drop_kind_tests(need: Need, kinds: set[str]) -> Need | None:
    """Kind tests the index already guarantees cost time and decide nothing."""
    if isinstance(need, FieldTest) and need.path == ("kind",) and not (
            need.starts or need.ends or need.contains or need.regexes) and kinds <= need.equals:
        return None
    if isinstance(need, AllOf):
        parts = [p for p in (_drop_kind_tests(x, kinds) for x in need.parts) if p is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else AllOf(parts)
    return need


def necessary(root: Node, kinds: set[str]) -> Predicate | None:
    need = _need(root)
    if need is None:
        return None
    need = _drop_kind_tests(need, kinds)
    return compile_need(need) if need is not None else None


def kinds_of(root: Node) -> set[str] | None:
    """The event kinds a condition pins with `event.kind == ".."`/`in [..]`, if it does."""
    need = _need(root)

    def walk(n: Need | None) -> set[str] | None:
        if isinstance(n, FieldTest) and n.path == ("kind",) and not (n.starts or n.ends or n.contains
                                                                    or n.regexes or n.has_item):
            return {v for v in n.equals if isinstance(v, str)}
        if isinstance(n, AllOf):
            found = [k for k in (walk(p) for p in n.parts) if k is not None]
            return set.intersection(*found) if found else None
        if isinstance(n, AnyOf):
            found = [walk(p) for p in n.parts]
            return None if any(k is None for k in found) else set().union(*found)  # type: ignore[arg-type]
        return None
    return walk(need)


__all__ = ["necessary", "kinds_of", "getter", "MISSING", "ListLit"]
