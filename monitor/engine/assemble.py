"""The assembly: the one place that builds a running monitor from one configuration.

    monitor = build(config)                      # sources, enrich, policy, actions, sinks, loop
    monitor.watch(sandbox)                       # before the sandbox's first instruction
    monitor.loop.run_until(done, poll_ms=monitor.poll_ms)
    monitor.finish(summary)                      # sinks flushed and closed, sources closed

`monitor run` (both runtimes), `monitor daemon` and the benchmarks all come through `build`, so a
sandbox is judged, acted on and reported the same way whichever command watches it: the same
poll rule, the same sink threading, the same enforcer for the same runtime.

To add a source, an enforcer or a sink: write it in its folder against its contract
(monitor.source.Source, monitor.actions.enforcer.Enforcer, monitor.sinks.Sink) and register it
here, in `_sources`, `_enforcers` or `build_sinks`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.actions import Actions
from monitor.actions.docker import DockerEnforcer
from monitor.actions.enforcer import Enforcer
from monitor.actions.gvisor import GvisorEnforcer
from monitor.engine.config import MonitorConfig
from monitor.engine.loop import Loop, eager_kinds, judging_cpu, monitor_cost, poll_ms
from monitor.engine.pipeline import Pipeline
from monitor.engine.sinks import AssemblyError, build_sinks
from monitor.enrich import Enricher
from monitor.event import ActionRecord, Alert, Event
from monitor.gvisor.runner import GvisorSandbox, deny_rules_refused
from monitor.gvisor.source import SinkError, TraceSource, registry_sandbox_for
from monitor.llm import LlmSource, ToolCallLinker
from monitor.policy import DEFAULT_RULES_DIR, RuleSet, load_rules
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sensor import Sensor, SensorError
from monitor.sensor.filters import HeldCgroups, RuntimeSetupFilter
from monitor.sinks import Sink
from monitor.sinks.metrics import MetricsSink
from monitor.source import Source


def build_policy(config: MonitorConfig) -> RuleSet | None:
    """The rule set (PolicyError, file:line, on a bad rule file); None when capturing only."""
    if config.no_rules:
        return None
    return load_rules(config.rules or [DEFAULT_RULES_DIR], audit=config.audit)


class ScopedPolicy:
    """The daemon's rules for every sandbox, plus the rules a `monitor run` client brought, which
    judge that client's sandbox alone. Shaped like a RuleSet for the loop's decisions (`rules`:
    every rule that may act, `audit`), so the poll and the wakeup account for the clients' rules."""

    def __init__(self, base: RuleSet | None) -> None:
        self.base = base
        self.scoped: dict[str, RuleSet] = {}  # sandbox id -> its client's rules

    @property
    def audit(self) -> bool:
        return self.base.audit if self.base is not None else False

    @property
    def rules(self) -> list[Any]:
        own = list(self.base.rules) if self.base is not None else []
        return own + [rule for rules in self.scoped.values() if not rules.audit for rule in rules.rules]

    def for_sandbox(self, sandbox_id: str) -> list[RuleSet]:
        extra = self.scoped.get(sandbox_id)
        return [r for r in (self.base, extra) if r is not None]

    def evaluate(self, event: Event) -> list[Alert]:
        alerts = self.base.evaluate(event) if self.base is not None else []
        if self.scoped and event.sandbox:
            extra = self.scoped.get(event.sandbox.get("id", ""))
            if extra is not None:
                alerts = alerts + extra.evaluate(event)
        return alerts


