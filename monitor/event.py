"""The one event model that flows probes -> sensor -> enrich -> policy -> actions -> sinks.

`Event.to_dict()` is both the JSON form and the CEL activation (`event`): field names
follow docs/design.md and OpenTelemetry semantic conventions; a field that does not
apply is absent, never an empty placeholder.

Beyond DESIGN.md's fields, kind-specific facts live in `event.detail` (a map):
  exit: {code, signal}            setuid/setgid/setresuid/...: {uid|gid, euid, suid, call}
  ptrace: {request, target_pid}   memfd: {name, flags}    bpf: {cmd}
  mount: {source, target, fstype, flags}   unshare/setns: {flags: [CLONE_NEW...], call}
  capset: {effective, permitted}  fork: {child_pid}   exec: {args_truncated, args_unreadable}
and `event.verdict` is "denied" when the kernel refused the call on a deny rule.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Every kind a probe or source can emit. Rules' `when:` must name these.
PROCESS_KINDS = ("exec", "exit", "fork", "setuid", "setgid", "capset", "ptrace", "memfd",
                 "unshare", "setns", "mount", "bpf", "chdir")
FILE_KINDS = ("open", "unlink", "rename", "chmod")
NET_KINDS = ("connect", "accept", "bind", "listen", "dns")
OTHER_KINDS = ("container_start", "sandbox_start", "sandbox_end", "llm_request", "llm_response",
               "tls_data")
KINDS: tuple[str, ...] = PROCESS_KINDS + FILE_KINDS + NET_KINDS + OTHER_KINDS

SEVERITIES = ("info", "low", "medium", "high", "critical")
ACTIONS = ("alert", "kill", "kill_process", "freeze", "deny")

# Field paths an event may carry (for `rules lint`: a condition naming anything else is a typo).
FIELDS: dict[str, tuple[str, ...]] = {
    "": ("id", "kind", "time", "time_ns", "process", "file", "net", "sandbox", "container", "llm",
         "result", "detail", "verdict", "source", "cgroup_id"),
    "process": ("pid", "tid", "ppid", "uid", "gid", "comm", "executable", "args", "cwd", "stdin", "stdout",
                "ancestors", "caused_by", "start_time_ns", "exe"),
    "process.exe": ("path", "dev", "ino", "resolved", "deleted", "memfd", "fd_exec", "temp", "writable",
                    "written_in_sandbox", "identity", "script"),
    "process.ancestors": ("pid", "executable", "args", "comm"),
    "file": ("path", "flags", "write", "mode", "new_path", "fd_path", "requested", "resolved", "dev", "ino",
             "hardlink", "is_running_executable"),
    "net": ("family", "transport", "address", "port", "direction", "query", "query_type", "local_address",
            "local_port", "requested"),
    "sandbox": ("id", "name", "runtime", "image", "image_digest", "labels", "cgroup_id",
                "cgroup_path"),
    "container": ("privileged", "user", "read_only_rootfs", "no_new_privileges", "seccomp",
                  "cap_add", "cap_drop", "mounts", "host_pid", "host_network", "host_ipc",
                  "image_pinned", "tmpfs"),
    "llm": ("id", "provider", "host", "model", "stop_reason", "usage", "tool_calls", "text",
            "message_count", "last_message", "stream", "path", "request_id", "request_event_id",
            "tools", "truncated"),
    "detail": ("code", "signal", "uid", "gid", "euid", "suid", "egid", "sgid", "call", "request",
               "target_pid", "name", "flags", "cmd", "source", "target", "fstype", "effective",
               "permitted", "child_pid", "args_truncated", "args_unreadable", "bytes", "repeats"),
}

ID_PREFIX = os.urandom(4).hex()
ID_COUNTER = itertools.count(1)  # also drawn from by the C decoder of open records


def new_id() -> str:
    """A short id unique across monitor runs (random per-process prefix + counter)."""
    return f"{ID_PREFIX}{next(ID_COUNTER):x}"


def utf8_safe(text: str) -> str:
    """`text` as valid UTF-8 can carry it: a lone surrogate (JSON allows "\\ud800", so a model's
    text can hold one) as its escape text. The same object when it has none (`isascii()` is a
    flag test). For the consumers that refuse it: the CEL runtime, protobuf (OTLP)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def rfc3339(time_ns: int) -> str:
    secs, ns = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


