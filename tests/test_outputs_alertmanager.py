"""Alerts paged through a real Alertmanager (Debian's prometheus-alertmanager, started here on
127.0.0.1): the assertions are on what Alertmanager delivered to the test's webhook receiver after
its own grouping, not on what the monitor sent."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.event import Event
from monitor.outputs import build_outputs, load_outputs
from tests.alert_receivers import Alertmanager, HttpReceiver, wait_until
from tests.monitor_run import MONITOR, monitor_run, needs_root
from tests.test_outputs import make_alert, sandbox

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def paging(tmp_path):
    receiver = HttpReceiver()
    manager = Alertmanager(tmp_path, receiver.url)
    try:
        yield manager, receiver
    finally:
        manager.stop()
        receiver.close()


def notifications(receiver: HttpReceiver) -> list[dict[str, Any]]:
    return [body for body in receiver.bodies() if "alerts" in body]


def delivered_alerts(receiver: HttpReceiver) -> list[dict[str, Any]]:
    return [alert for body in notifications(receiver) for alert in body["alerts"]]


def outputs_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "outputs.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.standalone_only("drives the outputs or the daemon directly, not monitor run")
def test_alerts_are_grouped_paged_and_resolved_when_the_sandbox_ends(paging, tmp_path):
    manager, receiver = paging
    config = outputs_file(tmp_path, f"""\
        outputs:
          - type: alertmanager
            url: {manager.url}
            resolve_after: 10m
            trace_link: "http://127.0.0.1:3000/explore?traceId={{trace_id}}"
        """)
    outputs = build_outputs(load_outputs(config))
    sink = outputs.sinks[0]
    outputs.note_trace("sb-1", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
    one, two = sandbox("sb-1", "agent-1"), sandbox("sb-2", "agent-2", image="node:22")
    try:
        sink.on_alert(make_alert(sb=one))
        sink.on_alert(make_alert(sb=two))
        sink.on_alert(make_alert(rule="Miner started", severity="critical", sb=one, tags=("impact", "T1496")))
        wait_until(lambda: len(notifications(receiver)) >= 2, 30, "two grouped notifications")
        groups = {body["groupLabels"]["alertname"]: body for body in notifications(receiver)}
        assert set(groups) == {"Cloud credentials read", "Miner started"}
        cloud = groups["Cloud credentials read"]
        assert cloud["status"] == "firing" and len(cloud["alerts"]) == 2
        by_sandbox = {a["labels"]["sandbox"]: a for a in cloud["alerts"]}
        labels = by_sandbox["sb-1"]["labels"]
        assert labels == {"alertname": "Cloud credentials read", "severity": "high", "sandbox": "sb-1",
                          "sandbox_name": "agent-1", "image": "python:3.12", "rule_id": "cloud-credentials-read",
                          "source": "sandbox-monitor", "mitre_techniques": "T1552.001",
                          "mitre_tactics": "credential_access"}
        assert by_sandbox["sb-2"]["labels"]["image"] == "node:22"
        annotations = by_sandbox["sb-1"]["annotations"]
        assert annotations["process_chain"] == "python3(100) > bash(200) > cat(300)"
        assert json.loads(annotations["matched"]) == {"file.path": "/root/.aws/credentials"}
        assert annotations["trace_url"] == "http://127.0.0.1:3000/explore?traceId=" + "ab" * 16
        assert "trace_url" not in by_sandbox["sb-2"]["annotations"]  # no trace known for it

        sink.on_event(Event(kind="sandbox_end", sandbox=one, source="monitor"))
        wait_until(lambda: any(a["status"] == "resolved" and a["labels"]["sandbox"] == "sb-1"
                               for a in delivered_alerts(receiver)), 30, "sb-1's alerts resolved")
        wait_until(lambda: {a["labels"]["alertname"] for a in delivered_alerts(receiver)
                            if a["status"] == "resolved"} == {"Cloud credentials read", "Miner started"},
                   30, "both rules resolved for sb-1")
        resolved = [a for a in delivered_alerts(receiver) if a["status"] == "resolved"]
        assert {a["labels"]["sandbox"] for a in resolved} == {"sb-1"}
        still_firing = [a for a in manager.alerts() if a["status"]["state"] == "active"]
        assert [(a["labels"]["alertname"], a["labels"]["sandbox"]) for a in still_firing] == [
            ("Cloud credentials read", "sb-2")]
    finally:
        sink.close({})
    assert sink.stats()["sent"] == 4 and sink.stats()["undelivered"] == 0  # 3 alerts, 1 resolution


@pytest.mark.standalone_only("drives the outputs or the daemon directly, not monitor run")
def test_a_quiet_alert_resolves_by_itself_and_active_ones_are_resent(paging, tmp_path):
    manager, receiver = paging
    config = outputs_file(tmp_path, f"""\
        outputs:
          - {{type: alertmanager, url: "{manager.url}", resolve_after: 2s, resend: 300ms}}
        """)
    sink = build_outputs(load_outputs(config)).sinks[0]
    try:
        sink.on_alert(make_alert())
        wait_until(lambda: any(a["status"] == "firing" for a in delivered_alerts(receiver)), 30, "the page")
        wait_until(lambda: sink.stats().get("resent", 0) >= 2, 30, "re-sends of the active alert")
        wait_until(lambda: any(a["status"] == "resolved" for a in delivered_alerts(receiver)), 30,
                   "the quiet-period resolution")
    finally:
        sink.close({})
    resolved = [a for a in delivered_alerts(receiver) if a["status"] == "resolved"]
    assert [a["labels"]["sandbox"] for a in resolved] == ["sb-1"]
    assert sink.stats()["undelivered"] == 0


RULES = """\
- rule: Hostname file read
  description: A test marker.
  when: [open]
  condition: event.file.path == "/etc/hostname"
  severity: high
  tags: [discovery, T1082]
