"""Every event kind, produced by a real command in a real sandbox, asserted field by field.
Real probes, real kernel: nothing on this path is mocked."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor_run import MONITOR, fork_execl, monitor_run, needs_root, read_jsonl  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]
PY = "/usr/bin/python3"


def one(events: list[dict], **where: object) -> dict:
    found = [e for e in events if all(_get(e, k) == v for k, v in where.items())]
    assert found, f"no event with {where} among {len(events)}"
    return found[0]


def _get(event: dict, dotted: str) -> object:
    value: object = event
    for part in dotted.split("__"):
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)] if int(part) < len(value) else None
        else:
            value = value.get(part) if isinstance(value, dict) else None
    return value


def test_exec_args_exit_code_and_lineage(tmp_path: Path) -> None:
    r = monitor_run("/bin/true a b; (sh -c '/bin/echo grandchild >/dev/null'); exit 3", "--no-rules")
    assert r.returncode == 3
    true = one(r.events("exec"), process__executable="/bin/true")
    assert true["process"]["args"] == ["/bin/true", "a", "b"]
    assert true["result"] == 0
    assert true["sandbox"]["runtime"] == "cgroup"
    assert true["sandbox"]["cgroup_id"] > 0
    bash = one(r.events("exec"), process__comm="bash")
    assert true["process"]["ppid"] == bash["process"]["pid"]
    echo = one(r.events("exec"), process__executable="/bin/echo")
    chain = [a["executable"] for a in echo["process"]["ancestors"]]
    assert chain[0].endswith("/sh") and chain[-1].endswith("/bash"), chain
    exits = {e["process"]["pid"]: e["detail"] for e in r.events("exit")}
    assert exits[bash["process"]["pid"]] == {"code": 3}
    assert r.events("fork"), "bash forks its children"
    assert r.summary["exit_status"] == 3
    assert r.summary["lost"] == {}


def test_exec_records_cut_after_the_last_argument_keep_every_argument(tmp_path: Path) -> None:
    """Exec records leave the kernel cut after their last argument (probes/process.c): the first
    20 arguments arrive whole, a longer one cut at ARG_LEN, and the truncation is flagged."""
    from monitor.sensor import wire

    long_arg = "L" * 300
    args = [f"arg{i}" for i in range(1, 19)] + [long_arg, "dropped-1", "dropped-2", "dropped-3"]
    r = monitor_run("/bin/true " + " ".join(args) + "; /bin/true short", "--no-rules")
    many = one(r.events("exec"), process__executable="/bin/true", process__args__1="arg1")
    assert len(many["process"]["args"]) == wire.MAX_ARGS
    assert many["process"]["args"][1:19] == args[:18]
    assert many["process"]["args"][19] == long_arg[: wire.ARG_LEN - 1]
    assert many["detail"] == {"args_truncated": True}
    short = one(r.events("exec"), process__executable="/bin/true", process__args__1="short")
    assert short["process"]["args"] == ["/bin/true", "short"] and not short.get("detail")


def test_exec_of_strings_not_in_memory_is_never_blank(tmp_path: Path) -> None:
    r = monitor_run([fork_execl(tmp_path, "/bin/sleep", "sleep", "0.5")], "--no-rules")
    sleep = one(r.events("exec"), process__comm="sleep")
    assert sleep["process"]["executable"] == "/bin/sleep", "the kernel's copy of the path fills it in"
    assert sleep["detail"]["args_unreadable"] is True, "this shape of exec is the one user memory cannot give"
    assert sleep["process"]["args"] == ["sleep", "0.5"], "read back from /proc while the program runs"


def test_a_path_walk_miss_is_counted_not_reported() -> None:
    r = monitor_run("env PATH=/nonexistent-dir:/usr/bin:/bin true", "--no-rules")
    assert r.returncode == 0, r.stderr
    assert not [e for e in r.events("exec") if e["process"]["executable"].startswith("/nonexistent-dir")]
    one(r.events("exec"), process__executable="/usr/bin/true")
    folded = {key.rsplit(".", 1)[-1]: n for key, n in r.summary["folded"].items()}
    assert folded.get("exec_enoent", 0) >= 1, r.summary["folded"]


def test_file_events_resolved_and_decoded(tmp_path: Path) -> None:
    work = tmp_path / "ws"
    work.mkdir()
    script = (f"cd {work} && echo hi > rel.txt && cat rel.txt >/dev/null && mv rel.txt moved.txt"
              f" && chmod 4755 moved.txt && rm moved.txt")
    r = monitor_run(script, "--no-rules")
    assert r.returncode == 0, r.stderr
    write = one(r.events("open"), file__path=str(work / "rel.txt"), file__write=True)
    assert "O_WRONLY" in write["file"]["flags"] and "O_CREAT" in write["file"]["flags"]
    read = [e for e in r.events("open") if e["file"]["path"] == str(work / "rel.txt") and not e["file"]["write"]]
    assert read and read[0]["file"]["flags"][0] == "O_RDONLY"
    rename = one(r.events("rename"), file__path=str(work / "rel.txt"))
    assert rename["file"]["new_path"] == str(work / "moved.txt")
    chmod = one(r.events("chmod"), file__path=str(work / "moved.txt"))
    assert chmod["file"]["mode"] == 0o4755
    one(r.events("unlink"), file__path=str(work / "moved.txt"), result=0)


class Listener:
    """A TCP listener on 127.0.0.1 that accepts and closes, for connect tests."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except OSError:
                return


