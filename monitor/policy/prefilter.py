"""Cheap Python pre-filters derived from a condition: a necessary condition checked before CEL.

`necessary(ast)` returns a predicate over the event dict that is True whenever the CEL condition
could be true (it may also be True when CEL says false: CEL still decides). Derived only from
shapes with exact Python equivalents: startsWith/endsWith/contains/matches (RE2, as CEL), ==, in a
literal list, a literal in a list field, numeric <, <=, >, >=, has(), a bare bool field, and &&/||
of these. A field may be read through `.join(sep)` and `.lowerAscii()` (a Derived path step: the
same Python bodies as the CEL functions). Anything else (negation, comprehensions, arithmetic) gives no filter for that branch.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from monitor.policy.ast import Call, Ident, Lit, Node, Select, field_path, literal_list
from monitor.policy.engine import in_cidr
from monitor.policy.functions import MISSING, Derived, lower_ascii
from monitor.policy.literals import gate_check, literal_gate, simplest_gate

Predicate = Callable[[dict[str, Any]], bool]

try:
    import re2 as _re2  # google-re2: the same regex engine and semantics as CEL's matches()
except ImportError:  # pragma: no cover - installed with cel-python
    _re2 = None


def compile_regex(pattern: str) -> Any:
    """RE2 as CEL's matches() uses it; quiet (no stderr logging) and capture-free (faster).
    Raises ValueError with RE2's message when the pattern is invalid."""
    if _re2 is None:  # pragma: no cover
        raise ValueError("google-re2 is not installed")
    options = _re2.Options()
    options.log_errors = False
    options.never_capture = True
    try:
        return _re2.compile(pattern, options)
    except Exception as exc:
        message = exc.args[0] if exc.args else exc
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        raise ValueError(str(message)) from None




def getter(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], Any]:
    indexed = any(type(key) is not str for key in path)
    if len(path) == 1 and not indexed:
        (key,) = path
        return lambda data: data.get(key, MISSING)
    if len(path) == 2 and not indexed:
        outer, inner = path

        def get2(data: dict[str, Any]) -> Any:
            value = data.get(outer)
            return value.get(inner, MISSING) if type(value) is dict else MISSING
        return get2

    def get_deep(data: dict[str, Any]) -> Any:
        value: Any = data
        for key in path:
            if type(key) is Derived:
                value = key.apply(value)
                if value is MISSING:
                    return MISSING
            elif type(key) is int:
                if type(value) is not list or key >= len(value):
                    return MISSING
                value = value[key]
            elif type(value) is not dict:
                return MISSING
            else:
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


ELEMENT = "__element__"  # comprehension bodies are tested against {ELEMENT: item}
# A FieldTest whose path ends here tests the items of the field (a list's elements, a map's keys):
# it passes when one of them does (`event.process.args.exists(a, a.contains("x"))`).
ANY_ITEM = "[*]"
_ITERABLE = (list, dict)


def _path(node: Node, scope: str) -> tuple[Any, ...] | None:
    """Field path of `node` rooted at the scope's variable (`event`, or a comprehension's item);
    a literal list index is a path element too (`event.process.ancestors[0].executable`)."""
    parts: list[Any] = []
    while True:
        if isinstance(node, Select):
            parts.append(node.field)
            node = node.operand
        elif (isinstance(node, Call) and node.function == "_[_]" and isinstance(node.args[1], Lit)
              and type(node.args[1].value) is int and node.args[1].value >= 0):
            parts.append(node.args[1].value)
            node = node.args[0]
        elif (isinstance(node, Call) and node.target is not None and (
                (node.function == "lowerAscii" and not node.args) or
                (node.function == "join" and len(node.args) == 1 and isinstance(node.args[0], Lit)
                 and type(node.args[0].value) is str))):
            parts.append(Derived(node.function, node.args[0].value if node.args else ""))
            node = node.target
        else:
            break
    if isinstance(node, Ident) and node.name == scope and (parts or scope != "event"):
        return ((ELEMENT,) if scope != "event" else ()) + tuple(reversed(parts))
    return None


def _exists(node: Call, scope: str) -> Need | None:
    """`x.exists(v, body)`: true only for a non-empty list or map (CEL iterates a map's keys) with
    an item passing body's need."""
    if scope != "event" or node.target is None or len(node.args) != 2 or not isinstance(node.args[0], Ident):
        return None
    path = field_path(node.target)
    if path is None:
        return None
    get = getter(path)
    body = _need(node.args[1], node.args[0].name)
    if body is None:
        return Opaque(lambda data: type(items := get(data)) in _ITERABLE and len(items) > 0)
    if isinstance(body, FieldTest) and body.path == (ELEMENT,):
        return replace(body, path=(*path, ANY_ITEM))  # e.g. args.exists(a, a.matches(..)): a guard
    test = compile_need(body)
    whole = Opaque(lambda data: type(items := get(data)) in _ITERABLE and any(test({ELEMENT: i}) for i in items))
    # exists(a, A && B) needs exists(a, A): A on the items is a guard
    parts = body.parts if isinstance(body, AllOf) else []
    on_items = [replace(p, path=(*path, ANY_ITEM)) for p in parts if isinstance(p, FieldTest) and p.path == (ELEMENT,)]
    return AllOf([*on_items, whole]) if on_items else whole


