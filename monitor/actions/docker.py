"""Docker containers: killed through their engine (cgroup.kill when it does not answer in time),
frozen with the container's cgroup-v2 cgroup.freeze, processes killed by host pid."""

from __future__ import annotations

from monitor.actions.enforcer import Enforcer
from monitor.sandbox import Sandbox
from monitor.sandbox.docker import DEFAULT_KILL_TIMEOUT_S, KillResult, kill_container


class DockerEnforcer(Enforcer):
    def __init__(self, kill_timeout_s: float = DEFAULT_KILL_TIMEOUT_S) -> None:
        self.kill_timeout_s = kill_timeout_s
        self.last: KillResult | None = None  # how the last kill went (engine or fallback)

    def kill(self, sandbox: Sandbox) -> tuple[str, str]:
        self.last = kill_container(sandbox, self.kill_timeout_s)
        return self.last.outcome, self.last.message
