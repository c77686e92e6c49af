"""One output: routing and hygiene on the pipeline's thread (dict lookups), delivery on a thread
of its own behind a bounded queue, so a slow or dead endpoint never delays capture or a kill.

A batch that fails is retried with exponential backoff and full jitter; a batch that still fails
counts against a circuit breaker, which after `breaker_failures` failed batches in a row stops
trying for `breaker_cooldown_s` (batches meanwhile are not attempted). Whatever is not delivered
(queue full, retries spent, circuit open, refused, shut down) is counted and handed to
`on_undelivered` as an `Undelivered` record, which the journal keeps: `monitor replay
--alerts-to FILE --since T --until T` sends that window again.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.event import ActionRecord, Alert, Event, rfc3339
from monitor.outputs.hygiene import Hygiene, HygieneConfig
from monitor.outputs.payload import Notice
from monitor.outputs.routing import Route
from monitor.sinks import Sink

TICK_S = 0.25  # the worker wakes at least this often: dedup windows closing, Alertmanager re-sends


class DeliveryError(Exception):
    """A delivery attempt failed. `permanent`: the receiver refused the content; retrying the
    same bytes cannot help (HTTP 4xx other than 408/429)."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


class Transport:
    """How one kind of output talks to its receiver. `deliver` raises DeliveryError; it runs on
    the output's worker thread only. The hooks run on the pipeline's thread and must be cheap."""

    batch_max = 1          # notices per deliver() call
    wants_events = False   # every event becomes a Notice("event") (OCSF's all-events mode)

    def deliver(self, notices: list[Notice]) -> None:
        raise NotImplementedError

    def observe(self, alert: Alert) -> None:  # noqa: B027 - optional hook
        """Every routed alert, suppressed or not (Alertmanager keeps a firing alert alive)."""

    def sandbox_ended(self, event: Event) -> list[Notice]:
        """Notices a sandbox's end calls for (Alertmanager: resolutions)."""
        return []

    def tick(self, now: float) -> list[Notice]:
        """Periodic notices (Alertmanager: re-sends of active alerts, quiet-period resolutions)."""
        return []

    def note_trace(self, sandbox_id: str, trace_id: str) -> None:  # noqa: B027
        pass

    def close(self) -> None:  # noqa: B027
        pass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 4          # tries per batch, the first included
    backoff_s: float = 0.5     # the wait before the second try; doubles each time
    max_backoff_s: float = 30.0

    def delay(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^retry)]."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * (2 ** retry)))


@dataclass(slots=True)
class Undelivered:
    """An alert (or event) an output could not deliver: the journal keeps it (type "undelivered")."""
    output: str
    reason: str  # queue_full | failed | circuit_open | refused | shutdown
    error: str
    kind: str
    rule: str = ""
    alert_id: str = ""
    event_id: str = ""
    sandbox_id: str = ""
    count: int = 1
    time_ns: int = field(default_factory=time.time_ns)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "undelivered", "time": rfc3339(self.time_ns), "output": self.output,
                "reason": self.reason, "error": self.error, "kind": self.kind, "rule": self.rule,
                "alert_id": self.alert_id, "event_id": self.event_id, "sandbox_id": self.sandbox_id,
                "count": self.count}


UndeliveredHook = Callable[[Undelivered], None]


@dataclass(slots=True)
class OutputOptions:
    queue_size: int = 10_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    drain_timeout_s: float = 10.0  # at close, what is still queued after this is undelivered


