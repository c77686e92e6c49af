"""`monitor replay` and `monitor timeline`: what a journal says an agent did, judged again.

replay: re-evaluates the journaled events with the given rules (audit mode: actions are reported
as what would have been done, never executed), prints the alerts, and the difference with the
alerts recorded at the time, per rule. `--otlp URL` re-exports the sessions through the OTLP sink.

timeline: the process tree of each sandbox session (from exec/fork/exit events, parents via
process.ppid and ancestors), with each process's files and connections under it, alerts marked,
and "model asked: run X" above a process an LLM tool call caused.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.tree import Tree

from monitor.event import Alert, Event, rfc3339
from monitor.policy import DEFAULT_RULES_DIR, PolicyError, load_rules
from monitor.sinks import Sink
from monitor.sinks.journal import JournalError, JournalReader

SEVERITY_STYLE = {"info": "dim", "low": "cyan", "medium": "yellow", "high": "red", "critical": "bold red"}
PROGRESS_AFTER_S = 2.0  # a progress bar appears once a replay has run this long
FILE_EVENT_KINDS = frozenset({"open", "unlink", "rename", "chmod"})
NET_EVENT_KINDS = frozenset({"connect", "accept", "bind", "listen", "dns"})
SESSION_KINDS = frozenset({"sandbox_start", "sandbox_end"})


class UsageError(Exception):
    """Bad input: printed as one line, exit status 1."""


# ---------------------------------------------------------------------------------------------
# time arguments

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
            "d": 86400 * 10**9}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """RFC 3339 / ISO 8601 ("2026-11-23T10:00:00Z", naive = UTC), epoch seconds ("1763890000.5"),
    epoch nanoseconds (19 digits), or a duration back from now ("90s", "10m", "2h", "1d")."""
    value = text.strip()
    found = _DURATION.match(value)
    if found:
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(float(found.group(1)) * _UNIT_NS[found.group(2)])
    if re.fullmatch(r"\d{16,}", value):
        return int(value)
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return int(float(value) * 10**9)
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    fraction_ns = 0
    frac = re.search(r"\.(\d+)", iso)
    if frac:  # datetime keeps microseconds only: keep the nanoseconds ourselves
        digits = frac.group(1)
        fraction_ns = int(digits[:9].ljust(9, "0"))
        iso = iso[:frac.start()] + iso[frac.end():]
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(f"cannot read time {text!r} (use RFC 3339, epoch seconds, or 10m/2h/1d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 10**9 + fraction_ns


# ---------------------------------------------------------------------------------------------
# replay


@dataclass
class ReplayOptions:
    journal: str
    rules: list[str] | None = None  # None: the default pack
    sandbox: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    sinks: list[Sink] = field(default_factory=list)  # re-export (OTLP): fed every event and new alert


@dataclass
class RuleDiff:
    rule: str
    recorded: int
    replayed: int
    status: str  # new | gone | changed | same
    new_events: list[str] = field(default_factory=list)   # event ids that fire now, did not then
    gone_events: list[str] = field(default_factory=list)  # event ids that fired then, not now

    def sentence(self) -> str:
        times = _times(self.replayed)
        if self.status == "new":
            return f"new rule {self.rule} would have fired {times}"
        if self.status == "gone":
            return f"rule {self.rule} no longer fires (fired {_times(self.recorded)} in the recording)"
        if self.status == "changed":
            extra = []
            if self.new_events:
                extra.append(f"{len(self.new_events)} new")
            if self.gone_events:
                extra.append(f"{len(self.gone_events)} no longer")
            detail = f" ({', '.join(extra)})" if extra else ""
            return f"rule {self.rule} would have fired {times}, {_times(self.recorded)} in the recording{detail}"
        return f"rule {self.rule} fires as recorded ({times})"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "recorded": self.recorded, "replayed": self.replayed,
                "status": self.status, "new_events": self.new_events, "gone_events": self.gone_events,
                "text": self.sentence()}


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


@dataclass
class ReplayResult:
    events_seen: int = 0
    events_evaluated: int = 0
    alerts: list[Alert] = field(default_factory=list)
    replayed_by_rule: Counter[str] = field(default_factory=Counter)
    recorded_by_rule: Counter[str] = field(default_factory=Counter)
    would_act: Counter[str] = field(default_factory=Counter)  # "rule -> kill": n
    recorded_actions: Counter[str] = field(default_factory=Counter)
    replayed_pairs: set[tuple[str, str]] = field(default_factory=set)  # (rule, event id)
    recorded_pairs: set[tuple[str, str]] = field(default_factory=set)
    sessions: int = 0
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def diff(self) -> list[RuleDiff]:
        out = []
        for rule in sorted(set(self.replayed_by_rule) | set(self.recorded_by_rule)):
            recorded, replayed = self.recorded_by_rule[rule], self.replayed_by_rule[rule]
            now = {e for r, e in self.replayed_pairs if r == rule}
            then = {e for r, e in self.recorded_pairs if r == rule}
            new_events, gone_events = sorted(now - then), sorted(then - now)
            if not recorded:
                status = "new"
            elif not replayed:
                status = "gone"
            elif recorded != replayed or new_events or gone_events:
                status = "changed"
            else:
                status = "same"
            out.append(RuleDiff(rule, recorded, replayed, status, new_events, gone_events))
        return out

    def summary(self) -> dict[str, Any]:
        return {"type": "summary", "events": self.events_seen, "events_evaluated": self.events_evaluated,
                "alerts": sum(self.replayed_by_rule.values()), "alerts_by_rule": dict(self.replayed_by_rule),
                "recorded_alerts": sum(self.recorded_by_rule.values()),
                "recorded_alerts_by_rule": dict(self.recorded_by_rule),
                "would_act": dict(self.would_act), "recorded_actions": dict(self.recorded_actions),
                "sessions": self.sessions, "warnings": self.warnings, "elapsed_s": round(self.elapsed_s, 3)}


def load_replay_rules(paths: list[str] | None) -> Any:
    """The rule set in audit mode (replay never acts). PolicyError on a bad rule file."""
    return load_rules(list(paths) if paths else [DEFAULT_RULES_DIR], audit=True)


def _rule_kinds(ruleset: Any) -> frozenset[str] | None:
    """The event kinds any rule is indexed under (None: unknown, evaluate every event)."""
    rules = getattr(ruleset, "rules", None)
    if rules is None:
        return None
    kinds: set[str] = set()
    for rule in rules:
        when = getattr(rule, "when", None)
        if when is None:
            return None
        kinds.update(when)
    return frozenset(kinds)


def replay_journal(options: ReplayOptions, ruleset: Any = None,
                   on_alert: Callable[[Alert], None] | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_warning: Callable[[str], None] | None = None) -> ReplayResult:
    """Re-evaluate a journal. JournalError if there is no journal; PolicyError if a rule is bad."""
    result = ReplayResult()
    reader = JournalReader(options.journal, on_warning=on_warning)
    if ruleset is None:
        ruleset = load_replay_rules(options.rules)
    evaluate = ruleset.evaluate
    kinds = _rule_kinds(ruleset)
    if kinds is not None and options.sinks:
        kinds = None  # re-export wants every event
    elif kinds is not None:
        kinds = kinds | SESSION_KINDS
    skipped: Counter[str] = Counter()
    started = time.perf_counter()
    with _fewer_collections():
        _replay_records(reader, options, kinds, skipped, evaluate, result, on_alert, progress)
    result.events_seen += sum(skipped.values())
    result.elapsed_s = time.perf_counter() - started
    result.warnings = list(reader.warnings)
    for sink in options.sinks:
        try:
            sink.close(result.summary())
        except Exception as exc:  # an exporter failing at the end must not hide the replay
            result.warnings.append(f"{getattr(sink, 'name', 'sink')}: {exc}")
    return result


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A replay allocates millions of short-lived, acyclic objects: collecting the young generation
    every 700 allocations (the default) costs a third of the time and frees nothing."""
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 100_000), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


