"""`monitor daemon` watching a real Docker engine with the real probes.

One daemon for the module (probes attached once, as in production), against the session's
private engine (tests/docker_engine.py): a container started before the daemon is found and its
exec/file/net events carry its identity; every posture rule fires for a container built to trip
it, none for a hardened run; a kill rule stops a container through the engine, exec and connect
deny rules hold in the kernel; stopping dockerd leaves the daemon alive, and it finds containers
again when the engine is back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest
from daemon_process import DaemonProcess
from docker_engine import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.root]

AGENT = {"agent.sandbox": "true"}
KILL_RULE = """\
- rule: E2E kill marker
  description: test rule - a container that touches the marker is killed.
  when: [open]
  condition: event.file.path.endsWith("/kill-me-marker")
  severity: high
  action: kill
- rule: E2E deny rev
  description: test rule - exec of /bin/rev is refused in the kernel.
  when: [exec]
  condition: event.process.executable == "/bin/rev"
  severity: medium
  action: deny
- rule: E2E deny connect
  description: test rule - connects to 127.0.0.9 are refused in the kernel.
  when: [connect]
  condition: event.net.address in ["127.0.0.9"]
  severity: medium
  action: deny
"""


def _probes_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the probes need root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc not importable (python3-bpfcc; scripts/setup.sh)"
    return None


class Output:
    """The daemon's JSONL output, re-read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def events(self, container_id: str, kind: str | None = None) -> list[dict]:
        return [r for r in self.records() if r.get("type") == "event"
                and (r.get("sandbox") or {}).get("id") == container_id
                and (kind is None or r["kind"] == kind)]

    def alerts(self, container_id: str) -> list[dict]:
        return [r for r in self.records() if r.get("type") == "alert"
                and (r["event"].get("sandbox") or {}).get("id") == container_id]


@pytest.fixture(scope="module")
def watched(docker_engine, tmp_path_factory):
    reason = _probes_unavailable()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("docker-e2e")
    # started before the daemon: must be found on start-up
    early = docker_engine.run(["sleep", "600"], name="e2e-early", labels={**AGENT, "team": "ml"})
    (tmp / "e2e.yaml").write_text(KILL_RULE)
    # a plain cgroup sandbox beside the containers: watched whatever the engine does
    from monitor.sandbox.docker import cgroup2_root
    plain = Path(cgroup2_root() or "/nonexistent") / f"sm-e2e-plain-{os.getpid()}"
    plain.mkdir()
    from monitor.policy import DEFAULT_RULES_DIR
    config = tmp / "daemon.yaml"
    config.write_text(textwrap.dedent(f"""\
        rules: [{DEFAULT_RULES_DIR}, {tmp / 'e2e.yaml'}]
        docker:
          host: {docker_engine.host}
          watch: agent.sandbox=true
        sinks:
          json: {tmp / 'out.jsonl'}
        metrics:
          address: 127.0.0.1:0
        gvisor:
          socket: {tmp / 'gvisor.sock'}
        cgroups:
          - {{path: {plain}, name: e2e-plain}}
        """))
    daemon = DaemonProcess(config, tmp / "daemon.log")
    output = Output(tmp / "out.jsonl")
    gvisor_runtime = _install_runsc(docker_engine, tmp)
    try:
        yield daemon, output, early, gvisor_runtime, plain
    finally:
        code = daemon.stop()
        for _ in range(100):
            try:
                plain.rmdir()
                break
            except OSError:
                time.sleep(0.05)
        docker_engine.remove_all()
        if gvisor_runtime:
            from monitor.gvisor.install import uninstall_docker_runtime
            uninstall_docker_runtime(daemon_json=docker_engine.config_path, name=gvisor_runtime)
        assert code == 0, daemon.log()


GVISOR_RUNTIME = "runsc-e2e"


def _install_runsc(docker_engine, tmp: Path) -> str | None:
    """runsc as an engine runtime whose trace session reports to the daemon's socket."""
    if shutil.which("runsc") is None:
        return None
    from monitor.gvisor.install import install_docker_runtime
    install_docker_runtime(daemon_json=docker_engine.config_path, name=GVISOR_RUNTIME,
                           socket_path=tmp / "gvisor.sock", pod_init_config=tmp / "pod-init.json",
                           extra_args=["--network=none"])
    docker_engine.reload()
    return GVISOR_RUNTIME


def docker_exec(docker_engine, container_id: str, script: str) -> int:
    result = docker_engine.client.containers.get(container_id).exec_run(["sh", "-c", script])
    return result.exit_code


