"""Alerts and actions as one log line each (stderr / the systemd journal): the daemon's."""

from __future__ import annotations

import logging

from monitor.event import ActionRecord, Alert
from monitor.sinks import Sink

log = logging.getLogger("monitor.daemon")


class AlertLog(Sink):
    """Alerts and actions as one log line each (stderr / the systemd journal)."""
    name = "alertlog"

    def on_alert(self, alert: Alert) -> None:
        sandbox = (alert.event.sandbox or {}).get("name", "?")
        log.warning("alert %s [%s] %s in %s (%s)", alert.rule, alert.severity, alert.event.kind,
                    sandbox, alert.mode)

    def on_action(self, record: ActionRecord) -> None:
        log.warning("action %s by %s on %s: %s %s", record.action, record.rule,
                    record.target.get("sandbox"), record.outcome, record.message)
