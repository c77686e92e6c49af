"""One configuration for a running monitor, filled from `monitor run`'s flags or from the daemon's
YAML file, validated before anything is attached.

The daemon's file (YAML; every key optional):

    rules: [/usr/share/sandbox-monitor/rules, rules.d]   # files or folders; default: the pack
    audit: false                     # true: alert and record, never enforce
    probes: true                     # false: no eBPF (posture and inventory only)
    llm_capture: metadata            # off | metadata | full (model calls from TLS)
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
    socket: /run/sandbox-monitor/monitor.sock   # where `monitor run` asks for sandboxes
                                     #   (root only, 0600); off: serve none
    outputs:                         # alert delivery (docs/outputs.md)
      - {type: alertmanager, url: "http://127.0.0.1:9093", min_severity: high}

Relative paths are relative to the config file. Any error is one line `FILE:LINE: what`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitor.client import resident_socket_path
from monitor.engine.loop import LoopError, judging_cpu
from monitor.sandbox import DEFAULT_KILL_TIMEOUT_S
from monitor.yamlfile import NodeReader, YamlError, read_text

DEFAULT_METRICS_PORT = 9464
DEFAULT_GVISOR_SOCKET = "/run/sandbox-monitor/gvisor.sock"  # = monitor.gvisor.install.DEFAULT_SOCKET
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

ConfigError = YamlError  # a config file's errors are the YAML reader's: `file:line: what`
COMMAND_LINE = "the command line"  # MonitorConfig.source of `monitor run`: errors name its flags


@dataclass(slots=True)
class CgroupWatch:
    path: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class MonitorConfig:
    """Everything the assembly (monitor.engine.assemble) needs; the defaults are `monitor run`'s
    and the daemon's alike."""

    source: str = "(defaults)"  # where it was read: a config file, or the command line
    rules: list[str] = field(default_factory=list)  # empty: the default pack
    no_rules: bool = False  # capture only
    audit: bool = False
    probes: bool = True
    llm_capture: str = "metadata"  # off | metadata | full (see monitor/llm/README.md)
    cpu: str = "auto"  # the judging loop's CPU: auto | off | N (engine.loop.judging_cpu)
    # sinks
    console: bool = False  # the terminal view (monitor run)
    verbose: bool = False  # every event on the terminal, not only alerts
    json: str | None = None
    json_events: bool = True
    journal: str | None = None
    otlp: str | None = None
    metrics: bool = False  # a Prometheus registry (the daemon serves it)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = DEFAULT_METRICS_PORT
    # what the daemon watches
    docker_enabled: bool = True
    docker_host: str | None = None
    watch: dict[str, str | None] = field(default_factory=dict)  # empty: every container
    kill_timeout_s: float = DEFAULT_KILL_TIMEOUT_S
    cgroups: list[CgroupWatch] = field(default_factory=list)
    gvisor_enabled: bool = True
    gvisor_socket: str = DEFAULT_GVISOR_SOCKET
    gvisor_hold_ms: int = 5000
    outputs: list[Any] = field(default_factory=list)  # alert delivery: monitor.outputs.OutputConfig
    resident_socket: str | None = field(default_factory=lambda: resident_socket_path())  # None: serve none


_SCHEMA: dict[str, Any] = {
    "rules": "paths", "audit": bool, "probes": bool, "llm_capture": str, "cpu": "cpu",
    "docker": {"enabled": bool, "host": str, "watch": str, "kill_timeout": "seconds"},
    "cgroups": "cgroups",
    "gvisor": {"enabled": bool, "socket": "path", "hold_unknown_ms": "milliseconds"},
    "sinks": {"json": "path", "journal": "path", "otlp": str},
    "metrics": {"address": str},
    "socket": "path",
    "outputs": "outputs",  # alert delivery: monitor/outputs/config.py
}