@dataclass
class Monitor:
    """A monitor built by `build`: every stage, and what a command needs to drive it."""

    config: MonitorConfig
    registry: SandboxRegistry
    policy: RuleSet | None
    actions: Actions
    pipeline: Pipeline
    loop: Loop
    sinks: list[Sink]
    sources: list[Source]
    sensor: Sensor | None = None
    llm: LlmSource | None = None
    gvisor: TraceSource | None = None  # the daemon's trace sessions (Docker's runsc runtime)
    held: HeldCgroups | None = None
    setup_filter: RuntimeSetupFilter | None = None
    owns_sensor: bool = True
    cpu: int | None = None
    scoped: ScopedPolicy | None = None  # the daemon's: its clients' own rules beside its own
    started: float = field(default_factory=time.monotonic)

    @property
    def poll_ms(self) -> int:
        return poll_ms(self.scoped or self.policy)

    @property
    def enricher(self) -> Enricher | None:
        return self.pipeline.enricher  # type: ignore[return-value]

    def metrics(self) -> MetricsSink | None:
        return next((s for s in self.sinks if isinstance(s, MetricsSink)), None)

    # -- sandboxes ------------------------------------------------------------------------
    def watch(self, sandbox: Sandbox, denies: bool = True) -> None:
        """Judge `sandbox` from now on: registered (so actions may touch it), reported by every
        source, its `deny` rules in the kernel's maps (`denies=False`: the caller applies them
        later, from the judging thread)."""
        self.registry.add(sandbox)
        for source in self.sources:
            source.watch(sandbox)
        if denies:
            self.apply_denies(sandbox)

    def unwatch(self, sandbox: Sandbox) -> None:
        for source in self.sources:
            source.unwatch(sandbox)
        if self.sensor is not None and sandbox.cgroup_id:
            self.sensor.clear_denies(sandbox.cgroup_id)
            self.sensor.detach_net_deny(sandbox.cgroup_path)
        self.registry.remove(sandbox.id)

    def apply_denies(self, sandbox: Sandbox, replace: bool = False) -> int:
        """The rules' kernel-compilable `deny` entries into the probes' maps for one sandbox."""
        sensor = self.sensor
        if sensor is None or not sandbox.cgroup_id:
            return 0
        if replace:
            sensor.clear_denies(sandbox.cgroup_id)
        count = 0
        rulesets = self.scoped.for_sandbox(sandbox.id) if self.scoped else [self.policy] if self.policy else []
        for rule in (rule for rules in rulesets if not rules.audit for rule in rules.rules):
            spec = rule.deny_spec
            if rule.action != "deny" or spec is None or rule.mode == "audit":
                continue
            for path in spec.exec_paths:
                sensor.deny_exec(sandbox.cgroup_id, path)
            for prefix in spec.exec_prefixes:
                sensor.deny_exec(sandbox.cgroup_id, prefix, prefix=True)
            for cidr, port in spec.net:
                sensor.deny_net(sandbox.cgroup_path, sandbox.cgroup_id, cidr, port)
            count += len(spec.exec_paths) + len(spec.exec_prefixes) + len(spec.net)
        return count

    def rules_changed(self) -> None:
        """After a reload: which records wake the reader, and every sandbox's kernel denies."""
        self.sync_wakeup()
        for sandbox in self.registry.all():
            self.apply_denies(sandbox, replace=True)

    def sync_wakeup(self) -> None:
        """Records of the kinds a rule kills or freezes on wake the reader at once."""
        if self.sensor is not None:
            self.sensor.set_eager_wakeup(eager_kinds(self.scoped or self.policy))

    def emit(self, event: Event) -> None:
        """An event the monitor itself makes (sandbox_start/end, container_start): judged and
        reported like the sources' events."""
        self.pipeline.process(event)

    # -- the end ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Counts, drops, costs: the same keys for every command."""
        summary = self.pipeline.summary()
        summary.update({
            "duration_s": round(time.monotonic() - self.started, 3),
            "lost": self.loop.lost(), "folded": self.loop.folded(),
            "monitor": {**monitor_cost(), "poll_ms": self.poll_ms, "cpu": self.cpu},
            "rule_eval_ms": {k: round(v * 1e3, 3) for k, v in self.pipeline.eval_seconds.items()},
            "eval_errors": dict(self.policy.eval_errors) if self.policy is not None else {},
            "sources": {s.name: stats for s in self.sources if (stats := s.stats())}})
        return summary

    def finish(self, summary: dict[str, Any]) -> None:
        """Sinks flushed and closed (the reporting ones last, with the summary), then the sources."""
        self.pipeline.close(summary)
        self.close_sources()

    def close_sources(self) -> None:
        self.loop.close()
        for source in self.sources:
            if source is self.setup_filter and not self.owns_sensor:
                continue
            if source is self.sensor and not self.owns_sensor:
                continue
            source.close()


def _enforcers(config: MonitorConfig, gvisor_run: GvisorSandbox | None) -> dict[str, Enforcer]:
    docker = DockerEnforcer(config.kill_timeout_s)
    gvisor = GvisorEnforcer(engine=docker)
    if gvisor_run is not None:
        gvisor.add_run(gvisor_run)
    return {"docker": docker, "gvisor": gvisor}


