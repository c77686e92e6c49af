"""runsc's own controls over a running gVisor container: kill (all or one pid), pause, resume.

The host kernel sees only the Sentry's threads, never the sandboxed program, so a gVisor
sandbox is acted on through runsc, addressed by its state root and container id. Both are read
from the `runsc-sandbox ... boot ... CONTAINER_ID` process the container runs as, whoever
started it: `runsc do` (monitor run --runtime gvisor) or Docker's runsc runtime (the daemon).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

RUNSC_TIMEOUT_S = 10


class RunscError(RuntimeError):
    """runsc refused a control command (its stderr says why)."""


@dataclass(frozen=True, slots=True)
class RunscContainer:
    runsc: str
    root: str
    container_id: str

    def kill_all(self) -> str:
        return self._run("kill", "--all", self.container_id, "KILL")

    def kill_pid(self, pid: int) -> str:
        return self._run("kill", f"--pid={int(pid)}", self.container_id, "KILL")

    def pause(self) -> str:
        return self._run("pause", self.container_id)

    def resume(self) -> str:
        return self._run("resume", self.container_id)

    def command(self, *args: str) -> list[str]:
        return [self.runsc, f"--root={self.root}", *args]

    def _run(self, *args: str) -> str:
        command = self.command(*args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=RUNSC_TIMEOUT_S)
        if result.returncode != 0:
            raise RunscError(f"{' '.join(command)}: {result.stderr.strip() or result.returncode}")
        return "done"


def _boot_args(process: psutil.Process) -> list[str] | None:
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return None
    return cmdline if "boot" in cmdline and any(a.startswith("--root=") for a in cmdline) else None


def find_container(runsc: str, processes: Iterable[psutil.Process],
                   container_id: str | None = None) -> RunscContainer | None:
    """The container whose sandbox process is among `processes` (and has `container_id`, when
    given): its state root and id from the boot command line."""
    for process in processes:
        cmdline = _boot_args(process)
        if cmdline is None or (container_id is not None and cmdline[-1] != container_id):
            continue
        root = next(a.split("=", 1)[1] for a in cmdline if a.startswith("--root="))
        return RunscContainer(runsc, root, cmdline[-1])
    return None


def container_under(runsc: str, pid: int) -> RunscContainer | None:
    """The container `runsc do` started as process `pid` (its sandbox is a descendant)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return None
    return find_container(runsc, children)


def container_by_id(runsc: str, container_id: str) -> RunscContainer | None:
    """A container another runtime manager (Docker) started, found by its id."""
    return find_container(runsc, psutil.process_iter(), container_id)
