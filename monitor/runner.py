"""`monitor run`: one sandbox, one command, watched from its first instruction to its last.

Order matters for "no startup race": the sandbox cgroup is created and its id put in the
probes' watched map before the child is forked; the child moves itself into the cgroup before
exec, so the exec and everything after it are captured. After CMD exits, what is left in the
sandbox is killed, the ring buffer is drained, the cgroup removed, and a summary printed.
Exit status: CMD's (128+N when a signal N ended it, 127 when CMD is not found), 137 when a
policy `kill` ended the sandbox.
"""

from __future__ import annotations

import gc
import heapq
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from monitor.actions import Actions
from monitor.enrich import Enricher
from monitor.event import Event
from monitor.pipeline import Pipeline, Source
from monitor.policy import RuleSet
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sandbox import cgroup as cg
from monitor.sinks import Sink
from monitor.sinks.console import ConsoleSink
from monitor.sinks.jsonl import JsonlSink

DRAIN_QUIET_POLLS = 3  # consecutive empty polls that mean the ring buffer is drained
# The longest a batched (no-wakeup) record waits in the ring buffer (see poll_ms()): while a rule
# enforces from user space, 5 ms; while the rules only alert, 50 ms, so an idle monitor wakes 20
# times a second instead of 200 (an idle turn costs ~70 us of CPU on our VMs).
POLL_MS = 5
ALERT_POLL_MS = 50
TICK_S = 0.25  # housekeeping between batches (is the sandbox frozen?) at most this often
GC_YOUNG_THRESHOLD = 20_000  # allocations between young-generation collections (default 700)


class RunError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


@dataclass
class RunOptions:
    cmd: list[str]
    name: str = ""
    rules: list[str] = field(default_factory=list)
    no_rules: bool = False
    json: str | None = None
    json_events: bool = True
    journal: str | None = None
    otlp: str | None = None
    audit: bool = False
    runtime: str = "cgroup"
    verbose: bool = False
    quiet: bool = False
    llm_capture: str = "metadata"
    cpu: str = "auto"  # the judging loop's CPU: auto | off | a CPU number (see judging_cpu())
    env: dict[str, str] = field(default_factory=dict)
    sinks: list[Sink] = field(default_factory=list)  # more sinks, after the options' own (the demo's view)


def require_root() -> None:
    if os.geteuid() != 0:
        raise RunError("must run as root (eBPF probes and cgroups need it): sudo monitor ...")


def load_policy(options: RunOptions) -> Any:
    if options.no_rules:
        return None
    from monitor.policy import DEFAULT_RULES_DIR, PolicyError, load_rules

    try:
        return load_rules(options.rules or [DEFAULT_RULES_DIR], audit=options.audit)
    except PolicyError as exc:
        raise RunError(str(exc)) from exc


def build_sinks(options: RunOptions) -> list[Sink]:
    sinks: list[Sink] = []
    if not options.quiet:
        sinks.append(ConsoleSink(verbose=options.verbose))
    if options.json:
        try:
            sinks.append(JsonlSink(options.json, events=options.json_events))
        except OSError as exc:
            raise RunError(f"--json {options.json}: {exc.strerror}") from exc
    if options.journal:
        from monitor.sinks.journal import JournalSink

        try:
            sinks.append(JournalSink(options.journal))
        except OSError as exc:
            raise RunError(f"--journal {options.journal}: {exc.strerror}") from exc
    if options.otlp:
        from monitor.sinks.otlp import OtlpConfigError, OtlpSink

        try:
            sinks.append(OtlpSink(options.otlp))
        except OtlpConfigError as exc:
            raise RunError(f"--otlp {options.otlp}: {exc}") from None
    return sinks + options.sinks


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


USER_SPACE_ENFORCEMENT = ("kill", "kill_process", "freeze")


def judging_cpu(choice: str, option: str = "--cpu") -> int | None:
    """The CPU the judging loop stays on: `auto` (the default) is the highest-numbered CPU this
    process may use, `off` lets the scheduler move it, a number names one. `option` names the
    setting in the error (the daemon's config says `cpu:`).

    Why: on our 2-core VMs a fork+exec storm keeps both cores in use, and a monitor the scheduler
    moves between them lands on whichever core the storm wants next: the same monitor cost the
    storm +4.4 % unpinned and +1.7 % with its loop on one CPU (one interleaved run, 7 repeats;
    README, performance). Only the loop's thread is pinned, only while it runs (pinned_to()), so
    the sandboxed command, spawned before it, keeps every CPU. One CPU allowed: nothing to pin."""
    allowed = os.sched_getaffinity(0)
    if choice == "off":
        return None
    if choice == "auto":
        return max(allowed) if len(allowed) > 1 else None
    if not choice.isdigit() or int(choice) not in allowed:
        raise RunError(f"{option} {choice}: not auto, off or one of this process's CPUs "
                       f"({', '.join(map(str, sorted(allowed)))})")
    return int(choice)


