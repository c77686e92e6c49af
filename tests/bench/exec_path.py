"""The exec path by stage, where the exec storm's overhead is decided: the records of a storm
(fork, exec, two library opens, exit per iteration) captured from the kernel as `monitor run`
reads them with the default pack (a batch every 50 ms), then replayed through the real chain, decode -> enrich (with the
tool-call linker) -> default rules -> journal, in CPU µs per iteration for each stage (best of
the passes: the least disturbed). Then the judging loop's thread CPU inside `monitor run` on the
same storm (start-up and shutdown excluded), which adds what a replay does not see: the wake-ups,
cold caches beside the workload, live /proc reads.

    python -m tests.bench.exec_path [--smoke] [--iterations N (4000)]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from monitor.engine.loop import ALERT_POLL_MS
from tests.bench.common import build_workload, save

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
STAGES = ("decode", "enrich", "rules", "journal")
READ_EVERY_S = ALERT_POLL_MS / 1000  # as monitor run's reader with the default pack

# `monitor run` with its judging loop timed (thread CPU from the first turn to the child's exit)
_TIMED_RUN = """
import sys, time
from monitor import commands
from monitor.engine import loop
run_until = loop.Loop.run_until
def timed(self, *args, **kwargs):
    started = time.thread_time_ns()
    try:
        return run_until(self, *args, **kwargs)
    finally:
        print("LOOP_CPU_NS", time.thread_time_ns() - started, file=sys.stderr)
loop.Loop.run_until = timed
sys.exit(commands.main(sys.argv[1:]))
"""


def capture(workload: list[str]) -> tuple[list[list[bytes]], int, int]:
    """(batches of raw records, the sensor's wall-clock offset, the sandbox's cgroup id)."""
    from monitor.sandbox import cgroup as cg
    from monitor.sensor import Sensor

    sensor = Sensor()
    sandbox = cg.create("bench-exec-path")
    sensor.add_cgroup(sandbox.cgroup_id)
    batches: list[list[bytes]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.wait(READ_EVERY_S):
            if records := sensor._read():  # raw records: decoding is a stage measured below
                batches.append(records)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        subprocess.run(workload, check=True, capture_output=True, preexec_fn=cg.joiner(sandbox))
    finally:
        stop.set()
        reader.join()
        while records := sensor._read():
            batches.append(records)
        cg.remove(sandbox)
        sensor.close()
    return batches, sensor.decoder.wall_offset, sandbox.cgroup_id


def replay(batches: list[list[bytes]], wall_offset: int, cgroup_id: int) -> dict[str, int]:
    """CPU ns spent in each stage over all the batches, through fresh stage objects."""
    from monitor.enrich import Enricher
    from monitor.llm import ToolCallLinker
    from monitor.policy import DEFAULT_RULES_DIR, load_rules
    from monitor.sandbox import Sandbox, SandboxRegistry
    from monitor.sensor.decode import RecordDecoder
    from monitor.sinks.journal import JournalSink

    registry = SandboxRegistry()
    registry.add(Sandbox(id="sb-bench", name="bench", runtime="cgroup", cgroup_id=cgroup_id))
    decoder, enricher = RecordDecoder(wall_offset), Enricher(registry, ToolCallLinker())
    rules = load_rules([DEFAULT_RULES_DIR])
    spent = dict.fromkeys(STAGES, 0)
    clock = time.thread_time_ns
    with tempfile.TemporaryDirectory(prefix="smbench-exec-path-") as tmp:
        journal = JournalSink(tmp)
        for batch in batches:
            started = clock()
            events = decoder.decode_batch(batch)
            decoded = clock()
            for event in events:
                enricher.enrich(event)
            enriched = clock()
            for event in events:
                rules.evaluate(event)
            judged = clock()
            for event in events:
                journal.on_event(event)
            spent["decode"] += decoded - started
            spent["enrich"] += enriched - decoded
            spent["rules"] += judged - enriched
            spent["journal"] += clock() - judged
        journal.close()
    return spent


def loop_cpu_ns(workload: list[str]) -> int:
    """Thread CPU of `monitor run`'s judging loop (default pack, everything journaled)."""
    with tempfile.TemporaryDirectory(prefix="smbench-exec-path-") as tmp:
        proc = subprocess.run([PYTHON, "-c", _TIMED_RUN, "run", "--standalone", "-q", "--json", f"{tmp}/out.jsonl",
                               "--no-json-events", "--journal", f"{tmp}/journal", "--", *workload],
                              capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("LOOP_CPU_NS")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"monitor run failed ({proc.returncode}): {proc.stderr[-500:]}")
    return int(lines[-1].split()[1])


def measure(iterations: int, passes: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smbench-") as tmp:
        workload = [build_workload(Path(tmp)), "exec", str(iterations)]
        batches, wall_offset, cgroup_id = capture(workload)
        records = sum(map(len, batches))
        print(f"captured {iterations} iterations: {records} records in {len(batches)} batches", flush=True)
        best: dict[str, int] = {}
        for _ in range(passes):
            spent = replay(batches, wall_offset, cgroup_id)
            best = {stage: min(best.get(stage, ns), ns) for stage, ns in spent.items()}
        per_iteration = {stage: ns / iterations / 1e3 for stage, ns in best.items()}
        print(f"replayed, CPU us per iteration (best of {passes}): "
              + "  ".join(f"{stage} {us:.1f}" for stage, us in per_iteration.items())
              + f"  total {sum(per_iteration.values()):.1f}", flush=True)
        loops = [loop_cpu_ns(workload) / iterations / 1e3 for _ in range(runs)]
    loop_us = statistics.median(loops)
    print(f"monitor run's judging loop: {loop_us:.1f} us of thread CPU per iteration (median of {runs})")
    return {"iterations": iterations, "records": records, "batches": len(batches),
            "replay_us_per_iteration": per_iteration, "loop_us_per_iteration": loop_us,
            "loop_us_runs": loops}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="200 iterations, one pass, one run")
    parser.add_argument("--iterations", type=int, default=4000)
    args = parser.parse_args(argv)
    if args.smoke:
        result = measure(200, passes=1, runs=1)
    else:
        result = measure(args.iterations, passes=5, runs=3)
        print(f"saved {save('exec_path', result)}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
