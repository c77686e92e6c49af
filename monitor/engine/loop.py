"""The judging loop: one wait over every source, batches into the pipeline, its poll and its CPU.

`Loop.pump` waits once for all sources (when each offers a descriptor), takes what each has,
interleaves the batches by time and hands them to `Pipeline.process_all`. How long a batched
record may wait (`poll_ms`) and which records wake the reader at once (`eager_kinds`) follow
from the loaded rules, the same way for every command.
"""

from __future__ import annotations

import gc
import heapq
import os
import resource
import select
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from monitor.engine.pipeline import Pipeline
from monitor.source import Source


class LoopError(Exception):
    """A setting the loop cannot use: one line, exit status 1."""


DRAIN_QUIET_POLLS = 3  # consecutive empty polls that mean the ring buffer is drained
# The longest a batched (no-wakeup) record waits in the ring buffer (see poll_ms()): short while a
# rule enforces from user space, ten times longer while the rules only alert, so an idle monitor
# wakes ten times less often (each idle turn costs CPU: docs/performance.md, "poll").
POLL_MS = 5
ALERT_POLL_MS = 50
TICK_S = 0.25  # housekeeping between batches (is the sandbox frozen?) at most this often
GC_YOUNG_THRESHOLD = 20_000  # allocations between young-generation collections (default 700)


USER_SPACE_ENFORCEMENT = ("kill", "kill_process", "freeze")


def judging_cpu(choice: str, option: str = "--cpu") -> int | None:
    """The CPU the judging loop stays on: `auto` (the default) is the highest-numbered CPU this
    process may use, `off` lets the scheduler move it, a number names one. `option` names the
    setting in the error (the daemon's config says `cpu:`).

    Why: on a 2-core machine a fork+exec storm keeps both cores in use, and a monitor the
    scheduler moves between them lands on whichever core the storm wants next, with cold caches
    (docs/performance.md, "judging loop on one CPU", has the figures). Only the loop's thread is
    pinned, only while it runs (pinned_to()), so the sandboxed command, spawned before it, keeps
    every CPU. One CPU allowed: nothing to pin."""
    allowed = os.sched_getaffinity(0)
    if choice == "off":
        return None
    if choice == "auto":
        return max(allowed) if len(allowed) > 1 else None
    if not choice.isdigit() or int(choice) not in allowed:
        raise LoopError(f"{option} {choice}: not auto, off or one of this process's CPUs "
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


def tune_gc() -> None:
    """Everything built so far (rules, compiled programs, modules) lives as long as the monitor:
    freeze it out of the cyclic collector, and collect young objects less often. Events are
    freed by reference counting; at high event rates the default thresholds spent a large share
    of the monitor's time re-walking the same long-lived objects (docs/performance.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def poll_ms(policy: Any) -> int:
    """POLL_MS while a rule enforces from user space: kill, kill_process and freeze, and deny too
    (its fallback kills an exec the kernel's map missed, e.g. run by a relative path, once read);
    ALERT_POLL_MS while the rules only alert (alerts are then at most 50 ms late)."""
    return POLL_MS if _enforcing(policy, (*USER_SPACE_ENFORCEMENT, "deny")) else ALERT_POLL_MS


def one_wait(sources: list[Source], extra: tuple[int, ...] = ()) -> select.epoll | None:
    """One wait for several sources, when each has a descriptor that polls readable when it has
    records (`fileno()`). Waiting on each in turn let an exec record that came during the TLS
    source's wait sit in the sensor's ring until that wait ended (one whole wait per extra source).
    `extra`: more descriptors to wait on (the loop's wake-up pipe)."""
    descriptors = [source.fileno() for source in sources] + list(extra)
    if len(descriptors) < 2 or None in descriptors:
        return None
    ready = select.epoll()
    for descriptor in descriptors:
        ready.register(descriptor, select.EPOLLIN)
    return ready


class Loop:
    """Poll sources into the pipeline until `done()` says stop."""

    def __init__(self, pipeline: Pipeline, sources: list[Source], wakeable: bool = False) -> None:
        """`wakeable`: another thread may cut a wait short (`wake()`: the daemon's clients)."""
        self.pipeline = pipeline
        self.sources = sources
        self.stop_requested = False
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) if wakeable else None
        self._ready = one_wait(sources, (self._wake[0],) if self._wake else ())
        tune_gc()

    def wake(self) -> None:
        """End the current wait now (from any thread); the loop then does what was asked of it."""
        if self._wake is not None:
            with suppress(BlockingIOError):
                os.write(self._wake[1], b"\0")

    def pump(self, timeout_ms: int) -> int:
        if self._ready is not None:
            self._ready.poll(timeout_ms / 1000)
            timeout_ms = 0
            if self._wake is not None:
                with suppress(BlockingIOError):
                    os.read(self._wake[0], 512)
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
        thousands of times a second, and a tick that reads a cgroup file on each turn showed in
        the storm's overhead)."""
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
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def drain(self) -> None:
        quiet = 0
        while quiet < DRAIN_QUIET_POLLS:
            quiet = quiet + 1 if self.pump(20) == 0 else 0
        for source in self.sources:
            self.pipeline.process_all(source.drain())

    def lost(self) -> dict[str, int]:
        return self._by_source(lambda source: source.lost())

    def folded(self) -> dict[str, int]:
        """Records the kernel folded into an earlier one (counted in its detail.repeats)."""
        return self._by_source(lambda source: source.folded())

    def _by_source(self, counts_of: Callable[[Source], dict[str, int]]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for source in self.sources:
            for key, value in counts_of(source).items():
                merged[f"{source.name}.{key}" if len(self.sources) > 1 else key] = value
        return merged


def monitor_cost() -> dict[str, float]:
    """The monitor's own CPU seconds and peak RSS so far (for the summary and benchmarks)."""

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 3), "max_rss_mb": round(usage.ru_maxrss / 1024, 1)}


