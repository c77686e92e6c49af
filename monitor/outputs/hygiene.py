"""Alert hygiene: deduplication, per-rule rate limits and a global ceiling, every suppression
counted per rule and reason.

Dedup: the first alert of a (rule, sandbox, key) goes out at once; its repeats within the window
are folded, and when the window closes one more notice carries the total count (only when the
first went out and repeats came). Rate limits are fixed windows that start with their first
alert: at most `count` alerts per `period` for each rule, and for the output as a whole.
Times are the caller's clock (seconds), so a test can drive a minute of alerts in a moment.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from monitor.event import Alert
from monitor.outputs.payload import Notice

DEDUP = "dedup"
RATE_LIMIT = "rate_limit"
GLOBAL_LIMIT = "global_limit"
REASONS = (DEDUP, RATE_LIMIT, GLOBAL_LIMIT)
MAX_DEDUP_KEYS = 50_000  # beyond this many open windows, alerts pass to the rate limits unfolded


@dataclass(frozen=True, slots=True)
class Limit:
    count: int
    period_s: float


@dataclass(slots=True)
class _Window:
    started: float = 0.0
    used: int = 0

    def take(self, limit: Limit, now: float) -> bool:
        if now - self.started >= limit.period_s:
            self.started, self.used = now, 0
        if self.used >= limit.count:
            return False
        self.used += 1
        return True


@dataclass(slots=True)
class _Folded:
    ends: float
    first: Alert
    sent: bool = False
    count: int = 1
    last_ns: int = 0


@dataclass(slots=True)
class HygieneConfig:
    dedup_window_s: float = 0.0            # 0: no deduplication
    dedup_key: tuple[str, ...] = ()        # event field paths; empty: the alert's matched fields
    per_rule: Limit | None = None
    ceiling: Limit | None = None


@dataclass
class Hygiene:
    config: HygieneConfig
    suppressed: dict[str, Counter[str]] = field(default_factory=dict)  # rule -> reason -> count
    _folded: OrderedDict[tuple[Any, ...], _Folded] = field(default_factory=OrderedDict)
    _rules: dict[str, _Window] = field(default_factory=dict)
    _ceiling: _Window = field(default_factory=_Window)
    _closed: list[Notice] = field(default_factory=list)

    def admit(self, alert: Alert, now: float) -> bool:
        """True: deliver this alert now. False: suppressed (counted)."""
        cfg = self.config
        entry: _Folded | None = None
        if cfg.dedup_window_s > 0:
            key = self._key(alert)
            entry = self._folded.get(key)
            if entry is not None and now < entry.ends:
                entry.count += 1
                entry.last_ns = alert.event.time_ns
                return self._suppress(alert.rule, DEDUP)
            if entry is not None:
                self._close(self._folded.pop(key))
            entry = None
            if len(self._folded) < MAX_DEDUP_KEYS:
                entry = self._folded[key] = _Folded(now + cfg.dedup_window_s, alert,
                                                    last_ns=alert.event.time_ns)
        if cfg.per_rule is not None:
            window = self._rules.get(alert.rule)
            if window is None:
                window = self._rules[alert.rule] = _Window(now)
            if not window.take(cfg.per_rule, now):
                return self._suppress(alert.rule, RATE_LIMIT)
        if cfg.ceiling is not None and not self._ceiling.take(cfg.ceiling, now):
            return self._suppress(alert.rule, GLOBAL_LIMIT)
        if entry is not None:
            entry.sent = True
        return True

    def due(self, now: float) -> list[Notice]:
        """Notices for the dedup windows that closed by `now` (folded repeats, with their count)."""
        while self._folded:
            key, entry = next(iter(self._folded.items()))
            if entry.ends > now:
                break
            del self._folded[key]
            self._close(entry)
        closed, self._closed = self._closed, []
        return closed

    def close_all(self) -> list[Notice]:
        for entry in self._folded.values():
            self._close(entry)
        self._folded.clear()
        closed, self._closed = self._closed, []
        return closed

    def suppressed_total(self) -> int:
        return sum(sum(c.values()) for c in self.suppressed.values())

    def _close(self, entry: _Folded) -> None:
        if entry.sent and entry.count > 1:
            self._closed.append(Notice("alert", entry.first, count=entry.count,
                                       first_ns=entry.first.event.time_ns, last_ns=entry.last_ns))

    def _suppress(self, rule: str, reason: str) -> bool:
        counts = self.suppressed.get(rule)
        if counts is None:
            counts = self.suppressed[rule] = Counter()
        counts[reason] += 1
        return False

    def _key(self, alert: Alert) -> tuple[Any, ...]:
        event = alert.event
        sandbox = (event.sandbox or {}).get("id", "")
        if not self.config.dedup_key:
            return (alert.rule, sandbox, *sorted((k, repr(v)) for k, v in alert.matched.items()))
        return (alert.rule, sandbox, *(repr(field_value(event, path)) for path in self.config.dedup_key))


def field_value(event: Any, path: str) -> Any:
    """`process.executable` of an Event (None when absent)."""
    head, _, rest = path.partition(".")
    value = getattr(event, head, None)
    for part in rest.split(".") if rest else ():
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