def _replay_records(reader: JournalReader, options: ReplayOptions, kinds: frozenset[str] | None,
                    skipped: Counter[str], evaluate: Callable[[Event], list[Alert]], result: ReplayResult,
                    on_alert: Callable[[Alert], None] | None, progress: Callable[[int], None] | None) -> None:
    for rec in reader.records(sandbox=options.sandbox, since_ns=options.since_ns, until_ns=options.until_ns,
                              kinds=kinds, skipped=skipped, progress=progress):
        rtype = rec.type
        if rtype == "event":
            event = rec.value
            result.events_seen += 1
            if event.kind == "sandbox_start":
                result.sessions += 1
            for sink in options.sinks:
                sink.on_event(event)
            alerts = evaluate(event)
            result.events_evaluated += 1
            for alert in alerts:
                result.alerts.append(alert)
                result.replayed_by_rule[alert.rule] += 1
                result.replayed_pairs.add((alert.rule, event.id))
                if alert.action != "alert":
                    result.would_act[f"{alert.rule} -> {alert.action}"] += 1
                for sink in options.sinks:
                    sink.on_alert(alert)
                if on_alert is not None:
                    on_alert(alert)
        elif rtype == "alert":
            result.recorded_by_rule[rec.value.rule] += 1
            result.recorded_pairs.add((rec.value.rule, rec.value.event.id))
        elif rtype == "action":
            result.recorded_actions[f"{rec.value.rule} -> {rec.value.action}: {rec.value.outcome}"] += 1