def test_events_of_a_container_found_at_start_carry_its_identity(docker_engine, watched):
    daemon, output, early, _, _ = watched
    wait_for(lambda: output.events(early, "container_start"), 30, "container_start of e2e-early")
    docker_exec(docker_engine, early,
                "cat /etc/passwd > /dev/null; echo x > /tmp/e2e-written; "
                "nc -w 1 127.0.0.1 9 < /dev/null; true")

    def seen() -> bool:
        return bool(output.events(early, "exec")
                    and [e for e in output.events(early, "open") if e["file"]["path"] == "/etc/passwd"]
                    and [e for e in output.events(early, "connect") if e["net"].get("port") == 9])
    wait_for(seen, 20, "exec, open and connect events from the container")
    for kind in ("exec", "open", "connect"):
        sandbox = output.events(early, kind)[0]["sandbox"]
        assert sandbox["id"] == early and sandbox["name"] == "e2e-early"
        assert sandbox["runtime"] == "docker" and sandbox["image"] == docker_engine.image
        assert sandbox["labels"] == {**AGENT, "team": "ml"}
        assert sandbox["image_digest"].startswith("sha256:")
    connect = next(e for e in output.events(early, "connect") if e["net"].get("port") == 9)
    assert connect["net"]["address"] == "127.0.0.1"
    status, body = daemon.get("/metrics")
    assert status == 200 and 'runtime="docker"' in body


def test_a_short_lived_container_is_seen_from_its_first_instruction(docker_engine, watched):
    """Its cgroup is watched when runc creates it, before the program starts; the runtime's own
    set-up is not reported, and a container the selector does not pick leaves no trace."""
    _, output, _, _, _ = watched
    quick = docker_engine.run(["cat", "/etc/passwd"], name="e2e-quick", labels=AGENT)
    unpicked = docker_engine.run(["cat", "/etc/group"], name="e2e-unpicked")

    def opened() -> list[dict]:
        return [e for e in output.events(quick, "open") if e["file"]["path"] == "/etc/passwd"]
    wait_for(opened, 20, "the first (and only) open of a short-lived container")
    assert opened()[0]["sandbox"]["name"] == "e2e-quick"
    assert output.events(quick, "exec")
    wait_for(lambda: output.events(quick, "sandbox_end"), 20, "its end")
    runc_setup = [e for e in output.events(quick) if str(e.get("process", {}).get("comm", "")).startswith("runc:[")]
    assert runc_setup == [] and output.events(quick, "mount") == []
    docker_engine.client.containers.get(unpicked).wait(timeout=20)
    # the engine reports containers in order: once a picked container started after the unpicked
    # one ended is written, the unpicked one has been judged (its held events dropped, not named)
    after = docker_engine.run(["true"], name="e2e-after-unpicked", labels=AGENT)
    wait_for(lambda: output.events(after, "container_start"), 20, "the next picked container")
    assert output.events(unpicked) == []
    assert not [r for r in output.records() if r.get("type") == "event"
                and (r.get("file") or {}).get("path") == "/etc/group"
                and (r.get("sandbox") or {}).get("id", "").startswith(unpicked[:12])]


# Every posture rule of rules/posture.yaml, and the container built to trip it: `priv` runs
# --privileged as root from a tag; `exposed` runs as a user, read-only, no-new-privileges, from the
# image id, but with the Docker socket's name mounted in, NET_ADMIN, the host's pid namespace and
# an exec tmpfs. The hardened container trips none.
POSTURE_TRIPS = {
    "Container privileged": "priv",
    "Container runs as root": "priv",
    "Container root filesystem writable": "priv",
    "Container without no-new-privileges": "priv",
    "Container seccomp unconfined": "priv",
    "Container image not pinned": "priv",
    "Container mounts the Docker socket": "exposed",
    "Container dangerous capabilities": "exposed",
    "Container shares host namespaces": "exposed",
    "Container tmpfs allows exec": "exposed",
}


