"""gVisor source: wire decoding, point -> Event mapping, the sink server, config, daemon.json.

Messages are built with the project's own protobuf classes and sent over a real SOCK_SEQPACKET
socket from a client that speaks runsc's side of the protocol (handshake, header + point)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from monitor.event import FIELDS, KINDS
from monitor.gvisor import wire
from monitor.gvisor.config import pod_init_config, trace_points, write_pod_init_config
from monitor.gvisor.install import (
    InstallError,
    docker_knows,
    install_docker_runtime,
    uninstall_docker_runtime,
)
from monitor.gvisor.mapping import EventMapper
from monitor.gvisor.proto import points_pb2 as pb
from monitor.gvisor.runner import DENY_REFUSED, deny_rules_refused
from monitor.gvisor.source import SinkError, TraceSource, registry_sandbox_for
from monitor.sandbox import Sandbox, SandboxRegistry

T = pb.MessageType
SANDBOX = {"id": "gv-test", "name": "test", "runtime": "gvisor", "labels": {}}


def ctx(pid: int, tid: int | None = None, cwd: str = "", uid: int = 0, comm: str = "") -> pb.ContextData:
    return pb.ContextData(time_ns=1_700_000_000_000_000_000 + pid, thread_id=tid or pid,
                          thread_group_id=pid, container_id="cid-1", cwd=cwd, process_name=comm,
                          credentials=pb.Credentials(real_uid=uid, real_gid=uid, effective_uid=uid))


def inet(address: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(address) + bytes(8)


def mapper() -> EventMapper:
    return EventMapper(lambda _cid: SANDBOX)


def started(m: EventMapper) -> None:
    """pid 1 = sh (container start), pid 2 = its child, forked and exec'd into python3."""
    m.map(T.MESSAGE_CONTAINER_START, pb.ContainerStart(context_data=ctx(1, cwd="/work"), id="cid-1",
                                                       cwd="/work", args=["/bin/sh", "-c", "x"]))
    m.map(T.MESSAGE_SENTRY_CLONE, pb.CloneInfo(context_data=ctx(1), created_thread_id=2,
                                               created_thread_group_id=2, flags=17))
    m.map(T.MESSAGE_SYSCALL_EXECVE, pb.Execve(context_data=ctx(2), pathname="/usr/bin/python3"))
    m.map(T.MESSAGE_SENTRY_EXEC, pb.ExecveInfo(context_data=ctx(2, cwd="/work", comm="sh"),
                                               binary_path="/usr/bin/python3.11",
                                               argv=["python3", "agent.py"]))


# --- wire -------------------------------------------------------------------------------------

def test_decode_round_trip_and_header() -> None:
    message = pb.Open(context_data=ctx(3), pathname="/etc/passwd", flags=os.O_RDONLY)
    point = wire.decode(wire.encode(T.MESSAGE_SYSCALL_OPEN, message, dropped=7))
    assert (point.message_type, point.dropped) == (T.MESSAGE_SYSCALL_OPEN, 7)
    assert point.message.pathname == "/etc/passwd"


def test_decode_honours_a_larger_header() -> None:
    body = pb.Setid(context_data=ctx(3), id=0).SerializeToString()
    datagram = struct.pack("<HHI", 12, T.MESSAGE_SYSCALL_SETID, 1) + b"\xff" * 4 + body
    assert wire.decode(datagram).message.context_data.thread_group_id == 3


@pytest.mark.parametrize("datagram", [
    b"", b"\x08\x00", struct.pack("<HHI", 4, 7, 0), struct.pack("<HHI", 64, 7, 0) + b"x",
    struct.pack("<HHI", 8, 7, 0) + b"\x0a\xff\xff\xff\xff\x0f",   # length beyond the end
    struct.pack("<HHI", 8, 3, 0) + b"\x12\x05ab",                   # truncated string
])
def test_malformed_datagrams_raise(datagram: bytes) -> None:
    with pytest.raises(wire.MalformedMessage):
        wire.decode(datagram)


