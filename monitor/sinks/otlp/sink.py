"""The OTLP sink: one trace per sandbox session, metrics, and one log record per alert.

Never blocking: `on_*` only append to a bounded inbox; a builder thread turns items into spans
(monitor/sinks/otlp/traces.py), metrics and logs; export queues (bounded, one thread per signal,
monitor/sinks/otlp/export.py) send with the SDK's OTLP exporters and retry failed batches with
exponential backoff. Everything not exported is counted (`stats()`, `export_stats()`, and the
sandbox_monitor_export_* metrics).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan

from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink
from monitor.sinks import metrics as m
from monitor.sinks.otlp.attributes import alert_attrs, alert_line, process_attrs, sandbox_attrs
from monitor.sinks.otlp.export import (
    CountingMetricExporter,
    ExportQueue,
    OtlpConfigError,
    SignalExport,
    make_exporters,
    resolve_endpoint,
    shutdown_quietly,
)
from monitor.sinks.otlp.meter import OtelMetrics
from monitor.sinks.otlp.traces import PresetIdGenerator, SessionContext, TraceBuilder, new_session_context

log = logging.getLogger("monitor.otlp")

DEFAULT_MAX_QUEUE = 65536       # inbox items (events, alerts, actions) waiting for the builder
DEFAULT_EXPORT_QUEUE = 8192     # spans / log records waiting for export, per signal (x8: span events)
DEFAULT_MAX_SPAN_EVENTS = 128   # span events recorded one by one per span; the rest are counted
_ALERT_GRACE_S = 0.2            # an exited process's span waits this long for the exit's alerts
_EVAL_SAMPLES_MAX = 65536       # rule-evaluation timings waiting for the builder to be idle
SIGNALS = ("traces", "metrics", "logs")

# OpenTelemetry log severity numbers: INFO=9, WARN=13, ERROR=17, ERROR2=18, FATAL=21.
SEVERITY_NUMBERS = {"info": 9, "low": 13, "medium": 17, "high": 18, "critical": 21}


class OtlpSink(Sink):
    """Traces, metrics and logs over OTLP (gRPC or HTTP/protobuf) with the OpenTelemetry SDK.

    endpoint: base URL (http://host:4318, grpc://host:4317, https://...), None = OTEL_EXPORTER_OTLP_*.
    protocol: "grpc" | "http" | None (see `resolve_endpoint`). headers: extra request headers
    (None: OTEL_EXPORTER_OTLP_HEADERS). export_timeout: seconds per export request (None:
    OTEL_EXPORTER_OTLP_TIMEOUT or 10). close_timeout: how long close() may wait for the receiver.
    """

    name = "otlp"
    # What runs the export of traces and of logs: (signal, exporter, max_queue, backoff_s=) -> SignalExport.
    # tests/bench/otlp_sdk.py puts the SDK's batch processors here to measure them against ExportQueue.
    new_export: Callable[..., SignalExport] = ExportQueue

    def __init__(self, endpoint: str | None = None, protocol: str | None = None,
                 headers: Mapping[str, str] | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                 resource_attrs: Mapping[str, Any] | None = None, *,
                 export_queue: int = DEFAULT_EXPORT_QUEUE, max_span_events: int = DEFAULT_MAX_SPAN_EVENTS,
                 export_timeout: float | None = None, close_timeout: float = 5.0,
                 metric_interval_s: float | None = None, signals: Sequence[str] = SIGNALS,
                 retry_backoff_s: float = 0.5) -> None:
        unknown = set(signals) - set(SIGNALS)
        if unknown:
            raise OtlpConfigError(f"unknown OTLP signal(s): {', '.join(sorted(unknown))}")
        self.endpoint = resolve_endpoint(endpoint, protocol)
        interval_s = metric_interval_s if metric_interval_s is not None else _env_interval_s()
        self._endpoint_text = _without_userinfo(endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")) \
            or "(OTEL defaults)"
        self.close_timeout = close_timeout
        self._max_queue = max_queue
        _quiet_sdk_loggers()
        # service.instance.id: one per monitor process, so two monitors' cumulative metrics never
        # land in the same series (Prometheus' `instance` label after a Collector).
        resource = Resource.create({m.R_SERVICE_NAME: m.SERVICE_NAME, m.R_HOST_NAME: socket.gethostname(),
                                    m.R_SERVICE_INSTANCE: str(uuid.uuid4()), "service.version": _version(),
                                    **dict(resource_attrs or {})})
        exporters = make_exporters(self.endpoint, headers, export_timeout)
        self._queues: dict[str, SignalExport] = {}
        for signal in ("traces", "logs"):
            if signal in signals:
                self._queues[signal] = self.new_export(signal, exporters[signal], export_queue,
                                                       backoff_s=retry_backoff_s)
            else:
                shutdown_quietly(exporters[signal])

        self._ids = PresetIdGenerator()
        self._tracer_provider = TracerProvider(
            resource=resource, sampler=ALWAYS_ON, shutdown_on_exit=False, id_generator=self._ids,
            span_limits=SpanLimits(max_events=max_span_events + 256, max_attributes=256, max_links=64,
                                   max_event_attributes=128, max_attribute_length=4096))
        if "traces" in self._queues:
            span_processor = self._queues["traces"].processor
            assert isinstance(span_processor, SpanProcessor)
            self._tracer_provider.add_span_processor(span_processor)
        self._traces = TraceBuilder(self._tracer_provider.get_tracer("sandbox-monitor"), self._ids, max_span_events)

        self._logger = None
        if "logs" in self._queues:
            self._logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
            log_processor = self._queues["logs"].processor
            assert isinstance(log_processor, LogRecordProcessor)
            self._logger_provider.add_log_record_processor(log_processor)
            self._logger = self._logger_provider.get_logger("sandbox-monitor")

        self._metric_exporter: CountingMetricExporter | None = None
        self._meter_provider: MeterProvider | None = None
        self._metrics: m.MetricsRecorder | None = None
        if "metrics" in signals:
            self._metric_exporter = CountingMetricExporter(exporters["metrics"])
            reader = PeriodicExportingMetricReader(self._metric_exporter, export_interval_millis=interval_s * 1000)
            self._meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
            self._metrics = OtelMetrics(self._meter_provider, self.export_stats)
        else:
            shutdown_quietly(exporters["metrics"])

        self._inbox: deque[tuple[str, Any]] = deque()
        self._inbox_dropped = 0
        self._eval_samples: deque[tuple[str, float]] = deque()
        self._shed_at = max_queue // 4  # past this backlog, file/net span events are only counted
        self._idle = threading.Event()
        self._wake = threading.Event()
        self._errors = 0
        self._last_error = ""
        self._closed = False
        self._builder = threading.Thread(target=self._run, name="otlp-builder", daemon=True)
        self._builder.start()

    # the event path: append and return
    def _put(self, kind: str, item: Any, reserve: int = 0) -> None:
        if self._closed or len(self._inbox) >= self._max_queue + reserve:
            self._inbox_dropped += 1
            return
        self._inbox.append((kind, item))
        if self._idle.is_set():
            self._idle.clear()
            self._wake.set()

    # Counters are updated here, on the caller's thread (a few dict operations), so the metrics
    # stay exact even when the trace builder falls behind and the inbox drops.
    def on_event(self, event: Event) -> None:
        self._count(lambda: self._metrics.on_event(event) if self._metrics is not None else None)
        self._put("event", event)

    def on_alert(self, alert: Alert) -> None:
        self._count(lambda: self._metrics.on_alert(alert) if self._metrics is not None else None)
        self._put("alert", alert, reserve=1024)  # alerts may use a little room events may not

    def on_action(self, record: ActionRecord) -> None:
        self._count(lambda: self._metrics.on_action(record) if self._metrics is not None else None)
        self._put("action", record, reserve=1024)

    def _count(self, update: Callable[[], None]) -> None:
        try:
            update()
        except Exception as exc:  # a sink never raises into the pipeline
            self._errors += 1
            self._last_error = f"metrics: {type(exc).__name__}: {exc}"

    def adopt_session(self, sandbox_id: str, ctx: SessionContext) -> None:
        """Use ctx's trace id and span id for the root span of sandbox `sandbox_id`."""
        self._traces.adopt(sandbox_id, ctx)

    def start_session(self, sandbox: Any) -> dict[str, str]:
        """Fix the trace of `sandbox` (anything with `.id`) now and return the environment for its
        command: TRACEPARENT (parent = the session's root span) and OTEL_RESOURCE_ATTRIBUTES."""
        ctx = new_session_context()
        self.adopt_session(str(sandbox.id), ctx)
        return ctx.child_env(str(sandbox.id))

    def record_lost(self, totals_by_probe: Mapping[str, int]) -> None:
        if self._metrics is not None:
            self._metrics.record_lost(totals_by_probe)

    def record_rule_eval(self, kind: str, seconds: float) -> None:
        """Kept aside (not in the inbox) and recorded when the builder is idle: an SDK histogram
        record is costly. When samples arrive faster than it keeps up, the histogram gets a sample."""
        if len(self._eval_samples) < _EVAL_SAMPLES_MAX:
            self._eval_samples.append((kind, seconds))

    def record_rule_errors(self, totals_by_rule: Mapping[str, int]) -> None:
        if self._metrics is not None:
            self._metrics.record_rule_errors(totals_by_rule)

    # the builder thread
    def _run(self) -> None:
        inbox = self._inbox
        while True:
            if not inbox:
                self._safely(lambda: self._traces.flush_pending(older_than_s=_ALERT_GRACE_S))
                self._safely(self._record_eval_samples)
                self._idle.set()
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            kind, item = inbox.popleft()
            self._traces.shedding = len(inbox) > self._shed_at
            if kind == "close":
                self._safely(lambda item=item: self._traces.close(item))
                self._safely(self._record_eval_samples)
                return
            self._safely(lambda kind=kind, item=item: self._handle(kind, item))

    def _record_eval_samples(self) -> None:
        samples, metrics = self._eval_samples, self._metrics
        while samples:
            kind, seconds = samples.popleft()
            if metrics is not None:
                metrics.record_rule_eval(kind, seconds)

    def _safely(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # one malformed event must not stop the export of the others
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            if self._errors == 1:
                log.warning("OTLP sink: %s", self._last_error, exc_info=True)

    def _handle(self, kind: str, item: Any) -> None:
        if kind == "event":
            self._traces.on_event(item)
        elif kind == "alert":
            span_context = self._traces.on_alert(item)
            self._emit_alert_log(item, span_context)
        elif kind == "action":
            self._traces.on_action(item)

    def _emit_alert_log(self, alert: Alert, span_context: Any) -> None:
        if self._logger is None:
            return
        attrs = alert_attrs(alert)
        attrs.update(sandbox_attrs(alert.event.sandbox or {}))
        attrs.update({k: v for k, v in process_attrs(alert.event.process).items()
                      if k in (m.PROCESS_PID, m.PROCESS_EXECUTABLE_PATH, m.PROCESS_COMMAND_ARGS)})
        context = (trace_api.set_span_in_context(NonRecordingSpan(span_context))
                   if span_context is not None else Context())
        from opentelemetry._logs import SeverityNumber
        self._logger.emit(timestamp=alert.event.time_ns, observed_timestamp=alert.time_ns, context=context,
                          severity_number=SeverityNumber(SEVERITY_NUMBERS.get(alert.severity, 9)),
                          severity_text=alert.severity.upper(), body=alert_line(alert), attributes=attrs,
                          event_name="sandbox_monitor.alert")

    # the end
    def close(self, summary: dict[str, Any]) -> None:
        if self._closed:
            return
        deadline = time.monotonic() + self.close_timeout
        if self._metrics is not None:
            self._metrics.close(summary)
        self._inbox.append(("close", time.time_ns()))
        self._closed = True
        self._builder.join(max(0.5, deadline - time.monotonic()))
        for queue in self._queues.values():
            queue.drain(deadline)
        if self._meter_provider is not None:
            self._shutdown_metrics(deadline)
        stats = summary.setdefault("sinks", {})[self.name] = self.stats()
        if stats["not_exported"]:
            log.warning("OTLP export to %s: %d items not exported (%s)", self._endpoint_text,
                        stats["not_exported"], stats.get("last_error") or "queues full")

    def _shutdown_metrics(self, deadline: float) -> None:
        """A last collection and export, bounded by the deadline (a dead receiver must not hold exit)."""
        provider = self._meter_provider
        assert provider is not None and self._metric_exporter is not None
        done = threading.Thread(target=lambda: provider.shutdown(timeout_millis=max(
            100, (deadline - time.monotonic()) * 1000)), daemon=True)
        done.start()
        done.join(max(0.1, deadline - time.monotonic()))
        if done.is_alive():
            shutdown_quietly(self._metric_exporter.inner)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until the builder has handled everything queued so far (tests, replay)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self._inbox and self._idle.is_set():
                return True
            time.sleep(0.01)
        return False

    def export_stats(self) -> dict[str, dict[str, Any]]:
        stats = {signal: queue.stats() for signal, queue in self._queues.items()}
        if self._metric_exporter is not None:
            stats["metrics"] = {"queued": 0, "exported": self._metric_exporter.exported,
                                "failures": self._metric_exporter.failures,
                                "dropped_queue_full": 0, "dropped_shutdown": 0}
        stats["events"] = {"queued": len(self._inbox), "exported": 0, "failures": 0,
                           "dropped_queue_full": self._inbox_dropped, "dropped_shutdown": 0}
        return stats

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoint": self._endpoint_text,
                               "protocol": self.endpoint.protocol, "inbox_dropped": self._inbox_dropped,
                               "untraced_events": self._traces.untraced, "late_events": self._traces.late,
                               "span_events_shed": self._traces.shed,
                               "errors": self._errors}
        for signal, stats in self.export_stats().items():
            if signal != "events":
                out[signal] = stats
        not_exported = sum(s["dropped_queue_full"] + s["dropped_shutdown"] for s in self.export_stats().values())
        out["not_exported"] = not_exported
        errors = [q.last_error for q in self._queues.values() if q.last_error]
        if self._last_error:
            errors.append(self._last_error)
        if errors:
            out["last_error"] = errors[0]
        return out


def _without_userinfo(url: str) -> str:
    """A URL fit for logs and summaries: no user:password@."""
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]).geturl()


def _env_interval_s() -> float:
    raw = os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", "10000")
    try:
        interval_ms = float(raw)
    except ValueError:
        raise OtlpConfigError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r}: not a number of milliseconds") from None
    if interval_ms <= 0:
        raise OtlpConfigError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r}: must be positive")
    return interval_ms / 1000.0


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("sandbox-monitor")
    except Exception:
        return "0"


def _quiet_sdk_loggers() -> None:
    """The SDK exporters log every retry; the sink counts failures and says so once instead."""
    for name in ("opentelemetry.exporter.otlp", "opentelemetry.sdk.metrics._internal.export",
                 "opentelemetry.sdk._shared_internal", "opentelemetry.exporter.otlp.common"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