def test_tcp_connect_to_local_listener() -> None:
    listener = Listener()
    code = f"import socket; s=socket.create_connection(('127.0.0.1', {listener.port})); s.close()"
    r = monitor_run([PY, "-c", code], "--no-rules")
    assert r.returncode == 0, r.stderr
    connect = one(r.events("connect"), net__port=listener.port)
    assert connect["net"] == {"direction": "egress", "family": "inet", "address": "127.0.0.1",
                              "port": listener.port, "transport": "tcp"}
    assert connect["result"] == 0


def test_repeats_fold_in_the_kernel_and_are_counted(tmp_path: Path) -> None:
    """300 opens of one file and 300 connects to one listener make one record a second each; the
    rest are counted (detail.repeats of the next record, and summary.folded), never silently lost.
    Another path and another port are still reported at once."""
    target, other = tmp_path / "same.txt", tmp_path / "other.txt"
    target.write_text("x")
    other.write_text("y")
    listener, second = Listener(), Listener()
    code = (f"import socket\nfor _ in range(300):\n    open({str(target)!r}).close()\n"
            f"    socket.create_connection(('127.0.0.1', {listener.port})).close()\n"
            f"open({str(other)!r}).close()\nsocket.create_connection(('127.0.0.1', {second.port})).close()\n")
    r = monitor_run([PY, "-c", code], "--no-rules")
    assert r.returncode == 0, r.stderr
    opens = [e for e in r.events("open") if e["file"]["path"] == str(target)]
    connects = [e for e in r.events("connect") if e["net"].get("port") == listener.port]
    folded = {key.rsplit(".", 1)[-1]: n for key, n in r.summary["folded"].items()}  # ebpf.open -> open
    for seen, kind in ((opens, "open"), (connects, "connect")):
        times = [e["time_ns"] for e in seen]
        assert seen and all(b - a > 999_000_000 for a, b in zip(times, times[1:], strict=False)), \
            f"{len(seen)} {kind} records less than the 1 s window apart: not folded"
        assert len(seen) + sum((e.get("detail") or {}).get("repeats", 0) for e in seen) <= 300
        assert folded.get(kind, 0) >= 300 - len(seen), folded
    one(r.events("open"), file__path=str(other))
    one(r.events("connect"), net__port=second.port)


