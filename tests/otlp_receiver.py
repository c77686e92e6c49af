"""A real OTLP receiver for tests: the OTLP gRPC services (TraceService, MetricsService, LogsService)
and OTLP/HTTP (protobuf POST /v1/traces, /v1/metrics, /v1/logs), built on the official
opentelemetry-proto definitions and grpcio, listening on 127.0.0.1 only. It keeps every request.

No OpenTelemetry Collector installs from the registries this project may use (Debian, PyPI, npm),
so this stands in for one. In-process: `OtlpReceiver().start()`. As a process that a test can
SIGKILL: `python tests/otlp_receiver.py --grpc-port P --http-port Q --out FILE` appends one JSON
line per request ({"signal", "data": base64 protobuf}); `read_dump(FILE)` loads them back.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

REQUEST_TYPES: dict[str, Any] = {
    "traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse),
    "logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
}


# --- decoded views ------------------------------------------------------------------------------

def any_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attrs(value.kvlist_value.values)
    return getattr(value, which)


def attrs(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    links: list[tuple[str, str, dict[str, Any]]]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    resource: dict[str, Any]
    scope: str


@dataclass
class LogRecord:
    time_ns: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    trace_id: str
    span_id: str
    resource: dict[str, Any]


@dataclass
class Point:
    metric: str
    kind: str
    attributes: dict[str, Any]
    value: float  # sum/gauge value, histogram count
    resource: dict[str, Any]
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- storage --------------------------------------------------------------------------------------

class Store:
    def __init__(self) -> None:
        self.requests: dict[str, list[Any]] = {signal: [] for signal in REQUEST_TYPES}
        self.transports: dict[str, int] = {"grpc": 0, "http": 0}
        self.headers: list[dict[str, str]] = []  # per request: HTTP headers or gRPC metadata, lower-cased
        self.cond = threading.Condition()
        self.on_request: Callable[[str, bytes], None] | None = None

    def add(self, signal: str, request: Any, transport: str, raw: bytes,
            headers: dict[str, str] | None = None) -> None:
        with self.cond:
            self.requests[signal].append(request)
            self.headers.append(headers or {})
            self.transports[transport] += 1
            self.cond.notify_all()
        if self.on_request is not None:
            self.on_request(signal, raw)

    def spans(self) -> list[Span]:
        out = []
        with self.cond:
            requests = list(self.requests["traces"])
        for request in requests:
            for rs in request.resource_spans:
                resource = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(Span(
                            s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind,
                            s.start_time_unix_nano, s.end_time_unix_nano, attrs(s.attributes),
                            [(e.name, e.time_unix_nano, attrs(e.attributes)) for e in s.events],
                            [(ln.trace_id.hex(), ln.span_id.hex(), attrs(ln.attributes)) for ln in s.links],
                            s.status.code, s.status.message, resource, ss.scope.name))
        return out

    def logs(self) -> list[LogRecord]:
        out = []
        with self.cond:
            requests = list(self.requests["logs"])
        for request in requests:
            for rl in request.resource_logs:
                resource = attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        out.append(LogRecord(r.time_unix_nano, r.severity_number, r.severity_text,
                                             any_value(r.body), attrs(r.attributes), r.trace_id.hex(),
                                             r.span_id.hex(), resource))
        return out

    def points(self) -> list[Point]:
        out = []
        with self.cond:
            requests = list(self.requests["metrics"])
        for request in requests:
            for rm in request.resource_metrics:
                resource = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        data = getattr(metric, kind)
                        for p in data.data_points:
                            if kind == "histogram":
                                value: float = p.count
                                extra = {"sum": p.sum, "bounds": list(p.explicit_bounds),
                                         "buckets": list(p.bucket_counts)}
                            else:
                                value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                                extra = {"monotonic": getattr(data, "is_monotonic", None)}
                            out.append(Point(metric.name, kind, attrs(p.attributes), value, resource,
                                             metric.unit, extra))
        return out

    def wait_for(self, predicate: Callable[[Store], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                if predicate(self):
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))


# --- servers ----------------------------------------------------------------------------------

class _Servicer:
    def __init__(self, receiver: OtlpReceiver, signal: str) -> None:
        self._receiver = receiver
        self._signal = signal

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method name
        self._receiver.before_reply()
        metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self._receiver.store.add(self._signal, request, "grpc", request.SerializeToString(), metadata)
        return REQUEST_TYPES[self._signal][1]()


class _TraceServicer(_Servicer, trace_service_pb2_grpc.TraceServiceServicer):
    pass


class _MetricsServicer(_Servicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    pass


class _LogsServicer(_Servicer, logs_service_pb2_grpc.LogsServiceServicer):
    pass


class OtlpReceiver:
    """gRPC on grpc_port and OTLP/HTTP on http_port (0: pick free ones), both on 127.0.0.1.
    `delay_s` makes every reply slow (a collector that answers slowly)."""

    def __init__(self, grpc_port: int = 0, http_port: int = 0, delay_s: float = 0.0, store: Store | None = None) -> None:
        self.store = store or Store()
        self.delay_s = delay_s
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None

    def before_reply(self) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)

    @property
    def grpc_port(self) -> int:
        return self._grpc_port

    @property
    def http_port(self) -> int:
        return self._http_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self._grpc_port}"

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self, "traces"), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self, "metrics"), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self, "logs"), server)
        self._grpc_port = server.add_insecure_port(f"127.0.0.1:{self._grpc_port}")
        server.start()
        self._grpc = server
        self._http = ThreadingHTTPServer(("127.0.0.1", self._http_port), _http_handler(self))
        self._http.daemon_threads = True
        self._http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _http_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            signal = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}.get(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if signal is None:
                return self._reply(404, b"")
            if "protobuf" not in (self.headers.get("Content-Type") or ""):
                return self._reply(415, b"")
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request_type, response_type = REQUEST_TYPES[signal]
            request = request_type()
            try:
                request.ParseFromString(body)
            except Exception:
                return self._reply(400, b"")
            receiver.before_reply()
            receiver.store.add(signal, request, "http", body, {k.lower(): v for k, v in self.headers.items()})
            self._reply(200, response_type().SerializeToString())

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, shutdown)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass
    return Handler


def read_dump(path: Path) -> Store:
    """Load what a receiver process wrote with --out (unfinished last line ignored)."""
    store = Store()
    if not path.exists():
        return store
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        request = REQUEST_TYPES[record["signal"]][0]()
        request.ParseFromString(base64.b64decode(record["data"]))
        store.requests[record["signal"]].append(request)
    return store


def _serve_forever(args: argparse.Namespace) -> None:
    store = Store()
    out = open(args.out, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()

    def dump(signal: str, raw: bytes) -> None:
        with lock:
            out.write(json.dumps({"signal": signal, "data": base64.b64encode(raw).decode()}) + "\n")

    store.on_request = dump
    receiver = OtlpReceiver(args.grpc_port, args.http_port, args.delay, store).start()
    print(f"ready grpc={receiver.grpc_port} http={receiver.http_port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--out", required=True)
    _serve_forever(parser.parse_args())
