"""`monitor daemon`: config validation (file:line errors, exit 1), and the daemon's life cycle as
a real process: /healthz and /metrics on loopback, SIGHUP and file-change rule reloads, a bad
reload kept out, SIGTERM exits 0 with the sinks flushed. (Docker + probes: tests/e2e.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from daemon_process import ROOT, DaemonProcess, daemon_cmd

from monitor.engine.config import ConfigError, MonitorConfig, parse_config
from monitor.engine.daemon import Daemon
from monitor.source import Source

ONE_RULE = """\
- rule: Daemon test marker
  when: [exec]
  condition: event.process.executable == "/nonexistent/marker"
"""
TWO_RULES = ONE_RULE + """\
- rule: Daemon test marker two
  when: [open]
  condition: event.file.path == "/nonexistent/marker"
"""


def parse(text: str, tmp_path: Path):
    return parse_config(textwrap.dedent(text), str(tmp_path / "daemon.yaml"))


def test_full_config(tmp_path):
    config = parse("""\
        rules: [rules, /etc/sm/rules.d]
        audit: true
        probes: false
        docker:
          host: unix:///run/docker.sock
          watch: "agent.sandbox=true,team"
          kill_timeout: 1.5
        gvisor: {enabled: true, socket: run/gv.sock, hold_unknown_ms: 500}
        cgroups:
          - {path: /sys/fs/cgroup/agents/a1, name: agent-1, labels: {team: ml}}
          - path: /sys/fs/cgroup/agents/a2
        sinks:
          json: out/events.jsonl
          journal: /var/lib/sm/journal
          otlp: http://127.0.0.1:4317
        metrics:
          address: 127.0.0.1:9999
        """, tmp_path)
    assert config.rules == [str(tmp_path / "rules"), "/etc/sm/rules.d"]
    assert config.audit is True and config.probes is False
    assert config.docker_host == "unix:///run/docker.sock"
    assert config.watch == {"agent.sandbox": "true", "team": None}
    assert config.kill_timeout_s == 1.5
    assert [(c.path, c.name, c.labels) for c in config.cgroups] == [
        ("/sys/fs/cgroup/agents/a1", "agent-1", {"team": "ml"}), ("/sys/fs/cgroup/agents/a2", "a2", {})]
    assert config.json == str(tmp_path / "out/events.jsonl")
    assert config.journal == "/var/lib/sm/journal" and config.otlp == "http://127.0.0.1:4317"
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9999)
    assert (config.gvisor_enabled, config.gvisor_socket, config.gvisor_hold_ms) == (
        True, str(tmp_path / "run/gv.sock"), 500)


def test_empty_config_is_defaults(tmp_path):
    config = parse("", tmp_path)
    assert config.cpu == "auto" and parse("cpu: off", tmp_path).cpu == "off"
    assert config.rules == [] and config.watch == {} and config.docker_enabled
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9464)
    assert parse("docker: {watch: all}", tmp_path).watch == {}


@pytest.mark.parametrize(("text", "line", "message"), [
    ("audit: true\nsinkz: {}\n", 2, "unknown key 'sinkz'"),
    ("docker:\n  watch: all\n  kill_timeout: -1\n", 3, "positive number of seconds"),
    ("docker:\n  enabled: yes please\n", 2, "true or false"),
    ("docker:\n  watch: '=x'\n", 2, "no key"),
    ("docker:\n  hots: x\n", 2, "unknown key 'hots'"),
    ("metrics:\n  address: 0.0.0.0:9464\n", 2, "loopback only"),
    ("metrics:\n  address: localhost:http\n", 2, "HOST:PORT"),
    ("sinks:\n  json: 42\n", 2, "non-empty string"),
    ("cgroups:\n  - name: x\n", 2, "needs a path"),
    ("rules: [a, b\naudit: true\n", 2, "YAML error"),
    ("- just\n- a list\n", 1, "must be a mapping"),
    ("audit: true\naudit: false\n", 2, "duplicate key 'audit'"),
    ("sinks:\n  json: out.jsonl\n  otlp: ftp://collector\n", 3, "sinks.otlp: OTLP endpoint"),
    ("gvisor:\n  hold_unknown_ms: 1.5\n", 2, "whole number of milliseconds"),
    ("audit: false\nllm_capture: everything\n", 2, "off, metadata or full"),
    ("audit: false\ncpu: [1]\n", 2, "cpu: expected auto, off or a CPU number"),
    ("cpu: 4096\n", 1, "cpu: 4096: not auto, off or one of this process's CPUs"),
])
def test_config_errors_name_file_and_line(tmp_path, text, line, message):
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    text_of_error = str(info.value)
    assert text_of_error.startswith(f"{tmp_path / 'daemon.yaml'}:{line}: "), text_of_error
    assert message in text_of_error


# --- the daemon as a process ------------------------------------------------------------------

def run_cli(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(daemon_cmd(config, *extra), capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_malformed_config_exits_1_with_file_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("docker:\n  watch: all\n  kill_timeout: soon\n")
    result = run_cli(config)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{config}:3: docker.kill_timeout must be a positive number of seconds" in lines[0]
    assert "Traceback" not in result.stderr


def test_monitor_cli_runs_the_daemon_subcommand(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("metrics:\n  address: 0.0.0.0:9464\n")
    result = subprocess.run([sys.executable, "-m", "monitor", "daemon", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"monitor daemon: {config}:2: metrics.address '0.0.0.0:9464': "
                                     "the monitor listens on loopback only (127.0.0.1 or ::1)")


def test_missing_config_and_bad_rules_exit_1(tmp_path):
    result = run_cli(tmp_path / "absent.yaml")
    assert result.returncode == 1 and "absent.yaml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    rules = tmp_path / "rules.yaml"
    rules.write_text("- rule: Broken\n  when: [exec]\n  condition: event.process.pid ==\n")
    config = tmp_path / "daemon.yaml"
    config.write_text(f"rules: [{rules}]\n")
    result = run_cli(config, "--check")
    assert result.returncode == 1
    assert f"{rules}:" in result.stderr and "Traceback" not in result.stderr


def test_check_accepts_good_config(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(TWO_RULES)
    config = tmp_path / "daemon.yaml"
    config.write_text(f"rules: [{rules}]\ndocker: {{watch: all}}\n")
    result = run_cli(config, "--check")
    assert result.returncode == 0, result.stderr
    assert "ok (2 rules)" in result.stdout


@pytest.fixture
def daemon_files(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.yaml").write_text(ONE_RULE)
    config = tmp_path / "daemon.yaml"
    config.write_text(textwrap.dedent(f"""\
        rules: [{rules}]
        probes: false
        docker: {{enabled: false}}
        sinks: {{json: {tmp_path / 'out.jsonl'}}}
        metrics: {{address: "127.0.0.1:0"}}
        gvisor: {{socket: {tmp_path / 'run' / 'gvisor.sock'}}}
        """))
    return config, rules / "site.yaml", tmp_path / "out.jsonl"


def test_daemon_serves_health_and_metrics_reloads_and_stops(tmp_path, daemon_files):
    config, rule_file, out = daemon_files
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        status, body = daemon.get("/healthz")
        assert status == 200 and body.startswith("ok: 0 sandboxes watched"), body
        assert "probes off" in body and "gvisor sessions: 0" in body
        sock = tmp_path / "run" / "gvisor.sock"
        assert sock.is_socket() and oct(sock.stat().st_mode & 0o777) == "0o600"
        assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        status, body = daemon.get("/metrics")
        assert status == 200 and "sandbox_monitor_events_total" in body
        assert daemon.get("/nope")[0] == 404

        # SIGHUP reloads even when nothing changed on disk
        mark = len(daemon.log())
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log(r"rules reloaded: 1 rules", start=mark)

        # a changed rule file is picked up without a signal
        mark = len(daemon.log())
        rule_file.write_text(TWO_RULES)
        daemon.wait_log(r"rules reloaded: 2 rules", start=mark)

        # a broken file is refused and the daemon keeps the rules in force
        mark = len(daemon.log())
        rule_file.write_text(TWO_RULES + "- rule: Broken\n  when: [exec]\n  condition: (\n")
        daemon.wait_log(r"rules reload failed, keeping the previous 2 rules: .*site\.yaml:\d+", start=mark)
        assert daemon.get("/healthz")[0] == 200
        assert daemon.proc.poll() is None
    finally:
        code = daemon.stop()
    assert code == 0, daemon.log()
    assert "Traceback" not in daemon.log()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and records[-1]["type"] == "summary"
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_metrics_port_in_use_is_one_line_exit_1(tmp_path, daemon_files):
    config, _, _ = daemon_files
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
        result = run_cli(config)
    finally:
        busy.close()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_watched_cgroup_is_a_sandbox(tmp_path, daemon_files):
    """A configured plain cgroup is registered (healthz counts it) and announced."""
    from monitor.sandbox.docker import cgroup2_root
    root = cgroup2_root()
    if root is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup-v2 hierarchy")
    cgroup = Path(root) / f"sm-test-daemon-{os.getpid()}"
    cgroup.mkdir()
    config, _, out = daemon_files
    try:
        config.write_text(config.read_text() + f"cgroups:\n  - {{path: {cgroup}, name: plain-one}}\n")
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        try:
            status, body = daemon.get("/healthz")
            assert status == 200 and body.startswith("ok: 1 sandboxes watched"), body
        finally:
            assert daemon.stop() == 0
    finally:
        cgroup.rmdir()
    starts = [json.loads(line) for line in out.read_text().splitlines()
              if '"sandbox_start"' in line]
    assert starts and starts[0]["sandbox"]["name"] == "plain-one"
    assert starts[0]["sandbox"]["cgroup_id"] == starts[0]["sandbox"]["cgroup_id"] > 0


def test_health_reports_a_stalled_main_loop():
    daemon = Daemon(MonitorConfig(probes=False, docker_enabled=False, gvisor_enabled=False))
    ok, reason = daemon.health()
    assert ok and reason == "ok: 0 sandboxes watched; probes off"
    daemon._heartbeat -= 10
    ok, reason = daemon.health()
    assert not ok and reason.startswith("main loop stalled for 10s")


def test_rule_metrics_come_from_the_pipeline_sample_and_the_error_totals(tmp_path):
    """The daemon's /metrics: evaluation time is the pipeline's one-in-8 sample (never also timed
    per event by the daemon: each event once, at most), error totals from the rule set."""
    from monitor.engine.pipeline import EVAL_SAMPLE_EVERY, Pipeline
    from monitor.event import Event
    from monitor.policy import load_rules
    from monitor.sinks.metrics import MetricsSink
    rules_file = tmp_path / "r.yaml"
    rules_file.write_text(TWO_RULES + """- rule: Daemon test type error
  when: [exec]
  condition: event.process.pid > "x"
