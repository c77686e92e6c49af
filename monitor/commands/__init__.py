"""The command line: one module per command in this folder, one `main`.

Each module offers `register(subparsers)`, which adds its parser and sets `handler` (a function of
the parsed arguments returning the exit status). Commands are thin: they parse, build the
configuration and call the assembly (monitor/engine). Every failure a user can cause is one line
on stderr and exit status 1; no traceback. A command module that cannot be imported fails
`monitor` as a whole, loudly: none is ever left out silently.
"""

from __future__ import annotations

import argparse
import sys

from monitor.commands import daemon, demo, doctor, gvisor, replay, rules, run, sandbox, timeline
from monitor.engine.run import RunError

COMMANDS = (run, daemon, replay, timeline, rules, sandbox, gvisor, doctor, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitor", description="Runtime monitor for AI agents in sandboxes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RunError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
