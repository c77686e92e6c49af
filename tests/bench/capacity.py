"""Capacity and cost of the monitor itself.

  capacity  distinct opens (no in-kernel folding) at rising rates through `monitor run` with the
            default pack: events/s that reach rule evaluation with 0 lost, where loss starts, and
            the lost count (exact, from the kernel's per-probe counters) beyond it; 2 s bursts,
            then each rate held for 10 s (the ring buffer cannot hide a backlog that long)
  cost      the monitor's CPU seconds and peak RSS per 100k events (from its summary)
  sandboxes RSS of one monitor watching 100 concurrent sandboxes (one sensor, one pipeline each)
  start     probes compiled and attached (bcc), seconds

    python -m tests.bench.capacity [--smoke]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.common import build_workload, run_monitored, save

RATES = (25_000, 50_000, 100_000, 200_000, 400_000)
HELD_RATES = (150_000, 200_000, 250_000)
HELD_S = 10.0


def capacity(binary: str, smoke: bool) -> dict[str, Any]:
    rows = rates(binary, RATES[:2] if smoke else RATES, 0.5 if smoke else 2.0)
    clean = [r["offered_per_s"] for r in rows if r["lost"] == 0]
    lossy = [r["offered_per_s"] for r in rows if r["lost"] > 0]
    result = {"rows": rows, "max_rate_without_loss": max(clean, default=0),
              "loss_starts_at": min(lossy, default=None)}
    result.update(sustained(rows))
    held = rates(binary, HELD_RATES[:1] if smoke else HELD_RATES, 0.5 if smoke else HELD_S)
    result["held_s"] = 0.5 if smoke else HELD_S
    result["held_rows"] = held
    result["held_max_without_loss"] = max((r["offered_per_s"] for r in held if r["lost"] == 0), default=0)
    print(f"held {result['held_s']} s: highest rate with 0 lost {result['held_max_without_loss']:,}/s")
    return result


def rates(binary: str, offered: tuple[int, ...], duration_s: float) -> list[dict[str, Any]]:
    rows = []
    for rate in offered:
        n = int(rate * duration_s)
        with tempfile.TemporaryDirectory(prefix="smcap-journal-") as journal:
            # the realistic store: every event journaled; JSON carries only alerts and the summary
            run = run_monitored([binary, "open-distinct", str(n), str(rate)], "--no-json-events",
                                "--journal", journal)
        s = run.summary
        lost = sum((s.get("lost") or {}).values())
        opens = (s.get("events_by_kind") or {}).get("open", 0)
        cost = s.get("monitor") or {}
        rows.append({"offered_per_s": rate, "achieved_per_s": round(n / (run.elapsed_ns / 1e9)),
                     "opens_seen": opens, "lost": lost, "monitor_cpu_s": cost.get("cpu_s"),
                     "monitor_max_rss_mb": cost.get("max_rss_mb"),
                     "cpu_s_per_100k_events": round(cost.get("cpu_s", 0) / max(s.get("events", 1), 1) * 1e5, 2)})
        print(f"offered {rate:>7}/s for {duration_s} s achieved {rows[-1]['achieved_per_s']:>7}/s  seen {opens:>8}"
              f"  lost {lost:>7}  monitor cpu {cost.get('cpu_s')} s rss {cost.get('max_rss_mb')} MB", flush=True)
    return rows


def sustained(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What one core of monitor keeps up with indefinitely. A 2 s burst also fills the ring buffer
    (16 MiB, ~150k open records) and is drained after the workload ends, so the burst figure
    above overstates the steady rate: the marginal monitor CPU per event between the smallest and
    the largest loss-free run (start-up cancels out) gives it."""
    clean = [r for r in rows if r["lost"] == 0 and r["monitor_cpu_s"] is not None]
    if len(clean) < 2 or clean[-1]["opens_seen"] <= clean[0]["opens_seen"]:
        return {}
    first, last = clean[0], clean[-1]
    per_event_us = (last["monitor_cpu_s"] - first["monitor_cpu_s"]) / (last["opens_seen"] - first["opens_seen"]) * 1e6
    if per_event_us <= 0:
        return {}
    rate = round(1e6 / per_event_us)
    print(f"monitor CPU per event (marginal): {per_event_us:.1f} us -> sustained on one core: ~{rate:,} events/s")
    return {"cpu_us_per_event": round(per_event_us, 2), "sustained_per_s": rate}


def sandboxes_rss(count: int) -> dict[str, Any]:
    """One monitor process (sensor + enrich + policy) watching `count` live sandboxes."""
    code = f"""
import os, subprocess, resource
from monitor.sensor import Sensor
from monitor.sandbox import SandboxRegistry, cgroup as cg
from monitor.enrich import Enricher
from monitor.engine.pipeline import Pipeline
from monitor.policy import load_rules, DEFAULT_RULES_DIR
sensor = Sensor(); registry = SandboxRegistry()
pipeline = Pipeline(Enricher(registry), load_rules([DEFAULT_RULES_DIR]), None, [])
boxes, procs = [], []
for i in range({count}):
    box = cg.create(f"rss-{{i}}"); registry.add(box); sensor.add_cgroup(box.cgroup_id); boxes.append(box)
    procs.append(subprocess.Popen(["bash", "-c", "for i in 1 2 3; do /bin/true; done; sleep 3"], preexec_fn=cg.joiner(box)))
for _ in range(60):
    pipeline.process_all(sensor.poll(50))
import psutil
info = psutil.Process().memory_full_info()
for box in boxes: cg.remove(box)
print(info.rss / 2**20, info.uss / 2**20, sum(pipeline.events_by_kind.values()))
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([str(root / ".venv/bin/python"), "-c", code], capture_output=True, text=True, cwd=root)
    rss, uss, events = out.stdout.split()[-3:]
    print(f"{count} concurrent sandboxes: monitor RSS {float(rss):.0f} MB, USS {float(uss):.0f} MB"
          f" (RSS counts libLLVM/libbcc pages shared with every other bcc process) ({events} events)")
    return {"sandboxes": count, "rss_mb": round(float(rss), 1), "uss_mb": round(float(uss), 1),
            "events": int(events)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="capacity and cost of the monitor")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("capacity: needs root")
        return {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smcap-") as tmp:
        binary = build_workload(Path(tmp))
        result = {"capacity": capacity(binary, args.smoke),
                  "sandboxes": sandboxes_rss(10 if args.smoke else 100)}
    result["seconds"] = round(time.monotonic() - started, 1)
    if not args.smoke:
        print(f"saved {save('capacity', result)}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
