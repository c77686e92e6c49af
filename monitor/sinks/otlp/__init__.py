"""OTLP export of traces, metrics and alert logs (docs/otlp.md).

`sink` holds `OtlpSink`; `traces` turns sandbox sessions into spans; `export` resolves the
endpoint and runs the export queues in front of the SDK's OTLP exporters; `meter` puts the
monitor's metrics on an OpenTelemetry meter; `attributes` makes the attribute values.
"""

from __future__ import annotations

from monitor.sinks.otlp.export import Endpoint, ExportQueue, OtlpConfigError, resolve_endpoint
from monitor.sinks.otlp.sink import OtlpSink
from monitor.sinks.otlp.traces import SessionContext, TraceBuilder, new_session_context

__all__ = ["Endpoint", "ExportQueue", "OtlpConfigError", "OtlpSink", "SessionContext", "TraceBuilder",
           "new_session_context", "resolve_endpoint"]
