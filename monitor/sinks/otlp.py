"""OTLP export: one trace per sandbox session, metrics, and one log record per alert.

Trace model (what Tempo shows):
  root span      sandbox_start .. sandbox_end (or close): sandbox identity, host, labels
  process spans  exec .. exit, parented by the span of the process that forked it (fork events, else
                 ppid), so the trace view is the process tree; a second exec of a pid is a child of
                 its first image's span
  span events    file / net / other events on their process's span, `max_span_events` per span and
                 then only counted (an `events.capped` event with counts by kind at span end); the
                 unique files written and egress destinations ride on the span as attributes
  alerts         span event `alert`, status ERROR, `alert.rule` attribute (TraceQL: span.alert.rule)
  model calls    llm_response -> a CLIENT span with GenAI semantic-convention attributes from the
                 request time to the response time; a process whose `caused_by` names it links to it

The trace id of a session can be fixed before the sandboxed command starts: `new_session_context()`
gives ids and the TRACEPARENT for the child, `OtlpSink.adopt_session(sandbox_id, ctx)` makes the
sink use them for that sandbox's root span, so an instrumented agent joins the same trace.

Never blocking: `on_*` only append to a bounded inbox; a builder thread turns items into spans,
metrics and logs; export queues (bounded, one thread per signal) send with the SDK's OTLP exporters
and retry failed batches with exponential backoff. Everything not exported is counted
(`stats()`, `export_stats()`, and the sandbox_monitor_export_* metrics).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadableLogRecord
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from monitor.event import SEVERITIES, ActionRecord, Alert, Event, utf8_safe
from monitor.sinks import Sink
from monitor.sinks import metrics as m

log = logging.getLogger("monitor.otlp")

DEFAULT_MAX_QUEUE = 65536       # inbox items (events, alerts, actions) waiting for the builder
DEFAULT_EXPORT_QUEUE = 8192     # spans / log records waiting for export, per signal (x8: span events)
DEFAULT_MAX_SPAN_EVENTS = 128   # span events recorded one by one per span; the rest are counted
_UNIQUE_CAP = 64                # files written / destinations kept per span
_LRU_CAP = 4096
_FAILING_DRAIN_S = 1.0          # close() waits no longer than this for a receiver already failing
_ALERT_GRACE_S = 0.2            # an exited process's span waits this long for the exit's alerts
_EVAL_SAMPLES_MAX = 65536       # rule-evaluation timings waiting for the builder to be idle
_BATCH_WEIGHT = 4096            # spans + span events per export request (~1 MiB encoded)
SIGNALS = ("traces", "metrics", "logs")

# OpenTelemetry log severity numbers: INFO=9, WARN=13, ERROR=17, ERROR2=18, FATAL=21.
SEVERITY_NUMBERS = {"info": 9, "low": 13, "medium": 17, "high": 18, "critical": 21}
_SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


class OtlpConfigError(ValueError):
    """A bad endpoint or protocol: one line for the user."""


# --- session context: the trace id decided before the sandboxed command starts ---------------

@dataclass(frozen=True, slots=True)
class SessionContext:
    trace_id: int
    span_id: int  # the root span's id: the parent of anything the sandboxed program emits

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"

    def child_env(self, sandbox_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """TRACEPARENT and OTEL_RESOURCE_ATTRIBUTES (with sandbox.id) for the sandboxed command;
        an OTEL_RESOURCE_ATTRIBUTES already in `base` (default os.environ) is kept."""
        base = os.environ if base is None else base
        inherited = base.get("OTEL_RESOURCE_ATTRIBUTES", "").strip().strip(",")
        attrs = f"{m.SANDBOX_ID}={sandbox_id}" + (f",{inherited}" if inherited else "")
        return {"TRACEPARENT": self.traceparent, "OTEL_RESOURCE_ATTRIBUTES": attrs}


def new_session_context() -> SessionContext:
    ids = RandomIdGenerator()
    return SessionContext(trace_id=ids.generate_trace_id(), span_id=ids.generate_span_id())


class _PresetIdGenerator(RandomIdGenerator):
    """Random ids, except for the next root span when a session context was adopted."""

    def __init__(self) -> None:
        self.preset: SessionContext | None = None

    def generate_trace_id(self) -> int:
        return self.preset.trace_id if self.preset else super().generate_trace_id()

    def generate_span_id(self) -> int:
        if self.preset:
            span_id, self.preset = self.preset.span_id, None
            return span_id
        return super().generate_span_id()


# --- endpoint and exporters -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str          # grpc | http
    url: str | None        # base URL (scheme http/https); None: the exporters read OTEL_* variables


def resolve_endpoint(endpoint: str | None, protocol: str | None = None) -> Endpoint:
    """Protocol: the argument, else a grpc:// or grpcs:// scheme, else OTEL_EXPORTER_OTLP_PROTOCOL,
    else port 4317 means grpc, else http/protobuf (the OTLP default)."""
    proto = _normalize_protocol(protocol) if protocol else None
    if endpoint is None:
        env_proto = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        return Endpoint(proto or (_normalize_protocol(env_proto) if env_proto else "http"), None)
    parsed = urlparse(endpoint)
    try:
        port = parsed.port
    except ValueError:
        raise OtlpConfigError(f"OTLP endpoint {endpoint!r}: bad port") from None
    if parsed.scheme not in ("http", "https", "grpc", "grpcs") or not parsed.hostname:
        raise OtlpConfigError(
            f"OTLP endpoint {endpoint!r}: expected a URL such as http://127.0.0.1:4318 or grpc://127.0.0.1:4317")
    if proto is None and parsed.scheme.startswith("grpc"):
        proto = "grpc"
    if proto is None and os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL"):
        proto = _normalize_protocol(os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"])
    if proto is None:
        proto = "grpc" if port == 4317 else "http"
    scheme = "https" if parsed.scheme in ("https", "grpcs") else "http"
    return Endpoint(proto, parsed._replace(scheme=scheme).geturl().rstrip("/"))


def _normalize_protocol(value: str) -> str:
    value = value.strip().lower()
    if value == "grpc":
        return "grpc"
    if value in ("http", "http/protobuf"):
        return "http"
    raise OtlpConfigError(f"OTLP protocol {value!r} not supported (use grpc or http/protobuf)")


def _exporters(ep: Endpoint, headers: Mapping[str, str] | None, timeout: float | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"timeout": timeout}
    if headers:
        kwargs["headers"] = dict(headers)
    if ep.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return {"traces": OTLPSpanExporter(endpoint=ep.url, **kwargs),
                "metrics": OTLPMetricExporter(endpoint=ep.url, **kwargs),
                "logs": OTLPLogExporter(endpoint=ep.url, **kwargs)}
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    def url(signal: str) -> str | None:  # None: the exporter resolves OTEL_EXPORTER_OTLP_*_ENDPOINT
        return f"{ep.url}/v1/{signal}" if ep.url else None
    return {"traces": HttpSpans(endpoint=url("traces"), **kwargs),
            "metrics": HttpMetrics(endpoint=url("metrics"), **kwargs),
            "logs": HttpLogs(endpoint=url("logs"), **kwargs)}


# --- export queues ----------------------------------------------------------------------------

class ExportQueue:
    """Bounded queue + thread in front of one SDK exporter. `put` never blocks; a failed batch is
    kept and retried with exponential backoff while new items queue (or are dropped, counted).
    Bounded in items and in weight (a span weighs 1 + its span events), so a receiver that is down
    for long holds a bounded amount of memory."""

    def __init__(self, signal: str, exporter: Any, max_queue: int, batch_size: int = 512,
                 delay_s: float = 0.5, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 max_weight: int | None = None) -> None:
        self.signal = signal
        self._exporter = exporter
        self._max_queue = max_queue
        self._max_weight = max_weight if max_weight is not None else max_queue * 8
        self._weight = 0
        self._batch_size = batch_size
        self._delay_s = delay_s
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._items: deque[tuple[Any, int]] = deque()
        self._batch: list[Any] = []
        self._wake = threading.Event()
        self._draining = threading.Event()
        self._abort = threading.Event()
        self._retry_now = threading.Event()
        self._failing = False
        self.exported = 0
        self.failures = 0
        self.dropped_queue_full = 0
        self.dropped_shutdown = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name=f"otlp-export-{signal}", daemon=True)
        self._thread.start()

    def put(self, item: Any, weight: int = 1) -> None:
        if self._abort.is_set():
            self.dropped_shutdown += 1
            return
        too_heavy = self._weight + weight > self._max_weight and self._weight > 0  # one always fits
        if len(self._items) >= self._max_queue or too_heavy:
            self.dropped_queue_full += 1
            return
        self._weight += weight
        self._items.append((item, weight))
        if len(self._items) >= self._batch_size:
            self._wake.set()

    def queued(self) -> int:
        return len(self._items) + len(self._batch)

    def _run(self) -> None:
        backoff = self._backoff_s
        while not self._abort.is_set():
            if not self._batch:
                if not self._items:
                    if self._draining.is_set():
                        return
                    self._wake.wait(self._delay_s)
                    self._wake.clear()
                    continue
                self._batch = self._take_batch()
            if self._send(self._batch):
                if not self._abort.is_set():
                    self.exported += len(self._batch)
                self._batch = []
                self._failing = False
                backoff = self._backoff_s
                continue
            self.failures += 1
            self._failing = True
            if self.failures == 1:
                log.warning("OTLP %s export failed (%s); retrying with backoff", self.signal, self.last_error)
            self._retry_now.wait(backoff)
            self._retry_now.clear()
            backoff = min(backoff * 2, self._backoff_max_s)

    def _take_batch(self) -> list[Any]:
        """Up to batch_size items and _BATCH_WEIGHT weight (at least one item): a request stays
        well under a collector's 4 MiB gRPC message limit."""
        batch: list[Any] = []
        weight = 0
        while self._items and len(batch) < self._batch_size:
            if batch and weight + self._items[0][1] > _BATCH_WEIGHT:
                break
            item, item_weight = self._items.popleft()
            batch.append(item)
            weight += item_weight
        self._weight -= weight
        return batch

    def _send(self, batch: Sequence[Any]) -> bool:
        try:
            result = self._exporter.export(batch)
        except Exception as exc:  # an exporter bug must not end the export thread
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        ok = getattr(result, "name", "") == "SUCCESS"
        if not ok:
            self.last_error = "receiver refused or unreachable"
        return ok

    def drain(self, deadline: float) -> None:
        """Export what is queued until `deadline` (time.monotonic()), then give up and count it.
        A receiver that is failing gets one more prompt try and at most _FAILING_DRAIN_S."""
        if self._failing:
            deadline = min(deadline, time.monotonic() + _FAILING_DRAIN_S)
        self._draining.set()
        self._wake.set()
        self._retry_now.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abort.set()
            self._retry_now.set()
            self.dropped_shutdown += len(self._items) + len(self._batch)
            self._items.clear()
            self._weight = 0
            self._batch = []
        _shutdown_quietly(self._exporter)

    def stats(self) -> dict[str, Any]:
        return {"queued": self.queued(), "exported": self.exported, "failures": self.failures,
                "dropped_queue_full": self.dropped_queue_full, "dropped_shutdown": self.dropped_shutdown}