def _not_equal(node: Node, field_path: Callable[[Node], Any]) -> Need | None:
    """`!(f in ["a", ..])`, `!(f == "a")`, `f != "a"` with string literals: exact in Python for a
    string value; any other value (or a missing field) is left to CEL."""
    if isinstance(node, Call) and node.function == "!_":
        inner = node.args[0]
        if isinstance(inner, Call) and inner.function in ("_in_", "_==_"):
            left, right = inner.args
        else:
            return None
    elif isinstance(node, Call) and node.function == "_!=_":
        left, right = node.args
    else:
        return None
    path = field_path(left)
    values = [right.value] if isinstance(right, Lit) else literal_list(right)
    if path is None or values is None or not all(isinstance(v, str) for v in values):
        return None
    get, excluded = getter(path), frozenset(values)
    return Opaque(lambda data: type(v := get(data)) is not str or v not in excluded)


def _leaf(node: Node, scope: str = "event") -> Need | None:
    field_path = functools.partial(_path, scope=scope)  # noqa: F811 - shadows the module function
    if isinstance(node, Call) and node.function in ("exists", "exists_one"):
        return _exists(node, scope)
    if isinstance(node, Call) and node.function in ("!_", "_!=_"):
        return _not_equal(node, field_path)
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
                compile_regex(text)
            except ValueError:
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
            get, cidr = getter(path), args[1].value
            return Opaque(lambda data: type(v := get(data)) is str and in_cidr(v, cidr))
    return None


