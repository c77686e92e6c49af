"""Journal benchmark: write throughput (events/s, bytes/event on disk) and replay throughput
through the default rule pack, on synthetic but realistic exec/open/connect sessions.

    .venv/bin/python tests/bench/journal.py            # 1,000,000 events
    .venv/bin/python tests/bench/journal.py --smoke    # ~20,000 events, seconds
    .venv/bin/python tests/bench/journal.py --json     # one JSON object with the figures

Targets (issue 8): write >= 300k events/s, replay >= 500k events/s when no rule matches the
kind, <= 40 bytes/event on disk. Rates are given per wall-clock second and per CPU second (the
latter is steadier on a shared machine). With rules for the kinds, replay runs at the policy engine's
own rate (engine_default_pack_events_per_s: the same rules on the same events in memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from monitor.event import Event  # noqa: E402
from monitor.journal import JournalReader  # noqa: E402
from monitor.sinks.journal import JournalSink  # noqa: E402

EXECUTABLES = ["/usr/bin/bash", "/usr/bin/python3.11", "/usr/bin/git", "/usr/bin/node", "/usr/bin/cat",
               "/usr/bin/grep", "/usr/bin/sed", "/usr/bin/ls", "/usr/local/bin/uv", "/usr/bin/make"]
SOURCE_DIRS = ["src/monitor", "src/monitor/sinks", "tests", "tests/e2e", "docs", "node_modules/lodash"]


def synthetic_events(count: int, seed: int = 7, sandbox_id: str = "sb-5f3a9c1e") -> list[Event]:
    """An agent session: a shell that spawns tools, which read sources and libraries, write a few
    files and connect to a package index or a model API. Process maps are shared per process,
    as the enricher shares them."""
    rnd = random.Random(seed)
    sandbox = {"id": sandbox_id, "name": "agent-task-42", "runtime": "cgroup", "labels": {"task": "42"},
               "cgroup_id": 48213, "cgroup_path": f"/sys/fs/cgroup/unified/monitor/{sandbox_id}"}
    files = ([f"/work/project/{d}/mod_{i}.py" for d in SOURCE_DIRS for i in range(40)]
             + [f"/usr/lib/python3.11/{m}.py" for m in ("os", "re", "json/__init__", "subprocess", "typing")]
             + ["/etc/ld.so.cache", "/etc/passwd", "/etc/hosts", "/etc/resolv.conf", "/dev/null"])
    # synthetic connect events written to a journal: data only, never contacted
    addresses = ["10.0.3.17", "10.0.3.18", "127.0.0.1", "192.168.10.4"]
    t = 1_763_900_000_000_000_000
    root = {"pid": 4242, "tid": 4242, "ppid": 4200, "uid": 1000, "gid": 1000, "comm": "bash",
            "executable": "/usr/bin/bash", "args": ["bash", "-lc", "agent-loop"], "cwd": "/work/project",
            "start_time_ns": t, "ancestors": [{"pid": 4200, "executable": "/usr/local/bin/monitor",
                                                "args": ["monitor", "run"]}]}
    live = [root]
    next_pid = 4300
    out = [Event("sandbox_start", t, process=root, sandbox=sandbox, source="monitor")]
    while len(out) < count:
        t += rnd.randint(2_000, 400_000)
        r = rnd.random()
        proc = rnd.choice(live)
        if r < 0.06 or len(live) < 2:
            exe = rnd.choice(EXECUTABLES)
            args = [exe.rsplit("/", 1)[1], *rnd.sample(["-c", "status", "--short", "-n", "diff", "test", "-q"], 2),
                    f"target_{rnd.randint(0, 50)}"]
            child = {"pid": next_pid, "tid": next_pid, "ppid": proc["pid"], "uid": 1000, "gid": 1000,
                     "comm": exe.rsplit("/", 1)[1][:15], "executable": exe, "args": args,
                     "cwd": "/work/project", "start_time_ns": t,
                     "ancestors": [{"pid": proc["pid"], "executable": proc["executable"], "args": proc["args"]},
                                   *proc["ancestors"]][:4]}
            next_pid += rnd.randint(1, 3)
            live.append(child)
            if len(live) > 24:
                gone = live.pop(1)
                out.append(Event("exit", t, process=gone, sandbox=sandbox, detail={"code": 0, "signal": 0}))
            out.append(Event("exec", t, process=child, sandbox=sandbox, detail={"args_truncated": False},
                             result=0))
        elif r < 0.88:
            write = rnd.random() < 0.1
            out.append(Event("open", t, process=proc, sandbox=sandbox,
                             file={"path": rnd.choice(files), "write": write,
                                   "flags": ["O_WRONLY", "O_CREAT", "O_TRUNC"] if write else ["O_RDONLY", "O_CLOEXEC"],
                                   "mode": 0o644 if write else 0},
                             result=rnd.choice((3, 4, 5, 6, -2))))
        else:
            out.append(Event("connect", t, process=proc, sandbox=sandbox,
                             net={"family": "inet", "transport": "tcp", "address": rnd.choice(addresses),
                                  "port": rnd.choice((443, 443, 80, 5432)), "direction": "egress"},
                             result=rnd.choice((0, 0, -111))))
    out = out[:count - 1]
    out.append(Event("sandbox_end", t + 1000, process=root, sandbox=sandbox, source="monitor",
                     detail={"code": 0, "signal": 0}))
    return out


def bench_write(events: list[Event], directory: str) -> dict[str, Any]:
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    start, cpu = time.perf_counter(), time.process_time()
    for ev in events:
        sink.on_event(ev)
    sink.close({"events": len(events)})
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    on_disk = sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory))
    return {"events": len(events), "write_s": round(elapsed, 3),
            "write_events_per_s": round(len(events) / elapsed),
            "write_events_per_cpu_s": round(len(events) / cpu),
            "bytes_on_disk": on_disk, "bytes_per_event": round(on_disk / len(events), 2)}


def bench_read(directory: str, total: int) -> dict[str, Any]:
    start = time.perf_counter()
    n = sum(1 for _ in JournalReader(directory).events())
    elapsed = time.perf_counter() - start
    assert n == total, (n, total)
    return {"decode_all_events_per_s": round(total / elapsed)}


def bench_engine(events: list[Event]) -> dict[str, Any]:
    """The policy engine's own rate on the same events in memory (what replay can at best reach)."""
    from monitor.engine.replay import load_replay_rules
    ruleset = load_replay_rules(None)
    start, cpu = time.perf_counter(), time.process_time()
    for ev in events:
        ruleset.evaluate(ev)
    return {"engine_default_pack_events_per_s": round(len(events) / (time.perf_counter() - start)),
            "engine_default_pack_events_per_cpu_s": round(len(events) / (time.process_time() - cpu))}