def test_unknown_type_is_not_an_error() -> None:
    point = wire.decode(struct.pack("<HHI", 8, 999, 3) + b"\x08\x01")
    assert point.message is None and point.dropped == 3


def test_handshake() -> None:
    assert wire.HANDSHAKE == b"\x08\x01"
    assert wire.decode_handshake(b"\x08\x01") == 1
    with pytest.raises(wire.MalformedMessage):
        wire.decode_handshake(b"\x08")


# --- mapping ----------------------------------------------------------------------------------

def test_container_start_clone_exec_lineage() -> None:
    m = mapper()
    start = m.map(T.MESSAGE_CONTAINER_START, pb.ContainerStart(
        context_data=ctx(1, cwd="/work"), id="cid-1", cwd="/work", args=["/bin/sh", "-c", "x"]))
    assert start[0].kind == "exec" and start[0].process["executable"] == "/bin/sh"
    assert start[0].process["args"] == ["/bin/sh", "-c", "x"] and start[0].source == "gvisor"
    fork = m.map(T.MESSAGE_SENTRY_CLONE, pb.CloneInfo(context_data=ctx(1), created_thread_id=2,
                                                      created_thread_group_id=2, flags=17))
    assert fork[0].kind == "fork" and fork[0].detail == {"child_pid": 2}
    assert m.map(T.MESSAGE_SYSCALL_EXECVE, pb.Execve(context_data=ctx(2), pathname="bin/tool")) == []
    [exec_event] = m.map(T.MESSAGE_SENTRY_EXEC, pb.ExecveInfo(
        context_data=ctx(2, cwd="/work", comm="sh"), binary_path="/work/bin/tool-real", argv=["tool", "-x"]))
    process = exec_event.process
    assert process["executable"] == "/work/bin/tool"  # as named, made absolute (not the symlink target)
    assert process["comm"] == "tool" and process["ppid"] == 1 and process["args"] == ["tool", "-x"]
    assert process["ancestors"][0]["executable"] == "/bin/sh"
    assert exec_event.sandbox == SANDBOX and exec_event.time_ns > 0
    assert set(process) <= set(FIELDS["process"])


def test_thread_clone_is_not_a_process() -> None:
    m = mapper()
    started(m)
    assert m.map(T.MESSAGE_SENTRY_CLONE, pb.CloneInfo(context_data=ctx(2), created_thread_id=9,
                                                      created_thread_group_id=2, flags=0x10000)) == []
    assert m.map(T.MESSAGE_SENTRY_TASK_EXIT, pb.TaskExit(context_data=ctx(2, tid=9))) == []


def test_exit_status_code_and_signal() -> None:
    m = mapper()
    started(m)
    [code] = m.map(T.MESSAGE_SENTRY_TASK_EXIT, pb.TaskExit(context_data=ctx(2), exit_status=3 << 8))
    assert code.kind == "exit" and code.detail == {"code": 3}
    [killed] = m.map(T.MESSAGE_SENTRY_TASK_EXIT, pb.TaskExit(context_data=ctx(1), exit_status=9))
    assert killed.detail == {"code": 137, "signal": 9}


def test_open_paths_flags_and_result() -> None:
    m = mapper()
    started(m)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    [rel] = m.map(T.MESSAGE_SYSCALL_OPEN, pb.Open(
        context_data=ctx(2, cwd="/work/src"), fd=-100, pathname="../out.txt", flags=flags, mode=0o644,
        exit=pb.Exit(result=3)))
    assert rel.file["path"] == "/work/out.txt" and rel.file["write"] is True
    assert rel.file["flags"][:3] == ["O_WRONLY", "O_CREAT", "O_TRUNC"] and rel.file["mode"] == 0o644
    assert rel.result == 3
    [at] = m.map(T.MESSAGE_SYSCALL_OPEN, pb.Open(
        context_data=ctx(2), fd=5, fd_path="/home/agent", pathname=".ssh/id_rsa", flags=os.O_RDONLY,
        exit=pb.Exit(result=-1, errorno=2)))
    assert at.file["path"] == "/home/agent/.ssh/id_rsa" and at.file["write"] is False
    assert at.file["flags"][0] == "O_RDONLY" and "mode" not in at.file
    assert at.result == -2


