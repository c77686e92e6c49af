"""Docker inventory logic without an engine: cgroup-v2 discovery, label selection, identity from
recorded inspect documents, event-stream handling, reconnect logging, and the kill fallback
(cgroup.kill on a real cgroup when the engine is absent or does not answer)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from monitor.actions.docker import kill_container
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sandbox.docker import (
    CgroupRef,
    DockerInventory,
    _started_ns,
    cgroup2_relpath,
    cgroup2_root,
    cgroup_of_pid,
    parse_selector,
    sandbox_from_inspect,
    selector_matches,
)

FIXTURES = Path(__file__).parent / "fixtures" / "docker_inspect"
HYBRID_MOUNTS = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
PURE_V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
# /proc/PID/cgroup of a container's init on the hybrid host (cgroupfs driver)
CONTAINER_CGROUP = """9:name=systemd:/docker/ee222ad28910b012c8f96e4cd3a7a8b7dc27571f5c20ed0189b957dedc6f81dd
4:memory:/docker/ee222ad28910b012c8f96e4cd3a7a8b7dc27571f5c20ed0189b957dedc6f81dd
0::/docker/ee222ad28910b012c8f96e4cd3a7a8b7dc27571f5c20ed0189b957dedc6f81dd
"""


def inspect_doc(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# --- cgroup v2 ----------------------------------------------------------------------------

def test_cgroup2_root_detected_from_mounts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(HYBRID_MOUNTS)
    assert cgroup2_root(str(mounts)) == "/sys/fs/cgroup/unified"
    mounts.write_text(PURE_V2_MOUNTS)
    assert cgroup2_root(str(mounts)) == "/sys/fs/cgroup"
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert cgroup2_root(str(mounts)) is None
    assert cgroup2_root(str(tmp_path / "absent")) is None


def test_cgroup2_relpath():
    assert cgroup2_relpath(CONTAINER_CGROUP) == "/docker/ee222ad28910b012c8f96e4cd3a7a8b7dc27571f5c20ed0189b957dedc6f81dd"
    assert cgroup2_relpath("0::/\n") == "/"
    assert cgroup2_relpath("4:memory:/x\n") is None


def test_cgroup_of_pid_is_the_directory_inode():
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup-v2 hierarchy mounted on this machine")
    ref = cgroup_of_pid(os.getpid(), root)
    assert ref is not None
    assert ref.path.startswith(root)
    assert ref.id == os.stat(ref.path).st_ino
    assert cgroup_of_pid(2**22 + 12345, root) is None  # no such pid


# --- selection and identity -----------------------------------------------------------------

def test_parse_selector():
    assert parse_selector(None) == {}
    assert parse_selector("") == {}
    assert parse_selector("agent.sandbox=true") == {"agent.sandbox": "true"}
    assert parse_selector(" agent.sandbox = true , team ") == {"agent.sandbox": "true", "team": None}
    with pytest.raises(ValueError, match="no key"):
        parse_selector("=true")


def test_selector_matches():
    labels = {"agent.sandbox": "true", "team": "ml"}
    assert selector_matches({}, labels)
    assert selector_matches({}, {})
    assert selector_matches({"agent.sandbox": "true"}, labels)
    assert selector_matches({"team": None}, labels)
    assert not selector_matches({"agent.sandbox": "false"}, labels)
    assert not selector_matches({"owner": None}, labels)


def test_sandbox_identity_from_recorded_inspect():
    doc = inspect_doc("hardened")
    sandbox = sandbox_from_inspect(doc, CgroupRef("/sys/fs/cgroup/unified/docker/" + doc["Id"], 215))
    assert sandbox.id == doc["Id"] and sandbox.runtime == "docker"
    assert sandbox.name == "hardened"
    assert sandbox.image == "smtest:1"
    assert sandbox.image_digest == doc["Image"]  # imported image: no repo digest, its id
    assert sandbox.labels == {"agent.sandbox": "true", "team": "ml"}
    assert sandbox.cgroup_id == 215 and sandbox.root_pid == doc["State"]["Pid"]
    assert sandbox.started_ns > 1_700_000_000 * 10**9
    ident = sandbox.identity()
    assert {"id", "name", "image", "image_digest", "labels", "runtime", "cgroup_id"} <= set(ident)


def test_repo_digest_preferred_for_image_digest():
    doc = inspect_doc("plain")
    digest = "sha256:" + "d" * 64
    sandbox = sandbox_from_inspect(doc, None, [f"registry.local/smtest@{digest}"])
    assert sandbox.image_digest == digest


def test_started_ns():
    assert _started_ns("2026-11-23T10:43:17.430315786Z") % 10**9 == 430315786
    assert _started_ns("0001-01-01T00:00:00Z") == 0
    assert _started_ns("garbage") == 0


# --- discovery and event handling against recorded documents ----------------------------------

class RecordedEngine:
    """The three engine calls the inventory makes, answered from recorded documents."""

    def __init__(self, docs: dict[str, dict]) -> None:
        self.docs = docs

    def containers(self, filters=None):
        return [{"Id": cid} for cid, d in self.docs.items() if d["State"]["Running"]]

    def inspect_container(self, cid):
        import docker.errors
        if cid not in self.docs:
            raise docker.errors.NotFound("no such container")
        return self.docs[cid]

    def inspect_image(self, ref):
        return {"RepoDigests": []}

    def info(self):
        return {"Runtimes": {"runc": {"path": "runc"}, "smrunc": {"path": "/tmp/dk/runc-wrap"},
                             "gvisor-traced": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace"]}}}


def make_inventory(selector=None):
    registry = SandboxRegistry()
    added, removed, events = [], [], []
    inv = DockerInventory(registry, base_url="unix:///nonexistent.sock", selector=selector,
                          on_added=added.append, on_removed=removed.append, emit=events.append,
                          resolve_cgroup=lambda pid: CgroupRef(f"/cg/{pid}", pid + 1000))
    return inv, registry, added, removed, events


def test_reconcile_registers_running_selected_containers():
    docs = {d["Id"]: d for d in (inspect_doc(n) for n in ("plain", "hardened", "risky"))}
    inv, registry, added, _, events = make_inventory(parse_selector("agent.sandbox=true"))
    inv.reconcile(RecordedEngine(docs))
    # risky has no agent.sandbox label: not selected
    assert sorted(s.name for s in added) == ["hardened", "plain"]
    assert {s.name for s in registry.all()} == {"hardened", "plain"}
    hardened = next(s for s in added if s.name == "hardened")
    assert registry.by_cgroup(hardened.cgroup_id) is hardened
    kinds = [(e.kind, e.sandbox["name"]) for e in events]
    assert ("sandbox_start", "hardened") in kinds and ("container_start", "hardened") in kinds
    posture = next(e for e in events if e.kind == "container_start" and e.sandbox["name"] == "hardened")
    assert posture.container["read_only_rootfs"] is True
    # a second reconcile with the same containers changes nothing
    inv.reconcile(RecordedEngine(docs))
    assert len(added) == 2


def test_reconcile_removes_containers_gone_while_disconnected():
    docs = {d["Id"]: d for d in (inspect_doc(n) for n in ("plain", "hardened"))}
    inv, registry, _, removed, events = make_inventory()
    inv.reconcile(RecordedEngine(docs))
    plain_id = inspect_doc("plain")["Id"]
    del docs[plain_id]
    inv.reconcile(RecordedEngine(docs))
    assert [s.name for s in removed] == ["plain"]
    assert registry.by_id(plain_id) is None
    assert events[-1].kind == "sandbox_end" and events[-1].sandbox["name"] == "plain"


def test_recorded_event_stream_start_die_destroy():
    lines = [json.loads(line) for line in (FIXTURES / "events.jsonl").read_text().splitlines()]
    container_id = next(m["id"] for m in lines if m.get("Action") == "start")
    doc = dict(inspect_doc("plain"), Id=container_id, Name="/evt")
    inv, registry, added, removed, events = make_inventory(parse_selector("agent.sandbox=true"))
    engine = RecordedEngine({container_id: doc})
    for message in lines:
        inv.handle_event(engine, message)
        if message.get("Action") == "start":
            assert registry.by_id(container_id) is not None
    assert [s.name for s in added] == ["evt"]
    assert [s.name for s in removed] == ["evt"]  # die removes; destroy finds nothing left
    assert registry.by_id(container_id) is None
    end = events[-1]
    assert end.kind == "sandbox_end" and end.detail == {"code": 137}


def test_unreachable_engine_logs_one_line_and_retries():
    lines: list[str] = []
    inv = DockerInventory(SandboxRegistry(), base_url="unix:///nonexistent/docker.sock",
                          log=lines.append, backoff_min_s=0.02, backoff_max_s=0.05)
    inv.start()
    time.sleep(0.8)
    inv.stop()
    assert inv.errors >= 3  # it kept retrying
    assert len(lines) == 1 and "unavailable" in lines[0] and "reconnecting" in lines[0]
    assert not inv.connected.is_set()


# --- kill fallback on a real cgroup -----------------------------------------------------------

@pytest.fixture
def sleeper_cgroup():
    """A real cgroup-v2 directory holding one `sleep` process."""
    root = cgroup2_root()
    if root is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup-v2 hierarchy")
    path = Path(root) / f"sm-test-docker-{os.getpid()}"
    path.mkdir()
    proc = subprocess.Popen(["sleep", "60"])
    (path / "cgroup.procs").write_text(str(proc.pid))
    sandbox = Sandbox(id="f" * 64, name="fake", runtime="docker", cgroup_id=path.stat().st_ino,
                      cgroup_path=str(path))
    yield sandbox, proc
    proc.kill()
    proc.wait()
    for _ in range(50):
        with contextlib.suppress(OSError):
            path.rmdir()
            break
        time.sleep(0.05)


def test_kill_falls_back_to_cgroup_kill_when_engine_absent(sleeper_cgroup):
    sandbox, proc = sleeper_cgroup
    result = kill_container(sandbox, timeout_s=1.0, base_url="unix:///nonexistent/docker.sock")
    assert result.outcome == "done"
    assert "engine unavailable" in result.message and "cgroup.kill" in result.message
    assert proc.wait(5) == -9


def test_kill_falls_back_within_bound_when_engine_hangs(sleeper_cgroup, tmp_path):
    sandbox, proc = sleeper_cgroup
    sock_path = tmp_path / "hung.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing():
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept_and_say_nothing, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = kill_container(sandbox, timeout_s=0.5, base_url=f"unix://{sock_path}")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()
    assert result.outcome == "done"
    assert "did not answer within 0.5s" in result.message and "cgroup.kill" in result.message
    assert 0.4 < elapsed < 2.0
    assert proc.wait(5) == -9


def test_an_odd_container_document_does_not_stop_the_watch():
    good = inspect_doc("plain")
    odd = {"State": {"Running": True, "Pid": 7}, "Config": {"Labels": {}}}  # no Id: KeyError
    engine = RecordedEngine({"odd": odd, good["Id"]: good})
    lines: list[str] = []
    inv, registry, added, _, _ = make_inventory()
    inv.log = lines.append
    inv._handle_safely(engine, {"Type": "container", "Action": "start", "id": "odd", "Actor": {"ID": "odd"}})
    inv._handle_safely(engine, {"Type": "container", "Action": "start", "id": good["Id"],
                                "Actor": {"ID": good["Id"]}})
    assert len(lines) == 1 and "not handled: KeyError" in lines[0]
    assert [s.id for s in added] == [good["Id"]]


def test_runsc_runtime_container_is_marked_gvisor():
    doc = inspect_doc("plain")
    gvisor = dict(doc, Id="e" * 64, Name="/gv", HostConfig={**doc["HostConfig"], "Runtime": "gvisor-traced"})
    inv, registry, added, _, _ = make_inventory()
    inv.reconcile(RecordedEngine({doc["Id"]: doc, gvisor["Id"]: gvisor}))
    assert {s.name for s in added} == {"plain", "gv"}
    assert all(s.runtime == "docker" for s in added)  # the engine kills both
    assert inv.is_gvisor(gvisor["Id"]) and not inv.is_gvisor(doc["Id"])
    inv.remove(gvisor["Id"])
    assert not inv.is_gvisor(gvisor["Id"])


def test_the_monitors_own_container_is_never_watched():
    doc = inspect_doc("plain")
    own_pid = doc["State"]["Pid"]
    lines: list[str] = []
    registry = SandboxRegistry()
    # the container's init shares the monitor's cgroup: the monitor runs inside it
    inv = DockerInventory(registry, base_url="unix:///nonexistent.sock", log=lines.append,
                          resolve_cgroup=lambda pid: CgroupRef("/cg/self", 7) if pid in (own_pid, os.getpid())
                          else CgroupRef(f"/cg/{pid}", pid))
    inv.reconcile(RecordedEngine({doc["Id"]: doc}))
    assert registry.all() == []
    assert lines and "the monitor's own" in lines[0]



def test_a_container_at_the_cgroup_root_has_no_cgroup_to_watch():
    """runsc on a hybrid host leaves its sandbox in the v2 root: never watch or kill the root."""
    doc = inspect_doc("plain")
    gvisor = dict(doc, Id="e" * 64, Name="/gv", HostConfig={**doc["HostConfig"], "Runtime": "gvisor-traced"})
    lines: list[str] = []
    registry = SandboxRegistry()
    inv = DockerInventory(registry, base_url="unix:///nonexistent.sock", log=lines.append,
                          cgroup_root="/sys/fs/cgroup/unified",
                          resolve_cgroup=lambda pid: CgroupRef("/sys/fs/cgroup/unified", 1))
    inv.reconcile(RecordedEngine({doc["Id"]: doc, gvisor["Id"]: gvisor}))
    [sandbox] = registry.all()
    assert sandbox.name == "gv" and sandbox.cgroup_id == 0 and sandbox.cgroup_path == ""
    assert inv.is_gvisor(sandbox.id)
    assert any("plain" in line and "no cgroup-v2 directory of its own" in line for line in lines)


def test_cgroup_dir_watch_sees_container_dirs_as_they_are_made(tmp_path):
    """Real inotify on a directory tree shaped like the cgroup-v2 root."""
    from monitor.sandbox.cgroupwatch import CgroupDirWatch, container_id_of_cgroup_dir
    assert container_id_of_cgroup_dir("a" * 64) == "a" * 64
    assert container_id_of_cgroup_dir(f"docker-{'b' * 64}.scope") == "b" * 64
    assert container_id_of_cgroup_dir("init.scope") is None
    created: list[tuple[str, CgroupRef]] = []
    deleted: list[str] = []
    watch = CgroupDirWatch(str(tmp_path), lambda cid, ref: created.append((cid, ref)), deleted.append)
    watch.start()
    try:
        (tmp_path / "system.slice").mkdir()      # appears after the watch started
        (tmp_path / "unrelated").mkdir()
        time.sleep(0.3)
        first = tmp_path / "system.slice" / f"docker-{'1' * 64}.scope"
        first.mkdir()
        (tmp_path / "docker").mkdir()
        second = tmp_path / "docker" / ("2" * 64)
        second.mkdir()                           # may come before the parent's watch: scanned
        (tmp_path / "docker" / "not-a-container").mkdir()
        deadline = time.monotonic() + 5
        while len(created) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        second.rmdir()
        while not deleted and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watch.stop()
    assert sorted(cid for cid, _ in created) == ["1" * 64, "2" * 64]
    refs = dict(created)
    assert refs["1" * 64].path == str(first) and refs["2" * 64].id > 0
    assert deleted == ["2" * 64]


def test_cgroup_dir_found_by_the_scan_and_by_inotify_is_reported_once(tmp_path):
    """A container dir made just as its parent's watch is added is in the parent's scan and in an
    inotify event: one `created` (CI saw two), and a new one after a delete is reported again."""
    from monitor.sandbox.cgroupwatch import _IN_CREATE, _IN_DELETE, _IN_ISDIR, CgroupDirWatch
    created: list[str] = []
    deleted: list[str] = []
    watch = CgroupDirWatch(str(tmp_path), lambda cid, ref: created.append(cid), deleted.append)
    name = "3" * 64
    (tmp_path / name).mkdir()
    watch._handle_child(str(tmp_path), _IN_CREATE | _IN_ISDIR, name)  # the scan
    watch._handle_child(str(tmp_path), _IN_CREATE | _IN_ISDIR, name)  # the queued event
    assert created == [name]
    (tmp_path / name).rmdir()
    watch._handle_child(str(tmp_path), _IN_DELETE | _IN_ISDIR, name)
    (tmp_path / name).mkdir()
    watch._handle_child(str(tmp_path), _IN_CREATE | _IN_ISDIR, name)
    assert created == [name, name] and deleted == [name]


def test_early_registration_announces_at_start():
    """Watched when its cgroup appears (not yet started), announced when the engine starts it."""
    doc = inspect_doc("plain")
    created = dict(doc, State={**doc["State"], "Running": False, "Status": "created", "Pid": 0})
    engine = RecordedEngine({doc["Id"]: created})
    inv, registry, added, _, events = make_inventory()
    cgroup = CgroupRef("/cg/early", 4242)
    sandbox = inv.add(engine, doc["Id"], cgroup=cgroup, early=True)
    assert sandbox is not None and registry.by_cgroup(4242) is sandbox
    assert [s.name for s in added] == ["plain"] and events == []   # not announced yet
    engine.docs[doc["Id"]] = doc                                    # now it runs
    inv.handle_event(engine, {"Type": "container", "Action": "start", "id": doc["Id"],
                              "Actor": {"ID": doc["Id"]}})
    assert [e.kind for e in events] == ["sandbox_start", "container_start"]
    assert len(added) == 1 and registry.by_id(doc["Id"]).root_pid == doc["State"]["Pid"]


def test_early_container_that_never_starts_leaves_quietly():
    doc = inspect_doc("plain")
    created = dict(doc, State={**doc["State"], "Running": False, "Pid": 0})
    dropped: list[CgroupRef] = []
    registry = SandboxRegistry()
    events: list = []
    inv = DockerInventory(registry, base_url="unix:///nonexistent.sock", emit=events.append,
                          on_cgroup_dropped=dropped.append)
    inv._early_client = RecordedEngine({doc["Id"]: created})
    inv._on_cgroup_created(doc["Id"], CgroupRef("/cg/x", 99))
    assert registry.by_id(doc["Id"]) is not None
    inv.start_grace_s = 0.05
    inv._on_cgroup_deleted(doc["Id"])
    assert registry.by_id(doc["Id"]) is not None  # the engine may still report its start
    time.sleep(0.3)
    assert registry.by_id(doc["Id"]) is None and events == []  # no sandbox_end for what never began
    # an unselected one is dropped at once
    inv.selector = {"agent.sandbox": "true"}
    other = dict(created, Id="9" * 64, Config={**created["Config"], "Labels": {}})
    inv._early_client = RecordedEngine({other["Id"]: other})
    inv._on_cgroup_created(other["Id"], CgroupRef("/cg/y", 100))
    assert [c.id for c in dropped] == [100]


def test_a_container_gone_before_its_start_event_is_still_announced():
    """`docker run --rm cat x`: its directory is made and removed before the engine's start event
    is read; the start and die events still announce and end it."""
    doc = inspect_doc("plain")
    exited = dict(doc, State={**doc["State"], "Running": False, "Status": "exited", "Pid": 0})
    registry = SandboxRegistry()
    events: list = []
    inv = DockerInventory(registry, base_url="unix:///nonexistent.sock", emit=events.append,
                          resolve_cgroup=lambda pid: None)
    engine = RecordedEngine({doc["Id"]: exited})
    inv._early_client = engine
    inv._on_cgroup_created(doc["Id"], CgroupRef("/cg/quick", 555))
    inv._on_cgroup_deleted(doc["Id"])
    for action in ("start", "die"):
        inv.handle_event(engine, {"Type": "container", "Action": action, "id": doc["Id"],
                                  "Actor": {"ID": doc["Id"], "Attributes": {"exitCode": "0"}}})
    assert [e.kind for e in events] == ["sandbox_start", "container_start", "sandbox_end"]
    assert events[0].sandbox["cgroup_id"] == 555

