"""A real Prometheus (Debian's `prometheus`, installed by `EXTRAS=prometheus scripts/setup.sh`) scrapes
the monitor's /metrics endpoint: `serve_metrics` fed by a pipeline (every series the code defines is
there, with the values counted), and a real `monitor daemon` watching a cgroup with its probes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from daemon_process import DaemonProcess  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

from monitor.engine.pipeline import Pipeline  # noqa: E402
from monitor.event import ActionRecord, Alert, Event  # noqa: E402
from monitor.sinks import metrics as m  # noqa: E402
from monitor.sinks.otlp import OtlpSink  # noqa: E402

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="Debian's prometheus is not installed (EXTRAS=prometheus scripts/setup.sh)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Policy:
    """Pure logic stand-in for the rule engine: flags reads of /etc/shadow (the engine itself is
    tested in its own module; here only the counting path matters)."""

    def evaluate(self, event: Event) -> list[Alert]:
        if event.file and event.file.get("path") == "/etc/shadow":
            return [Alert("Shadow password file read", "high", "kill", ["credential_access"], event)]
        return []


class Actor:
    def take(self, alert: Alert) -> ActionRecord:
        return ActionRecord("kill", alert.rule, {"sandbox": alert.event.sandbox["id"]}, "done", 3.0,
                            alert_id=alert.id)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Any, int]]:
    """Start Prometheus against a target port chosen now; yields (start(target_port), api_port)."""
    api_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> None:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: sandbox-monitor\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        procs.append(subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{api_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb")))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{api_port}/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready: " + (tmp_path / "prometheus.log").read_text()[-2000:])

    yield start, api_port
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def query(api_port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{api_port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = http_get(url)
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_prometheus_scrapes_every_defined_series(prometheus: tuple[Any, int]) -> None:
    start, api_port = prometheus
    sink = m.MetricsSink()
    with OtlpReceiver() as rx:
        otlp = OtlpSink(rx.http_url, signals=("traces",))
        sink.add_export_source(otlp.export_stats)
        # an alert output's delivery figures (monitor/outputs: Outputs.readings' shape)
        sink.add_output_source(lambda: {"hook": {"sent": 3, "queued": 1, "failures": 2, "undelivered": {"failed": 1},
                                                 "suppressed": {("Shadow read", "dedup"): 4}}})
        pipeline = Pipeline(None, Policy(), Actor(), [sink, otlp])
        sandbox = {"id": "sb-prom", "name": "prom-agent", "runtime": "cgroup"}
        t0 = time.time_ns()
        pipeline.process_all([
            Event("sandbox_start", t0, sandbox=sandbox),
            Event("exec", t0 + 1, process={"pid": 5, "executable": "/usr/bin/cat"}, sandbox=sandbox),
            *[Event("open", t0 + 2 + i, process={"pid": 5}, file={"path": "/etc/shadow"}, sandbox=sandbox)
              for i in range(3)],
            Event("llm_response", t0 + 10, process={"pid": 5}, sandbox=sandbox,
                  llm={"provider": "openai", "model": "gpt-x", "usage": {"input_tokens": 50, "output_tokens": 7}}),
        ])
        sink.record_lost({"open": 2})
        sink.record_rule_eval("open", 3e-6)
        sink.record_rule_errors({"Broken rule": 2})
        otlp.wait_idle()
        server = m.serve_metrics(sink, 0, health=lambda: (True, "ok"))
        try:
            assert http_get(f"http://127.0.0.1:{server.port}/healthz") == (200, b"ok\n")
            start(server.port)
            wanted = set(m.prometheus_series())
            deadline = time.monotonic() + 30
            names: set[str] = set()
            while time.monotonic() < deadline and not wanted <= names:
                names = {r["metric"]["__name__"] for r in query(api_port, 'count by (__name__) ({__name__=~"sandbox_monitor_.*"})')}
                time.sleep(0.5)
            assert wanted <= names, f"missing in Prometheus: {sorted(wanted - names)}"

            events = {r["metric"]["kind"]: float(r["value"][1])
                      for r in query(api_port, 'sandbox_monitor_events_total{job="sandbox-monitor"}')}
            assert events == {"sandbox_start": 1, "exec": 1, "open": 3, "llm_response": 1}
            (alerts,) = query(api_port, "sandbox_monitor_alerts_total")
            assert alerts["metric"]["rule"] == "Shadow password file read" and alerts["value"][1] == "3"
            (actions,) = query(api_port, "sandbox_monitor_actions_total")
            assert (actions["metric"]["action"], actions["metric"]["outcome"], actions["value"][1]) == ("kill", "done", "3")
            (errors,) = query(api_port, "sandbox_monitor_rule_errors_total")
            assert (errors["metric"]["rule"], errors["value"][1]) == ("Broken rule", "2")
            (lost,) = query(api_port, "sandbox_monitor_lost_events_total")
            assert (lost["metric"]["probe"], lost["value"][1]) == ("open", "2")
            (watched,) = query(api_port, "sandbox_monitor_sandboxes_watched")
            assert (watched["metric"]["runtime"], watched["value"][1]) == ("cgroup", "1")
            tokens = {r["metric"]["type"]: r["value"][1] for r in query(api_port, "sandbox_monitor_llm_tokens_total")}
            assert tokens == {"input": "50", "output": "7"}
            exported = {r["metric"]["signal"] for r in query(api_port, "sandbox_monitor_exported_total")}
            assert "traces" in exported
        finally:
            server.close()
            otlp.close({})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for eBPF and cgroups (CI runs as root)")
def test_prometheus_scrapes_a_real_daemon(prometheus: tuple[Any, int], tmp_path: Path) -> None:
    from monitor.sandbox.docker import cgroup2_root
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup-v2 hierarchy on this host")
    start, api_port = prometheus
    cgroup = Path(root) / f"sm-test-prom-{os.getpid()}"
    cgroup.mkdir()
    config = tmp_path / "daemon.yaml"
    config.write_text(f"""\
rules: [{Path(__file__).resolve().parents[2] / "rules"}]
docker: {{enabled: false}}
metrics: {{address: "127.0.0.1:0"}}
gvisor: {{socket: {tmp_path / "run" / "gvisor.sock"}}}
cgroups:
  - {{path: {cgroup}, name: prom-box}}
""")
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_log(r"probes attached", 120)
        start(daemon.port)
        # a process that joins the watched cgroup, then execs
        subprocess.run(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec cat /etc/shadow"],
                       check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        execs: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not execs:
            execs = query(api_port, 'sandbox_monitor_sandbox_events_total{sandbox_name="prom-box"}')
            time.sleep(0.5)
        assert execs, daemon.log()[-3000:]
        (watched,) = query(api_port, 'sandbox_monitor_sandboxes_watched{runtime="cgroup"}')
        assert watched["value"][1] == "1"
        deadline = time.monotonic() + 15
        alerts: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not alerts:
            alerts = query(api_port, 'sandbox_monitor_alerts_total{rule="Shadow password file read"}')
            time.sleep(0.5)
        assert alerts, daemon.log()[-3000:]
        assert query(api_port, 'sandbox_monitor_events_total{kind="exec",runtime="cgroup"}')
    finally:
        daemon.stop()
        cgroup.rmdir()
