"""Sinks: where events, alerts and action records go (console, JSONL, journal, OTLP, Prometheus).

Every sink implements `Sink`. The pipeline calls `on_event` for every enriched event, `on_alert`
for every rule match, `on_action` for every action taken (or that would have been, in audit),
and `close(summary)` once at the end. A sink never raises into the pipeline and never blocks it:
slow work (network export) goes to a bounded queue, and what it drops it counts. A sink whose
writes can wait on a reader outside the monitor (a terminal, a pipe) says so in `may_block`:
`monitor run` gives those a thread of their own (see Pipeline).
"""

from __future__ import annotations

from typing import Any

from monitor.event import ActionRecord, Alert, Event


class Sink:
    name = "sink"
    may_block = False  # on_event can wait on a reader outside the monitor (terminal, pipe)

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
