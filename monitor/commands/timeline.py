"""`monitor timeline JOURNAL`: the process tree of each journaled sandbox session."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from monitor.commands.replay import check_sandbox
from monitor.engine.replay import UsageError
from monitor.journal import JournalError, JournalReader
from monitor.timeline import build_timeline, render_session


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("timeline", help="process tree of a journaled sandbox session",
                                   description="The process tree of each sandbox session in a journal, with "
                                               "each process's files and connections, alerts marked.")
    parser.add_argument("journal", metavar="JOURNAL", help="journal directory (monitor run --journal DIR)")
    parser.add_argument("--sandbox", metavar="ID", help="only this sandbox (id)")
    parser.add_argument("--json", action="store_true", help="one JSON object per session")
    parser.set_defaults(handler=timeline_main)
    return parser


def timeline_main(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        check_sandbox(JournalReader(args.journal), args.sandbox)
        sessions = build_timeline(args.journal, args.sandbox,
                                  on_warning=lambda w: err.print(f"[yellow]warning:[/] {escape(w)}"))
    except (JournalError, UsageError) as exc:
        print(f"monitor timeline: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for session in sessions:
            sys.stdout.write(json.dumps(session.to_dict(), default=str) + "\n")
        return 0
    if not sessions:
        err.print("no sandbox session in this journal" + (f" for {args.sandbox}" if args.sandbox else ""))
        return 0
    out = Console(highlight=False)
    for session in sessions:
        out.print(render_session(session))
    return 0