def test_repeated_opens_are_folded_and_counted() -> None:
    m = mapper()
    started(m)

    def open_at(time_ns: int, flags: int = os.O_RDONLY) -> list:
        context = ctx(2)
        context.time_ns = time_ns
        return m.map(T.MESSAGE_SYSCALL_OPEN, pb.Open(context_data=context, pathname="/etc/hosts", flags=flags,
                                                     exit=pb.Exit(result=3)))

    base = 1_700_000_000_000_000_000
    assert len(open_at(base)) == 1
    assert open_at(base + 1000) == [] and open_at(base + 500_000_000) == []
    assert len(open_at(base + 2000, os.O_RDWR)) == 1      # another way of opening it
    assert len(open_at(base + 1_000_000_001)) == 1         # the window passed
    assert m.folded == 2


def test_connect_transport_from_socket_and_dns() -> None:
    m = mapper()
    started(m)
    assert m.map(T.MESSAGE_SYSCALL_SOCKET, pb.Socket(context_data=ctx(2), domain=2, type=2 | 0o2000000,
                                                     exit=pb.Exit(result=4))) == []
    connect, dns = m.map(T.MESSAGE_SYSCALL_CONNECT, pb.Connect(
        context_data=ctx(2), fd=4, address=inet("127.0.0.53", 53), exit=pb.Exit(result=0)))
    assert connect.kind == "connect" and dns.kind == "dns"
    assert connect.net == {"direction": "egress", "family": "inet", "address": "127.0.0.53", "port": 53,
                           "transport": "udp"}
    assert dns.net == connect.net and "query" not in dns.net
    # a child inherits the parent's sockets across fork
    m.map(T.MESSAGE_SENTRY_CLONE, pb.CloneInfo(context_data=ctx(2), created_thread_group_id=3, flags=17))
    [child] = m.map(T.MESSAGE_SYSCALL_CONNECT, pb.Connect(context_data=ctx(3), fd=4,
                                                          address=inet("10.0.0.1", 443)))
    assert child.net["transport"] == "udp" and child.process["ppid"] == 2


def test_bind_listen_accept() -> None:
    m = mapper()
    started(m)
    m.map(T.MESSAGE_SYSCALL_SOCKET, pb.Socket(context_data=ctx(2), domain=2, type=1, exit=pb.Exit(result=5)))
    [bind] = m.map(T.MESSAGE_SYSCALL_BIND, pb.Bind(context_data=ctx(2), fd=5, address=inet("0.0.0.0", 8080),
                                                   exit=pb.Exit(result=0)))
    assert bind.net["port"] == 8080 and bind.net["transport"] == "tcp" and bind.net["direction"] == "ingress"
    [listen] = m.map(T.MESSAGE_SYSCALL_RAW, pb.Syscall(context_data=ctx(2), sysno=50, arg1=5, arg2=128))
    assert listen.kind == "listen" and listen.net["address"] == "0.0.0.0" and listen.net["port"] == 8080
    [accept] = m.map(T.MESSAGE_SYSCALL_ACCEPT, pb.Accept(context_data=ctx(2), fd=5,
                                                         address=inet("192.0.2.7", 40000)))
    assert accept.net["address"] == "192.0.2.7" and accept.net["local_port"] == 8080


