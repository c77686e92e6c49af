"""`monitor run --runtime gvisor`: run a command in a gVisor sandbox and stream its trace session.

    with GvisorSandbox(["python3", "agent.py"], name="agent") as sandbox:
        while not sandbox.finished:
            pipeline.process_all(sandbox.poll(100))
        status = sandbox.exit_status()

`GvisorSandbox` is itself a `Source`. It serves the trace sink on a socket in a private 0700
runtime directory, writes the pod-init config next to it and starts
`runsc --network=none --pod-init-config=... do CMD` (the host filesystem read-only under a
writable overlay, no network unless asked). Enforcement uses runsc's own controls: kill ->
`runsc kill --all`, kill_process -> `runsc kill --pid`, freeze -> `runsc pause`, thaw ->
`runsc resume`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from monitor.event import Event
from monitor.gvisor.config import write_pod_init_config
from monitor.gvisor.control import RunscContainer, RunscError, container_under
from monitor.gvisor.source import SinkError, TraceSource, prepare_socket_path
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.source import Source

RUNSC_MISSING = ("runsc not found: gVisor is not installed; install Debian's 'runsc' package "
                 "(apt-get install runsc, or EXTRAS=gvisor scripts/setup.sh)")
DENY_REFUSED = ("deny is not enforceable under gVisor: it relies on in-kernel eBPF maps on the "
                "host, and the host kernel never sees the sandboxed program's syscalls; "
                "use action kill or kill_process for gVisor sandboxes")
DRAIN_AFTER_EXIT_S = 2.0  # how long to wait for the trace session to close after runsc exits
STATUS_NOT_FOUND = 127
STATUS_KILLED = 137


class GvisorError(RuntimeError):
    """gVisor cannot be used as asked (runsc missing, sink unavailable, bad command)."""


def find_runsc(runsc: str | None = None) -> str:
    found = shutil.which(runsc or "runsc")
    if found is None:
        raise GvisorError(RUNSC_MISSING)
    return found


def runtime_dir(base: str | os.PathLike[str] | None = None) -> Path:
    """A 0700 directory owned by us for sink sockets and configs."""
    if base is None:
        if os.geteuid() == 0:
            base = "/run/sandbox-monitor/gvisor"
        else:
            base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/sandbox-monitor-{os.getuid()}") / "gvisor"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise GvisorError(f"{path}: owned by uid {st.st_uid}, not us; refusing to use it")
    os.chmod(path, 0o700)
    return path


def cleanup_stale(base: Path) -> list[str]:
    """Remove session dirs a dead monitor left (no live server on any socket in them)."""
    removed = []
    for session_dir in sorted(base.glob("gv-*")):
        sockets = list(session_dir.glob("*.sock"))
        try:
            for sock in sockets:
                prepare_socket_path(sock)  # unlinks a stale socket, raises on a live one
        except SinkError:
            continue
        for leftover in session_dir.glob("*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            session_dir.rmdir()
            removed.append(session_dir.name)
    return removed


def deny_rules_refused(rules: Iterable[tuple[str, str]]) -> list[str]:
    """One message per (rule name, action) whose action is `deny`."""
    return [f"rule {name!r}: {DENY_REFUSED}" for name, action in rules if action == "deny"]


def _status_from_returncode(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class GvisorSandbox(Source):
    """One command in one gVisor sandbox, with its trace session as a `Source`."""

    name = "gvisor"

    def __init__(self, cmd: Sequence[str], name: str | None = None, *,
                 runsc: str | None = None, network: str = "none",
                 registry: SandboxRegistry | None = None,
                 runtime_base: str | os.PathLike[str] | None = None,
                 runsc_args: Sequence[str] = (), cwd: str | None = None,
                 trace: bool = True, sink_retries: int | None = None,
                 stdin: Any = None, stdout: Any = None, stderr: Any = None) -> None:
        if not cmd:
            raise GvisorError("no command to run")
        self.cmd = list(cmd)
        self.runsc = find_runsc(runsc)
        self.network = network
        self.registry = registry
        self.runsc_args = list(runsc_args)
        self.cwd = cwd
        self.trace = trace
        self.sink_retries = sink_retries
        self._stdio = (stdin, stdout, stderr)
        sandbox_id = f"gv-{os.urandom(4).hex()}"
        self.sandbox = Sandbox(id=sandbox_id, name=name or sandbox_id, runtime="gvisor",
                               started_ns=time.time_ns())
        self.dir = runtime_dir(runtime_base) / sandbox_id
        self.sink: TraceSource | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.not_found = False
        self.killed_by_monitor = False
        self._exited_at: float | None = None
        self._container: RunscContainer | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> GvisorSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resolve_command(self) -> str | None:
        exe = self.cmd[0]
        if "/" in exe:
            path = Path(self.cwd or ".", exe) if not exe.startswith("/") else Path(exe)
            return str(path.resolve()) if os.access(path, os.X_OK) and path.is_file() else None
        return shutil.which(exe)

    def start(self) -> None:
        executable = self._resolve_command()
        if executable is None:
            self.not_found = True  # like a shell: 127, and nothing is started
            return
        cleanup_stale(self.dir.parent)
        self.dir.mkdir(mode=0o700)
        argv = [self.runsc, f"--network={self.network}", *self.runsc_args]
        if self.trace:
            self.sink = self._open_sink()
            kwargs = {} if self.sink_retries is None else {"retries": self.sink_retries}
            config = write_pod_init_config(self.dir / "pod-init.json", str(self.sink.path), **kwargs)
            argv.append(f"--pod-init-config={config}")
        argv += ["do", "--quiet", *(["--cwd", self.cwd] if self.cwd else []),
                 "--", executable, *self.cmd[1:]]
        if self.registry is not None:
            self.registry.add(self.sandbox)
        stdin, stdout, stderr = self._stdio
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr)

    def _open_sink(self) -> TraceSource:
        path = self.dir / "trace.sock"
        try:
            return TraceSource(path, sandbox_for=lambda _container_id: self.sandbox.identity())
        except SinkError:
            # The path is taken by something live: serve on a fresh name rather than fail.
            return TraceSource(self.dir / f"trace-{os.urandom(3).hex()}.sock",
                             sandbox_for=lambda _container_id: self.sandbox.identity())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sink is not None:
            self.sink.close()
        if self.registry is not None:
            self.registry.remove(self.sandbox.id)
        with contextlib.suppress(OSError):
            for leftover in self.dir.glob("*"):
                leftover.unlink()
            self.dir.rmdir()

    # --- Source -------------------------------------------------------------------------

    def poll(self, timeout_ms: int) -> list[Event]:
        if self.proc is not None and self._exited_at is None and self.proc.poll() is not None:
            self._exited_at = time.monotonic()
        if self.sink is None:
            if self.proc is not None and self._exited_at is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=timeout_ms / 1000)
            return []
        return self.sink.poll(timeout_ms if self._exited_at is None else min(timeout_ms, 50))

    def lost(self) -> dict[str, int]:
        return self.sink.lost() if self.sink is not None else {}

    def stats(self) -> dict[str, Any]:
        return self.sink.stats() if self.sink is not None else {}

    @property
    def finished(self) -> bool:
        """runsc exited and its trace session closed (or stayed open past the drain window)."""
        if self.proc is None:
            return True
        if self._exited_at is None:
            return False
        if self.sink is None or (self.sink.sessions and self.sink.open_sessions == 0):
            return True
        return time.monotonic() - self._exited_at > DRAIN_AFTER_EXIT_S

    def events(self, timeout_ms: int = 100) -> Iterator[Event]:
        while not self.finished:
            yield from self.poll(timeout_ms)

    def wait(self, timeout: float | None = None) -> int:
        if self.proc is not None:
            self.proc.wait(timeout=timeout)
        return self.exit_status()

    def exit_status(self) -> int:
        """CMD's status: 127 not found, 137 killed (by policy or a signal), else its own."""
        if self.not_found:
            return STATUS_NOT_FOUND
        if self.proc is None or self.proc.returncode is None:
            raise GvisorError("the sandbox is still running")
        if self.killed_by_monitor:
            return STATUS_KILLED
        return _status_from_returncode(self.proc.returncode)

    # --- enforcement --------------------------------------------------------------------

    def container(self) -> RunscContainer | None:
        """runsc's handle on this sandbox (`runsc do` picks its state root and id at start)."""
        if self._container is None and self.proc is not None:
            self._container = container_under(self.runsc, self.proc.pid)
        return self._container

    @property
    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def _runsc_control(self, act: Callable[[RunscContainer], str]) -> str:
        container = self.container()
        if container is None:
            return "already_gone" if self.exited else "failed"
        try:
            return act(container)
        except RunscError:
            if self.exited:
                return "already_gone"
            raise

    def control_command(self, verb: str) -> str:
        """The runsc command line a person would type to resume or kill this sandbox."""
        container = self.container() or RunscContainer(self.runsc, "?", "?")
        args = ["kill", "--all", container.container_id, "KILL"] if verb == "kill" else [verb, container.container_id]
        return " ".join(container.command(*args))

    def kill(self) -> str:
        """Kill every process in the sandbox; runsc then exits and the session ends."""
        if self.proc is None or self.proc.poll() is not None:
            return "already_gone"
        self.killed_by_monitor = True
        try:
            outcome = self._runsc_control(RunscContainer.kill_all)
        except (RunscError, subprocess.TimeoutExpired):
            outcome = "failed"
        if outcome == "failed":  # runsc could not: take the sandbox's host processes down
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    child.send_signal(signal.SIGKILL)
            outcome = "done"
        return outcome

    def kill_process(self, pid: int) -> str:
        """Kill one process by its pid inside the sandbox (as events report it)."""
        return self._runsc_control(lambda container: container.kill_pid(pid))

    def freeze(self) -> str:
        return self._runsc_control(RunscContainer.pause)

    def thaw(self) -> str:
        return self._runsc_control(RunscContainer.resume)
