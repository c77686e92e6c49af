"""JSON lines (DESIGN.md): {"type": "event"|"alert"|"action"|"summary", ...}, one object a line.

A file is created 0600 and flushed every line (a reader tailing it, or a crash, sees whole lines).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
from typing import IO, Any

from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink


def open_private(path: str, mode: str = "w") -> IO[str]:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode, buffering=1)


def _regular_file(out: IO[str]) -> bool:
    """Writes to a regular file never wait on a reader (stdout, a pipe or a FIFO may)."""
    try:
        return stat.S_ISREG(os.fstat(out.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


class JsonlSink(Sink):
    name = "jsonl"
    reports_summary = True

    def __init__(self, target: str, events: bool = True) -> None:
        self._own = target != "-"
        self._out: IO[str] = open_private(target) if self._own else sys.stdout
        self.events = events
        self.written = 0
        self.may_block = not _regular_file(self._out)

    def _write(self, record: dict[str, Any]) -> None:
        try:
            self._out.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self.written += 1
        except (BrokenPipeError, ValueError):
            pass  # the reader went away: the journal still holds everything

    def on_event(self, event: Event) -> None:
        if self.events:
            self._write({"type": "event", **event.to_dict()})

    def on_alert(self, alert: Alert) -> None:
        self._write(alert.to_dict())

    def on_action(self, record: ActionRecord) -> None:
        self._write(record.to_dict())

    def close(self, summary: dict[str, Any]) -> None:
        self._write({"type": "summary", **summary})
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._out.flush()
        if self._own:
            self._out.close()
