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
import time
from collections.abc import Callable

from monitor.actions.enforcer import CgroupEnforcer, EnforceError, Enforcer
from monitor.event import ActionRecord, Alert
from monitor.sandbox import Sandbox, SandboxRegistry


class Actions:
    """The one actor: finds the alert's sandbox in the registry and acts through the enforcer of
    its runtime. `on_record` sees every record as it is made (a command telling its user that
    the sandbox is now frozen)."""

    def __init__(self, registry: SandboxRegistry, audit: bool = False,
                 enforcers: dict[str, Enforcer] | None = None,
                 on_record: Callable[[ActionRecord], None] | None = None) -> None:
        self.registry = registry
        self.audit = audit
        self.enforcers: dict[str, Enforcer] = {"cgroup": CgroupEnforcer(), **(enforcers or {})}
        self.on_record = on_record
        self.protected = {os.getpid(), os.getppid()}
        self.killed: dict[str, str] = {}  # sandbox id -> rule that killed it
        self.audit_sandboxes: set[str] = set()  # sandboxes whose owner asked for audit only

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
        if self.audit or alert.mode == "audit" or sandbox.id in self.audit_sandboxes:
            return self._record(alert, target, "audit", started, f"would {alert.action}")
        # The runtime that reported the event says how its pid is addressed: a runsc container
        # is a Docker sandbox whose events come from gVisor's trace session (identity "gvisor").
        runtime = event.sandbox.get("runtime") or sandbox.runtime
        outcome, message = self._enforce(alert.action, runtime, sandbox, pid, event.verdict)
        if alert.action == "kill" and outcome == "done":
            self.killed.setdefault(sandbox.id, alert.rule)
        return self._record(alert, target, outcome, started, message)

    def _enforce(self, action: str, runtime: str, sandbox: Sandbox, pid: int,
                 verdict: str | None) -> tuple[str, str]:
        enforcer = self.enforcers.get(runtime, self.enforcers["cgroup"])
        try:
            if action == "kill":
                return enforcer.kill(sandbox)
            if action == "freeze":
                return enforcer.freeze(sandbox)
            if action == "kill_process":
                return enforcer.kill_process(sandbox, pid)
            if action == "deny":
                return enforcer.deny(sandbox, pid, verdict)
        except OSError as exc:
            return "failed", f"{action}: {exc.strerror or exc}"
        except EnforceError as exc:
            return "failed", f"{action}: {exc}"
        return "refused", f"unknown action {action!r}"

    def _record(self, alert: Alert, target: dict[str, object], outcome: str, started: int,
                message: str) -> ActionRecord:
        now = time.time_ns()
        latency_ms = (now - alert.event.time_ns) / 1e6 if alert.event.time_ns else (now - started) / 1e6
        record = ActionRecord(action=alert.action, rule=alert.rule, target=target, outcome=outcome,
                              latency_ms=latency_ms, message=message, alert_id=alert.id, time_ns=now)
        if self.on_record is not None:
            self.on_record(record)
        return record
