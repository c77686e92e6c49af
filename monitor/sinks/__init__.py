"""Sinks: where events, alerts and action records go (console, JSONL, journal, OTLP, Prometheus).

Every sink subclasses `Sink`, whose hooks all have no-op defaults. The pipeline calls `on_event`
for every judged event, `on_alert` for every rule match, `on_action` for every action taken (or
that would have been, in audit), and `close(summary)` once at the end. Optional hooks: telemetry
sinks observe rule evaluation (`record_rule_eval`, `record_rule_errors`), an exporter reports its
queue (`export_stats`), and a tracing sink gives the sandboxed command its trace context
(`start_session`). A sink never raises into the pipeline and never blocks it:
slow work (network export) goes to a bounded queue, and what it drops it counts. A sink whose
writes can wait on a reader outside the monitor (a terminal, a pipe) says so in `may_block`:
`monitor run` gives those a thread of their own (see Pipeline).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from monitor.event import ActionRecord, Alert, Event

if TYPE_CHECKING:
    from monitor.sandbox import Sandbox


class Sink:
    name = "sink"
    may_block = False  # on_event can wait on a reader outside the monitor (terminal, pipe)
    reports_summary = False  # writes the summary for a reader: closed after the others

    def on_event(self, event: Event) -> None:  # noqa: B027 - optional hook
        pass

    def on_alert(self, alert: Alert) -> None:  # noqa: B027
        pass

    def on_action(self, record: ActionRecord) -> None:  # noqa: B027
        pass

    def close(self, summary: dict[str, Any]) -> None:  # noqa: B027
        pass

    def stats(self) -> dict[str, Any]:
        """Counters for the summary (exported, dropped, ...)."""
        return {}

    def record_rule_eval(self, kind: str, seconds: float) -> None:  # noqa: B027
        """One rule-evaluation time (the pipeline hands over one event in EVAL_SAMPLE_EVERY)."""

    def record_rule_errors(self, totals_by_rule: Mapping[str, int]) -> None:  # noqa: B027
        """Evaluation-error totals per rule (absolute)."""

    def export_stats(self) -> dict[str, dict[str, Any]] | None:
        """Export health (queue depth, drops) for /metrics; None: this sink exports nothing."""
        return None

    def start_session(self, sandbox: Sandbox) -> dict[str, str]:
        """Environment for a sandbox's first process (TRACEPARENT), before it starts."""
        return {}
