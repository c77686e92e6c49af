"""The OTLP sink's export queue against the OpenTelemetry SDK's batch processors, in one run.

    .venv/bin/python -m tests.bench.otlp_sdk            # 300,000 events per run
    .venv/bin/python -m tests.bench.otlp_sdk --smoke    # 20,000 events, seconds
    .venv/bin/python -m tests.bench.otlp_sdk --json     # one JSON object with the figures

Two sinks, the same but for what exports traces and logs: `queue` is OtlpSink as it ships
(ExportQueue: bounded, retries a failed batch with backoff, counts every item it does not
export); `sdk` is OtlpSink with the SDK's BatchSpanProcessor and BatchLogRecordProcessor in its
place (their own queues and threads; their drop counters, the SDK's internal metrics, switched on
and read back). Metrics go through the SDK's PeriodicExportingMetricReader in both. Each sink is
fed the same synthetic agent session (tests/bench/journal.py, one alert per 500 events) at a
bounded rate, against the test receiver (tests/otlp_receiver.py, its own process, 127.0.0.1),
with the collector up, down, slow (0.5 s per request) and down for the first half then up.

Per run: on_event cost on the caller's thread (mean, p99 and worst call, in µs: does export ever
block the caller?), spans and log records expected, received by the collector, counted as not
exported by the sink itself, and lost without being counted (expected - received - counted),
plus how long close() took. `sdk_failed_items` is what the SDK's exporter was handed and failed
to send: the SDK drops such a batch and counts it nowhere; this benchmark counts it with a
wrapper around the exporter, to show where the uncounted losses come from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from types import TracebackType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The SDK counts what its batch processors drop only when its internal metrics are on.
os.environ["OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"] = "true"

from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from otlp_receiver import read_dump  # noqa: E402

from monitor.event import Alert, Event  # noqa: E402
from monitor.sinks.otlp import OtlpSink  # noqa: E402
from monitor.sinks.otlp.export import shutdown_quietly  # noqa: E402
from tests.bench.journal import synthetic_events  # noqa: E402
from tests.bench.otlp import expected_spans, free_port  # noqa: E402

ALERT_EVERY = 500
MODES = ("up", "down", "slow", "outage")


class CountingExporter:
    """An SDK span or log exporter, counting the items of the batches it sent and failed to send."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.exported = 0
        self.failed_items = 0
        self.failures = 0
        self.last_error = ""

    def export(self, batch: Any) -> Any:
        try:
            result = self.inner.export(batch)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            result = None
        if result is not None and result.name == "SUCCESS":
            self.exported += len(batch)
        else:
            self.failures += 1
            self.failed_items += len(batch)
            self.last_error = self.last_error or "receiver refused or unreachable"
        return result

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        shutdown_quietly(self.inner)


class SdkBatchExport:
    """One signal's export by the SDK's batch processor (same queue size, batch size and delay as
    ExportQueue's), its drops read from the SDK's own counters."""

    def __init__(self, signal: str, exporter: Any, max_queue: int, backoff_s: float = 0.5) -> None:
        self.signal = signal
        self.exporter = CountingExporter(exporter)
        self._reader = InMemoryMetricReader()
        meters = MeterProvider(metric_readers=[self._reader])
        settings: dict[str, Any] = {"max_queue_size": max_queue, "schedule_delay_millis": 500,
                                    "max_export_batch_size": 512, "meter_provider": meters}
        self.processor: Any = (BatchSpanProcessor(self.exporter, **settings) if signal == "traces"
                               else BatchLogRecordProcessor(self.exporter, **settings))

    @property
    def last_error(self) -> str:
        return self.exporter.last_error

    def drain(self, deadline: float) -> None:
        """The SDK's shutdown (it has no deadline of its own: 30 s), on a thread, waited for until
        the sink's deadline, as OtlpSink bounds its metric reader's shutdown."""
        done = threading.Thread(target=self.processor.shutdown, daemon=True)
        done.start()
        done.join(max(0.0, deadline - time.monotonic()))

    def sdk_dropped(self) -> dict[str, int]:
        """The SDK's otel.sdk.processor.*.processed points by error.type (queue_full, already_shutdown)."""
        out: dict[str, int] = {}
        data = self._reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if not metric.name.endswith(".processed"):
                        continue
                    for point in metric.data.data_points:
                        error = point.attributes.get("error.type")
                        if error:
                            out[str(error)] = out.get(str(error), 0) + int(point.value)
        return out

    def stats(self) -> dict[str, Any]:
        dropped = self.sdk_dropped()
        return {"queued": 0, "exported": self.exporter.exported, "failures": self.exporter.failures,
                "dropped_queue_full": dropped.get("queue_full", 0),
                "dropped_shutdown": dropped.get("already_shutdown", 0),
                "sdk_failed_items": self.exporter.failed_items}


