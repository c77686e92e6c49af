"""Correlation rules: a rule that fires on a pattern of events rather than on one.

    - rule: Burst of discovery commands
      when: [exec]
      condition: event.process.executable.matches("/(id|whoami|uname|hostname|ps|ss|ip)$")
      threshold: {count: 5, within: 60, by: parent, distinct: event.process.executable}

    - rule: Download, chmod +x, run
      sequence:
        within: 120
        by: parent
        steps:
          - {when: [open], condition: 'event.file.write == true', key: event.file.path}
          - {when: [chmod], condition: 'event.file.mode % 2 == 1', key: event.file.path}
          - {when: [exec], condition: 'true', key: event.process.executable}

threshold: `count` events matching the condition (or `count` distinct values of `distinct`) in
`within` seconds, per scope; the alert is on the event that completes the count, and the count
starts again. sequence: the steps' events in order, each within `within` seconds of the first,
each step's `key` equal to the previous step's (when keys are given); the alert is on the last.

Scope (`by`): sandbox (default), parent (the same parent process: what one shell runs), process,
or an event field (`event.process.executable`); always within one sandbox. State is bounded: at
most MAX_KEYS open keys per rule, the least recently used evicted and counted (`evicted`), and
entries older than the window dropped. Windows use the events' own times, so a journal replayed
with a correlation rule is judged as the live run would have been. A reload starts empty.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.policy.prefilter import MISSING, getter

MAX_KEYS = 4096
SCOPES = ("sandbox", "parent", "process")


def field_getter(text: str) -> Callable[[dict[str, Any]], Any]:
    """`event.a.b` -> a getter on the event view (MISSING when absent)."""
    return getter(tuple(text.removeprefix("event.").split(".")))


def scope_getter(by: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    value = None if by in SCOPES else field_getter(by)

    def scope(data: dict[str, Any]) -> tuple[Any, ...]:
        sandbox = data.get("sandbox")
        sandbox_id = (sandbox.get("id") if type(sandbox) is dict else None) or data.get("cgroup_id") or ""
        if by == "sandbox":
            return (sandbox_id,)
        if value is not None:
            found = value(data)
            return (sandbox_id, None if found is MISSING else _hashable(found))
        process = data.get("process") or {}
        return (sandbox_id, process.get("ppid") if by == "parent" else process.get("pid"))
    return scope


def _hashable(value: Any) -> Any:
    return tuple(value) if type(value) is list else value if not isinstance(value, dict) else str(value)


@dataclass(slots=True)
class Threshold:
    count: int
    within_ns: int
    scope: Callable[[dict[str, Any]], tuple[Any, ...]]
    distinct: Callable[[dict[str, Any]], Any] | None = None
    max_keys: int = MAX_KEYS
    state: OrderedDict[tuple[Any, ...], dict[Any, int]] = field(default_factory=OrderedDict)
    evicted: int = 0

    def observe(self, time_ns: int, data: dict[str, Any]) -> bool:
        """Count the event; True when it completes the threshold (the scope then starts again)."""
        key = self.scope(data)
        seen = self.state.pop(key, None) or {}
        oldest = time_ns - self.within_ns
        for value in [v for v, t in seen.items() if t < oldest]:
            del seen[value]
        if self.distinct is not None:
            value = self.distinct(data)
            if value is MISSING:
                return False
            seen.pop(value := _hashable(value), None)
        else:
            value = (time_ns, len(seen))  # every event counts
        seen[value] = time_ns
        if len(seen) >= self.count:
            return True
        self.state[key] = seen
        if len(self.state) > self.max_keys:
            self.state.popitem(last=False)
            self.evicted += 1
        return False


@dataclass(slots=True)
class Sequence:
    steps: int
    within_ns: int
    scope: Callable[[dict[str, Any]], tuple[Any, ...]]
    keys: list[Callable[[dict[str, Any]], Any] | None]
    max_keys: int = MAX_KEYS
    state: OrderedDict[tuple[Any, ...], int] = field(default_factory=OrderedDict)  # (scope, next step, key) -> start
    evicted: int = 0

    def observe(self, step: int, time_ns: int, data: dict[str, Any]) -> bool:
        """Step `step` matched this event; True when it completes the sequence."""
        get = self.keys[step]
        key = None if get is None else get(data)
        if key is MISSING:
            return False
        key = _hashable(key)
        scope = self.scope(data)
        if step == 0:
            self._put((scope, 1, key), time_ns, time_ns)
            return False
        start = self.state.get((scope, step, key))
        if start is None:
            return False
        if time_ns - start > self.within_ns:
            del self.state[(scope, step, key)]
            return False
        if step == self.steps - 1:
            del self.state[(scope, step, key)]
            return True
        self._put((scope, step + 1, key), start, time_ns)
        return False

    def _put(self, key: tuple[Any, ...], start: int, now: int) -> None:
        """Record a partial match; drop the oldest while over the cap (counted) or expired."""
        self.state.pop(key, None)
        self.state[key] = start
        while self.state:
            first_key, first_start = next(iter(self.state.items()))
            if len(self.state) > self.max_keys:
                self.evicted += 1
            elif first_start >= now - self.within_ns:
                break
            del self.state[first_key]


def parse_seconds(value: Any) -> float | None:
    """60, 1.5, "30s", "5m", "1h" -> seconds; None if it is not a positive duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if isinstance(value, str) and value[:-1].replace(".", "", 1).isdigit() and value[-1:] in "smh":
        seconds = float(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]
        return seconds if seconds > 0 else None
    return None