def test_credentials_and_privilege_calls() -> None:
    m = mapper()
    started(m)
    [setuid] = m.map(T.MESSAGE_SYSCALL_SETID, pb.Setid(context_data=ctx(2, uid=1000), sysno=105, id=0,
                                                       exit=pb.Exit(errorno=1)))
    assert setuid.kind == "setuid" and setuid.detail == {"call": "setuid", "uid": 0}
    assert setuid.process["uid"] == 1000 and setuid.result == -1
    [setres] = m.map(T.MESSAGE_SYSCALL_SETRESID, pb.Setresid(context_data=ctx(2), sysno=119, rid=0,
                                                             eid=0xFFFFFFFF, sid=5))
    assert setres.kind == "setgid" and setres.detail == {"call": "setresgid", "gid": 0, "sgid": 5}
    [ptrace] = m.map(T.MESSAGE_SYSCALL_RAW, pb.Syscall(context_data=ctx(2), sysno=101, arg1=16, arg2=7))
    assert ptrace.detail == {"request": "PTRACE_ATTACH", "target_pid": 7}
    [memfd] = m.map(T.MESSAGE_SYSCALL_RAW, pb.Syscall(context_data=ctx(2), sysno=319, arg1=0xdead, arg2=1))
    assert memfd.kind == "memfd" and memfd.detail == {"flags": 1}
    [chmod] = m.map(T.MESSAGE_SYSCALL_RAW, pb.Syscall(context_data=ctx(2), sysno=268, arg1=-100 & (2**64 - 1),
                                                      arg2=0xbeef, arg3=0o4755))
    assert chmod.kind == "chmod" and chmod.file == {"write": True, "mode": 0o4755}
    [unshare] = m.map(T.MESSAGE_SYSCALL_RAW, pb.Syscall(context_data=ctx(2), sysno=272, arg1=0x10000000))
    assert unshare.detail == {"call": "unshare", "flags": ["CLONE_NEWUSER"]}
    assert m.map(T.MESSAGE_SYSCALL_RAW, pb.Syscall(context_data=ctx(2), sysno=0)) == []


def test_every_mapped_kind_is_a_known_kind() -> None:
    m = mapper()
    started(m)
    kinds = {e.kind for sysno in (50, 82, 87, 90, 101, 113, 165, 272, 308, 319, 321)
             for e in m.map(T.MESSAGE_SYSCALL_RAW, pb.Syscall(context_data=ctx(2), sysno=sysno))}
    assert kinds <= set(KINDS) and len(kinds) == 11


# --- the sink server --------------------------------------------------------------------------

class FakeRunsc:
    """runsc's side of the remote sink: connect, handshake, then header + point datagrams."""

    def __init__(self, path: Path, version: int = 1) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(str(path))
        self.sock.send(pb.Handshake(version=version).SerializeToString())

    def reply(self, sink: TraceSource) -> bytes:
        self.sock.settimeout(2)
        sink.poll(0)
        return self.sock.recv(100)

    def send(self, datagram: bytes) -> None:
        self.sock.send(datagram)


def poll_until(sink: TraceSource, count: int, timeout_s: float = 5) -> list:
    events: list = []
    deadline = time.monotonic() + timeout_s
    while len(events) < count and time.monotonic() < deadline:
        events += sink.poll(50)
    return events


@pytest.fixture
def sink(tmp_path: Path):
    server = TraceSource(tmp_path / "trace.sock", sandbox_for=lambda _cid: SANDBOX)
    yield server
    server.close()


def test_sink_handshake_points_and_end(sink: TraceSource) -> None:
    assert oct(sink.path.stat().st_mode & 0o777) == "0o600"
    runsc = FakeRunsc(sink.path)
    assert runsc.reply(sink) == b"\x08\x01"
    runsc.send(wire.encode(T.MESSAGE_CONTAINER_START, pb.ContainerStart(context_data=ctx(1), args=["/bin/true"])))
    runsc.send(wire.encode(T.MESSAGE_SYSCALL_OPEN, pb.Open(context_data=ctx(1), pathname="/etc/shadow")))
    events = poll_until(sink, 2)
    assert [e.kind for e in events] == ["exec", "open"] and events[1].file["path"] == "/etc/shadow"
    assert sink.open_sessions == 1 and sink.sessions[0].peer_pid == os.getpid()
    runsc.sock.close()
    poll_until(sink, 1, timeout_s=0.3)
    assert sink.open_sessions == 0 and sink.stats()["points"] == 2


