"""`monitor replay JOURNAL --alerts-to FILE`: the alerts a journal recorded (in the --since /
--until window, of --sandbox) sent again through the outputs FILE lists, e.g. after an endpoint
was down (its undelivered alerts are in that window)."""

from __future__ import annotations

from typing import Any

from monitor.journal import JournalReader
from monitor.outputs.config import OutputConfig
from monitor.outputs.factory import build_outputs


def resend_alerts(journal: str, configs: list[OutputConfig], sandbox: str | None = None,
                  since_ns: int | None = None, until_ns: int | None = None,
                  undelivered_only: bool = False) -> dict[str, Any]:
    """Send the recorded alerts (`undelivered_only`: those the journal says an output could not
    deliver); returns {"alerts": n, "outputs": {name: stats}} once every output has drained (or
    given up)."""
    reader = JournalReader(journal)
    window = {"sandbox": sandbox, "since_ns": since_ns, "until_ns": until_ns}
    wanted = {str(r.value.get("alert_id")) for r in reader.records(types={"undelivered"}, **window)} \
        if undelivered_only else None
    outputs = build_outputs(configs)
    count = 0
    try:
        for record in reader.records(types={"alert"}, **window):
            if wanted is not None and record.value.id not in wanted:
                continue
            count += 1
            for sink in outputs.sinks:
                sink.on_alert(record.value)
    finally:
        for sink in outputs.sinks:
            sink.close({})
    return {"alerts": count, "outputs": {sink.name: sink.stats() for sink in outputs.sinks}}