class SdkProcessorsSink(OtlpSink):
    new_export = SdkBatchExport


class Collector:
    """The test receiver in its own process (as a collector is) on a fixed port of 127.0.0.1,
    started when `start()` is called; what it received is read back from its dump file."""

    def __init__(self, delay_s: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._delay_s = delay_s
        self._tmp = tempfile.TemporaryDirectory(prefix="otlp-sdk-bench-")
        self.dump = Path(self._tmp.name) / "received.jsonl"
        self._child: subprocess.Popen[str] | None = None

    def start(self) -> None:
        receiver = Path(__file__).resolve().parents[1] / "otlp_receiver.py"
        self._child = subprocess.Popen([sys.executable, str(receiver), "--http-port", str(self.port),
                                        "--grpc-port", str(free_port()), "--delay", str(self._delay_s),
                                        "--out", str(self.dump)], stdout=subprocess.PIPE, text=True)
        assert self._child.stdout is not None and self._child.stdout.readline().startswith("ready")

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
        self._tmp.cleanup()


def workload(count: int, seed: int, sandbox_id: str) -> list[Event | Alert]:
    """The session's events, an alert on every ALERT_EVERY-th one, in the order a pipeline sends them."""
    items: list[Event | Alert] = []
    for n, event in enumerate(synthetic_events(count, seed=seed, sandbox_id=sandbox_id)):
        items.append(event)
        if n % ALERT_EVERY == ALERT_EVERY - 1:
            items.append(Alert(rule="bench rule", severity="high", action="alert", tags=["bench"], event=event,
                               time_ns=event.time_ns))
    return items


def feed(sink: OtlpSink, items: list[Event | Alert], rate: float, halfway: Any = None) -> array[int]:
    """Feed at most `rate` items/s; every call's nanoseconds. `halfway()` runs once at half."""
    calls = array("q")
    chunk = max(1, int(rate / 100))  # pace in 10 ms slices
    started = time.perf_counter()
    clock = time.perf_counter_ns
    for i in range(0, len(items), chunk):
        if halfway is not None and i >= len(items) // 2:
            halfway()
            halfway = None
        for item in items[i:i + chunk]:
            t = clock()
            if type(item) is Event:
                sink.on_event(item)
            else:
                sink.on_alert(item)  # type: ignore[arg-type]
            calls.append(clock() - t)
        ahead = started + (i + chunk) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    return calls


def wait_received(dump: Path, spans: int, logs: int, timeout: float = 20) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        store = read_dump(dump)
        got = len(store.spans()), len(store.logs())
        if (got[0] >= spans and got[1] >= logs) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def one_run(impl: str, mode: str, items: list[Event | Alert], rate: float) -> dict[str, Any]:
    events = [i for i in items if type(i) is Event]
    spans_expected, logs_expected = expected_spans(events), len(items) - len(events)
    with Collector(delay_s=0.5 if mode == "slow" else 0.0) as rx:
        if mode in ("up", "slow"):
            rx.start()
        # "down": nothing ever listens on rx.url; "outage": the collector starts at half the items
        kind = OtlpSink if impl == "queue" else SdkProcessorsSink
        # An inbox that holds the whole run: a builder slowed by a loaded machine then drops no events, and
        # every span of the workload reaches the export under test.
        sink = kind(rx.url, export_timeout=1.0, close_timeout=2 if mode == "down" else 30, metric_interval_s=1.0,
                    max_queue=len(items) + 10)
        calls = feed(sink, items, rate, halfway=rx.start if mode == "outage" else None)
        sink.wait_idle(120)
        started = time.perf_counter()
        summary: dict[str, Any] = {}
        sink.close(summary)
        close_s = time.perf_counter() - started
        stats = summary["sinks"]["otlp"]
        exported = stats["traces"]["exported"], stats["logs"]["exported"]
        received = wait_received(rx.dump, *exported) if mode != "down" else (0, 0)
    out: dict[str, Any] = {"impl": impl, "mode": mode, "items": len(items)}
    worst_at = max(range(len(calls)), key=calls.__getitem__)
    calls_us = sorted(c / 1000 for c in calls)
    out.update(on_event_mean_us=round(statistics.fmean(calls_us), 2),
               on_event_median_us=round(calls_us[len(calls_us) // 2], 2),
               on_event_over_1ms=sum(c > 1000 for c in calls_us), on_event_worst_at=round(worst_at / len(calls), 3),
               on_event_p99_us=round(calls_us[int(len(calls_us) * 0.99)], 2),
               on_event_max_us=round(calls_us[-1], 1), close_s=round(close_s, 2),
               inbox_dropped=stats["inbox_dropped"], metric_exports=stats["metrics"]["exported"],
               metric_failures=stats["metrics"]["failures"])
    for signal, expected, got in (("spans", spans_expected, received[0]), ("logs", logs_expected, received[1])):
        signal_stats = stats["traces" if signal == "spans" else "logs"]
        counted = signal_stats["dropped_queue_full"] + signal_stats["dropped_shutdown"]
        out[f"{signal}_expected"], out[f"{signal}_received"] = expected, got
        out[f"{signal}_counted_not_exported"] = counted
        out[f"{signal}_lost_uncounted"] = max(0, expected - got - counted)
        if "sdk_failed_items" in signal_stats:
            out[f"{signal}_sdk_failed_items"] = signal_stats["sdk_failed_items"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="20,000 events per run: seconds")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=20_000.0, help="items/s fed to the sink")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    count = 20_000 if args.smoke else args.events
    runs = []
    for n, mode in enumerate(MODES):
        items = workload(count, seed=21 + n, sandbox_id=f"sb-{mode}")
        for impl in ("queue", "sdk"):  # the same items, one after the other, same machine state
            runs.append(one_run(impl, mode, items, args.rate))
    if args.json:
        print(json.dumps({"events": count, "runs": runs}))
    else:
        print(f"events per run: {count:,}; rate {args.rate:,.0f}/s; export queue (ours) vs SDK batch processors")
        for r in runs:
            print(f"  {r['mode']:>6} {r['impl']:>5}: on_event mean {r['on_event_mean_us']} us, median "
                  f"{r['on_event_median_us']} us, p99 {r['on_event_p99_us']} us, max {r['on_event_max_us']} us, "
                  f"{r['on_event_over_1ms']} calls over 1 ms; spans {r['spans_received']}/"
                  f"{r['spans_expected']} received, {r['spans_counted_not_exported']} counted, "
                  f"{r['spans_lost_uncounted']} lost uncounted; logs {r['logs_received']}/{r['logs_expected']}, "
                  f"{r['logs_lost_uncounted']} lost uncounted; close {r['close_s']} s")
    # Pass: the export queue the sink ships loses nothing without counting it, whatever the collector does.
    ok = all(r["spans_lost_uncounted"] == 0 and r["logs_lost_uncounted"] == 0 for r in runs if r["impl"] == "queue")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
