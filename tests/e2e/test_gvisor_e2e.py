"""`monitor run --runtime gvisor` against real runsc sandboxes: capture, the default rule pack's
alerts compared with the cgroup runtime on the same behaviours, enforcement, and faults.

No packet leaves the machine: gVisor runs with --network=none, and the cgroup-runtime half of the
comparison makes its outbound connects inside a fresh network namespace (`unshare -n`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor_run import MONITOR, monitor_run, read_jsonl  # noqa: E402

from monitor.gvisor.runner import GvisorSandbox  # noqa: E402

pytestmark = [
    pytest.mark.gvisor,
    pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc not installed (scripts/setup.sh installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runsc do needs root (CI runs as root)"),
]

GVISOR = ("--runtime", "gvisor")

# The same behaviours for both runtimes; each line should trip one rule of the default pack.
SCENARIO = r"""
set -e
D=$(mktemp -d /tmp/smgv.XXXXXX)
cat /etc/shadow > /dev/null
echo 'alias ll=ls' >> "$D/.bashrc"
cp /bin/true "$D/true" && "$D/true"
touch "$D/suid" && chmod 4755 "$D/suid"
/usr/bin/python3 - <<'EOF'
import os
fd = os.memfd_create("payload")
os.write(fd, open("/bin/true", "rb").read())
pid = os.fork()
if pid == 0:
    os.execv(f"/proc/self/fd/{fd}", ["payload"])
os.waitpid(pid, 0)
EOF
setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c '
import os
try: os.setuid(0)
except OSError: pass'
/usr/bin/python3 - <<'EOF'
import ctypes, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    time.sleep(5); os._exit(0)
libc.ptrace(16, pid, 0, 0)
os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
EOF
unshare -n /usr/bin/python3 - <<'EOF'
import socket
for address in (("169.254.169.254", 80), ("10.255.255.1", 3333)):
    s = socket.socket(); s.settimeout(0.5)
    try: s.connect(address)
    except OSError: pass
EOF
rm -rf "$D"
"""
EXPECTED_RULES = {
    "Shadow password file read", "Shell startup file modified", "Program run from a temporary directory",
    "Setuid or setgid bit set", "Program run from memory or a file descriptor",
    "Non-root process asked for root", "Process attached with ptrace",
    "Cloud metadata endpoint contacted", "Mining pool port contacted",
}


def write_rules(text: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir="/tmp",
                                     prefix="smgv-rules-") as handle:
        handle.write(text)
    return handle.name


def test_capture_identity_and_exit_status() -> None:
    result = monitor_run("cat /etc/hostname > /dev/null; echo hi > /tmp/smgv-out.txt; exit 4", *GVISOR)
    assert result.returncode == 4, result.stderr
    events = [e for e in result.events() if e["source"] == "gvisor"]
    assert events and all(e["sandbox"]["runtime"] == "gvisor" for e in events)
    cat = [e for e in result.events("exec") if e["process"]["executable"].endswith("/cat")]
    assert cat and cat[0]["process"]["args"] == ["cat", "/etc/hostname"] and cat[0]["process"]["ppid"] == 1
    opened = {e["file"]["path"]: e["file"] for e in result.events("open")}
    assert opened["/etc/hostname"]["write"] is False
    assert opened["/tmp/smgv-out.txt"]["write"] is True and "O_CREAT" in opened["/tmp/smgv-out.txt"]["flags"]
    assert not Path("/tmp/smgv-out.txt").exists()  # runsc do: the host filesystem under an overlay
    exits = [e for e in result.events("exit") if e["process"]["pid"] == 1]
    assert exits and exits[0]["detail"]["code"] == 4
    assert result.summary["exit_status"] == 4 and result.summary["sandbox"]["runtime"] == "gvisor"
    assert result.summary["lost"] == {"gvisor_dropped": 0, "gvisor_malformed": 0}


def test_command_not_found_is_127() -> None:
    result = monitor_run(["/nonexistent/agent-binary"], *GVISOR)
    assert result.returncode == 127
    assert "command not found" in result.stderr and result.summary["exit_status"] == 127


@pytest.mark.root
def test_same_alerts_as_the_cgroup_runtime() -> None:
    """The default pack over the same behaviours: identical alert sets under both runtimes."""
    gvisor = monitor_run(SCENARIO, *GVISOR)
    cgroup = monitor_run(SCENARIO)
    assert gvisor.returncode == 0, gvisor.stderr
    if cgroup.returncode != 0 or not cgroup.events("exec"):
        pytest.skip(f"cgroup runtime unavailable here: {cgroup.stderr.strip()[-200:]}")
    assert gvisor.alert_rules() >= EXPECTED_RULES, EXPECTED_RULES - gvisor.alert_rules()
    assert gvisor.alert_rules() == cgroup.alert_rules()
    memfd_exec = [a for a in gvisor.alerts if a["rule"] == "Program run from memory or a file descriptor"]
    assert memfd_exec[0]["event"]["process"]["executable"].startswith("/proc/self/fd/")


@pytest.mark.root
def test_dns_query_name_is_the_field_gvisor_cannot_report() -> None:
    """A lookup of the metadata host: the eBPF sensor reads the query name from the packet and
    the pack alerts; gVisor reports the lookup (dns event, port 53) but not `net.query`."""
    lookup = r"""unshare -n sh -c 'ip link set lo up; /usr/bin/python3 - <<EOF
