"""Timeline: the process tree of each sandbox session in a journal.

Built from exec/fork/exit events (parents via process.ppid and ancestors), with each process's
files and connections under it, alerts marked, and "model asked: run X" above a process an LLM
tool call caused.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.tree import Tree

from monitor.event import Alert, Event, rfc3339
from monitor.journal import JournalReader

FILE_EVENT_KINDS = frozenset({"open", "unlink", "rename", "chmod"})
NET_EVENT_KINDS = frozenset({"connect", "accept", "bind", "listen", "dns"})


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
class SessionTimeline:
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
        self.sessions: dict[str, SessionTimeline] = {}
        self.alerts_by_event: dict[str, list[tuple[str, str]]] = {}  # event id -> [(rule, severity)]

    def add_alert(self, alert: Alert) -> None:
        self.alerts_by_event.setdefault(alert.event.id, []).append((alert.rule, alert.severity))

    def _session(self, event: Event) -> SessionTimeline:
        sandbox = event.sandbox or {"id": "-", "name": "(no sandbox)"}
        sid = str(sandbox.get("id"))
        session = self.sessions.get(sid)
        if session is None:
            session = self.sessions[sid] = SessionTimeline(sandbox=sandbox, start_ns=event.time_ns)
        return session

    def _node(self, session: SessionTimeline, process: dict[str, Any], time_ns: int) -> ProcNode | None:
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

    def _placeholders(self, session: SessionTimeline, ancestors: list[Any], time_ns: int) -> None:
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

    def finish(self) -> list[SessionTimeline]:
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


def _is_descendant(candidate: ProcNode, node: ProcNode, session: SessionTimeline) -> bool:
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
                   on_warning: Callable[[str], None] | None = None) -> list[SessionTimeline]:
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


def render_session(session: SessionTimeline) -> Tree:
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