def otlp_sink(url: str) -> Sink:
    """The OTLP exporter sink (monitor/sinks/otlp.py) for --otlp; UsageError if it is not built."""
    try:
        from monitor.sinks.otlp import OtlpSink  # type: ignore[import-not-found]
    except ImportError as exc:
        raise UsageError(f"--otlp: OTLP export is not available ({exc})") from None
    try:
        return OtlpSink(url, signals=("traces", "logs"))  # a replay adds nothing to live metrics
    except ValueError as exc:  # OtlpConfigError: a URL it cannot use
        raise UsageError(f"--otlp {url}: {exc}") from None


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


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("replay", help="re-evaluate a journal with (new) rules; never acts",
                                   description="Re-evaluate a journal's events with the given rules (audit "
                                               "mode: actions are reported, never executed) and show the "
                                               "difference with the alerts recorded at the time.")
    parser.add_argument("journal", metavar="JOURNAL", help="journal directory (monitor run --journal DIR)")
    parser.add_argument("--rules", action="append", metavar="PATH",
                        help="rule file or folder (repeatable; default: the default pack)")
    parser.add_argument("--sandbox", metavar="ID", help="only this sandbox (id)")
    parser.add_argument("--since", metavar="T", help="from this time (RFC 3339, epoch s, or 10m/2h/1d ago)")
    parser.add_argument("--until", metavar="T", help="up to this time")
    parser.add_argument("--json", metavar="FILE|-", help="alerts, diff and summary as JSON lines")
    parser.add_argument("--otlp", metavar="URL", help="re-export the sessions as OTLP traces to URL")
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
    options = ReplayOptions(journal=args.journal, rules=getattr(args, "rules", None),
                            sandbox=getattr(args, "sandbox", None),
                            since_ns=parse_time(args.since) if getattr(args, "since", None) else None,
                            until_ns=parse_time(args.until) if getattr(args, "until", None) else None)
    _check_sandbox(JournalReader(options.journal), options.sandbox)  # before the rules load
    ruleset = load_replay_rules(options.rules)
    if getattr(args, "otlp", None):
        options.sinks.append(otlp_sink(args.otlp))
    json_target = getattr(args, "json", None)
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


