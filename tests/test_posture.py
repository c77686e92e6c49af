"""Posture: `docker inspect` documents recorded from the real engine -> event.container, and the
posture rules of the default pack judging them with the real policy engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.policy import DEFAULT_RULES_DIR, load_rules
from monitor.sandbox import Sandbox
from monitor.sandbox.posture import (
    capabilities,
    container_start_event,
    image_pinned,
    no_new_privileges,
    posture,
    seccomp_mode,
    tmpfs_mounts,
    user_of,
)

FIXTURES = Path(__file__).parent / "fixtures" / "docker_inspect"
POSTURE_RULES = DEFAULT_RULES_DIR / "posture.yaml"


def inspect_doc(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_plain_container_posture():
    p = posture(inspect_doc("plain"))
    assert p == {"privileged": False, "user": "root", "read_only_rootfs": False,
                 "no_new_privileges": False, "seccomp": "default", "cap_add": [], "cap_drop": [],
                 "host_pid": False, "host_network": False, "host_ipc": False, "mounts": [],
                 "tmpfs": [], "image_pinned": False}


def test_privileged_container_has_no_seccomp():
    p = posture(inspect_doc("priv"))
    assert p["privileged"] is True
    assert p["seccomp"] == "unconfined"


def test_hardened_container_posture():
    # docker run --read-only --security-opt no-new-privileges --cap-drop ALL --user 1000
    p = posture(inspect_doc("hardened"))
    assert p["user"] == "1000"
    assert p["read_only_rootfs"] is True
    assert p["no_new_privileges"] is True
    assert p["cap_drop"] == ["ALL"]
    assert p["seccomp"] == "default"
    assert p["privileged"] is False


def test_risky_container_posture():
    # --network host --pid host --ipc host -v docker.sock -v dir:/data:ro --tmpfs /scratch:rw,noexec
    # --tmpfs /run --cap-add SYS_ADMIN --cap-add NET_ADMIN --security-opt seccomp=unconfined
    p = posture(inspect_doc("risky"))
    assert (p["host_pid"], p["host_network"], p["host_ipc"]) == (True, True, True)
    assert p["cap_add"] == ["SYS_ADMIN", "NET_ADMIN"]
    assert p["seccomp"] == "unconfined"
    sock = [m for m in p["mounts"] if m["destination"] == "/var/run/docker.sock"]
    assert sock and sock[0]["rw"] is True and sock[0]["source"].endswith("docker.sock")
    data = [m for m in p["mounts"] if m["destination"] == "/data"]
    assert data and data[0]["rw"] is False
    assert p["tmpfs"] == [{"destination": "/run", "noexec": True},
                          {"destination": "/scratch", "noexec": True}]


def test_custom_seccomp_profile_and_pinned_image():
    assert posture(inspect_doc("customsec"))["seccomp"] == "custom"
    assert posture(inspect_doc("pinned"))["image_pinned"] is True
    assert posture(inspect_doc("exectmp"))["tmpfs"] == [{"destination": "/work", "noexec": False}]


@pytest.mark.parametrize(("configured", "expected"), [
    ("", "root"), ("0", "root"), ("root", "root"), ("0:0", "root"), ("root:wheel", "root"),
    ("1000", "1000"), ("1000:1000", "1000:1000"), ("agent", "agent")])
def test_user_of(configured, expected):
    assert user_of(configured) == expected


@pytest.mark.parametrize(("opts", "expected"), [
    ([], False), (["no-new-privileges"], True), (["no-new-privileges:true"], True),
    (["no-new-privileges=true"], True), (["no-new-privileges=false"], False),
    (["label=disable"], False)])
def test_no_new_privileges(opts, expected):
    assert no_new_privileges(opts) is expected


@pytest.mark.parametrize(("opts", "privileged", "expected"), [
    ([], False, "default"), (["seccomp=unconfined"], False, "unconfined"),
    (["seccomp:unconfined"], False, "unconfined"),
    (['seccomp={"defaultAction":"SCMP_ACT_ERRNO"}'], False, "custom"),
    ([], True, "unconfined")])
def test_seccomp_mode(opts, privileged, expected):
    assert seccomp_mode(opts, privileged) == expected


def test_capabilities_normalised():
    assert capabilities(["cap_sys_admin", "NET_ADMIN", "CAP_NET_ADMIN"]) == ["SYS_ADMIN", "NET_ADMIN"]
    assert capabilities(None) == []


def test_tmpfs_noexec_is_docker_default():
    assert tmpfs_mounts({"/a": "", "/b": "rw,exec", "/c": "noexec"}) == [
        {"destination": "/a", "noexec": True}, {"destination": "/b", "noexec": False},
        {"destination": "/c", "noexec": True}]


@pytest.mark.parametrize(("ref", "expected"), [
    ("busybox:1.36", False), ("busybox", False), ("registry:5000/x/y:tag", False),
    ("busybox@sha256:" + "a" * 64, True), ("sha256:" + "b" * 64, True), ("c" * 64, True),
    ("busybox@sha256:abc", False)])
def test_image_pinned(ref, expected):
    assert image_pinned(ref) is expected


def test_container_start_event_carries_identity_and_posture():
    doc = inspect_doc("hardened")
    sandbox = Sandbox(id=doc["Id"], name="hardened", runtime="docker", cgroup_id=42,
                      cgroup_path="/sys/fs/cgroup/docker/x", image="smtest:1")
    event = container_start_event(doc, sandbox)
    data = event.to_dict()
    assert data["kind"] == "container_start" and data["source"] == "docker"
    assert data["sandbox"]["id"] == doc["Id"] and data["sandbox"]["runtime"] == "docker"
    assert event.cgroup_id == 42
    assert data["container"]["user"] == "1000"
    assert data["process"]["pid"] == doc["State"]["Pid"]
    assert data["process"]["args"] == ["sleep", "1000"]


# --- the posture rules, evaluated by the real policy engine ---------------------------------

@pytest.fixture(scope="module")
def posture_rules():
    return load_rules([POSTURE_RULES])


def fired(rules, name: str) -> set[str]:
    return {a.rule for a in rules.evaluate(container_start_event(inspect_doc(name)))}


def test_privileged_rule_fires_for_privileged_only(posture_rules):
    assert "Container privileged" in fired(posture_rules, "priv")
    assert "Container privileged" not in fired(posture_rules, "plain")


def test_hardened_container_meets_every_check_but_the_image_tag(posture_rules):
    assert fired(posture_rules, "hardened") == {"Container image not pinned"}


def test_risky_container_trips_the_checklist(posture_rules):
    assert {"Container mounts the Docker socket", "Container dangerous capabilities",
            "Container shares host namespaces", "Container seccomp unconfined",
            "Container runs as root"} <= fired(posture_rules, "risky")


def test_seccomp_and_tmpfs_rules(posture_rules):
    assert "Container seccomp unconfined" not in fired(posture_rules, "customsec")
    assert "Container tmpfs allows exec" in fired(posture_rules, "exectmp")
    assert "Container tmpfs allows exec" not in fired(posture_rules, "risky")
    assert "Container image not pinned" not in fired(posture_rules, "pinned")


def test_posture_rules_fire_only_on_container_start(posture_rules):
    event = container_start_event(inspect_doc("priv"))
    event.kind = "exec"
    assert posture_rules.evaluate(event) == []
