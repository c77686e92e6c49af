"""Sandboxes from the resident monitor (`monitor daemon`), for `monitor run` and agent harnesses.

    from monitor.client import Client

    with Client() as client:                       # the daemon's socket (ResidentUnavailable: none)
        run = client.sandbox(name="task-42", rules=["/etc/agent/extra.yaml"])
        run.start(["python3", "agent.py"])         # CMD starts inside the watched sandbox
        for record in run.records():               # events, alerts, actions as they are judged
            if record["type"] == "alert":
                print(record["rule"])
        print(run.summary["exit_status"])          # the summary is the last record

The guarantees are the CLI's: CMD's first instruction runs watched, the daemon's rules and the
ones given here judge it (these, this sandbox alone), kill/freeze/deny act before its next step.
The sandbox lives as long as this connection: close it (or exit) and the daemon kills what is
left. If the daemon stops, `records()` raises ResidentGone after killing the sandbox itself, so
nothing the client started runs unwatched.

This module stays light (the standard library and the sandbox model): a `monitor run` through
the daemon pays for no probe, rule engine or exporter of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from monitor.sandbox import Sandbox
from monitor.sandbox import cgroup as cg

DEFAULT_RESIDENT_SOCKET = "/run/sandbox-monitor/monitor.sock"
RESIDENT_SOCKET_ENV = "SANDBOX_MONITOR_SOCKET"  # another path, for both sides (tests, several daemons)
PROTOCOL = 1


def resident_socket_path() -> str:
    return os.environ.get(RESIDENT_SOCKET_ENV) or DEFAULT_RESIDENT_SOCKET


class ClientError(Exception):
    """The resident monitor refused or failed (one line: its reason)."""


class ResidentUnavailable(ClientError):
    """No resident monitor listens here: run standalone."""


class ResidentGone(ClientError):
    """The resident monitor went away while the sandbox ran."""


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class Client:
    def __init__(self, path: str | None = None) -> None:
        self.path = path or resident_socket_path()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._sock.close()
            raise ResidentUnavailable(f"{self.path}: {exc.strerror}") from None
        except OSError as exc:
            self._sock.close()
            raise ClientError(f"{self.path}: {exc.strerror or exc}") from None
        self._reader = self._sock.makefile("rb")
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def send(self, message: Mapping[str, Any]) -> None:
        with self._lock:
            self._sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict[str, Any] | None:
        line = self._reader.readline()
        if not line:
            return None
        return json.loads(line)

    def sandbox(self, name: str = "", rules: Sequence[str] = (), audit: bool = False) -> SandboxRun:
        """A new sandbox, watched and ready for CMD (ClientError: the daemon's reason, e.g. a rule
        file's file:line)."""
        self.send({"op": "run", "version": PROTOCOL, "name": name,
                   "rules": [os.path.abspath(p) for p in rules], "audit": audit})
        reply = self.receive()
        if reply is None:
            raise ResidentGone(f"{self.path}: the resident monitor closed the connection")
        if reply.get("type") == "error":
            raise ClientError(str(reply.get("message")))
        if reply.get("type") != "ready":
            raise ClientError(f"{self.path}: unexpected reply {reply.get('type')!r}")
        return SandboxRun(self, reply["sandbox"], reply.get("env") or {})


class SandboxRun:
    """One sandbox of the resident monitor: start CMD in it, read its records, get its summary."""

    def __init__(self, client: Client, identity: dict[str, Any], env: dict[str, str]) -> None:
        self.client = client
        self.identity = identity
        self.env = env  # from the daemon's sinks (TRACEPARENT)
        self.sandbox = Sandbox(id=identity["id"], name=identity["name"], runtime=identity["runtime"],
                               cgroup_id=int(identity.get("cgroup_id") or 0),
                               cgroup_path=str(identity.get("cgroup_path") or ""))
        self.child: subprocess.Popen[bytes] | None = None
        self.start_error = ""
        self.returncode: int | None = None
        self.summary: dict[str, Any] = {}

    def start(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
              stdout: IO[Any] | int | None = None) -> None:
        """CMD in the sandbox (it joins the cgroup before exec). Not found: exit status 127, and
        the reason in `start_error`."""
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("SANDBOX_MONITOR_SANDBOX_ID", self.sandbox.id)
        try:
            self.child = subprocess.Popen(list(cmd), preexec_fn=cg.joiner(self.sandbox), env=child_env,
                                          cwd=cwd, stdout=stdout)
        except (FileNotFoundError, PermissionError) as exc:
            self.returncode = 127 if isinstance(exc, FileNotFoundError) else 126
            self.start_error = f"{cmd[0]}: {exc.strerror}"
            self.client.send({"op": "exited", "status": self.returncode})
            return
        self.client.send({"op": "started", "pid": self.child.pid})
        threading.Thread(target=self._wait, name="sandbox-child", daemon=True).start()

    def _wait(self) -> None:
        assert self.child is not None
        self.returncode = exit_status(self.child.wait())
        with contextlib.suppress(OSError):  # the daemon is gone: records() says so
            self.client.send({"op": "exited", "status": self.returncode})

    def kill(self) -> None:
        """Kill every process of the sandbox now (the summary still comes)."""
        cg.kill(self.sandbox.cgroup_path)

    def records(self) -> Iterator[dict[str, Any]]:
        """Events, alerts and actions as judged, then the summary (also kept in `summary`)."""
        while True:
            try:
                record = self.client.receive()
            except (OSError, ValueError):
                record = None
            if record is None:
                self._orphaned()
            assert record is not None
            if record.get("type") == "summary":
                self.summary = record
            yield record
            if record.get("type") == "summary":
                return

    def _orphaned(self) -> None:
        """The daemon went away: nothing of ours may run unwatched."""
        with contextlib.suppress(OSError):
            cg.dispose(self.sandbox.cgroup_path, self.sandbox.id, 2.0)
        raise ResidentGone("the resident monitor went away while the sandbox ran: its processes were "
                           "killed (monitor daemon's log says why)")
