"""OTLP and Prometheus sink benchmark: what the sinks cost the event path, how fast the OTLP sink
turns events into spans, and that nothing is lost at that rate, against the test OTLP receiver
(tests/otlp_receiver.py, in its own process as a collector would be) on 127.0.0.1, with the
collector up, down and slow.

    .venv/bin/python tests/bench/otlp.py            # 300,000 events
    .venv/bin/python tests/bench/otlp.py --smoke    # 20,000 events, seconds
    .venv/bin/python tests/bench/otlp.py --json     # one JSON object with the figures

Figures: on_event_us (event path, mean per call), builder_events_per_s (events -> spans/metrics,
measured until the sink is idle), spans_received, spans_not_exported, close_s. Events are fed at
a bounded rate (`--rate`, default 20,000/s: a heavy build in one sandbox, sustained). Pass: with
the collector up every span arrives and nothing is dropped; down or slow, every span is either
received or counted as not exported; the event path stays under 50 us per event in all three.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otlp_receiver import OtlpReceiver, read_dump  # noqa: E402

from monitor.event import Event  # noqa: E402
from monitor.sinks.metrics import MetricsSink  # noqa: E402
from monitor.sinks.otlp import OtlpSink  # noqa: E402
from tests.bench.journal import synthetic_events  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def feed(sink: Any, events: list[Event], rate: float) -> float:
    """Feed at most `rate` events/s; returns the mean seconds spent in on_event."""
    spent = 0.0
    chunk = max(1, int(rate / 100))  # pace in 10 ms slices
    started = time.perf_counter()
    for i in range(0, len(events), chunk):
        t = time.perf_counter()
        for event in events[i:i + chunk]:
            sink.on_event(event)
        spent += time.perf_counter() - t
        ahead = started + (i + chunk) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    return spent / len(events)


def expected_spans(events: list[Event]) -> int:
    return sum(1 for e in events if e.kind == "exec") + 1  # + the session's root


@contextmanager
def receiver_process(delay_s: float) -> Iterator[tuple[str, Path]]:
    """The test receiver in its own process (as a collector is): (URL, dump file)."""
    with tempfile.TemporaryDirectory(prefix="otlp-bench-") as tmp:
        dump = Path(tmp) / "received.jsonl"
        child = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "otlp_receiver.py"),
                                  "--delay", str(delay_s), "--out", str(dump)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            ready = child.stdout.readline().split()  # "ready grpc=P http=Q"
            yield f"http://127.0.0.1:{ready[2].split('=')[1]}", dump
        finally:
            child.kill()
            child.wait()


def received_spans(dump: Path, expected: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = len(read_dump(dump).spans())
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.5)


def bench_otlp(events: list[Event], rate: float, mode: str) -> dict[str, Any]:
    delay = 0.5 if mode == "slow" else 0.0
    with receiver_process(delay) as (rx_url, dump):
        url = f"http://127.0.0.1:{free_port()}" if mode == "down" else rx_url
        sink = OtlpSink(url, export_timeout=1.0, close_timeout=30 if mode != "down" else 2,
                        metric_interval_s=1.0)
        on_event = feed(sink, events, rate)
        start_idle = time.perf_counter()
        sink.wait_idle(120)
        builder_tail = time.perf_counter() - start_idle
        started = time.perf_counter()
        summary: dict[str, Any] = {}
        sink.close(summary)
        close_s = time.perf_counter() - started
        stats = summary["sinks"]["otlp"]
        sent = stats["traces"]["exported"]
        received = received_spans(dump, sent) if sent else 0
    return {"mode": mode, "events": len(events), "on_event_us": round(on_event * 1e6, 2),
            "builder_tail_s": round(builder_tail, 3), "spans_expected": expected_spans(events),
            "spans_received": received, "inbox_dropped": stats["inbox_dropped"],
            "spans_not_exported": stats["traces"]["dropped_queue_full"] + stats["traces"]["dropped_shutdown"],
            "not_exported": stats["not_exported"], "export_failures": stats["traces"]["failures"],
            "close_s": round(close_s, 3)}


def bench_builder(events: list[Event]) -> dict[str, Any]:
    """Unpaced: events into the inbox as fast as possible, then the time until the builder is idle."""
    with OtlpReceiver() as rx:
        sink = OtlpSink(rx.http_url, max_queue=len(events) + 10)
        started = time.perf_counter()
        for event in events:
            sink.on_event(event)
        sink.wait_idle(300)
        elapsed = time.perf_counter() - started
        sink.close({})
    return {"builder_events_per_s": round(len(events) / elapsed)}


def bench_prometheus(events: list[Event]) -> dict[str, Any]:
    sink = MetricsSink()
    started = time.perf_counter()
    for event in events:
        sink.on_event(event)
    return {"prometheus_on_event_us": round((time.perf_counter() - started) / len(events) * 1e6, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="20,000 events: seconds")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=20_000.0, help="events/s fed to the sink")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    count = 20_000 if args.smoke else args.events
    events = synthetic_events(count)
    result: dict[str, Any] = {"events": count}
    result.update(bench_prometheus(events))
    result.update(bench_builder(synthetic_events(count, sandbox_id="sb-builder")))
    runs = []
    for n, mode in enumerate(("up", "down", "slow")):
        runs.append(bench_otlp(synthetic_events(count, seed=11 + n, sandbox_id=f"sb-{mode}"), args.rate, mode))
    result["otlp"] = runs
    if args.json:
        print(json.dumps(result))
    else:
        print(f"events: {count:,}; Prometheus sink on_event: {result['prometheus_on_event_us']} us; "
              f"OTLP builder: {result['builder_events_per_s']:,} events/s")
        for run in runs:
            print(f"  collector {run['mode']:>4}: on_event {run['on_event_us']} us, spans received "
                  f"{run['spans_received']}/{run['spans_expected']}, not exported (counted) "
                  f"{run['spans_not_exported']}, inbox dropped {run['inbox_dropped']}, close {run['close_s']} s")
    up = runs[0]
    ok = up["spans_received"] == up["spans_expected"] and up["not_exported"] == 0 and up["inbox_dropped"] == 0
    ok = ok and all(r["spans_received"] + r["spans_not_exported"] == r["spans_expected"] for r in runs)
    ok = ok and all(r["on_event_us"] < 50 and r["inbox_dropped"] == 0 for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
