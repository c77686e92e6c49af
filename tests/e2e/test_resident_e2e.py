"""The resident monitor's socket under bad input and failure, with the real daemon and probes:
garbage, a rule file with errors, a request naming another sandbox, a client killed mid-run, the
daemon stopping under a client; and the Python API (monitor.client) an agent harness uses.
(Every `monitor run` e2e test also runs through a resident daemon: tests/conftest.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from daemon_process import DaemonProcess
from docker_engine import wait_for
from monitor_run import MONITOR, ROOT

from monitor.client import Client, ClientError

pytestmark = pytest.mark.root

KILL_RULE = """\
- rule: Resident test kill
  description: test rule
  when: [exec]
  condition: '"4242" in event.process.args'
  severity: high
  action: kill
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resident")
    socket_path = tmp / "monitor.sock"
    config = tmp / "daemon.yaml"
    config.write_text(f"docker: {{enabled: false}}\ngvisor: {{enabled: false}}\n"
                      f"metrics: {{address: '127.0.0.1:0'}}\nsocket: {socket_path}\n")
    process = DaemonProcess(config, tmp / "daemon.log")
    process.wait_log("resident: `monitor run` sandboxes on", 60)
    yield process, str(socket_path), tmp
    assert process.stop() == 0, process.log()


def ask(socket_path: str, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(socket_path)
        conn.sendall(payload)
        return json.loads(conn.makefile("rb").readline())


def test_the_socket_is_root_only(daemon):
    _, socket_path, _ = daemon
    assert os.stat(socket_path).st_mode & 0o777 == 0o600
    probe = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n" \
            "except PermissionError:\n    print('refused')\nelse:\n    print('connected')\n"
    result = subprocess.run(["python3", "-c", probe, socket_path], capture_output=True, text=True, timeout=30,
                            preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    assert result.stdout.strip() == "refused", result.stderr


@pytest.mark.parametrize(("payload", "message"), [
    (b"this is not json\n", "not a JSON line"),
    (b'["run"]\n', 'expected a JSON object with an "op"'),
    (b'{"op": "shell"}\n', "unknown op 'shell' (expected run)"),
    (b'{"op": "run", "version": 1, "sandbox": "sb-0000"}\n', "unknown key 'sandbox' in the run request"),
    (b'{"op": "run", "version": 7}\n', "protocol version 7 (this monitor speaks 1)"),
    (b'{"op": "run", "version": 1, "rules": ["relative.yaml"]}\n', '"rules" must be a list of absolute paths'),
])
def test_garbage_gets_one_line_and_the_daemon_goes_on(daemon, payload, message):
    process, socket_path, _ = daemon
    reply = ask(socket_path, payload)
    assert reply["type"] == "error" and reply["message"].startswith(message), reply
    assert process.proc.poll() is None
    status, body = process.get("/healthz")
    assert status == 200 and "run clients: 0" in body


def test_a_rule_file_with_errors_is_refused_with_its_line(daemon, tmp_path):
    _, socket_path, _ = daemon
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: Broken\n  when: [exec]\n  condition: event.process.pid ==\n")
    result = subprocess.run([MONITOR, "run", "--connect", socket_path, "-q", "--rules", str(bad), "--", "true"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"monitor: {bad}:3: rule 'Broken':"), line


def test_a_client_killed_mid_run_has_its_sandbox_killed(daemon, tmp_path):
    process, socket_path, _ = daemon
    marker = tmp_path / "still-running"
    client = subprocess.Popen([MONITOR, "run", "--connect", socket_path, "-q", "--json", str(tmp_path / "out.jsonl"),
                               "--", "bash", "-c", f"echo $$ > {marker}; exec sleep 600"], cwd=ROOT)
    wait_for(lambda: marker.exists() and marker.read_text().strip(), 60, "the sandboxed command started")
    sandboxed = int(marker.read_text())
    client.send_signal(signal.SIGKILL)
    client.wait(30)
    wait_for(lambda: not Path(f"/proc/{sandboxed}").exists(), 30, "the sandboxed command killed")
    mark = len(process.log())
    assert process.proc.poll() is None
    wait_for(lambda: "run clients: 0" in process.get("/healthz")[1], 30, "the client's sandbox released")
    assert "Traceback" not in process.log()[mark:]


def test_the_python_api_streams_and_sums_up(daemon, tmp_path):
    _, socket_path, _ = daemon
    rules = tmp_path / "kill.yaml"
    rules.write_text(KILL_RULE)
    with Client(socket_path) as client:
        run = client.sandbox(name="api-task", rules=[str(rules)])
        run.start(["bash", "-c", "cat /etc/hostname > /dev/null; sleep 4242"], stdout=subprocess.DEVNULL)
        records = list(run.records())
    kinds = [r["type"] for r in records]
    assert kinds[-1] == "summary" and run.summary["killed_by"] == "Resident test kill"
    assert any(r["type"] == "event" and r["kind"] == "open" and r["file"]["path"] == "/etc/hostname"
               for r in records)
    [action] = [r for r in records if r["type"] == "action"]
    assert action["action"] == "kill" and action["outcome"] == "done"
    assert all(r["sandbox"]["name"] == "api-task" for r in records if r["type"] == "event")
    with pytest.raises(ClientError, match="no such rule file or folder"), Client(socket_path) as client:
        client.sandbox(rules=[str(tmp_path / "absent.yaml")])


def test_a_daemon_that_stops_under_a_client_kills_the_sandbox_and_says_so(tmp_path):
    socket_path = tmp_path / "monitor.sock"
    config = tmp_path / "daemon.yaml"
    config.write_text(f"docker: {{enabled: false}}\ngvisor: {{enabled: false}}\n"
                      f"metrics: {{address: '127.0.0.1:0'}}\nsocket: {socket_path}\nllm_capture: off\n")
    process = DaemonProcess(config, tmp_path / "daemon.log")
    process.wait_log("resident: `monitor run` sandboxes on", 60)
    marker = tmp_path / "pid"
    client = subprocess.Popen([MONITOR, "run", "--connect", str(socket_path), "-q", "--", "bash", "-c",
                               f"echo $$ > {marker}; exec sleep 600"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for(lambda: marker.exists() and marker.read_text().strip(), 60, "the sandboxed command started")
        sandboxed = int(marker.read_text())
        process.proc.send_signal(signal.SIGKILL)  # no goodbye: the worst case
        process.proc.wait(30)
        _, stderr = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 1
    assert "the resident monitor went away while the sandbox ran" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 10
    while Path(f"/proc/{sandboxed}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{sandboxed}").exists(), "nothing the client started may run unwatched"