"""


@needs_root
def test_monitor_run_pages_through_alertmanager_and_replay_resends_the_window(paging, tmp_path):
    manager, receiver = paging
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = outputs_file(tmp_path, f"""\
        outputs:
          - {{type: alertmanager, url: "{manager.url}", min_severity: high, dedup: {{window: 10m}}}}
        """)
    journal = tmp_path / "journal"
    started = time.time_ns()
    # the agent runs past Alertmanager's group_wait: a page that is resolved before its group's
    # first notification is never sent (Alertmanager's rule), so the test would see nothing
    result = monitor_run("cat /etc/hostname > /dev/null; sleep 2; cat /etc/hostname > /dev/null", "--rules", str(rules),
                         "--outputs", config, "--name", "paged-agent", "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    assert result.alert_rules() == {"Hostname file read"}
    outputs_summary = result.summary["sinks"]["alertmanager"]
    # the page, its resolution when the sandbox ended, the repeat's count when its window closed
    assert outputs_summary["sent"] == 3 and outputs_summary["undelivered"] == 0
    assert outputs_summary["suppressed"] == {"Hostname file read": {"dedup": 1}}
    assert outputs_summary["aggregates"] == 1
    wait_until(lambda: any(a["status"] == "resolved" for a in delivered_alerts(receiver)), 60,
               "the resolution after the sandbox ended")
    assert [a for a in manager.alerts() if a["status"]["state"] == "active"] == []
    assert [a["status"] for a in delivered_alerts(receiver)] == ["firing", "resolved"]
    pages = delivered_alerts(receiver)
    assert {(a["labels"]["alertname"], a["labels"]["sandbox_name"]) for a in pages} == {
        ("Hostname file read", "paged-agent")}
    assert pages[0]["labels"]["sandbox"] == result.summary["sandbox"]["id"]
    assert pages[0]["labels"]["mitre_techniques"] == "T1082"
    assert "cat(" in pages[0]["annotations"]["process_chain"]

    # the endpoint was "down": the journal's window goes out again through a webhook
    hook = HttpReceiver()
    try:
        resend = outputs_file(tmp_path, f"outputs:\n  - {{type: webhook, url: '{hook.url}/resend'}}\n")
        replay = subprocess.run([MONITOR, "replay", str(journal), "--alerts-to", resend, "--since", str(started)],
                                capture_output=True, text=True, timeout=120)
        assert replay.returncode == 0, replay.stderr
        report = json.loads(replay.stdout.strip().splitlines()[-1])
        assert report["type"] == "resend" and report["alerts"] == len(result.alerts) == 2
        assert report["outputs"]["webhook"]["sent"] == 2
        assert [b["id"] for b in hook.bodies()] == [a["id"] for a in result.alerts]
    finally:
        hook.close()


@pytest.mark.standalone_only("drives the outputs or the daemon directly, not monitor run")
@needs_root
def test_the_daemon_pages_for_a_watched_cgroup(paging, tmp_path):
    from monitor.sandbox.docker import cgroup2_root
    from tests.daemon_process import DaemonProcess
    manager, receiver = paging
    root = cgroup2_root()
    assert root is not None
    cgroup = Path(root) / f"sm-test-outputs-{os.getpid()}"
    cgroup.mkdir()
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = tmp_path / "daemon.yaml"
    config.write_text(textwrap.dedent(f"""\
        rules: [{rules}]
        docker: {{enabled: false}}
        llm_capture: "off"
        metrics: {{address: "127.0.0.1:0"}}
        gvisor: {{enabled: false}}
        cgroups:
          - {{path: {cgroup}, name: watched-agent, labels: {{team: ml}}}}
        outputs:
          - type: alertmanager
            url: {manager.url}
            sandboxes: {{labels: {{team: ml}}}}
        """))
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        child = subprocess.Popen(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs; exec cat /etc/hostname"],
                                 stdout=subprocess.DEVNULL)
        assert child.wait(30) == 0
        wait_until(lambda: delivered_alerts(receiver), 60, "the daemon's page")
        status, metrics = daemon.get("/metrics")
        assert 'sandbox_monitor_output_sent_total{output="alertmanager"} 1.0' in metrics
    finally:
        code = daemon.stop()
        cgroup.rmdir()
    assert code == 0, daemon.log()
    page = delivered_alerts(receiver)[0]
    assert page["labels"]["alertname"] == "Hostname file read"
    assert page["labels"]["sandbox_name"] == "watched-agent" and page["status"] == "firing"


@pytest.mark.standalone_only("drives the outputs or the daemon directly, not monitor run")
@pytest.mark.docker
@needs_root
def test_the_daemon_pages_for_a_docker_container_and_resolves_when_it_ends(paging, tmp_path, docker_engine):
    from tests.daemon_process import DaemonProcess
    manager, receiver = paging
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    config = tmp_path / "daemon.yaml"
    config.write_text(textwrap.dedent(f"""\
        rules: [{rules}]
        docker: {{host: "{docker_engine.host}", watch: agent.sandbox=true}}
        llm_capture: "off"
        metrics: {{address: "127.0.0.1:0"}}
        gvisor: {{enabled: false}}
        outputs:
          - type: alertmanager
            url: {manager.url}
            sandboxes: {{labels: {{agent.sandbox: "true"}}, names: ["outputs-*"]}}
        """))
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        ignored = docker_engine.run(["sh", "-c", "cat /etc/hostname; sleep 3"], name="ignored-by-route",
                                    labels={"agent.sandbox": "true"})
        paged = docker_engine.run(["sh", "-c", "cat /etc/hostname; sleep 3"], name="outputs-agent",
                                  labels={"agent.sandbox": "true", "team": "ml"})
        wait_until(lambda: any(a["status"] == "resolved" for a in delivered_alerts(receiver)), 90,
                   "the container's page, resolved when it ended")
        status, metrics = daemon.get("/metrics")
        assert 'sandbox_monitor_output_sent_total{output="alertmanager"} 2.0' in metrics  # page + resolution
    finally:
        code = daemon.stop()
        docker_engine.remove_all()
    assert code == 0, daemon.log()
    alerts = delivered_alerts(receiver)
    assert [a["status"] for a in alerts] == ["firing", "resolved"]
    assert {a["labels"]["sandbox"] for a in alerts} == {paged} and ignored != paged
    assert alerts[0]["labels"]["sandbox_name"] == "outputs-agent"
    assert alerts[0]["labels"]["image"] == docker_engine.image
