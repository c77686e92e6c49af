"""How the rules of one event kind meet an event: guards (one check per field, shared by the rules
guarded on it, answering which of them can match), each rule's own pre-filter, then one CEL
activation trimmed to the fields the kind's rules read."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from monitor.event import Event, rfc3339
from monitor.policy.functions import MISSING, Derived, lower_ascii
from monitor.policy.prefilter import (
    FieldTest,
    Guard,
    Predicate,
    getter,
    guard_selector,
    guarded_field,
    lowered_selector,
)


class Compiled(Protocol):
    """What planning reads of a compiled rule (monitor.policy.ruleset._Compiled)."""
    prefilters: dict[str, tuple[Predicate | None, Guard | None]]
    guard_choices: dict[str, list[Guard]]
    reads: set[tuple[str, ...]] | None


def event_view(event: Event) -> dict[str, Any]:
    """Event.to_dict() without the RFC 3339 `time` string (formatting it costs more than all the
    rules together); a rule that reads event.time gets it through the projection below."""
    out: dict[str, Any] = {"id": event.id, "kind": event.kind, "time_ns": event.time_ns,
                           "source": event.source}
    if event.process:
        out["process"] = event.process
    if event.sandbox is not None:
        out["sandbox"] = event.sandbox
    if event.file is not None:
        out["file"] = event.file
    if event.net is not None:
        out["net"] = event.net
    if event.container is not None:
        out["container"] = event.container
    if event.llm is not None:
        out["llm"] = event.llm
    if event.detail is not None:
        out["detail"] = event.detail
    if event.result is not None:
        out["result"] = event.result
    if event.verdict is not None:
        out["verdict"] = event.verdict
    return out


_ALWAYS = ("id", "kind", "time_ns", "source")  # in event_view even when None
_WHEN_SET = ("sandbox", "file", "net", "container", "llm", "detail", "result", "verdict")  # when not None


def event_getter(path: tuple[Any, ...]) -> Callable[[Event], Any]:
    """getter(path) applied to event_view(event), read from the event itself: the guards decide
    without a view (most events are rejected by them: building it would be wasted)."""
    if len(path) > 1 and type(path[-1]) is Derived:
        plain = len(path)
        while type(path[plain - 1]) is Derived:
            plain -= 1
        base, steps = event_getter(path[:plain]), tuple(path[plain:])
        if steps == (Derived("lowerAscii"),):  # the common case, without the steps' bookkeeping
            def lowered(event: Event) -> Any:
                value = base(event)
                if type(value) is not str:
                    return MISSING
                return value.lower() if value.isascii() else lower_ascii(value)
            return lowered

        def derived(event: Event) -> Any:
            value = base(event)
            for step in steps:
                if value is MISSING:
                    return MISSING
                value = step.apply(value)
            return value
        return derived
    top = path[0]
    if top not in _ALWAYS and top not in _WHEN_SET and top != "process":
        return lambda event: MISSING
    if len(path) == 1:
        if top in _ALWAYS:
            return operator.attrgetter(top)
        if top == "process":
            return lambda event: event.process or MISSING  # as event_view: no process when empty
        return lambda event: MISSING if (value := getattr(event, top)) is None else value
    if len(path) == 2 and type(path[1]) is str:
        key = path[1]

        def get2(event: Event) -> Any:
            value = getattr(event, top)
            return value.get(key, MISSING) if type(value) is dict else MISSING
        return get2
    rest = getter(path[1:])

    def get_deep(event: Event) -> Any:
        value = getattr(event, top)
        return rest(value) if type(value) is dict else MISSING
    return get_deep


_Planned = tuple[int, Compiled, Predicate | None]  # rule index, rule, its pre-filter for the kind


@dataclass(slots=True)
class KindPlan:
    """How one event kind is evaluated: merged guard checks (one per field) select the rules worth
    looking at (plus the unguarded ones), then each rule's own pre-filter, then CEL."""
    unguarded: tuple[_Planned, ...]
    # per guarded field: its getter, value -> the rules its value selects, all the rules guarded on it
    guards: tuple[tuple[Callable[[Event], Any], Callable[[Any], tuple[_Planned, ...]], tuple[_Planned, ...]], ...]
    project: Callable[[dict[str, Any]], dict[str, Any]]

    @property
    def entries(self) -> list[tuple[Compiled, tuple[int, ...]]]:
        found = {index: entry for index, entry, _ in self.unguarded}
        for _, _, group in self.guards:
            found.update((index, entry) for index, entry, _ in group)
        return [(found[i], ()) for i in sorted(found)]


