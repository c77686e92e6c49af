"""`monitor daemon`: the long-running host monitor, built by the same assembly as `monitor run`.

Attaches the probes once, watches Docker containers (all, or those a label selector picks) and
configured plain cgroups, judges every event with the rule set, acts, and writes the sinks the
config names (monitor/engine/config.py has the file's shape). Serves GET /metrics (Prometheus)
and /healthz on 127.0.0.1:PORT. SIGHUP, or a change to a rule file, reloads the rules (a bad
reload keeps the rules in force). SIGTERM/SIGINT exit cleanly: probes detached, sinks flushed and
closed, exit status 0.

Threads: the Docker inventory calls back on its own thread; what must run on the judging thread
(events it emits, deny maps, forgetting a container) goes through `_inbox`. The probes' watched
map is written at once from the inventory's thread, since every millisecond there is unwatched.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from monitor.engine.assemble import Monitor, build
from monitor.engine.config import CgroupWatch, MonitorConfig
from monitor.engine.loop import pinned_to
from monitor.engine.resident import ClientStreams, ResidentService, submit_via
from monitor.event import Event
from monitor.gvisor.source import TraceSource
from monitor.policy import RuleWatcher
from monitor.sandbox import Sandbox
from monitor.sandbox.docker import CgroupRef, DockerInventory
from monitor.sinks import Sink
from monitor.sinks.alertlog import AlertLog
from monitor.sinks.metrics import MetricsServer, serve_metrics

log = logging.getLogger("monitor.daemon")

HEARTBEAT_STALE_S = 5.0


class DaemonError(Exception):
    """A start-up failure, reported as one line."""


class Daemon:
    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._heartbeat = time.monotonic()
        self.monitor: Monitor | None = None
        self.gvisor: TraceSource | None = None
        self.inventory: DockerInventory | None = None
        self.metrics_server: MetricsServer | None = None
        self.rule_watcher: RuleWatcher | None = None
        self.resident: ResidentService | None = None
        self._wakeup = threading.Event()  # work posted while the loop waits with no source
        self.reloads: dict[bool, int] = {}  # reload outcome -> count (SIGHUP and file changes)

    # start-up ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Build the monitor; PolicyError and AssemblyError (one line each) when it cannot be."""
        cfg = self.config
        streams = ClientStreams()
        monitor = self.monitor = build(cfg, daemon=True, extra_sinks=(AlertLog(), streams), warn=log.warning)
        if monitor.sensor is not None:
            log.info("probes attached in %.1fs", monitor.sensor.attach_seconds)
        self._log_wakeup(None)
        metrics = monitor.metrics()
        assert metrics is not None  # the daemon's config always asks for the registry
        for sink in monitor.sinks:  # export health (queue depth, drops) on /metrics
            if type(sink).export_stats is not Sink.export_stats:
                metrics.add_export_source(sink.export_stats)
        self.gvisor = monitor.gvisor
        if self.gvisor is not None:
            log.info("gvisor: trace sessions on %s", self.gvisor.path)
        for watch in cfg.cgroups:
            self._watch_cgroup(watch)
        if cfg.docker_enabled:
            self._start_docker()
        if monitor.policy is not None:
            self.rule_watcher = RuleWatcher(monitor.policy, on_reload=self._on_rules_reloaded).start()
        if cfg.resident_socket is not None:
            self._serve_clients(monitor, streams, cfg.resident_socket)
        try:  # last: /healthz answers once everything above is in place
            self.metrics_server = serve_metrics(metrics, cfg.metrics_port, cfg.metrics_host, health=self.health)
        except OSError as exc:
            raise DaemonError(f"metrics: cannot listen on {cfg.metrics_host}:{cfg.metrics_port}: "
                              f"{exc.strerror or exc}") from None
        log.info("started: %d rules, metrics on http://%s:%d/metrics",
                 len(monitor.policy.rules) if monitor.policy is not None else 0, cfg.metrics_host, self.metrics_port)

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port if self.metrics_server else 0

    def _log_wakeup(self, before: list[str] | None) -> None:
        sensor = self.monitor.sensor if self.monitor is not None else None
        if sensor is None or sensor.eager_kinds == before:
            return
        eager = ", ".join(sensor.eager_kinds)
        log.info("probes: %s", f"records of {eager} wake the reader at once (a rule kills or freezes)"
                 if eager else f"records are read every {self.monitor.poll_ms} ms")  # type: ignore[union-attr]

    def _serve_clients(self, monitor: Monitor, streams: ClientStreams, path: str) -> None:
        """`monitor run` through this daemon; not fatal when the socket cannot be served."""
        service = ResidentService(monitor, streams, path, submit_via(self._post))
        try:
            service.start()
        except OSError as exc:
            log.warning("resident: %s; `monitor run` runs standalone", exc)
            return
        self.resident = service
        log.info("resident: `monitor run` sandboxes on %s", path)

    def _post(self, item: tuple[str, Any]) -> None:
        """Hand the judging thread some work, and cut its current wait short."""
        self._inbox.put(item)
        self._wakeup.set()
        if self.monitor is not None:
            self.monitor.loop.wake()

    def _watch_cgroup(self, watch: CgroupWatch) -> None:
        try:
            cgroup_id = os.stat(watch.path).st_ino
        except OSError as exc:
            raise DaemonError(f"{self.config.source}: cgroup {watch.path}: {exc.strerror}") from None
        sandbox = Sandbox(id=f"cgroup-{cgroup_id}", name=watch.name, runtime="cgroup",
                          cgroup_id=cgroup_id, cgroup_path=watch.path, labels=watch.labels,
                          started_ns=time.time_ns())
        self._sandbox_added(sandbox)
        self._inbox.put(("event", Event(kind="sandbox_start", sandbox=sandbox.identity(),
                                        source="monitor", cgroup_id=cgroup_id)))

    def _start_docker(self) -> None:
        assert self.monitor is not None
        self.inventory = DockerInventory(
            self.monitor.registry, base_url=self.config.docker_host, selector=self.config.watch,
            on_added=self._sandbox_added, on_removed=lambda sandbox: self._inbox.put(("removed", sandbox)),
            on_cgroup_created=self._cgroup_created, on_cgroup_dropped=self._cgroup_dropped,
            emit=lambda event: self._inbox.put(("event", event)), log=log.warning,
            remove_from_registry=False)
        self.inventory.start()

    # inventory callbacks (inventory thread) ---------------------------------------------------
    def _cgroup_created(self, cgroup: CgroupRef) -> None:
        """A container's cgroup appeared: watch it before its first instruction (events held)."""
        monitor = self.monitor
        if monitor is not None and monitor.sensor is not None and monitor.held is not None:
            monitor.held.hold(cgroup.id)
            monitor.sensor.add_cgroup(cgroup.id)

    def _cgroup_dropped(self, cgroup: CgroupRef) -> None:
        """Not ours after all (unselected, or gVisor: its trace session reports it)."""
        self._drop_cgroup(cgroup.id)

    def _drop_cgroup(self, cgroup_id: int) -> None:
        monitor = self.monitor
        if monitor is not None and monitor.sensor is not None and monitor.held is not None:
            monitor.held.drop(cgroup_id)
            if monitor.registry.by_cgroup(cgroup_id) is None:
                monitor.sensor.remove_cgroup(cgroup_id)

    def _sandbox_added(self, sandbox: Sandbox) -> None:
        assert self.monitor is not None
        if self._on_gvisor(sandbox):
            # gVisor containers report through their trace session; in their cgroup the probes
            # would only see gVisor's own work.
            self.monitor.registry.add(sandbox)
            if self.monitor.sensor is not None and sandbox.cgroup_id:
                self._drop_cgroup(sandbox.cgroup_id)  # watched at its creation, before it was known
                self.monitor.sensor.remove_cgroup(sandbox.cgroup_id)
        else:
            self.monitor.watch(sandbox, denies=False)  # at once; the deny maps on the judging thread
        self._inbox.put(("added", sandbox))

    def _on_gvisor(self, sandbox: Sandbox) -> bool:
        return self.inventory is not None and self.inventory.is_gvisor(sandbox.id)

    # main loop --------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop.set()
        self._wakeup.set()

    def request_reload(self, *_: Any) -> None:
        self._reload_requested.set()

    def run(self) -> None:
        assert self.monitor is not None
        cpu = self.monitor.cpu
        log.info("judging loop: %s", f"on CPU {cpu}" if cpu is not None else "moved by the scheduler")
        with pinned_to(cpu):
            self._loop(self.monitor)

    def _loop(self, monitor: Monitor) -> None:
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            if monitor.sources:
                monitor.loop.pump(monitor.poll_ms)
            else:
                self._wakeup.wait(monitor.poll_ms / 1000)
                self._wakeup.clear()
            self._drain_inbox(monitor)
            if self._reload_requested.is_set() and monitor.policy is not None:
                self._reload_requested.clear()
                self._on_rules_reloaded(monitor.policy.reload(), monitor.policy.last_reload_error)
            metrics = monitor.metrics()
            if metrics is not None:
                if monitor.sources:
                    metrics.record_lost(monitor.loop.lost())
                if monitor.policy is not None and monitor.policy.eval_errors:
                    for sink in monitor.sinks:  # absolute totals: recorders keep the maximum
                        sink.record_rule_errors(dict(monitor.policy.eval_errors))

    def _drain_inbox(self, monitor: Monitor) -> None:
        while True:
            try:
                what, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if what == "event":
                monitor.emit(item)
            elif what == "call":
                job, future = item
                try:
                    future.set_result(job())
                except Exception as exc:  # the caller (a client's thread) gets it
                    future.set_exception(exc)
            elif what == "added" and not self._on_gvisor(item):
                if monitor.enricher is not None:
                    monitor.enricher.seed_cgroup(item.cgroup_path)
                self._apply_denies(monitor, item)
            elif what == "removed":
                self._forget(monitor, item)
            elif what == "reloaded" and item:
                before = list(monitor.sensor.eager_kinds) if monitor.sensor is not None else None
                monitor.rules_changed()
                self._log_wakeup(before)

    def _apply_denies(self, monitor: Monitor, sandbox: Sandbox) -> None:
        try:
            monitor.apply_denies(sandbox)
        except Exception as exc:  # a sandbox gone meanwhile, a refused attach: the rest go on
            log.warning("deny rules not applied to %s: %s", sandbox.name, exc)

    def _forget(self, monitor: Monitor, sandbox: Sandbox) -> None:
        # Events the container made before it died may still be in the ring buffer: take them
        # with its identity before the registry forgets it.
        if monitor.sources:
            monitor.loop.pump(0)
        try:
            monitor.unwatch(sandbox)
        except Exception as exc:  # its cgroup is gone already: the maps' entries went with it
            log.debug("unwatch %s: %s", sandbox.name, exc)
            monitor.registry.remove(sandbox.id)

    def _on_rules_reloaded(self, ok: bool, error: str | None) -> None:
        # RuleSet.reload logs the outcome itself; the deny maps follow on the judging thread.
        self.reloads[ok] = self.reloads.get(ok, 0) + 1
        self._inbox.put(("reloaded", ok))

    def health(self) -> tuple[bool, str]:
        age = time.monotonic() - self._heartbeat
        if age > HEARTBEAT_STALE_S:
            return False, f"main loop stalled for {age:.0f}s"
        monitor = self.monitor
        parts = [f"ok: {len(monitor.registry.all()) if monitor else 0} sandboxes watched"]
        if self.inventory is not None:
            state = "connected" if self.inventory.connected.is_set() else "unavailable, reconnecting"
            parts.append(f"docker {state} ({self.inventory.base_url})")
        parts.append("probes attached" if monitor is not None and monitor.sensor is not None else "probes off")
        if self.gvisor is not None:
            parts.append(f"gvisor sessions: {self.gvisor.open_sessions}")
        if self.resident is not None:
            parts.append(f"run clients: {self.resident.stats()['active']}")
        return True, "; ".join(parts)

    # shutdown ---------------------------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        if self.resident is not None:
            self.resident.close()
        if self.inventory is not None:
            self.inventory.stop()
        if self.rule_watcher is not None:
            self.rule_watcher.stop()
        summary: dict[str, Any] = {}
        monitor = self.monitor
        if monitor is not None:
            if monitor.sources:
                monitor.loop.drain()
            self._drain_inbox(monitor)
            summary = monitor.summary()
            if self.resident is not None:
                summary["resident"] = self.resident.stats()
            if monitor.setup_filter is not None and monitor.held is not None:
                summary["docker"] = {"runtime_setup_filtered": monitor.setup_filter.filtered,
                                     "unselected_dropped": monitor.held.counts["held_dropped"],
                                     "unnamed_passed": monitor.held.counts["held_expired"]}
            monitor.finish(summary)
            self.monitor = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        return summary