def _check_sandbox(reader: JournalReader, sandbox: str | None) -> None:
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
        out.print(f" [magenta]would have acted[/]: {escape(what)} ({_times(n)}; not executed)")


# ---------------------------------------------------------------------------------------------
# timeline


@dataclass
class ProcNode:
    pid: int
    executable: str = ""
    args: list[str] = field(default_factory=list)
    ppid: int | None = None
    start_ns: int = 0
    end_ns: int = 0  # its exit's time (0: not seen to exit)
    exit: dict[str, Any] | None = None
    caused_by: str | None = None
    model_asked: str | None = None
    seen_exec: bool = False
    placeholder: bool = False  # known only as someone's parent/ancestor
    previous: list[str] = field(default_factory=list)  # images before an exec replaced them
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    more_files: int = 0  # file events on paths past the builder's per-process bound
    more_connections: int = 0
    llm: list[dict[str, Any]] = field(default_factory=list)  # its model calls (responses; alerted requests)
    alerts: list[str] = field(default_factory=list)
    children: list[ProcNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": self.pid, "ppid": self.ppid, "executable": self.executable,
                               "args": self.args, "start": rfc3339(self.start_ns) if self.start_ns else None}
        if self.exit is not None:
            out["exit"] = self.exit
        if self.caused_by:
            out["caused_by"] = self.caused_by
        if self.model_asked:
            out["model_asked"] = self.model_asked
        if self.previous:
            out["previous_images"] = self.previous
        out["alerts"] = self.alerts
        out["files"] = [_with_time(e) for e in self.files.values()]
        out["connections"] = [_with_time(e) for e in self.connections.values()]
        out["llm"] = [_with_time(e) for e in self.llm]
        out["children"] = [c.to_dict() for c in self.children]
        return out


def _with_time(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "first": rfc3339(entry["first_ns"])}


@dataclass
class Session:
    sandbox: dict[str, Any]
    start_ns: int = 0
    end_ns: int = 0
    events: int = 0
    alerts: int = 0
    exit: dict[str, Any] | None = None
    procs: dict[int, ProcNode] = field(default_factory=dict)
    llm_calls: dict[str, str] = field(default_factory=dict)  # llm_response id -> "run X"
    roots: list[ProcNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "timeline", "sandbox": self.sandbox,
                "start": rfc3339(self.start_ns) if self.start_ns else None,
                "end": rfc3339(self.end_ns) if self.end_ns else None, "events": self.events,
                "alerts": self.alerts, "exit": self.exit, "processes": [r.to_dict() for r in self.roots]}


def _tool_call_text(llm: dict[str, Any]) -> str:
    calls = llm.get("tool_calls") or []
    texts = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        arguments = call.get("arguments")
        if isinstance(arguments, str):
            with suppress(ValueError):
                arguments = json.loads(arguments)
        command = None
        if isinstance(arguments, dict):
            for key in ("command", "cmd", "script", "code", "args"):
                if arguments.get(key):
                    command = arguments[key]
                    break
        if isinstance(command, list):
            command = " ".join(str(c) for c in command)
        name = call.get("name") or "tool"
        texts.append(f"run {command}" if command else f"{name}({json.dumps(arguments, default=str)[:100]})")
    return "; ".join(texts)


