"""Validated output configs -> running output sinks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.outputs.config import OutputConfig
from monitor.outputs.delivery import OutputOptions, OutputSink, RetryPolicy, Transport, UndeliveredHook


def _transport(config: OutputConfig) -> Transport:
    s = config.settings
    timeout = s.get("timeout", 5.0)
    link = s.get("trace_link", "")
    tls = {"verify": s.get("verify", True), "ca_file": s.get("ca_file")}
    if config.type == "alertmanager":
        from monitor.outputs.alertmanager import AlertmanagerTransport
        return AlertmanagerTransport(s["url"], resolve_after_s=s.get("resolve_after", 300.0),
                                     resend_s=s.get("resend", 60.0), link_template=link,
                                     generator_url=s.get("generator_url", ""), timeout_s=timeout,
                                     token=s.get("token"), **tls)
    if config.type == "webhook" or (config.type == "ocsf" and "url" in s):
        from monitor.outputs.webhook import WebhookTransport
        render = schema = None
        if config.type == "ocsf":
            from monitor.outputs.ocsf import OCSF_VERSION, ocsf_record
            render, schema = (lambda notice: ocsf_record(notice, "", link)), f"ocsf/{OCSF_VERSION}"
        return WebhookTransport(s["url"], secret=s.get("secret"), headers=s.get("headers", {}),
                                header_secrets=s.get("header_secrets", {}), timeout_s=timeout,
                                link_template=link, render=render, events=s.get("events", False),
                                **({"schema": schema} if schema else {}), **tls)
    if config.type == "ocsf":
        from monitor.outputs.ocsf import OcsfFileTransport
        return OcsfFileTransport(s["path"], events=s.get("events", False),
                                 max_bytes=s.get("max_bytes", 100 << 20), backups=s.get("backups", 5),
                                 link_template=link)
    if config.type == "syslog":
        from monitor.outputs.syslog import FACILITIES, SyslogTransport
        return SyslogTransport(s["protocol"], s["host"], s["port"], facility=s.get("facility", FACILITIES["local0"]),
                               app_name=s.get("app_name", "sandbox-monitor"), hostname=s.get("hostname", ""),
                               timeout_s=timeout, **tls)
    from monitor.outputs.command import CommandTransport
    return CommandTransport(s["argv"], timeout_s=s.get("timeout", 10.0), link_template=link)


def _options(config: OutputConfig) -> OutputOptions:
    s = config.settings
    defaults = RetryPolicy()
    retry = RetryPolicy(attempts=s.get("retry_attempts", defaults.attempts),
                        backoff_s=s.get("retry_backoff", defaults.backoff_s),
                        max_backoff_s=s.get("retry_max_backoff", defaults.max_backoff_s))
    options = OutputOptions(retry=retry)
    options.queue_size = s.get("queue", options.queue_size)
    options.breaker_failures = s.get("breaker_failures", options.breaker_failures)
    options.breaker_cooldown_s = s.get("breaker_cooldown", options.breaker_cooldown_s)
    return options


@dataclass
class Outputs:
    """The running outputs of one monitor: add `sinks` to the pipeline's sinks."""
    sinks: list[OutputSink] = field(default_factory=list)

    def note_trace(self, sandbox_id: str, traceparent: str) -> None:
        """The sandbox's trace (from its W3C TRACEPARENT) for the outputs' trace links."""
        parts = traceparent.split("-")
        if len(parts) >= 3 and len(parts[1]) == 32:
            for sink in self.sinks:
                sink.note_trace(sandbox_id, parts[1])

    def readings(self) -> dict[str, dict[str, Any]]:
        """Per output name: {sent, failures, queued, undelivered: {reason: n},
        suppressed: {(rule, reason): n}} (the sandbox_monitor_output_* metrics)."""
        return {sink.name: sink.readings() for sink in self.sinks}


def build_outputs(configs: list[OutputConfig], on_undelivered: UndeliveredHook | None = None,
                  clock: Callable[[], float] | None = None) -> Outputs:
    """Start one OutputSink per config. `on_undelivered` receives every Undelivered record (the
    journal keeps them); a file that cannot be opened raises OSError before any output starts."""
    transports = [_transport(config) for config in configs]
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return Outputs([OutputSink(config.name, transport, config.route, config.hygiene, _options(config),
                               on_undelivered, **extra)
                    for config, transport in zip(configs, transports, strict=True)])


def note_trace(sinks: list[Any], sandbox_id: str, traceparent: str) -> None:
    """The sandbox's trace id (from its W3C TRACEPARENT) to the output sinks among `sinks`."""
    Outputs([sink for sink in sinks if isinstance(sink, OutputSink)]).note_trace(sandbox_id, traceparent)
