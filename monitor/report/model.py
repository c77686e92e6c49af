"""The report's data: a journal folded into sessions (monitor.timeline's TimelineBuilder: one process tree per
sandbox), plus what the page shows around it: the sandbox's identity and posture, counts, alerts,
actions, the model calls with their tool calls and the processes each caused, and with `rules`,
what those rules would have flagged that the recording did not.

Everything is bounded (Limits) so that a journal of millions of events still makes a page a
browser opens: past a bound the page keeps the items that matter (alerted, model-caused) and
says how many more there were.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from monitor.event import ActionRecord, Alert, Event, rfc3339
from monitor.journal import JournalReader, fewer_collections
from monitor.timeline import ProcNode, TimelineBuilder
from monitor.timeline import SessionTimeline as Session

TEXT_LIMIT = 600  # characters of one command line, argument list or model text in the page


@dataclass(frozen=True)
class Limits:
    processes: int = 1000  # per session; past it: alerted, model-caused and their ancestors first
    items_per_process: int = 25  # distinct files, and distinct connections, per process
    alerts: int = 2000  # alert rows per session (counts by rule stay complete)
    model_calls: int = 500  # model requests/responses per session
    actions: int = 500
    marks: int = 6000  # timeline marks for files/connections, over all sessions

    def to_dict(self) -> dict[str, int]:
        return {"processes": self.processes, "items_per_process": self.items_per_process,
                "alerts": self.alerts, "model_calls": self.model_calls, "actions": self.actions,
                "marks": self.marks}


@dataclass(frozen=True)
class ReportOptions:
    journal: str
    sandbox: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Replayed:
    """What `replay` with other rules found (the caller runs it: replay is the engine's): the rule
    files, its per-rule difference with the recording, and the alerts the recording lacks."""
    rules: list[str]
    diff: list[dict[str, Any]]
    new_alerts: list[Alert]


@dataclass
class SessionExtras:
    """What the page shows of a session beyond its process tree."""
    counts: Counter[str] = field(default_factory=Counter)
    denied: int = 0
    image: str = ""
    posture: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alerts_by_severity: Counter[str] = field(default_factory=Counter)
    alerts_by_rule: Counter[str] = field(default_factory=Counter)
    actions: list[dict[str, Any]] = field(default_factory=list)
    actions_total: int = 0
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    model_calls_total: int = 0
    would_flag: list[dict[str, Any]] = field(default_factory=list)
    would_flag_total: int = 0


def _clip(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _process_pid(event: Event) -> int | None:
    pid = (event.process or {}).get("pid")
    return pid if isinstance(pid, int) else None


def event_subject(event: Event) -> str:
    """What an event was about, in one line: a path, an address, a command line, a model call."""
    if event.file:
        new = f" → {event.file['new_path']}" if event.file.get("new_path") else ""
        return _clip(f"{event.file.get('path', '')}{new}")
    if event.net:
        if event.kind == "dns" or event.net.get("query"):
            return _clip(str(event.net.get("query", "")))
        return _clip(f"{event.net.get('address', '')}:{event.net.get('port', '')}")
    if event.llm:
        return _clip("/".join(str(x) for x in (event.llm.get("provider"), event.llm.get("model")) if x))
    args = (event.process or {}).get("args") or []
    return _clip(" ".join(str(a) for a in args) or str((event.process or {}).get("executable", "")))


class ReportBuilder(TimelineBuilder):
    """The timeline's TimelineBuilder (sessions of process trees, bounded per process), plus the page's
    header facts, alerts, actions and model calls."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(max_items=limits.items_per_process)
        self.limits = limits
        self.extras: dict[str, SessionExtras] = {}

    def _extras(self, sandbox_id: str | None) -> SessionExtras:
        key = sandbox_id or "-"
        found = self.extras.get(key)
        if found is None:
            found = self.extras[key] = SessionExtras()
        return found

    def add_recorded_alert(self, alert: Alert, sandbox_id: str | None) -> None:
        self.add_alert(alert)
        extras = self._extras(sandbox_id)
        extras.alerts_by_severity[alert.severity] += 1
        extras.alerts_by_rule[alert.rule] += 1
        if len(extras.alerts) < self.limits.alerts:
            extras.alerts.append(_alert_row(alert))

    def add_action(self, record: ActionRecord, sandbox_id: str | None) -> None:
        extras = self._extras(sandbox_id)
        extras.actions_total += 1
        if len(extras.actions) < self.limits.actions:
            target = record.target if isinstance(record.target, dict) else {}
            pid = target.get("pid")
            extras.actions.append({"time_ns": record.time_ns, "action": record.action, "rule": record.rule,
                                   "outcome": record.outcome, "message": _clip(record.message),
                                   "latency_ms": round(record.latency_ms, 3),
                                   "pid": pid if isinstance(pid, int) else None})

    def add_would_flag(self, alert: Alert) -> None:
        sandbox_id = (alert.event.sandbox or {}).get("id")
        extras = self._extras(str(sandbox_id) if sandbox_id is not None else None)
        extras.would_flag_total += 1
        if len(extras.would_flag) < self.limits.alerts:
            extras.would_flag.append(_alert_row(alert))

    def add_event(self, event: Event) -> None:
        super().add_event(event)
        sandbox_id = (event.sandbox or {}).get("id")
        extras = self._extras(str(sandbox_id) if sandbox_id is not None else None)
        extras.counts[event.kind] += 1
        if event.verdict == "denied":
            extras.denied += 1
        if event.sandbox and event.sandbox.get("image") and not extras.image:
            extras.image = str(event.sandbox["image"])
        if event.kind == "container_start" and event.container is not None:
            extras.posture = event.container
        elif event.kind in ("llm_request", "llm_response") and event.llm is not None:
            extras.model_calls_total += 1
            if len(extras.model_calls) < self.limits.model_calls:
                extras.model_calls.append(_model_call(event, self.alerts_by_event.get(event.id, [])))


def _alert_row(alert: Alert) -> dict[str, Any]:
    event = alert.event
    return {"time_ns": event.time_ns, "rule": alert.rule, "severity": alert.severity, "action": alert.action,
            "mode": alert.mode, "tags": [str(t) for t in alert.tags], "description": _clip(alert.description),
            "kind": event.kind, "event_id": event.id, "pid": _process_pid(event),
            "executable": _clip(str((event.process or {}).get("executable", ""))),
            "subject": event_subject(event), "verdict": event.verdict}


def _model_call(event: Event, alerts: list[tuple[str, str]]) -> dict[str, Any]:
    llm = event.llm or {}
    calls = []
    for call in llm.get("tool_calls") or []:
        if isinstance(call, dict):
            arguments = call.get("arguments")
            text = arguments if isinstance(arguments, str) else json.dumps(arguments, default=str)
            calls.append({"id": str(call.get("id") or ""), "name": str(call.get("name") or "tool"),
                          "arguments": _clip(text)})
    usage = llm.get("usage") if isinstance(llm.get("usage"), dict) else {}
    out: dict[str, Any] = {"id": event.id, "kind": event.kind, "time_ns": event.time_ns, "pid": _process_pid(event),
                           "provider": str(llm.get("provider") or ""), "model": str(llm.get("model") or ""),
                           "stop_reason": str(llm.get("stop_reason") or ""), "usage": usage,
                           "tool_calls": calls, "alerts": [rule for rule, _ in alerts]}
    if isinstance(llm.get("text"), str):
        out["text"] = _clip(llm["text"])
    last = llm.get("last_message")
    if isinstance(last, dict) and isinstance(last.get("text"), str):
        out["asked"] = _clip(last["text"])
    return out


# ---------------------------------------------------------------------------------------------
# from a journal to the page's data


def read_journal(options: ReportOptions) -> ReportBuilder:
    """Two passes, as `monitor timeline` does: the alerts and actions first (journaled after their
    events), then the events."""
    builder = ReportBuilder(options.limits)
    window = {"sandbox": options.sandbox, "since_ns": options.since_ns, "until_ns": options.until_ns}
    for rec in JournalReader(options.journal).records(types={"alert", "action"}, **window):
        if rec.type == "alert":
            builder.add_recorded_alert(rec.value, rec.sandbox_id)
        else:
            builder.add_action(rec.value, rec.sandbox_id)
    for event in JournalReader(options.journal).events(**window):
        builder.add_event(event)
    return builder


def build_report_data(options: ReportOptions, replayed: Replayed | None = None) -> dict[str, Any]:
    """The page's data; with `replayed`, what other rules would have flagged, marked apart.
    JournalError if there is no journal."""
    started = time.perf_counter()
    with fewer_collections():
        builder = read_journal(options)
        for alert in replayed.new_alerts if replayed is not None else []:
            builder.add_would_flag(alert)
        sessions = builder.finish()
    budget = _MarkBudget(options.limits.marks)
    pages = [_session_data(s, builder.extras.get(str(s.sandbox.get("id")), SessionExtras()), options.limits,
                           budget) for s in sessions]
    return {"format": 1, "journal": options.journal, "generated": rfc3339(time.time_ns()),
            "window": {"sandbox": options.sandbox,
                       "since": rfc3339(options.since_ns) if options.since_ns else None,
                       "until": rfc3339(options.until_ns) if options.until_ns else None},
            "rules": replayed.rules if replayed is not None else None,
            "rules_diff": replayed.diff if replayed is not None else None, "limits": options.limits.to_dict(),
            "marks_hidden": budget.hidden, "sessions": pages,
            "build_s": round(time.perf_counter() - started, 3)}


@dataclass
class _MarkBudget:
    left: int
    hidden: int = 0

    def take(self) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        self.hidden += 1
        return False


def _kept_processes(session: Session, limit: int) -> set[int]:
    """id()s of the nodes the page shows: all of them under the bound; past it the alerted,
    model-caused and model-calling ones with their ancestors first, then the earliest."""
    nodes = list(session.procs.values())
    if len(nodes) <= limit:
        return {id(n) for n in nodes}
    kept: set[int] = set()

    def keep_with_ancestors(node: ProcNode) -> None:
        """The node and its ancestors not kept yet, or none of them if they do not all fit: the
        page nests a process under its parent, so one kept without its parent would not show."""
        chain: list[int] = []
        cur: ProcNode | None = node
        while cur is not None and id(cur) not in kept and id(cur) not in chain:
            chain.append(id(cur))
            cur = session.procs.get(cur.ppid) if cur.ppid is not None else None
        if len(kept) + len(chain) <= limit:
            kept.update(chain)

    def notable(node: ProcNode) -> bool:
        return bool(node.alerts or node.caused_by or node.llm
                    or any(e["alerts"] for e in node.files.values())
                    or any(e["alerts"] for e in node.connections.values()))

    by_start = sorted(nodes, key=lambda n: (n.start_ns, n.pid))
    for node in by_start:
        if notable(node):
            keep_with_ancestors(node)
    for node in by_start:
        if len(kept) >= limit:
            break
        keep_with_ancestors(node)
    return kept


def _session_data(session: Session, extras: SessionExtras, limits: Limits, budget: _MarkBudget) -> dict[str, Any]:
    start = session.start_ns
    kept = _kept_processes(session, limits.processes)
    processes: list[dict[str, Any]] = []
    paths: dict[str, int] = {}  # each path once per session: libraries recur in every process
    uid_of: dict[int, int] = {}  # id(node) -> index in processes
    caused: dict[str, list[int]] = {}  # llm_response id -> process indexes

    # depth first, parents before children; a stack, not recursion: agent trees can be thousands deep
    stack: list[tuple[ProcNode, int, int | None]] = [(root, 0, None) for root in reversed(session.roots)]
    while stack:
        node, depth, parent = stack.pop()
        if id(node) not in kept:
            continue
        index = len(processes)
        uid_of[id(node)] = index
        processes.append(_process_data(node, depth, parent, start, session.end_ns, budget, paths))
        if node.caused_by:
            caused.setdefault(node.caused_by, []).append(index)
        children = sorted(node.children, key=lambda c: (c.start_ns, c.pid), reverse=True)
        stack.extend((child, depth + 1, index) for child in children)
    by_pid = {node.pid: uid_of[id(node)] for node in session.procs.values() if id(node) in uid_of}
    for row in (*extras.alerts, *extras.would_flag, *extras.actions, *extras.model_calls):
        row["t"] = _ms(row.pop("time_ns"), start)
        row["proc"] = by_pid.get(row["pid"]) if row.get("pid") is not None else None
    for call in extras.model_calls:
        call["caused"] = caused.get(call["id"], [])
    sandbox = session.sandbox
    return {"sandbox": {k: sandbox.get(k) for k in ("id", "name", "runtime", "image", "labels", "cgroup_path",
                                                    "cgroup_id") if sandbox.get(k) not in (None, "", {})},
            "image": extras.image or None, "posture": extras.posture,
            "start": rfc3339(start) if start else None, "end": rfc3339(session.end_ns) if session.end_ns else None,
            "duration_ms": _ms(session.end_ns, start), "events": session.events,
            "counts": dict(extras.counts.most_common()), "denied": extras.denied, "exit": session.exit,
            "alerts_total": sum(extras.alerts_by_severity.values()),
            "alerts_by_severity": dict(extras.alerts_by_severity),
            "alerts_by_rule": dict(extras.alerts_by_rule.most_common()),
            "alerts": extras.alerts, "actions": extras.actions, "actions_total": extras.actions_total,
            "model_calls": extras.model_calls, "model_calls_total": extras.model_calls_total,
            "would_flag": extras.would_flag, "would_flag_total": extras.would_flag_total,
            "processes": processes, "processes_total": len(session.procs), "paths": list(paths)}


def _ms(time_ns: int, start_ns: int) -> float:
    """Milliseconds since the session's start (page times; ns epochs do not fit a JS number)."""
    return round((time_ns - start_ns) / 1e6, 3) if time_ns and start_ns else 0.0


def _compact(entry: dict[str, Any]) -> dict[str, Any]:
    """Left out: what is null, empty or false, and a count of 1 (the page reads those as defaults)."""
    return {k: v for k, v in entry.items()
            if v is not None and v is not False and v != [] and v != "" and not (k == "count" and v == 1)}


def _path_index(paths: dict[str, int], path: str) -> int:
    index = paths.get(path)
    if index is None:
        index = paths[path] = len(paths)
    return index


def _process_data(node: ProcNode, depth: int, parent: int | None, start: int, end: int,
                  budget: _MarkBudget, paths: dict[str, int]) -> dict[str, Any]:
    files = sorted(node.files.values(), key=lambda e: e["first_ns"])
    connections = sorted(node.connections.values(), key=lambda e: e["first_ns"])
    # alerted items take the timeline's marks first
    for entry in sorted((*files, *connections), key=lambda e: not e["alerts"]):
        entry["_mark"] = budget.take()
    out: dict[str, Any] = {
        "pid": node.pid, "ppid": node.ppid, "parent": parent, "depth": depth,
        "executable": _clip(node.executable), "args": _clip(" ".join(node.args)),
        "start": _ms(node.start_ns, start), "end": _ms(node.end_ns or end, start), "exited": node.end_ns > 0,
        "exit": node.exit, "placeholder": node.placeholder, "alerts": list(dict.fromkeys(node.alerts)),
        "files": [_compact({"t": _ms(e["first_ns"], start), "p": _path_index(paths, _clip(e["path"])),
                            "ops": e["ops"], "write": e["write"], "count": e["count"], "alerts": e["alerts"],
                            "verdict": e.get("verdict"),
                            "new_path": _clip(str(e["new_path"])) if e.get("new_path") else None,
                            "mark": e.pop("_mark")})
                  for e in files],
        "connections": [_compact({"t": _ms(e["first_ns"], start), "kind": e["kind"],
                                  "address": _clip(str(e.get("address", ""))), "port": e.get("port"),
                                  "query": _clip(str(e["query"])) if e.get("query") else None,
                                  "transport": e.get("transport"), "count": e["count"], "alerts": e["alerts"],
                                  "result": e.get("result"), "verdict": e.get("verdict"), "mark": e.pop("_mark")})
                        for e in connections],
        "more_files": node.more_files, "more_connections": node.more_connections,
    }
    if node.caused_by:
        out["caused_by"] = node.caused_by
    if node.model_asked:
        out["model_asked"] = _clip(node.model_asked)
    if node.previous:
        out["previous"] = [_clip(p) for p in node.previous]
    return out
