"""DockerInventory and kill against a real engine (the session's private dockerd, see
tests/docker_engine.py). Skipped, with the reason, where no engine can be started."""

from __future__ import annotations

import os
import threading
import time

import pytest
from docker_engine import wait_for

from monitor.actions.docker import DockerEnforcer, kill_container
from monitor.event import Event
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sandbox.docker import DockerInventory, parse_selector
from monitor.sandbox.posture import posture

pytestmark = pytest.mark.docker

SELECTOR = "agent.sandbox=true"
AGENT = {"agent.sandbox": "true"}


class Recorder:
    def __init__(self) -> None:
        self.added: list[Sandbox] = []
        self.removed: list[Sandbox] = []
        self.events: list[Event] = []
        self.logs: list[str] = []
        self.lock = threading.Lock()

    def names(self, kind: str) -> list[str]:
        with self.lock:
            return [e.sandbox["name"] for e in self.events if e.kind == kind]


@pytest.fixture
def inventory(docker_engine):
    made: list[DockerInventory] = []

    def make(selector: str | None = SELECTOR, **kwargs) -> tuple[DockerInventory, Recorder, SandboxRegistry]:
        rec = Recorder()
        registry = SandboxRegistry()
        inv = DockerInventory(registry, base_url=docker_engine.host, selector=parse_selector(selector),
                              on_added=rec.added.append, on_removed=rec.removed.append,
                              emit=rec.events.append, log=rec.logs.append, **kwargs)
        inv.start()
        made.append(inv)
        assert inv.connected.wait(15), rec.logs
        return inv, rec, registry

    yield make
    for inv in made:
        inv.stop()
    docker_engine.remove_all()


def test_container_started_before_is_found_with_identity(docker_engine, inventory):
    cid = docker_engine.run(["sleep", "60"], name="found-before", labels={**AGENT, "team": "ml"})
    _, rec, registry = inventory()
    sandbox = registry.by_id(cid)
    assert sandbox is not None and sandbox.runtime == "docker"
    assert sandbox.name == "found-before" and sandbox.image == docker_engine.image
    assert sandbox.labels == {**AGENT, "team": "ml"}
    assert sandbox.image_digest and sandbox.image_digest.startswith("sha256:")
    # the kernel's id for the container's cgroup: the inode of <v2 root>/.../<id>
    assert sandbox.cgroup_path.endswith(cid)
    assert sandbox.cgroup_id == os.stat(sandbox.cgroup_path).st_ino
    assert registry.by_cgroup(sandbox.cgroup_id) is sandbox
    assert docker_engine.init_pid(cid) in _procs(sandbox.cgroup_path)
    assert rec.names("container_start") == ["found-before"]


def test_label_selector_skips_unlabelled(docker_engine, inventory):
    docker_engine.run(["sleep", "60"], name="unlabelled")
    _, rec, registry = inventory()
    labelled = docker_engine.run(["sleep", "60"], name="labelled", labels=AGENT)
    wait_for(lambda: registry.by_id(labelled) is not None, 10, "labelled container registered")
    assert [s.name for s in registry.all()] == ["labelled"]
    _, rec_all, registry_all = inventory(selector=None)
    assert {s.name for s in registry_all.all()} == {"unlabelled", "labelled"}


def test_start_die_destroy_followed(docker_engine, inventory):
    _, rec, registry = inventory()
    cid = docker_engine.run(["sh", "-c", "sleep 1; exit 3"], name="short-lived", labels=AGENT)
    wait_for(lambda: "short-lived" in rec.names("container_start"), 10, "container_start")
    started = next(e for e in rec.events if e.kind == "container_start")
    assert started.container == posture(docker_engine.client.api.inspect_container(cid))
    wait_for(lambda: registry.by_id(cid) is None, 15, "removed after it died")
    end = next(e for e in rec.events if e.kind == "sandbox_end")
    assert end.sandbox["id"] == cid and end.detail == {"code": 3}
    assert [s.id for s in rec.removed] == [cid]


