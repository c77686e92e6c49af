"""The source contract: what every event source (eBPF probes, gVisor trace sessions, TLS uprobes,
a journal read back) offers the judging loop. Every optional member has a default here, so the
loop and the assembly call them all without probing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monitor.event import Event

if TYPE_CHECKING:
    from monitor.sandbox import Sandbox


class Source:
    name = "source"

    def poll(self, timeout_ms: int) -> list[Event]:
        """Events that arrived, waiting at most timeout_ms for the first."""
        raise NotImplementedError

    def fileno(self) -> int | None:
        """A descriptor that polls readable when records wait, so one wait serves every source
        (monitor.engine.loop); None: this source must be polled in turn."""
        return None

    def drain(self) -> list[Event]:
        """What is left once the producers are gone (held records, half-built exchanges)."""
        return []

    def watch(self, sandbox: Sandbox) -> None:
        """Start reporting what `sandbox` does (a source that reports everything it is given
        need do nothing)."""

    def unwatch(self, sandbox: Sandbox) -> None:
        """Stop reporting `sandbox`."""

    def lost(self) -> dict[str, int]:
        """Records lost so far, by probe or channel (never silent)."""
        return {}

    def folded(self) -> dict[str, int]:
        """Records folded into an earlier one (counted in its detail.repeats), by kind."""
        return {}

    def stats(self) -> dict[str, Any]:
        """Counters for the summary."""
        return {}

    def close(self) -> None:
        """Release what the source holds (probes, sockets)."""


class FilteredSource(Source):
    """Another source seen through a filter: every member is the inner source's, except that what
    `poll` and `drain` return passes through `keep` first."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.name = inner.name

    def keep(self, events: list[Event]) -> list[Event]:
        return events

    def poll(self, timeout_ms: int) -> list[Event]:
        return self.keep(self.inner.poll(timeout_ms))

    def drain(self) -> list[Event]:
        return self.keep(self.inner.drain())

    def fileno(self) -> int | None:
        return self.inner.fileno()

    def watch(self, sandbox: Sandbox) -> None:
        self.inner.watch(sandbox)

    def unwatch(self, sandbox: Sandbox) -> None:
        self.inner.unwatch(sandbox)

    def lost(self) -> dict[str, int]:
        return self.inner.lost()

    def folded(self) -> dict[str, int]:
        return self.inner.folded()

    def stats(self) -> dict[str, Any]:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()
