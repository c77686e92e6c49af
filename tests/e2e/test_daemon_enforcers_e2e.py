"""Enforcement through `monitor daemon` on containers, per runtime, against the real engine, probes
and runsc: the daemon's one actor picks the enforcer of the runtime that reported the event.

A runsc container is a Docker container whose programs are reported by gVisor's trace session:
the pid in its events is the sandbox's own, so a `kill_process` must go through `runsc kill
--pid`, never to the host process that happens to have that number.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from daemon_process import DaemonProcess
from docker_engine import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.root]

AGENT = {"agent.sandbox": "true"}
RULES = """\
- rule: E2E kill one process
  description: test rule - the marker sleep is killed, its container goes on.
  when: [exec]
  condition: '"4343" in event.process.args'
  severity: high
  action: kill_process
- rule: E2E freeze marker
  description: test rule - a container that opens the marker is frozen.
  when: [open]
  condition: event.file.path.endsWith("/freeze-me-marker")
  severity: high
  action: freeze
"""
RUNTIME = "runsc-enforce"


@pytest.fixture(scope="module")
def daemon(docker_engine, tmp_path_factory):
    if shutil.which("runsc") is None:
        pytest.fail("runsc not installed: scripts/setup.sh installs it")
    from monitor.gvisor.install import install_docker_runtime, uninstall_docker_runtime
    from monitor.policy import DEFAULT_RULES_DIR

    tmp = tmp_path_factory.mktemp("daemon-enforcers")
    (tmp / "rules.yaml").write_text(RULES)
    config = tmp / "daemon.yaml"
    config.write_text(textwrap.dedent(f"""\
        rules: [{DEFAULT_RULES_DIR}, {tmp / 'rules.yaml'}]
        docker:
          host: {docker_engine.host}
          watch: agent.sandbox=true
        sinks:
          json: {tmp / 'out.jsonl'}
        metrics:
          address: 127.0.0.1:0
        gvisor:
          socket: {tmp / 'gvisor.sock'}
        """))
    install_docker_runtime(daemon_json=docker_engine.config_path, name=RUNTIME,
                           socket_path=tmp / "gvisor.sock", pod_init_config=tmp / "pod-init.json",
                           extra_args=["--network=none"])
    docker_engine.reload()
    process = DaemonProcess(config, tmp / "daemon.log")
    try:
        yield process, tmp / "out.jsonl"
    finally:
        code = process.stop()
        docker_engine.remove_all()
        uninstall_docker_runtime(daemon_json=docker_engine.config_path, name=RUNTIME)
        assert code == 0, process.log()


def _actions(out: Path, rule: str) -> list[dict]:
    import json

    if not out.exists():
        return []
    records = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]
    return [r for r in records if r.get("type") == "action" and r["rule"] == rule]


@pytest.mark.parametrize("runtime", ["docker", "runsc"])
def test_kill_process_kills_that_process_and_the_container_goes_on(docker_engine, daemon, runtime):
    process, out = daemon
    script = "sleep 4343 & child=$!; wait $child; echo child-ended-$?; sleep 600"
    cid = docker_engine.run(["sh", "-c", script], name=f"kp-{runtime}", labels=AGENT,
                            runtime=RUNTIME if runtime == "runsc" else None)
    container = docker_engine.client.containers.get(cid)
    wait_for(lambda: b"child-ended-137" in container.logs(), 60, "the marker sleep killed (status 137)")
    [record] = [r for r in _actions(out, "E2E kill one process") if r["target"]["sandbox"] == cid]
    assert record["outcome"] == "done", record
    # the runsc container's pid is the sandbox's own: the message says so, no host pid was used
    assert record["message"].startswith("sandbox pid " if runtime == "runsc" else "pid "), record
    container.reload()
    assert container.status == "running"  # only the one process died


def test_freeze_quarantines_a_docker_container(docker_engine, daemon):
    process, out = daemon
    script = "touch /tmp/freeze-me-marker; cat /tmp/freeze-me-marker; while :; do sleep 0.2; done"
    cid = docker_engine.run(["sh", "-c", script], name="freeze-docker", labels=AGENT)
    wait_for(lambda: [r for r in _actions(out, "E2E freeze marker") if r["target"]["sandbox"] == cid],
             60, "the freeze action")
    [record] = [r for r in _actions(out, "E2E freeze marker") if r["target"]["sandbox"] == cid]
    assert record["outcome"] == "done", record
    pid = docker_engine.init_pid(cid)
    cgroup = Path(_cgroup_dir(pid))
    assert "frozen 1" in (cgroup / "cgroup.events").read_text().splitlines()
    container = docker_engine.client.containers.get(cid)
    container.reload()
    assert container.status == "running"  # quarantined, not ended: its state is evidence


def _cgroup_dir(pid: int) -> str:
    from monitor.sandbox.cgroup import cgroup_path_of

    path = cgroup_path_of(pid)
    assert path is not None
    return str(path)
