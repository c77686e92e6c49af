"""The command line: one module per command in this folder, one `main`.

Each module offers `register(subparsers)`, which adds its parser and sets `handler` (a function of
the parsed arguments returning the exit status). Commands are thin: they parse, build the
configuration and call the engine. Every failure a user can cause is one line on stderr and exit
status 1; no traceback.

`main` imports only the module of the command it runs (all of them for `monitor --help` or an
unknown word): `monitor run` through the resident monitor must start in tens of milliseconds,
and importing every command's engine costs more than a second. A command module that cannot be
imported fails loudly, never silently left out (tests/test_commands.py checks every one).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from monitor.engine.config import RunError

COMMANDS = ("run", "daemon", "replay", "timeline", "report", "rules", "sandbox", "gvisor", "doctor", "demo")


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"monitor.commands.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser, or only `only`'s (the one about to run)."""
    parser = argparse.ArgumentParser(prog="monitor", description="Runtime monitor for AI agents in sandboxes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (only,) if only else COMMANDS:
        _module(name).register(sub)
    return parser


def _command_word(argv: list[str]) -> str | None:
    word = next((arg for arg in argv if not arg.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_word(argv)).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RunError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
