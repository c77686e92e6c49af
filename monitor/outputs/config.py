"""The `outputs:` list (a YAML file for `monitor run --outputs FILE`, or a key of the daemon's
config), validated with the line of every problem: `FILE:LINE: what`.

    outputs:
      - type: alertmanager            # alertmanager | webhook | ocsf | syslog | command
        name: pager                   # default: the type (and its position when repeated)
        url: http://127.0.0.1:9093
        min_severity: high            # info | low | medium | high | critical
        rules: {include: ["Cloud*"], exclude: []}      # rule names, shell globs
        tags: {include: [T1552*], exclude: [noisy]}
        sandboxes: {names: [agent-*], labels: {team: ml}, images: ["python:*"]}
        dedup: {window: 60s, key: [process.executable]}   # key default: the matched fields
        rate_limit: {per_rule: 10/1m, global: 100/1m}
        queue: 10000
        retry: {attempts: 4, backoff: 0.5s, max_backoff: 30s}
        breaker: {failures: 5, cooldown: 30s}
        timeout: 5s
        tls: {verify: true, ca_file: /etc/ssl/private-ca.pem}
        trace_link: "https://grafana.example/explore?traceId={trace_id}"
        # per type: see docs/outputs.md
Secrets (`token`, `secret`, `header_secrets`) are `{file: PATH}` or `{env: NAME}`, read here.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from monitor.event import SEVERITIES
from monitor.outputs.hygiene import HygieneConfig, Limit
from monitor.outputs.routing import Route
from monitor.outputs.secrets import Secret, read_secret
from monitor.outputs.syslog import FACILITIES
from monitor.policy import Selector
from monitor.yamlfile import NodeReader, YamlError, read_text

TYPES = ("alertmanager", "webhook", "ocsf", "syslog", "command")
COMMON = ("type", "name", "min_severity", "rules", "tags", "sandboxes", "dedup", "rate_limit", "queue",
          "retry", "breaker", "timeout", "trace_link")
TLS_KEYS = ("verify", "ca_file")
KEYS: dict[str, tuple[str, ...]] = {
    "alertmanager": COMMON + ("url", "resolve_after", "resend", "generator_url", "token", "tls"),
    "webhook": COMMON + ("url", "secret", "headers", "header_secrets", "tls"),
    "ocsf": COMMON + ("path", "url", "events", "max_bytes", "backups", "secret", "headers",
                      "header_secrets", "tls"),
    "syslog": COMMON + ("address", "facility", "app_name", "hostname", "tls"),
    "command": COMMON + ("exec",),
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?\Z")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"(\d+)\s*(k|ki|m|mi|g|gi)?b?\Z", re.IGNORECASE)


OutputsError = YamlError  # an outputs config's errors are the YAML reader's: `file:line: what`


@dataclass(slots=True)
class OutputConfig:
    type: str
    name: str
    line: int
    route: Route
    hygiene: HygieneConfig
    settings: dict[str, Any] = field(default_factory=dict)  # the type's own keys, validated


class _Reader(NodeReader):
    """The shared line-numbered reader (monitor/yamlfile.py), with the value kinds outputs use."""

    def fields(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        """{key: value node}; an unknown or repeated key is an error at its line."""
        return {key: value for key, (_, value) in self.mapping(node, what, allowed).items()}

    def string(self, node: yaml.Node, what: str) -> str:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, f"{what} must be a non-empty string")
        return value.strip()

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            raise self.fail(node, f"{what} must be true or false")
        return value

    def number(self, node: yaml.Node, what: str, minimum: int = 1) -> int:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(node, f"{what} must be a whole number >= {minimum}")
        return value

    def duration(self, node: yaml.Node, what: str) -> float:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        found = _DURATION.match(str(value).strip()) if isinstance(value, str) else None
        if found is None:
            raise self.fail(node, f"{what} must be a duration (seconds, or 500ms, 30s, 5m, 1h)")
        return float(found.group(1)) * _UNIT_S[found.group(2)]

    def size(self, node: yaml.Node, what: str) -> int:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        found = _SIZE.match(value.strip()) if isinstance(value, str) else None
        if found is None:
            raise self.fail(node, f"{what} must be a size in bytes (or 10MiB, 1GiB)")
        unit = (found.group(2) or "").lower()
        return int(found.group(1)) * {"": 1, "k": 1000, "ki": 1024, "m": 10**6, "mi": 1 << 20,
                                      "g": 10**9, "gi": 1 << 30}[unit]

    def strings(self, node: yaml.Node, what: str) -> list[str]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        return [self.string(item, what) for item in items]

    def path_of(self, node: yaml.Node, what: str) -> str:
        return self.path(self.string(node, what))

    def secret(self, node: yaml.Node, what: str) -> Secret:
        fields = self.fields(node, what, ("file", "env"))
        if len(fields) != 1:
            raise self.fail(node, f"{what} needs exactly one of file: or env: (never the value itself)")
        try:
            if "file" in fields:
                return read_secret(file=self.path_of(fields["file"], f"{what}.file"))
            return read_secret(env=self.string(fields["env"], f"{what}.env"))
        except ValueError as exc:
            raise self.fail(node, f"{what}: {exc}") from None


def _url(reader: _Reader, node: yaml.Node, what: str, schemes: tuple[str, ...]) -> str:
    text = reader.string(node, what)
    parts = urlsplit(text)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme not in schemes or not parts.hostname or not port_ok:
        raise reader.fail(node, f"{what} {text!r}: expected {' or '.join(s + '://HOST[:PORT]' for s in schemes)}")
    return text


def _rate(reader: _Reader, node: yaml.Node, what: str) -> Limit:
    value = reader.string(node, what)
    count, _, period = value.partition("/")
    if not count.strip().isdigit() or int(count) < 1:
        raise reader.fail(node, f"{what} {value!r}: expected COUNT/PERIOD, e.g. 10/1m")
    found = _DURATION.match(period.strip() or "1s")
    if found is None and period.strip() in ("s", "m", "h"):
        found = _DURATION.match("1" + period.strip())
    if found is None or float(found.group(1)) <= 0:
        raise reader.fail(node, f"{what} {value!r}: expected COUNT/PERIOD, e.g. 10/1m")
    return Limit(int(count), float(found.group(1)) * _UNIT_S[found.group(2)])


def _include_exclude(reader: _Reader, node: yaml.Node, what: str) -> tuple[list[str], list[str]]:
    fields = reader.fields(node, what, ("include", "exclude"))
    return ([] if "include" not in fields else reader.strings(fields["include"], f"{what}.include"),
            [] if "exclude" not in fields else reader.strings(fields["exclude"], f"{what}.exclude"))


def _selector(reader: _Reader, node: yaml.Node) -> Selector:
    fields = reader.fields(node, "sandboxes", ("names", "labels", "images"))
    labels: dict[str, str] = {}
    if "labels" in fields:
        raw = reader.value(fields["labels"])
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str | int | bool)
                                                for k, v in raw.items()):
            raise reader.fail(fields["labels"], "sandboxes.labels must map label names to values")
        labels = {k: str(v) for k, v in raw.items()}
    return Selector(names=reader.strings(fields["names"], "sandboxes.names") if "names" in fields else [],
                    labels=labels,
                    images=reader.strings(fields["images"], "sandboxes.images") if "images" in fields else [])


def _route(reader: _Reader, fields: dict[str, yaml.Node]) -> Route:
    route = Route()
    if "min_severity" in fields:
        severity = reader.string(fields["min_severity"], "min_severity")
        if severity not in SEVERITIES:
            raise reader.fail(fields["min_severity"], f"min_severity {severity!r}: one of {', '.join(SEVERITIES)}")
        route.min_severity = severity
    if "rules" in fields:
        route.rules_include, route.rules_exclude = _include_exclude(reader, fields["rules"], "rules")
    if "tags" in fields:
        route.tags_include, route.tags_exclude = _include_exclude(reader, fields["tags"], "tags")
    if "sandboxes" in fields:
        route.sandboxes = _selector(reader, fields["sandboxes"])
    route.__post_init__()
    return route


def _hygiene(reader: _Reader, fields: dict[str, yaml.Node]) -> HygieneConfig:
    config = HygieneConfig()
    if "dedup" in fields:
        dedup = reader.fields(fields["dedup"], "dedup", ("window", "key"))
        if "window" in dedup:
            config.dedup_window_s = reader.duration(dedup["window"], "dedup.window")
        if "key" in dedup:
            config.dedup_key = tuple(reader.strings(dedup["key"], "dedup.key"))
    if "rate_limit" in fields:
        limits = reader.fields(fields["rate_limit"], "rate_limit", ("per_rule", "global"))
        if "per_rule" in limits:
            config.per_rule = _rate(reader, limits["per_rule"], "rate_limit.per_rule")
        if "global" in limits:
            config.ceiling = _rate(reader, limits["global"], "rate_limit.global")
    return config


def _common(reader: _Reader, fields: dict[str, yaml.Node], settings: dict[str, Any]) -> None:
    if "queue" in fields:
        settings["queue"] = reader.number(fields["queue"], "queue")
    if "timeout" in fields:
        settings["timeout"] = reader.duration(fields["timeout"], "timeout")
    if "trace_link" in fields:
        settings["trace_link"] = reader.string(fields["trace_link"], "trace_link")
    if "retry" in fields:
        retry = reader.fields(fields["retry"], "retry", ("attempts", "backoff", "max_backoff"))
        if "attempts" in retry:
            settings["retry_attempts"] = reader.number(retry["attempts"], "retry.attempts")
        for key in ("backoff", "max_backoff"):
            if key in retry:
                settings[f"retry_{key}"] = reader.duration(retry[key], f"retry.{key}")
    if "breaker" in fields:
        breaker = reader.fields(fields["breaker"], "breaker", ("failures", "cooldown"))
        if "failures" in breaker:
            settings["breaker_failures"] = reader.number(breaker["failures"], "breaker.failures")
        if "cooldown" in breaker:
            settings["breaker_cooldown"] = reader.duration(breaker["cooldown"], "breaker.cooldown")
    if "tls" in fields:
        tls = reader.fields(fields["tls"], "tls", TLS_KEYS)
        if "verify" in tls:
            settings["verify"] = reader.boolean(tls["verify"], "tls.verify")
        if "ca_file" in tls:
            ca_file = reader.path_of(tls["ca_file"], "tls.ca_file")
            if not os.access(ca_file, os.R_OK):
                raise reader.fail(tls["ca_file"], f"tls.ca_file {ca_file}: cannot read")
            settings["ca_file"] = ca_file


def _http_target(reader: _Reader, fields: dict[str, yaml.Node], settings: dict[str, Any]) -> None:
    if "secret" in fields:
        settings["secret"] = reader.secret(fields["secret"], "secret")
    if "headers" in fields:
        raw = reader.value(fields["headers"])
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str | int) for k, v in raw.items()):
            raise reader.fail(fields["headers"], "headers must map header names to values")
        settings["headers"] = {k: str(v) for k, v in raw.items()}
    if "header_secrets" in fields:
        node = fields["header_secrets"]
        if not isinstance(node, yaml.MappingNode):
            raise reader.fail(node, "header_secrets must map header names to {file:} or {env:}")
        settings["header_secrets"] = {reader.string(k, "header name"): reader.secret(v, f"header_secrets.{k.value}")
                                      for k, v in node.value}


def _type_settings(reader: _Reader, kind: str, item: yaml.Node, fields: dict[str, yaml.Node],
                   settings: dict[str, Any]) -> None:
    def need(key: str) -> yaml.Node:
        if key not in fields:
            raise reader.fail(item, f"a {kind} output needs {key}:")
        return fields[key]

    if kind == "alertmanager":
        settings["url"] = _url(reader, need("url"), "url", ("http", "https"))
        if "resolve_after" in fields:
            settings["resolve_after"] = reader.duration(fields["resolve_after"], "resolve_after")
        if "resend" in fields:
            settings["resend"] = reader.duration(fields["resend"], "resend")
        if "generator_url" in fields:
            settings["generator_url"] = _url(reader, fields["generator_url"], "generator_url", ("http", "https"))
        if "token" in fields:
            settings["token"] = reader.secret(fields["token"], "token")
    elif kind == "webhook":
        settings["url"] = _url(reader, need("url"), "url", ("http", "https"))
        _http_target(reader, fields, settings)
    elif kind == "ocsf":
        if ("path" in fields) == ("url" in fields):
            raise reader.fail(item, "an ocsf output needs one of path: (JSON lines) or url: (webhook)")
        if "path" in fields:
            settings["path"] = reader.path_of(fields["path"], "path")
            if not os.path.isdir(os.path.dirname(settings["path"]) or "."):
                raise reader.fail(fields["path"], f"path {settings['path']}: its folder does not exist")
        else:
            settings["url"] = _url(reader, fields["url"], "url", ("http", "https"))
            _http_target(reader, fields, settings)
        if "events" in fields:
            settings["events"] = reader.boolean(fields["events"], "events")
        if "max_bytes" in fields:
            settings["max_bytes"] = reader.size(fields["max_bytes"], "max_bytes")
        if "backups" in fields:
            settings["backups"] = reader.number(fields["backups"], "backups", minimum=0)
    elif kind == "syslog":
        address = _url(reader, need("address"), "address", ("udp", "tcp", "tls"))
        parts = urlsplit(address)
        settings.update(protocol=parts.scheme, host=parts.hostname, port=parts.port or
                        (6514 if parts.scheme == "tls" else 514))
        if "facility" in fields:
            facility = reader.string(fields["facility"], "facility")
            if facility not in FACILITIES:
                raise reader.fail(fields["facility"], f"facility {facility!r}: one of {', '.join(FACILITIES)}")
            settings["facility"] = FACILITIES[facility]
        for key in ("app_name", "hostname"):
            if key in fields:
                settings[key] = reader.string(fields[key], key)
    elif kind == "command":
        argv = reader.strings(need("exec"), "exec")
        program = argv[0]
        resolved = shutil.which(program) if "/" not in program else (program if os.access(program, os.X_OK) else None)
        if resolved is None:
            raise reader.fail(fields["exec"], f"exec: {program}: not an executable program")
        settings["argv"] = [resolved, *argv[1:]]


def parse_outputs(node: yaml.Node, file: str, base_dir: Path | None = None,
                  loader: yaml.SafeLoader | None = None) -> list[OutputConfig]:
    """An `outputs:` sequence node -> validated configs; OutputsError (file:line) on the first
    problem. `loader`: the one that composed `node` (the daemon's config reader's)."""
    reader = _Reader(file, base_dir or Path(file).resolve().parent, loader)
    if not isinstance(node, yaml.SequenceNode):
        raise reader.fail(node, "outputs must be a list of outputs (each with a type:)")
    configs: list[OutputConfig] = []
    names: set[str] = set()
    for item in node.value:
        if not isinstance(item, yaml.MappingNode):
            raise reader.fail(item, "an output must be a mapping with a type:")
        types = [v for k, v in item.value if isinstance(k, yaml.ScalarNode) and k.value == "type"]
        if not types:
            raise reader.fail(item, f"an output needs type: ({', '.join(TYPES)})")
        kind = reader.string(types[0], "type")
        if kind not in TYPES:
            raise reader.fail(types[0], f"unknown output type {kind!r} ({', '.join(TYPES)})")
        fields = reader.fields(item, f"a {kind} output", KEYS[kind])
        name = reader.string(fields["name"], "name") if "name" in fields else kind
        if name in names:
            if "name" in fields:
                raise reader.fail(fields["name"], f"duplicate output name {name!r}")
            name = f"{kind}-{len(configs) + 1}"
        names.add(name)
        settings: dict[str, Any] = {}
        _common(reader, fields, settings)
        _type_settings(reader, kind, item, fields, settings)
        configs.append(OutputConfig(kind, name, item.start_mark.line + 1, _route(reader, fields),
                                    _hygiene(reader, fields), settings))
    return configs


def load_outputs(path: str) -> list[OutputConfig]:
    """A YAML file whose top level has `outputs:` (the `monitor run --outputs FILE` form)."""
    reader, root = _Reader.of_text(read_text(Path(path), "outputs file"), path)
    if root is None:
        raise OutputsError("empty file: expected outputs: [...]", path, 1)
    top = reader.fields(root, "the outputs file", ("outputs",))
    if "outputs" not in top:
        raise reader.fail(root, "expected outputs: [...]")
    return parse_outputs(top["outputs"], path, loader=reader.loader)
