"""The monitor's end of gVisor's "remote" trace sink: a unix SOCK_SEQPACKET server and a `Source`.

runsc connects once per sandbox when it starts, sends Handshake{version}, waits for ours, and then
writes one header + point per datagram. A sandbox that exits closes its connection; the server
keeps listening for the next one (a daemon serves every runsc container on the host).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import selectors
import socket
import stat
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.event import Event
from monitor.gvisor import wire
from monitor.gvisor.mapping import EventMapper
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.source import Source

HANDSHAKE_TIMEOUT_S = 2.0
RECV_BUFFER = 256 * 1024
DRAIN_BUDGET = 4096  # datagrams per connection per poll: one busy sandbox cannot starve the rest
_SESSION_IDS = itertools.count(1)


class SinkError(RuntimeError):
    """The sink socket cannot be served (path held by a live server, not a socket, ...)."""


@dataclass(slots=True)
class TraceSession:
    """One runsc connection (one sandbox's trace session)."""
    sock: socket.socket
    mapper: EventMapper
    id: int = field(default_factory=lambda: next(_SESSION_IDS))
    peer_pid: int = 0
    dropped: int = 0  # running total; the header's u32 wraps
    last_raw_dropped: int = 0
    points: int = 0
    open: bool = True
    # Events held (in order) until sandbox_for knows their container: (deadline, container id, event)
    pending: deque[tuple[float, str | None, Event]] = field(default_factory=deque)

    def note_dropped(self, raw: int) -> None:
        self.dropped += (raw - self.last_raw_dropped) & 0xFFFFFFFF
        self.last_raw_dropped = raw


def _peer_pid(sock: socket.socket) -> int:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return 0
    return int.from_bytes(creds[:4], "little")


def prepare_socket_path(path: Path) -> None:
    """Make `path` bindable: a stale socket (nobody accepting) is removed; a live one or a
    non-socket file is refused, never clobbered."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SinkError(f"{path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: its server died without removing it
        return
    except OSError as exc:
        if exc.errno in (errno.EPROTOTYPE, errno.ECONNREFUSED):
            path.unlink(missing_ok=True)
            return
        raise SinkError(f"{path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SinkError(f"{path}: another process is serving this trace socket")


def default_sandbox_for(registry: SandboxRegistry | None = None,
                        name: str | None = None) -> Callable[[str], dict[str, Any] | None]:
    """container id -> event.sandbox map: one gvisor Sandbox per container id, registered."""
    cache: dict[str, Sandbox] = {}

    def sandbox_for(container_id: str) -> dict[str, Any] | None:
        sandbox = cache.get(container_id)
        if sandbox is None:
            sandbox_id = container_id or "gvisor"
            sandbox = (registry.by_id(sandbox_id) if registry else None) or Sandbox(
                id=sandbox_id, name=name or sandbox_id, runtime="gvisor")
            if registry is not None and registry.by_id(sandbox_id) is None:
                registry.add(sandbox)
            cache[container_id] = sandbox
        return sandbox.identity()

    return sandbox_for


def provisional_identity(container_id: str) -> dict[str, Any]:
    """For a container nobody registered (in time): its id, a short name, the runtime."""
    return {"id": container_id, "name": container_id[:12] or "gvisor", "runtime": "gvisor", "labels": {}}


def registry_sandbox_for(registry: SandboxRegistry) -> Callable[[str], dict[str, Any] | None]:
    """For the daemon: the identity the Docker inventory registered under the container id,
    marked runtime "gvisor"; None while the inventory does not know it yet (a container's first
    points precede the engine's start event), so the sink holds those events (hold_unknown_ms)."""
    marked: dict[str, tuple[Sandbox, dict[str, Any]]] = {}

    def sandbox_for(container_id: str) -> dict[str, Any] | None:
        sandbox = registry.by_id(container_id)
        if sandbox is None:
            marked.pop(container_id, None)
            return None
        cached = marked.get(container_id)
        if cached is None or cached[0] is not sandbox:
            cached = marked[container_id] = (sandbox, {**sandbox.identity(), "runtime": "gvisor"})
        return cached[1]

    return sandbox_for


class TraceSource(Source):
    """Serves gVisor trace sessions on `path` and yields their points as monitor Events."""

    name = "gvisor"

    def __init__(self, path: str | os.PathLike[str],
                 sandbox_for: Callable[[str], dict[str, Any] | None] | None = None,
                 *, backlog: int = 64, hold_unknown_ms: int = 0) -> None:
        """`sandbox_for(container_id)` gives event.sandbox; when it returns None the session's
        events are held, in order, up to `hold_unknown_ms` for it to learn the container, then
        released with a provisional identity."""
        self.path = Path(path)
        self._sandbox_for = sandbox_for or default_sandbox_for()
        self.hold_unknown_s = hold_unknown_ms / 1000
        prepare_socket_path(self.path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            self._listener.bind(str(self.path))
        finally:
            os.umask(old_umask)
        self._listener.listen(backlog)
        self._listener.setblocking(False)
        self._selector = selectors.EpollSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._buffer = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self.sessions: list[TraceSession] = []
        self.errors: Counter[str] = Counter()  # malformed, truncated, handshake, unknown_type
        self.points = 0
        self._closed = False

    # --- Source -------------------------------------------------------------------------

    def poll(self, timeout_ms: int) -> list[Event]:
        events: list[Event] = []
        holding = any(s.pending for s in self.sessions)
        timeout_s = max(timeout_ms, 0) / 1000
        for key, _ in self._selector.select(min(timeout_s, 0.05) if holding else timeout_s):
            if key.data is None:
                self._accept_all()
            else:
                self._drain(key.data, events)
        if holding or any(s.pending for s in self.sessions):
            self._release(events)
        return events

    def _release(self, events: list[Event]) -> None:
        """Pending events whose container is now known (or whose wait is over), in order."""
        now = time.monotonic()
        for session in self.sessions:
            pending = session.pending
            while pending:
                deadline, container_id, event = pending[0]
                if container_id is not None:  # None: resolved already, queued to keep the order
                    identity = self._sandbox_for(container_id)
                    if identity is None and now < deadline and session.open:
                        break
                    if identity is None:
                        self.errors["identity_timeout"] += 1
                    event.sandbox = identity or provisional_identity(container_id)
                events.append(pending.popleft()[2])

    def lost(self) -> dict[str, int]:
        return {"gvisor_dropped": sum(s.dropped for s in self.sessions),
                "gvisor_malformed": self.errors["malformed"] + self.errors["truncated"]}

    def stats(self) -> dict[str, Any]:
        return {"points": self.points, "sessions": len(self.sessions),
                "open_sessions": self.open_sessions, "errors": dict(self.errors),
                "repeats_folded": sum(s.mapper.folded for s in self.sessions), **self.lost()}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for session in self.sessions:
            if session.open:
                self._end(session)
        self._selector.close()
        self._listener.close()
        self.path.unlink(missing_ok=True)

    # --- sessions -----------------------------------------------------------------------

    @property
    def open_sessions(self) -> int:
        return sum(1 for s in self.sessions if s.open)

    def fileno(self) -> int:
        return self._selector.fileno()

    def _accept_all(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            session = self._handshake(conn)
            if session is not None:
                self.sessions.append(session)
                self._selector.register(conn, selectors.EVENT_READ, session)

    def _handshake(self, conn: socket.socket) -> TraceSession | None:
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            version = wire.decode_handshake(conn.recv(10240))
            if version < wire.PROTOCOL_VERSION:
                raise wire.MalformedMessage(f"peer protocol version {version}")
            conn.sendall(wire.HANDSHAKE)
        except (OSError, wire.MalformedMessage):
            self.errors["handshake"] += 1
            conn.close()
            return None
        conn.setblocking(False)
        return TraceSession(sock=conn, mapper=EventMapper(self._sandbox_for), peer_pid=_peer_pid(conn))

    def _end(self, session: TraceSession) -> None:
        session.open = False
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(session.sock)
        session.sock.close()

    def _drain(self, session: TraceSession, events: list[Event]) -> None:
        recv_into, view, flags = session.sock.recv_into, self._view, socket.MSG_TRUNC
        for _ in range(DRAIN_BUDGET):
            try:
                size = recv_into(self._buffer, 0, flags)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._end(session)
                return
            if size == 0:
                self._end(session)
                return
            if size > RECV_BUFFER:
                self.errors["truncated"] += 1
                continue
            self.points += 1
            session.points += 1
            self.handle_datagram(session, view[:size], events)

    def handle_datagram(self, session: TraceSession, datagram: bytes | memoryview,
                        events: list[Event]) -> None:
        """Decode one datagram into `events`; anything malformed is counted and skipped."""
        try:
            point = wire.decode(datagram)
        except wire.MalformedMessage:
            self.errors["malformed"] += 1
            return
        session.note_dropped(point.dropped)
        if point.message is None:
            self.errors["unknown_type"] += 1
            return
        try:
            mapped = session.mapper.map(point.message_type, point.message)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError):
            self.errors["malformed"] += 1
            return
        unresolved = session.mapper.unresolved
        if not unresolved and not session.pending:
            events.extend(mapped)
            return
        deadline = time.monotonic() + self.hold_unknown_s
        for event in mapped:
            container_id = unresolved.pop(event.id, None)
            if container_id is None and not session.pending:
                events.append(event)
            else:
                session.pending.append((deadline, container_id, event))