def _shared_guard(guard: Guard | None, choices: list[Guard], popular: dict[tuple[Any, ...], int]) -> Guard | None:
    """Among equally selective guards, the one on the fields most other rules are guarded on."""
    if guard is None or not choices:
        return guard
    return max(choices, key=lambda g: sum(popular.get(path, 0) for path in g))


def plan_kind(kind: str, entries: list[Compiled]) -> KindPlan:
    by_path: dict[tuple[Any, ...], list[tuple[FieldTest, _Planned]]] = {}
    planned: list[tuple[_Planned, Guard | None]] = []
    popular: dict[tuple[Any, ...], int] = {}
    for entry in entries:
        for path in entry.prefilters.get(kind, (None, None))[1] or {}:
            popular[path] = popular.get(path, 0) + 1
    for index, entry in enumerate(entries):
        prefilter, guard = entry.prefilters.get(kind, (None, None))
        guard = _shared_guard(guard, entry.guard_choices.get(kind, []), popular)
        item = (index, entry, prefilter)
        planned.append((item, guard))
        for path, test in (guard or {}).items():
            by_path.setdefault(path, []).append((test, item))
    unguarded = tuple(item for item, guard in planned if not guard)
    guards = tuple((*_guard_reader(guarded_field(path), tests), tuple(item for _, item in tests))
                   for path, tests in by_path.items())
    return KindPlan(unguarded, guards, _projection(entries))


_LOWER = Derived("lowerAscii")


def _guard_reader(path: tuple[Any, ...], tests: list[tuple[FieldTest, _Planned]]) -> tuple[
        Callable[[Event], Any], Callable[[Any], tuple[_Planned, ...]]]:
    """The guard's getter and selector; a guard on `field.lowerAscii()` reads the field itself."""
    if len(path) > 1 and path[-1] == _LOWER and not any(type(p) is Derived for p in path[:-1]):
        return event_getter(path[:-1]), lowered_selector(guard_selector(tests))
    return event_getter(path), guard_selector(tests)


def _projection(entries: list[Compiled]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The activation for a kind carries only the fields its rules read: the C++ runtime converts
    the whole Python map on first access, so a large event with its ancestors costs several times
    what the fields the rules read do. Values are the event's own (same verdicts); None: whole event."""
    paths: set[tuple[str, ...]] = set()
    for entry in entries:
        if entry.reads is None:
            return _with_time
        paths |= entry.reads
    paths.add(("kind",))
    tops = {p[0] for p in paths if len(p) == 1}
    nested: dict[str, set[str]] = {}
    for path in paths:
        if len(path) > 1 and path[0] not in tops:
            nested.setdefault(path[0], set()).add(path[1])
    wants_time = "time" in tops
    top_keys = tuple(sorted(tops - {"time"}))
    nested_keys = tuple((top, tuple(sorted(keys))) for top, keys in sorted(nested.items()))

    def project(data: dict[str, Any]) -> dict[str, Any]:
        out = {key: data[key] for key in top_keys if key in data}
        for top, keys in nested_keys:
            inner = data.get(top)
            if type(inner) is dict:
                out[top] = {key: inner[key] for key in keys if key in inner}
            elif inner is not None:
                out[top] = inner
        if wants_time:
            out["time"] = rfc3339(data["time_ns"])
        return out
    return project


def _with_time(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "time": rfc3339(data["time_ns"])}
