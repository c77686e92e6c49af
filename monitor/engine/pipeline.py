"""One batch at a time, left to right: enrich -> policy -> actions -> sinks.

Sources (monitor.source.Source) produce `Event`s; the judging loop (monitor.engine.loop) hands
each batch to `Pipeline.process_all`, which judges and acts on every event before any sink sees
the batch, so a kill never waits behind a sink.
"""

from __future__ import annotations

import operator
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from time import perf_counter
from typing import Any, Protocol

from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink

Judged = tuple[Event, list[Alert], list[ActionRecord]]

EVAL_SAMPLE_EVERY = 8
_KIND = operator.attrgetter("kind")
SINK_BATCH = 1024  # events per queued sink batch
SINK_QUEUE_BATCHES = 64  # at most 64 x 1024 events wait for the sinks; then judging waits too
SINK_HOLD_S = 0.05  # judged events without an alert wait this long to go to the sinks together


class Enricher(Protocol):
    def enrich(self, event: Event) -> None: ...


class Policy(Protocol):
    def evaluate(self, event: Event) -> list[Alert]: ...


class Actor(Protocol):
    def take(self, alert: Alert) -> ActionRecord | None: ...


class Pipeline:
    def __init__(self, enricher: Enricher | None, policy: Policy | None, actor: Actor | None,
                 sinks: list[Sink], threaded_sinks: bool = False) -> None:
        self.enricher = enricher
        self.policy = policy
        self.actor = actor
        self.sinks = sinks
        self.events_by_kind: Counter[str] = Counter()
        self.alerts_by_rule: Counter[str] = Counter()
        self.alerts_by_severity: Counter[str] = Counter()
        self.actions: list[ActionRecord] = []
        self.eval_seconds: Counter[str] = Counter()  # rule evaluation time by event kind
        self._eval_count = 0
        # sinks that histogram rule-evaluation latency (OTLP, Prometheus), fed a 1-in-N sample
        self._eval_observers = [s.record_rule_eval for s in sinks
                                if type(s).record_rule_eval is not Sink.record_rule_eval]
        # Sinks that can wait on a reader outside the monitor (a terminal, a pipe: `may_block`)
        # run on their own thread, so a slow reader never delays a kill; the queue is bounded
        # and put() blocks when full (backpressure), so no record is ever dropped. The others
        # (journal, OTLP's queue, a JSON file) run inline once each batch is judged: under the
        # GIL a thread buys them no parallelism, and handing every event to another core costs
        # more than writing it (docs/performance.md, "sink threads").
        threaded = [s for s in sinks if s.may_block] if threaded_sinks else []
        self._inline_sinks = [s for s in sinks if s not in threaded]
        self._threaded_sinks = threaded
        self._queue: queue.Queue[list[Judged] | None] | None = None
        self._worker: threading.Thread | None = None
        # Judged events gather here before they are handed to the sink thread: under an exec
        # storm, batches of one or two events each woke that thread, at a cost the storm showed.
        self._outbox: list[Judged] = []
        self._outbox_since = 0.0
        if threaded:
            sys.setswitchinterval(0.001)  # the judging thread gets the GIL back quickly
            self._queue = queue.Queue(maxsize=SINK_QUEUE_BATCHES)
            self._worker = threading.Thread(target=self._sink_loop, name="sinks", daemon=True)
            self._worker.start()

    def _sink_loop(self) -> None:
        assert self._queue is not None
        while (batch := self._queue.get()) is not None:
            for event, alerts, records in batch:
                self.emit(event, alerts, records, self._threaded_sinks)

    def judge(self, event: Event) -> tuple[list[Alert], list[ActionRecord]]:
        """enrich -> policy -> actions: the latency-critical half (no sink runs here)."""
        judged = self._judge(event)
        self.events_by_kind[event.kind] += 1
        return judged

    def _judge(self, event: Event) -> tuple[list[Alert], list[ActionRecord]]:
        """judge() without counting the event (process_all counts a batch at once)."""
        if self.enricher is not None:
            self.enricher.enrich(event)
        if self.policy is not None:
            started = perf_counter()
            alerts = self.policy.evaluate(event)
            seconds = perf_counter() - started
            self.eval_seconds[event.kind] += seconds
            if self._eval_observers:
                self._eval_count += 1
                if self._eval_count % EVAL_SAMPLE_EVERY == 0:
                    for observe in self._eval_observers:
                        observe(event.kind, seconds)
        else:
            alerts = []
        records: list[ActionRecord] = []
        for alert in alerts:
            self.alerts_by_rule[alert.rule] += 1
            self.alerts_by_severity[alert.severity] += 1
            record = self.actor.take(alert) if self.actor is not None else None
            if record is not None:
                records.append(record)
                self.actions.append(record)
        return alerts, records

    def emit(self, event: Event, alerts: list[Alert], records: list[ActionRecord],
             sinks: list[Sink] | None = None) -> None:
        for sink in self.sinks if sinks is None else sinks:
            sink.on_event(event)
            for alert in alerts:
                sink.on_alert(alert)
            for record in records:
                sink.on_action(record)

    def process(self, event: Event) -> list[Alert]:
        alerts, records = self.judge(event)
        self.emit(event, alerts, records, self._inline_sinks)
        if self._queue is not None:
            self._outbox.append((event, alerts, records))
            self._hand_over()
        return alerts

    def process_all(self, events: Iterable[Event]) -> None:
        """A batch: every event is judged (and acted on) before any sink sees the batch, so a
        kill never waits behind a sink."""
        events = events if type(events) is list else list(events)
        judged = [(event, *self._judge(event)) for event in events]
        if not judged:
            return
        self.events_by_kind.update(map(_KIND, events))  # counted per batch: one C loop
        if self._queue is not None:  # first: an alert reaches the terminal before the journal
            if not self._outbox:
                self._outbox_since = time.monotonic()
            self._outbox.extend(judged)
            if len(self._outbox) >= SINK_BATCH or any(alerts for _, alerts, _ in judged):
                self._hand_over()
            else:
                self.flush_due()
        if self._inline_sinks:
            for event, alerts, records in judged:
                self.emit(event, alerts, records, self._inline_sinks)

    def flush_due(self) -> None:
        """Hand what waits to the sinks once it has waited SINK_HOLD_S (call between batches)."""
        if self._outbox and time.monotonic() - self._outbox_since >= SINK_HOLD_S:
            self._hand_over()

    def _hand_over(self) -> None:
        assert self._queue is not None
        judged, self._outbox = self._outbox, []
        for start in range(0, len(judged), SINK_BATCH):  # bounded memory: batches <= SINK_BATCH
            self._queue.put(judged[start:start + SINK_BATCH])

    def summary(self) -> dict[str, Any]:
        return {"events": sum(self.events_by_kind.values()),
                "events_by_kind": dict(self.events_by_kind),
                "alerts": sum(self.alerts_by_rule.values()),
                "alerts_by_rule": dict(self.alerts_by_rule),
                "alerts_by_severity": dict(self.alerts_by_severity),
                "actions": [r.to_dict() for r in self.actions]}

    def close(self, summary: dict[str, Any]) -> None:
        if self._queue is not None and self._worker is not None:
            self._hand_over()
            self._queue.put(None)
            self._worker.join()
            self._queue = self._worker = None
        # Stores and exporters close first, so the summary that the reporting sinks (console,
        # JSON) write carries their final counts.
        reporting = [s for s in self.sinks if s.reports_summary]
        for sink in [s for s in self.sinks if s not in reporting] + reporting:
            if sink is (reporting[0] if reporting else None):
                summary["sinks"] = {s.name: s.stats() for s in self.sinks if s.stats()}
            try:
                sink.close(summary)
            except Exception as exc:  # a sink failing at close must not lose the others
                summary.setdefault("sink_errors", {})[sink.name] = str(exc)
