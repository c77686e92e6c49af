"""`monitor report JOURNAL [--sandbox ID] [--since T] [--until T] [--rules PATH]... --out FILE.html`:
a journaled session as one self-contained web page (monitor/report/)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from monitor.commands.replay import check_sandbox, journal_window_arguments
from monitor.engine.replay import ReplayOptions, UsageError, load_replay_rules, parse_time, replay_journal
from monitor.journal import JournalError, JournalReader
from monitor.policy import PolicyError
from monitor.report import Replayed, ReportOptions, write_report


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report", help="a journaled session as one self-contained web page",
                                   description="Write a forensic report of a journal's sandbox sessions: "
                                               "header, timeline, process tree, alerts, model and tool "
                                               "calls, filters; one HTML file that needs no network.")
    journal_window_arguments(parser)
    parser.add_argument("--rules", action="append", metavar="PATH",
                        help="also show what these rules would have flagged (repeatable)")
    parser.add_argument("--out", required=True, metavar="FILE.html", help="the page to write")
    parser.set_defaults(handler=report_main)
    return parser


def replayed_with(options: ReportOptions, rules: list[str]) -> Replayed:
    """replay with `rules` over the same window: its per-rule difference with the recording, and the
    alerts the recording lacks. PolicyError on a bad rule file."""
    result = replay_journal(ReplayOptions(journal=options.journal, rules=rules, sandbox=options.sandbox,
                                          since_ns=options.since_ns, until_ns=options.until_ns),
                            load_replay_rules(rules))
    new_alerts = [a for a in result.alerts if (a.rule, a.event.id) not in result.recorded_pairs]
    return Replayed(rules=list(rules), diff=[entry.to_dict() for entry in result.diff()], new_alerts=new_alerts)


def report_main(args: argparse.Namespace) -> int:
    try:
        options = ReportOptions(journal=args.journal, sandbox=args.sandbox,
                                since_ns=parse_time(args.since) if args.since else None,
                                until_ns=parse_time(args.until) if args.until else None)
        check_sandbox(JournalReader(options.journal), options.sandbox)
        replayed = replayed_with(options, args.rules) if args.rules else None
        data, size = write_report(options, args.out, replayed)
    except (UsageError, JournalError, PolicyError) as exc:
        print(f"monitor report: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"monitor report: {args.out}: cannot write: {exc.strerror}", file=sys.stderr)
        return 1
    sessions = data["sessions"]
    events = sum(s["events"] for s in sessions)
    print(f"monitor report: {args.out} ({size:,} bytes): {len(sessions)} session(s), {events:,} events, "
          f"{sum(s['alerts_total'] for s in sessions)} alert(s)", file=sys.stderr)
    return 0
