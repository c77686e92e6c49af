"""Workload overhead: the same workloads bare, under `monitor run` (default rule pack, every event
journaled), under auditd (execve/openat/connect rules), and with empty BPF programs on the
probes' tracepoints (what the hooks alone cost: the floor), interleaved and repeated in one run;
median ratios. The exec storm also runs under three variants of the monitor (exec_variants()): its
judging loop left to the scheduler (`--cpu off`), the pack plus a kill rule on execs that never
fires (every exec then wakes the reader at once), and the pack plus the SigmaHQ Linux rules
(tests/fixtures/sigma, converted at load).

    python -m tests.bench.overhead [--smoke] [--repeats N (9)] [--workload WORD]  (WORD: run only those)

Ratios are given twice: of the medians (the headline), and of the best run of each (the least
disturbed by other tenants of a shared VM, as timeit reports).

Each workload times its own loop (tests/bench/workload.c), so the monitor's start-up (BPF
compile and attach, measured separately as `attach_s`) is not counted as workload overhead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench.common import (
    Monitored,
    auditd,
    build_workload,
    empty_hooks,
    median,
    run_bare,
    run_monitored,
    save,
)

AGENT_SCRIPT = r"""
set -e
start=$(date +%s%N)
cd "$WORK"
rm -rf clone && git clone -q "$REPO" clone && cd clone
gcc -O0 -o hello hello.c && ./hello > /dev/null
python3 -m unittest -q test_small 2>/dev/null
end=$(date +%s%N)
echo $((end - start))
"""


KILL_RULE = """- rule: Kill netcat (never fires here)
  description: a kill rule on execs, so every exec record wakes the reader at once
  when: [exec]
  condition: event.process.executable == "/usr/bin/nc"
  action: kill
  severity: high
  tags: [T1095]
