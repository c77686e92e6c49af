"""Why did the agent do that: link each process an agent starts to the model response that asked
for a tool call.

A response with tool calls opens a window for the process that received it (the agent), in its
sandbox; the agent's next llm_request closes it. An exec in the same sandbox, by the agent or a
descendant of it (event.process.ancestors), at a time inside a window, gets
`event.process["caused_by"] = <llm_response event id>`.

Windows are kept by time, not by arrival order: the eBPF sensor and the llm source are polled
in turn, so an exec may be processed after the agent's next request although it happened
before it.

Call `observe(event)` on every enriched event of the kinds in `ToolCallLinker.kinds`, in pipeline
order (after enrich, before policy): it reads no other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.event import Event

MAX_WINDOWS_PER_AGENT = 32


@dataclass(slots=True)
class _Window:
    response_id: str
    start_ns: int
    end_ns: int | None = None  # the agent's next request; None while still open


class ToolCallLinker:
    """`on_exec(pid, executable, cgroup_id)` is called for every exec (LlmSource.notice_exec: attach to a new binary's
    TLS library at once)."""

    kinds = frozenset({"exec", "llm_request", "llm_response"})

    def __init__(self, on_exec: Callable[[int, str, int], None] | None = None) -> None:
        self.on_exec = on_exec
        # (sandbox key, agent pid) -> recent windows, oldest first
        self._windows: dict[tuple[Any, int], deque[_Window]] = {}
        self.linked = 0

    @staticmethod
    def _sandbox_key(event: Event) -> Any:
        if event.sandbox and event.sandbox.get("id"):
            return event.sandbox["id"]
        return event.cgroup_id or None

    def observe(self, event: Event) -> str | None:
        """Record or apply a link; returns the response id an exec was linked to."""
        if event.kind == "llm_response":
            self._open(event)
        elif event.kind == "llm_request":
            self._close(event)
        elif event.kind == "exec":
            if self.on_exec is not None and event.process.get("pid"):
                self.on_exec(int(event.process["pid"]), str(event.process.get("executable") or ""),
                             event.cgroup_id)
            return self._link(event)
        return None

    def _open(self, event: Event) -> None:
        if not (event.llm or {}).get("tool_calls"):
            return
        key = (self._sandbox_key(event), int(event.process.get("pid", 0)))
        windows = self._windows.setdefault(key, deque(maxlen=MAX_WINDOWS_PER_AGENT))
        for window in windows:  # a response ends the previous window of the same agent too
            if window.end_ns is None or window.end_ns > event.time_ns:
                window.end_ns = event.time_ns
        windows.append(_Window(event.id, event.time_ns))

    def _close(self, event: Event) -> None:
        key = (self._sandbox_key(event), int(event.process.get("pid", 0)))
        for window in self._windows.get(key, ()):
            if window.start_ns <= event.time_ns and (window.end_ns is None or window.end_ns > event.time_ns):
                window.end_ns = event.time_ns

    def _link(self, event: Event) -> str | None:
        sandbox = self._sandbox_key(event)
        lineage = [int(event.process.get("pid", 0))]
        lineage += [int(a.get("pid", 0)) for a in event.process.get("ancestors") or []
                    if isinstance(a, dict)]
        best: _Window | None = None
        for (key_sandbox, agent_pid), windows in self._windows.items():
            if key_sandbox != sandbox or agent_pid not in lineage:
                continue
            for window in windows:
                inside = window.start_ns <= event.time_ns and (
                    window.end_ns is None or event.time_ns < window.end_ns)
                if inside and (best is None or window.start_ns > best.start_ns):
                    best = window
        if best is None:
            return None
        event.process["caused_by"] = best.response_id
        self.linked += 1
        return best.response_id

    def forget_sandbox(self, sandbox_key: Any) -> None:
        for key in [k for k in self._windows if k[0] == sandbox_key]:
            del self._windows[key]