def parse_config(text: str, file: str = "<config>", base_dir: Path | None = None) -> MonitorConfig:
    """Validate a daemon config; ConfigError ("file:line: what") on the first problem."""
    reader, root = NodeReader.of_text(text, file, base_dir)
    config = MonitorConfig(source=file, metrics=True)
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        return config
    top = reader.mapping(root, "the config", _SCHEMA)
    if "rules" in top:
        config.rules = reader.paths(top["rules"][1], "rules")
    for key in ("audit", "probes"):
        if key in top:
            setattr(config, key, reader.scalar(top[key][1], key, bool))
    if "llm_capture" in top:
        node = top["llm_capture"][1]
        off = isinstance(node, yaml.ScalarNode) and reader.value(node) is False  # YAML's bare `off`
        config.llm_capture = "off" if off else reader.scalar(node, "llm_capture", str)
        if config.llm_capture not in ("off", "metadata", "full"):  # monitor.llm.CAPTURE_MODES
            raise reader.fail(node, "llm_capture: expected off, metadata or full")
    if "cgroups" in top:
        config.cgroups = _cgroups(reader, top["cgroups"][1])
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
            # imported here: the OTLP exporters cost more to import than a `monitor run` through
            # the resident monitor may take to start, and only a daemon's file names them
            from monitor.sinks.otlp import resolve_endpoint

            try:
                resolve_endpoint(config.otlp)
            except ValueError as exc:
                raise reader.fail(sinks["otlp"][1], f"sinks.otlp: {exc}") from None
    if "socket" in top:
        node = top["socket"][1]
        off = isinstance(node, yaml.ScalarNode) and reader.value(node) in (False, "off")
        config.resident_socket = None if off else reader.scalar(node, "socket", "path")
    if "outputs" in top:
        from monitor.outputs import parse_outputs

        config.outputs = parse_outputs(top["outputs"][1], file, reader.base_dir, reader.loader)
    if "metrics" in top:
        metrics = reader.mapping(top["metrics"][1], "metrics", _SCHEMA["metrics"])
        if "address" in metrics:
            config.metrics_host, config.metrics_port = _address(reader, metrics["address"][1])
    return config


def load_config(path: str | None) -> MonitorConfig:
    """The daemon's configuration: its file's, or the defaults when none is given."""
    if path is None:
        return MonitorConfig(metrics=True)
    return parse_config(read_text(Path(path), "config"), path)


def _cgroups(reader: NodeReader, node: yaml.Node) -> list[CgroupWatch]:
    if not isinstance(node, yaml.SequenceNode):
        raise reader.fail(node, "cgroups must be a list of {path, name, labels}")
    out = []
    for item in node.value:
        fields = reader.mapping(item, "a cgroups entry", ("path", "name", "labels"))
        if "path" not in fields:
            raise reader.fail(item, "a cgroups entry needs a path")
        path = reader.scalar(fields["path"][1], "cgroups.path", "path")
        name = reader.scalar(fields["name"][1], "cgroups.name", str) if "name" in fields \
            else Path(path.rstrip("/")).name
        labels: dict[str, str] = {}
        if "labels" in fields:
            raw = reader.value(fields["labels"][1])
            if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
                raise reader.fail(fields["labels"][1], "cgroups.labels must map names to values")
            labels = {k: str(v) for k, v in raw.items()}
        out.append(CgroupWatch(path=path, name=name, labels=labels))
    return out


def _cpu(reader: NodeReader, node: yaml.Node) -> str:
    value = reader.value(node) if isinstance(node, yaml.ScalarNode) else None
    if value is False:
        return "off"  # YAML reads a bare `off` as false
    if value is True or not isinstance(value, str | int):
        raise reader.fail(node, "cpu: expected auto, off or a CPU number")
    try:
        judging_cpu(str(value), option="cpu:")
    except LoopError as exc:
        raise reader.fail(node, str(exc)) from None
    return str(value)


def _docker_section(reader: NodeReader, node: yaml.Node, config: MonitorConfig) -> None:
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
        from monitor.sandbox.docker import parse_selector  # the Docker client: as OTLP's above

        try:
            config.watch = {} if watch == "all" else parse_selector(watch)
        except ValueError as exc:
            raise reader.fail(watch_node, f"docker.watch: {exc}") from None


def _address(reader: NodeReader, node: yaml.Node) -> tuple[str, int]:
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
    exit_at_once: bool = False  # the CLI's: exit after the summary, release the probes in the background
    outputs: list[Any] = field(default_factory=list)  # --outputs FILE, validated (monitor.outputs)

    def config(self) -> MonitorConfig:
        return MonitorConfig(source=COMMAND_LINE, rules=list(self.rules), no_rules=self.no_rules,
                             audit=self.audit, llm_capture=self.llm_capture, cpu=self.cpu,
                             console=not self.quiet, verbose=self.verbose, json=self.json,
                             json_events=self.json_events, journal=self.journal, otlp=self.otlp,
                             outputs=list(self.outputs))