def _need(node: Node, scope: str = "event") -> Need | None:
    if isinstance(node, Call) and node.function == "_&&_":
        parts = [p for p in (_need(node.args[0], scope), _need(node.args[1], scope)) if p is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else AllOf(parts)
    if isinstance(node, Call) and node.function == "_||_":
        left, right = _need(node.args[0], scope), _need(node.args[1], scope)
        if left is None or right is None:
            return None
        if isinstance(left, FieldTest) and isinstance(right, FieldTest) and left.path == right.path:
            return left.merge(right)
        return AnyOf([left, right])
    return _leaf(node, scope)


def _regex_searches(patterns: list[str]) -> tuple[Callable[[str], Any], ...]:
    """One RE2 alternation for all patterns (a call into RE2 costs about the same whatever the pattern),
    behind a gate of the literals every match contains (see policy/literals.py)."""
    if not patterns or _re2 is None:
        return ()
    try:
        searches = (_raw_search(compile_regex("|".join(f"(?:{p})" for p in patterns))),)
    except ValueError:
        searches = tuple(_raw_search(compile_regex(p)) for p in patterns)
    gate = literal_gate(patterns)
    passes = gate_check(gate) if gate is not None else None
    if passes is None or len(searches) != 1:
        return searches
    (search,) = searches
    return (lambda text: passes(text) and search(text),)


def _raw_search(compiled: Any) -> Callable[[str], bool]:
    """RE2 search without the wrapper's Match objects (half the cost of .search)."""
    try:
        match, unanchored = compiled._regexp.Match, _re2._re2.RE2.Anchor.UNANCHORED
    except AttributeError:  # pragma: no cover - another google-re2 layout
        return lambda text: compiled.search(text) is not None

    def search(text: str) -> bool:
        encoded = text.encode("utf-8", "surrogatepass")
        return match(unanchored, encoded, 0, len(encoded))[0][0] != -1
    return search


def _string_gate(test: FieldTest) -> Callable[[str], bool] | None:
    """A necessary condition for any of the test's string tests to pass, cheaper than they are
    (for a path that none can match, a fraction of their cost). None: no gate possible."""
    prefixes = test.starts | {v for v in test.equals if type(v) is str}  # v == "/x": v starts with "/x"
    substrings = test.ends | test.contains
    if test.regexes:
        found = literal_gate(sorted(test.regexes))
        if found is None:
            return None
        prefixes |= set(found[0])
        substrings |= set(found[1])
    return gate_check(simplest_gate(prefixes, substrings))


def _value_check(test: FieldTest, memo_size: int = 0) -> Callable[[Any], bool]:
    """The OR of a FieldTest's tests on one value (plain code: this runs for every event). With
    memo_size, verdicts on strings are memoised (events repeat the same paths: ld.so.cache, libc,
    the same source files), except where the gate alone says no: on a stream of new paths the
    memo would only churn (a miss, an insert, a clear every memo_size, for every path)."""
    starts, ends = tuple(sorted(test.starts)), tuple(sorted(test.ends))
    contains, equals = tuple(sorted(test.contains)), frozenset(test.equals)
    searches = _regex_searches(sorted(test.regexes))
    search = searches[0] if len(searches) == 1 else (
        (lambda v: any(s(v) for s in searches)) if searches else None)
    items = frozenset(test.has_item)
    gate = _string_gate(test)

    def string_check(value: str) -> bool:
        if starts and value.startswith(starts):
            return True
        if ends and value.endswith(ends):
            return True
        if value in equals:
            return True
        for part in contains:
            if part in value:
                return True
        return search is not None and search(value)
    memo: dict[str, bool] = {}

    def check(value: Any) -> bool:
        if type(value) is str:
            known = memo.get(value)
            if known is None:
                if gate is not None and not gate(value):
                    return False
                known = string_check(value)
                if memo_size:
                    if len(memo) >= memo_size:
                        memo.clear()
                    memo[value] = known
            return known
        if items and type(value) in (list, dict):
            try:
                return not items.isdisjoint(value)
            except TypeError:  # unhashable members (a list of maps): compare one by one
                return any(item in value for item in items)
        try:
            return value in equals
        except TypeError:  # a list or a map compared with literals: CEL says false too
            return False
    return check


def _field_predicate(test: FieldTest, memo_size: int = 0) -> Predicate:
    """Predicate on the event for a FieldTest (no test passes on a missing field)."""
    get, check = getter(guarded_field(test.path)), _field_check(test, memo_size)
    return lambda data: check(get(data))


def guarded_field(path: tuple[Any, ...]) -> tuple[Any, ...]:
    """The field a FieldTest's path reads (its items' field for an ANY_ITEM path)."""
    return path[:-1] if path[-1:] == (ANY_ITEM,) else path


def _field_check(test: FieldTest, memo_size: int = 0) -> Callable[[Any], bool]:
    """The test on the value of guarded_field(test.path): for an ANY_ITEM path, on its items
    (memoised: the same arguments recur on every exec of a program)."""
    if test.path[-1:] != (ANY_ITEM,):
        return _value_check(test, memo_size)
    check = _value_check(test, memo_size=max(memo_size, 8192))
    return lambda items: type(items) in _ITERABLE and any(map(check, items))


def compile_need(need: Need) -> Predicate:
    if isinstance(need, FieldTest):
        return _field_predicate(need)
    if isinstance(need, Opaque):
        return need.predicate
    parts = tuple(compile_need(p) for p in need.parts)
    if len(parts) == 2:
        first, second = parts
        if isinstance(need, AllOf):
            return lambda data: first(data) and second(data)
        return lambda data: first(data) or second(data)
    if isinstance(need, AllOf):
        return lambda data: all(p(data) for p in parts)
    return lambda data: any(p(data) for p in parts)


_IMPOSSIBLE = Opaque(lambda data: False)


def _for_kind(need: Need, kind: str) -> Need | None:
    """`need` for events of one kind: `event.kind` tests are decided (true: dropped, false: the
    branch is impossible), so a rule's guard for `open` never waits on its `exec` branch."""
    if isinstance(need, FieldTest) and need.path == ("kind",) and not (
            need.starts or need.ends or need.contains or need.regexes or need.has_item):
        return None if kind in need.equals else _IMPOSSIBLE
    if isinstance(need, AllOf):
        parts = [p for p in (_for_kind(x, kind) for x in need.parts) if p is not None]
        if any(p is _IMPOSSIBLE for p in parts):
            return _IMPOSSIBLE
        return None if not parts else parts[0] if len(parts) == 1 else AllOf(parts)
    if isinstance(need, AnyOf):
        parts = [_for_kind(x, kind) for x in need.parts]
        if any(p is None for p in parts):
            return None  # a branch with no test left: anything may match
        possible = [p for p in parts if p is not _IMPOSSIBLE]
        return _IMPOSSIBLE if not possible else possible[0] if len(possible) == 1 else AnyOf(possible)
    return need


Guard = dict[tuple[str, ...], FieldTest]


def _guard(need: Need | None) -> Guard | None:
    """Field tests of which at least one must pass for the rule to match. Rules of one kind share
    one merged test per field (see RuleSet), so an ordinary event is rejected by all of them with
    one check per field instead of one per rule."""
    if isinstance(need, FieldTest):
        return {need.path: need}
    if isinstance(need, AllOf):
        guards = [g for g in map(_guard, need.parts) if g is not None]
        return max(guards, key=_selectivity) if guards else None
    if isinstance(need, AnyOf):
        merged: Guard = {}
        for part in need.parts:
            guard = _guard(part)
            if guard is None:
                return None
            for path, test in guard.items():
                merged[path] = merged[path].merge(test) if path in merged else test
        return merged
    return None


def guard_choices(root: Node, kinds: list[str]) -> dict[str, list[Guard]]:
    """Per kind, the guards a condition could equally use (the most selective parts of its top
    AND): the rule set picks the one on a field other rules already check, which then costs
    nothing extra (see RuleSet's plan)."""
    need = _need(root)
    out: dict[str, list[Guard]] = {}
    for kind in kinds:
        specific = _for_kind(need, kind) if need is not None else None
        if not isinstance(specific, AllOf):
            continue
        guards = [g for g in map(_guard, _conjuncts(specific)) if g is not None]
        best = max(map(_selectivity, guards), default=None)
        choices = [g for g in guards if _selectivity(g) == best]
        if len(choices) > 1:
            out[kind] = choices
    return out


def _conjuncts(need: Need) -> list[Need]:
    return [part for inner in need.parts for part in _conjuncts(inner)] if isinstance(need, AllOf) else [need]


def _selectivity(guard: Guard) -> int:
    """Rank a guard: string tests reject most events; a bool or a kind test rejects few."""
    weakest = 3
    for path, test in guard.items():
        if test.starts or test.ends or test.contains or test.regexes or any(
                isinstance(v, str) for v in test.equals):
            score = 1 if path == ("kind",) else 3
        elif test.equals and all(isinstance(v, bool) for v in test.equals):
            score = 0
        else:
            score = 2
        weakest = min(weakest, score)
    return weakest


def necessary(root: Node, kinds: list[str]) -> dict[str, tuple[Predicate | None, Guard | None]]:
    """Per event kind, (pre-filter, guard) of a condition; either may be None (nothing cheap)."""
    need = _need(root)
    out: dict[str, tuple[Predicate | None, Guard | None]] = {}
    for kind in kinds:
        specific = _for_kind(need, kind) if need is not None else None
        out[kind] = (None, None) if specific is None else (compile_need(specific), _guard(specific))
    return out


def guard_selector(tests: list[tuple[FieldTest, Any]], memo_size: int = 8192) -> Callable[[Any], tuple[Any, ...]]:
    """For (test, rule) pairs on one field: value -> the rules whose test passes, in order. The
    merged check rejects most values first; the answer for a string is memoised (executables,
    paths and command lines recur), so many rules on one common field (a pack of imported rules
    on the executable) cost one lookup, not one pre-filter each."""
    everyone = tuple(item for _, item in tests)
    passes = merge_guards([test for test, _ in tests])
    if len(tests) == 1:
        return lambda value: everyone if passes(value) else ()
    return _selector(tests, passes, memo_size)


def lowered_selector(select: Callable[[Any], tuple[Any, ...]],
                     memo_size: int = 8192) -> Callable[[Any], tuple[Any, ...]]:
    """`select` for a guard on `field.lowerAscii()`, given the field's own value: memoised by that
    value (rejections too), so a recurring path or executable is neither lowered nor checked again."""
    memo: dict[str, tuple[Any, ...]] = {}

    def select_raw(value: Any) -> tuple[Any, ...]:
        if type(value) is not str:
            return ()
        found = memo.get(value)
        if found is None:
            found = select(value.lower() if value.isascii() else lower_ascii(value))
            if len(memo) >= memo_size:
                memo.clear()
            memo[value] = found
        return found
    return select_raw


def _selector(tests: list[tuple[FieldTest, Any]], passes: Callable[[Any], bool],
              memo_size: int) -> Callable[[Any], tuple[Any, ...]]:
    checks = tuple((_field_check(test), item) for test, item in tests)
    memo: dict[str, tuple[Any, ...]] = {}

    def select(value: Any) -> tuple[Any, ...]:
        if not passes(value):
            return ()
        if type(value) is not str:
            return tuple(item for check, item in checks if check(value))
        found = memo.get(value)
        if found is None:
            found = tuple(item for check, item in checks if check(value))
            if len(memo) >= memo_size:
                memo.clear()
            memo[value] = found
        return found
    return select


def merge_guards(tests: list[FieldTest]) -> Callable[[Any], bool]:
    """One check of a field's value (of guarded_field(path)) for the guard tests of many rules
    (memoised)."""
    merged = tests[0]
    for test in tests[1:]:
        merged = merged.merge(test)
    return _field_check(merged, memo_size=8192)


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


__all__ = ["MISSING", "compile_regex", "getter", "guard_choices", "guard_selector", "lowered_selector", "kinds_of", "merge_guards", "necessary"]