class TimelineBuilder:
    """Folds journal records into sessions (one per sandbox) of process trees. `max_items` bounds the
    distinct files and the distinct connections kept per process (alerted ones always kept; files
    written, removed, renamed or chmodded get as many again); past it a process only counts them
    (more_files, more_connections). None: keep all (`timeline --json`)."""

    def __init__(self, max_items: int | None = None) -> None:
        self.max_items = max_items
        self.sessions: dict[str, Session] = {}
        self.alerts_by_event: dict[str, list[tuple[str, str]]] = {}  # event id -> [(rule, severity)]

    def add_alert(self, alert: Alert) -> None:
        self.alerts_by_event.setdefault(alert.event.id, []).append((alert.rule, alert.severity))

    def _session(self, event: Event) -> Session:
        sandbox = event.sandbox or {"id": "-", "name": "(no sandbox)"}
        sid = str(sandbox.get("id"))
        session = self.sessions.get(sid)
        if session is None:
            session = self.sessions[sid] = Session(sandbox=sandbox, start_ns=event.time_ns)
        return session

    def _node(self, session: Session, process: dict[str, Any], time_ns: int) -> ProcNode | None:
        pid = process.get("pid")
        if not isinstance(pid, int):
            return None
        node = session.procs.get(pid)
        if node is None or (node.exit is not None and not node.placeholder):
            node = session.procs[pid] = ProcNode(pid=pid, start_ns=time_ns)
        if node.placeholder or not node.executable:
            node.placeholder = False
            node.executable = str(process.get("executable") or process.get("comm") or "")
            node.args = [str(a) for a in process.get("args") or []]
        if node.ppid is None:
            ppid = process.get("ppid")
            ancestors = process.get("ancestors") or []
            if not isinstance(ppid, int) and ancestors and isinstance(ancestors[0], dict):
                ppid = ancestors[0].get("pid")
            node.ppid = ppid if isinstance(ppid, int) else None
            self._placeholders(session, ancestors, time_ns)
        if process.get("caused_by") and not node.caused_by:
            node.caused_by = str(process["caused_by"])
        return node

    def _placeholders(self, session: Session, ancestors: list[Any], time_ns: int) -> None:
        """Ancestors not seen themselves still show where a process came from."""
        for i, anc in enumerate(ancestors):
            if not isinstance(anc, dict) or not isinstance(anc.get("pid"), int):
                return
            if anc["pid"] in session.procs:
                return
            parent = ancestors[i + 1].get("pid") if i + 1 < len(ancestors) and isinstance(ancestors[i + 1], dict) \
                else None
            session.procs[anc["pid"]] = ProcNode(pid=anc["pid"], executable=str(anc.get("executable") or ""),
                                                 args=[str(a) for a in anc.get("args") or []],
                                                 ppid=parent if isinstance(parent, int) else None,
                                                 start_ns=time_ns, placeholder=True)

    def add_event(self, event: Event) -> None:
        session = self._session(event)
        session.events += 1
        session.end_ns = max(session.end_ns, event.time_ns)
        session.start_ns = min(session.start_ns, event.time_ns) if session.start_ns else event.time_ns
        kind = event.kind
        if kind == "sandbox_end":
            session.exit = event.detail
            return
        text = ""
        if kind == "llm_response" and event.llm:
            text = _tool_call_text(event.llm)
            if text:
                session.llm_calls[event.id] = text
        if kind == "sandbox_start" or not event.process:
            return
        alerts = self.alerts_by_event.get(event.id, [])
        if kind in ("llm_request", "llm_response"):
            node = self._node(session, event.process, event.time_ns)
            if node is not None and (kind == "llm_response" or alerts):
                llm = event.llm or {}
                node.llm.append({"kind": kind, "id": event.id, "first_ns": event.time_ns,
                                 "provider": llm.get("provider"),
                                 "model": llm.get("model"), "stop_reason": llm.get("stop_reason"),
                                 "asked": text, "alerts": [rule for rule, _ in alerts]})
            return
        if kind == "fork" and event.detail and isinstance(event.detail.get("child_pid"), int):
            parent = self._node(session, event.process, event.time_ns)
            child_pid = event.detail["child_pid"]
            if parent is not None and child_pid not in session.procs:
                session.procs[child_pid] = ProcNode(pid=child_pid, executable=parent.executable,
                                                    args=list(parent.args), ppid=parent.pid,
                                                    start_ns=event.time_ns)
            return
        node = self._node(session, event.process, event.time_ns)
        if node is None:
            return
        if kind == "exec":
            new_image = str(event.process.get("executable") or "")
            if node.seen_exec and new_image and new_image != node.executable:
                node.previous.append(node.executable)
            if not node.seen_exec and node.executable and new_image and new_image != node.executable:
                node.previous.append(node.executable)  # forked from a parent running this image
            node.executable = new_image or node.executable
            node.args = [str(a) for a in event.process.get("args") or []] or node.args
            node.seen_exec = True
            node.start_ns = event.time_ns
            node.alerts.extend(rule for rule, _ in alerts)
        elif kind == "exit":
            node.exit = dict(event.detail or {})
            node.end_ns = event.time_ns
        elif kind in FILE_EVENT_KINDS and event.file:
            self._add_file(node, kind, event, alerts)
        elif kind in NET_EVENT_KINDS and event.net:
            self._add_connection(node, kind, event, alerts)
        else:
            node.alerts.extend(rule for rule, _ in alerts)

    def _add_file(self, node: ProcNode, kind: str, event: Event, alerts: list[tuple[str, str]]) -> None:
        file = event.file or {}
        path = str(file.get("path", ""))
        entry = node.files.get(path)
        if entry is None:
            # past the bound: writes, deletes, renames and chmods still get as many again
            kept = len(node.files)
            if not alerts and self.max_items is not None and kept >= self.max_items and \
                    (kept >= 2 * self.max_items or (kind == "open" and not file.get("write"))):
                node.more_files += 1
                return
            entry = node.files[path] = {"path": path, "ops": [], "write": False, "count": 0, "alerts": [],
                                        "first_ns": event.time_ns}
        entry["count"] += 1
        op = kind if kind != "open" else ("write" if file.get("write") else "read")
        if op not in entry["ops"]:
            entry["ops"].append(op)
        entry["write"] = entry["write"] or bool(file.get("write"))
        if file.get("new_path"):
            entry["new_path"] = file["new_path"]
        if event.verdict:
            entry["verdict"] = event.verdict
        for rule, _ in alerts:
            if rule not in entry["alerts"]:
                entry["alerts"].append(rule)

    def _add_connection(self, node: ProcNode, kind: str, event: Event, alerts: list[tuple[str, str]]) -> None:
        net = event.net or {}
        if kind == "dns":
            key = f"dns {net.get('query', '')}"
        else:
            key = f"{kind} {net.get('transport', '')} {net.get('address', '')}:{net.get('port', '')}"
        entry = node.connections.get(key)
        if entry is None:
            if not alerts and self.max_items is not None and len(node.connections) >= self.max_items:
                node.more_connections += 1
                return
            entry = node.connections[key] = {"kind": kind, "count": 0, "alerts": [],
                                             "first_ns": event.time_ns,
                                             **{k: net[k] for k in ("transport", "address", "port", "direction",
                                                                    "query", "family") if k in net}}
        entry["count"] += 1
        if event.result is not None:
            entry["result"] = event.result
        if event.verdict:
            entry["verdict"] = event.verdict
        for rule, _ in alerts:
            if rule not in entry["alerts"]:
                entry["alerts"].append(rule)

    def finish(self) -> list[Session]:
        for session in self.sessions.values():
            for node in session.procs.values():
                node.children = []
            roots = []
            for node in sorted(session.procs.values(), key=lambda n: (n.start_ns, n.pid)):
                if node.caused_by and node.caused_by in session.llm_calls:
                    node.model_asked = session.llm_calls[node.caused_by]
                parent = session.procs.get(node.ppid) if node.ppid is not None else None
                if parent is not None and parent is not node and not _is_descendant(parent, node, session):
                    parent.children.append(node)
                else:
                    roots.append(node)
            session.roots = roots
        return sorted(self.sessions.values(), key=lambda s: s.start_ns)


