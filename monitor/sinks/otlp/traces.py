"""The trace builder: sandbox sessions -> spans (one trace per session, the process tree as spans).

Trace model (what Tempo shows):
  root span      sandbox_start .. sandbox_end (or close): sandbox identity, host, labels
  process spans  exec .. exit, parented by the span of the process that forked it (fork events, else
                 ppid), so the trace view is the process tree; a second exec of a pid is a child of
                 its first image's span
  span events    file / net / other events on their process's span, `max_span_events` per span and
                 then only counted (an `events.capped` event with counts by kind at span end); the
                 unique files written and egress destinations ride on the span as attributes
  alerts         span event `alert`, status ERROR, `alert.rule` attribute (TraceQL: span.alert.rule)
  model calls    llm_response -> a CLIENT span with GenAI semantic-convention attributes from the
                 request time to the response time; a process whose `caused_by` names it links to it

The trace id of a session can be fixed before the sandboxed command starts: `new_session_context()`
gives ids and the TRACEPARENT for the child; `TraceBuilder.adopt(sandbox_id, ctx)` makes the builder
use them for that sandbox's root span, so an instrumented agent joins the same trace.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from monitor.event import SEVERITIES, ActionRecord, Alert, Event
from monitor.sinks import metrics as m
from monitor.sinks.otlp.attributes import (
    alert_attrs,
    attr_value,
    event_attrs,
    process_attrs,
    root_attrs,
    sandbox_attrs,
)

_UNIQUE_CAP = 64                # files written / destinations kept per span
_LRU_CAP = 4096
_SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


# --- session context: the trace id decided before the sandboxed command starts ---------------

@dataclass(frozen=True, slots=True)
class SessionContext:
    trace_id: int
    span_id: int  # the root span's id: the parent of anything the sandboxed program emits

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"

    def child_env(self, sandbox_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """TRACEPARENT and OTEL_RESOURCE_ATTRIBUTES (with sandbox.id) for the sandboxed command;
        an OTEL_RESOURCE_ATTRIBUTES already in `base` (default os.environ) is kept."""
        base = os.environ if base is None else base
        inherited = base.get("OTEL_RESOURCE_ATTRIBUTES", "").strip().strip(",")
        attrs = f"{m.SANDBOX_ID}={sandbox_id}" + (f",{inherited}" if inherited else "")
        return {"TRACEPARENT": self.traceparent, "OTEL_RESOURCE_ATTRIBUTES": attrs}


def new_session_context() -> SessionContext:
    ids = RandomIdGenerator()
    return SessionContext(trace_id=ids.generate_trace_id(), span_id=ids.generate_span_id())


class PresetIdGenerator(RandomIdGenerator):
    """Random ids, except for the next root span when a session context was adopted."""

    def __init__(self) -> None:
        self.preset: SessionContext | None = None

    def generate_trace_id(self) -> int:
        return self.preset.trace_id if self.preset else super().generate_trace_id()

    def generate_span_id(self) -> int:
        if self.preset:
            span_id, self.preset = self.preset.span_id, None
            return span_id
        return super().generate_span_id()


# --- sessions and their spans ------------------------------------------------------------------

@dataclass
class _ProcSpan:
    span: Any
    pid: int
    recorded: int = 0
    capped: Counter[str] = field(default_factory=Counter)    # past the per-span cap (or shed)
    repeated: Counter[str] = field(default_factory=Counter)  # same kind + target as a recorded one
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    files_written: dict[str, None] = field(default_factory=dict)
    destinations: dict[str, None] = field(default_factory=dict)
    worst_alert: tuple[int, str] | None = None
    rules: list[str] = field(default_factory=list)
    end_at: int | None = None  # exit seen: ends once the exit's alerts (if any) have arrived
    end_queued: float = 0.0     # time.monotonic() when the exit was seen


class _Lru(OrderedDict[Any, Any]):
    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > _LRU_CAP:
            self.popitem(last=False)


@dataclass
class _Session:
    sandbox: dict[str, Any]
    root: _ProcSpan
    procs: dict[int, _ProcSpan] = field(default_factory=dict)
    ended: _Lru = field(default_factory=_Lru)          # pid -> SpanContext, to parent late children
    fork_parent: dict[int, int] = field(default_factory=dict)
    llm_requests: _Lru = field(default_factory=_Lru)   # request id -> Event
    llm_unanswered: dict[Any, deque[Event]] = field(default_factory=dict)  # pid -> requests, oldest first
    llm_spans: _Lru = field(default_factory=_Lru)      # response id -> SpanContext
    alert_spans: _Lru = field(default_factory=_Lru)    # alert id -> _ProcSpan
    pending_end: list[_ProcSpan] = field(default_factory=list)
    alerts: int = 0


class TraceBuilder:
    """Sandbox sessions -> spans. Runs on one thread (the sink's builder)."""

    def __init__(self, tracer: Any, ids: PresetIdGenerator, max_span_events: int) -> None:
        self._tracer = tracer
        self._ids = ids
        self._max_span_events = max_span_events
        self._sessions: dict[str, _Session] = {}
        self._finished: _Lru = _Lru()  # sandbox ids whose session ended: stragglers are not a new trace
        self._adopted: dict[str, SessionContext] = {}
        self._adopt_lock = threading.Lock()
        self.untraced = 0
        self.late = 0
        self.shedding = False  # set by the sink while its inbox is backed up
        self.shed = 0
        self._with_pending: set[str] = set()  # sandbox ids with exited processes' spans to end

    def adopt(self, sandbox_id: str, ctx: SessionContext) -> None:
        with self._adopt_lock:
            self._adopted[sandbox_id] = ctx

    # sessions
    def _session(self, event: Event) -> _Session | None:
        sandbox = event.sandbox
        sandbox_id = str((sandbox or {}).get("id") or "")
        if not sandbox_id:
            self.untraced += 1
            return None
        session = self._sessions.get(sandbox_id)
        if session is None:
            if sandbox_id in self._finished:
                if event.kind != "sandbox_start":  # a restarted container is a new session
                    self.late += 1
                    return None
                del self._finished[sandbox_id]
            session = self._start_session(dict(sandbox or {}), event.time_ns)
            self._sessions[sandbox_id] = session
        return session

    def _start_session(self, sandbox: dict[str, Any], start_ns: int) -> _Session:
        with self._adopt_lock:
            self._ids.preset = self._adopted.pop(str(sandbox["id"]), None)
        try:
            root = self._tracer.start_span(f"sandbox {sandbox.get('name') or sandbox['id']}", context=Context(),
                                           kind=SpanKind.INTERNAL, attributes=root_attrs(sandbox),
                                           start_time=start_ns)
        finally:
            self._ids.preset = None
        return _Session(sandbox=sandbox, root=_ProcSpan(root, 0))

    def _end_session(self, sandbox_id: str, end_ns: int) -> None:
        session = self._sessions.pop(sandbox_id)
        self._flush(session)
        for proc in list(session.procs.values()):
            proc.span.set_attribute(m.PROCESS_OPEN_AT_CLOSE, True)
            self._end(proc, end_ns)
        session.root.span.set_attribute(m.ALERT_COUNT, session.alerts)
        self._end(session.root, end_ns)
        self._finished.put(sandbox_id, True)

    # events
    def on_event(self, event: Event) -> None:
        self.flush_pending()
        session = self._session(event)
        if session is None:
            return
        kind = event.kind
        pid = event.process.get("pid")
        if kind == "sandbox_end":
            self._end_session(str(session.sandbox["id"]), event.time_ns)
        elif kind == "sandbox_start":
            return
        elif kind == "exec" and isinstance(pid, int):
            self._exec(session, event, pid)
        elif kind == "fork":
            child = (event.detail or {}).get("child_pid")
            if isinstance(child, int) and isinstance(pid, int):
                session.fork_parent[child] = pid
        elif kind == "exit" and isinstance(pid, int):
            self._exit(session, event, pid)
        elif kind == "llm_request":
            for key in (event.id, (event.llm or {}).get("id")):
                if key:
                    session.llm_requests.put(str(key), event)
            session.llm_unanswered.setdefault(pid, deque(maxlen=64)).append(event)
        elif kind == "llm_response":
            self._llm_span(session, event)
        else:
            self._span_event(self._proc_for(session, pid), event)

    def _proc_for(self, session: _Session, pid: Any) -> _ProcSpan:
        hops = 0
        while isinstance(pid, int) and hops < 64:
            proc = session.procs.get(pid)
            if proc is not None:
                return proc
            pid = session.fork_parent.get(pid)
            hops += 1
        return session.root

    def _parent_context(self, session: _Session, pid: int, ppid: Any) -> SpanContext:
        previous = session.procs.get(pid)
        if previous is not None:  # a second exec: the new image is a child of the old one
            return previous.span.get_span_context()
        parent_pid = session.fork_parent.get(pid, ppid)
        if isinstance(parent_pid, int):
            proc = self._proc_for(session, parent_pid)
            if proc is not session.root:
                return proc.span.get_span_context()
            if parent_pid in session.ended:
                return session.ended[parent_pid]
        return session.root.span.get_span_context()

    def _exec(self, session: _Session, event: Event, pid: int) -> None:
        process = event.process
        parent = self._parent_context(session, pid, process.get("ppid"))
        links = []
        caused_by = process.get("caused_by")
        if caused_by and str(caused_by) in session.llm_spans:
            links.append(Link(session.llm_spans[str(caused_by)], {m.LINK_TYPE: "caused_by"}))
        attrs = {**sandbox_attrs(session.sandbox), **process_attrs(process), m.EVENT_ID: event.id}
        if event.verdict:
            attrs[m.EVENT_VERDICT] = event.verdict
        name = os.path.basename(str(process.get("executable") or "")) or str(process.get("comm") or "exec")
        span = self._tracer.start_span(name, context=trace_api.set_span_in_context(NonRecordingSpan(parent)),
                                       kind=SpanKind.INTERNAL, attributes=attrs, links=links,
                                       start_time=event.time_ns)
        previous = session.procs.get(pid)
        if previous is not None:
            self._end(previous, event.time_ns)
        session.procs[pid] = _ProcSpan(span, pid)

    def _exit(self, session: _Session, event: Event, pid: int) -> None:
        session.fork_parent.pop(pid, None)
        proc = session.procs.get(pid)
        if proc is None:
            return
        detail = event.detail or {}
        if isinstance(detail.get("code"), int):
            proc.span.set_attribute(m.PROCESS_EXIT_CODE, detail["code"])
        if detail.get("signal"):
            proc.span.set_attribute(m.PROCESS_EXIT_SIGNAL, attr_value(detail["signal"]))
        proc.end_at = event.time_ns
        proc.end_queued = time.monotonic()
        session.pending_end.append(proc)
        self._with_pending.add(str(session.sandbox["id"]))

    def _flush(self, session: _Session, older_than_s: float = 0.0) -> None:
        """End the spans of exited processes. Alerts on an event arrive before the next event, so
        at the next event every pending end is due; when idle, only those past the grace time."""
        if not session.pending_end:
            return
        cutoff = time.monotonic() - older_than_s
        keep = []
        for proc in session.pending_end:
            if older_than_s and proc.end_queued > cutoff:
                keep.append(proc)
                continue
            if session.procs.get(proc.pid) is proc:
                del session.procs[proc.pid]
                session.ended.put(proc.pid, proc.span.get_span_context())
            self._end(proc, proc.end_at or time.time_ns())
        session.pending_end[:] = keep

    def flush_pending(self, older_than_s: float = 0.0) -> None:
        for sandbox_id in list(self._with_pending):
            session = self._sessions.get(sandbox_id)
            if session is not None:
                self._flush(session, older_than_s)
            if session is None or not session.pending_end:
                self._with_pending.discard(sandbox_id)

    def _span_event(self, proc: _ProcSpan, event: Event) -> None:
        file, net = event.file or {}, event.net or {}
        if file.get("write") and file.get("path") and len(proc.files_written) < _UNIQUE_CAP:
            proc.files_written[str(file["path"])] = None
        if net.get("direction") == "egress" and net.get("address") and len(proc.destinations) < _UNIQUE_CAP:
            proc.destinations[f"{net['address']}:{net.get('port', '')}"] = None
        if event.kind == "dns" and net.get("query") and len(proc.destinations) < _UNIQUE_CAP:
            proc.destinations[f"dns:{net['query']}"] = None
        key = (event.kind, event.process.get("pid"), file.get("path"), file.get("new_path"), file.get("write"),
               net.get("address"), net.get("port"), net.get("query"), event.result, event.verdict)
        if key in proc.seen:
            proc.repeated[event.kind] += 1
            return
        if proc.recorded >= self._max_span_events or self.shedding:
            proc.capped[event.kind] += 1
            self.shed += self.shedding
            return
        proc.recorded += 1
        proc.seen.add(key)
        proc.span.add_event(event.kind, event_attrs(event, proc.pid), timestamp=event.time_ns)

    def _end(self, proc: _ProcSpan, end_ns: int) -> None:
        span = proc.span
        if proc.files_written:
            span.set_attribute(m.FILES_WRITTEN, list(proc.files_written))
        if proc.destinations:
            span.set_attribute(m.NET_DESTINATIONS, list(proc.destinations))
        if proc.capped or proc.repeated:
            if proc.capped:
                span.set_attribute(m.EVENTS_CAPPED, sum(proc.capped.values()))
            if proc.repeated:
                span.set_attribute(m.EVENTS_REPEATED, sum(proc.repeated.values()))
            counts = {m.EVENTS_CAPPED_PREFIX + k: n for k, n in proc.capped.items()}
            counts.update({m.EVENTS_REPEATED_PREFIX + k: n for k, n in proc.repeated.items()})
            span.add_event(m.SPAN_EVENT_CAPPED, counts, timestamp=end_ns)
        span.end(end_time=max(end_ns, span.start_time or end_ns))

    # model calls
    def _llm_span(self, session: _Session, event: Event) -> None:
        llm = event.llm or {}
        request = self._request_of(session, event)
        request_llm = (request.llm or {}) if request is not None else {}
        start_ns = min(request.time_ns, event.time_ns) if request is not None else event.time_ns
        provider = str(llm.get("provider") or request_llm.get("provider") or "")
        request_model = str(request_llm.get("model") or llm.get("model") or "")
        attrs: dict[str, Any] = {**sandbox_attrs(session.sandbox), m.GEN_AI_OPERATION: "chat",
                                 m.GEN_AI_SYSTEM: provider, m.GEN_AI_PROVIDER: provider,
                                 m.GEN_AI_REQUEST_MODEL: request_model, m.EVENT_ID: event.id}
        if llm.get("model"):
            attrs[m.GEN_AI_RESPONSE_MODEL] = str(llm["model"])
        if llm.get("id"):
            attrs[m.GEN_AI_RESPONSE_ID] = str(llm["id"])
        if llm.get("stop_reason"):
            attrs[m.GEN_AI_FINISH_REASONS] = [str(llm["stop_reason"])]
        usage = llm.get("usage") or {}
        for key, name in (("input_tokens", m.GEN_AI_INPUT_TOKENS), ("output_tokens", m.GEN_AI_OUTPUT_TOKENS)):
            if isinstance(usage.get(key), int):
                attrs[name] = usage[key]
        if llm.get("host"):
            attrs[m.SERVER_ADDRESS] = str(llm["host"])
        if isinstance(event.process.get("pid"), int):
            attrs[m.PROCESS_PID] = event.process["pid"]
        tool_calls = [c for c in (llm.get("tool_calls") or []) if isinstance(c, Mapping)]
        if tool_calls:
            attrs[m.GEN_AI_TOOL_NAMES] = [str(c.get("name") or "") for c in tool_calls]
        parent = self._proc_for(session, event.process.get("pid")).span.get_span_context()
        span = self._tracer.start_span(f"chat {request_model}".strip(), kind=SpanKind.CLIENT, attributes=attrs,
                                       context=trace_api.set_span_in_context(NonRecordingSpan(parent)),
                                       start_time=start_ns)
        for call in tool_calls:
            span.add_event(m.SPAN_EVENT_TOOL_CALL, {
                m.GEN_AI_TOOL_NAME: str(call.get("name") or ""), m.GEN_AI_TOOL_CALL_ID: str(call.get("id") or ""),
                m.GEN_AI_TOOL_CALL_ARGUMENTS: attr_value(call.get("arguments") if isinstance(call.get("arguments"), str)
                                                          else json.dumps(call.get("arguments"), default=str))},
                timestamp=event.time_ns)
        span.end(end_time=event.time_ns)
        for key in (event.id, llm.get("id")):
            if key:
                session.llm_spans.put(str(key), span.get_span_context())

    @staticmethod
    def _request_of(session: _Session, response: Event) -> Event | None:
        """The llm_request a response answers: by id when the source names it, else the oldest
        unanswered request of the same process (HTTP/1.1 answers in order)."""
        llm = response.llm or {}
        for key in (llm.get("request_event_id"), llm.get("request_id")):
            request = session.llm_requests.get(str(key)) if key else None
            if request is not None:
                pending = session.llm_unanswered.get(request.process.get("pid"))
                if pending and request in pending:
                    pending.remove(request)
                return request
        pending = session.llm_unanswered.get(response.process.get("pid"))
        while pending:
            request = pending.popleft()
            if request.time_ns <= response.time_ns:
                return request
        return None

    # alerts and actions
    def on_alert(self, alert: Alert) -> Any:
        """Marks the alert on its process span; returns that span's context (for the log record)."""
        session = self._session(alert.event)
        if session is None:
            return None
        proc = self._proc_for(session, alert.event.process.get("pid"))
        proc.span.add_event(m.SPAN_EVENT_ALERT, alert_attrs(alert), timestamp=alert.event.time_ns)
        rank = _SEVERITY_RANK.get(alert.severity, 0)
        if proc.worst_alert is None or rank > proc.worst_alert[0]:
            proc.worst_alert = (rank, alert.rule)
            proc.span.set_attribute(m.ALERT_RULE, alert.rule)
            proc.span.set_attribute(m.ALERT_SEVERITY, alert.severity)
        if alert.rule not in proc.rules:
            proc.rules.append(alert.rule)
            proc.span.set_attribute(m.ALERT_RULES, list(proc.rules))
        proc.span.set_status(Status(StatusCode.ERROR, proc.worst_alert[1]))
        session.alerts += 1
        if proc is not session.root:
            session.root.span.set_status(Status(StatusCode.ERROR, "alerts in session"))
        session.alert_spans.put(alert.id, proc)
        return proc.span.get_span_context()

    def on_action(self, record: ActionRecord) -> None:
        session = self._sessions.get(str(record.target.get("sandbox") or ""))
        proc = None
        for candidate in ([session] if session else list(self._sessions.values())):
            proc = candidate.alert_spans.get(record.alert_id)
            if proc is not None:
                break
        if proc is None:
            if session is None:
                return
            proc = session.root
        proc.span.add_event(m.SPAN_EVENT_ACTION, {
            m.ACTION_KIND: record.action, m.ACTION_OUTCOME: record.outcome, m.ALERT_RULE: record.rule,
            m.ACTION_LATENCY_MS: round(record.latency_ms, 3), m.ACTION_MESSAGE: record.message,
            m.ALERT_ID: record.alert_id}, timestamp=record.time_ns)

    def close(self, end_ns: int) -> None:
        for sandbox_id in list(self._sessions):
            self._end_session(sandbox_id, end_ns)