def test_every_posture_rule_fires_for_the_container_built_to_trip_it(docker_engine, watched, tmp_path):
    from monitor.policy import DEFAULT_RULES_DIR, load_rules
    _, output, _, _, _ = watched
    posture_rules = {rule.name for rule in load_rules([DEFAULT_RULES_DIR / "posture.yaml"]).rules}
    assert set(POSTURE_TRIPS) == posture_rules
    image_id = docker_engine.client.images.get(docker_engine.image).id
    fake_socket = tmp_path / "docker.sock"  # a plain file: the rule judges the mount, not the socket
    fake_socket.write_text("")
    hardening = {"read_only": True, "security_opt": ["no-new-privileges"], "user": "1000"}
    containers = {
        "priv": docker_engine.run(["sleep", "600"], name="e2e-priv", labels=AGENT, privileged=True),
        "exposed": docker_engine.client.containers.run(
            image_id, ["sleep", "600"], name="e2e-exposed", labels=AGENT, network_mode="none", detach=True,
            volumes={str(fake_socket): {"bind": "/run/docker.sock", "mode": "ro"}}, cap_add=["NET_ADMIN"],
            pid_mode="host", tmpfs={"/scratch": "exec"}, **hardening).id,
        "hardened": docker_engine.client.containers.run(
            image_id, ["sleep", "600"], name="e2e-hardened", labels=AGENT, network_mode="none", detach=True,
            cap_drop=["ALL"], **hardening).id,
    }
    for name, cid in containers.items():
        wait_for(lambda cid=cid: output.events(cid, "container_start"), 30, f"container_start of {name}")
    # a container_start's alerts are written right after the event, in the same pipeline pass:
    # the next container's event written means the previous one's alerts are in
    marker = docker_engine.run(["sleep", "600"], name="e2e-posture-marker", labels=AGENT)
    wait_for(lambda: output.events(marker, "container_start"), 30, "the marker container's start")
    fired = {name: {a["rule"] for a in output.alerts(cid) if a["event"]["kind"] == "container_start"}
             for name, cid in containers.items()}
    for name in containers:
        assert fired[name] == {rule for rule, trips in POSTURE_TRIPS.items() if trips == name}, fired


def test_kill_rule_stops_the_container_through_the_engine(docker_engine, watched):
    _, output, _, _, _ = watched
    victim = docker_engine.run(["sleep", "600"], name="e2e-victim", labels=AGENT)
    wait_for(lambda: output.events(victim, "container_start"), 30, "victim watched")
    since = int(time.time()) - 1
    docker_exec(docker_engine, victim, "touch /tmp/kill-me-marker; sleep 30")
    container = docker_engine.client.containers.get(victim)
    wait_for(lambda: (container.reload(), container.status)[1] == "exited", 15, "victim killed")
    assert container.attrs["State"]["ExitCode"] == 137
    wait_for(lambda: [r for r in output.records() if r.get("type") == "action"
                      and r["rule"] == "E2E kill marker"], 10, "the action record")
    actions = [r for r in output.records() if r.get("type") == "action" and r["rule"] == "E2E kill marker"]
    assert actions[0]["outcome"] == "done" and actions[0]["target"]["sandbox"] == victim
    engine_kills = [e for e in docker_engine.client.events(since=since, until=int(time.time()) + 1,
                                                           decode=True)
                    if e.get("Action") == "kill" and e.get("id") == victim]
    assert engine_kills and engine_kills[0]["Actor"]["Attributes"]["signal"] == "9"
    wait_for(lambda: output.events(victim, "sandbox_end"), 15, "sandbox_end after the kill")


def test_deny_rule_is_enforced_in_the_kernel_for_a_container(docker_engine, watched):
    _, output, _, _, _ = watched
    denied = docker_engine.run(["sleep", "600"], name="e2e-denied", labels=AGENT)
    wait_for(lambda: output.events(denied, "container_start"), 30, "watched")

    def rev() -> bytes:  # stdout only: sh's "Killed" on stderr interleaves in no fixed order
        return docker_engine.client.containers.get(denied).exec_run(
            ["sh", "-c", "echo abc | /bin/rev; echo rc=$?"], stderr=False).output
    # deny maps are loaded on the daemon's loop pass after discovery: from then on, every time
    wait_for(lambda: rev() == b"rc=137\n", 30, "rev denied")
    assert rev() == b"rc=137\n"  # SIGKILL at exec: rev never printed
    wait_for(lambda: [a for a in output.alerts(denied) if a["rule"] == "E2E deny rev"], 15, "deny alert")
    alert = next(a for a in output.alerts(denied) if a["rule"] == "E2E deny rev")
    assert alert["event"].get("verdict") == "denied"
    assert docker_engine.client.containers.get(denied).status == "running"  # only the exec died