def _is_descendant(candidate: ProcNode, node: ProcNode, session: Session) -> bool:
    """Would making node candidate's child close a loop (pid reuse, bad ppid)?"""
    seen = set()
    cur: ProcNode | None = candidate
    while cur is not None and cur.pid not in seen:
        if cur is node:
            return True
        seen.add(cur.pid)
        cur = session.procs.get(cur.ppid) if cur.ppid is not None else None
    return False


def build_timeline(journal: str, sandbox: str | None = None,
                   on_warning: Callable[[str], None] | None = None) -> list[Session]:
    builder = TimelineBuilder()
    alert_counts: Counter[str] = Counter()
    # Two passes, nothing held but the tree: the alerts first (journaled after their events; the
    # event rows are skipped undecoded), then the events.
    for rec in JournalReader(journal).records(sandbox=sandbox, types={"alert"}):
        builder.add_alert(rec.value)
        alert_counts[rec.sandbox_id or "-"] += 1
    for event in JournalReader(journal, on_warning=on_warning).events(sandbox=sandbox):
        builder.add_event(event)
    sessions = builder.finish()
    for session in sessions:
        session.alerts = alert_counts[str(session.sandbox.get("id"))]
    return sessions


def _short(args: list[str], executable: str, limit: int = 100) -> str:
    text = " ".join(args) if args else executable
    return text if len(text) <= limit else text[: limit - 1] + "…"