@dataclass(slots=True)
class ProcessFacts:
    """What a process table keeps of a process, whichever source tracks it (the enricher for
    eBPF, the gVisor mapper for its own pid namespace); each adds its own bookkeeping."""

    pid: int
    ppid: int = 0
    executable: str = ""
    args: list[str] = field(default_factory=list)
    comm: str = ""
    cwd: str = ""


@dataclass(slots=True)
class Event:
    kind: str
    time_ns: int = field(default_factory=time.time_ns)
    process: dict[str, Any] = field(default_factory=dict)
    sandbox: dict[str, Any] | None = None
    file: dict[str, Any] | None = None
    net: dict[str, Any] | None = None
    container: dict[str, Any] | None = None
    llm: dict[str, Any] | None = None
    detail: dict[str, Any] | None = None
    result: int | None = None
    verdict: str | None = None
    source: str = "ebpf"  # ebpf | gvisor | llm | docker | monitor
    id: str = field(default_factory=new_id)
    cgroup_id: int = 0  # kernel cgroup id the event came from (0: not a kernel event)
    # Transient facts a source hands to enrich (e.g. the dirfd of a relative path); never exported.
    hints: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form and CEL activation; absent fields are left out."""
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "time": rfc3339(self.time_ns),
                               "time_ns": self.time_ns, "source": self.source}
        if self.process:
            out["process"] = self.process
        for name in ("sandbox", "file", "net", "container", "llm", "detail", "result", "verdict"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.cgroup_id != int((self.sandbox or {}).get("cgroup_id") or 0):
            out["cgroup_id"] = self.cgroup_id  # only when event.sandbox does not already say it
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(kind=data["kind"], time_ns=int(data.get("time_ns") or 0),
                   process=data.get("process") or {}, sandbox=data.get("sandbox"),
                   file=data.get("file"), net=data.get("net"), container=data.get("container"),
                   llm=data.get("llm"), detail=data.get("detail"), result=data.get("result"),
                   verdict=data.get("verdict"), source=data.get("source", "ebpf"),
                   id=data.get("id") or new_id(),
                   cgroup_id=int(data["cgroup_id"] if "cgroup_id" in data
                                 else (data.get("sandbox") or {}).get("cgroup_id") or 0))


@dataclass(slots=True)
class Alert:
    """A rule matched an event. `action` is what the rule asks; `mode` says whether it is enforced."""
    rule: str
    severity: str
    action: str
    tags: list[str]
    event: Event
    description: str = ""
    matched: dict[str, Any] = field(default_factory=dict)  # the fields the condition looked at
    mode: str = "enforce"  # enforce | audit
    time_ns: int = field(default_factory=time.time_ns)
    id: str = field(default_factory=new_id)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "alert", "id": self.id, "time": rfc3339(self.time_ns), "time_ns": self.time_ns,
                "rule": self.rule, "severity": self.severity, "action": self.action, "mode": self.mode,
                "tags": self.tags, "description": self.description, "matched": self.matched,
                "event": self.event.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(rule=data["rule"], severity=data["severity"], action=data["action"],
                   tags=list(data.get("tags") or []), event=Event.from_dict(data["event"]),
                   description=data.get("description", ""), matched=data.get("matched") or {},
                   mode=data.get("mode", "enforce"), time_ns=int(data.get("time_ns") or 0),
                   id=data.get("id") or new_id())


@dataclass(slots=True)
class ActionRecord:
    """What an action did: outcome is done | already_gone | audit | refused | failed."""
    action: str
    rule: str
    target: dict[str, Any]  # {"sandbox": id, "pid": n, "cgroup_path": ...}
    outcome: str
    latency_ms: float
    message: str = ""
    alert_id: str = ""
    time_ns: int = field(default_factory=time.time_ns)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "action", "time": rfc3339(self.time_ns), "time_ns": self.time_ns,
                "action": self.action, "rule": self.rule, "target": self.target, "outcome": self.outcome,
                "latency_ms": round(self.latency_ms, 3), "message": self.message,
                "alert_id": self.alert_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionRecord:
        return cls(action=data["action"], rule=data["rule"], target=data.get("target") or {},
                   outcome=data["outcome"], latency_ms=float(data.get("latency_ms") or 0.0),
                   message=data.get("message", ""), alert_id=data.get("alert_id", ""),
                   time_ns=int(data.get("time_ns") or 0))