import socket, struct
query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in "metadata.google.internal".split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", 53))
s.send(query)
EOF'"""
    gvisor = monitor_run(lookup, *GVISOR)
    dns = gvisor.events("dns")
    assert dns and dns[0]["net"]["port"] == 53 and dns[0]["net"]["transport"] == "udp"
    assert "query" not in dns[0]["net"]
    assert "Cloud metadata endpoint contacted" not in gvisor.alert_rules()
    cgroup = monitor_run(lookup)
    if cgroup.returncode != 0 or not cgroup.events("exec"):
        pytest.skip(f"cgroup runtime unavailable here: {cgroup.stderr.strip()[-200:]}")
    assert any(e["net"].get("query") == "metadata.google.internal" for e in cgroup.events("dns"))
    assert "Cloud metadata endpoint contacted" in cgroup.alert_rules()


def test_kill_rule_stops_the_sandbox() -> None:
    rules = write_rules("""
- rule: Marker sleep
  description: test rule
  when: [exec]
  condition: event.process.executable.endsWith("/sleep") && "4242" in event.process.args
  severity: high
  action: kill
""")
    started = time.monotonic()
    result = monitor_run("sleep 4242; echo survived", *GVISOR, "--rules", rules)
    os.unlink(rules)
    assert result.returncode == 137, result.stderr
    assert time.monotonic() - started < 60
    [action] = result.actions
    assert action["action"] == "kill" and action["outcome"] == "done"
    assert result.summary["killed_by"] == "Marker sleep"
    assert "survived" not in result.stdout


def test_deny_rules_are_refused_at_load() -> None:
    rules = write_rules("""
- rule: No netcat
  description: test rule
  when: [exec]
  condition: event.process.executable == "/usr/bin/nc"
  severity: high
  action: deny
""")
    result = monitor_run(["true"], *GVISOR, "--rules", rules)
    audit = monitor_run(["true"], *GVISOR, "--rules", rules, "--audit")
    os.unlink(rules)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "No netcat" in result.stderr and "deny is not enforceable under gVisor" in result.stderr
    assert audit.returncode == 0


def test_runsc_missing_names_the_package(tmp_path: Path) -> None:
    proc = subprocess.run([MONITOR, "run", "--runtime", "gvisor", "-q", "--no-rules", "--", "/bin/true"],
                          capture_output=True, text=True, env={**os.environ, "PATH": str(tmp_path)}, timeout=60)
    assert proc.returncode == 1
    assert "runsc" in proc.stderr and "apt-get install runsc" in proc.stderr and "Traceback" not in proc.stderr


