"""Receivers the outputs' tests deliver to, all on 127.0.0.1: an HTTP endpoint that records what
it got (and can fail, hang, answer garbage or close mid-response on demand), RFC 5424 syslog
listeners over UDP, TCP and TLS, and a real Alertmanager (Debian's prometheus-alertmanager)
routing to an HTTP endpoint of the test."""

from __future__ import annotations

import json
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def wait_until(condition: Callable[[], object], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """POSTs recorded in `requests`. `behaviour(n)` (n: 1-based request number) picks the answer:
    "ok" (200), an int status, "hang" (never answers), "garbage" (not HTTP), "close" (closes
    after a partial status line)."""
    behaviour: Callable[[int], str | int] = lambda n: "ok"
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        receiver = self
        self._release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()  # headers and body go out as two writes: no Nagle wait between
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.attempts += 1
                    number = receiver.attempts
                answer = receiver.behaviour(number)
                if answer == "hang":
                    receiver._release.wait(60)
                    self.close_connection = True
                    return
                if answer == "garbage":
                    self.wfile.write(b"\x00\x01garbage that is not HTTP\r\n\r\n")
                    self.close_connection = True
                    return
                if answer == "close":
                    self.wfile.write(b"HTTP/1.1 20")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                status = 200 if answer == "ok" else int(answer)
                if status == 200:
                    with receiver._lock:
                        receiver.requests.append(Request(self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    def bodies(self) -> list[Any]:
        with self._lock:
            return [r.json() for r in self.requests]

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


# --- syslog ----------------------------------------------------------------------------------

RFC5424 = re.compile(rb"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
                     rb"(?P<msgid>\S+) (?P<sd>-|(?:\[(?:[^\]\\]|\\.)*\])+) ?(?P<msg>.*)\Z", re.DOTALL)
SD_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class SyslogMessage:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd_id: str
    params: dict[str, str]
    msg: bytes


def parse_rfc5424(frame: bytes) -> SyslogMessage:
    found = RFC5424.match(frame)
    assert found, f"not an RFC 5424 message: {frame[:200]!r}"
    sd = found.group("sd").decode()
    sd_id = sd[1:].split(" ", 1)[0] if sd != "-" else ""
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in SD_PARAM.findall(sd)}
    return SyslogMessage(int(found.group("pri")), found.group("ts").decode(), found.group("host").decode(),
                         found.group("app").decode(), found.group("procid").decode(),
                         found.group("msgid").decode(), sd_id, params, found.group("msg"))


class SyslogListener:
    """protocol udp | tcp | tls; frames (octet-counted over TCP/TLS) parsed into `messages`."""

    def __init__(self, protocol: str, tls: ssl.SSLContext | None = None) -> None:
        self.protocol = protocol
        self.messages: list[SyslogMessage] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        listener = self

        if protocol == "udp":
            class UdpHandler(socketserver.BaseRequestHandler):
                def handle(self) -> None:
                    listener._add(self.request[0])
            self.server: socketserver.BaseServer = socketserver.ThreadingUDPServer(("127.0.0.1", 0), UdpHandler)
        else:
            class TcpHandler(socketserver.StreamRequestHandler):
                def handle(self) -> None:
                    while True:
                        length = b""
                        while not length.endswith(b" "):
                            char = self.rfile.read(1)
                            if not char:
                                return
                            length += char
                        listener._add(self.rfile.read(int(length)))
            server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), TcpHandler, bind_and_activate=False)
            server.allow_reuse_address = True
            server.server_bind()
            server.server_activate()
            if tls is not None:
                server.socket = tls.wrap_socket(server.socket, server_side=True)
            self.server = server
        self.server.daemon_threads = True  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _add(self, frame: bytes) -> None:
        with self._lock:
            self.raw.append(frame)
            self.messages.append(parse_rfc5424(frame))

    @property
    def address(self) -> str:
        return f"{self.protocol}://127.0.0.1:{self.server.server_address[1]}"  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- Alertmanager ------------------------------------------------------------------------------

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Alertmanager:
    """A real Alertmanager on 127.0.0.1 whose one route groups by `group_by` and sends every
    notification to `webhook_url` (a receiver of the test), resolved ones included."""

    def __init__(self, tmp: Path, webhook_url: str, group_by: tuple[str, ...] = ("alertname",),
                 group_wait: str = "200ms", group_interval: str = "1s") -> None:
        assert ALERTMANAGER, "prometheus-alertmanager is not installed: EXTRAS=prometheus scripts/setup.sh"
        self.port = free_port()
        config = tmp / "alertmanager.yml"
        config.write_text(json.dumps({
            "route": {"receiver": "test", "group_by": list(group_by), "group_wait": group_wait,
                      "group_interval": group_interval, "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [{"url": webhook_url + "/am",
                                                                "send_resolved": True}]}]}))
        (tmp / "am-data").mkdir(exist_ok=True)
        self.log_path = tmp / "alertmanager.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp / 'am-data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                                      "--log.level=warn"], stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 30, f"Alertmanager ready ({self.log_path.read_text()})")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()