MAX_READS_SHOWN = 20  # plain file reads per process in the terminal (--json has them all)


MAX_ITEMS_PER_SESSION = 3000  # files/connections/model calls in the terminal; alerted ones always


@dataclass
class _Budget:
    items: int
    hidden: int = 0


def render_session(session: Session) -> Tree:
    sb = session.sandbox
    span = ""
    if session.start_ns:
        span = f" {rfc3339(session.start_ns)[:23]}Z → {rfc3339(session.end_ns)[11:23]}Z"
    status = ""
    if session.exit:
        status = f", exit {session.exit.get('code')}" + (f" signal {session.exit['signal']}"
                                                        if session.exit.get("signal") else "")
    alerts = f", [red]{session.alerts} alert(s)[/]" if session.alerts else ""
    tree = Tree(f"[bold]sandbox {escape(str(sb.get('name') or sb.get('id')))}[/] [dim]({escape(str(sb.get('id')))}"
                f" {escape(str(sb.get('runtime', '')))}){escape(span)}[/] {session.events} events{status}{alerts}")
    budget = _Budget(MAX_ITEMS_PER_SESSION)
    for root in session.roots:
        _render_proc(tree, root, budget)
    if budget.hidden:
        tree.add(f"[dim]… {budget.hidden} files/connections not shown past the first "
                 f"{MAX_ITEMS_PER_SESSION} (--json has them all)[/]")
    return tree


