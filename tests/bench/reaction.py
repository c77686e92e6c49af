"""Reaction: how fast a rule's action lands, on fresh sandboxes.

  kill   a sandbox reads a secret file, a `kill` rule matches; measured from the violating
         syscall's kernel timestamp (the open event) to the sandbox gone (the kernel timestamp of
         the last exit in it). p50 / p99 over N fresh sandboxes.
  deny   a sandbox execs a script whose first act would write a marker; an in-kernel `deny` rule
         matches. Counted: markers written (denied programs that ran any instruction; must be 0).

    python -m tests.bench.reaction [--smoke] [--n 200]

One Sensor (probes compiled once) serves all the sandboxes, as in the daemon; each run is a
fresh cgroup sandbox with its own pipeline, exactly `monitor run`'s code path.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from monitor.engine.run import RunOptions, run
from monitor.sensor import Sensor
from tests.bench.common import p, save

RULES = """\
- rule: Bench kill on secret
  description: reaction benchmark
  when: [open]
  condition: event.file.path == "{secret}"
  severity: critical
  action: kill
  tags: [T1552]
- rule: Bench deny script
  description: reaction benchmark
  when: [exec]
  condition: event.process.executable.startsWith("{bin_dir}/")
  severity: critical
  action: deny
  tags: [T1059]
"""


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kill_latency_ms(out: Path, secret: str) -> float | None:
    events = [r for r in records(out) if r["type"] == "event"]
    violation = next((e["time_ns"] for e in events if e["kind"] == "open"
                      and e.get("file", {}).get("path") == secret), None)
    exits = [e["time_ns"] for e in events if e["kind"] == "exit"]
    if violation is None or not exits:
        return None
    return (max(exits) - violation) / 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="reaction time of kill and deny")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    n = 5 if args.smoke else args.n
    sensor = Sensor()
    latencies: list[float] = []
    ran_anyway = 0
    statuses: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="smreact-") as tmp:
        base = Path(tmp)
        secret = base / "secret"
        secret.write_text("x")
        bin_dir = base / "bin"
        bin_dir.mkdir()
        rules = base / "rules.yaml"
        rules.write_text(RULES.format(secret=secret, bin_dir=bin_dir))
        for i in range(n):
            out = base / f"kill-{i}.jsonl"
            # the agent keeps working after the violation: the kill must stop it
            status = run(RunOptions(cmd=["bash", "-c", f"cat {secret} >/dev/null; sleep 5"], quiet=True,
                                    json=str(out), rules=[str(rules)], llm_capture="off"), sensor=sensor)
            statuses[status] = statuses.get(status, 0) + 1
            latency = kill_latency_ms(out, str(secret))
            if latency is not None:
                latencies.append(latency)
            marker = base / f"marker-{i}"
            script = bin_dir / f"evil-{i}.sh"
            script.write_text(f"#!/bin/sh\necho ran > {marker}\n")
            script.chmod(0o755)
            run(RunOptions(cmd=[str(script)], quiet=True, rules=[str(rules)], llm_capture="off"), sensor=sensor)
            ran_anyway += marker.exists()
    sensor.close()
    result = {"n": n, "kill_p50_ms": p(latencies, 0.5), "kill_p99_ms": p(latencies, 0.99),
              "kill_max_ms": max(latencies, default=float("nan")), "kill_measured": len(latencies),
              "kill_exit_statuses": statuses, "deny_programs_that_ran": ran_anyway}
    print(f"kill: p50 {result['kill_p50_ms']:.2f} ms  p99 {result['kill_p99_ms']:.2f} ms  "
          f"(n={len(latencies)}, exit statuses {statuses})")
    print(f"deny: {ran_anyway} of {n} denied programs ran an instruction")
    if not args.smoke:
        print(f"saved {save('reaction', result)}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