def test_unix_socket_connect(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    code = f"import socket; s=socket.socket(socket.AF_UNIX); s.connect({path!r}); s.close()"
    r = monitor_run([PY, "-c", code], "--no-rules")
    server.close()
    connect = one(r.events("connect"), net__address=path)
    assert connect["net"]["family"] == "unix"


def _dns_listener() -> tuple[socket.socket, list[bytes]]:
    """A UDP port-53 listener on a loopback address of its own (parallel runs never collide)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((f"127.53.{os.getpid() % 250}.{int(time.time()) % 250 + 1}", 53))
    got: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                data, _ = sock.recvfrom(512)
                got.append(data)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return sock, got


def test_dns_query_names_sendto_and_connected() -> None:
    sock, got = _dns_listener()
    address = sock.getsockname()[0]
    code = r"""
import socket, struct
def q(name):
    body = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + body + struct.pack(">HH", 28, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(q("exfil.example.test"), (ADDRESS, 53))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect((ADDRESS, 53)); c.send(q("connected.example.test"))
""".replace("ADDRESS", repr(address))
    try:
        r = monitor_run([PY, "-c", code], "--no-rules")
    finally:
        sock.close()
    assert r.returncode == 0, r.stderr
    first = one(r.events("dns"), net__query="exfil.example.test")
    assert first["net"]["query_type"] == "AAAA" and first["net"]["port"] == 53
    assert first["net"]["transport"] == "udp" and first["net"]["address"] == address
    one(r.events("dns"), net__query="connected.example.test")


def test_bind_listen_accept() -> None:
    code = r"""
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.close()
import time; time.sleep(0.3)  # the monitor reads a listener's port from /proc
"""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"port-{os.getpid()}"
    proc = subprocess.Popen([MONITOR, "run", "--json", str(out), "-q", "--no-rules", "--", PY, "-c", code],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    socket.create_connection(("127.0.0.1", port)).close()
    assert proc.wait(60) == 0
    records = read_jsonl(out)
    out.unlink()
    events = [r for r in records if r["type"] == "event"]
    bind = one([e for e in events if e["kind"] == "bind"], net__address="127.0.0.1")
    assert bind["net"]["address"] == "127.0.0.1" and bind["net"]["transport"] == "tcp"
    listen = one([e for e in events if e["kind"] == "listen"], result=0)
    assert listen["net"]["port"] == port and listen["net"]["address"] == "127.0.0.1"
    accept = one([e for e in events if e["kind"] == "accept"], net__address="127.0.0.1")
    assert accept["net"]["direction"] == "ingress" and accept["result"] >= 0


def test_privilege_namespace_memfd_ptrace_bpf_mount() -> None:
    code = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
os.memfd_create("payload")
os.setresuid(0, 0, 0)
os.setgid(0)
libc.ptrace(0, 0, 0, 0)                      # PTRACE_TRACEME
libc.syscall(321, 0, None, 0)                # bpf(BPF_MAP_CREATE, NULL, 0): fails, still seen
hdr = (ctypes.c_uint32 * 2)(0x20080522, 0); data = (ctypes.c_uint32 * 6)()
libc.syscall(125, hdr, data)                 # capget
libc.syscall(126, hdr, data)                 # capset (same caps)
"""
    r = monitor_run(f"{PY} -c '{code}' && unshare -U true && unshare -m sh -c 'mount -t tmpfs none /mnt'",
                    "--no-rules")
    assert r.returncode == 0, r.stderr
    assert one(r.events("memfd"))["detail"]["name"] == "payload"
    setuid = one(r.events("setuid"))
    assert setuid["detail"] == {"call": "setresuid", "uid": 0, "euid": 0, "suid": 0}
    assert one(r.events("setgid"))["detail"]["call"] == "setgid"
    assert one(r.events("ptrace"))["detail"]["request"] == "PTRACE_TRACEME"
    assert one(r.events("bpf"))["detail"]["cmd"] == 0
    assert "effective" in one(r.events("capset"))["detail"]
    unshare = [e for e in r.events("unshare") if "CLONE_NEWUSER" in e["detail"]["flags"]]
    assert unshare, [e["detail"] for e in r.events("unshare")]
    mount = one(r.events("mount"), detail__fstype="tmpfs")
    assert mount["detail"]["target"] == "/mnt" and mount["result"] == 0


def test_host_processes_and_other_sandboxes_stay_out(tmp_path: Path) -> None:
    marker_host = tmp_path / "host-marker"
    host = subprocess.Popen(["bash", "-c", f"for i in $(seq 50); do echo x > {marker_host}; /bin/true host; sleep 0.01; done"])
    outs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    procs = [subprocess.Popen([MONITOR, "run", "--json", str(out), "-q", "--no-rules", "--name", name,
                               "--", "bash", "-c", f"for i in 1 2 3; do /bin/echo {name} >/dev/null; sleep 0.05; done"])
             for name, out in zip(("alpha", "beta"), outs, strict=True)]
    assert [p.wait(60) for p in procs] == [0, 0]
    host.wait(60)
    for name, out in zip(("alpha", "beta"), outs, strict=True):
        events = [r for r in read_jsonl(out) if r["type"] == "event"]
        assert {e["sandbox"]["name"] for e in events} == {name}
        echoes = [e for e in events if e["kind"] == "exec" and e["process"]["executable"] == "/bin/echo"]
        assert [e["process"]["args"] for e in echoes] == [["/bin/echo", name]] * 3
        assert not [e for e in events if e.get("file", {}).get("path") == str(marker_host)]
        assert not [e for e in events if e.get("process", {}).get("args") == ["/bin/true", "host"]]


def test_unknown_command_exits_127() -> None:
    r = monitor_run(["/nonexistent/agent-binary"], "--no-rules")
    assert r.returncode == 127
    assert "agent-binary" in r.stderr and "Traceback" not in r.stderr
    assert r.summary["exit_status"] == 127


def test_judging_loop_keeps_one_cpu_and_the_sandbox_keeps_every_cpu() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    # the child, then the monitor's judging (main) thread once its loop runs
    show = "grep Cpus_allowed_list /proc/self/status; sleep 0.5; grep Cpus_allowed_list /proc/$PPID/status"
    r = monitor_run(show, "--no-rules")
    child, loop = (line.split()[-1] for line in r.stdout.splitlines())
    every = f"{allowed[0]}-{allowed[-1]}" if len(allowed) > 1 else str(allowed[0])
    assert child == every, r.stdout  # the sandboxed command is not pinned
    if len(allowed) > 1:
        assert loop == str(allowed[-1]) and r.summary["monitor"]["cpu"] == allowed[-1], r.stdout
    off = monitor_run(show, "--no-rules", "--cpu", "off")
    assert off.stdout.splitlines()[1].split()[-1] == every and off.summary["monitor"]["cpu"] is None
    bad = monitor_run("true", "--no-rules", "--cpu", "4096")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "--cpu 4096" in bad.stderr and "Traceback" not in bad.stderr


def test_not_root_is_one_line_error() -> None:
    proc = subprocess.run([MONITOR, "run", "--", "true"], capture_output=True, text=True, user=65534,
                          env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "root" in proc.stderr, proc.stderr


def test_stale_sandbox_from_crashed_run_is_cleaned_up() -> None:
    from monitor.sandbox import cgroup as cg

    sleeper_cmd = ["bash", "-c", "sleep 300"]
    proc = subprocess.Popen([MONITOR, "run", "-q", "--no-rules", "--", *sleeper_cmd])
    deadline = time.monotonic() + 30
    leftover = None
    while time.monotonic() < deadline and leftover is None:
        states = [s for s in cg.read_states() if s.get("owner_pid") == proc.pid]
        if states and cg.pids(str(states[0]["cgroup_path"])):
            leftover = str(states[0]["cgroup_path"])
        time.sleep(0.05)
    assert leftover, "monitor run never created its sandbox"
    proc.kill()  # the monitor crashes: its sandbox and the sleeper stay behind
    proc.wait()
    assert os.path.isdir(leftover) and cg.pids(leftover)
    r = monitor_run("true", "--no-rules")
    assert r.returncode == 0
    assert not os.path.isdir(leftover), "the next run removes a dead monitor's sandbox"


def test_shell_with_stdio_on_a_socket_is_a_reverse_shell() -> None:
    """A program moves its stdio onto a connection and starts a shell (python's pty/socket trick)."""
    code = ("import socket, subprocess\na, b = socket.socketpair()\n"
            "subprocess.run(['/bin/bash', '-c', 'sleep 0.5'], stdin=a, stdout=a)\n")
    r = monitor_run([PY, "-c", code])
    bash = one(r.events("exec"), process__executable="/bin/bash")
    assert bash["process"]["stdin"] == "socket" and bash["process"]["stdout"] == "socket"
    assert "Reverse shell" in r.alert_rules()


def test_a_full_ring_spills_into_the_rescue_ring_and_every_loss_is_counted() -> None:
    """Nobody reads while a sandbox opens 200,000 distinct missing paths: the 16 MiB ring fills,
    the rescue ring takes what it can, and the kernel counts the rest. What is read back plus what
    was counted lost is every open, to the record."""
    from monitor.sandbox import cgroup as cg
    from monitor.sensor import Sensor

    opens = 200_000
    sensor = Sensor()
    box = cg.create("spill")
    try:
        sensor.add_cgroup(box.cgroup_id)
        code = f"for i in range({opens}):\n    try: open(f'/nonexistent-spill/{{i}}')\n    except OSError: pass\n"
        subprocess.run([PY, "-c", code], preexec_fn=cg.joiner(box), check=True, timeout=120)
        events = [e for e in sensor.drain() if e.kind == "open"
                  and str((e.file or {}).get("path", "")).startswith("/nonexistent-spill/")]
        lost = sensor.lost().get("open", 0)
        assert lost > 0, "the ring never filled: the test did not test anything"
        assert sensor.rescued > 0, "the rescue ring took nothing when the main ring was full"
        assert len(events) + lost == opens, (len(events), lost, sensor.rescued)
    finally:
        sensor.close()
        cg.remove(box)


def test_the_sensor_descriptor_polls_readable_when_the_ring_wakes() -> None:
    """What lets one wait serve the sensor beside other sources (monitor.engine.loop.one_wait): its
    descriptor, an epoll of its rings, is itself waitable, and a record that wakes the reader
    makes it readable."""
    import select

    from monitor.sandbox import cgroup as cg
    from monitor.sensor import Sensor

    sensor = Sensor()
    box = cg.create("fileno")
    ready = select.epoll()
    try:
        sensor.add_cgroup(box.cgroup_id)
        sensor.drain()
        ready.register(sensor.fileno(), select.EPOLLIN)
        assert ready.poll(0) == []
        pid = os.fork()
        if pid == 0:  # joins the sandbox, then setuid: a record that wakes a reader that is caught up
            try:
                cg.joiner(box)()
                os.setuid(0)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert ready.poll(10), "the sensor's descriptor never became readable"
        assert any(e.kind == "setuid" for e in sensor.poll(0))
    finally:
        ready.close()
        sensor.close()
        cg.remove(box)


def test_an_exec_wakes_the_reader_only_while_a_rule_kills_on_execs_from_user_space() -> None:
    """The exec result follows batched records (the exec's entry, at least), so the ring's own
    policy does not wake a waiting reader: it reads at its next poll. With eager wakeup for execs
    (a kill or freeze rule on them, or on a kind that never wakes the reader: opens) it does; a
    kill rule on connects alone leaves execs batched."""
    import select

    from monitor.sandbox import cgroup as cg
    from monitor.sensor import Sensor

    sensor = Sensor()
    box = cg.create("eager")
    ready = select.epoll()
    unwoken = sensor.bpf["unwoken"]

    def woken_by_an_exec(eager_kinds: set[str]) -> bool:
        sensor.set_eager_wakeup(eager_kinds)
        sensor.drain()
        # the per-CPU count of batched records that forces a wakeup every 256: start it at 0
        unwoken[unwoken.Key(0)] = unwoken.Leaf(*([0] * len(unwoken.Leaf())))
        subprocess.run(["/bin/true"], preexec_fn=cg.joiner(box), check=True)
        woken = bool(ready.poll(1.0))
        assert any(e.kind == "exec" for e in sensor.drain()), "the exec was not captured at all"
        return woken

    try:
        sensor.add_cgroup(box.cgroup_id)
        ready.register(sensor.fileno(), select.EPOLLIN)
        assert not woken_by_an_exec(set())
        assert not woken_by_an_exec({"connect"})
        assert sensor.stats()["eager_kinds"] == ["connect"]
        assert woken_by_an_exec({"exec"})
        assert woken_by_an_exec({"open"})  # opens never wake: every kind that can, does
        assert "exec" in sensor.stats()["eager_kinds"]
    finally:
        ready.close()
        sensor.close()
        cg.remove(box)
