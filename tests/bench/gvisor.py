#!/usr/bin/env python3
"""gVisor column of the overhead benchmark: the same workload under runsc with and without the
monitor's trace session (decode + map + the default rule pack), the decoder's sustained rate, and
the dropped count.

    .venv/bin/python tests/bench/gvisor.py [--smoke] [--repeat N] [--json FILE]

Workloads (inside `runsc --network=none do`):
  opens           python3 opening one file in a loop (repeats folded by the mapper, see mapping.py)
  distinct_opens  python3 opening distinct files under /usr/share (one event per open)
  execs           a shell running /bin/true in a loop (clone + exec + exit + the loader's opens)
Each is run `repeat` times alternating bare / traced-without-rules / traced; medians are compared:
wall-time ratio, the sandbox's own CPU ratio (what the trace session costs gVisor itself, robust
on a busy host) and the monitor's CPU. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from monitor.engine.pipeline import Pipeline  # noqa: E402
from monitor.event import Event  # noqa: E402
from monitor.gvisor import wire  # noqa: E402
from monitor.gvisor.proto import points_pb2 as pb  # noqa: E402
from monitor.gvisor.runner import GvisorSandbox  # noqa: E402
from monitor.gvisor.source import TraceSession, TraceSource  # noqa: E402

T = pb.MessageType


def workloads(scale: int) -> dict[str, list[str]]:
    return {
        "opens": ["/usr/bin/python3", "-c",
                  f"import os\nfor _ in range({2000 * scale}):\n    os.close(os.open('/etc/hostname', os.O_RDONLY))"],
        "distinct_opens": ["/usr/bin/python3", "-c",
                           "import os, itertools\n"
                           "paths = (os.path.join(d, f) for d, _, fs in os.walk('/usr/share') for f in fs)\n"
                           f"for p in itertools.islice(paths, {300 * scale}):\n"
                           "    try: os.close(os.open(p, os.O_RDONLY))\n"
                           "    except OSError: pass"],
        "execs": ["/bin/sh", "-c", f"i=0; while [ $i -lt {20 * scale} ]; do /bin/true; i=$((i+1)); done"],
    }


def load_policy() -> Any:
    try:
        from monitor.policy import DEFAULT_RULES_DIR, load_rules
    except ImportError:
        return None
    return load_rules([DEFAULT_RULES_DIR])


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_once(cmd: list[str], traced: bool, policy: Any) -> dict[str, Any]:
    """Wall time, the sandbox's CPU (runsc and its children, reaped: RUSAGE_CHILDREN) and the
    monitor's own CPU (this process: the sink, decoding, rules)."""
    pipeline = Pipeline(None, policy, None, [])
    children0, self0 = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    started = time.perf_counter()
    with GvisorSandbox(cmd, "bench", trace=traced) as sandbox:
        while not sandbox.finished:
            for event in sandbox.poll(50):
                pipeline.process(event)
        sandbox.wait()
        wall = time.perf_counter() - started
        status = sandbox.exit_status()
        lost = sandbox.lost()
    if status != 0:
        raise SystemExit(f"workload {cmd[:2]} exited {status}")
    return {"wall_s": wall, "sandbox_cpu_s": _cpu(resource.RUSAGE_CHILDREN) - children0,
            "monitor_cpu_s": _cpu(resource.RUSAGE_SELF) - self0,
            "events": sum(pipeline.events_by_kind.values()),
            "dropped": lost.get("gvisor_dropped", 0), "malformed": lost.get("gvisor_malformed", 0)}