""")
    metrics = MetricsSink()
    rules = load_rules([rules_file])
    pipeline = Pipeline(None, rules, None, [metrics])
    events = [Event(kind="exec", process={"pid": 5, "executable": "/nonexistent/marker"})
              for _ in range(2 * EVAL_SAMPLE_EVERY)]
    pipeline.process_all(events)
    metrics.record_rule_errors(dict(rules.eval_errors))
    text = metrics.exposition().decode()
    assert pipeline.alerts_by_rule["Daemon test marker"] == 2 * EVAL_SAMPLE_EVERY
    assert 'sandbox_monitor_rule_eval_duration_seconds_count{kind="exec"} 2.0' in text
    assert f'sandbox_monitor_rule_errors_total{{rule="Daemon test type error"}} {2.0 * EVAL_SAMPLE_EVERY}' in text


# --- early discovery: held events, runtime-setup filter --------------------------------------

class ListSource(Source):
    name = "ebpf"

    def __init__(self) -> None:
        self.batches: list[list] = []

    def poll(self, timeout_ms: int) -> list:
        return self.batches.pop(0) if self.batches else []

    def lost(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def _ev(kind: str, cgroup_id: int, pid: int = 10, comm: str = "sh", **detail):
    from monitor.event import Event
    return Event(kind=kind, cgroup_id=cgroup_id, process={"pid": pid, "comm": comm}, detail=detail or None)


def test_held_events_wait_for_the_sandbox_then_go_on_in_order():
    from monitor.sandbox import Sandbox, SandboxRegistry
    from monitor.sensor.filters import HeldCgroups
    registry = SandboxRegistry()
    source = ListSource()
    held = HeldCgroups(source, registry, hold_s=60)
    held.hold(77)
    source.batches = [[_ev("open", 77), _ev("open", 5)], [_ev("exec", 77)], []]
    assert [e.cgroup_id for e in held.poll(0)] == [5]  # 77 waits
    assert held.poll(0) == []
    registry.add(Sandbox(id="c" * 64, name="agent", runtime="docker", cgroup_id=77))
    assert [(e.kind, e.cgroup_id) for e in held.poll(0)] == [("open", 77), ("exec", 77)]
    assert held.poll(0) == []


def test_held_events_of_an_unselected_container_are_dropped_and_unnamed_ones_expire():
    from monitor.sandbox import SandboxRegistry
    from monitor.sensor.filters import HeldCgroups
    source = ListSource()
    held = HeldCgroups(source, SandboxRegistry(), hold_s=0.05)
    held.hold(1)
    held.hold(2)
    source.batches = [[_ev("open", 1), _ev("open", 2), _ev("open", 2)]]
    assert held.poll(0) == []
    held.drop(1)
    time.sleep(0.06)
    assert [e.cgroup_id for e in held.poll(0)] == [2, 2]  # unnamed after hold_s: passed on
    assert held.counts == {"held_dropped": 1, "held_expired": 2}


def test_runtime_setup_filter_drops_runc_stages_but_never_the_program():
    from monitor.sandbox import Sandbox, SandboxRegistry
    from monitor.sensor.filters import RuntimeSetupFilter
    registry = SandboxRegistry()
    registry.add(Sandbox(id="d" * 64, name="c", runtime="docker", cgroup_id=9))
    registry.add(Sandbox(id="sb", name="run", runtime="cgroup", cgroup_id=8))
    source = ListSource()
    flt = RuntimeSetupFilter(source, registry)
    source.batches = [[
        _ev("mount", 9, pid=100, comm="runc:[2:INIT]"),         # runc setting up: dropped
        _ev("open", 9, pid=100, comm="runc:[2:INIT]"),
        _ev("exec", 9, pid=100, comm="sh"),                     # the container's program: kept
        _ev("fork", 9, pid=100, comm="sh", child_pid=101),
        _ev("open", 9, pid=101, comm="runc:[2:INIT]"),          # a child renamed itself: kept
        _ev("open", 8, pid=300, comm="runc:[2:INIT]"),          # not a Docker sandbox: kept
    ]]
    kept = [(e.kind, e.process["pid"]) for e in flt.poll(0)]
    assert kept == [("exec", 100), ("fork", 100), ("open", 101), ("open", 300)]
    assert flt.filtered == 2


def test_yaml_bare_off_means_off(tmp_path):
    """YAML reads a bare `off` as false: for llm_capture, cpu and socket it means off."""
    config = parse("llm_capture: off\ncpu: off\nsocket: off\n", tmp_path)
    assert (config.llm_capture, config.cpu, config.resident_socket) == ("off", "off", None)
    config = parse(f"socket: {tmp_path / 'm.sock'}\n", tmp_path)
    assert config.resident_socket == str(tmp_path / "m.sock")
