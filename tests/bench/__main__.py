"""Every benchmark in one go: `python -m tests.bench [--smoke] [--only NAME ...]`.

Runs each script in tests/bench/ as its own process (one run, same machine state), prints each
one's figures as they come, then one table of the headline figures against the targets, and
writes everything to tests/bench/results/all.json for tracking. `--smoke` runs each in seconds
(CI runs that, through tests/test_bench_smoke.py, to check they work; figures need the full run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "bench" / "results"
PYTHON = str(ROOT / ".venv" / "bin" / "python")

# name -> extra arguments for a full run
BENCHMARKS: dict[str, list[str]] = {
    "overhead": [], "exec_path": [], "reaction": [], "capacity": [], "policy": [], "journal": [], "otlp": [], "otlp_sdk": [],
    "tls": [], "gvisor": [], "startup": [], "docker_sandboxes": [], "fuzz_rules": [], "fuzz_gvisor": [], "report": [], "outputs": [],
}


def run_one(name: str, smoke: bool, timeout: float) -> dict[str, object]:
    args = [PYTHON, "-m", f"tests.bench.{name}", *(["--smoke"] if smoke else BENCHMARKS[name])]
    started = time.monotonic()
    try:
        proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
        status, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        status, out, err = -1, str(exc.stdout or ""), f"timed out after {timeout:.0f} s"
    lines = [line for line in out.splitlines() if line.strip()]
    return {"name": name, "status": status, "seconds": round(time.monotonic() - started, 1),
            "output": lines, "error": err.strip().splitlines()[-3:] if status else []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run every benchmark and print one table")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    console = Console()
    results = []
    for name in args.only or BENCHMARKS:
        console.rule(name)
        result = run_one(name, args.smoke, args.timeout)
        for line in result["output"]:
            console.print(line, markup=False, highlight=False)
        if result["status"]:
            console.print(f"[red]{name} failed ({result['status']}): {' '.join(result['error'])}[/red]")
        results.append(result)
    table = Table("benchmark", "status", "seconds", "headline (last line)", title="sandbox-monitor benchmarks")
    for r in results:
        headline = r["output"][-1] if r["output"] else ""
        table.add_row(str(r["name"]), "ok" if r["status"] == 0 else f"FAILED {r['status']}",
                      str(r["seconds"]), headline[:100])
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("smoke.json" if args.smoke else "all.json")).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(r["status"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
