"""Every metric and telemetry attribute the monitor emits, named once.

The Prometheus endpoint (`MetricsSink`, `serve_metrics`) and the OTLP metrics of `OtlpSink` are
both built from `METRICS`, and the event -> metric mapping lives once in `MetricsRecorder`. The
span, span-event and log attribute names the OTLP sink writes are the constants below; dashboards
and their tests check queries against these names, so a panel cannot ask for what is never sent.

Metric names are Prometheus-style already (`sandbox_monitor_*`, unit suffix included) and label
names carry no dots, so the series look the same whether Prometheus scrapes `/metrics` or an
OpenTelemetry Collector turns OTLP metrics into Prometheus series (it appends `_total` to counters
like prometheus_client does, and keeps a name that already ends in its unit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from monitor.event import ActionRecord, Alert, Event, utf8_safe
from monitor.sinks import Sink

COUNTER = "counter"            # monotonic, incremented by the recorder
OBSERVED_COUNTER = "observed"  # monotonic, absolute totals read from elsewhere (sources, exporters)
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str      # Prometheus base name; the OTLP instrument has the same name
    kind: str      # COUNTER | OBSERVED_COUNTER | GAUGE | HISTOGRAM
    unit: str      # UCUM, for OTLP ("{event}" annotations vanish in Prometheus names)
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def series(self) -> tuple[str, ...]:
        """The Prometheus series names this metric produces."""
        if self.kind in (COUNTER, OBSERVED_COUNTER):
            return (self.name + "_total",)
        if self.kind == HISTOGRAM:
            return (self.name + "_bucket", self.name + "_sum", self.name + "_count")
        return (self.name,)


_LATENCY_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.01,
                    0.05, 0.1)
_ACTION_BUCKETS = (1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

EVENTS = MetricDef("sandbox_monitor_events", COUNTER, "{event}",
                   "Events seen, by kind and sandbox runtime.", ("kind", "runtime"))
SANDBOX_EVENTS = MetricDef("sandbox_monitor_sandbox_events", COUNTER, "{event}",
                           "Events seen per sandbox.", ("sandbox_id", "sandbox_name", "runtime"))
ALERTS = MetricDef("sandbox_monitor_alerts", COUNTER, "{alert}",
                   "Rule matches, by rule, severity and mode (enforce|audit).",
                   ("rule", "severity", "mode"))
SANDBOX_ALERTS = MetricDef("sandbox_monitor_sandbox_alerts", COUNTER, "{alert}",
                           "Rule matches per sandbox, by severity.",
                           ("sandbox_id", "sandbox_name", "severity"))
ACTIONS = MetricDef("sandbox_monitor_actions", COUNTER, "{action}",
                    "Actions taken (or that would have been, in audit), by kind and outcome.",
                    ("action", "outcome"))
ACTION_DURATION = MetricDef("sandbox_monitor_action_duration_seconds", HISTOGRAM, "s",
                            "Time from alert to action done.", ("action",), _ACTION_BUCKETS)
LOST_EVENTS = MetricDef("sandbox_monitor_lost_events", OBSERVED_COUNTER, "{event}",
                        "Records lost before user space (ring buffer full, truncation), by probe.",
                        ("probe",))
RULE_EVAL_DURATION = MetricDef("sandbox_monitor_rule_eval_duration_seconds", HISTOGRAM, "s",
                               "Time to evaluate the rules indexed for one event, by event kind.",
                               ("kind",), _LATENCY_BUCKETS)
RULE_ERRORS = MetricDef("sandbox_monitor_rule_errors", OBSERVED_COUNTER, "{error}",
                        "Rule evaluations that raised (bad field type, CEL runtime error).",
                        ("rule",))
SANDBOXES_WATCHED = MetricDef("sandbox_monitor_sandboxes_watched", GAUGE, "{sandbox}",
                              "Sandboxes currently watched, by runtime.", ("runtime",))
LLM_TOKENS = MetricDef("sandbox_monitor_llm_tokens", COUNTER, "{token}",
                       "Model tokens seen in captured LLM responses.",
                       ("provider", "model", "type"))
EXPORT_QUEUE_DEPTH = MetricDef("sandbox_monitor_export_queue_depth", GAUGE, "{item}",
                               "Items waiting in the OTLP export queues, by signal.", ("signal",))
EXPORTED = MetricDef("sandbox_monitor_exported", OBSERVED_COUNTER, "{item}",
                     "Items the OTLP receiver accepted, by signal.", ("signal",))
EXPORT_DROPPED = MetricDef("sandbox_monitor_export_dropped", OBSERVED_COUNTER, "{item}",
                           "Items never exported, by signal and reason (queue_full|shutdown).",
                           ("signal", "reason"))
EXPORT_FAILURES = MetricDef("sandbox_monitor_export_failures", OBSERVED_COUNTER, "{request}",
                            "Export requests that failed (each is retried with backoff).",
                            ("signal",))

OUTPUT_SENT = MetricDef("sandbox_monitor_output_sent", OBSERVED_COUNTER, "{notification}",
                        "Notifications an alert output delivered (monitor/outputs), by output.",
                        ("output",))
OUTPUT_QUEUE_DEPTH = MetricDef("sandbox_monitor_output_queue_depth", GAUGE, "{notification}",
                               "Notifications waiting in an alert output's queue.", ("output",))
OUTPUT_FAILURES = MetricDef("sandbox_monitor_output_failures", OBSERVED_COUNTER, "{attempt}",
                            "Failed delivery attempts of an alert output (retried with backoff).",
                            ("output",))
OUTPUT_UNDELIVERED = MetricDef("sandbox_monitor_output_undelivered", OBSERVED_COUNTER, "{notification}",
                               "Alerts an output never delivered, by reason (queue_full|failed|"
                               "circuit_open|refused|shutdown); each is kept in the journal.",
                               ("output", "reason"))
OUTPUT_SUPPRESSED = MetricDef("sandbox_monitor_output_suppressed", OBSERVED_COUNTER, "{alert}",
                              "Alerts an output held back, by rule and reason (dedup|rate_limit|"
                              "global_limit).", ("output", "rule", "reason"))

METRICS: tuple[MetricDef, ...] = (EVENTS, SANDBOX_EVENTS, ALERTS, SANDBOX_ALERTS, ACTIONS,
                                  ACTION_DURATION, LOST_EVENTS, RULE_EVAL_DURATION, RULE_ERRORS,
                                  SANDBOXES_WATCHED, LLM_TOKENS, EXPORT_QUEUE_DEPTH, EXPORTED,
                                  EXPORT_DROPPED, EXPORT_FAILURES, OUTPUT_SENT, OUTPUT_QUEUE_DEPTH,
                                  OUTPUT_FAILURES, OUTPUT_UNDELIVERED, OUTPUT_SUPPRESSED)
OUTPUT_METRICS = (OUTPUT_SENT, OUTPUT_QUEUE_DEPTH, OUTPUT_FAILURES, OUTPUT_UNDELIVERED, OUTPUT_SUPPRESSED)
EXPORT_METRICS = (EXPORT_QUEUE_DEPTH, EXPORTED, EXPORT_DROPPED, EXPORT_FAILURES, *OUTPUT_METRICS)


def prometheus_series() -> dict[str, MetricDef]:
    """Every Prometheus series name the monitor can expose -> its definition."""
    return {series: metric for metric in METRICS for series in metric.series()}


# --- trace, span-event and log attribute names (OTLP) -------------------------------------------
# OpenTelemetry semantic conventions where one exists; `sandbox.*`, `alert.*` and `monitor.*` are
# this project's own namespaces.
_NAMES_BEFORE_ATTRIBUTES = set(globals())
SERVICE_NAME = "sandbox-monitor"

R_SERVICE_NAME = "service.name"
R_HOST_NAME = "host.name"
R_SERVICE_INSTANCE = "service.instance.id"

SANDBOX_ID = "sandbox.id"
SANDBOX_NAME = "sandbox.name"
SANDBOX_RUNTIME = "sandbox.runtime"
SANDBOX_CGROUP = "sandbox.cgroup_path"
SANDBOX_LABEL_PREFIX = "sandbox.label."
CONTAINER_ID = "container.id"
CONTAINER_IMAGE_NAME = "container.image.name"
CONTAINER_IMAGE_DIGEST = "container.image.id"

PROCESS_PID = "process.pid"
PROCESS_PARENT_PID = "process.parent_pid"
PROCESS_EXECUTABLE_PATH = "process.executable.path"
PROCESS_EXECUTABLE_NAME = "process.executable.name"
PROCESS_COMMAND_ARGS = "process.command_args"
PROCESS_CWD = "process.working_directory"
PROCESS_USER_ID = "process.user.id"
PROCESS_GROUP_ID = "process.group.id"
PROCESS_EXIT_CODE = "process.exit.code"
PROCESS_EXIT_SIGNAL = "process.exit.signal"
PROCESS_CAUSED_BY = "monitor.process.caused_by"
PROCESS_OPEN_AT_CLOSE = "monitor.process.open_at_close"  # still running when the session ended

FILE_PATH = "file.path"
FILE_NEW_PATH = "monitor.file.new_path"
FILE_FLAGS = "monitor.file.flags"
FILE_WRITE = "monitor.file.write"
NETWORK_TRANSPORT = "network.transport"
NETWORK_TYPE = "network.type"
NETWORK_PEER_ADDRESS = "network.peer.address"
NETWORK_PEER_PORT = "network.peer.port"
NET_DIRECTION = "monitor.net.direction"
DNS_QUESTION_NAME = "dns.question.name"

EVENT_ID = "monitor.event.id"
EVENT_KIND = "monitor.event.kind"
EVENT_RESULT = "monitor.result"
EVENT_VERDICT = "monitor.verdict"
DETAIL_PREFIX = "monitor.detail."
EVENTS_CAPPED = "monitor.events.capped"          # span attribute: events not recorded one by one
EVENTS_CAPPED_PREFIX = "monitor.events.capped."  # span event "events.capped": count per kind
EVENTS_REPEATED = "monitor.events.repeated"      # span attribute: repeats of a recorded event, counted
EVENTS_REPEATED_PREFIX = "monitor.events.repeated."
FILES_WRITTEN = "monitor.files.written"          # span attribute: unique paths opened for write
NET_DESTINATIONS = "monitor.net.destinations"    # span attribute: unique "address:port" egress
ALERT_COUNT = "monitor.alerts"                   # root span: alerts in the session

ALERT_RULE = "alert.rule"
ALERT_RULES = "alert.rules"
ALERT_SEVERITY = "alert.severity"
ALERT_ACTION = "alert.action"
ALERT_MODE = "alert.mode"
ALERT_TAGS = "alert.tags"
ALERT_ID = "alert.id"
ALERT_DESCRIPTION = "alert.description"
ALERT_MATCHED_PREFIX = "alert.matched."
ACTION_KIND = "action.kind"
ACTION_OUTCOME = "action.outcome"
ACTION_LATENCY_MS = "action.latency_ms"
ACTION_MESSAGE = "action.message"

GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_NAMES = "monitor.gen_ai.tool_names"
SERVER_ADDRESS = "server.address"
LINK_TYPE = "monitor.link.type"

# Span event names.
SPAN_EVENT_ALERT = "alert"
SPAN_EVENT_ACTION = "action"
SPAN_EVENT_CAPPED = "events.capped"
SPAN_EVENT_TOOL_CALL = "gen_ai.tool.call"

_PREFIXES = (SANDBOX_LABEL_PREFIX, DETAIL_PREFIX, EVENTS_CAPPED_PREFIX, EVENTS_REPEATED_PREFIX,
             ALERT_MATCHED_PREFIX)
ATTRIBUTES: frozenset[str] = frozenset(
    value for name, value in list(globals().items())
    if name not in _NAMES_BEFORE_ATTRIBUTES and name.isupper() and isinstance(value, str) and "." in value and value not in _PREFIXES
    and not name.startswith("SPAN_EVENT_"))
ATTRIBUTE_PREFIXES: tuple[str, ...] = _PREFIXES


def is_known_attribute(name: str) -> bool:
    return name in ATTRIBUTES or any(name.startswith(p) for p in ATTRIBUTE_PREFIXES)


# --- the event -> metric mapping, written once --------------------------------------------------


def _label(value: Any) -> str:
    """A label value as text the exposition can encode: a lone surrogate (a model's reply can
    name its model "\\ud800...") made every later scrape of /metrics fail."""
    return utf8_safe(str(value or ""))


class MetricsRecorder(Sink):
    """Turns events, alerts and actions into metric updates; subclasses store them somewhere.

    Inputs the pipeline does not carry arrive through `record_lost` (sources' loss totals),
    `record_rule_errors` (the rule set's `eval_errors`), `record_rule_eval` (evaluation time) and
    `add_export_source` (an OTLP sink's queues).
    """

    def __init__(self) -> None:
        self._active: dict[str, str] = {}  # sandbox id -> runtime, for SANDBOXES_WATCHED
        self._totals: dict[MetricDef, dict[tuple[str, ...], int]] = {LOST_EVENTS: {}, RULE_ERRORS: {}}
        self._export_sources: list[Callable[[], Mapping[str, Mapping[str, Any]]]] = []
        self._output_sources: list[Callable[[], Mapping[str, Mapping[str, Any]]]] = []
        self._lock = threading.Lock()

    # backend hooks
    def _add(self, metric: MetricDef, labels: tuple[str, ...], amount: float = 1) -> None:
        raise NotImplementedError

    def _observe(self, metric: MetricDef, labels: tuple[str, ...], value: float) -> None:
        raise NotImplementedError

    # Sink
    def on_event(self, event: Event) -> None:
        sandbox = event.sandbox
        runtime = _label(sandbox.get("runtime") or "none") if sandbox else "none"
        self._add(EVENTS, (event.kind, runtime))
        if sandbox:
            sandbox_id = _label(sandbox.get("id"))
            self._add(SANDBOX_EVENTS, (sandbox_id, _label(sandbox.get("name")), runtime))
            if event.kind == "sandbox_end":
                self._active.pop(sandbox_id, None)
            else:
                self._active[sandbox_id] = runtime
        if event.kind == "llm_response" and event.llm:
            self._record_tokens(event.llm)

    def _record_tokens(self, llm: Mapping[str, Any]) -> None:
        usage = llm.get("usage") or {}
        provider, model = _label(llm.get("provider")), _label(llm.get("model"))  # the API's own words
        for token_type in ("input", "output"):
            count = usage.get(f"{token_type}_tokens")
            if isinstance(count, int) and count > 0:
                self._add(LLM_TOKENS, (provider, model, token_type), count)

    def on_alert(self, alert: Alert) -> None:
        self._add(ALERTS, (alert.rule, alert.severity, alert.mode))
        sandbox = alert.event.sandbox
        if sandbox:
            self._add(SANDBOX_ALERTS, (_label(sandbox.get("id")), _label(sandbox.get("name")), alert.severity))

    def on_action(self, record: ActionRecord) -> None:
        self._add(ACTIONS, (record.action, record.outcome))
        self._observe(ACTION_DURATION, (record.action,), record.latency_ms / 1000.0)

    def close(self, summary: dict[str, Any]) -> None:
        lost = summary.get("lost")
        if isinstance(lost, Mapping):
            self.record_lost(lost)

    # inputs from outside the sink interface
    def record_lost(self, totals_by_probe: Mapping[str, int]) -> None:
        """Absolute loss totals per probe (as `Source.lost()` returns them)."""
        self._record_totals(LOST_EVENTS, totals_by_probe)

    def record_rule_errors(self, totals_by_rule: Mapping[str, int]) -> None:
        """Absolute evaluation-error totals per rule (the rule set's `eval_errors`)."""
        self._record_totals(RULE_ERRORS, totals_by_rule)

    def _record_totals(self, metric: MetricDef, totals: Mapping[str, int]) -> None:
        """A total never goes back (a source restarted from zero must not make a counter drop)."""
        with self._lock:
            into = self._totals[metric]
            for key, total in totals.items():
                into[(str(key),)] = max(int(total), into.get((str(key),), 0))

    def record_rule_eval(self, kind: str, seconds: float) -> None:
        self._observe(RULE_EVAL_DURATION, (kind,), seconds)

    def add_export_source(self, stats: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        """A callable returning {signal: {queued, exported, dropped_queue_full, dropped_shutdown,
        failures}} (e.g. `OtlpSink.export_stats`), exposed as the export_* metrics."""
        self._export_sources.append(stats)

    def add_output_source(self, readings: Callable[[], Mapping[str, Mapping[str, Any]]]) -> None:
        """A callable returning {output: {sent, failures, queued, undelivered: {reason: n},
        suppressed: {(rule, reason): n}}} (`monitor.outputs.Outputs.readings`), exposed as the
        output_* metrics."""
        self._output_sources.append(readings)

    # readings for observed metrics
    def sandboxes_by_runtime(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for runtime in list(self._active.values()):
            counts[runtime] = counts.get(runtime, 0) + 1
        return counts

    def observed_totals(self, metric: MetricDef) -> dict[tuple[str, ...], int]:
        """LOST_EVENTS or RULE_ERRORS as recorded: labels -> total."""
        with self._lock:
            return dict(self._totals[metric])

    def export_readings(self) -> dict[MetricDef, dict[tuple[str, ...], float]]:
        readings: dict[MetricDef, dict[tuple[str, ...], float]] = {m: {} for m in EXPORT_METRICS}
        for source in self._export_sources:
            for signal, stats in source().items():
                _accumulate(readings[EXPORT_QUEUE_DEPTH], (signal,), stats.get("queued", 0))
                _accumulate(readings[EXPORTED], (signal,), stats.get("exported", 0))
                _accumulate(readings[EXPORT_FAILURES], (signal,), stats.get("failures", 0))
                for reason in ("queue_full", "shutdown"):
                    _accumulate(readings[EXPORT_DROPPED], (signal, reason),
                                stats.get(f"dropped_{reason}", 0))
        for source in self._output_sources:
            for output, stats in source().items():
                _accumulate(readings[OUTPUT_SENT], (output,), stats.get("sent", 0))
                _accumulate(readings[OUTPUT_QUEUE_DEPTH], (output,), stats.get("queued", 0))
                _accumulate(readings[OUTPUT_FAILURES], (output,), stats.get("failures", 0))
                for reason, count in (stats.get("undelivered") or {}).items():
                    _accumulate(readings[OUTPUT_UNDELIVERED], (output, _label(reason)), count)
                for (rule, reason), count in (stats.get("suppressed") or {}).items():
                    _accumulate(readings[OUTPUT_SUPPRESSED], (output, _label(rule), reason), count)
        return readings


def _accumulate(into: dict[tuple[str, ...], float], key: tuple[str, ...], value: float) -> None:
    into[key] = into.get(key, 0) + value


# --- Prometheus -----------------------------------------------------------------------------------

class MetricsSink(MetricsRecorder):
    """Prometheus metrics for `/metrics` (prometheus_client). Cheap on the event path: label
    children are cached, one dict lookup and one locked add per update."""

    name = "metrics"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._instruments: dict[MetricDef, Any] = {}
        for metric in METRICS:
            if metric.kind == COUNTER:
                self._instruments[metric] = Counter(metric.name, metric.description, metric.labels,
                                                    registry=self.registry)
            elif metric.kind == HISTOGRAM:
                self._instruments[metric] = Histogram(metric.name, metric.description, metric.labels,
                                                      buckets=metric.buckets, registry=self.registry)
            elif metric is SANDBOXES_WATCHED:
                self._instruments[metric] = Gauge(metric.name, metric.description, metric.labels,
                                                  registry=self.registry)
        self._children: dict[tuple[MetricDef, tuple[str, ...]], Any] = {}
        self._runtimes_seen: set[str] = set()
        self.registry.register(_ObservedCollector(self))

    def _child(self, metric: MetricDef, labels: tuple[str, ...]) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._instruments[metric].labels(*labels)
        return child

    def _add(self, metric: MetricDef, labels: tuple[str, ...], amount: float = 1) -> None:
        self._child(metric, labels).inc(amount)

    def _observe(self, metric: MetricDef, labels: tuple[str, ...], value: float) -> None:
        self._child(metric, labels).observe(value)

    def on_event(self, event: Event) -> None:
        super().on_event(event)
        if event.kind in ("sandbox_start", "sandbox_end"):
            self._refresh_sandboxes()

    def _refresh_sandboxes(self) -> None:
        counts = self.sandboxes_by_runtime()
        self._runtimes_seen.update(counts)
        for runtime in self._runtimes_seen:
            self._child(SANDBOXES_WATCHED, (runtime,)).set(counts.get(runtime, 0))

    def exposition(self) -> bytes:
        self._refresh_sandboxes()
        return generate_latest(self.registry)


class _ObservedCollector:
    """Lost events, rule errors and export metrics: absolute values read at scrape time."""

    def __init__(self, sink: MetricsRecorder) -> None:
        self._sink = sink

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        for metric in (LOST_EVENTS, RULE_ERRORS):
            family = CounterMetricFamily(metric.name, metric.description, labels=metric.labels)
            for labels, total in sorted(self._sink.observed_totals(metric).items()):
                family.add_metric(labels, total)
            yield family
        for metric, values in self._sink.export_readings().items():
            family: Any
            if metric.kind == GAUGE:
                family = GaugeMetricFamily(metric.name, metric.description, labels=metric.labels)
            else:
                family = CounterMetricFamily(metric.name, metric.description, labels=metric.labels)
            for labels, value in sorted(values.items()):
                family.add_metric(labels, value)
            yield family


@dataclass
class MetricsServer:
    """A running /metrics + /healthz listener (see `serve_metrics`)."""
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(sink: MetricsSink, port: int, host: str = "127.0.0.1",
                  health: Callable[[], tuple[bool, str]] | None = None) -> MetricsServer:
    """Serve GET /metrics (Prometheus text) and GET /healthz (200 "ok" or 503 + reason) on
    host:port in a daemon thread. Port 0 picks a free one (see `.port`)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, sink.exposition())
            elif path == "/healthz":
                ok, reason = health() if health is not None else (True, "ok")
                self._reply(200 if ok else 503, "text/plain; charset=utf-8", (reason + "\n").encode())
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
