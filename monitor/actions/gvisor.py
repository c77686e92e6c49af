"""gVisor sandboxes: acted on through runsc, never by host pid.

A pid in a gVisor event is the sandbox's own (pid 1 is its first program): the same number on
the host is somebody else, so `kill_process` goes through `runsc kill --pid`, and `deny`, which
needs the host kernel to see the act, is refused. The container is found through the `monitor
run --runtime gvisor` sandbox that started it, or (Docker's runsc runtime, in the daemon) by
its container id among runsc's processes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from monitor.actions.enforcer import EnforceError, Enforcer
from monitor.gvisor.control import RunscContainer, RunscError, container_by_id
from monitor.gvisor.runner import DENY_REFUSED, GvisorSandbox, find_runsc
from monitor.sandbox import Sandbox


class GvisorEnforcer(Enforcer):
    """`engine`: who kills a container another manager started (Docker's runsc runtime: the
    engine, so the container's state stays the engine's)."""

    def __init__(self, engine: Enforcer | None = None, runsc: str | None = None) -> None:
        self.engine = engine
        self.runsc = runsc
        self.runs: dict[str, GvisorSandbox] = {}  # sandbox id -> the `monitor run` that owns it

    def add_run(self, run: GvisorSandbox) -> None:
        self.runs[run.sandbox.id] = run

    def kill(self, sandbox: Sandbox) -> tuple[str, str]:
        run = self.runs.get(sandbox.id)
        if run is not None:
            return run.kill(), "runsc kill --all"
        if self.engine is not None:
            return self.engine.kill(sandbox)
        return self._control(sandbox, RunscContainer.kill_all), "runsc kill --all"

    def freeze(self, sandbox: Sandbox) -> tuple[str, str]:
        return self._control(sandbox, RunscContainer.pause), self.quarantined(sandbox)

    def quarantined(self, sandbox: Sandbox) -> str:
        container = self._container(sandbox)
        if container is None:
            return "sandbox paused (runsc pause)"
        resume = " ".join(container.command("resume", container.container_id))
        kill = " ".join(container.command("kill", "--all", container.container_id, "KILL"))
        return f"sandbox quarantined (runsc pause): resolve with `{resume}` or `{kill}`"

    def kill_process(self, sandbox: Sandbox, pid: int) -> tuple[str, str]:
        if not pid:
            return self.kill(sandbox)
        return self._control(sandbox, lambda container: container.kill_pid(pid)), f"sandbox pid {pid}"

    def deny(self, sandbox: Sandbox, pid: int, verdict: str | None) -> tuple[str, str]:
        return "refused", DENY_REFUSED

    def _container(self, sandbox: Sandbox) -> RunscContainer | None:
        run = self.runs.get(sandbox.id)
        if run is not None:
            return run.container()
        return container_by_id(self.runsc or find_runsc(), sandbox.id)

    def _control(self, sandbox: Sandbox, act: Callable[[RunscContainer], str]) -> str:
        container = self._container(sandbox)
        if container is None:
            return "already_gone"
        try:
            return act(container)
        except RunscError as exc:
            run = self.runs.get(sandbox.id)
            if run is not None and run.exited:
                return "already_gone"
            raise EnforceError(str(exc)) from None
        except subprocess.TimeoutExpired as exc:
            raise EnforceError(f"runsc did not answer within {exc.timeout:g}s") from None
