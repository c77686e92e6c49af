"""What the daemon puts between the eBPF source and the pipeline for Docker containers: events held
until the inventory names their container, and the container runtime's own setup work dropped."""

from __future__ import annotations

import re
import threading
import time

from monitor.event import Event
from monitor.sandbox import SandboxRegistry
from monitor.source import FilteredSource, Source


class HeldCgroups(FilteredSource):
    """Events of containers seen at their cgroup's creation, held until the inventory names them.

    The probes watch a new container's cgroup at once (its first instructions run before the
    engine will describe it); its events wait here until the sandbox is registered, then go on
    with its identity. A container the selector does not pick is dropped with its events; one
    still unnamed after `hold_s` goes on without identity (`counts` has both)."""

    def __init__(self, source: Source, registry: SandboxRegistry, hold_s: float = 5.0) -> None:
        super().__init__(source)
        self.registry = registry
        self.hold_s = hold_s
        self._lock = threading.Lock()
        self._held: dict[int, tuple[float, list[Event]]] = {}
        self._dropped: set[int] = set()
        self.counts = {"held_dropped": 0, "held_expired": 0}

    def hold(self, cgroup_id: int) -> None:
        with self._lock:
            self._held.setdefault(cgroup_id, (time.monotonic() + self.hold_s, []))

    def drop(self, cgroup_id: int) -> None:
        with self._lock:
            if cgroup_id in self._held:
                self._dropped.add(cgroup_id)

    def drain(self) -> list[Event]:
        events = super().drain()
        with self._lock:
            rest = [e for _, buffered in self._held.values() for e in buffered]
            self._held.clear()
        return events + rest

    def keep(self, events: list[Event]) -> list[Event]:
        with self._lock:
            if not self._held:
                return events
            out = []
            for event in events:
                entry = self._held.get(event.cgroup_id)
                if entry is None:
                    out.append(event)
                else:
                    entry[1].append(event)
            now = time.monotonic()
            for cgroup_id, (deadline, buffered) in list(self._held.items()):
                if cgroup_id in self._dropped:
                    self.counts["held_dropped"] += len(buffered)
                elif self.registry.by_cgroup(cgroup_id) is not None:
                    out.extend(buffered)
                elif now > deadline:
                    self.counts["held_expired"] += len(buffered)
                    out.extend(buffered)
                else:
                    continue
                del self._held[cgroup_id]
                self._dropped.discard(cgroup_id)
            return out



class RuntimeSetupFilter(FilteredSource):
    """Drops what the container runtime itself does inside a container's cgroup before handing it
    over: runc and its stages (comm "runc:[0:PARENT]", "runc:[1:CHILD]", "runc:[2:INIT]") mount the root
    filesystem, open /proc, set ids... for every `docker run` and `docker exec` - hundreds of
    events that are not the agent's. Not a hiding place: a process that exec'd in the container,
    or descends from one, is never filtered, whatever name it gives itself; exec events always
    pass (runc's last act, the exec of the container's program, is the first event kept)."""

    RUNC_STAGE = re.compile(r"runc(:\[[0-2]:(PARENT|CHILD|INIT)\])?$")

    def __init__(self, source: Source, registry: SandboxRegistry) -> None:
        super().__init__(source)
        self.registry = registry
        self._program_pids: set[int] = set()  # exec'd in a container, or forked from one that did
        self.filtered = 0

    def keep(self, events: list[Event]) -> list[Event]:
        out = []
        for event in events:
            pid = int(event.process.get("pid") or 0)
            if event.kind == "exec":
                self._program_pids.add(pid)
            elif event.kind == "fork" and pid in self._program_pids and event.detail:
                self._program_pids.add(int(event.detail.get("child_pid") or 0))
            elif self._is_runtime_setup(event, pid):
                self.filtered += 1
                continue
            if event.kind == "exit":
                self._program_pids.discard(pid)
            out.append(event)
        return out

    def _is_runtime_setup(self, event: Event, pid: int) -> bool:
        if pid in self._program_pids or not self.RUNC_STAGE.match(str(event.process.get("comm") or "")):
            return False
        sandbox = self.registry.by_cgroup(event.cgroup_id)
        return sandbox is not None and sandbox.runtime == "docker"
