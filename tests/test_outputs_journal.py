"""What an output could not deliver is kept in the journal (one assembly: engine/sinks.py wires the
outputs' undelivered hook to the journal), and read back as `undelivered` records."""

from __future__ import annotations

import socket
from pathlib import Path

from monitor.engine.config import MonitorConfig
from monitor.engine.pipeline import Pipeline
from monitor.engine.sinks import build_sinks
from monitor.event import Alert, Event
from monitor.journal import JournalReader
from monitor.outputs import load_outputs


def closed_port() -> int:
    with socket.socket() as probe:  # bound, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_alert_no_output_could_deliver_is_journaled(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.yaml"
    outputs.write_text(f"outputs:\n  - type: webhook\n    name: dead\n    url: http://127.0.0.1:{closed_port()}/hook\n"
                       "    retry: {attempts: 1, backoff: 10ms}\n    timeout: 1s\n")
    config = MonitorConfig(journal=str(tmp_path / "journal"), outputs=load_outputs(str(outputs)))
    sinks = build_sinks(config)
    assert [s.name for s in sinks][-1] == "journal"  # outputs close first, the journal keeps their losses
    event = Event(kind="open", file={"path": "/etc/shadow"}, sandbox={"id": "sb-1", "name": "a"})
    alert = Alert(rule="Shadow read", severity="high", action="alert", tags=["T1003.008"], event=event)
    pipeline = Pipeline(None, None, None, sinks)
    pipeline.emit(event, [alert], [])
    pipeline.close({})
    [lost] = [r for r in JournalReader(str(tmp_path / "journal")).records() if r.type == "undelivered"]
    assert lost.value["output"] == "dead" and lost.value["rule"] == "Shadow read"
    assert lost.value["alert_id"] == alert.id and lost.sandbox_id == "sb-1"
    assert lost.value["reason"] == "failed"


def test_replay_resends_only_what_was_undelivered(tmp_path: Path) -> None:
    """`monitor replay --alerts-to FILE --undelivered`: the alerts the journal says an output
    missed, and no other, go out again through a receiver that is up now."""
    import http.server
    import json
    import subprocess
    import sys
    import threading

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    dead = tmp_path / "dead.yaml"
    dead.write_text(f"outputs:\n  - {{type: webhook, name: dead, url: 'http://127.0.0.1:{closed_port()}/h', "
                    "retry: {attempts: 1, backoff: 10ms}, timeout: 1s, rules: {include: ['Missed*']}}\n")
    config = MonitorConfig(journal=str(tmp_path / "journal"), outputs=load_outputs(str(dead)))
    sinks = build_sinks(config)
    pipeline = Pipeline(None, None, None, sinks)
    for rule in ("Missed one", "Delivered elsewhere"):
        event = Event(kind="exec", process={"pid": 1}, sandbox={"id": "sb-2", "name": "b"})
        pipeline.emit(event, [Alert(rule=rule, severity="high", action="alert", tags=[], event=event)], [])
    pipeline.close({})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        live = tmp_path / "live.yaml"
        live.write_text(f"outputs:\n  - {{type: webhook, url: 'http://127.0.0.1:{server.server_port}/h'}}\n")
        result = subprocess.run([sys.executable, "-m", "monitor", "replay", str(tmp_path / "journal"),
                                 "--alerts-to", str(live), "--undelivered"], capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert [body["rule"] for body in received] == ["Missed one"], received