def compare(name: str, cmd: list[str], repeat: int, policy: Any) -> dict[str, Any]:
    bare: list[dict[str, Any]] = []
    decode_only: list[float] = []
    traced: list[dict[str, Any]] = []
    for _ in range(repeat):
        bare.append(run_once(cmd, False, policy))
        decode_only.append(run_once(cmd, True, None)["wall_s"])
        traced.append(run_once(cmd, True, policy))
    bare_s = statistics.median(b["wall_s"] for b in bare)
    traced_s = statistics.median(t["wall_s"] for t in traced)
    bare_cpu = statistics.median(b["sandbox_cpu_s"] for b in bare)
    traced_cpu = statistics.median(t["sandbox_cpu_s"] for t in traced)
    events = max(t["events"] for t in traced)
    return {"workload": name, "bare_s": round(bare_s, 3), "traced_s": round(traced_s, 3),
            "ratio": round(traced_s / bare_s, 3), "overhead_pct": round((traced_s / bare_s - 1) * 100, 1),
            "ratio_without_rules": round(statistics.median(decode_only) / bare_s, 3),
            "sandbox_cpu_ratio": round(traced_cpu / bare_cpu, 3) if bare_cpu else None,
            "monitor_cpu_s": round(statistics.median(t["monitor_cpu_s"] for t in traced), 3),
            "events": events, "events_per_s": round(events / traced_s),
            "dropped": sum(t["dropped"] for t in traced), "malformed": sum(t["malformed"] for t in traced)}


def synthetic_points(count: int) -> list[bytes]:
    """A mix of 80% opens (distinct paths, 1 ms apart: nothing is folded), connects and execs."""
    base_ns = time.time_ns()
    out: list[bytes] = []
    for i in range(count):
        ctx = pb.ContextData(time_ns=base_ns + i * 1_000_000, thread_id=7, thread_group_id=7,
                             container_id="bench", process_name="python3",
                             credentials=pb.Credentials(real_uid=1000))
        if i % 10 == 8:
            out.append(wire.encode(T.MESSAGE_SYSCALL_CONNECT, pb.Connect(
                context_data=ctx, fd=3, address=b"\x02\x00\x01\xbb\x7f\x00\x00\x01" + bytes(8),
                exit=pb.Exit())))
        elif i % 10 == 9:
            out.append(wire.encode(T.MESSAGE_SENTRY_EXEC, pb.ExecveInfo(
                context_data=ctx, binary_path="/usr/bin/git", argv=["git", "status", "--short"])))
        else:
            out.append(wire.encode(T.MESSAGE_SYSCALL_OPEN, pb.Open(
                context_data=ctx, fd=-100, pathname=f"src/module{i % 5000}.py",
                flags=os.O_RDONLY | os.O_CLOEXEC, exit=pb.Exit(result=3))))
    return out


def decoder_rate(count: int, policy: Any) -> dict[str, Any]:
    """Datagrams/s through decode + map alone, and through decode + map + the rule pack."""
    sink = TraceSource.__new__(TraceSource)  # the datagram path only: no socket needed
    from collections import Counter

    from monitor.gvisor.mapping import EventMapper

    sink.errors, sink.points = Counter(), 0
    points = synthetic_points(count)
    results = {}
    for label, pipeline in (("decode_map", None), ("decode_map_rules", Pipeline(None, policy, None, []))):
        session = TraceSession(sock=None, mapper=EventMapper(lambda _cid: {"id": "bench", "runtime": "gvisor"}))  # type: ignore[arg-type]
        events: list[Event] = []
        started = time.perf_counter()
        for datagram in points:
            sink.handle_datagram(session, datagram, events)
            if pipeline is not None:
                for event in events:
                    pipeline.process(event)
            events.clear()
        elapsed = time.perf_counter() - started
        results[f"{label}_per_s"] = round(count / elapsed)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: tiny workloads, one repeat")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=10, help="workload size multiplier")
    parser.add_argument("--json", metavar="FILE", help="also write the result here")
    args = parser.parse_args()
    repeat, scale, synthetic = (1, 1, 20_000) if args.smoke else (args.repeat, args.scale, 200_000)
    policy = load_policy()
    result: dict[str, Any] = {"bench": "gvisor", "smoke": args.smoke, "repeat": repeat,
                              "rules": len(getattr(policy, "rules", []) or [])}
    result["decoder"] = decoder_rate(synthetic, policy)
    if shutil.which("runsc") is None or os.geteuid() != 0:
        result["runsc"] = "skipped: needs root and runsc (apt-get install runsc)"
    else:
        result["workloads"] = [compare(name, cmd, repeat, policy) for name, cmd in workloads(scale).items()]
    text = json.dumps(result)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
