"""Alert delivery: Alertmanager, webhooks, OCSF, syslog and local commands (issue 27).

    from monitor.outputs import load_outputs, build_outputs, OutputsError
    configs = load_outputs("outputs.yaml")           # OutputsError: "file:line: what", before anything starts
    outputs = build_outputs(configs, on_undelivered=journal_hook)
    sinks += outputs.sinks                           # each an OutputSink (a Sink)

Each output routes (min severity, rule names and tags, sandbox selectors), de-duplicates and
rate-limits on the pipeline's thread, and delivers on its own worker thread behind a bounded
queue, with retries (backoff + jitter) and a circuit breaker: delivery never blocks capture or
enforcement. What is suppressed is counted per rule and reason; what is not delivered is counted
and handed to `on_undelivered` (an `Undelivered` record: type "undelivered" in the journal).
See docs/outputs.md.
"""

from __future__ import annotations

from monitor.outputs.config import OutputConfig, OutputsError, load_outputs, parse_outputs
from monitor.outputs.delivery import DeliveryError, OutputSink, Transport, Undelivered
from monitor.outputs.factory import Outputs, build_outputs, note_trace
from monitor.outputs.payload import SCHEMA, Notice

__all__ = ["SCHEMA", "DeliveryError", "Notice", "OutputConfig", "OutputSink", "Outputs", "OutputsError",
           "Transport", "Undelivered", "build_outputs", "load_outputs", "note_trace", "parse_outputs"]
