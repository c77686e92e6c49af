"""Actions for real: kill, kill_process, freeze/thaw, in-kernel exec and connect deny, audit,
and never outside a sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from docker_engine import wait_for  # noqa: E402
from monitor_run import MONITOR, RunResult, fork_execl, monitor_run, needs_root, read_jsonl  # noqa: E402

from monitor.sandbox import cgroup as cg  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]


def rule_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


def rule(name: str, when: str, condition: str, action: str) -> str:
    return (f"- rule: {name}\n  description: test rule\n  when: [{when}]\n"
            f"  condition: {condition}\n  severity: high\n  action: {action}\n  tags: [T0000]\n")


def test_kill_ends_the_sandbox_with_137(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    after = tmp_path / "after"
    rules = rule_file(tmp_path, rule("Kill on secret", "open", f'event.file.path == "{secret}"', "kill"))
    # the sleep only bounds a failing run: the kill ends the sandbox, whenever it lands
    r = monitor_run(f"cat {secret} >/dev/null; sleep 60; touch {after}", "--rules", rules, timeout=120)
    assert r.returncode == 137
    assert not after.exists(), "the sandbox died before its next step"
    assert r.summary["killed_by"] == "Kill on secret"
    ebpf = r.summary["sources"]["ebpf"]
    assert ebpf["wakeup"] == "eager" and "exec" in ebpf["eager_kinds"]  # a kill rule on opens
    assert r.summary["monitor"]["poll_ms"] == 5  # batched records are read within 5 ms
    action = r.actions[0]
    assert action["action"] == "kill" and action["outcome"] == "done" and action["latency_ms"] > 0  # timings: tests/bench


def test_kill_process_kills_only_that_process(tmp_path: Path) -> None:
    rules = rule_file(tmp_path, rule("Kill sleepers", "exec", 'event.process.executable == "/usr/bin/sleep"',
                                     "kill_process"))
    r = monitor_run("sleep 30; echo survived-$?", "--rules", rules, timeout=60)
    assert r.returncode == 0
    assert "survived-137" in r.stdout
    assert r.actions[0]["outcome"] == "done"


def denied_script(tmp_path: Path) -> tuple[Path, Path, str]:
    """(a script that touches a marker if it runs, the marker, rules denying its directory)."""
    marker = tmp_path / "marker"
    script = tmp_path / "bin" / "evil.sh"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    rules = rule_file(tmp_path, rule("Deny evil", "exec",
                                     f'event.process.executable.startsWith("{script.parent}/")', "deny"))
    return script, marker, rules


def test_exec_deny_runs_no_instruction(tmp_path: Path) -> None:
    script, marker, rules = denied_script(tmp_path)
    r = monitor_run([str(script)], "--rules", rules)
    assert not marker.exists(), "a denied program ran an instruction"
    assert r.returncode == 137
    denied = [e for e in r.events("exec") if e.get("verdict") == "denied"]
    assert denied and denied[0]["process"]["executable"] == str(script)
    assert r.actions[0]["message"] == "denied in kernel"


def test_exec_deny_holds_when_the_path_is_not_in_user_memory(tmp_path: Path) -> None:
    """The deny is checked again on the kernel's own copy of the path (sched_process_exec)."""
    script, marker, rules = denied_script(tmp_path)
    r = monitor_run([fork_execl(tmp_path, str(script), "evil.sh")], "--rules", rules)
    assert not marker.exists(), "a denied program ran an instruction"
    denied = [e for e in r.events("exec") if e.get("verdict") == "denied"]
    assert denied and denied[0]["process"]["executable"] == str(script)
    assert denied[0]["detail"]["args_unreadable"] is True


def test_connect_deny_fails_with_eperm_and_is_reported(tmp_path: Path) -> None:
    rules = rule_file(tmp_path, rule("Deny 127.0.0.2", "connect", 'event.net.address in ["127.0.0.2"]', "deny"))
    code = ("import socket,errno\nfor _ in range(5):\n    s=socket.socket()\n    try:\n"
            "        s.connect(('127.0.0.2', 9))\n    except OSError as e:\n        print('errno', e.errno)\n")
    r = monitor_run(["/usr/bin/python3", "-c", code], "--rules", rules)
    assert r.stdout.splitlines() == ["errno 1"] * 5  # EPERM from the cgroup connect program
    denied = [e for e in r.events("connect") if e["net"].get("address") == "127.0.0.2"]
    assert len(denied) == 5, "a refused connect is never folded into an earlier one"
    assert all(e["verdict"] == "denied" and e["result"] == -1 for e in denied)
    assert r.actions[0]["outcome"] == "done"
    assert r.summary["monitor"]["poll_ms"] == 5  # a deny's fallback acts from user space


