"""OTLP export: the endpoint, the SDK's OTLP exporters, and the export queue in front of them.

Traces and logs go through `ExportQueue`, not the SDK's BatchSpanProcessor and
BatchLogRecordProcessor; metrics go through the SDK's PeriodicExportingMetricReader. The rule is
"export never blocks the caller and what is not exported is counted". tests/bench/otlp_sdk.py
runs both in the sink, in one run, with the collector up, down, slow and down then up
(opentelemetry-sdk 1.45), and found:
- Blocking: neither exports on the sink's caller; `on_event` costs the same with either, the
  collector up, down or slow (the sink's inbox is in front of both).
- Counting: the SDK's batch processors (one shared BatchProcessor) ignore an export's result: a
  batch that fails is dropped and counted nowhere, and at shutdown what is still queued past the
  timeout is abandoned uncounted. With the collector down, every span and log record was lost and
  only the queue-full drops were counted, and those only as an SDK self-metric that is off unless
  OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED is set. With the collector down and then back, the
  batches sent during the outage were lost, uncounted. ExportQueue lost nothing uncounted in any
  of the runs: a failed batch is kept and retried with backoff, and every item dropped (queue
  full, shutdown) is counted in stats().
- The SDK's BatchSpanProcessor.shutdown() takes no timeout (it waits its default, 30 s) and
  force_flush() ignores its timeout, so bounding close() would need a thread around them.
The periodic metric reader meets the rule: it collects on its own thread, and with cumulative
temporality the next export after a failure carries what the failed one missed; the sink wraps its
exporter (CountingMetricExporter) to count exports and failures.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

log = logging.getLogger("monitor.otlp")

_FAILING_DRAIN_S = 1.0          # close() waits no longer than this for a receiver already failing
_BATCH_WEIGHT = 4096            # spans + span events per export request (~1 MiB encoded)


class OtlpConfigError(ValueError):
    """A bad endpoint or protocol: one line for the user."""


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


def make_exporters(ep: Endpoint, headers: Mapping[str, str] | None, timeout: float | None) -> dict[str, Any]:
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

class SignalExport(Protocol):
    """One signal's export (traces or logs) as the sink drives it. `processor` goes on the signal's
    SDK provider (a SpanProcessor for traces, a LogRecordProcessor for logs); `drain` exports what
    is left until the deadline (time.monotonic()) and counts the rest; `stats` has the keys of
    ExportQueue.stats()."""

    @property
    def processor(self) -> SpanProcessor | LogRecordProcessor: ...

    @property
    def last_error(self) -> str: ...

    def drain(self, deadline: float) -> None: ...

    def stats(self) -> dict[str, Any]: ...


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
        self.processor: SpanProcessor | LogRecordProcessor = (
            QueueSpanProcessor(self) if signal == "traces" else QueueLogProcessor(self))
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
        shutdown_quietly(self._exporter)

    def stats(self) -> dict[str, Any]:
        return {"queued": self.queued(), "exported": self.exported, "failures": self.failures,
                "dropped_queue_full": self.dropped_queue_full, "dropped_shutdown": self.dropped_shutdown}


def shutdown_quietly(exporter: Any) -> None:
    try:
        exporter.shutdown()
    except Exception as exc:  # shutting down a dead connection may raise; nothing left to do
        log.debug("exporter shutdown: %s", exc)


class QueueSpanProcessor(SpanProcessor):
    def __init__(self, queue: ExportQueue) -> None:
        self._queue = queue

    def on_end(self, span: ReadableSpan) -> None:
        self._queue.put(span, 1 + len(span.events))


class QueueLogProcessor(LogRecordProcessor):
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


class CountingMetricExporter(MetricExporter):
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
        shutdown_quietly(self.inner)