def test_sink_counts_malformed_and_dropped_and_keeps_going(sink: TraceSource) -> None:
    runsc = FakeRunsc(sink.path)
    runsc.reply(sink)
    good = wire.encode(T.MESSAGE_SYSCALL_OPEN, pb.Open(context_data=ctx(1), pathname="/a"), dropped=0)
    runsc.send(b"\x01\x02")                                             # shorter than a header
    runsc.send(good[:-3])                                               # truncated protobuf
    runsc.send(struct.pack("<HHI", 8, 999, 0))                          # a type we do not decode
    runsc.send(wire.encode(T.MESSAGE_SYSCALL_OPEN, pb.Open(context_data=ctx(1), pathname="/b"), dropped=5))
    events = poll_until(sink, 1)
    assert [e.file["path"] for e in events] == ["/b"]
    assert sink.lost() == {"gvisor_dropped": 5, "gvisor_malformed": 2}
    assert sink.errors["unknown_type"] == 1


def test_dropped_count_wraps(sink: TraceSource) -> None:
    runsc = FakeRunsc(sink.path)
    runsc.reply(sink)
    for dropped in (0xFFFFFFF0, 0x00000010):
        runsc.send(wire.encode(T.MESSAGE_SYSCALL_OPEN, pb.Open(context_data=ctx(1), pathname="/x"), dropped))
    poll_until(sink, 2)
    assert sink.lost()["gvisor_dropped"] == 0xFFFFFFF0 + 0x20


def test_oversized_datagram_is_counted_as_truncated(sink: TraceSource) -> None:
    runsc = FakeRunsc(sink.path)
    runsc.reply(sink)
    runsc.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    big = pb.ExecveInfo(context_data=ctx(1), binary_path="/x", argv=["a" * 300_000])
    runsc.send(wire.encode(T.MESSAGE_SENTRY_EXEC, big))
    runsc.send(wire.encode(T.MESSAGE_SYSCALL_OPEN, pb.Open(context_data=ctx(1), pathname="/after")))
    assert [e.file["path"] for e in poll_until(sink, 1)] == ["/after"]
    assert sink.errors["truncated"] == 1


def test_old_protocol_version_is_refused(sink: TraceSource) -> None:
    runsc = FakeRunsc(sink.path, version=0)
    sink.poll(100)
    runsc.sock.settimeout(1)
    assert runsc.sock.recv(100) == b""  # closed without our handshake
    assert sink.errors["handshake"] == 1 and sink.sessions == []


def test_stale_socket_path_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "trace.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a crashed monitor's leftover
    server = TraceSource(path)
    try:
        runsc = FakeRunsc(path)
        assert runsc.reply(server) == b"\x08\x01"
    finally:
        server.close()
    assert not path.exists()


def test_live_or_foreign_path_is_refused(tmp_path: Path, sink: TraceSource) -> None:
    with pytest.raises(SinkError, match="another process is serving"):
        TraceSource(sink.path)
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(SinkError, match="not a socket"):
        TraceSource(regular)
    assert regular.read_text() == "keep me"


def test_registry_identity_for_docker_containers() -> None:
    registry = SandboxRegistry()
    lookup = registry_sandbox_for(registry)
    assert lookup("c" * 64) is None  # not registered (yet)
    registry.add(Sandbox(id="c" * 64, name="agent", runtime="docker", image="busybox", labels={"a": "b"}))
    identity = lookup("c" * 64)
    assert identity["name"] == "agent" and identity["image"] == "busybox" and identity["runtime"] == "gvisor"
    assert lookup("c" * 64) is identity


def _container_point(container_id: str, path: str) -> bytes:
    context = ctx(1)
    context.container_id = container_id
    return wire.encode(T.MESSAGE_SYSCALL_OPEN, pb.Open(context_data=context, pathname=path))


