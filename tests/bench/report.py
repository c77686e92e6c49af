"""Forensic report benchmark: how long `monitor report` takes and how big its page is, for a
synthetic agent session of 10,000 and of 1,000,000 events (tests/bench/journal.py's sessions,
with an alert on every /etc/passwd read so the alert paths are exercised too).

    .venv/bin/python -m tests.bench.report            # 10,000 and 1,000,000 events
    .venv/bin/python -m tests.bench.report --smoke    # 2,000 and 20,000 events, seconds
    .venv/bin/python -m tests.bench.report --json

Figures per size: the page's bytes (and per event), the time to read the journal and build the
page's data (two journal passes), the time to render and write it, the CPU seconds of both (steadier
than wall time on a shared machine), and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from monitor.event import Alert  # noqa: E402
from monitor.report import ReportOptions, build_report_data, write_page  # noqa: E402
from monitor.sinks.journal import JournalSink  # noqa: E402
from tests.bench.journal import synthetic_events  # noqa: E402

ALERTED_PATH = "/etc/passwd"


def write_journal(directory: str, count: int) -> dict[str, int]:
    """The synthetic session, and a recorded alert after each read of ALERTED_PATH."""
    events = synthetic_events(count)
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    alerts = 0
    for event in events:
        sink.on_event(event)
        if event.kind == "open" and (event.file or {}).get("path") == ALERTED_PATH:
            sink.on_alert(Alert(rule="Passwd read", severity="medium", action="alert", tags=["discovery"],
                                event=event, time_ns=event.time_ns))
            alerts += 1
    sink.close({"events": count})
    del events
    gc.collect()
    return {"events": count, "alerts": alerts}


def bench_size(count: int, tmp: str) -> dict[str, Any]:
    journal = os.path.join(tmp, f"journal-{count}")
    written = write_journal(journal, count)
    page = os.path.join(tmp, f"report-{count}.html")
    started, cpu = time.perf_counter(), time.process_time()
    data = build_report_data(ReportOptions(journal=journal))
    built = time.perf_counter()
    size = write_page(data, page)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    (session,) = data["sessions"]
    assert session["events"] == count, (session["events"], count)
    assert session["alerts_total"] == written["alerts"], (session["alerts_total"], written["alerts"])
    label = f"{count // 1000}k" if count < 1_000_000 else f"{count // 1_000_000}M"
    return {f"report_{label}_alerts": written["alerts"],
            f"report_{label}_processes": session["processes_total"],
            f"report_{label}_processes_in_page": len(session["processes"]),
            f"report_{label}_build_s": round(built - started, 3),
            f"report_{label}_write_s": round(done - built, 3),
            f"report_{label}_total_s": round(done - started, 3),
            f"report_{label}_cpu_s": round(cpu, 3),
            f"report_{label}_events_per_s": round(count / (done - started)),
            f"report_{label}_page_bytes": size,
            f"report_{label}_page_bytes_per_event": round(size / count, 2),
            f"report_{label}_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2,000 and 20,000 events")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    sizes = (2_000, 20_000) if args.smoke else (10_000, 1_000_000)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        for count in sizes:
            figures.update(bench_size(count, tmp))
    if not args.smoke:
        from tests.bench.common import save
        save("report", figures)
    if args.json:
        print(json.dumps(figures))
        return 0
    for key, value in figures.items():
        print(f"{key:40} {value:,}" if isinstance(value, int) else f"{key:40} {value}")
    small, large = (f"{s // 1000}k" if s < 1_000_000 else f"{s // 1_000_000}M" for s in sizes)
    print(f"report: {sizes[0]:,} events -> {figures[f'report_{small}_page_bytes']:,} B page in "
          f"{figures[f'report_{small}_total_s']} s; {sizes[1]:,} events -> "
          f"{figures[f'report_{large}_page_bytes']:,} B in {figures[f'report_{large}_total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
