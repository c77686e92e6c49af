"""The enforcer contract: how a runtime acts on one of its sandboxes. The defaults are cgroup-v2's
(cgroup.kill, cgroup.freeze, a pidfd kill checked against the sandbox's cgroup); runtimes whose
processes the host cannot address (gVisor) or that own their containers (Docker) override them.
Each method returns (outcome, message): the outcome in ActionRecord's words ("done",
"already_gone", "refused", ...), the message what a person reading the record needs; it raises
OSError or EnforceError when the runtime fails.
"""

from __future__ import annotations

import os
import signal

from monitor.sandbox import Sandbox
from monitor.sandbox import cgroup as cg


class EnforceError(RuntimeError):
    """The runtime refused (its own message)."""


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


class Enforcer:
    def kill(self, sandbox: Sandbox) -> tuple[str, str]:
        return cg.kill(sandbox.cgroup_path), ""

    def freeze(self, sandbox: Sandbox) -> tuple[str, str]:
        return cg.freeze(sandbox.cgroup_path), self.quarantined(sandbox)

    def quarantined(self, sandbox: Sandbox) -> str:
        return f"sandbox quarantined: monitor sandbox thaw|kill {sandbox.id}"

    def kill_process(self, sandbox: Sandbox, pid: int) -> tuple[str, str]:
        """(outcome, message). A host pid, killed only while it is inside the sandbox's cgroup."""
        if not sandbox.cgroup_path:
            return "refused", f"pid {pid}: the sandbox has no cgroup to check it against"
        if pid not in cg.pids(sandbox.cgroup_path):
            return "already_gone", f"pid {pid} no longer in the sandbox"
        return kill_pid(pid), f"pid {pid}"

    def deny(self, sandbox: Sandbox, pid: int, verdict: str | None) -> tuple[str, str]:
        """A deny rule matched: the kernel refused the act already (verdict "denied"), or its map
        missed it (an exec by a relative path) and the process is killed instead."""
        if verdict == "denied":
            return "done", "denied in kernel"
        outcome, message = self.kill_process(sandbox, pid)
        return outcome, "not matched in kernel; process killed instead " + message


class CgroupEnforcer(Enforcer):
    """`monitor run` sandboxes: a freeze is also written to the sandbox's state file, so `monitor
    sandbox list` shows it and `thaw`/`kill` resolve it after the run."""

    def freeze(self, sandbox: Sandbox) -> tuple[str, str]:
        outcome, message = super().freeze(sandbox)
        if outcome == "done" and sandbox.runtime == "cgroup":
            cg.write_state(sandbox, frozen=True)
        return outcome, message
