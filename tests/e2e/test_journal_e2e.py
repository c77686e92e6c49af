"""A real `monitor run --journal` session, then `monitor replay` and `monitor timeline` on its journal;
and a `monitor run` killed with SIGKILL mid-stream. Real probes, real rule engine, real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor_run import MONITOR, needs_root, read_jsonl  # noqa: E402

from monitor.journal import JournalError, JournalReader  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]

SESSION = "cat /etc/shadow >/dev/null; cat /etc/hosts >/dev/null; ls / >/dev/null; exit 4"
HOSTS_RULE = """
- rule: Hosts file read by cat
  description: new rule written after the incident
  when: [open]
  condition: event.file.path == "/etc/hosts" && event.process.executable.endsWith("/cat")
  severity: low
"""


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MONITOR, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("journal-e2e")
    journal, out = tmp / "journal", tmp / "out.jsonl"
    proc = cli("run", "--journal", str(journal), "--json", str(out), "-q", "--", "bash", "-c", SESSION)
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-3000:])
    return {"tmp": tmp, "journal": journal, "records": read_jsonl(out)}


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_journal_holds_the_whole_session(session: dict[str, Any]) -> None:
    records = session["records"]
    live_events = [r for r in records if r["type"] == "event"]
    reader = JournalReader(session["journal"])
    journaled = list(reader.records())
    assert reader.warnings == []
    assert [r.value.id for r in journaled if r.type == "event"] == [e["id"] for e in live_events]
    # the journal keeps the event exactly as the JSON sink saw it
    by_id = {r.value.id: r.value.to_dict() for r in journaled if r.type == "event"}
    for live in live_events:
        assert by_id[live["id"]] == {k: v for k, v in live.items() if k != "type"}
    assert [r.value.rule for r in journaled if r.type == "alert"] == \
           [a["rule"] for a in records if a["type"] == "alert"]
    summary = [r.value for r in journaled if r.type == "summary"]
    assert len(summary) == 1 and summary[0]["exit_status"] == 4
    journal = session["journal"]
    assert (journal.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in journal.iterdir())


def test_replay_with_the_same_rules_reproduces_the_alerts(session: dict[str, Any]) -> None:
    recorded = [r for r in session["records"] if r["type"] == "alert"]
    assert "Shadow password file read" in {a["rule"] for a in recorded}
    proc = cli("replay", str(session["journal"]), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    lines = jsonl(proc.stdout)
    replayed = [x for x in lines if x["type"] == "alert"]
    assert sorted((a["rule"], a["event"]["id"]) for a in replayed) == \
           sorted((a["rule"], a["event"]["id"]) for a in recorded)
    assert all(a["mode"] == "audit" for a in replayed)
    diff = next(x for x in lines if x["type"] == "diff")["rules"]
    assert diff and all(d["status"] == "same" for d in diff), diff


def test_replay_with_a_new_rule_finds_what_it_matches(session: dict[str, Any]) -> None:
    rule_file = session["tmp"] / "new.yaml"
    rule_file.write_text(HOSTS_RULE)
    proc = cli("replay", str(session["journal"]), "--rules", str(rule_file), "--json", "-")
    assert proc.returncode == 0, proc.stderr
    lines = jsonl(proc.stdout)
    alerts = [x for x in lines if x["type"] == "alert"]
    assert alerts and {a["rule"] for a in alerts} == {"Hosts file read by cat"}
    for alert in alerts:
        assert alert["event"]["file"]["path"] == "/etc/hosts"
        assert alert["event"]["process"]["args"] == ["cat", "/etc/hosts"]
    diff = {d["rule"]: d for d in next(x for x in lines if x["type"] == "diff")["rules"]}
    assert diff["Hosts file read by cat"]["status"] == "new"
    assert diff["Shadow password file read"]["status"] == "gone"
    human = cli("replay", str(session["journal"]), "--rules", str(rule_file))
    assert f"new rule Hosts file read by cat would have fired {_times(len(alerts))}" in human.stdout


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def test_timeline_shows_the_process_tree(session: dict[str, Any]) -> None:
    proc = cli("timeline", str(session["journal"]), "--json")
    assert proc.returncode == 0, proc.stderr
    [doc] = jsonl(proc.stdout)
    bash = _find(doc["processes"], lambda p: p["args"][:2] == ["bash", "-c"])
    children = [c for c in bash["children"]]
    assert [c["args"] for c in children] == [["cat", "/etc/shadow"], ["cat", "/etc/hosts"], ["ls", "/"]]
    shadow_cat, hosts_cat, ls = children
    shadow = next(f for f in shadow_cat["files"] if f["path"] == "/etc/shadow")
    assert "Shadow password file read" in shadow["alerts"]
    assert any(f["path"] == "/etc/hosts" for f in hosts_cat["files"])
    assert not any(f["path"] == "/etc/shadow" for f in hosts_cat["files"] + ls["files"])
    assert all(c["exit"]["code"] == 0 for c in children)
    assert doc["exit"]["code"] == 4
    text = cli("timeline", str(session["journal"])).stdout
    assert "cat /etc/shadow" in text and "⚠ Shadow password file read" in text


def _find(nodes: list[dict[str, Any]], pred) -> dict[str, Any]:  # noqa: ANN001
    for node in nodes:
        if pred(node):
            return node
        with contextlib.suppress(LookupError):
            return _find(node["children"], pred)
    raise LookupError("no such process in the tree")


def _kill_sandbox(journal: Path) -> None:
    """The monitor died without cleaning up: end its sandbox through cgroup.kill (from the journal)."""
    for event in JournalReader(journal).events(kinds={"sandbox_start"}):
        path = Path((event.sandbox or {}).get("cgroup_path", ""))
        if path.is_dir() and (path / "cgroup.kill").exists():
            (path / "cgroup.kill").write_text("1")
            for _ in range(50):
                with contextlib.suppress(OSError):
                    path.rmdir()
                    break
                time.sleep(0.1)


def test_sigkill_mid_stream_keeps_everything_flushed(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    loop = "for i in $(seq 1 400); do cat /etc/hostname >/dev/null; sleep 0.02; done"
    monitor = subprocess.Popen([MONITOR, "run", "--journal", str(journal), "-q", "--", "bash", "-c", loop],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 200:
            time.sleep(0.3)
            with contextlib.suppress(JournalError):  # not created yet
                seen = [e.id for e in JournalReader(journal).events()]
        assert len(seen) >= 200, f"the journal never filled: {monitor.poll()} {len(seen)}"
        monitor.send_signal(signal.SIGKILL)
        monitor.wait(timeout=30)
        assert monitor.returncode == -signal.SIGKILL
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()
        with contextlib.suppress(JournalError):
            _kill_sandbox(journal)
    reader = JournalReader(journal)
    records = list(reader.records())
    events = [r.value for r in records if r.type == "event"]
    # nothing that was on disk before the kill is lost, and what is there reads cleanly
    assert [e.id for e in events[:len(seen)]] == seen
    assert all("torn" in w for w in reader.warnings), reader.warnings
    assert events[0].kind == "sandbox_start"
    kinds = Counter(e.kind for e in events)
    assert kinds["exec"] >= 5 and kinds["open"] >= 20, kinds
    assert not any(r.type == "summary" for r in records)  # it never got to close
    # no .idx for the segment being written: the index is rebuilt by a scan
    [info] = reader.index()
    assert not info.complete and info.events == len(events)
    # and it is a working journal: replay and timeline read it
    replay = cli("replay", str(journal), "--json", "-")
    assert replay.returncode == 0, replay.stderr
    assert jsonl(replay.stdout)[-1]["events"] == len(events)
    assert cli("timeline", str(journal)).returncode == 0
    assert os.stat(journal).st_mode & 0o777 == 0o700


def test_timeline_shows_what_the_model_asked(tmp_path: Path) -> None:
    """A real SDK agent asks a local model API (real TLS, libssl uprobes) and runs the tool call:
    the timeline puts "model asked: run ..." above the process the tool call started."""
    from llm_fake_api import TOOL_COMMAND, FakeApi

    tests = Path(__file__).resolve().parents[1]
    (tmp_path / "api").mkdir()
    server = FakeApi(tmp_path / "api").start()
    try:
        journal = tmp_path / "journal"
        proc = cli("run", "--journal", str(journal), "-q", "--", sys.executable, str(tests / "llm_agent.py"),
                   "--api", "anthropic", "--base-url", server.url, "--ca", str(server.ca_path))
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        server.stop()
    timeline = cli("timeline", str(journal), "--json")
    assert timeline.returncode == 0, timeline.stderr
    [doc] = jsonl(timeline.stdout)
    tool = _find(doc["processes"], lambda p: p["args"] == TOOL_COMMAND.split())
    assert tool["model_asked"] == f"run {TOOL_COMMAND}"
    assert tool["caused_by"]
    text = cli("timeline", str(journal)).stdout.splitlines()
    asked = next(i for i, line in enumerate(text) if f"model asked: run {TOOL_COMMAND}" in line)
    assert TOOL_COMMAND in text[asked + 1] and f"pid {tool['pid']}" in text[asked + 1]