def _shutdown_quietly(exporter: Any) -> None:
    try:
        exporter.shutdown()
    except Exception as exc:  # shutting down a dead connection may raise; nothing left to do
        log.debug("exporter shutdown: %s", exc)


class _SpanQueueProcessor(SpanProcessor):
    def __init__(self, queue: ExportQueue) -> None:
        self._queue = queue

    def on_end(self, span: ReadableSpan) -> None:
        self._queue.put(span, 1 + len(span.events))


class _LogQueueProcessor(LogRecordProcessor):
    def __init__(self, queue: ExportQueue) -> None:
        self._queue = queue

    def on_emit(self, log_record: Any) -> None:
        self._queue.put(ReadableLogRecord(log_record=log_record.log_record, resource=log_record.resource,
                                          instrumentation_scope=log_record.instrumentation_scope,
                                          limits=log_record.limits))

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _CountingMetricExporter(MetricExporter):
    """Counts metric exports; cumulative temporality makes the next success carry what a failed
    one missed, so the periodic reader itself is the retry."""

    def __init__(self, inner: MetricExporter) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner = inner
        self.exported = 0
        self.failures = 0
        self.last_error = ""

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            result = MetricExportResult.FAILURE
        if result == MetricExportResult.SUCCESS:
            self.exported += 1
        else:
            self.failures += 1
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        _shutdown_quietly(self.inner)