def bench_replay(directory: str, total: int) -> dict[str, Any]:
    from monitor.engine.replay import ReplayOptions, load_replay_rules, replay_journal
    out: dict[str, Any] = {}
    # The default pack (rules for exec/open/connect...) and a pack with no rule for these kinds.
    no_match_rules = Path(directory).parent / "no-match.yaml"
    no_match_rules.write_text("- rule: ptrace seen\n  when: [ptrace]\n  condition: 'true'\n"
                              "  severity: low\n")
    for label, rules in (("no_rule_for_kind", [str(no_match_rules)]), ("default_pack", None)):
        ruleset = load_replay_rules(rules)
        kinds = sorted({k for rule in ruleset.rules for k in rule.when})
        start, cpu = time.perf_counter(), time.process_time()
        result = replay_journal(ReplayOptions(journal=directory, rules=rules), ruleset)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert result.events_seen == total, (result.events_seen, total)
        out[f"replay_{label}_events_per_s"] = round(total / elapsed)
        out[f"replay_{label}_events_per_cpu_s"] = round(total / cpu)
        out[f"replay_{label}_alerts"] = sum(result.replayed_by_rule.values())
        out[f"replay_{label}_rule_kinds"] = ",".join(kinds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="~20k events, runs in seconds")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-replay", action="store_true", help="skip the replay figures")
    args = parser.parse_args(argv)
    count = args.events or (20_000 if args.smoke else 1_000_000)
    events = synthetic_events(count)
    mix = Counter(ev.kind for ev in events)
    gc.freeze()  # the harness's million live events are not the sink's garbage to collect
    with tempfile.TemporaryDirectory(prefix="journal-bench-") as tmp:
        directory = os.path.join(tmp, "journal")
        figures: dict[str, Any] = {"mix": dict(mix)}
        figures.update(bench_write(events, directory))
        if not args.no_replay:
            figures.update(bench_engine(events[:100_000]))
        del events
        figures.update(bench_read(directory, count))
        if not args.no_replay:
            figures.update(bench_replay(directory, count))
    if not args.smoke and args.events is None:
        from tests.bench.common import save
        save("journal", figures)
    if args.json:
        print(json.dumps(figures))
        return 0
    for key, value in figures.items():
        print(f"{key:40} {value:,}" if isinstance(value, int) else f"{key:40} {value}")
    headline = (f"journal: write {figures['write_events_per_s']:,} events/s (target >= 300,000), "
                f"{figures['bytes_per_event']} B/event (<= 40)")
    if "replay_no_rule_for_kind_events_per_s" in figures:
        headline += (f", replay {figures['replay_no_rule_for_kind_events_per_s']:,} events/s with no rule for "
                     f"the kind (>= 500,000), {figures['replay_default_pack_events_per_s']:,} through the "
                     f"default pack (engine alone: {figures['engine_default_pack_events_per_s']:,})")
    print(headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
