"""`monitor run`: one sandbox, one command, watched from its first instruction to its last.

Order matters for "no startup race": the monitor is built and the sandbox watched (its cgroup id
in the probes' map, or gVisor's trace session served) before the command starts; a cgroup child
moves itself into the cgroup before exec, so the exec and everything after it are captured.
After CMD exits, what is left in the sandbox is killed, the sources drained, and a summary
written. Exit status: CMD's (128+N when a signal N ended it, 127 when CMD is not found), 137 when
a policy `kill` ended the sandbox.

Both runtimes go through the same steps (`_Sandboxed` is what differs): the same assembly, poll
rule, sink threading, enforcement and summary.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import sys
import time
from typing import Any

from monitor.client import exit_status
from monitor.engine.assemble import Monitor, action_note, build
from monitor.engine.config import RunError, RunOptions
from monitor.engine.loop import LoopError, pinned_to
from monitor.engine.signals import sigterm_stops
from monitor.engine.sinks import AssemblyError
from monitor.event import ActionRecord, Event
from monitor.gvisor.runner import GvisorError, GvisorSandbox
from monitor.policy import PolicyError
from monitor.sandbox import Sandbox
from monitor.sandbox import cgroup as cg
from monitor.sensor import Sensor

RUNTIMES = ("cgroup", "gvisor")


class _Sandboxed:
    """One command in one sandbox of a runtime: what `run` needs of it."""

    sandbox: Sandbox
    not_found_message = ""

    def start(self, env: dict[str, str]) -> None: ...

    def finished(self) -> bool: ...

    def stop(self) -> None:
        """SIGTERM to the monitor: the sandbox dies, the summary is still written."""

    def tick(self) -> None:
        """Housekeeping between batches."""

    def frozen_by_rule(self, record: ActionRecord) -> None:
        """A rule froze the sandbox: the person at the terminal learns it at once."""
        if (text := action_note(record)) is not None:
            print(text, file=sys.stderr)

    def end(self) -> int | None:
        """Once finished: what is left is killed; CMD's exit status (None: it never ran)."""
        return None

    def remove(self) -> None:
        """The sandbox's remains, once its sources are closed."""

    def stats(self) -> dict[str, Any]:
        return {}


class _CgroupRun(_Sandboxed):
    def __init__(self, options: RunOptions, stdout: Any) -> None:
        cg.cleanup_stale()
        self.options = options
        self.stdout = stdout
        self.sandbox = cg.create(options.name)
        self.child: subprocess.Popen[bytes] | None = None
        self.start_error: int | None = None
        self._frozen_noted = False

    def start(self, env: dict[str, str]) -> None:
        try:
            self.child = subprocess.Popen(self.options.cmd, preexec_fn=cg.joiner(self.sandbox), env=env,
                                          stdout=self.stdout)
        except (FileNotFoundError, PermissionError) as exc:
            self.start_error = 127 if isinstance(exc, FileNotFoundError) else 126
            self.not_found_message = f"monitor: {self.options.cmd[0]}: {exc.strerror}"
            return
        self.sandbox.root_pid = self.child.pid

    def finished(self) -> bool:
        return self.child is None or self.child.poll() is not None

    def stop(self) -> None:
        cg.kill(self.sandbox.cgroup_path)

    def frozen_by_rule(self, record: ActionRecord) -> None:
        self._note_frozen()

    def tick(self) -> None:
        if cg.frozen(self.sandbox.cgroup_path):
            self._note_frozen()

    def _note_frozen(self) -> None:
        if not self._frozen_noted:
            self._frozen_noted = True
            print(f"monitor: sandbox {self.sandbox.id} is FROZEN (quarantined); resolve with "
                  f"`monitor sandbox thaw {self.sandbox.id}` or `monitor sandbox kill {self.sandbox.id}`",
                  file=sys.stderr)

    def end(self) -> int | None:
        returncode = exit_status(self.child.wait()) if self.child is not None else self.start_error
        cg.kill(self.sandbox.cgroup_path)  # what CMD left running in its sandbox ends with it
        cg.wait_empty(self.sandbox.cgroup_path, 2.0)
        return returncode

    def remove(self) -> None:
        cg.remove(self.sandbox)


