"""`monitor replay JOURNAL`: re-judge a journal with (new) rules; never acts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from monitor.engine.replay import (
    ReplayOptions,
    ReplayResult,
    RuleDiff,
    UsageError,
    load_replay_rules,
    otlp_sink,
    parse_time,
    replay_journal,
    times,
)
from monitor.event import Alert, rfc3339
from monitor.journal import JournalError, JournalReader
from monitor.outputs import load_outputs
from monitor.outputs.resend import resend_alerts
from monitor.policy import PolicyError
from monitor.yamlfile import YamlError

SEVERITY_STYLE = {"info": "dim", "low": "cyan", "medium": "yellow", "high": "red", "critical": "bold red"}
PROGRESS_AFTER_S = 2.0  # a progress bar appears once a replay has run this long

class _LazyProgress:
    """A rich progress bar over journal bytes that shows itself only on a replay that runs long."""

    def __init__(self, total: int, console: Console, after_s: float = PROGRESS_AFTER_S) -> None:
        self.total = total
        self.console = console
        self.after_s = after_s
        self.started = time.monotonic()
        self.done = 0
        self._progress: Progress | None = None
        self._task: Any = None

    def advance(self, n: int) -> None:
        self.done += n
        if self._progress is None:
            if not self.console.is_terminal or time.monotonic() - self.started < self.after_s:
                return
            self._progress = Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                      TimeRemainingColumn(), console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("replay", total=self.total)
        self._progress.update(self._task, completed=self.done)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _alert_line(alert: Alert) -> str:
    ev = alert.event
    proc = ev.process or {}
    what = ""
    if ev.file:
        what = str(ev.file.get("path", ""))
    elif ev.net:
        what = f"{ev.net.get('address', ev.net.get('query', ''))}:{ev.net.get('port', '')}"
    elif proc.get("args"):
        what = " ".join(str(a) for a in proc["args"])[:120]
    style = SEVERITY_STYLE.get(alert.severity, "")
    act = f" would: {alert.action}" if alert.action != "alert" else ""
    sandbox = (ev.sandbox or {}).get("name") or (ev.sandbox or {}).get("id") or "-"
    return (f"{rfc3339(ev.time_ns)[:23]}Z [{style}]{alert.severity:8}[/] [bold]{escape(alert.rule)}[/]{act} "
            f"[dim]{escape(sandbox)} pid {proc.get('pid', '?')} {escape(str(proc.get('executable', '')))}[/] "
            f"{escape(what)}")


@contextmanager
def _json_out(target: str | None) -> Iterator[IO[str] | None]:
    if target is None:
        yield None
    elif target == "-":
        yield sys.stdout
    else:
        try:
            handle = open(target, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"{target}: cannot write: {exc.strerror}") from None
        try:
            yield handle
        finally:
            handle.close()


def journal_window_arguments(parser: argparse.ArgumentParser) -> None:
    """JOURNAL, --sandbox, --since, --until: which part of a journal a command reads."""
    parser.add_argument("journal", metavar="JOURNAL", help="journal directory (monitor run --journal DIR)")
    parser.add_argument("--sandbox", metavar="ID", help="only this sandbox (id)")
    parser.add_argument("--since", metavar="T", help="from this time (RFC 3339, epoch s, or 10m/2h/1d ago)")
    parser.add_argument("--until", metavar="T", help="up to this time")


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("replay", help="re-evaluate a journal with (new) rules; never acts",
                                   description="Re-evaluate a journal's events with the given rules (audit "
                                               "mode: actions are reported, never executed) and show the "
                                               "difference with the alerts recorded at the time.")
    journal_window_arguments(parser)
    parser.add_argument("--rules", action="append", metavar="PATH",
                        help="rule file or folder (repeatable; default: the default pack)")
    parser.add_argument("--json", metavar="FILE|-", help="alerts, diff and summary as JSON lines")
    parser.add_argument("--otlp", metavar="URL", help="re-export the sessions as OTLP traces to URL")
    parser.add_argument("--alerts-to", metavar="FILE", help="send the window's recorded alerts again through "
                        "the outputs a YAML file lists (docs/outputs.md)")
    parser.add_argument("--undelivered", action="store_true",
                        help="with --alerts-to: only the alerts an output could not deliver at the time")
    parser.set_defaults(handler=replay_main)
    return parser


def replay_main(args: argparse.Namespace) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return _replay(args, err)
    except (UsageError, JournalError, PolicyError) as exc:  # PolicyError says file:line already
        print(f"monitor replay: {exc}", file=sys.stderr)
        return 1


def _replay(args: argparse.Namespace, err: Console) -> int:
    options = ReplayOptions(journal=args.journal, rules=args.rules,
                            sandbox=args.sandbox,
                            since_ns=parse_time(args.since) if args.since else None,
                            until_ns=parse_time(args.until) if args.until else None)
    check_sandbox(JournalReader(options.journal), options.sandbox)  # before the rules load
    if args.alerts_to:
        return _resend(args.alerts_to, options, args.undelivered)
    ruleset = load_replay_rules(options.rules)
    if args.otlp:
        options.sinks.append(otlp_sink(args.otlp))
    json_target = args.json
    out = Console(highlight=False, soft_wrap=True)
    human = json_target != "-"
    with _json_out(json_target) as jout:
        def on_alert(alert: Alert) -> None:
            if human:
                out.print(_alert_line(alert))
            if jout is not None:
                jout.write(json.dumps({**alert.to_dict(), "replayed": True}, default=str) + "\n")

        bar = _LazyProgress(_journal_bytes(options.journal), err)
        try:
            result = replay_journal(options, ruleset, on_alert=on_alert, progress=bar.advance,
                                    on_warning=lambda w: err.print(f"[yellow]warning:[/] {escape(w)}"))
        finally:
            bar.stop()
        diff = result.diff()
        if jout is not None:
            jout.write(json.dumps({"type": "diff", "rules": [d.to_dict() for d in diff]}) + "\n")
            jout.write(json.dumps(result.summary()) + "\n")
    if human:
        _print_replay_report(out, result, diff)
    return 0


def _resend(outputs_file: str, options: ReplayOptions, undelivered: bool = False) -> int:
    """--alerts-to: the recorded alerts of the window through the outputs (no re-evaluation);
    exit status 1 when any could not be delivered."""
    try:
        configs = load_outputs(outputs_file)
    except YamlError as exc:
        raise UsageError(f"--alerts-to: {exc}") from None
    result = resend_alerts(options.journal, configs, options.sandbox, options.since_ns, options.until_ns,
                           undelivered_only=undelivered)
    print(json.dumps({"type": "resend", **result}, default=str))
    return 1 if any(stats.get("undelivered") for stats in result["outputs"].values()) else 0


def check_sandbox(reader: JournalReader, sandbox: str | None) -> None:
    if sandbox is None:
        return
    known = reader.sandboxes()
    if sandbox not in known:
        listed = ", ".join(f"{sid} ({entry.get('name')})" for sid, entry in sorted(known.items())) or "none"
        raise UsageError(f"--sandbox {sandbox}: not in {reader.path} (sandboxes there: {listed})")


def _journal_bytes(path: str) -> int:
    try:
        return JournalReader(path).total_bytes()
    except JournalError:
        return 0


def _print_replay_report(out: Console, result: ReplayResult, diff: list[RuleDiff]) -> None:
    rate = result.events_seen / result.elapsed_s if result.elapsed_s else 0
    out.print(f"\n[bold]replayed[/] {result.events_seen:,} events ({result.events_evaluated:,} evaluated) "
              f"from {result.sessions} session(s) in {result.elapsed_s:.2f}s ({rate:,.0f} events/s): "
              f"{sum(result.replayed_by_rule.values())} alert(s), "
              f"{sum(result.recorded_by_rule.values())} in the recording")
    if not diff:
        out.print("no rule fired, now or in the recording")
    marks = {"new": "[green]+[/]", "gone": "[red]-[/]", "changed": "[yellow]~[/]", "same": "[dim]=[/]"}
    for entry in diff:
        out.print(f" {marks[entry.status]} {escape(entry.sentence())}")
    for what, n in sorted(result.would_act.items()):
        out.print(f" [magenta]would have acted[/]: {escape(what)} ({times(n)}; not executed)")


# ---------------------------------------------------------------------------------------------
# timeline