"""
PACK = str(Path(__file__).resolve().parents[2] / "rules")
SIGMA = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "sigma" / "rules" / "linux"
SIGMA_DIRS = [str(SIGMA / name) for name in ("process_creation", "file_event", "network_connection")]


def exec_variants(base: Path) -> dict[str, list[str]]:
    """`monitor run` options of the exec storm's extra columns (the row's `<name>_overhead_pct`)."""
    kill_rule = base / "kill-rule.yaml"
    kill_rule.write_text(KILL_RULE)
    sigma = [arg for folder in SIGMA_DIRS for arg in ("--rules", folder)]
    return {"unpinned": ["--cpu", "off"], "kill_rule": ["--rules", PACK, "--rules", str(kill_rule)],
            "sigma": ["--rules", PACK, *sigma]}


def run_journaled(cmd: list[str], *options: str) -> Monitored:
    """`monitor run` with every event journaled; JSON carries alerts and the summary."""
    with tempfile.TemporaryDirectory(prefix="smbench-journal-") as journal:
        return run_monitored(cmd, "--no-json-events", "--journal", journal, *options)


def overheads(row: dict[str, Any], prefix: str, times: list[int], bare: list[int]) -> None:
    """`<prefix>_overhead_pct` of the medians, and `_best_pct` of the best runs: the least
    disturbed of each (this VM is shared)."""
    row[f"{prefix}_overhead_pct"] = (median(times) / median(bare) - 1) * 100
    row[f"{prefix}_overhead_best_pct"] = (min(times) / min(bare) - 1) * 100


def shown(label: str, row: dict[str, Any], prefix: str) -> str:
    return f"  {label} {row[f'{prefix}_overhead_pct']:+6.1f}% (best {row[f'{prefix}_overhead_best_pct']:+.1f}%)"


def make_repo(base: Path) -> Path:
    repo = base / "repo"
    repo.mkdir()
    (repo / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hi");return 0;}\n')
    (repo / "test_small.py").write_text(
        "import unittest\nclass T(unittest.TestCase):\n" +
        "".join(f"    def test_{i}(self):\n        self.assertEqual({i} + 1, {i + 1})\n" for i in range(50)))
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(base), "PATH": "/usr/bin:/bin"}
    for cmd in (["git", "init", "-q"], ["git", "add", "."],
                ["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    return repo


def workloads(binary: str, base: Path, smoke: bool) -> dict[str, list[str]]:
    scale = 10 if smoke else 1
    repo = make_repo(base)
    (base / "work").mkdir()
    agent = ["env", f"WORK={base / 'work'}", f"REPO={repo}", "HOME=" + str(base), "GIT_CONFIG_NOSYSTEM=1",
             "bash", "-c", AGENT_SCRIPT]
    return {"exec storm (2,000 x /bin/true)": [binary, "exec", str(2000 // scale)],
            "open storm (100,000 open/close)": [binary, "open", str(100_000 // scale)],
            "connect storm (20,000 loopback)": [binary, "connect", str(20_000 // scale)],
            "agent workload (clone, cc, tests)": agent}


def measure(repeats: int, smoke: bool, only: str | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"workloads": {}}
    with tempfile.TemporaryDirectory(prefix="smbench-") as tmp:
        base = Path(tmp)
        binary = build_workload(base)
        for name, cmd in workloads(binary, base, smoke).items():
            if only and only not in name:
                continue
            bare: list[int] = []
            monitored: list[int] = []
            audited: list[int] = []
            hooked: list[int] = []
            summaries: list[dict[str, Any]] = []
            variants = exec_variants(base) if cmd[1:2] == ["exec"] else {}
            varied: dict[str, list[int]] = {variant: [] for variant in variants}
            run_bare(cmd)  # warm caches
            for _ in range(repeats):  # interleaved: noise hits all three alike
                bare.append(run_bare(cmd))
                run = run_journaled(cmd)  # the default pack
                monitored.append(run.elapsed_ns)
                summaries.append(run.summary)
                for variant, options in variants.items():
                    varied[variant].append(run_journaled(cmd, *options).elapsed_ns)
                with auditd() as audit_on:
                    if audit_on:
                        audited.append(run_bare(cmd))
                with empty_hooks() as hooks_on:
                    if hooks_on:
                        hooked.append(run_bare(cmd))
            events = [s.get("events", 0) for s in summaries]
            lost = [sum((s.get("lost") or {}).values()) for s in summaries]
            row: dict[str, Any] = {"bare_ms": median(bare) / 1e6, "monitored_ms": median(monitored) / 1e6,
                                   "events_per_run": median(events), "lost_events_total": sum(lost),
                                   "events_per_s_sustained": median(events) / (median(monitored) / 1e9)}
            overheads(row, "monitor", monitored, bare)
            if audited:
                row["auditd_ms"] = median(audited) / 1e6
                overheads(row, "auditd", audited, bare)
            if hooked:  # empty programs on the same tracepoints: the floor for any probe body
                row["empty_hooks_ms"] = median(hooked) / 1e6
                overheads(row, "empty_hooks", hooked, bare)
            for variant, times in varied.items():
                overheads(row, variant, times, bare)
            results["workloads"][name] = row
            print(f"{name:36} bare {row['bare_ms']:8.1f} ms" + shown("monitor", row, "monitor")
                  + (shown("auditd", row, "auditd") if audited else "  auditd n/a")
                  + (shown("empty hooks", row, "empty_hooks") if hooked else "")
                  + "".join(shown(variant.replace("_", " "), row, variant) for variant in varied)
                  + f"  events {row['events_per_run']:.0f}  lost {row['lost_events_total']}", flush=True)
    results["attach_s"] = attach_seconds()
    print(f"probes compiled+attached in {results['attach_s']:.2f} s")
    return results


def attach_seconds() -> float:
    code = "from monitor.sensor import Sensor; s=Sensor(); print(s.attach_seconds)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([str(root / ".venv/bin/python"), "-c", code], capture_output=True, text=True, cwd=root)
    return float(out.stdout.strip() or "nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tenth of the work, one repeat")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--workload", help="only the workloads whose name contains this (not saved)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    result = measure(1 if args.smoke else args.repeats, args.smoke, args.workload)
    result["seconds"] = round(time.monotonic() - started, 1)
    if not args.smoke and not args.workload:
        print(f"saved {save('overhead', result)}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
