"""Drive the real `monitor run` (the CLI contract) and read back its JSON lines.

    result = monitor_run(["bash", "-c", "..."], "--rules", "rules/")
    result.events("exec"), result.alerts, result.actions, result.summary, result.returncode
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MONITOR = str(ROOT / ".venv" / "bin" / "monitor")
DEFAULT_PACK = str(ROOT / "rules")
# How monitor_run() runs: "standalone", or through the resident daemon at RESIDENT["socket"]
# (tests/conftest.py runs every e2e test that uses monitor_run both ways).
RESIDENT: dict[str, str | None] = {"mode": "standalone", "socket": None}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for eBPF and cgroups (CI runs as root)")


@dataclass
class RunResult:
    returncode: int
    records: list[dict[str, Any]]
    stderr: str
    stdout: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "event" and (kind is None or r["kind"] == kind)]

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "alert"]

    @property
    def actions(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == "action"]

    def alert_rules(self) -> set[str]:
        return {a["rule"] for a in self.alerts}

    def execs(self, executable_suffix: str) -> list[dict[str, Any]]:
        return [e for e in self.events("exec") if e["process"]["executable"].endswith(executable_suffix)]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def monitor_run(cmd: list[str] | str, *options: str, timeout: float = 180,
                env: dict[str, str] | None = None, cwd: str | None = None) -> RunResult:
    """Run CMD (a list, or a string for bash -c) under `monitor run --json FILE -q [options]`."""
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    with tempfile.TemporaryDirectory(prefix="smtest-") as tmp:
        out = Path(tmp) / "out.jsonl"
        proc = subprocess.run([MONITOR, "run", "--json", str(out), "-q", *mode_options(options), *options,
                               "--", *argv],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, cwd=cwd)
        records = read_jsonl(out) if out.exists() else []
    summary = next((r for r in records if r["type"] == "summary"), {})
    return RunResult(proc.returncode, records, proc.stderr, proc.stdout, summary)


def mode_options(options: tuple[str, ...]) -> list[str]:
    """--standalone, or --connect to the resident daemon (which has no rules of its own: the run
    brings what a standalone run would load, the default pack unless told otherwise)."""
    if RESIDENT["mode"] != "resident" or "gvisor" in options:
        return ["--standalone"]
    brings_rules = any(o in ("--rules", "--no-rules") or o.startswith("--rules=") for o in options)
    return ["--connect", str(RESIDENT["socket"]), *([] if brings_rules else ["--rules", DEFAULT_PACK])]


def fork_execl(tmp_path: Path, path: str, *args: str) -> str:
    """A C program whose forked child execl()s string literals: in the child those pages are not
    mapped yet when execve is entered, so the probe cannot read them from user memory."""
    quoted = ", ".join(f'"{a}"' for a in (path, *args))
    source = tmp_path / "fork_execl.c"
    source.write_text("#include <unistd.h>\n#include <sys/wait.h>\nint main(void) {\n"
                      f"    if (fork() == 0) {{ execl({quoted}, (char *)0); _exit(127); }}\n"
                      "    int status = 0; wait(&status); return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);\n}\n")
    binary = tmp_path / "fork_execl"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return str(binary)