def test_live_posture_matches_recorded_documents(docker_engine, inventory):
    """The recorded fixtures keep the real engine's shape: the same flags, the same posture."""
    _, rec, _ = inventory()
    docker_engine.run(["sleep", "60"], name="live-priv", labels=AGENT, privileged=True)
    docker_engine.run(["sleep", "60"], name="live-hardened", labels=AGENT, read_only=True,
                      security_opt=["no-new-privileges"], cap_drop=["ALL"], user="1000")
    wait_for(lambda: len(rec.names("container_start")) == 2, 15, "two container_start events")
    by_name = {e.sandbox["name"]: e.container for e in rec.events if e.kind == "container_start"}
    assert by_name["live-priv"]["privileged"] is True
    assert by_name["live-priv"]["seccomp"] == "unconfined"
    hardened = by_name["live-hardened"]
    assert (hardened["user"], hardened["read_only_rootfs"], hardened["no_new_privileges"],
            hardened["cap_drop"], hardened["seccomp"]) == ("1000", True, True, ["ALL"], "default")


def test_kill_through_the_engine(docker_engine, inventory):
    _, rec, registry = inventory()
    cid = docker_engine.run(["sleep", "60"], name="to-kill", labels=AGENT)
    wait_for(lambda: registry.by_id(cid) is not None, 10, "registered")
    since = int(time.time()) - 1
    enforcer = DockerEnforcer()
    started = time.monotonic()
    assert enforcer.kill(registry.by_id(cid)) == ("done", "killed through the engine")
    elapsed = time.monotonic() - started
    assert enforcer.last.message == "killed through the engine"
    assert elapsed < 2.0
    container = docker_engine.client.containers.get(cid)
    wait_for(lambda: (container.reload(), container.status)[1] == "exited", 10, "container exited")
    assert container.attrs["State"]["ExitCode"] == 137
    kills = [e for e in docker_engine.client.events(since=since, until=int(time.time()) + 1, decode=True)
             if e.get("Action") == "kill" and e.get("id") == cid]
    assert kills and kills[0]["Actor"]["Attributes"]["signal"] == "9"
    # a second kill finds nothing to kill
    sandbox = Sandbox(id=cid, name="to-kill", runtime="docker")
    assert kill_container(sandbox, base_url=docker_engine.host).outcome == "already_gone"


def test_engine_stop_and_restart(docker_engine, inventory):
    inv, rec, registry = inventory()
    cid = docker_engine.run(["sleep", "300"], name="across-restart", labels=AGENT)
    wait_for(lambda: registry.by_id(cid) is not None, 10, "registered")
    docker_engine.stop_daemon()
    try:
        wait_for(lambda: not inv.connected.is_set(), 15, "inventory notices the engine is gone")
        time.sleep(1.0)
        assert len([line for line in rec.logs if "unavailable" in line]) == 1
    finally:
        docker_engine.start_daemon()
    wait_for(inv.connected.is_set, 40, "inventory reconnects")
    # the engine killed its containers on the way down: reconciled away
    wait_for(lambda: registry.by_id(cid) is None, 10, "dead container forgotten")
    assert any("is back" in line for line in rec.logs)
    again = docker_engine.run(["sleep", "60"], name="after-restart", labels=AGENT)
    wait_for(lambda: registry.by_id(again) is not None, 10, "new container found after reconnect")


def _procs(cgroup_path: str) -> list[int]:
    with open(os.path.join(cgroup_path, "cgroup.procs")) as f:
        return [int(line) for line in f if line.strip()]


def test_engine_reload_adds_a_runtime(docker_engine):
    """The fixture's hook for other runtimes (the gVisor tests add runsc the same way)."""
    import json
    import shutil
    config = json.loads(docker_engine.config_path.read_text())
    config.setdefault("runtimes", {})["runc-alias"] = {"path": shutil.which("runc")}
    docker_engine.config_path.write_text(json.dumps(config))
    docker_engine.reload()
    assert "runc-alias" in docker_engine.runtimes()
    out = docker_engine.client.containers.run(docker_engine.image, ["echo", "via alias"],
                                              runtime="runc-alias", network_mode="none", remove=True)
    assert out == b"via alias\n"

