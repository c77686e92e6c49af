"""The live terminal view (rich), on stderr: stdout stays the sandboxed command's (or JSON's).

By default it shows what a person watching wants to see: execs, writes, deletes, renames,
chmods, network, privilege and namespace calls, alerts (red) and actions; plain reads, forks,
exits and chdirs only with `verbose`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink

QUIET_KINDS = {"fork", "exit", "chdir", "tls_data"}
SEVERITY_STYLE = {"info": "cyan", "low": "green", "medium": "yellow", "high": "bold red",
                  "critical": "bold white on red"}


def describe(event: Event) -> str:
    """One human line for an event: what, by whom."""
    p = event.process
    who = f"{p.get('comm') or '?'}[{p.get('pid', '?')}]"
    kind = event.kind
    what = ""
    if kind == "exec":
        what = " ".join(p.get("args") or [p.get("executable", "")])
    elif event.file is not None:
        f = event.file
        what = f.get("path", "")
        if "new_path" in f:
            what += f" -> {f['new_path']}"
        if kind == "chmod":
            what += f" mode {f.get('mode', 0):o}"
        elif kind == "open":
            what += " (write)" if f.get("write") else ""
    elif event.net is not None:
        n = event.net
        what = n.get("query") or f"{n.get('address', '?')}" + (f":{n['port']}" if "port" in n else "")
        if n.get("transport"):
            what += f"/{n['transport']}"
    elif event.llm is not None:
        llm = event.llm
        calls = ", ".join(c.get("name", "?") for c in llm.get("tool_calls", []))
        what = f"{llm.get('provider', '?')} {llm.get('model', '')}" + (f" tool calls: {calls}" if calls else "")
    elif event.detail:
        what = " ".join(f"{k}={v}" for k, v in event.detail.items())
    result = event.result
    failed = f" [dim](-> {result})[/dim]" if isinstance(result, int) and result < 0 else ""
    verdict = " [bold red]DENIED[/bold red]" if event.verdict == "denied" else ""
    return f"{who} [bold]{kind}[/bold] {Text(what).markup}{failed}{verdict}"


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsoleSink(Sink):
    name = "console"
    reports_summary = True
    may_block = True  # a terminal

    def __init__(self, verbose: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.verbose = verbose

    def _show(self, event: Event) -> bool:
        if self.verbose:
            return True
        if event.kind in QUIET_KINDS:
            return False
        if event.kind == "open":
            return bool(event.file and event.file.get("write")) or event.verdict == "denied"
        return True

    def on_event(self, event: Event) -> None:
        if self._show(event):
            sandbox = (event.sandbox or {}).get("name", "")
            self.console.print(f"[dim]{sandbox:>12}[/dim] {describe(event)}")

    def on_alert(self, alert: Alert) -> None:
        style = SEVERITY_STYLE.get(alert.severity, "red")
        sandbox = (alert.event.sandbox or {}).get("name", "?")
        matched = ", ".join(f"{k}={_short(v)}" for k, v in alert.matched.items() if k != "process.ancestors")
        mode = " (audit)" if alert.mode == "audit" else ""
        self.console.print(f"[{style}]ALERT {alert.severity.upper()}[/{style}] [bold]{alert.rule}[/bold]"
                           f" sandbox={sandbox} {describe(alert.event)}"
                           + (f" [dim]matched {Text(matched).markup}[/dim]" if matched else "")
                           + f" -> {alert.action}{mode}")

    def on_action(self, record: ActionRecord) -> None:
        style = "bold red" if record.outcome == "done" else "yellow"
        self.console.print(f"[{style}]ACTION {record.action}[/{style}] {record.outcome} "
                           f"({record.latency_ms:.1f} ms) rule={record.rule} {record.message}")

    def close(self, summary: dict[str, Any]) -> None:
        table = Table(title="sandbox-monitor summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        sandbox = summary.get("sandbox") or {}
        if sandbox:
            table.add_row("sandbox", f"{sandbox.get('name')} ({sandbox.get('id')}, {sandbox.get('runtime')})")
        for key in ("exit_status", "duration_s", "events"):
            if key in summary:
                table.add_row(key, str(summary[key]))
        kinds = summary.get("events_by_kind") or {}
        if kinds:
            table.add_row("by kind", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
        table.add_row("alerts", str(summary.get("alerts", 0)))
        for rule, count in sorted((summary.get("alerts_by_rule") or {}).items(), key=lambda kv: -kv[1]):
            table.add_row("", f"{count} x {rule}")
        if summary.get("alerts_by_severity"):
            table.add_row("by severity", ", ".join(f"{k} {v}" for k, v in summary["alerts_by_severity"].items()))
        for action in summary.get("actions") or []:
            table.add_row("action", f"{action['action']} {action['outcome']} ({action['rule']})")
        if summary.get("killed_by"):
            table.add_row("killed by rule", str(summary["killed_by"]))
        lost = summary.get("lost") or {}
        table.add_row("lost events", ", ".join(f"{k} {v}" for k, v in lost.items()) if lost else "0")
        folded = summary.get("folded") or {}
        if folded:
            table.add_row("counted, not sent", ", ".join(f"{k} {v}" for k, v in folded.items()))
        for key, value in (summary.get("sinks") or {}).items():
            table.add_row(f"sink {key}", str(value))
        self.console.print(table)