def test_connect_deny_is_enforced_in_the_kernel_for_a_container(docker_engine, watched):
    """A connect to the denied address fails with EPERM inside the container (network none: its
    own loopback only), one to another loopback address is refused by nobody listening."""
    _, output, _, _, _ = watched
    cid = docker_engine.run(["sleep", "600"], name="e2e-connect-denied", labels=AGENT)
    wait_for(lambda: output.events(cid, "container_start"), 30, "watched")
    container = docker_engine.client.containers.get(cid)

    def connect(address: str) -> bytes:
        return container.exec_run(["sh", "-c", f"nc -w 1 {address} 9 </dev/null 2>&1; echo rc=$?"]).output
    wait_for(lambda: b"Operation not permitted" in connect("127.0.0.9"), 30, "the connect denied")
    assert b"Operation not permitted" in connect("127.0.0.9")
    assert b"Connection refused" in connect("127.0.0.8")

    def connects(address: str) -> list[dict]:
        return [e for e in output.events(cid, "connect") if e["net"].get("address") == address]
    wait_for(lambda: connects("127.0.0.8"), 20, "the allowed connect's event")
    assert connects("127.0.0.9") and all(e["verdict"] == "denied" and e["result"] == -1
                                         for e in connects("127.0.0.9"))
    assert [e.get("verdict") for e in connects("127.0.0.8")] == [None]
    assert [a for a in output.alerts(cid) if a["rule"] == "E2E deny connect"]


def test_gvisor_container_reports_through_its_trace_session(docker_engine, watched):
    _, output, _, gvisor_runtime, _ = watched
    if gvisor_runtime is None:
        pytest.skip("runsc not installed (scripts/setup.sh installs it)")
    script = "cat /etc/passwd > /dev/null; sleep 3; cat /etc/hostname > /dev/null; sleep 600"
    cid = docker_engine.run(["sh", "-c", script], name="e2e-gvisor", labels={**AGENT, "team": "gv"},
                            runtime=gvisor_runtime)

    def opened(path: str) -> list[dict]:
        return [e for e in output.events(cid, "open") if e["file"]["path"] == path]
    # at start: held until the inventory knows the container (a provisional identity after
    # gvisor.hold_unknown_ms on a slow start); later: the inventory's identity, always
    wait_for(lambda: opened("/etc/passwd"), 60, "the gVisor container's open of /etc/passwd")
    wait_for(lambda: opened("/etc/hostname"), 30, "the gVisor container's open of /etc/hostname")
    event = opened("/etc/hostname")[0]
    assert event["source"] == "gvisor" and event["sandbox"]["runtime"] == "gvisor"
    assert event["sandbox"]["name"] == "e2e-gvisor" and event["sandbox"]["labels"] == {**AGENT, "team": "gv"}
    assert opened("/etc/passwd")[0]["source"] == "gvisor"
    # the host's probes were not pointed at gVisor's own processes
    assert [e for e in output.events(cid) if e["source"] == "ebpf"] == []
    assert output.events(cid, "container_start")


class HangUpSocket:
    """A unix socket at the engine's path while dockerd is down: counts the daemon's connection
    attempts and closes each at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        self.attempts = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.attempts += 1
            conn.close()

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join()
        self.path.unlink(missing_ok=True)


def test_daemon_survives_engine_stop_and_finds_containers_again(docker_engine, watched):
    daemon, output, _, _, plain = watched
    docker_engine.stop_daemon()
    hang_up = HangUpSocket(docker_engine.socket)
    try:
        def docker_down() -> bool:
            status, body = daemon.get("/healthz")
            return status == 200 and "docker unavailable" in body
        wait_for(docker_down, 20, "/healthz to report the engine down")
        wait_for(lambda: hang_up.attempts >= 3, 30, "three reconnect attempts")
        assert daemon.proc.poll() is None
        assert daemon.log().count("unavailable (") == 1, daemon.log()  # one line an outage, not an attempt
        # the plain cgroup sandbox is still watched while the engine is away
        subprocess.run(["sh", "-c", f"echo $$ > {plain}/cgroup.procs && exec cat /etc/hostname"],
                       check=True, capture_output=True)

        def plain_events() -> list[dict]:
            return [r for r in output.records() if r.get("type") == "event" and r["kind"] == "open"
                    and (r.get("sandbox") or {}).get("name") == "e2e-plain"
                    and r["file"]["path"] == "/etc/hostname"]
        wait_for(plain_events, 15, "the plain cgroup's open while the engine is down")
        assert plain_events()[0]["sandbox"]["runtime"] == "cgroup"
    finally:
        hang_up.close()
        docker_engine.start_daemon()
    wait_for(lambda: "docker connected" in daemon.get("/healthz")[1], 40, "reconnected")
    late = docker_engine.run(["sleep", "600"], name="e2e-late", labels=AGENT)
    wait_for(lambda: output.events(late, "container_start"), 30, "a container after the restart")
    assert "Traceback" not in daemon.log()
