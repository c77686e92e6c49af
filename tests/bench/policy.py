"""Benchmark: the whole default rule pack against a recorded mix of agent events, on one core.

Two mixes: the event stream `monitor run --json` recorded for an ordinary agent workflow (git,
gcc, pytest, pip, editing) with a few suspicious acts (tests/bench/data/agent_mix.jsonl.zst), and
the same plus every fixture event of the pack (suspicious-heavy: most reach CEL). Prints events/s
per CPU-second of this process pinned to one core (the wall-clock rate beside it includes whatever
else the machine runs), and the mean and p99 time of RuleSet.evaluate per event (event view, kind
index, guards and pre-filters, one CEL activation, programs, alerts). Target: >= 200,000 events/s
on the recorded mix.

    python tests/bench/policy.py [--seconds 5] [--rules PATH]... [--smoke] [--no-prefilter]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from monitor.event import Event  # noqa: E402
from monitor.policy import DEFAULT_RULES_DIR, load_rules  # noqa: E402
from monitor.policy.loader import expand_paths  # noqa: E402
from monitor.policy.tooling import fixture_file, load_fixtures  # noqa: E402

MIX = Path(__file__).with_name("data") / "agent_mix.jsonl.zst"
TARGET_EVENTS_PER_S = 200_000


def recorded_events() -> list[dict]:
    text = zstandard.ZstdDecompressor().decompress(MIX.read_bytes()).decode()
    return [json.loads(line) for line in text.splitlines() if line]


def fixture_events(paths: list[str]) -> list[dict]:
    events = []
    for rule_file in expand_paths(paths):
        fixtures = fixture_file(rule_file)
        if fixtures.is_file():
            for entry in load_fixtures(fixtures):
                events += entry.get("match", []) + entry.get("no_match", [])
    return events


def run(paths: list[str], seconds: float, prefilter: bool, with_fixtures: bool) -> dict[str, float]:
    ruleset = load_rules(paths)
    if not prefilter:
        ruleset.disable_prefilters()
    mix = recorded_events() + (fixture_events(paths) if with_fixtures else [])
    events = [Event.from_dict(d) for d in mix]
    evaluate = ruleset.evaluate
    alerts = sum(len(evaluate(e)) for e in events)  # warm-up, and the alert count of one pass

    # throughput: whole passes, no per-event clock. CPU time of this process (one core) is the
    # measure; wall time is printed too (it includes whatever else the machine is running).
    passes, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        for event in events:
            evaluate(event)
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    cpu = time.process_time() - cpu_start
    throughput = passes * len(events) / cpu
    wall_throughput = passes * len(events) / elapsed

    # latency per event: one pass with a clock around each evaluation
    clock = time.perf_counter_ns
    samples = []
    for event in events:
        t0 = clock()
        evaluate(event)
        samples.append(clock() - t0)
    samples.sort()
    return {"rules": len(ruleset.rules), "events_in_mix": len(events), "alerts_per_pass": alerts,
            "events_per_s": throughput, "wall_events_per_s": wall_throughput, "mean_us": sum(samples) / len(samples) / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000,
            "eval_errors": sum(ruleset.eval_errors.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", action="append", help="rule file or folder (default: the shipped pack)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true", help="a short run (seconds) for CI")
    parser.add_argument("--no-prefilter", action="store_true", help="measure CEL alone (no Python pre-filters)")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    paths = args.rules or [str(DEFAULT_RULES_DIR)]
    seconds = 0.5 if args.smoke else args.seconds
    status = 0
    for label, with_fixtures in (("recorded agent mix", False),
                                 ("recorded mix + every fixture event (suspicious-heavy)", True)):
        result = run(paths, seconds, not args.no_prefilter, with_fixtures)
        print(f"{label}: {result['rules']} rules, {result['events_in_mix']} events, "
              f"{result['alerts_per_pass']} alerts per pass")
        print(f"  events/s: {result['events_per_s']:,.0f} per CPU-second ({result['wall_events_per_s']:,.0f} wall)  "
              f"mean: {result['mean_us']:.2f} us  p99: {result['p99_us']:.2f} us  "
              f"(target >= {TARGET_EVENTS_PER_S:,} events/s on the recorded mix)")
        if result["alerts_per_pass"] == 0:
            print("error: the mix produced no alert; the pack or the mix is broken", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