def test_audit_mode_enforces_nothing(tmp_path: Path) -> None:
    after = tmp_path / "after"
    rules = rule_file(tmp_path, rule("Kill on true", "exec", 'event.process.executable == "/bin/true"', "kill"))
    r = monitor_run(f"/bin/true; touch {after}", "--rules", rules, "--audit")
    assert r.returncode == 0 and after.exists()
    assert r.actions[0]["outcome"] == "audit" and r.actions[0]["message"] == "would kill"
    assert r.summary["sources"]["ebpf"]["wakeup"] == "batched"  # nothing to act on in a hurry
    assert r.summary["monitor"]["poll_ms"] == 50  # so the reader wakes 20 times a second, not 200


def test_process_already_gone_is_recorded_not_an_error(tmp_path: Path) -> None:
    rules = rule_file(tmp_path, rule("Kill exited", "exit", 'event.process.executable == "/bin/true"',
                                     "kill_process"))
    r = monitor_run("/bin/true", "--rules", rules)
    assert r.returncode == 0
    assert r.actions[0]["outcome"] == "already_gone"


def test_freeze_quarantines_then_thaw_and_kill(tmp_path: Path) -> None:
    """Frozen at the exec of `id`, the script cannot take its next step even once it is allowed
    to (the go file): the freezer holds every task; `monitor sandbox list` shows it FROZEN."""
    after, go = tmp_path / "after", tmp_path / "go"
    rules = rule_file(tmp_path, rule("Freeze on id", "exec", 'event.process.executable == "/usr/bin/id"', "freeze"))
    out = tmp_path / "out.jsonl"
    script = f"id >/dev/null; until [ -e {go} ]; do sleep 0.01; done; touch {after}"
    proc = subprocess.Popen([MONITOR, "run", "-q", "--json", str(out), "--rules", rules, "--name", "e2e-frozen",
                             "--", "bash", "-c", script], stderr=subprocess.PIPE, text=True)
    sandbox_id = _wait_frozen(proc.pid)
    listing = subprocess.run([MONITOR, "sandbox", "list"], capture_output=True, text=True,
                             env={**os.environ, "COLUMNS": "400"})
    assert listing.returncode == 0, listing.stderr
    (row,) = [line.split("│") for line in listing.stdout.splitlines() if sandbox_id in line]
    assert [cell.strip() for cell in row[1:5]] == [sandbox_id, "e2e-frozen", "cgroup", "FROZEN"], listing.stdout
    go.touch()
    state = next(s for s in cg.read_states() if s["id"] == sandbox_id)
    assert cg.frozen(str(state["cgroup_path"])), "still frozen after go: no task of it has run since"
    assert not after.exists() and proc.poll() is None, "frozen: nothing runs, monitor run waits"
    thaw = subprocess.run([MONITOR, "sandbox", "thaw", sandbox_id], capture_output=True, text=True)
    assert thaw.returncode == 0 and thaw.stdout == f"sandbox {sandbox_id} thawed\n"
    assert proc.wait(60) == 0
    assert after.exists()
    assert "FROZEN" in proc.stderr.read()
    records = read_jsonl(out)
    assert [r["outcome"] for r in records if r["type"] == "action"] == ["done"]
    again = subprocess.run([MONITOR, "sandbox", "thaw", sandbox_id], capture_output=True, text=True)
    assert again.returncode == 1 and "no such sandbox" in again.stderr  # its run ended: it is gone

    proc = subprocess.Popen([MONITOR, "run", "-q", "--rules", rules, "--", "bash", "-c", "id; sleep 30"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sandbox_id = _wait_frozen(proc.pid)
    kill = subprocess.run([MONITOR, "sandbox", "kill", sandbox_id], capture_output=True, text=True)
    assert kill.returncode == 0 and kill.stdout == f"sandbox {sandbox_id} killed\n"
    assert proc.wait(60) == 137


def _wait_frozen(owner_pid: int, timeout: float = 30) -> str:
    """The sandbox of that `monitor run` once frozen (other quarantined sandboxes stay as they are)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in cg.read_states():
            if state.get("owner_pid") == owner_pid and cg.frozen(str(state["cgroup_path"])):
                return str(state["id"])
        time.sleep(0.05)
    raise AssertionError("no sandbox froze")


def test_never_acts_outside_the_sandbox(tmp_path: Path) -> None:
    """A rule that matches what the monitor itself and a host process do at the same time: the
    host process starts once the sandbox runs (probes attached), reads before the sandbox does,
    and is still alive when the sandbox has been killed."""
    rules = rule_file(tmp_path, rule("Kill any reader of hostname", "open",
                                     'event.file.path == "/etc/hostname"', "kill"))
    ready, host_read = tmp_path / "ready", tmp_path / "host-read"
    sandbox_script = (f"touch {ready}; until [ -e {host_read} ]; do sleep 0.01; done; "
                      "cat /etc/hostname >/dev/null; sleep 60")
    result: dict[str, RunResult] = {}
    run = threading.Thread(target=lambda: result.update(r=monitor_run(sandbox_script, "--rules", rules,
                                                                      timeout=120)))
    run.start()
    wait_for(ready.exists, 60, "the sandbox to start")
    host = subprocess.Popen(["bash", "-c", f"cat /etc/hostname >/dev/null; touch {host_read}; "
                                           "while :; do cat /etc/hostname >/dev/null; sleep 0.02; done"])
    try:
        run.join()
        r = result["r"]
        assert r.returncode == 137
        assert host.poll() is None, "the host process was not touched"
    finally:
        host.kill()
        host.wait()
    assert host_read.exists()
    assert {a["target"]["sandbox"] for a in r.actions} == {r.summary["sandbox"]["id"]}


def test_sandbox_commands_are_idempotent_with_clear_messages() -> None:
    missing = subprocess.run([MONITOR, "sandbox", "kill", "sb-doesnotexist"], capture_output=True, text=True)
    assert missing.returncode == 1 and "no such sandbox" in missing.stderr
    listing = subprocess.run([MONITOR, "sandbox", "list"], capture_output=True, text=True)
    assert listing.returncode == 0  # its rows: test_freeze_quarantines_then_thaw_and_kill


NET_PROBE = """
import socket
def udp(family, address):
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", (address, 9))
        return 0
    except OSError as e:
        return e.errno
listener = socket.socket(socket.AF_INET6)
listener.bind(("::", 0))
listener.listen(4)
port = listener.getsockname()[1]
print("udp4-denied", udp(socket.AF_INET, "198.51.100.7"))
print("udp4-allowed", udp(socket.AF_INET, "127.0.0.1"))
print("udp6-denied", udp(socket.AF_INET6, "2001:db8::7"))
print("udp6-allowed", udp(socket.AF_INET6, "::1"))
print("tcp6-allowed", socket.socket(socket.AF_INET6).connect_ex(("::1", port)))
print("tcp6-denied", socket.socket(socket.AF_INET6).connect_ex(("2001:db8::7", port)))
"""


def test_udp_sends_and_ipv6_connects_are_denied_in_the_kernel(tmp_path: Path) -> None:
    """In a network namespace of its own with only loopback up (the documentation addresses are
    put on lo: no packet leaves): UDP sends (sendmsg) and IPv6 connects to a denied address fail
    with EPERM, others go through; the IPv6 connects are captured with their verdicts.
    A refused UDP send leaves no event of its own (only its EPERM): the sendmsg hook has no
    syscall record to mark; it must not mark the thread's next connect either."""
    rules = rule_file(tmp_path, rule("Deny a v4 documentation address", "connect",
                                     'event.net.address in ["198.51.100.7"]', "deny")
                      + rule("Deny a v6 documentation address", "connect",
                             'event.net.address in ["2001:db8::7"]', "deny"))
    probe = tmp_path / "probe.py"
    probe.write_text(NET_PROBE)
    r = monitor_run(f"unshare -n bash -c 'ip link set lo up && ip addr add 198.51.100.7/32 dev lo && "
                    f"ip -6 addr add 2001:db8::7/128 dev lo && /usr/bin/python3 {probe}'", "--rules", rules)
    assert r.returncode == 0, r.stderr
    assert dict(line.split() for line in r.stdout.splitlines()) == {
        "udp4-denied": "1", "udp4-allowed": "0", "udp6-denied": "1", "udp6-allowed": "0",
        "tcp6-allowed": "0", "tcp6-denied": "1"}
    connects = {e["net"]["address"]: e for e in r.events("connect") if e["net"]["family"] == "inet6"}
    assert set(connects) == {"::1", "2001:db8::7"}
    assert connects["::1"]["result"] == 0 and "verdict" not in connects["::1"]
    assert connects["2001:db8::7"]["result"] == -1 and connects["2001:db8::7"]["verdict"] == "denied"
    assert connects["2001:db8::7"]["net"]["transport"] == "tcp"
    (action,) = r.actions
    assert action["rule"] == "Deny a v6 documentation address" and action["outcome"] == "done"
