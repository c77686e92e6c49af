"""`monitor rules lint|test PATH...`: validate rule files, run their fixtures."""

from __future__ import annotations

import argparse

from monitor.policy import DEFAULT_RULES_DIR
from monitor.policy.tooling import lint, test


def register(sub: argparse._SubParsersAction) -> None:
    """`monitor rules lint PATH...` and `monitor rules test PATH...` (default: the shipped pack)."""
    rules = sub.add_parser("rules", help="validate rule files and run their fixtures")
    actions = rules.add_subparsers(dest="rules_command", required=True)
    for name, function, text in (("lint", lint, "validate rule files; file:line messages, exit 1 on error"),
                                 ("test", test, "run the fixtures beside each rule file; exit 1 on a failure")):
        p = actions.add_parser(name, help=text)
        p.add_argument("paths", nargs="*", metavar="PATH",
                       help=f"rule file or folder (default: {DEFAULT_RULES_DIR})")
        p.set_defaults(handler=lambda args, run=function: run(args.paths or [str(DEFAULT_RULES_DIR)]))
