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
from monitor.enrich import Enricher
from monitor.event import ActionRecord, Event
from monitor.gvisor.runner import GvisorSandbox, deny_rules_refused
from monitor.gvisor.source import SinkError, TraceSource, registry_sandbox_for
from monitor.llm import LlmSource, ToolCallLinker
from monitor.policy import DEFAULT_RULES_DIR, RuleSet, load_rules
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sensor import Sensor, SensorError
from monitor.sensor.filters import HeldCgroups, RuntimeSetupFilter
from monitor.sinks import Sink
from monitor.sinks.console import ConsoleSink
from monitor.sinks.journal import JournalSink
from monitor.sinks.jsonl import JsonlSink
from monitor.sinks.metrics import MetricsSink
from monitor.sinks.otlp import OtlpConfigError, OtlpSink
from monitor.source import Source

COMMAND_LINE = "the command line"  # MonitorConfig.source of `monitor run`: errors name its flags


class AssemblyError(Exception):
    """Something the configuration names cannot be had (a sink's file, the probes): one line."""


def setting(config: MonitorConfig, name: str) -> str:
    """How the user wrote a sink setting: `--json` on the command line, `FILE: sinks.json` in a file."""
    return f"--{name}" if config.source == COMMAND_LINE else f"{config.source}: sinks.{name}"


def build_policy(config: MonitorConfig) -> RuleSet | None:
    """The rule set (PolicyError, file:line, on a bad rule file); None when capturing only."""
    if config.no_rules:
        return None
    return load_rules(config.rules or [DEFAULT_RULES_DIR], audit=config.audit)


def build_sinks(config: MonitorConfig, signals: tuple[str, ...] | None = None) -> list[Sink]:
    """Every sink the configuration names, in the order they see each event. `signals`: the OTLP
    signals to export (a replay adds nothing to live metrics)."""
    sinks: list[Sink] = []
    if config.console:
        sinks.append(ConsoleSink(verbose=config.verbose))
    try:
        if config.json:
            sinks.append(JsonlSink(config.json, events=config.json_events))
        if config.journal:
            sinks.append(JournalSink(config.journal))
    except OSError as exc:
        name = "json" if config.json and exc.filename in (config.json, None) else "journal"
        raise AssemblyError(f"{setting(config, name)} {exc.filename or getattr(config, name)}: "
                            f"{exc.strerror or exc}") from None
    if config.otlp:
        try:
            sinks.append(OtlpSink(config.otlp, **({"signals": signals} if signals else {})))
        except OtlpConfigError as exc:
            raise AssemblyError(f"{setting(config, 'otlp')} {config.otlp}: {exc}") from None
    if config.metrics:
        sinks.append(MetricsSink())
    return sinks


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
    started: float = field(default_factory=time.monotonic)

    @property
    def poll_ms(self) -> int:
        return poll_ms(self.policy)

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
        sensor, policy = self.sensor, self.policy
        if sensor is None or policy is None or policy.audit or not sandbox.cgroup_id:
            return 0
        if replace:
            sensor.clear_denies(sandbox.cgroup_id)
        count = 0
        for rule in policy.rules:
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
        if self.sensor is not None:
            self.sensor.set_eager_wakeup(eager_kinds(self.policy))
        for sandbox in self.registry.all():
            self.apply_denies(sandbox, replace=True)

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
        refused = deny_rules_refused(r for r in policy.rules if r.mode != "audit")
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
    pipeline = Pipeline(enricher, policy, actions, sinks, threaded_sinks=True)
    if sensor is not None:
        sensor.set_eager_wakeup(eager_kinds(policy))
    monitor = Monitor(config=config, registry=registry, policy=policy, actions=actions, pipeline=pipeline,
                      loop=Loop(pipeline, sources), sinks=sinks, sources=sources,
                      sensor=sensor if gvisor_run is None else None, llm=llm, gvisor=gvisor, held=held,
                      setup_filter=setup_filter, owns_sensor=owns_sensor, cpu=cpu)
    return monitor


def action_note(record: ActionRecord) -> str | None:
    """What a person at the terminal must know at once about an action: a frozen sandbox waits
    for them."""
    if record.action == "freeze" and record.outcome == "done":
        return f"monitor: sandbox {record.target.get('sandbox')} is FROZEN: {record.message}"
    return None