class _GvisorRun(_Sandboxed):
    def __init__(self, options: RunOptions, stdout: Any) -> None:
        try:
            self.run = GvisorSandbox(options.cmd, options.name or None, stdout=stdout)
        except GvisorError as exc:
            raise RunError(str(exc)) from exc
        self.sandbox = self.run.sandbox

    def start(self, env: dict[str, str]) -> None:
        try:
            self.run.start()
        except GvisorError as exc:
            raise RunError(str(exc)) from exc
        if self.run.not_found:
            self.not_found_message = f"monitor: {self.run.cmd[0]}: command not found"

    def finished(self) -> bool:
        return self.run.finished

    def stop(self) -> None:
        self.run.kill()

    def end(self) -> int | None:
        if self.run.proc is not None:
            self.run.wait()
        return self.run.exit_status()

    def stats(self) -> dict[str, Any]:
        return {"gvisor": self.run.stats()}

    def remove(self) -> None:
        """Nothing: the sandbox is the monitor's source, closed (runsc ended) with the others."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise RunError("must run as root (eBPF probes and cgroups need it): sudo monitor ...")


def run(options: RunOptions, sensor: Sensor | None = None) -> int:
    """Run one sandboxed command. `sensor`: an already attached Sensor to reuse (benchmarks and
    tests that run many sandboxes); it is left attached afterwards."""
    require_root()
    if options.runtime not in RUNTIMES:
        raise RunError(f"--runtime {options.runtime}: unknown runtime ({', '.join(RUNTIMES)})")
    stdout = sys.stderr if options.json == "-" else None
    sandboxed: _CgroupRun | _GvisorRun = (_GvisorRun(options, stdout) if options.runtime == "gvisor"
                                          else _CgroupRun(options, stdout))
    try:
        monitor = _build(options, sandboxed, sensor)
    except BaseException:
        sandboxed.remove()
        raise
    try:
        monitor.watch(sandboxed.sandbox)
        status = _run(options, monitor, sandboxed)
    except BaseException:
        monitor.unwatch(sandboxed.sandbox)
        sandboxed.remove()
        monitor.close_sources()  # a failed run releases its probes at once, whoever called it
        raise
    monitor.unwatch(sandboxed.sandbox)
    sandboxed.remove()
    if options.exit_at_once and monitor.owns_sensor and isinstance(sandboxed, _CgroupRun):
        exit_now_release_later(monitor, status)
    monitor.close_sources()
    return status


RELEASER_NAME = b"monitor-release"  # the background release's process name (comm)


def exit_now_release_later(monitor: Monitor, status: int) -> None:
    """Exit with `status` now; a child process releases the probes. Detaching each tracepoint and
    uprobe waits for a kernel grace period (seconds in all), and nobody should wait for that after
    the summary: the child holds the probes' descriptors, detaches them and exits, with no
    terminal or pipe of the caller's held open. Nothing stays attached once it is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork() == 0:
        try:
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None).prctl(15, ctypes.c_char_p(RELEASER_NAME), 0, 0, 0)  # PR_SET_NAME
            monitor.close_sources()
        finally:
            os._exit(0)
    os._exit(status)  # the probes' descriptors are the child's now: nothing to finalise here


def _build(options: RunOptions, sandboxed: _Sandboxed, sensor: Sensor | None) -> Monitor:
    def note(record: ActionRecord) -> None:
        if record.action == "freeze" and record.outcome == "done":
            sandboxed.frozen_by_rule(record)

    try:
        return build(options.config(), sensor=sensor, on_record=note, extra_sinks=tuple(options.sinks),
                     gvisor_run=sandboxed.run if isinstance(sandboxed, _GvisorRun) else None,
                     warn=lambda text: print(f"monitor: {text}", file=sys.stderr))
    except (AssemblyError, PolicyError, LoopError) as exc:
        raise RunError(str(exc)) from None


def child_env(options: RunOptions, sandbox: Sandbox, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.update(options.env)
    env["SANDBOX_MONITOR_SANDBOX_ID"] = sandbox.id
    return env


def _run(options: RunOptions, monitor: Monitor, sandboxed: _Sandboxed) -> int:
    sandbox = sandboxed.sandbox
    trace_env: dict[str, str] = {}
    for sink in monitor.sinks:  # TRACEPARENT: the sandbox's trace is the session's
        trace_env.update(sink.start_session(sandbox))
    if monitor.config.outputs and "TRACEPARENT" in trace_env:  # the alert outputs' trace links
        from monitor.outputs import note_trace

        note_trace(monitor.sinks, sandbox.id, trace_env["TRACEPARENT"])
    monitor.emit(Event(kind="sandbox_start", time_ns=sandbox.started_ns or time.time_ns(), source="monitor",
                       sandbox=sandbox.identity(), cgroup_id=sandbox.cgroup_id))
    with sigterm_stops(sandboxed.stop):
        sandboxed.start(child_env(options, sandbox, trace_env))
        with pinned_to(monitor.cpu):
            monitor.loop.run_until(sandboxed.finished, sandboxed.tick, monitor.poll_ms)
        returncode = sandboxed.end()
        with pinned_to(monitor.cpu):
            monitor.loop.drain()
    if sandboxed.not_found_message:
        print(sandboxed.not_found_message, file=sys.stderr)
    killed_by = monitor.actions.killed.get(sandbox.id)
    status = 137 if killed_by else (returncode if returncode is not None else 1)
    monitor.emit(Event(kind="sandbox_end", source="monitor", sandbox=sandbox.identity(),
                       cgroup_id=sandbox.cgroup_id, detail={"code": status}))
    summary = monitor.summary()
    summary.update({"sandbox": {"id": sandbox.id, "name": sandbox.name, "runtime": sandbox.runtime},
                    "exit_status": status, "killed_by": killed_by, **sandboxed.stats()})
    monitor.pipeline.close(summary)
    return status
