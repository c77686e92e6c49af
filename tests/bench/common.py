"""Shared by the benchmark scripts: build the C workload, run commands bare / under `monitor run`
/ under auditd, medians and ratios, and the JSON record for tracking."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MONITOR = str(ROOT / ".venv" / "bin" / "monitor")
RESULTS_DIR = ROOT / "tests" / "bench" / "results"


def build_workload(out_dir: Path) -> str:
    binary = out_dir / "workload"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(Path(__file__).with_name("workload.c"))],
                   check=True)
    return str(binary)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class Monitored:
    """The workload's own timing (stdout) plus the monitor's summary."""
    elapsed_ns: int
    summary: dict[str, Any] = field(default_factory=dict)


def run_bare(cmd: list[str]) -> int:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def run_monitored(cmd: list[str], *options: str) -> Monitored:
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = Path(tmp) / "out.jsonl"
        proc = subprocess.run([MONITOR, "run", "--standalone", "-q", "--json", str(summary_path), *options, "--", *cmd],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"monitor run failed ({proc.returncode}): {proc.stderr[-500:]}")
        summary = {}
        with open(summary_path) as f:
            for line in f:
                if line.startswith('{"type":"summary"'):
                    summary = json.loads(line)
    return Monitored(int(proc.stdout.strip().splitlines()[-1]), summary)


@contextmanager
def empty_hooks() -> Iterator[bool]:
    """Every tracepoint the probes use, each with a BPF program that returns at once: what the
    hooks themselves cost the workload, a floor no probe body can go under. Yields False where
    bcc cannot load here."""
    try:
        from bcc import BPF

        from monitor.sensor import detach_tracepoints, probe_names
    except ImportError:
        yield False
        return
    text = "#include <linux/capability.h>\n" + "".join(f"TRACEPOINT_PROBE({category}, {event}) {{ return 0; }}\n"
                   for category, event in (name.split(":") for name in probe_names()))
    bpf = BPF(text=text)
    try:
        yield True
    finally:
        detach_tracepoints(bpf)
        bpf.cleanup()


AUDIT_RULES = [["-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", "smbench"],
               ["-a", "always,exit", "-F", "arch=b64", "-S", "openat", "-k", "smbench"],
               ["-a", "always,exit", "-F", "arch=b64", "-S", "connect", "-k", "smbench"]]


@contextmanager
def auditd() -> Iterator[bool]:
    """Debian's auditd with rules for execve, openat and connect (the classic baseline).
    Yields False where auditd cannot run here."""
    if not shutil.which("auditd") or os.geteuid() != 0:
        yield False
        return
    started = None
    if subprocess.run(["pgrep", "-x", "auditd"], capture_output=True).returncode != 0:
        started = subprocess.Popen(["auditd", "-f", "-n"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    try:
        ok = True
        try:
            for rule in AUDIT_RULES:
                subprocess.run(["auditctl", *rule], check=True, capture_output=True)
            subprocess.run(["auditctl", "-e", "1"], check=True, capture_output=True)
        except subprocess.CalledProcessError:
            ok = False
        yield ok
    finally:
        subprocess.run(["auditctl", "-D", "-k", "smbench"], capture_output=True)
        subprocess.run(["auditctl", "-e", "0"], capture_output=True)
        if started is not None:
            started.terminate()
            started.wait(10)


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
