"""Sandboxes: what the monitor watches. A sandbox is a cgroup-v2 directory (ours from `monitor run`,
a Docker container's, or a gVisor sandbox's) with an identity that every event carries.

The registry maps kernel cgroup ids to sandboxes; enrich looks events up in it, actions use it to
find what to kill or freeze, and nothing outside it is ever acted upon.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

DEFAULT_KILL_TIMEOUT_S = 2.0  # a runtime's own kill (the Docker engine) before the cgroup.kill fallback


@dataclass(slots=True)
class Sandbox:
    id: str
    name: str
    runtime: str  # cgroup | docker | gvisor
    cgroup_id: int = 0
    cgroup_path: str = ""
    image: str | None = None
    image_digest: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    root_pid: int = 0
    started_ns: int = 0
    _identity: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        """The `event.sandbox` map (cached: the same dict object is shared by all its events)."""
        if self._identity is None:
            ident: dict[str, Any] = {"id": self.id, "name": self.name, "runtime": self.runtime,
                                     "labels": dict(self.labels), "cgroup_id": self.cgroup_id,
                                     "cgroup_path": self.cgroup_path}
            if self.image:
                ident["image"] = self.image
            if self.image_digest:
                ident["image_digest"] = self.image_digest
            self._identity = ident
        return self._identity


class SandboxRegistry:
    """cgroup id -> Sandbox, thread-safe. Only sandboxes in here are ever acted upon."""

    def __init__(self) -> None:
        self._by_cgroup: dict[int, Sandbox] = {}
        self._by_id: dict[str, Sandbox] = {}
        self._lock = threading.Lock()

    def add(self, sandbox: Sandbox) -> None:
        with self._lock:
            if sandbox.cgroup_id:
                self._by_cgroup[sandbox.cgroup_id] = sandbox
            self._by_id[sandbox.id] = sandbox

    def remove(self, sandbox_id: str) -> Sandbox | None:
        with self._lock:
            sandbox = self._by_id.pop(sandbox_id, None)
            if sandbox and self._by_cgroup.get(sandbox.cgroup_id) is sandbox:
                del self._by_cgroup[sandbox.cgroup_id]
            return sandbox

    def by_cgroup(self, cgroup_id: int) -> Sandbox | None:
        return self._by_cgroup.get(cgroup_id)

    def by_id(self, sandbox_id: str) -> Sandbox | None:
        return self._by_id.get(sandbox_id)

    def all(self) -> list[Sandbox]:
        with self._lock:
            return list(self._by_id.values())
