"""`monitor daemon [--config FILE]`: the long-running host monitor.

Attaches the probes once, watches Docker containers (all, or those a label selector picks) and
configured plain cgroups, judges every event with the rule set, acts, and writes the sinks the
config names. Serves GET /metrics (Prometheus) and /healthz on 127.0.0.1:PORT. SIGHUP, or a
change to a rule file, reloads the rules (a bad reload keeps the rules in force). SIGTERM/SIGINT
exit cleanly: probes detached, sinks flushed and closed, exit status 0.

The config file (YAML; every key optional):

    rules: [/usr/share/sandbox-monitor/rules, rules.d]   # files or folders; default: the pack
    audit: false                     # true: alert and record, never enforce
    probes: true                     # false: no eBPF (posture and inventory only)
    cpu: auto                        # the judging loop stays on one CPU (auto: the highest it
                                     #   may use), off: the scheduler moves it, or a CPU number
    docker:
      enabled: true
      host: unix:///var/run/docker.sock      # default: $DOCKER_HOST, else this
      watch: all                     # or a label selector: "agent.sandbox=true,team"
      kill_timeout: 2.0              # seconds before a kill falls back to cgroup.kill
    gvisor:                          # gVisor's trace sessions (Docker's runsc runtime, see
      enabled: true                  #   `monitor gvisor install`)
      socket: /run/sandbox-monitor/gvisor.sock
      hold_unknown_ms: 5000          # a container's first points wait this long for its identity
    cgroups:                         # plain cgroup-v2 directories to watch as sandboxes
      - {path: /sys/fs/cgroup/agents/a1, name: agent-1, labels: {team: ml}}
    sinks:
      json: /var/log/sandbox-monitor/events.jsonl    # or "-" for stdout
      journal: /var/lib/sandbox-monitor/journal
      otlp: http://127.0.0.1:4317
    metrics:
      address: 127.0.0.1:9464        # loopback only; port 0 picks a free one

Relative paths are relative to the config file. Any error is one line `FILE:LINE: what`, exit 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitor.event import ActionRecord, Alert, Event
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sandbox.docker import DEFAULT_KILL_TIMEOUT_S, parse_selector
from monitor.sinks import Sink

log = logging.getLogger("monitor.daemon")

DEFAULT_METRICS_PORT = 9464
DEFAULT_GVISOR_SOCKET = "/run/sandbox-monitor/gvisor.sock"  # = monitor.gvisor.install.DEFAULT_SOCKET
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
HEARTBEAT_STALE_S = 5.0
POLL_MS = 100


# --- config ----------------------------------------------------------------------------------

class ConfigError(Exception):
    def __init__(self, message: str, file: str, line: int) -> None:
        super().__init__(f"{file}:{line}: {message}")


@dataclass(slots=True)
class CgroupWatch:
    path: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DaemonConfig:
    source: str = "(defaults)"
    rules: list[str] = field(default_factory=list)  # empty: the default pack
    audit: bool = False
    probes: bool = True
    docker_enabled: bool = True
    docker_host: str | None = None
    watch: dict[str, str | None] = field(default_factory=dict)  # empty: every container
    kill_timeout_s: float = DEFAULT_KILL_TIMEOUT_S
    cgroups: list[CgroupWatch] = field(default_factory=list)
    json: str | None = None
    journal: str | None = None
    otlp: str | None = None
    gvisor_enabled: bool = True
    gvisor_socket: str = DEFAULT_GVISOR_SOCKET
    gvisor_hold_ms: int = 5000
    llm_capture: str = "metadata"  # off | metadata | full (see monitor/llm/README.md)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    cpu: str = "auto"  # the judging loop's CPU: auto | off | N (runner.judging_cpu)


_SCHEMA: dict[str, Any] = {
    "rules": "paths", "audit": bool, "probes": bool, "llm_capture": str, "cpu": "cpu",
    "docker": {"enabled": bool, "host": str, "watch": str, "kill_timeout": "seconds"},
    "cgroups": "cgroups",
    "gvisor": {"enabled": bool, "socket": "path", "hold_unknown_ms": "milliseconds"},
    "sinks": {"json": "path", "journal": "path", "otlp": str},
    "metrics": {"address": str},
}


class _Reader:
    """Walks the YAML node tree so every error names the line it is about."""

    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.base_dir = base_dir
        self._constructor = yaml.SafeLoader("")

    def fail(self, node: yaml.Node | None, message: str) -> ConfigError:
        return ConfigError(message, self.file, node.start_mark.line + 1 if node is not None else 1)

    def value(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, what: str, allowed: dict[str, Any]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                raise self.fail(key_node, f"unknown key {key!r} in {what} "
                                          f"(allowed: {', '.join(allowed)})")
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r} in {what}")
            out[key] = (key_node, value_node)
        return out

    def scalar(self, node: yaml.Node, what: str, kind: Any) -> Any:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if kind is bool:
            if not isinstance(value, bool):
                raise self.fail(node, f"{what} must be true or false")
            return value
        if kind == "milliseconds":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.fail(node, f"{what} must be a whole number of milliseconds (>= 0)")
            return value
        if kind == "seconds":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise self.fail(node, f"{what} must be a positive number of seconds")
            return float(value)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, f"{what} must be a non-empty string")
        if kind == "path":
            return value if value == "-" else self.path(value)
        return value.strip()

    def path(self, text: str) -> str:
        path = Path(os.path.expanduser(text))
        return str(path if path.is_absolute() else self.base_dir / path)

    def paths(self, node: yaml.Node, what: str) -> list[str]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        return [self.scalar(item, what, "path") for item in items]

    def cgroups(self, node: yaml.Node) -> list[CgroupWatch]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "cgroups must be a list of {path, name, labels}")
        out = []
        for item in node.value:
            fields = self.mapping(item, "a cgroups entry", {"path": 1, "name": 1, "labels": 1})
            if "path" not in fields:
                raise self.fail(item, "a cgroups entry needs a path")
            path = self.scalar(fields["path"][1], "cgroups.path", "path")
            name = self.scalar(fields["name"][1], "cgroups.name", str) if "name" in fields \
                else os.path.basename(path.rstrip("/"))
            labels: dict[str, str] = {}
            if "labels" in fields:
                raw = self.value(fields["labels"][1])
                if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
                    raise self.fail(fields["labels"][1], "cgroups.labels must map names to values")
                labels = {k: str(v) for k, v in raw.items()}
            out.append(CgroupWatch(path=path, name=name, labels=labels))
        return out


def parse_config(text: str, file: str = "<config>", base_dir: Path | None = None) -> DaemonConfig:
    """Validate a daemon config; ConfigError ("file:line: what") on the first problem."""
    reader = _Reader(file, base_dir or Path(file).resolve().parent)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(f"YAML syntax: {exc.problem or exc.context}", file,
                          mark.line + 1 if mark else 1) from None
    config = DaemonConfig(source=file)
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        return config
    top = reader.mapping(root, "the config", _SCHEMA)
    if "rules" in top:
        config.rules = reader.paths(top["rules"][1], "rules")
    if "audit" in top:
        config.audit = reader.scalar(top["audit"][1], "audit", bool)
    if "probes" in top:
        config.probes = reader.scalar(top["probes"][1], "probes", bool)
    if "llm_capture" in top:
        node = top["llm_capture"][1]
        config.llm_capture = reader.scalar(node, "llm_capture", str)
        if config.llm_capture not in ("off", "metadata", "full"):
            raise reader.fail(node, "llm_capture: expected off, metadata or full")
    if "cgroups" in top:
        config.cgroups = reader.cgroups(top["cgroups"][1])
    if "cpu" in top:
        config.cpu = _cpu(reader, top["cpu"][1])
    if "docker" in top:
        _docker_section(reader, top["docker"][1], config)
    if "gvisor" in top:
        gvisor = reader.mapping(top["gvisor"][1], "gvisor", _SCHEMA["gvisor"])
        for key, attr in (("enabled", "gvisor_enabled"), ("socket", "gvisor_socket"),
                          ("hold_unknown_ms", "gvisor_hold_ms")):
            if key in gvisor:
                setattr(config, attr, reader.scalar(gvisor[key][1], f"gvisor.{key}", _SCHEMA["gvisor"][key]))
    if "sinks" in top:
        sinks = reader.mapping(top["sinks"][1], "sinks", _SCHEMA["sinks"])
        for key, (_, node) in sinks.items():
            setattr(config, key, reader.scalar(node, f"sinks.{key}", _SCHEMA["sinks"][key]))
        if config.otlp:
            _check_otlp(reader, sinks["otlp"][1], config.otlp)
    if "metrics" in top:
        metrics = reader.mapping(top["metrics"][1], "metrics", _SCHEMA["metrics"])
        if "address" in metrics:
            node = metrics["address"][1]
            config.metrics_host, config.metrics_port = _address(reader, node)
    return config


def _cpu(reader: _Reader, node: yaml.Node) -> str:
    from monitor.runner import RunError, judging_cpu

    value = reader.value(node) if isinstance(node, yaml.ScalarNode) else None
    if value is False:
        return "off"  # YAML reads a bare `off` as false
    if value is True or not isinstance(value, str | int):
        raise reader.fail(node, "cpu: expected auto, off or a CPU number")
    try:
        judging_cpu(str(value), option="cpu:")
    except RunError as exc:
        raise reader.fail(node, str(exc)) from None
    return str(value)


def _check_otlp(reader: _Reader, node: yaml.Node, url: str) -> None:
    from monitor.sinks.otlp import resolve_endpoint
    try:
        resolve_endpoint(url)
    except ValueError as exc:
        raise reader.fail(node, f"sinks.otlp: {exc}") from None


def _docker_section(reader: _Reader, node: yaml.Node, config: DaemonConfig) -> None:
    docker = reader.mapping(node, "docker", _SCHEMA["docker"])
    if "enabled" in docker:
        config.docker_enabled = reader.scalar(docker["enabled"][1], "docker.enabled", bool)
    if "host" in docker:
        config.docker_host = reader.scalar(docker["host"][1], "docker.host", str)
    if "kill_timeout" in docker:
        config.kill_timeout_s = reader.scalar(docker["kill_timeout"][1], "docker.kill_timeout", "seconds")
    if "watch" in docker:
        watch_node = docker["watch"][1]
        watch = reader.scalar(watch_node, "docker.watch", str)
        try:
            config.watch = {} if watch == "all" else parse_selector(watch)
        except ValueError as exc:
            raise reader.fail(watch_node, f"docker.watch: {exc}") from None


def _address(reader: _Reader, node: yaml.Node) -> tuple[str, int]:
    text = reader.scalar(node, "metrics.address", str)
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    port_text = port_text if sep else text
    if not port_text.isdigit() or int(port_text) > 65535:
        raise reader.fail(node, f"metrics.address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    if host not in LOOPBACK_HOSTS:
        raise reader.fail(node, f"metrics.address {text!r}: the monitor listens on loopback only "
                                "(127.0.0.1 or ::1)")
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


def load_config(path: str | None) -> DaemonConfig:
    if path is None:
        return DaemonConfig()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", path, 0) from None
    return parse_config(text, path)


# --- the daemon ------------------------------------------------------------------------------

class AlertLog(Sink):
    """Alerts and actions as one log line each (stderr / the systemd journal)."""
    name = "alertlog"

    def on_alert(self, alert: Alert) -> None:
        sandbox = (alert.event.sandbox or {}).get("name", "?")
        log.warning("alert %s [%s] %s in %s (%s)", alert.rule, alert.severity, alert.event.kind,
                    sandbox, alert.mode)

    def on_action(self, record: ActionRecord) -> None:
        log.warning("action %s by %s on %s: %s %s", record.action, record.rule,
                    record.target.get("sandbox"), record.outcome, record.message)


def record_rule_errors(rules: Any, recorders: list[Any]) -> None:
    """Evaluation-error totals per rule (absolute: recorders keep the maximum). Evaluation time
    reaches the same recorders from the pipeline (`record_rule_eval`, one event in 8)."""
    if rules.eval_errors:
        for recorder in recorders:
            recorder.record_rule_errors(dict(rules.eval_errors))


class HeldCgroups:
    """Events of containers seen at their cgroup's creation, held until the inventory names them.

    The probes watch a new container's cgroup at once (its first instructions run before the
    engine will describe it); its events wait here until the sandbox is registered, then go on
    with its identity. A container the selector does not pick is dropped with its events; one
    still unnamed after `hold_s` goes on without identity (`counts` has both)."""

    def __init__(self, source: Any, registry: SandboxRegistry, hold_s: float = 5.0) -> None:
        self.source = source
        self.name = getattr(source, "name", "ebpf")
        self.registry = registry
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._held: dict[int, tuple[float, list[Event]]] = {}
        self._dropped: set[int] = set()
        self.counts = {"held_dropped": 0, "held_expired": 0}

    def hold(self, cgroup_id: int) -> None:
        with self._lock:
            self._held.setdefault(cgroup_id, (time.monotonic() + self.hold_s, []))

    def drop(self, cgroup_id: int) -> None:
        with self._lock:
            if cgroup_id in self._held:
                self._dropped.add(cgroup_id)

    def poll(self, timeout_ms: int) -> list[Event]:
        return self._filter(self.source.poll(timeout_ms))

    def fileno(self) -> int:
        return self.source.fileno()

    def drain(self) -> list[Event]:
        events = self._filter(self.source.drain() if hasattr(self.source, "drain") else [])
        with self._lock:
            rest = [e for _, buffered in self._held.values() for e in buffered]
            self._held.clear()
        return events + rest

    def _filter(self, events: list[Event]) -> list[Event]:
        with self._lock:
            if not self._held:
                return events
            out = []
            for event in events:
                entry = self._held.get(event.cgroup_id)
                if entry is None:
                    out.append(event)
                else:
                    entry[1].append(event)
            now = time.monotonic()
            for cgroup_id, (deadline, buffered) in list(self._held.items()):
                if cgroup_id in self._dropped:
                    self.counts["held_dropped"] += len(buffered)
                elif self.registry.by_cgroup(cgroup_id) is not None:
                    out.extend(buffered)
                elif now > deadline:
                    self.counts["held_expired"] += len(buffered)
                    out.extend(buffered)
                else:
                    continue
                del self._held[cgroup_id]
                self._dropped.discard(cgroup_id)
            return out

    def lost(self) -> dict[str, int]:
        return self.source.lost()

    def close(self) -> None:
        self.source.close()


class RuntimeSetupFilter:
    """Drops what the container runtime itself does inside a container's cgroup before handing it
    over: runc and its stages (comm "runc:[0:PARENT]", "runc:[1:CHILD]", "runc:[2:INIT]") mount the root
    filesystem, open /proc, set ids... for every `docker run` and `docker exec` - hundreds of
    events that are not the agent's. Not a hiding place: a process that exec'd in the container,
    or descends from one, is never filtered, whatever name it gives itself; exec events always
    pass (runc's last act, the exec of the container's program, is the first event kept)."""

    RUNC_STAGE = re.compile(r"runc(:\[[0-2]:(PARENT|CHILD|INIT)\])?$")

    def __init__(self, source: Any, registry: SandboxRegistry) -> None:
        self.source = source
        self.name = getattr(source, "name", "ebpf")
        self.registry = registry
        self._program_pids: set[int] = set()  # exec'd in a container, or forked from one that did
        self.filtered = 0

    def poll(self, timeout_ms: int) -> list[Event]:
        return self._filter(self.source.poll(timeout_ms))

    def fileno(self) -> int:
        return self.source.fileno()

    def drain(self) -> list[Event]:
        return self._filter(self.source.drain() if hasattr(self.source, "drain") else [])

    def _filter(self, events: list[Event]) -> list[Event]:
        out = []
        for event in events:
            pid = int(event.process.get("pid") or 0)
            if event.kind == "exec":
                self._program_pids.add(pid)
            elif event.kind == "fork" and pid in self._program_pids and event.detail:
                self._program_pids.add(int(event.detail.get("child_pid") or 0))
            elif self._is_runtime_setup(event, pid):
                self.filtered += 1
                continue
            if event.kind == "exit":
                self._program_pids.discard(pid)
            out.append(event)
        return out

    def _is_runtime_setup(self, event: Event, pid: int) -> bool:
        if pid in self._program_pids or not self.RUNC_STAGE.match(str(event.process.get("comm") or "")):
            return False
        sandbox = self.registry.by_cgroup(event.cgroup_id)
        return sandbox is not None and sandbox.runtime == "docker"

    def lost(self) -> dict[str, int]:
        return self.source.lost()

    def close(self) -> None:
        self.source.close()


class DaemonError(Exception):
    """A start-up failure, reported as one line."""


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.registry = SandboxRegistry()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._heartbeat = time.monotonic()
        self.sensor: Any = None
        self.held: HeldCgroups | None = None
        self.setup_filter: RuntimeSetupFilter | None = None
        self.gvisor: Any = None
        self.llm: Any = None  # model-call capture (libssl uprobes)
        self.session: Any = None
        self.inventory: Any = None
        self.metrics_server: Any = None
        self.rule_watcher: Any = None
        self.reloads: dict[bool, int] = {}  # reload outcome -> count (SIGHUP and file changes)

    # start-up ---------------------------------------------------------------------------------
    def start(self) -> None:
        from monitor.actions import Actions
        from monitor.enrich import Enricher
        from monitor.pipeline import Pipeline
        from monitor.policy import DEFAULT_RULES_DIR, PolicyError, RuleWatcher, load_rules
        from monitor.sandbox.docker import DockerEnforcer
        from monitor.sinks.metrics import MetricsSink, serve_metrics

        cfg = self.config
        try:
            self.rules = load_rules(cfg.rules or [DEFAULT_RULES_DIR], audit=cfg.audit)
        except PolicyError as exc:
            raise DaemonError(str(exc)) from None
        self.metrics = MetricsSink()
        sinks: list[Sink] = [*self._build_sinks(), self.metrics, AlertLog()]
        for sink in sinks:  # export health (queue depth, drops) on /metrics
            if hasattr(sink, "export_stats"):
                self.metrics.add_export_source(sink.export_stats)
        self.enricher = Enricher(self.registry)
        self.docker_enforcer = DockerEnforcer(cfg.kill_timeout_s)
        self.actions = Actions(self.registry, audit=cfg.audit, enforcers={"docker": self.docker_enforcer})
        self.rule_recorders = [sink for sink in sinks if hasattr(sink, "record_rule_errors")]
        self.pipeline = Pipeline(self.enricher, self.rules, self.actions, sinks)
        if cfg.probes:
            self._attach_sensor()
        if cfg.gvisor_enabled:
            self._serve_gvisor()
        if cfg.probes and cfg.llm_capture != "off":
            self._start_llm()
        from monitor.runner import Session
        self.held = self.setup_filter = None
        if self.sensor is not None:
            self.held = HeldCgroups(self.sensor, self.registry)
            self.setup_filter = RuntimeSetupFilter(self.held, self.registry)
        self.session = Session(self.pipeline, [s for s in (self.setup_filter, self.gvisor, self.llm)
                                               if s is not None])
        for watch in cfg.cgroups:
            self._watch_cgroup(watch)
        if cfg.docker_enabled:
            self._start_docker()
        self.rule_watcher = RuleWatcher(self.rules, on_reload=self._on_rules_reloaded).start()
        try:  # last: /healthz answers once everything above is in place
            self.metrics_server = serve_metrics(self.metrics, cfg.metrics_port, cfg.metrics_host,
                                                health=self.health)
        except OSError as exc:
            raise DaemonError(f"metrics: cannot listen on {cfg.metrics_host}:{cfg.metrics_port}: "
                              f"{exc.strerror or exc}") from None
        log.info("started: %d rules, metrics on http://%s:%d/metrics", len(self.rules.rules),
                 cfg.metrics_host, self.metrics_port)

    @property
    def metrics_port(self) -> int:
        return self.metrics_server.port if self.metrics_server else 0

    def _build_sinks(self) -> list[Sink]:
        cfg = self.config
        sinks: list[Sink] = []
        try:
            if cfg.json:
                from monitor.sinks.jsonl import JsonlSink
                sinks.append(JsonlSink(cfg.json))
            if cfg.journal:
                from monitor.sinks.journal import JournalSink
                sinks.append(JournalSink(cfg.journal))
            if cfg.otlp:
                from monitor.sinks.otlp import OtlpSink
                sinks.append(OtlpSink(cfg.otlp))
        except ImportError as exc:
            raise DaemonError(f"{cfg.source}: sink not available in this build: {exc.name}") from None
        except ValueError as exc:  # OtlpConfigError
            raise DaemonError(f"{cfg.source}: sinks.otlp: {exc}") from None
        except OSError as exc:
            raise DaemonError(f"{cfg.source}: cannot open sink: {exc.filename}: {exc.strerror}") from None
        return sinks

    def _attach_sensor(self) -> None:
        from monitor.sensor import Sensor, SensorError
        try:
            self.sensor = Sensor()
        except SensorError as exc:
            raise DaemonError(f"probes: {exc}") from None
        log.info("probes attached in %.1fs", getattr(self.sensor, "attach_seconds", 0.0))
        self._sync_wakeup()

    def _sync_wakeup(self) -> None:
        """Records of the kinds a rule kills or freezes on wake the reader at once."""
        if self.sensor is not None:
            from monitor.runner import eager_kinds
            before = self.sensor.eager_kinds
            self.sensor.set_eager_wakeup(eager_kinds(self.rules))
            eager = ", ".join(self.sensor.eager_kinds)
            if self.sensor.eager_kinds != before:
                log.info("probes: %s", f"records of {eager} wake the reader at once (a rule kills or freezes)"
                         if eager else "records are read every 5 ms")

    def _start_llm(self) -> None:
        """Model calls and tool calls from TLS; not fatal when uprobes or libssl are missing."""
        try:
            from monitor.llm import LlmSource, ToolCallLinker

            self.llm = LlmSource(capture=self.config.llm_capture)
        except Exception as exc:
            log.warning("model-call capture unavailable: %s", exc)
            return
        self.enricher.linker = ToolCallLinker(on_exec=self.llm.notice_exec)

    def _serve_gvisor(self) -> None:
        """gVisor's trace sessions: runsc containers report what their programs do here (the
        host's probes only see gVisor itself). Not fatal when the socket cannot be served."""
        from monitor.gvisor.sink import SinkError, TraceSink, registry_sandbox_for
        path = Path(self.config.gvisor_socket)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.gvisor = TraceSink(path, registry_sandbox_for(self.registry),
                                    hold_unknown_ms=self.config.gvisor_hold_ms)
        except (SinkError, OSError) as exc:
            log.warning("gvisor: trace socket not served (%s); runsc containers report nothing", exc)
            return
        log.info("gvisor: trace sessions on %s", path)

    def _watch_cgroup(self, watch: CgroupWatch) -> None:
        try:
            cgroup_id = os.stat(watch.path).st_ino
        except OSError as exc:
            raise DaemonError(f"{self.config.source}: cgroup {watch.path}: {exc.strerror}") from None
        sandbox = Sandbox(id=f"cgroup-{cgroup_id}", name=watch.name, runtime="cgroup",
                          cgroup_id=cgroup_id, cgroup_path=watch.path, labels=watch.labels,
                          started_ns=time.time_ns())
        self.registry.add(sandbox)
        self._sandbox_added(sandbox)
        self._inbox.put(("event", Event(kind="sandbox_start", sandbox=sandbox.identity(),
                                        source="monitor", cgroup_id=cgroup_id)))

    def _start_docker(self) -> None:
        from monitor.sandbox.docker import DockerInventory
        self.inventory = DockerInventory(
            self.registry, base_url=self.config.docker_host, selector=self.config.watch,
            on_added=self._sandbox_added, on_removed=self._sandbox_removed,
            on_cgroup_created=self._cgroup_created, on_cgroup_dropped=self._cgroup_dropped,
            emit=lambda event: self._inbox.put(("event", event)), log=log.warning,
            remove_from_registry=False)
        self.inventory.start()

    # inventory callbacks (inventory thread) ---------------------------------------------------
    def _cgroup_created(self, cgroup: Any) -> None:
        """A container's cgroup appeared: watch it before its first instruction (events held)."""
        if self.sensor is not None and self.held is not None:
            self.held.hold(cgroup.id)
            self.sensor.add_cgroup(cgroup.id)

    def _cgroup_dropped(self, cgroup: Any) -> None:
        """Not ours after all (unselected, or gVisor: its trace session reports it). `cgroup`:
        anything with the cgroup's id as `.id` or `.cgroup_id`."""
        cgroup_id = getattr(cgroup, "cgroup_id", None) or cgroup.id
        if self.sensor is not None and self.held is not None:
            self.held.drop(cgroup_id)
            if self.registry.by_cgroup(cgroup_id) is None:
                self.sensor.remove_cgroup(cgroup_id)

    def _sandbox_added(self, sandbox: Sandbox) -> None:
        # gVisor containers report through their trace session; in their cgroup the probes
        # would only see gVisor's own work.
        if self.sensor is not None and sandbox.cgroup_id:
            if self._on_gvisor(sandbox):
                self._cgroup_dropped(sandbox)  # watched at its creation, before it was known
                self.sensor.remove_cgroup(sandbox.cgroup_id)
            else:
                self.sensor.add_cgroup(sandbox.cgroup_id)  # at once: every ms here is unwatched
                if self.llm is not None:
                    self.llm.add_cgroup(sandbox.cgroup_id, sandbox.cgroup_path)
        self._inbox.put(("added", sandbox))

    def _on_gvisor(self, sandbox: Sandbox) -> bool:
        return self.inventory is not None and self.inventory.is_gvisor(sandbox.id)

    def _sandbox_removed(self, sandbox: Sandbox) -> None:
        self._inbox.put(("removed", sandbox))

    # main loop --------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def request_reload(self, *_: Any) -> None:
        self._reload_requested.set()

    def run(self) -> None:
        from monitor.runner import judging_cpu, pinned_to

        cpu = judging_cpu(self.config.cpu)
        log.info("judging loop: %s", f"on CPU {cpu}" if cpu is not None else "moved by the scheduler")
        with pinned_to(cpu):
            self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            if self.session.sources:
                self.session.pump(POLL_MS)
            else:
                self._stop.wait(POLL_MS / 1000)
            self._drain_inbox()
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                ok = self.rules.reload()
                self._on_rules_reloaded(ok, self.rules.last_reload_error)
            if self.session.sources:
                self.metrics.record_lost(self.session.lost())
            record_rule_errors(self.rules, self.rule_recorders)

    def _drain_inbox(self) -> None:
        while True:
            try:
                what, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if what == "event":
                self.pipeline.process(item)
            elif what == "added" and not self._on_gvisor(item):
                self.enricher.seed_cgroup(item.cgroup_path)
                self._apply_denies(item)
            elif what == "removed":
                self._forget(item)
            elif what == "reloaded" and item:
                self._sync_wakeup()
                for sandbox in self.registry.all():
                    self._apply_denies(sandbox, replace=True)

    def _apply_denies(self, sandbox: Sandbox, replace: bool = False) -> None:
        """The rules' kernel-compilable `deny` entries into the probes' maps for one sandbox."""
        if self.sensor is None or not sandbox.cgroup_id or self._on_gvisor(sandbox):
            return
        from monitor.runner import apply_denies
        try:
            if replace:
                self.sensor.clear_denies(sandbox.cgroup_id)
            apply_denies(self.rules, self.sensor, sandbox)
        except Exception as exc:  # a sandbox gone meanwhile, a refused attach: the rest go on
            log.warning("deny rules not applied to %s: %s", sandbox.name, exc)

    def _forget(self, sandbox: Sandbox) -> None:
        # Events the container made before it died may still be in the ring buffer: take them
        # with its identity before the registry forgets it.
        if self.session is not None and self.session.sources:
            self.session.pump(0)
        if self.llm is not None:
            self.llm.remove_cgroup(sandbox.cgroup_id)
        if self.sensor is not None:
            self.sensor.remove_cgroup(sandbox.cgroup_id)
            with contextlib.suppress(Exception):
                self.sensor.clear_denies(sandbox.cgroup_id)
                self.sensor.detach_net_deny(sandbox.cgroup_path)
        self.registry.remove(sandbox.id)

    def _on_rules_reloaded(self, ok: bool, error: str | None) -> None:
        # RuleSet.reload logs the outcome itself; the deny maps follow on the main thread.
        self.reloads[ok] = self.reloads.get(ok, 0) + 1
        self._inbox.put(("reloaded", ok))

    def health(self) -> tuple[bool, str]:
        age = time.monotonic() - self._heartbeat
        if age > HEARTBEAT_STALE_S:
            return False, f"main loop stalled for {age:.0f}s"
        parts = [f"ok: {len(self.registry.all())} sandboxes watched"]
        if self.inventory is not None:
            state = "connected" if self.inventory.connected.is_set() else "unavailable, reconnecting"
            parts.append(f"docker {state} ({self.inventory.base_url})")
        parts.append("probes attached" if self.sensor is not None else "probes off")
        if self.gvisor is not None:
            parts.append(f"gvisor sessions: {self.gvisor.open_sessions}")
        return True, "; ".join(parts)

    # shutdown ---------------------------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        if self.inventory is not None:
            self.inventory.stop()
        if self.rule_watcher is not None:
            self.rule_watcher.stop()
        summary: dict[str, Any] = {}
        if hasattr(self, "pipeline"):
            if self.session is not None and self.session.sources:
                self.session.drain()
            self._drain_inbox()
            summary = self.pipeline.summary()
            if self.session is not None and self.session.sources:
                summary["lost"] = self.session.lost()
                summary["folded"] = self.session.folded()
            if self.setup_filter is not None and self.held is not None:
                summary["docker"] = {"runtime_setup_filtered": self.setup_filter.filtered,
                                     "unselected_dropped": self.held.counts["held_dropped"],
                                     "unnamed_passed": self.held.counts["held_expired"]}
            self.pipeline.close(summary)
        if self.session is not None:
            self.session.close()
        for source in (self.gvisor, self.llm, self.sensor):
            if source is not None:
                with contextlib.suppress(Exception):
                    source.close()
        self.sensor = self.gvisor = self.llm = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        return summary
