"""The sinks a configuration names, built in one place for every command.

Each sink's module is imported when the configuration names it: the OTLP exporters and the
Prometheus client take longer to import than a `monitor run` through the resident monitor may
take to start, and a client that writes JSON lines needs neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from monitor.engine.config import COMMAND_LINE, MonitorConfig
from monitor.sinks import Sink

SinkT = TypeVar("SinkT", bound=Sink)


class AssemblyError(Exception):
    """Something the configuration names cannot be had (a sink's file, the probes): one line."""


def setting(config: MonitorConfig, name: str) -> str:
    """How the user wrote a sink setting: `--json` on the command line, `FILE: sinks.json` in a file."""
    return f"--{name}" if config.source == COMMAND_LINE else f"{config.source}: sinks.{name}"


def _opened(config: MonitorConfig, name: str, make: Callable[[], SinkT]) -> SinkT:
    try:
        return make()
    except OSError as exc:
        raise AssemblyError(f"{setting(config, name)} {getattr(config, name)}: {exc.strerror or exc}") from None


def build_sinks(config: MonitorConfig, signals: tuple[str, ...] | None = None) -> list[Sink]:
    """Every sink the configuration names, in the order they see each event. `signals`: the OTLP
    signals to export (a replay adds nothing to live metrics)."""
    sinks: list[Sink] = []
    if config.console:
        from monitor.sinks.console import ConsoleSink

        sinks.append(ConsoleSink(verbose=config.verbose))
    if config.json:
        from monitor.sinks.jsonl import JsonlSink

        sinks.append(_opened(config, "json", lambda: JsonlSink(config.json or "-", events=config.json_events)))
    if config.otlp:
        from monitor.sinks.otlp import OtlpConfigError, OtlpSink

        try:
            sinks.append(OtlpSink(config.otlp, **({"signals": signals} if signals else {})))
        except OtlpConfigError as exc:
            raise AssemblyError(f"{setting(config, 'otlp')} {config.otlp}: {exc}") from None
    journal = None
    if config.journal:
        from monitor.sinks.journal import JournalSink

        journal = _opened(config, "journal", lambda: JournalSink(config.journal or ""))
    outputs = None
    if config.outputs:
        from monitor.outputs import build_outputs

        # what an output could not deliver is kept in the journal, for `replay --alerts-to`
        keep = (lambda lost: journal.append_undelivered(lost.time_ns, lost.to_dict())) if journal else None
        try:
            outputs = build_outputs(config.outputs, on_undelivered=keep)
        except OSError as exc:
            raise AssemblyError(f"{config.source}: outputs: {exc.filename}: {exc.strerror or exc}") from None
        sinks += outputs.sinks  # before the journal: they close first, and it keeps what they could not send
    if journal is not None:
        sinks.append(journal)
    if config.metrics:
        from monitor.sinks.metrics import MetricsSink

        sinks.append(metrics := MetricsSink())
        if outputs is not None:  # delivery, suppressions and undelivered alerts on /metrics
            metrics.add_output_source(outputs.readings)
    return sinks
