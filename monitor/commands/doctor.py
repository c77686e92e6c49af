"""`monitor doctor`: what this host supports, what is missing, and how to fix each missing piece.
Exit 1 when something required is missing."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from monitor.checks import Check
from monitor.gvisor.install import doctor_checks as gvisor_checks
from monitor.llm.probe import doctor_checks as llm_checks
from monitor.sandbox.cgroup import cgroup_v2_root
from monitor.sensor import Sensor, probe_names

FIX_SETUP = "run scripts/setup.sh as root"


def _kernel_version() -> tuple[int, int]:
    parts = platform.release().split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def _checks() -> list[Check]:
    checks = [Check("root", os.geteuid() == 0, f"euid {os.geteuid()}", "run as root (sudo)")]
    major, minor = _kernel_version()
    checks.append(Check("kernel >= 5.8 (ring buffer)", (major, minor) >= (5, 8), platform.release(),
                        "a kernel with BPF ring buffer support (5.8 or later)"))
    checks.append(Check("BTF", Path("/sys/kernel/btf/vmlinux").exists(), "/sys/kernel/btf/vmlinux",
                        "a kernel built with CONFIG_DEBUG_INFO_BTF", required=False))
    tracefs = Path("/sys/kernel/tracing/events/syscalls").is_dir()
    checks.append(Check("tracefs", tracefs, "/sys/kernel/tracing", "mount -t tracefs tracefs /sys/kernel/tracing"))
    try:
        root = cgroup_v2_root()
        checks.append(Check("cgroup v2", True, str(root)))
    except Exception as exc:
        checks.append(Check("cgroup v2", False, str(exc), "mount -t cgroup2 none /sys/fs/cgroup"))
    build = Path(f"/lib/modules/{platform.release()}/build")
    checks.append(Check("kernel headers", (build / "include").exists(), f"{build} -> {os.path.realpath(build)}",
                        FIX_SETUP + " (links Debian's linux-headers where bcc looks)"))
    bcc = importlib.util.find_spec("bcc") is not None
    checks.append(Check("bcc", bcc, "python3-bpfcc importable" if bcc else "not importable",
                        "apt-get install python3-bpfcc; " + FIX_SETUP))
    checks += _probe_checks(tracefs)
    checks += _optional_checks()
    return checks


def _probe_checks(tracefs: bool) -> list[Check]:
    checks = []
    missing = [tp for tp in probe_names()
               if not Path("/sys/kernel/tracing/events", *tp.split(":")).is_dir()] if tracefs else []
    checks.append(Check("tracepoints", tracefs and not missing,
                        f"{len(probe_names())} used" + (f"; missing: {', '.join(missing)}" if missing else ""),
                        "a kernel with CONFIG_FTRACE_SYSCALLS"))
    if os.geteuid() != 0:
        return checks
    try:
        sensor = Sensor()
        checks.append(Check("probes compile + attach", True, f"{sensor.attach_seconds:.2f} s"))
        sensor.close()
    except Exception as exc:
        checks.append(Check("probes compile + attach", False, str(exc)[:200], FIX_SETUP))
    return checks


def _optional_checks() -> list[Check]:
    checks = [Check(c.name, c.ok, c.detail, c.fix, required=False) for c in gvisor_checks()]
    docker = Path("/var/run/docker.sock").exists()
    checks.append(Check("Docker engine", docker, "/var/run/docker.sock" if docker else "no engine socket",
                        "apt-get install docker.io and start dockerd", required=False))
    checks += [Check(c.name, c.ok, c.detail, c.fix, required=False) for c in llm_checks()]
    return checks


def doctor(print_fn: Callable[..., None] | None = None) -> int:
    checks = _checks()
    table = Table("check", "", "detail", "fix")
    for c in checks:
        mark = "[green]ok[/green]" if c.ok else ("[red]MISSING[/red]" if c.required else "[yellow]optional[/yellow]")
        table.add_row(c.name, mark, c.detail, "" if c.ok else c.fix)
    (print_fn or Console().print)(table)
    return 1 if any(c.required and not c.ok for c in checks) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this host supports, what is missing, how to fix it")
    p.set_defaults(handler=lambda args: doctor())