def test_events_wait_for_the_inventory_then_carry_its_identity(tmp_path: Path) -> None:
    registry = SandboxRegistry()
    server = TraceSource(tmp_path / "t.sock", sandbox_for=registry_sandbox_for(registry), hold_unknown_ms=5000)
    try:
        runsc = FakeRunsc(server.path)
        runsc.reply(server)
        runsc.send(_container_point("d" * 64, "/first"))
        runsc.send(_container_point("d" * 64, "/second"))
        assert poll_until(server, 1, timeout_s=0.3) == []  # held: the engine has not said who it is
        registry.add(Sandbox(id="d" * 64, name="agent-7", runtime="docker", labels={"team": "ml"}))
        events = poll_until(server, 2)
        assert [e.file["path"] for e in events] == ["/first", "/second"]
        assert all(e.sandbox["name"] == "agent-7" and e.sandbox["labels"] == {"team": "ml"} for e in events)
    finally:
        server.close()


def test_unknown_container_is_released_with_a_provisional_identity(tmp_path: Path) -> None:
    server = TraceSource(tmp_path / "t.sock", sandbox_for=registry_sandbox_for(SandboxRegistry()),
                       hold_unknown_ms=100)
    try:
        runsc = FakeRunsc(server.path)
        runsc.reply(server)
        runsc.send(_container_point("e" * 64, "/x"))
        [event] = poll_until(server, 1)
        assert event.sandbox == {"id": "e" * 64, "name": "e" * 12, "runtime": "gvisor", "labels": {}}
        assert server.errors["identity_timeout"] == 1
    finally:
        server.close()


# --- config, install, deny --------------------------------------------------------------------

def test_pod_init_config(tmp_path: Path) -> None:
    path = write_pod_init_config(tmp_path / "pod.json", "/run/x.sock", retries=3)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    session = json.loads(path.read_text())["trace_session"]
    assert session["sinks"] == [{"name": "remote", "config": {"endpoint": "/run/x.sock", "retries": 3,
                                                              "backoff": "25us", "backoff_max": "5ms"}}]
    names = {p["name"] for p in session["points"]}
    assert {"sentry/execve", "sentry/clone", "syscall/openat/exit", "syscall/connect/exit",
            "syscall/sysno/101/enter"} <= names
    assert pod_init_config("/x", retries=0)["trace_session"]["sinks"][0]["config"] == {"endpoint": "/x"}


@pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc not installed (scripts/setup.sh installs it)")
def test_every_configured_point_and_field_exists_in_runsc() -> None:
    metadata = subprocess.run(["runsc", "trace", "metadata"], capture_output=True, text=True, check=True).stdout
    known: dict[str, str] = {}
    for line in metadata.splitlines():
        if line.startswith("Name: "):
            name, _, rest = line[len("Name: "):].partition(",")
            known[name] = rest
    for point in trace_points():
        assert point["name"] in known, point["name"]
        for context_field in point.get("context_fields", []):
            assert context_field in known[point["name"]].split("context fields:")[1], (point, context_field)
        for optional in point.get("optional_fields", []):
            assert optional in known[point["name"]].split("context fields:")[0], (point, optional)


def test_install_keeps_what_is_there(tmp_path: Path) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(json.dumps({"log-driver": "journald", "runtimes": {
        "kata": {"path": "/usr/bin/kata"},
        "runsc": {"path": "/old/runsc", "runtimeArgs": ["--platform=kvm", "--pod-init-config=/old.json"]}}}))
    os.chmod(daemon_json, 0o644)
    entry = install_docker_runtime(daemon_json=daemon_json, runsc="/usr/bin/runsc",
                                   socket_path=tmp_path / "s.sock", pod_init_config=tmp_path / "etc" / "p.json")
    data = json.loads(daemon_json.read_text())
    assert data["log-driver"] == "journald" and data["runtimes"]["kata"] == {"path": "/usr/bin/kata"}
    assert entry == data["runtimes"]["runsc"] == {
        "path": "/usr/bin/runsc", "runtimeArgs": ["--platform=kvm", f"--pod-init-config={tmp_path}/etc/p.json"]}
    assert oct(daemon_json.stat().st_mode & 0o777) == "0o644"
    assert json.loads((tmp_path / "etc" / "p.json").read_text())["trace_session"]["sinks"][0]["config"][
        "endpoint"] == str(tmp_path / "s.sock")
    assert docker_knows(daemon_json)[0]
    assert uninstall_docker_runtime(daemon_json=daemon_json)
    assert json.loads(daemon_json.read_text())["runtimes"]["runsc"]["runtimeArgs"] == ["--platform=kvm"]
    assert not uninstall_docker_runtime(daemon_json=daemon_json)


