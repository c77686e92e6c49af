"""The resident monitor's side of `monitor run`: sandboxes for clients, on a unix socket.

A running `monitor daemon` serves `/run/sandbox-monitor/monitor.sock` (0600, in a 0700 folder,
root peers only). `monitor run` (monitor/client.py) asks it for a sandbox instead of loading the
probes itself: the daemon creates the cgroup, puts it in the probes' watched map and its kernel
deny maps, and only then answers `ready`; the client starts CMD inside that cgroup, so CMD's
first instruction is watched, as in a standalone run. The daemon judges the sandbox's events
with its own rules plus the rules the client brought (those judge this sandbox alone) and
streams that sandbox's events, alerts and actions back, then its summary.

The protocol: JSON objects, one per line, each way.

    client: {"op": "run", "version": 1, "name": N, "rules": [ABSOLUTE PATHS], "audit": BOOL}
    daemon: {"type": "ready", "sandbox": {...identity}, "env": {"TRACEPARENT": ...}}
            or {"type": "error", "message": "one line"} and the connection ends
    client: {"op": "started", "pid": PID}      CMD runs (or {"op": "exited", ...} at once: it never ran)
    daemon: {"type": "event" | "alert" | "action", ...}   as judged, this sandbox's only
    client: {"op": "exited", "status": STATUS}  CMD is gone: what it left is killed, the rest drained
    daemon: {"type": "summary", ...}            the last line

What a client cannot do: name another sandbox (it only ever has its own), read others' records,
or outlive its connection: a client that goes away before `exited` (it crashed, it was killed)
has its sandbox killed and removed, counted in `disconnected`. A daemon that stops kills its
clients' sandboxes; the clients see the connection end and say so (monitor/client.py). Bad
input (not JSON, an unknown op, a line over MAX_LINE, a rule file with errors) gets one `error`
line naming the problem and is counted; the daemon and the other clients are unaffected.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from monitor.engine.assemble import Monitor
from monitor.engine.loop import DRAIN_QUIET_POLLS
from monitor.event import ActionRecord, Alert, Event
from monitor.policy import PolicyError, RuleSet, load_rules
from monitor.sandbox import Sandbox
from monitor.sandbox import cgroup as cg
from monitor.sinks import Sink

log = logging.getLogger("monitor.daemon")

PROTOCOL = 1
MAX_LINE = 1 << 20  # a request is a few paths; a line this long is not one
REQUEST_TIMEOUT_S = 10.0  # a client that connects and says nothing is let go
STREAM_QUEUE = 65536  # judged records waiting for a slow client; past it they are counted, not kept
DRAIN_MAX_PUMPS = 50  # a busy host never quiets: the drain after a client's CMD ends is bounded

RUN_KEYS = frozenset({"op", "version", "name", "rules", "audit"})
Submit = Callable[[Callable[[], Any]], Any]  # run a function on the judging thread, return its result


class ClientStream:
    """One client's records, in judging order, on their way out through a writer thread. A slow
    reader never slows the judging: past STREAM_QUEUE records wait, the rest are counted."""

    def __init__(self, conn: socket.socket, sandbox_id: str) -> None:
        self.conn = conn
        self.sandbox_id = sandbox_id
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(STREAM_QUEUE)
        self.dropped = 0
        self.events_by_kind: Counter[str] = Counter()
        self.alerts_by_rule: Counter[str] = Counter()
        self.alerts_by_severity: Counter[str] = Counter()
        self.actions: list[ActionRecord] = []
        self.broken = False
        self._writer = threading.Thread(target=self._write_loop, name=f"client-{sandbox_id}", daemon=True)
        self._writer.start()

    def offer(self, kind: str, item: Event | Alert | ActionRecord) -> None:
        try:
            self.queue.put_nowait((kind, item))
        except queue.Full:
            self.dropped += 1

    def send(self, message: dict[str, Any]) -> None:
        """A control line (ready, summary) after everything offered before it."""
        self.queue.put((".", message))

    def close(self) -> None:
        self.queue.put(None)
        self._writer.join(timeout=30)

    def _write_loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.broken:
                continue
            kind, value = item
            line = value if kind == "." else value.to_dict()
            if kind == "event":
                line = {"type": "event", **line}
            try:
                self.conn.sendall(json.dumps(line, default=str).encode() + b"\n")
            except OSError:
                self.broken = True  # the reader sees the connection end and cleans up


class ClientStreams(Sink):
    """The daemon's sink that hands each client its own sandbox's records."""

    name = "clients"

    def __init__(self) -> None:
        self.streams: dict[str, ClientStream] = {}

    def _stream(self, event: Event) -> ClientStream | None:
        if not self.streams or not event.sandbox:
            return None
        return self.streams.get(event.sandbox.get("id", ""))

    def on_event(self, event: Event) -> None:
        stream = self._stream(event)
        if stream is not None:
            stream.events_by_kind[event.kind] += 1
            stream.offer("event", event)

    def on_alert(self, alert: Alert) -> None:
        stream = self._stream(alert.event)
        if stream is not None:
            stream.alerts_by_rule[alert.rule] += 1
            stream.alerts_by_severity[alert.severity] += 1
            stream.offer("alert", alert)

    def on_action(self, record: ActionRecord) -> None:
        stream = self.streams.get(str(record.target.get("sandbox") or "")) if self.streams else None
        if stream is not None:
            stream.actions.append(record)
            stream.offer("action", record)


class RequestError(Exception):
    """What a client asked cannot be done: one line back to it, counted under `counted_as`
    (bad_requests: not the protocol; refused: a good request the daemon will not serve)."""

    def __init__(self, message: str, counted_as: str = "bad_requests") -> None:
        super().__init__(message)
        self.counted_as = counted_as


def _read_line(conn: socket.socket, buffer: bytearray) -> dict[str, Any] | None:
    """The next JSON object from the client; None when it hung up."""
    while b"\n" not in buffer:
        if len(buffer) > MAX_LINE:
            raise RequestError(f"request line over {MAX_LINE} bytes")
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    try:
        message = json.loads(line)
    except ValueError:
        raise RequestError("not a JSON line") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise RequestError('expected a JSON object with an "op"')
    return message


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ResidentService:
    """Serves sandboxes to `monitor run` clients for a daemon's monitor. `submit` runs a function
    on the judging thread (the registry, the probes' maps and the pipeline are that thread's)."""

    def __init__(self, monitor: Monitor, streams: ClientStreams, path: str, submit: Submit) -> None:
        self.monitor = monitor
        self.streams = streams
        self.path = Path(path)
        self.submit = submit
        self.counts: Counter[str] = Counter()  # runs, refused, bad_requests, disconnected
        self._listener: socket.socket | None = None
        self._closing = threading.Event()
        self._clients: dict[str, Sandbox] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Listen; OSError when the socket cannot be served (another daemon serves it)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)  # nobody answers: a dead daemon's socket
        else:
            probe.close()
            raise OSError(f"{self.path}: another monitor serves this socket")
        finally:
            probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="resident-accept", daemon=True).start()

    def close(self) -> None:
        """Stop serving; the clients' sandboxes are killed (nothing runs unwatched)."""
        self._closing.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
            self.path.unlink(missing_ok=True)
        with self._lock:
            sandboxes = list(self._clients.values())
        for sandbox in sandboxes:
            with contextlib.suppress(OSError):
                cg.kill(sandbox.cgroup_path)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "active": len(self._clients)}

    def _accept_loop(self) -> None:
        while not self._closing.is_set() and self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="resident-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if _peer_uid(conn) != os.geteuid():
                    raise RequestError("only root may ask this monitor for a sandbox")
                conn.settimeout(REQUEST_TIMEOUT_S)
                buffer = bytearray()
                request = _read_line(conn, buffer)
                if request is None:
                    return
                conn.settimeout(None)
                self._run(conn, request, buffer)
            except RequestError as exc:
                self._count(exc.counted_as)
                log.warning("resident: client refused: %s", exc)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"type": "error", "message": str(exc)}).encode() + b"\n")
            except (OSError, TimeoutError) as exc:
                self._count("bad_requests")
                log.warning("resident: client connection failed: %s", exc)

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _client_rules(self, request: dict[str, Any]) -> RuleSet | None:
        paths = request.get("rules") or []
        if not isinstance(paths, list) or not all(isinstance(p, str) and os.path.isabs(p) for p in paths):
            raise RequestError('"rules" must be a list of absolute paths')
        if not paths:
            return None
        try:
            return load_rules(paths, audit=bool(request.get("audit")))
        except PolicyError as exc:
            raise RequestError(str(exc), counted_as="refused") from None

    def _run(self, conn: socket.socket, request: dict[str, Any], buffer: bytearray) -> None:
        if request.get("op") != "run":
            raise RequestError(f"unknown op {request.get('op')!r} (expected run)")
        unknown = sorted(set(request) - RUN_KEYS)
        if unknown:  # e.g. naming a sandbox: a client has its own, never another's
            raise RequestError(f"unknown key {unknown[0]!r} in the run request (allowed: {', '.join(sorted(RUN_KEYS))})")
        if request.get("version") != PROTOCOL:
            raise RequestError(f"protocol version {request.get('version')!r} (this monitor speaks {PROTOCOL})")
        name = request.get("name") or ""
        if not isinstance(name, str) or len(name) > 200:
            raise RequestError('"name" must be a string of at most 200 characters')
        rules = self._client_rules(request)
        sandbox = cg.create(name)
        stream = ClientStream(conn, sandbox.id)
        try:
            self.submit(lambda: self._admit(sandbox, stream, rules, bool(request.get("audit"))))
        except Exception:
            cg.remove(sandbox, keep_if_frozen=False)
            stream.close()
            raise
        with self._lock:
            self._clients[sandbox.id] = sandbox
            self.counts["runs"] += 1
        started = time.monotonic()
        status: int | None = None
        try:
            status = self._follow(conn, buffer)
        finally:
            if status is None:
                self._count("disconnected")
            cg.kill(sandbox.cgroup_path)  # what CMD left running ends with it (or with its client)
            cg.wait_empty(sandbox.cgroup_path, 2.0)
            summary = self.submit(lambda: self._release(sandbox, stream, status))
            summary["duration_s"] = round(time.monotonic() - started, 3)
            stream.send({"type": "summary", **summary})
            stream.close()
            with self._lock:
                self._clients.pop(sandbox.id, None)
            cg.remove(sandbox)

    def _follow(self, conn: socket.socket, buffer: bytearray) -> int | None:
        """Until the client says CMD exited (its status), or hangs up (None)."""
        while True:
            message = _read_line(conn, buffer)
            if message is None:
                return None
            if message["op"] == "exited":
                status = message.get("status")
                return status if isinstance(status, int) else 1
            if message["op"] != "started":
                raise RequestError(f"unknown op {message['op']!r} while the sandbox runs")

    # -- on the judging thread ------------------------------------------------------------------
    def _admit(self, sandbox: Sandbox, stream: ClientStream, rules: RuleSet | None, audit: bool) -> None:
        monitor = self.monitor
        if rules is not None and monitor.scoped is not None:
            monitor.scoped.scoped[sandbox.id] = rules
        if audit:
            monitor.actions.audit_sandboxes.add(sandbox.id)
        self.streams.streams[sandbox.id] = stream
        monitor.watch(sandbox)  # the watched map and the deny maps, before `ready`
        monitor.sync_wakeup()
        env: dict[str, str] = {}
        for sink in monitor.sinks:
            env.update(sink.start_session(sandbox))
        stream.send({"type": "ready", "sandbox": sandbox.identity(), "env": env})  # before its records
        monitor.emit(Event(kind="sandbox_start", time_ns=sandbox.started_ns, source="monitor",
                           sandbox=sandbox.identity(), cgroup_id=sandbox.cgroup_id))

    def _release(self, sandbox: Sandbox, stream: ClientStream, status: int | None) -> dict[str, Any]:
        """The sandbox's last records judged and streamed, then forgotten; its summary."""
        monitor = self.monitor
        quiet = pumps = 0
        while quiet < DRAIN_QUIET_POLLS and pumps < DRAIN_MAX_PUMPS and monitor.sources:
            quiet = quiet + 1 if monitor.loop.pump(10) == 0 else 0
            pumps += 1
        killed_by = monitor.actions.killed.pop(sandbox.id, None)
        code = 137 if killed_by else (status if status is not None else 137)
        monitor.emit(Event(kind="sandbox_end", source="monitor", sandbox=sandbox.identity(),
                           cgroup_id=sandbox.cgroup_id, detail={"code": code}))
        monitor.pipeline.flush_due()
        rules = monitor.scoped.scoped.pop(sandbox.id, None) if monitor.scoped is not None else None
        monitor.actions.audit_sandboxes.discard(sandbox.id)
        self.streams.streams.pop(sandbox.id, None)
        monitor.unwatch(sandbox)
        monitor.sync_wakeup()
        eval_errors = dict(monitor.policy.eval_errors) if monitor.policy is not None else {}
        if rules is not None:
            eval_errors.update(rules.eval_errors)
        return {"events": sum(stream.events_by_kind.values()), "events_by_kind": dict(stream.events_by_kind),
                "alerts": sum(stream.alerts_by_rule.values()), "alerts_by_rule": dict(stream.alerts_by_rule),
                "alerts_by_severity": dict(stream.alerts_by_severity),
                "actions": [r.to_dict() for r in stream.actions], "killed_by": killed_by,
                "lost": monitor.loop.lost(), "folded": monitor.loop.folded(),
                "stream_dropped": stream.dropped, "eval_errors": eval_errors,
                "monitor": {"resident": True, "pid": os.getpid(), "poll_ms": monitor.poll_ms, "cpu": monitor.cpu}}


def submit_via(inbox: Callable[[tuple[str, Any]], None]) -> Submit:
    """A Submit over a daemon's inbox: the job runs on the judging thread, the caller waits."""
    def submit(job: Callable[[], Any]) -> Any:
        future: Future[Any] = Future()
        inbox(("call", (job, future)))
        return future.result()
    return submit
