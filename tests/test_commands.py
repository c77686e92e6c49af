"""The command line: every command module imports and registers (none is ever left out
silently), `main` imports only the command it runs, and `python -m monitor` is the entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.commands import COMMANDS, build_parser

ROOT_ARGS = {"cwd": str(Path(__file__).resolve().parents[1])}


def test_every_command_registers() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert sorted(subparsers.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "monitor", command, "--help"], capture_output=True,
                            text=True, timeout=120, **ROOT_ARGS)
    assert result.returncode == 0 and f"usage: monitor {command}" in result.stdout, result.stderr


def test_monitor_run_imports_no_engine_of_its_own() -> None:
    """`monitor run` through the resident monitor starts without the probes, the rule engine, the
    exporters or the Docker client: none of them is imported to parse and connect."""
    probe = ("import sys\nfrom monitor.commands import build_parser\nbuild_parser('run')\n"
             "heavy = [m for m in ('bcc', 'cel_expr_python', 'opentelemetry', 'docker', 'monitor.sensor',"
             " 'monitor.policy', 'monitor.engine.assemble') if m in sys.modules]\nprint(heavy)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, **ROOT_ARGS)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_a_command_that_cannot_load_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.commands as commands

    monkeypatch.setattr(commands, "COMMANDS", (*COMMANDS, "nonexistent"))
    with pytest.raises(ModuleNotFoundError, match="monitor.commands.nonexistent"):
        commands.build_parser()