# --- metrics on an OpenTelemetry meter ------------------------------------------------------------

class _OtelMetrics(m.MetricsRecorder):
    """Counters are kept as plain totals and reported by observable counters at collection time:
    an SDK `Counter.add` costs ~10 us, far too much per event."""

    def __init__(self, provider: MeterProvider, export_stats: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        super().__init__()
        from opentelemetry.metrics import Observation
        meter = provider.get_meter("sandbox-monitor")
        self._histograms: dict[m.MetricDef, Any] = {}
        self._counts: dict[m.MetricDef, dict[tuple[str, ...], float]] = {}
        self._counts_lock = threading.Lock()
        self.add_export_source(export_stats)

        def observe(read: Callable[[], Mapping[tuple[str, ...], float]], metric: m.MetricDef) -> Callable[[Any], list[Any]]:
            return lambda _options: [Observation(value, dict(zip(metric.labels, labels, strict=True)))
                                     for labels, value in read().items()]

        for metric in m.METRICS:
            read: Callable[[], Mapping[tuple[str, ...], float]]
            if metric.kind == m.HISTOGRAM:
                self._histograms[metric] = meter.create_histogram(
                    metric.name, metric.unit, metric.description,
                    explicit_bucket_boundaries_advisory=metric.buckets)
                continue
            if metric.kind == m.COUNTER:
                self._counts[metric] = {}
                read = (lambda metric=metric: self._copy_counts(metric))  # noqa: E731
            elif metric is m.SANDBOXES_WATCHED:
                read = lambda: {(k,): v for k, v in self.sandboxes_by_runtime().items()}  # noqa: E731
            elif metric in (m.LOST_EVENTS, m.RULE_ERRORS):
                read = (lambda metric=metric: self.observed_totals(metric))  # noqa: E731
            else:  # export metrics
                read = (lambda metric=metric: self.export_readings()[metric])  # noqa: E731
            create = meter.create_observable_gauge if metric.kind == m.GAUGE else meter.create_observable_counter
            create(metric.name, [observe(read, metric)], metric.unit, metric.description)

    def _copy_counts(self, metric: m.MetricDef) -> dict[tuple[str, ...], float]:
        with self._counts_lock:
            return dict(self._counts[metric])

    def _add(self, metric: m.MetricDef, labels: tuple[str, ...], amount: float = 1) -> None:
        totals = self._counts[metric]
        with self._counts_lock:
            totals[labels] = totals.get(labels, 0) + amount

    def _observe(self, metric: m.MetricDef, labels: tuple[str, ...], value: float) -> None:
        self._histograms[metric].record(value, dict(zip(metric.labels, labels, strict=True)))


# --- the trace builder --------------------------------------------------------------------------

@dataclass
class _ProcSpan:
    span: Any
    pid: int
    recorded: int = 0
    capped: Counter[str] = field(default_factory=Counter)    # past the per-span cap (or shed)
    repeated: Counter[str] = field(default_factory=Counter)  # same kind + target as a recorded one
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    files_written: dict[str, None] = field(default_factory=dict)
    destinations: dict[str, None] = field(default_factory=dict)
    worst_alert: tuple[int, str] | None = None
    rules: list[str] = field(default_factory=list)
    end_at: int | None = None  # exit seen: ends once the exit's alerts (if any) have arrived
    end_queued: float = 0.0     # time.monotonic() when the exit was seen


class _Lru(OrderedDict[Any, Any]):
    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > _LRU_CAP:
            self.popitem(last=False)


@dataclass
class _Session:
    sandbox: dict[str, Any]
    root: _ProcSpan
    procs: dict[int, _ProcSpan] = field(default_factory=dict)
    ended: _Lru = field(default_factory=_Lru)          # pid -> SpanContext, to parent late children
    fork_parent: dict[int, int] = field(default_factory=dict)
    llm_requests: _Lru = field(default_factory=_Lru)   # request id -> Event
    llm_unanswered: dict[Any, deque[Event]] = field(default_factory=dict)  # pid -> requests, oldest first
    llm_spans: _Lru = field(default_factory=_Lru)      # response id -> SpanContext
    alert_spans: _Lru = field(default_factory=_Lru)    # alert id -> _ProcSpan
    pending_end: list[_ProcSpan] = field(default_factory=list)
    alerts: int = 0


def _clip(value: Any, limit: int = 4096) -> Any:
    """A string attribute: at most `limit` characters, valid UTF-8 (protobuf refuses a lone
    surrogate, and one bad value failed the export of its whole batch)."""
    if isinstance(value, str):
        return utf8_safe(value[:limit])
    return value


def _attr_value(value: Any) -> Any:
    """An OTLP attribute value: primitives and homogeneous primitive lists as they are, else JSON."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [_clip(v, 1024) for v in value]
    return _clip(json.dumps(value, default=str, sort_keys=True))


def _sandbox_attrs(sandbox: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {m.SANDBOX_ID: str(sandbox.get("id") or ""),
                             m.SANDBOX_NAME: str(sandbox.get("name") or "")}
    return attrs


def _root_attrs(sandbox: Mapping[str, Any]) -> dict[str, Any]:
    attrs = _sandbox_attrs(sandbox)
    attrs[m.SANDBOX_RUNTIME] = str(sandbox.get("runtime") or "")
    attrs[m.R_HOST_NAME] = socket.gethostname()
    if sandbox.get("cgroup_path"):
        attrs[m.SANDBOX_CGROUP] = str(sandbox["cgroup_path"])
    if sandbox.get("image"):
        attrs[m.CONTAINER_IMAGE_NAME] = str(sandbox["image"])
    if sandbox.get("image_digest"):
        attrs[m.CONTAINER_IMAGE_DIGEST] = str(sandbox["image_digest"])
    if sandbox.get("runtime") == "docker":
        attrs[m.CONTAINER_ID] = str(sandbox.get("id") or "")
    for key, value in (sandbox.get("labels") or {}).items():
        attrs[m.SANDBOX_LABEL_PREFIX + str(key)] = str(value)
    return attrs


def _process_attrs(process: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, name in (("pid", m.PROCESS_PID), ("ppid", m.PROCESS_PARENT_PID), ("uid", m.PROCESS_USER_ID),
                      ("gid", m.PROCESS_GROUP_ID)):
        if isinstance(process.get(key), int):
            attrs[name] = process[key]
    executable = process.get("executable")
    if executable:
        attrs[m.PROCESS_EXECUTABLE_PATH] = str(executable)
        attrs[m.PROCESS_EXECUTABLE_NAME] = os.path.basename(str(executable))
    if process.get("args"):
        attrs[m.PROCESS_COMMAND_ARGS] = [_clip(str(a), 1024) for a in process["args"]]
    if process.get("cwd"):
        attrs[m.PROCESS_CWD] = str(process["cwd"])
    if process.get("caused_by"):
        attrs[m.PROCESS_CAUSED_BY] = str(process["caused_by"])
    return attrs


def _event_attrs(event: Event, span_pid: int) -> dict[str, Any]:
    """A span event's attributes (its name is the kind; the pid only when not the span's own).
    Lean on purpose: encoding costs the exporter ~2 us per attribute."""
    attrs: dict[str, Any] = {}
    pid = event.process.get("pid")
    if pid is not None and pid != span_pid:
        attrs[m.PROCESS_PID] = pid
    if event.file:
        if event.file.get("path"):
            attrs[m.FILE_PATH] = str(event.file["path"])
        if event.file.get("new_path"):
            attrs[m.FILE_NEW_PATH] = str(event.file["new_path"])
        if event.file.get("flags"):
            attrs[m.FILE_FLAGS] = [str(f) for f in event.file["flags"]]
        if "write" in event.file:
            attrs[m.FILE_WRITE] = bool(event.file["write"])
    if event.net:
        net = event.net
        if net.get("transport"):
            attrs[m.NETWORK_TRANSPORT] = str(net["transport"])
        family = net.get("family")
        if family:
            attrs[m.NETWORK_TYPE] = {"inet": "ipv4", "inet6": "ipv6"}.get(str(family), str(family))
        if net.get("address"):
            attrs[m.NETWORK_PEER_ADDRESS] = str(net["address"])
        if isinstance(net.get("port"), int):
            attrs[m.NETWORK_PEER_PORT] = net["port"]
        if net.get("direction"):
            attrs[m.NET_DIRECTION] = str(net["direction"])
        if net.get("query"):
            attrs[m.DNS_QUESTION_NAME] = str(net["query"])
    for key, value in (event.detail or {}).items():
        if value is not None:
            attrs[m.DETAIL_PREFIX + key] = _attr_value(value)
    if event.result is not None:
        attrs[m.EVENT_RESULT] = event.result
    if event.verdict:
        attrs[m.EVENT_VERDICT] = event.verdict
    return attrs


def alert_line(alert: Alert) -> str:
    """The human line of an alert (the log record's body)."""
    proc = alert.event.process
    sandbox = alert.event.sandbox or {}
    what = alert.description or alert.event.kind
    exe = proc.get("executable") or proc.get("comm") or "?"
    return (f"[{alert.severity}] {alert.rule}: {what} (sandbox {sandbox.get('name') or sandbox.get('id') or '-'},"
            f" pid {proc.get('pid', '?')} {exe}, action {alert.action}{' audit' if alert.mode == 'audit' else ''})")


def alert_attrs(alert: Alert) -> dict[str, Any]:
    attrs: dict[str, Any] = {m.ALERT_RULE: alert.rule, m.ALERT_SEVERITY: alert.severity,
                             m.ALERT_ACTION: alert.action, m.ALERT_MODE: alert.mode, m.ALERT_ID: alert.id,
                             m.ALERT_TAGS: [str(t) for t in alert.tags], m.EVENT_ID: alert.event.id,
                             m.EVENT_KIND: alert.event.kind}
    if alert.description:
        attrs[m.ALERT_DESCRIPTION] = alert.description
    for key, value in (alert.matched or {}).items():
        attrs[m.ALERT_MATCHED_PREFIX + str(key)] = _attr_value(value)
    return attrs


class TraceBuilder:
    """Sandbox sessions -> spans. Runs on one thread (the sink's builder)."""

    def __init__(self, tracer: Any, ids: _PresetIdGenerator, max_span_events: int) -> None:
        self._tracer = tracer
        self._ids = ids
        self._max_span_events = max_span_events
        self._sessions: dict[str, _Session] = {}
        self._finished: _Lru = _Lru()  # sandbox ids whose session ended: stragglers are not a new trace
        self._adopted: dict[str, SessionContext] = {}
        self._adopt_lock = threading.Lock()
        self.untraced = 0
        self.late = 0
        self.shedding = False  # set by the sink while its inbox is backed up
        self.shed = 0
        self._with_pending: set[str] = set()  # sandbox ids with exited processes' spans to end

    def adopt(self, sandbox_id: str, ctx: SessionContext) -> None:
        with self._adopt_lock:
            self._adopted[sandbox_id] = ctx

    # sessions
    def _session(self, event: Event) -> _Session | None:
        sandbox = event.sandbox
        sandbox_id = str((sandbox or {}).get("id") or "")
        if not sandbox_id:
            self.untraced += 1
            return None
        session = self._sessions.get(sandbox_id)
        if session is None:
            if sandbox_id in self._finished:
                if event.kind != "sandbox_start":  # a restarted container is a new session
                    self.late += 1
                    return None
                del self._finished[sandbox_id]
            session = self._start_session(dict(sandbox or {}), event.time_ns)
            self._sessions[sandbox_id] = session
        return session

    def _start_session(self, sandbox: dict[str, Any], start_ns: int) -> _Session:
        with self._adopt_lock:
            self._ids.preset = self._adopted.pop(str(sandbox["id"]), None)
        try:
            root = self._tracer.start_span(f"sandbox {sandbox.get('name') or sandbox['id']}", context=Context(),
                                           kind=SpanKind.INTERNAL, attributes=_root_attrs(sandbox),
                                           start_time=start_ns)
        finally:
            self._ids.preset = None
        return _Session(sandbox=sandbox, root=_ProcSpan(root, 0))

    def _end_session(self, sandbox_id: str, end_ns: int) -> None:
        session = self._sessions.pop(sandbox_id)
        self._flush(session)
        for proc in list(session.procs.values()):
            proc.span.set_attribute(m.PROCESS_OPEN_AT_CLOSE, True)
            self._end(proc, end_ns)
        session.root.span.set_attribute(m.ALERT_COUNT, session.alerts)
        self._end(session.root, end_ns)
        self._finished.put(sandbox_id, True)

    # events
    def on_event(self, event: Event) -> None:
        self.flush_pending()
        session = self._session(event)
        if session is None:
            return
        kind = event.kind
        pid = event.process.get("pid")
        if kind == "sandbox_end":
            self._end_session(str(session.sandbox["id"]), event.time_ns)
        elif kind == "sandbox_start":
            return
        elif kind == "exec" and isinstance(pid, int):
            self._exec(session, event, pid)
        elif kind == "fork":
            child = (event.detail or {}).get("child_pid")
            if isinstance(child, int) and isinstance(pid, int):
                session.fork_parent[child] = pid
        elif kind == "exit" and isinstance(pid, int):
            self._exit(session, event, pid)
        elif kind == "llm_request":
            for key in (event.id, (event.llm or {}).get("id")):
                if key:
                    session.llm_requests.put(str(key), event)
            session.llm_unanswered.setdefault(pid, deque(maxlen=64)).append(event)
        elif kind == "llm_response":
            self._llm_span(session, event)
        else:
            self._span_event(self._proc_for(session, pid), event)

    def _proc_for(self, session: _Session, pid: Any) -> _ProcSpan:
        hops = 0
        while isinstance(pid, int) and hops < 64:
            proc = session.procs.get(pid)
            if proc is not None:
                return proc
            pid = session.fork_parent.get(pid)
            hops += 1
        return session.root

    def _parent_context(self, session: _Session, pid: int, ppid: Any) -> SpanContext:
        previous = session.procs.get(pid)
        if previous is not None:  # a second exec: the new image is a child of the old one
            return previous.span.get_span_context()
        parent_pid = session.fork_parent.get(pid, ppid)
        if isinstance(parent_pid, int):
            proc = self._proc_for(session, parent_pid)
            if proc is not session.root:
                return proc.span.get_span_context()
            if parent_pid in session.ended:
                return session.ended[parent_pid]
        return session.root.span.get_span_context()

    def _exec(self, session: _Session, event: Event, pid: int) -> None:
        process = event.process
        parent = self._parent_context(session, pid, process.get("ppid"))
        links = []
        caused_by = process.get("caused_by")
        if caused_by and str(caused_by) in session.llm_spans:
            links.append(Link(session.llm_spans[str(caused_by)], {m.LINK_TYPE: "caused_by"}))
        attrs = {**_sandbox_attrs(session.sandbox), **_process_attrs(process), m.EVENT_ID: event.id}
        if event.verdict:
            attrs[m.EVENT_VERDICT] = event.verdict
        name = os.path.basename(str(process.get("executable") or "")) or str(process.get("comm") or "exec")
        span = self._tracer.start_span(name, context=trace_api.set_span_in_context(NonRecordingSpan(parent)),
                                       kind=SpanKind.INTERNAL, attributes=attrs, links=links,
                                       start_time=event.time_ns)
        previous = session.procs.get(pid)
        if previous is not None:
            self._end(previous, event.time_ns)
        session.procs[pid] = _ProcSpan(span, pid)

    def _exit(self, session: _Session, event: Event, pid: int) -> None:
        session.fork_parent.pop(pid, None)
        proc = session.procs.get(pid)
        if proc is None:
            return
        detail = event.detail or {}
        if isinstance(detail.get("code"), int):
            proc.span.set_attribute(m.PROCESS_EXIT_CODE, detail["code"])
        if detail.get("signal"):
            proc.span.set_attribute(m.PROCESS_EXIT_SIGNAL, _attr_value(detail["signal"]))
        proc.end_at = event.time_ns
        proc.end_queued = time.monotonic()
        session.pending_end.append(proc)
        self._with_pending.add(str(session.sandbox["id"]))

    def _flush(self, session: _Session, older_than_s: float = 0.0) -> None:
        """End the spans of exited processes. Alerts on an event arrive before the next event, so
        at the next event every pending end is due; when idle, only those past the grace time."""
        if not session.pending_end:
            return
        cutoff = time.monotonic() - older_than_s
        keep = []
        for proc in session.pending_end:
            if older_than_s and proc.end_queued > cutoff:
                keep.append(proc)
                continue
            if session.procs.get(proc.pid) is proc:
                del session.procs[proc.pid]
                session.ended.put(proc.pid, proc.span.get_span_context())
            self._end(proc, proc.end_at or time.time_ns())
        session.pending_end[:] = keep

    def flush_pending(self, older_than_s: float = 0.0) -> None:
        for sandbox_id in list(self._with_pending):
            session = self._sessions.get(sandbox_id)
            if session is not None:
                self._flush(session, older_than_s)
            if session is None or not session.pending_end:
                self._with_pending.discard(sandbox_id)

    def _span_event(self, proc: _ProcSpan, event: Event) -> None:
        file, net = event.file or {}, event.net or {}
        if file.get("write") and file.get("path") and len(proc.files_written) < _UNIQUE_CAP:
            proc.files_written[str(file["path"])] = None
        if net.get("direction") == "egress" and net.get("address") and len(proc.destinations) < _UNIQUE_CAP:
            proc.destinations[f"{net['address']}:{net.get('port', '')}"] = None
        if event.kind == "dns" and net.get("query") and len(proc.destinations) < _UNIQUE_CAP:
            proc.destinations[f"dns:{net['query']}"] = None
        key = (event.kind, event.process.get("pid"), file.get("path"), file.get("new_path"), file.get("write"),
               net.get("address"), net.get("port"), net.get("query"), event.result, event.verdict)
        if key in proc.seen:
            proc.repeated[event.kind] += 1
            return
        if proc.recorded >= self._max_span_events or self.shedding:
            proc.capped[event.kind] += 1
            self.shed += self.shedding
            return
        proc.recorded += 1
        proc.seen.add(key)
        proc.span.add_event(event.kind, _event_attrs(event, proc.pid), timestamp=event.time_ns)

    def _end(self, proc: _ProcSpan, end_ns: int) -> None:
        span = proc.span
        if proc.files_written:
            span.set_attribute(m.FILES_WRITTEN, list(proc.files_written))
        if proc.destinations:
            span.set_attribute(m.NET_DESTINATIONS, list(proc.destinations))
        if proc.capped or proc.repeated:
            if proc.capped:
                span.set_attribute(m.EVENTS_CAPPED, sum(proc.capped.values()))
            if proc.repeated:
                span.set_attribute(m.EVENTS_REPEATED, sum(proc.repeated.values()))
            counts = {m.EVENTS_CAPPED_PREFIX + k: n for k, n in proc.capped.items()}
            counts.update({m.EVENTS_REPEATED_PREFIX + k: n for k, n in proc.repeated.items()})
            span.add_event(m.SPAN_EVENT_CAPPED, counts, timestamp=end_ns)
        span.end(end_time=max(end_ns, span.start_time or end_ns))

    # model calls
    def _llm_span(self, session: _Session, event: Event) -> None:
        llm = event.llm or {}
        request = self._request_of(session, event)
        request_llm = (request.llm or {}) if request is not None else {}
        start_ns = min(request.time_ns, event.time_ns) if request is not None else event.time_ns
        provider = str(llm.get("provider") or request_llm.get("provider") or "")
        request_model = str(request_llm.get("model") or llm.get("model") or "")
        attrs: dict[str, Any] = {**_sandbox_attrs(session.sandbox), m.GEN_AI_OPERATION: "chat",
                                 m.GEN_AI_SYSTEM: provider, m.GEN_AI_PROVIDER: provider,
                                 m.GEN_AI_REQUEST_MODEL: request_model, m.EVENT_ID: event.id}
        if llm.get("model"):
            attrs[m.GEN_AI_RESPONSE_MODEL] = str(llm["model"])
        if llm.get("id"):
            attrs[m.GEN_AI_RESPONSE_ID] = str(llm["id"])
        if llm.get("stop_reason"):
            attrs[m.GEN_AI_FINISH_REASONS] = [str(llm["stop_reason"])]
        usage = llm.get("usage") or {}
        for key, name in (("input_tokens", m.GEN_AI_INPUT_TOKENS), ("output_tokens", m.GEN_AI_OUTPUT_TOKENS)):
            if isinstance(usage.get(key), int):
                attrs[name] = usage[key]
        if llm.get("host"):
            attrs[m.SERVER_ADDRESS] = str(llm["host"])
        if isinstance(event.process.get("pid"), int):
            attrs[m.PROCESS_PID] = event.process["pid"]
        tool_calls = [c for c in (llm.get("tool_calls") or []) if isinstance(c, Mapping)]
        if tool_calls:
            attrs[m.GEN_AI_TOOL_NAMES] = [str(c.get("name") or "") for c in tool_calls]
        parent = self._proc_for(session, event.process.get("pid")).span.get_span_context()
        span = self._tracer.start_span(f"chat {request_model}".strip(), kind=SpanKind.CLIENT, attributes=attrs,
                                       context=trace_api.set_span_in_context(NonRecordingSpan(parent)),
                                       start_time=start_ns)
        for call in tool_calls:
            span.add_event(m.SPAN_EVENT_TOOL_CALL, {
                m.GEN_AI_TOOL_NAME: str(call.get("name") or ""), m.GEN_AI_TOOL_CALL_ID: str(call.get("id") or ""),
                m.GEN_AI_TOOL_CALL_ARGUMENTS: _attr_value(call.get("arguments") if isinstance(call.get("arguments"), str)
                                                          else json.dumps(call.get("arguments"), default=str))},
                timestamp=event.time_ns)
        span.end(end_time=event.time_ns)
        for key in (event.id, llm.get("id")):
            if key:
                session.llm_spans.put(str(key), span.get_span_context())

    @staticmethod
    def _request_of(session: _Session, response: Event) -> Event | None:
        """The llm_request a response answers: by id when the source names it, else the oldest
        unanswered request of the same process (HTTP/1.1 answers in order)."""
        llm = response.llm or {}
        for key in (llm.get("request_event_id"), llm.get("request_id")):
            request = session.llm_requests.get(str(key)) if key else None
            if request is not None:
                pending = session.llm_unanswered.get(request.process.get("pid"))
                if pending and request in pending:
                    pending.remove(request)
                return request
        pending = session.llm_unanswered.get(response.process.get("pid"))
        while pending:
            request = pending.popleft()
            if request.time_ns <= response.time_ns:
                return request
        return None

    # alerts and actions
    def on_alert(self, alert: Alert) -> Any:
        """Marks the alert on its process span; returns that span's context (for the log record)."""
        session = self._session(alert.event)
        if session is None:
            return None
        proc = self._proc_for(session, alert.event.process.get("pid"))
        proc.span.add_event(m.SPAN_EVENT_ALERT, alert_attrs(alert), timestamp=alert.event.time_ns)
        rank = _SEVERITY_RANK.get(alert.severity, 0)
        if proc.worst_alert is None or rank > proc.worst_alert[0]:
            proc.worst_alert = (rank, alert.rule)
            proc.span.set_attribute(m.ALERT_RULE, alert.rule)
            proc.span.set_attribute(m.ALERT_SEVERITY, alert.severity)
        if alert.rule not in proc.rules:
            proc.rules.append(alert.rule)
            proc.span.set_attribute(m.ALERT_RULES, list(proc.rules))
        proc.span.set_status(Status(StatusCode.ERROR, proc.worst_alert[1]))
        session.alerts += 1
        if proc is not session.root:
            session.root.span.set_status(Status(StatusCode.ERROR, "alerts in session"))
        session.alert_spans.put(alert.id, proc)
        return proc.span.get_span_context()

    def on_action(self, record: ActionRecord) -> None:
        session = self._sessions.get(str(record.target.get("sandbox") or ""))
        proc = None
        for candidate in ([session] if session else list(self._sessions.values())):
            proc = candidate.alert_spans.get(record.alert_id)
            if proc is not None:
                break
        if proc is None:
            if session is None:
                return
            proc = session.root
        proc.span.add_event(m.SPAN_EVENT_ACTION, {
            m.ACTION_KIND: record.action, m.ACTION_OUTCOME: record.outcome, m.ALERT_RULE: record.rule,
            m.ACTION_LATENCY_MS: round(record.latency_ms, 3), m.ACTION_MESSAGE: record.message,
            m.ALERT_ID: record.alert_id}, timestamp=record.time_ns)

    def close(self, end_ns: int) -> None:
        for sandbox_id in list(self._sessions):
            self._end_session(sandbox_id, end_ns)


# --- the sink -----------------------------------------------------------------------------------

class OtlpSink(Sink):
    """Traces, metrics and logs over OTLP (gRPC or HTTP/protobuf) with the OpenTelemetry SDK.

    endpoint: base URL (http://host:4318, grpc://host:4317, https://...), None = OTEL_EXPORTER_OTLP_*.
    protocol: "grpc" | "http" | None (see `resolve_endpoint`). headers: extra request headers
    (None: OTEL_EXPORTER_OTLP_HEADERS). export_timeout: seconds per export request (None:
    OTEL_EXPORTER_OTLP_TIMEOUT or 10). close_timeout: how long close() may wait for the receiver.
    """

    name = "otlp"

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
        exporters = _exporters(self.endpoint, headers, export_timeout)
        self._queues: dict[str, ExportQueue] = {}
        for signal in ("traces", "logs"):
            if signal in signals:
                self._queues[signal] = ExportQueue(signal, exporters[signal], export_queue,
                                                   backoff_s=retry_backoff_s)
            else:
                _shutdown_quietly(exporters[signal])

        self._ids = _PresetIdGenerator()
        self._tracer_provider = TracerProvider(
            resource=resource, sampler=ALWAYS_ON, shutdown_on_exit=False, id_generator=self._ids,
            span_limits=SpanLimits(max_events=max_span_events + 256, max_attributes=256, max_links=64,
                                   max_event_attributes=128, max_attribute_length=4096))
        if "traces" in self._queues:
            self._tracer_provider.add_span_processor(_SpanQueueProcessor(self._queues["traces"]))
        self._traces = TraceBuilder(self._tracer_provider.get_tracer("sandbox-monitor"), self._ids, max_span_events)

        self._logger = None
        if "logs" in self._queues:
            self._logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
            self._logger_provider.add_log_record_processor(_LogQueueProcessor(self._queues["logs"]))
            self._logger = self._logger_provider.get_logger("sandbox-monitor")

        self._metric_exporter: _CountingMetricExporter | None = None
        self._meter_provider: MeterProvider | None = None
        self._metrics: m.MetricsRecorder | None = None
        if "metrics" in signals:
            self._metric_exporter = _CountingMetricExporter(exporters["metrics"])
            reader = PeriodicExportingMetricReader(self._metric_exporter, export_interval_millis=interval_s * 1000)
            self._meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
            self._metrics = _OtelMetrics(self._meter_provider, self.export_stats)
        else:
            _shutdown_quietly(exporters["metrics"])

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
        record costs ~5 us. When samples arrive faster than that, the histogram gets a sample."""
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
        attrs.update(_sandbox_attrs(alert.event.sandbox or {}))
        attrs.update({k: v for k, v in _process_attrs(alert.event.process).items()
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
            _shutdown_quietly(self._metric_exporter.inner)

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