def test_install_refuses_broken_daemon_json(tmp_path: Path) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text('{\n  "runtimes": {,\n}\n')
    with pytest.raises(InstallError, match=r"daemon.json:2: not valid JSON"):
        install_docker_runtime(daemon_json=daemon_json, runsc="/usr/bin/runsc",
                               pod_init_config=tmp_path / "p.json")
    assert daemon_json.read_text() == '{\n  "runtimes": {,\n}\n'


def test_cli_install_error_is_one_line(tmp_path: Path) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text("[1, 2]")
    monitor = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "monitor"
    proc = subprocess.run([str(monitor), "gvisor", "install", "--daemon-json", str(daemon_json),
                           "--runsc", "/usr/bin/runsc", "--pod-init-config", str(tmp_path / "p.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    assert f"{daemon_json}:1: expected a JSON object" in proc.stderr


def test_deny_rules_are_refused_with_a_reason() -> None:
    messages = deny_rules_refused([("ok", "kill"), ("no miners", "deny"), ("d", "deny")])
    assert len(messages) == 2 and "no miners" in messages[0] and DENY_REFUSED in messages[0]
    assert "host kernel never sees" in DENY_REFUSED


@pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc not installed (scripts/setup.sh installs it)")
def test_actor_refuses_deny_and_honours_audit(tmp_path: Path) -> None:
    """The one actor with gVisor's enforcer: a sandbox pid is never taken for a host pid."""
    from monitor.actions import Actions
    from monitor.actions.gvisor import GvisorEnforcer
    from monitor.event import Alert, Event
    from monitor.gvisor.runner import GvisorSandbox
    from monitor.sandbox import SandboxRegistry

    sandbox = GvisorSandbox(["/bin/true"], "actor", runtime_base=tmp_path)  # never started
    event = Event(kind="exec", process={"pid": 3}, sandbox=sandbox.sandbox.identity(), source="gvisor")
    registry = SandboxRegistry()
    registry.add(sandbox.sandbox)
    enforcer = GvisorEnforcer()
    enforcer.add_run(sandbox)
    actor = Actions(registry, enforcers={"gvisor": enforcer})

    def alert(action: str, mode: str = "enforce") -> Alert:
        return Alert(rule=f"r-{action}", severity="high", action=action, tags=[], event=event, mode=mode)

    assert actor.take(alert("alert")) is None
    denied = actor.take(alert("deny"))
    assert denied.outcome == "refused" and denied.message == DENY_REFUSED
    assert actor.take(alert("kill", mode="audit")).outcome == "audit"
    assert actor.take(alert("kill")).outcome == "already_gone"
    record = actor.take(alert("kill_process"))
    assert record.target == {"sandbox": sandbox.sandbox.id, "pid": 3} and record.outcome == "already_gone"
    assert Actions(registry, audit=True, enforcers={"gvisor": enforcer}).take(alert("freeze")).outcome == "audit"


def test_stale_session_dirs_are_removed_live_ones_kept(tmp_path: Path) -> None:
    from monitor.gvisor.runner import cleanup_stale

    stale = tmp_path / "gv-dead"
    stale.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(str(stale / "trace.sock"))
    dead.close()
    (stale / "pod-init.json").write_text("{}")
    live_dir = tmp_path / "gv-live"
    live_dir.mkdir()
    server = TraceSource(live_dir / "trace.sock")
    try:
        assert cleanup_stale(tmp_path) == ["gv-dead"]
        assert not stale.exists() and (live_dir / "trace.sock").exists()
    finally:
        server.close()
