"""Glue: one event at a time, left to right: enrich -> policy -> actions -> sinks.

Sources (eBPF sensor, gVisor trace sink, libssl uprobes, Docker posture) produce `Event`s and
hand them to `Pipeline.process`. A source implements `Source`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink


class Source(Protocol):
    name: str

    def poll(self, timeout_ms: int) -> Iterable[Event]:
        """Events that arrived, waiting at most timeout_ms for the first."""

    def lost(self) -> dict[str, int]:
        """Records lost so far, by probe or channel (never silent)."""

    def close(self) -> None: ...


class Enricher(Protocol):
    def enrich(self, event: Event) -> None: ...


class Policy(Protocol):
    def evaluate(self, event: Event) -> list[Alert]: ...


class Actor(Protocol):
    def take(self, alert: Alert) -> ActionRecord | None: ...


class Pipeline:
    def __init__(self, enricher: Enricher | None, policy: Policy | None, actor: Actor | None,
                 sinks: list[Sink]) -> None:
        self.enricher = enricher
        self.policy = policy
        self.actor = actor
        self.sinks = sinks
        self.events_by_kind: Counter[str] = Counter()
        self.alerts_by_rule: Counter[str] = Counter()
        self.alerts_by_severity: Counter[str] = Counter()
        self.actions: list[ActionRecord] = []

    def process(self, event: Event) -> list[Alert]:
        if self.enricher is not None:
            self.enricher.enrich(event)
        self.events_by_kind[event.kind] += 1
        for sink in self.sinks:
            sink.on_event(event)
        alerts = self.policy.evaluate(event) if self.policy is not None else []
        for alert in alerts:
            self.alerts_by_rule[alert.rule] += 1
            self.alerts_by_severity[alert.severity] += 1
            for sink in self.sinks:
                sink.on_alert(alert)
            record = self.actor.take(alert) if self.actor is not None else None
            if record is not None:
                self.actions.append(record)
                for sink in self.sinks:
                    sink.on_action(record)
        return alerts

    def process_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.process(event)

    def summary(self) -> dict[str, Any]:
        return {"events": sum(self.events_by_kind.values()),
                "events_by_kind": dict(self.events_by_kind),
                "alerts": sum(self.alerts_by_rule.values()),
                "alerts_by_rule": dict(self.alerts_by_rule),
                "alerts_by_severity": dict(self.alerts_by_severity),
                "actions": [r.to_dict() for r in self.actions]}

    def close(self, summary: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.close(summary)
            except Exception as exc:  # a sink failing at close must not lose the others
                summary.setdefault("sink_errors", {})[sink.name] = str(exc)