class OutputSink(Sink):
    """A Sink that routes, de-duplicates, rate-limits and delivers alerts through a Transport."""

    def __init__(self, name: str, transport: Transport, route: Route | None = None,
                 hygiene: HygieneConfig | None = None, options: OutputOptions | None = None,
                 on_undelivered: UndeliveredHook | None = None,
                 clock: Callable[[], float] = time.monotonic, start: bool = True) -> None:
        self.name = name
        self.transport = transport
        self.route = route or Route()
        self.hygiene = Hygiene(hygiene or HygieneConfig())
        self.options = options or OutputOptions()
        self.on_undelivered = on_undelivered
        self.clock = clock
        self.counts: Counter[str] = Counter()  # sent, filtered, failures, undelivered, ...
        self.undelivered_by_reason: Counter[str] = Counter()
        self._queue: queue.Queue[Notice] = queue.Queue(maxsize=self.options.queue_size)
        self._lock = threading.Lock()  # hygiene state: pipeline thread and worker
        self._count_lock = threading.Lock()  # undelivered counts: both threads give up
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._breaker_failures = 0
        self._breaker_open_until = 0.0
        self._inflight: list[Notice] = []
        self._abandoned = False  # close() stopped waiting for the worker: it counts no more
        self.last_error = ""
        self._worker = threading.Thread(target=self._run, name=f"output-{name}", daemon=True)
        if start:
            self._worker.start()

    # pipeline side -----------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if self.transport.wants_events:
            self._enqueue(Notice("event", event=event))
        if event.kind == "sandbox_end":
            for notice in self.transport.sandbox_ended(event):
                self._enqueue(notice)

    def on_alert(self, alert: Alert) -> None:
        if not self.route.accepts(alert):
            self.counts["filtered"] += 1
            return
        self.transport.observe(alert)
        with self._lock:
            admitted = self.hygiene.admit(alert, self.clock())
        if admitted:
            self._enqueue(Notice("alert", alert, first_ns=alert.event.time_ns, last_ns=alert.event.time_ns))

    def on_action(self, record: ActionRecord) -> None:
        pass

    def note_trace(self, sandbox_id: str, trace_id: str) -> None:
        self.transport.note_trace(sandbox_id, trace_id)

    def _enqueue(self, notice: Notice) -> None:
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self._give_up([notice], "queue_full", "queue full")

    # worker side -------------------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = 0.0
        while True:
            batch = self._take()
            if batch:
                self._inflight = batch
                self._send(batch)
                self._inflight = []
            if (mono := time.monotonic()) >= next_tick:
                next_tick = mono + TICK_S
                self._periodic(self.clock())
            if self._stop.is_set() and self._queue.empty():
                return

    def _take(self) -> list[Notice]:
        try:
            first = self._queue.get(timeout=TICK_S)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.transport.batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _periodic(self, now: float) -> None:
        with self._lock:
            closed = self.hygiene.due(now)
        if closed:
            self.counts["aggregates"] += len(closed)
            for start in range(0, len(closed), self.transport.batch_max):
                self._send(closed[start:start + self.transport.batch_max])
        try:
            extra = self.transport.tick(now)
        except Exception as exc:  # a transport's housekeeping must not end the worker
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        if extra:
            self._send(extra, periodic=True)

    def _send(self, batch: list[Notice], periodic: bool = False) -> None:
        if time.monotonic() >= self._deadline:
            self._give_up(batch, "shutdown", "monitor stopping")
            return
        if self._breaker_open_until > time.monotonic():
            self._give_up(batch, "circuit_open", self.last_error)
            return
        retry = self.options.retry
        for attempt in range(retry.attempts):
            try:
                self.transport.deliver(batch)
            except DeliveryError as exc:
                self._failed(str(exc))
                if exc.permanent:
                    self._give_up(batch, "refused", str(exc))
                    return
            except Exception as exc:  # a transport bug must cost a batch, not the worker
                self._failed(f"{type(exc).__name__}: {exc}")
            else:
                self._breaker_failures = 0
                if self._abandoned:  # close() counted this batch undelivered already
                    return
                self.counts["resent" if periodic else "sent"] += sum(1 for n in batch if n.kind != "event")
                self.counts["events_sent"] += sum(1 for n in batch if n.kind == "event")
                return
            if attempt + 1 < retry.attempts:
                wait = min(retry.delay(attempt), max(0.0, self._deadline - time.monotonic()))
                self.counts["retries"] += 1
                if wait > 0:
                    time.sleep(wait)
        self._breaker_failures += 1
        if self._breaker_failures >= self.options.breaker_failures:
            self._breaker_open_until = time.monotonic() + self.options.breaker_cooldown_s
            self._breaker_failures = 0
            self.counts["breaker_opened"] += 1
        if not periodic and not self._abandoned:
            self._give_up(batch, "failed", self.last_error)

    def _failed(self, error: str) -> None:
        self.counts["failures"] += 1
        self.last_error = error

    def _give_up(self, notices: list[Notice], reason: str, error: str) -> None:
        """Count (exactly: the pipeline's thread and the worker both give up) and record what
        was not delivered. Events (OCSF's every-event mode) are counted apart and not recorded:
        the journal has them all."""
        alerts = [n for n in notices if n.kind != "event"]
        with self._count_lock:
            self.counts["events_dropped"] += len(notices) - len(alerts)
            self.counts["undelivered"] += len(alerts)
            if alerts:
                self.undelivered_by_reason[reason] += len(alerts)
        if self.on_undelivered is None:
            return
        for notice in alerts:
            alert, event = notice.alert, notice.event or (notice.alert.event if notice.alert else None)
            record = Undelivered(self.name, reason, error, notice.kind, rule=notice.rule,
                                 alert_id=alert.id if alert else "", event_id=event.id if event else "",
                                 sandbox_id=str(((event.sandbox if event else None) or {}).get("id", "")),
                                 count=notice.count)
            try:
                self.on_undelivered(record)
            except Exception:  # the hook's failure must not stop delivery of the rest
                self.counts["undelivered_hook_errors"] += 1

    # end ---------------------------------------------------------------------------------------
    def flush_windows(self) -> None:
        """Close every dedup window now (their folded counts go out): at the end of a run."""
        with self._lock:
            closed = self.hygiene.close_all()
        self.counts["aggregates"] += len(closed)
        for notice in closed:
            self._enqueue(notice)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        self.flush_windows()
        self._deadline = time.monotonic() + self.options.drain_timeout_s
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(self.options.drain_timeout_s + 5)
        leftover = []
        if self._worker.is_alive():  # stuck in one attempt (a receiver that hangs): give it up
            self._abandoned = True
            leftover.extend(self._inflight)
        while True:
            try:
                leftover.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if leftover:
            self._give_up(leftover, "shutdown", "monitor stopped before delivery")
        self.transport.close()

    def stats(self) -> dict[str, Any]:
        suppressed = {rule: dict(reasons) for rule, reasons in self.hygiene.suppressed.items()}
        out: dict[str, Any] = {key: value for key, value in self.counts.items() if value}
        out["sent"] = self.counts["sent"]
        out["undelivered"] = self.counts["undelivered"]
        out["queued"] = self._queue.qsize()
        if suppressed:
            out["suppressed"] = suppressed
        if self.undelivered_by_reason:
            out["undelivered_by_reason"] = dict(self.undelivered_by_reason)
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    def readings(self) -> dict[str, Any]:
        """For the Prometheus metrics (sandbox_monitor_output_*)."""
        with self._lock:
            suppressed = {(rule, reason): n for rule, reasons in self.hygiene.suppressed.items()
                          for reason, n in reasons.items()}
        return {"sent": self.counts["sent"] + self.counts["events_sent"],
                "failures": self.counts["failures"], "queued": self._queue.qsize(),
                "undelivered": dict(self.undelivered_by_reason), "suppressed": suppressed}