def _sandbox_processes(ancestor: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(ancestor).children(recursive=True)
    except psutil.Error:
        return []
    return [c for c in children if "runsc-sandbox" in (c.name() or "") or "boot" in c.cmdline()]


def test_sandbox_dying_mid_session_ends_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([MONITOR, "run", "--runtime", "gvisor", "--json", str(out), "-q", "--",
                             "sh", "-c", "sleep 300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        boot: list[psutil.Process] = []
        while not boot and time.monotonic() < deadline:
            time.sleep(0.2)
            boot = _sandbox_processes(proc.pid)
        assert boot, "no runsc sandbox process appeared"
        time.sleep(0.5)
        for process in boot:
            process.send_signal(signal.SIGKILL)  # the Sentry dies under the monitor's feet
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in stderr
    records = read_jsonl(out)
    summary = records[-1]
    assert summary["type"] == "summary" and summary["exit_status"] != 0
    assert proc.returncode == summary["exit_status"]
    assert any(r.get("kind") == "sandbox_end" for r in records)


def _runsc_status(sandbox: GvisorSandbox) -> str:
    root, container_id = sandbox._locate() or ("", "")
    state = subprocess.run([sandbox.runsc, f"--root={root}", "state", container_id],
                           capture_output=True, text=True, check=True).stdout
    return json.loads(state)["status"]


def test_freeze_thaw_kill_process_and_kill() -> None:
    cmd = ["sh", "-c", "sleep 300 & sleep 301 & wait"]
    with GvisorSandbox(cmd, "ctl", stdout=subprocess.DEVNULL) as sandbox:
        sleeps: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while len(sleeps) < 2 and time.monotonic() < deadline:
            for event in sandbox.poll(100):
                if event.kind == "exec" and event.process["executable"].endswith("/sleep"):
                    sleeps[event.process["args"][1]] = event.process["pid"]
        assert set(sleeps) == {"300", "301"}
        assert sandbox.freeze() == "done" and _runsc_status(sandbox) == "paused"
        assert sandbox.thaw() == "done" and _runsc_status(sandbox) == "running"
        assert sandbox.kill_process(sleeps["300"]) == "done"
        exits: list = []
        deadline = time.monotonic() + 15
        while not exits and time.monotonic() < deadline:
            exits = [e for e in sandbox.poll(100) if e.kind == "exit" and e.process["pid"] == sleeps["300"]]
        assert exits and exits[0].detail == {"code": 137, "signal": 9}
        assert sandbox.proc.poll() is None  # only that process died
        assert sandbox.kill() == "done"
        sandbox.wait(timeout=30)
        assert sandbox.exit_status() == 137



@pytest.mark.docker
def test_docker_runsc_container_identity_and_kill(docker_engine, tmp_path: Path) -> None:
    """`monitor gvisor install` against a real dockerd: a --runtime=runsc container reports to the
    sink, its events carry the inventory's identity, and a kill rule stops it via the engine."""
    from monitor.actions import Actions
    from monitor.actions.docker import DockerEnforcer
    from monitor.engine.pipeline import Pipeline
    from monitor.gvisor.install import install_docker_runtime, uninstall_docker_runtime
    from monitor.gvisor.source import TraceSource, registry_sandbox_for
    from monitor.policy import DEFAULT_RULES_DIR, load_rules
    from monitor.sandbox import SandboxRegistry
    from monitor.sandbox.docker import DockerInventory

    sock = tmp_path / "trace.sock"
    install_docker_runtime(daemon_json=docker_engine.config_path, socket_path=sock,
                           pod_init_config=tmp_path / "pod-init.json", extra_args=["--network=none"])
    rules = tmp_path / "kill.yaml"
    rules.write_text("""
- rule: Marker sleep in a container
  description: test rule
  when: [exec]
  condition: '"4242" in event.process.args'
  severity: high
  action: kill
""")
    registry = SandboxRegistry()
    sink = TraceSource(sock, sandbox_for=registry_sandbox_for(registry), hold_unknown_ms=5000)
    inventory = DockerInventory(registry, base_url=docker_engine.host, log=lambda _line: None)
    # As `monitor daemon` does: a runsc container is the engine's to kill.
    actions = Actions(registry, enforcers={"docker": DockerEnforcer(), "gvisor": DockerEnforcer()})
    pipeline = Pipeline(None, load_rules([DEFAULT_RULES_DIR, str(rules)]), actions, [])
    seen = []
    try:
        docker_engine.reload()
        inventory.start()
        assert inventory.connected.wait(30)
        # runsc connects to the sink and waits for its handshake while the engine starts the
        # container, so the start runs on a thread and this one serves the sink.
        with ThreadPoolExecutor(1) as pool:
            starting = pool.submit(docker_engine.run, ["sh", "-c", "cat /etc/passwd > /dev/null; sleep 4242"],
                                   name="gv-agent", labels={"team": "ml"}, runtime="runsc")
            deadline = time.monotonic() + 60
            state: dict = {"Running": True}
            while time.monotonic() < deadline:
                for event in sink.poll(100):
                    seen.append(event)
                    pipeline.process(event)
                if starting.done():
                    container_id = starting.result()
                    state = docker_engine.client.api.inspect_container(container_id)["State"]
                    if pipeline.actions and not state["Running"]:
                        break
        assert not state["Running"] and state["ExitCode"] == 137
    finally:
        inventory.stop()
        sink.close()
        uninstall_docker_runtime(daemon_json=docker_engine.config_path)
        docker_engine.remove_all()
    [record] = [r for r in pipeline.actions if r.rule == "Marker sleep in a container"]
    assert record.outcome == "done" and record.target["sandbox"] == container_id
    assert seen and all(e.sandbox["id"] == container_id for e in seen)
    opened = [e for e in seen if e.kind == "open" and e.file["path"] == "/etc/passwd"]
    assert opened and opened[0].sandbox["name"] == "gv-agent"
    assert opened[0].sandbox["labels"] == {"team": "ml"} and opened[0].sandbox["image"] == docker_engine.image
    assert opened[0].sandbox["runtime"] == "gvisor" and opened[0].source == "gvisor"