@contextmanager
def pinned_to(cpu: int | None) -> Iterator[None]:
    """The calling thread on `cpu` (None: unchanged) until the block ends, then as it was: a test
    or benchmark that runs monitor in-process gets its thread back."""
    before = os.sched_getaffinity(0)
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # the CPU went offline or left our cpuset since it was chosen
        print(f"monitor: judging loop not pinned to CPU {cpu} ({exc.strerror}): the scheduler moves it",
              file=sys.stderr)
        cpu = None
    try:
        yield
    finally:
        if cpu is not None:
            with suppress(OSError):
                os.sched_setaffinity(0, before)


def _enforcing(policy: Any, actions: tuple[str, ...]) -> list[Any]:
    """The loaded rules that act with one of `actions` (none in audit mode, global or the rule's)."""
    if policy is None or policy.audit:
        return []
    return [rule for rule in policy.rules if rule.action in actions and rule.mode != "audit"]


def eager_kinds(policy: Any) -> set[str]:
    """The event kinds an enforcing rule kills or freezes on from user space: their records wake
    the reader at once (Sensor.set_eager_wakeup). `deny` is in the kernel; its fallback for an
    exec that slips past the map waits for the next poll (5 ms: poll_ms())."""
    return {kind for rule in _enforcing(policy, USER_SPACE_ENFORCEMENT) for kind in rule.when}


def apply_denies(policy: Any, sensor: Any, sandbox: Sandbox) -> int:
    """Load the kernel-compilable `deny` rules into the probes' maps for this sandbox."""
    count = 0
    if policy is None:
        return count
    for rule in policy.rules:
        spec = getattr(rule, "deny_spec", None)
        if rule.action != "deny" or spec is None or rule.mode == "audit" or policy.audit:
            continue
        for path in spec.exec_paths:
            sensor.deny_exec(sandbox.cgroup_id, path)
            count += 1
        for prefix in spec.exec_prefixes:
            sensor.deny_exec(sandbox.cgroup_id, prefix, prefix=True)
            count += 1
        for cidr, port in spec.net:
            sensor.deny_net(sandbox.cgroup_path, sandbox.cgroup_id, cidr, port)
            count += 1
    return count


