"""Command: run a local program for each alert with the alert (schema v1) as JSON on stdin.

The program runs without a shell, with a timeout; a non-zero exit, a timeout or a failure to
start is a failed delivery (retried, then counted). The environment is the monitor's, minus
nothing: put secrets the program needs in its own config, not in the monitor's config.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field

from monitor.outputs.delivery import DeliveryError, Transport
from monitor.outputs.payload import Notice, alert_document

MAX_OUTPUT = 4096


@dataclass
class CommandTransport(Transport):
    argv: list[str]
    timeout_s: float = 10.0
    link_template: str = ""
    _traces: dict[str, str] = field(default_factory=dict)

    def note_trace(self, sandbox_id: str, trace_id: str) -> None:
        self._traces[sandbox_id] = trace_id

    def deliver(self, notices: list[Notice]) -> None:
        for notice in notices:
            if notice.alert is None:
                continue
            sandbox_id = str((notice.alert.event.sandbox or {}).get("id", ""))
            body = json.dumps(alert_document(notice, self._traces.get(sandbox_id, ""), self.link_template),
                              default=str).encode()
            try:
                done = subprocess.run(self.argv, input=body, capture_output=True, timeout=self.timeout_s,
                                      check=False)
            except subprocess.TimeoutExpired:
                raise DeliveryError(f"{self.argv[0]}: no exit within {self.timeout_s:g}s") from None
            except OSError as exc:
                raise DeliveryError(f"{self.argv[0]}: {exc.strerror or exc}") from None
            if done.returncode != 0:
                tail = done.stderr[-MAX_OUTPUT:].decode(errors="replace").strip().splitlines()
                raise DeliveryError(f"{self.argv[0]}: exit status {done.returncode}"
                                    + (f": {tail[-1]}" if tail else ""))