def _llm(config: MonitorConfig, warn: Any) -> LlmSource | None:
    """The TLS source (model calls, tool calls) unless capture is off; its absence (no uprobes,
    no libssl) is said and the rest of the monitor runs."""
    if config.llm_capture == "off" or not config.probes:
        return None
    try:
        return LlmSource(capture=config.llm_capture)
    except Exception as exc:  # bcc, uprobes or a TLS library missing here
        warn(f"llm capture unavailable: {exc}")
        return None


def _trace_source(config: MonitorConfig, registry: SandboxRegistry, warn: Any) -> TraceSource | None:
    """gVisor's trace sessions: runsc containers report what their programs do here (the host's
    probes only see gVisor itself). Not fatal when the socket cannot be served."""
    path = Path(config.gvisor_socket)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        source = TraceSource(path, registry_sandbox_for(registry), hold_unknown_ms=config.gvisor_hold_ms)
    except (SinkError, OSError) as exc:
        warn(f"gvisor: trace socket not served ({exc}); runsc containers report nothing")
        return None
    return source


def build(config: MonitorConfig, *, gvisor_run: GvisorSandbox | None = None, sensor: Sensor | None = None,
          daemon: bool = False, extra_sinks: tuple[Sink, ...] = (), warn: Any = print,
          on_record: Any = None) -> Monitor:
    """A monitor for `config`: `gvisor_run` is the gVisor sandbox `monitor run --runtime gvisor`
    started (its trace session the only source); `sensor`, probes already attached to reuse
    (benchmarks); `daemon`, host-wide (Docker containers held until named, runtime setup
    filtered). Policy errors raise PolicyError; what cannot be had, AssemblyError."""
    cpu = judging_cpu(config.cpu)
    policy = build_policy(config)
    if gvisor_run is not None and policy is not None and not config.audit:
        refused = deny_rules_refused((r.name, r.action) for r in policy.rules if r.mode != "audit")
        if refused:
            more = f" (and {len(refused) - 1} more deny rules)" if len(refused) > 1 else ""
            raise AssemblyError(f"--runtime gvisor: {refused[0]}{more}")
    sinks = [*build_sinks(config), *extra_sinks]
    registry = SandboxRegistry()
    owns_sensor = sensor is None
    held = setup_filter = None
    sources: list[Source] = []
    llm = None
    if gvisor_run is not None:
        sources.append(gvisor_run)
    elif config.probes:
        if sensor is None:
            try:
                sensor = Sensor()
            except SensorError as exc:
                raise AssemblyError(f"{exc} (run `monitor doctor`)") from None
        if daemon:
            held = HeldCgroups(sensor, registry)
            setup_filter = RuntimeSetupFilter(held, registry)
            sources.append(setup_filter)
        else:
            sources.append(sensor)
    gvisor = _trace_source(config, registry, warn) if daemon and config.gvisor_enabled else None
    if gvisor is not None:
        sources.append(gvisor)
    if gvisor_run is None and config.probes:
        llm = _llm(config, warn)
        if llm is not None:
            sources.append(llm)
    linker = ToolCallLinker(on_exec=llm.notice_exec) if llm is not None else None
    # gVisor's pids live in the sandbox's own namespace: the host's /proc knows nothing of them
    # (the trace mapper builds the lineage itself).
    enricher = Enricher(registry, linker) if gvisor_run is None else None
    actions = Actions(registry, audit=config.audit, enforcers=_enforcers(config, gvisor_run),
                      on_record=on_record)
    scoped = ScopedPolicy(policy) if daemon else None
    pipeline = Pipeline(enricher, scoped or policy, actions, sinks, threaded_sinks=True)
    monitor = Monitor(config=config, registry=registry, policy=policy, actions=actions, pipeline=pipeline,
                      loop=Loop(pipeline, sources, wakeable=daemon), sinks=sinks, sources=sources,
                      sensor=sensor if gvisor_run is None else None, llm=llm, gvisor=gvisor, held=held,
                      setup_filter=setup_filter, owns_sensor=owns_sensor, cpu=cpu, scoped=scoped)
    monitor.sync_wakeup()
    return monitor


def action_note(record: ActionRecord) -> str | None:
    """What a person at the terminal must know at once about an action: a frozen sandbox waits
    for them."""
    if record.action == "freeze" and record.outcome == "done":
        return f"monitor: sandbox {record.target.get('sandbox')} is FROZEN: {record.message}"
    return None