def tune_gc() -> None:
    """Everything built so far (rules, compiled programs, modules) lives as long as the monitor:
    freeze it out of the cyclic collector, and collect young objects less often. Events are
    freed by reference counting; at 100k events/s the default thresholds spent ~25% of the
    monitor's time in full collections re-walking the same long-lived objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def poll_ms(policy: Any) -> int:
    """POLL_MS while a rule enforces from user space: kill, kill_process and freeze, and deny too
    (its fallback kills an exec the kernel's map missed, e.g. run by a relative path, once read);
    ALERT_POLL_MS while the rules only alert (alerts are then at most 50 ms late)."""
    return POLL_MS if _enforcing(policy, (*USER_SPACE_ENFORCEMENT, "deny")) else ALERT_POLL_MS


def one_wait(sources: list[Any]) -> select.epoll | None:
    """One wait for several sources, when each has a descriptor that polls readable when it has
    records (`fileno()`). Waiting on each in turn let an exec record that came during the TLS
    source's wait sit in the sensor's ring until that wait ended (+5 ms per extra source)."""
    if len(sources) < 2 or not all(hasattr(source, "fileno") for source in sources):
        return None
    ready = select.epoll()
    for source in sources:
        ready.register(source.fileno(), select.EPOLLIN)
    return ready


class Session:
    """The shared loop: poll sources into the pipeline until `done()` says stop."""

    def __init__(self, pipeline: Pipeline, sources: list[Any]) -> None:
        self.pipeline = pipeline
        self.sources = sources
        self.stop_requested = False
        self._ready = one_wait(sources)
        tune_gc()

    def pump(self, timeout_ms: int) -> int:
        if self._ready is not None:
            self._ready.poll(timeout_ms / 1000)
            timeout_ms = 0
        batches = []
        for source in self.sources:
            events = source.poll(timeout_ms if not batches else 0)
            if events:
                batches.append(events)
        if len(batches) > 1:
            # sources are polled in turn: interleave their batches by time (each keeps its own
            # order), so a model response is judged before the process its tool call started
            batches = [list(heapq.merge(*batches, key=lambda e: e.time_ns))]
        for events in batches:
            self.pipeline.process_all(events)
        if not batches:
            self.pipeline.flush_due()
        return sum(len(events) for events in batches)

    def run_until(self, done: Callable[[], bool], on_tick: Callable[[], None] | None = None,
                  poll_ms: int = POLL_MS) -> None:
        """Pump until `done()`; `on_tick` at most every TICK_S (under an exec storm the loop turns
        thousands of times a second, and a tick that reads a cgroup file cost 12 % of the CPU)."""
        next_tick = 0.0
        while not done() and not self.stop_requested:
            self.pump(poll_ms)
            if on_tick is not None and (now := time.monotonic()) >= next_tick:
                next_tick = now + TICK_S
                on_tick()

    def close(self) -> None:
        """The shared wait only: the sources are their owners' to close."""
        if self._ready is not None:
            self._ready.close()
            self._ready = None

    def drain(self) -> None:
        quiet = 0
        while quiet < DRAIN_QUIET_POLLS:
            quiet = quiet + 1 if self.pump(20) == 0 else 0
        for source in self.sources:
            if hasattr(source, "drain"):
                self.pipeline.process_all(source.drain())

    def lost(self) -> dict[str, int]:
        return self._by_source(lambda source: source.lost())

    def folded(self) -> dict[str, int]:
        """Records the kernel folded into an earlier one (counted in its detail.repeats)."""
        return self._by_source(lambda source: source.folded() if hasattr(source, "folded") else {})

    def _by_source(self, counts_of: Callable[[Source], dict[str, int]]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for source in self.sources:
            for key, value in counts_of(source).items():
                merged[f"{source.name}.{key}" if len(self.sources) > 1 else key] = value
        return merged


def monitor_cost() -> dict[str, float]:
    """The monitor's own CPU seconds and peak RSS so far (for the summary and benchmarks)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def child_env(options: RunOptions, sandbox: Sandbox, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.update(options.env)
    env["SANDBOX_MONITOR_SANDBOX_ID"] = sandbox.id
    return env


def run(options: RunOptions, sensor: Any = None) -> int:
    """Run one sandboxed command. `sensor`: an already attached Sensor to reuse (benchmarks and
    tests that run many sandboxes); it is left attached afterwards."""
    require_root()
    if options.runtime == "gvisor":
        from monitor.gvisor.run import run_gvisor  # the gVisor path has its own source

        return run_gvisor(options)
    if options.runtime != "cgroup":
        raise RunError(f"--runtime {options.runtime}: unknown runtime (cgroup, gvisor)")
    cpu = judging_cpu(options.cpu)
    cg.cleanup_stale()
    policy = load_policy(options)
    from monitor.sensor import Sensor, SensorError

    owns_sensor = sensor is None
    if sensor is None:
        try:
            sensor = Sensor()
        except SensorError as exc:
            raise RunError(f"{exc} (run `monitor doctor`)") from exc
    sinks = build_sinks(options)
    registry = SandboxRegistry()
    actions = Actions(registry, audit=options.audit)
    pipeline = Pipeline(Enricher(registry), policy, actions, sinks, threaded_sinks=True)
    sandbox = cg.create(options.name)
    registry.add(sandbox)
    sensor.add_cgroup(sandbox.cgroup_id)
    sensor.set_eager_wakeup(eager_kinds(policy))
    apply_denies(policy, sensor, sandbox)
    session = Session(pipeline, [sensor, *start_llm(options, sandbox, pipeline)])
    try:
        return _run_child(options, sandbox, session, actions, pipeline, poll_ms(policy), cpu)
    finally:
        session.close()
        for source in session.sources:
            if source is not sensor:
                source.close()
        sensor.detach_net_deny(sandbox.cgroup_path)
        sensor.clear_denies(sandbox.cgroup_id)
        cg.remove(sandbox)
        if owns_sensor:
            sensor.close()


def start_llm(options: RunOptions, sandbox: Sandbox, pipeline: Pipeline) -> list[Any]:
    """The TLS source (model calls, tool calls) and its caused_by linker, unless --llm-capture off."""
    if options.llm_capture == "off":
        return []
    try:
        from monitor.llm import LlmSource, ToolCallLinker

        source = LlmSource(capture=options.llm_capture)
    except Exception as exc:  # no uprobes / bcc here: the rest of the monitor still runs
        print(f"monitor: llm capture unavailable: {exc}", file=sys.stderr)
        return []
    source.add_cgroup(sandbox.cgroup_id, sandbox.cgroup_path)
    if isinstance(pipeline.enricher, Enricher):
        pipeline.enricher.linker = ToolCallLinker(on_exec=source.notice_exec)
    return [source]


def _otlp_env(options: RunOptions, sandbox: Sandbox, pipeline: Pipeline) -> dict[str, str]:
    """TRACEPARENT for the child, from the OTLP sink's session (its trace = the sandbox's)."""
    for sink in pipeline.sinks:
        start = getattr(sink, "start_session", None)
        if start is not None:
            return start(sandbox)
    return {}


def _run_child(options: RunOptions, sandbox: Sandbox, session: Session, actions: Actions,
               pipeline: Pipeline, poll: int, cpu: int | None) -> int:
    started = time.monotonic()
    extra_env = _otlp_env(options, sandbox, pipeline)
    pipeline.process(Event(kind="sandbox_start", time_ns=sandbox.started_ns, source="monitor",
                           sandbox=sandbox.identity(), cgroup_id=sandbox.cgroup_id))
    stdout = sys.stderr if options.json == "-" else None
    returncode: int | None = None
    message = ""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM:  # stop: the sandbox dies, the summary is still written
            cg.kill(sandbox.cgroup_path)
        # SIGINT reaches the child from the terminal too; the monitor keeps draining.

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            child = subprocess.Popen(options.cmd, preexec_fn=cg.joiner(sandbox),
                                     env=child_env(options, sandbox, extra_env), stdout=stdout)
        except (FileNotFoundError, PermissionError) as exc:
            returncode = 127 if isinstance(exc, FileNotFoundError) else 126
            message = f"monitor: {options.cmd[0]}: {exc.strerror}"
        else:
            sandbox.root_pid = child.pid
            frozen_noted = [False]

            def tick() -> None:
                if not frozen_noted[0] and cg.frozen(sandbox.cgroup_path):
                    frozen_noted[0] = True
                    print(f"monitor: sandbox {sandbox.id} is FROZEN (quarantined); resolve with "
                          f"`monitor sandbox thaw {sandbox.id}` or `monitor sandbox kill {sandbox.id}`",
                          file=sys.stderr)

            with pinned_to(cpu):
                session.run_until(lambda: child.poll() is not None, tick, poll)
            returncode = exit_status(child.wait())
        cg.kill(sandbox.cgroup_path)  # what CMD left running in its sandbox ends with it
        cg.wait_empty(sandbox.cgroup_path, 2.0)
        with pinned_to(cpu):
            session.drain()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if message:
        print(message, file=sys.stderr)
    killed_by = actions.killed.get(sandbox.id)
    status = 137 if killed_by else (returncode if returncode is not None else 1)
    pipeline.process(Event(kind="sandbox_end", source="monitor", sandbox=sandbox.identity(),
                           cgroup_id=sandbox.cgroup_id, detail={"code": status}))
    policy = pipeline.policy
    summary = pipeline.summary()
    summary.update({"sandbox": {"id": sandbox.id, "name": sandbox.name, "runtime": sandbox.runtime},
                    "exit_status": status, "duration_s": round(time.monotonic() - started, 3),
                    "lost": session.lost(), "folded": session.folded(), "killed_by": killed_by,
                    "monitor": {**monitor_cost(), "poll_ms": poll, "cpu": cpu},
                    "rule_eval_ms": {k: round(v * 1e3, 3) for k, v in pipeline.eval_seconds.items()},
                    "eval_errors": dict(policy.eval_errors) if isinstance(policy, RuleSet) else {},
                    "sources": {s.name: s.stats() for s in session.sources if hasattr(s, "stats")}})
    pipeline.close(summary)
    for source in session.sources:
        if hasattr(source, "remove_cgroup"):
            source.remove_cgroup(sandbox.cgroup_id)
    return status  # run() closes the sources and removes the sandbox
