"""This tree's `monitor run` against another build's, on the same storms, interleaved in one run:
how much a change moved the overhead (docs/performance.md records each such comparison).

    python -m tests.bench.ab --other /path/to/other/.venv/bin/monitor [--repeats 7] [--smoke]

Each repeat runs the workload bare, under this tree's monitor and under the other, in turn
(default pack, every event journaled, standalone), so drift on a shared machine hits all three
alike; medians and best runs are reported as overhead against bare.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.common import MONITOR, build_workload, median, run_bare, save


def run_with(monitor: str, cmd: list[str], standalone: bool) -> int:
    """The workload's own elapsed ns under `monitor run` (journaled, default pack)."""
    with tempfile.TemporaryDirectory(prefix="smbench-ab-") as tmp:
        options = ["--standalone"] if standalone else []
        proc = subprocess.run([monitor, "run", *options, "-q", "--no-json-events", "--json", f"{tmp}/out.jsonl",
                               "--journal", f"{tmp}/journal", "--", *cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{monitor} run failed ({proc.returncode}): {proc.stderr[-400:]}")
        return int(proc.stdout.strip().splitlines()[-1])


def knows_standalone(monitor: str) -> bool:
    return "--standalone" in subprocess.run([monitor, "run", "--help"], capture_output=True, text=True).stdout


def pct(value: float, base: float) -> float:
    return round((value / base - 1) * 100, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", required=True, help="the other build's monitor executable")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    scale = 20 if args.smoke else 1
    repeats = 1 if args.smoke else args.repeats
    builds = {"this": (MONITOR, knows_standalone(MONITOR)), "other": (args.other, knows_standalone(args.other))}
    result: dict[str, Any] = {"other": args.other, "repeats": repeats, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="smbench-ab-") as tmp:
        binary = build_workload(Path(tmp))
        storms = {"exec storm": [binary, "exec", str(2000 // scale)],
                  "open storm": [binary, "open", str(100_000 // scale)],
                  "connect storm": [binary, "connect", str(20_000 // scale)]}
        for name, cmd in storms.items():
            times: dict[str, list[int]] = {"bare": [], **{b: [] for b in builds}}
            for _ in range(repeats):
                times["bare"].append(run_bare(cmd))
                for build, (monitor, standalone) in builds.items():
                    times[build].append(run_with(monitor, cmd, standalone))
            bare = median(times["bare"])
            row = {f"{b}_overhead_pct": pct(median(times[b]), bare) for b in builds}
            row.update({f"{b}_best_overhead_pct": pct(min(times[b]), min(times["bare"])) for b in builds})
            result["workloads"][name] = row
            print(f"{name}: this {row['this_overhead_pct']:+.1f} % (best {row['this_best_overhead_pct']:+.1f}), "
                  f"other {row['other_overhead_pct']:+.1f} % (best {row['other_best_overhead_pct']:+.1f})")
    if not args.smoke:
        save("ab", result)
    return result


if __name__ == "__main__":
    main()
