"""Actions: what a matched rule makes happen, only ever to the sandbox that earned it.

  alert         the alert record and terminal line (sinks do that; no action record)
  kill          the whole sandbox: cgroup.kill, or the runtime's own kill (Docker engine, runsc)
  kill_process  only the offending process (pidfd, checked to be inside the sandbox's cgroup)
  freeze        quarantine: cgroup.freeze with memory, files and processes intact
  deny          enforced in the kernel before the act (exec: SIGKILL at exec entry; connect:
                EPERM from the cgroup connect programs); the action record says whether the
                kernel denied it, and an exec that slipped past the kernel map (e.g. called by a
                relative path) is killed as a process instead
In audit mode (global --audit, or a rule's `mode: audit`) nothing is enforced: each record says
what would have been done. The monitor's own process, its parent, and anything outside a
registered sandbox are never touched, whatever a rule says.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Protocol

from monitor.event import ActionRecord, Alert
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sandbox import cgroup as cg


class Enforcer(Protocol):
    """A runtime's way to stop a sandbox (cgroup by default; Docker and gVisor supply theirs)."""

    def kill(self, sandbox: Sandbox) -> str: ...

    def freeze(self, sandbox: Sandbox) -> str: ...


class CgroupEnforcer:
    def kill(self, sandbox: Sandbox) -> str:
        return cg.kill(sandbox.cgroup_path)

    def freeze(self, sandbox: Sandbox) -> str:
        outcome = cg.freeze(sandbox.cgroup_path)
        if outcome == "done" and sandbox.runtime == "cgroup":
            cg.write_state(sandbox, frozen=True)
        return outcome


def kill_pid(pid: int) -> str:
    """SIGKILL one process through a pidfd (no pid-reuse race between check and kill)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "already_gone"
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return "done"
    except ProcessLookupError:
        return "already_gone"
    finally:
        os.close(pidfd)


class Actions:
    def __init__(self, registry: SandboxRegistry, audit: bool = False,
                 enforcers: dict[str, Enforcer] | None = None) -> None:
        self.registry = registry
        self.audit = audit
        self.enforcers: dict[str, Enforcer] = {"cgroup": CgroupEnforcer(), **(enforcers or {})}
        self.protected = {os.getpid(), os.getppid()}
        self.killed: dict[str, str] = {}  # sandbox id -> rule that killed it

    def take(self, alert: Alert) -> ActionRecord | None:
        if alert.action == "alert":
            return None
        started = time.time_ns()
        event = alert.event
        sandbox = self.registry.by_id((event.sandbox or {}).get("id", "")) if event.sandbox else None
        pid = int(event.process.get("pid", 0) or 0)
        target = {"sandbox": sandbox.id if sandbox else None, "pid": pid}
        if sandbox is None:
            return self._record(alert, target, "refused", started, "event is not from a watched sandbox")
        if pid in self.protected:
            return self._record(alert, target, "refused", started, "never acts on the monitor itself")
        if self.audit or alert.mode == "audit":
            return self._record(alert, target, "audit", started, f"would {alert.action}")
        outcome, message = self._enforce(alert.action, sandbox, pid, event.verdict)
        if alert.action == "kill" and outcome == "done":
            self.killed.setdefault(sandbox.id, alert.rule)
        return self._record(alert, target, outcome, started, message)

    def _enforce(self, action: str, sandbox: Sandbox, pid: int, verdict: str | None) -> tuple[str, str]:
        enforcer = self.enforcers.get(sandbox.runtime, self.enforcers["cgroup"])
        try:
            if action == "kill":
                return enforcer.kill(sandbox), ""
            if action == "freeze":
                return enforcer.freeze(sandbox), "sandbox quarantined: monitor sandbox thaw|kill " + sandbox.id
            if action == "kill_process":
                return self._kill_process(sandbox, pid)
            if action == "deny":
                if verdict == "denied":
                    return "done", "denied in kernel"
                outcome, message = self._kill_process(sandbox, pid)
                return outcome, "not matched in kernel; process killed instead " + message
        except OSError as exc:
            return "failed", f"{action}: {exc.strerror or exc}"
        return "refused", f"unknown action {action!r}"

    def _kill_process(self, sandbox: Sandbox, pid: int) -> tuple[str, str]:
        if sandbox.runtime == "gvisor":
            # a gVisor pid lives in the sandbox's own namespace: the same number on the host is
            # somebody else. Only the runtime can kill it.
            enforcer = self.enforcers.get("gvisor")
            kill_process = getattr(enforcer, "kill_process", None)
            if kill_process is None:
                return "refused", "kill_process needs the gVisor runtime's own kill (runsc kill --pid)"
            return kill_process(sandbox, pid), f"sandbox pid {pid}"
        if sandbox.cgroup_path and pid not in cg.pids(sandbox.cgroup_path):
            return "already_gone", f"pid {pid} no longer in the sandbox"
        return kill_pid(pid), f"pid {pid}"

    def _record(self, alert: Alert, target: dict[str, object], outcome: str, started: int,
                message: str) -> ActionRecord:
        now = time.time_ns()
        latency_ms = (now - alert.event.time_ns) / 1e6 if alert.event.time_ns else (now - started) / 1e6
        return ActionRecord(action=alert.action, rule=alert.rule, target=target, outcome=outcome,
                            latency_ms=latency_ms, message=message, alert_id=alert.id, time_ns=now)