def _render_proc(parent: Tree, node: ProcNode, budget: _Budget) -> None:
    label = ""
    if node.model_asked:
        label += f"[magenta]model asked: {escape(node.model_asked[:160])}[/]\n"
    style = "bold red" if node.alerts else ("dim" if node.placeholder else "bold")
    label += f"[{style}]{escape(_short(node.args, node.executable))}[/] [dim]pid {node.pid}"
    if node.executable and node.args and not node.args[0].endswith(node.executable.rsplit("/", 1)[-1]):
        label += f" {escape(node.executable)}"
    if node.exit is not None:
        code, sig = node.exit.get("code"), node.exit.get("signal")
        label += f", exit {code}" + (f" signal {sig}" if sig else "")
    label += "[/]"
    if node.alerts:
        label += f" [red]⚠ {escape(', '.join(dict.fromkeys(node.alerts)))}[/]"
    branch = parent.add(label)
    # (first seen, line, always shown): connections, model calls, writes and alerted items always
    # show; plain reads (mostly libraries) only up to MAX_READS_SHOWN.
    items: list[tuple[int, str, bool, bool]] = []  # + alerted
    for entry in node.files.values():
        mark = _alert_mark(entry["alerts"])
        verdict = f" [red]{entry['verdict']}[/]" if entry.get("verdict") else ""
        times = f" ×{entry['count']}" if entry["count"] > 1 else ""
        new = f" → {escape(str(entry['new_path']))}" if entry.get("new_path") else ""
        style = "red" if entry["alerts"] else ("yellow" if entry["write"] else "")
        path = f"[{style}]{escape(entry['path'])}[/]" if style else escape(entry["path"])
        important = bool(entry["alerts"] or entry["write"] or entry["ops"] != ["read"] or entry.get("verdict"))
        items.append((entry["first_ns"], f"[cyan]file[/] {'/'.join(entry['ops'])} {path}{new}{times}{verdict}{mark}",
                      important, bool(entry["alerts"])))
    for entry in node.connections.values():
        mark = _alert_mark(entry["alerts"])
        verdict = f" [red]{entry['verdict']}[/]" if entry.get("verdict") else ""
        times = f" ×{entry['count']}" if entry["count"] > 1 else ""
        if entry["kind"] == "dns":
            what = f"dns {escape(str(entry.get('query', '')))}"
        else:
            what = (f"{entry['kind']} {entry.get('transport', '')} "
                    f"{escape(str(entry.get('address', '')))}:{entry.get('port', '')}")
        if entry["alerts"]:
            what = f"[red]{what}[/]"
        items.append((entry["first_ns"], f"[blue]net[/] {what}{times}{verdict}{mark}", True, bool(entry["alerts"])))
    for call in node.llm:
        model = "/".join(str(x) for x in (call.get("provider"), call.get("model")) if x)
        what = f" → {escape(call['asked'][:120])}" if call.get("asked") else ""
        stop = f" ({escape(str(call['stop_reason']))})" if call.get("stop_reason") else ""
        verb = "model answered" if call["kind"] == "llm_response" else "model request"
        items.append((call["first_ns"], f"[magenta]{verb}[/] {escape(model)}{stop}{what}{_alert_mark(call['alerts'])}",
                      True, bool(call["alerts"])))
    items.sort(key=lambda item: item[0])
    children = sorted(node.children, key=lambda c: c.start_ns)
    reads_hidden = 0
    reads_shown = 0
    for time_ns, line, important, alerted in items:
        while children and children[0].start_ns <= time_ns:
            _render_proc(branch, children.pop(0), budget)
        if alerted or (budget.items > 0 and (important or reads_shown < MAX_READS_SHOWN)):
            branch.add(line)
            budget.items -= 1
            reads_shown += not important
        elif budget.items > 0:
            reads_hidden += 1
        else:
            budget.hidden += 1
    if reads_hidden:
        branch.add(f"[dim]… {reads_hidden} more files read (--json has them all)[/]")
    for child in children:
        _render_proc(branch, child, budget)


def _alert_mark(rules: list[str]) -> str:
    return f" [red]⚠ {escape(', '.join(rules))}[/]" if rules else ""


def add_timeline_parser(subparsers: Any) -> argparse.ArgumentParser:
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
        _check_sandbox(JournalReader(args.journal), getattr(args, "sandbox", None))
        sessions = build_timeline(args.journal, getattr(args, "sandbox", None),
                                  on_warning=lambda w: err.print(f"[yellow]warning:[/] {escape(w)}"))
    except (JournalError, UsageError) as exc:
        print(f"monitor timeline: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
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


def main(argv: list[str] | None = None) -> int:
    """`python -m monitor.replay replay|timeline ...` (the same parsers `monitor` uses)."""
    parser = argparse.ArgumentParser(prog="monitor")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_replay_parser(subparsers)
    add_timeline_parser(subparsers)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
