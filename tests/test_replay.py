"""Replay (real rule engine, audit mode), the rule diff, OTLP re-export, the CLI, and the timeline."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from monitor.commands import main
from monitor.commands.replay import _LazyProgress
from monitor.engine.pipeline import Pipeline
from monitor.engine.replay import ReplayOptions, UsageError, otlp_sink, parse_time, replay_journal
from monitor.event import Event
from monitor.policy import load_rules
from monitor.sinks import Sink
from monitor.sinks.journal import JournalSink
from monitor.timeline import build_timeline, render_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from otlp_receiver import OtlpReceiver  # noqa: E402

T0 = 1_763_900_000_000_000_000
SB = {"id": "sb-aa", "name": "agent-a", "runtime": "cgroup", "labels": {}, "cgroup_id": 5,
      "cgroup_path": "/sys/fs/cgroup/monitor/sb-aa"}
SB2 = {"id": "sb-bb", "name": "agent-b", "runtime": "cgroup", "labels": {}, "cgroup_id": 6,
       "cgroup_path": "/sys/fs/cgroup/monitor/sb-bb"}

RULES_A = """
- rule: Passwd read
  description: reads /etc/passwd
  when: [open]
  condition: event.file.path == "/etc/passwd"
  severity: medium
  tags: [discovery]
- rule: Curl run
  description: runs curl
  when: [exec]
  condition: event.process.executable.endsWith("/curl")
  severity: high
  action: kill
"""
RULE_HOSTS = """
- rule: Hosts read
  description: reads /etc/hosts
  when: [open]
  condition: event.file.path == "/etc/hosts"
  severity: low
"""


def proc(pid: int, ppid: int, exe: str, args: list[str], **extra: object) -> dict:
    return {"pid": pid, "tid": pid, "ppid": ppid, "uid": 1000, "gid": 1000, "comm": exe.rsplit("/", 1)[1],
            "executable": exe, "args": args, "cwd": "/w", "ancestors": [{"pid": ppid, "executable": "?",
                                                                         "args": []}], **extra}


def session_events(sandbox: dict = SB, t0: int = T0) -> list[Event]:
    """bash (pid 100) forks 101 which execs curl (asked by the model), and 102 which runs cat."""
    bash = proc(100, 1, "/usr/bin/bash", ["bash", "-c", "agent"])
    bash["ancestors"] = [{"pid": 1, "executable": "/usr/local/bin/monitor", "args": ["monitor", "run"]}]
    llm = Event("llm_response", t0 + 5, process=bash, sandbox=sandbox, source="llm",
                llm={"provider": "anthropic", "model": "m", "tool_calls": [
                    {"id": "tc1", "name": "bash", "arguments": json.dumps({"command": "curl http://127.0.0.1:9"})}]})
    curl = proc(101, 100, "/usr/bin/curl", ["curl", "http://127.0.0.1:9"], caused_by=llm.id)
    cat = proc(102, 100, "/usr/bin/cat", ["cat", "/etc/passwd"])
    t = t0
    evs = [Event("sandbox_start", t, process=bash, sandbox=sandbox, source="monitor"),
           Event("exec", t + 1, process=bash, sandbox=sandbox, result=0),
           Event("open", t + 2, process=bash, sandbox=sandbox, file={"path": "/etc/hosts", "write": False}),
           llm,
           Event("fork", t + 6, process=bash, sandbox=sandbox, detail={"child_pid": 101}),
           Event("exec", t + 7, process=curl, sandbox=sandbox, result=0),
           Event("dns", t + 8, process=curl, sandbox=sandbox, net={"query": "example.test", "transport": "udp"}),
           Event("connect", t + 9, process=curl, sandbox=sandbox,
                 net={"family": "inet", "transport": "tcp", "address": "127.0.0.1", "port": 9,
                      "direction": "egress"}, result=-111),
           Event("exit", t + 10, process=curl, sandbox=sandbox, detail={"code": 7, "signal": 0}),
           Event("exec", t + 11, process=cat, sandbox=sandbox, result=0),
           Event("open", t + 12, process=cat, sandbox=sandbox, file={"path": "/etc/passwd", "write": False}),
           Event("open", t + 13, process=cat, sandbox=sandbox, file={"path": "/etc/passwd", "write": False}),
           Event("open", t + 14, process=cat, sandbox=sandbox, file={"path": "/w/out.txt", "write": True}),
           Event("exit", t + 15, process=cat, sandbox=sandbox, detail={"code": 0, "signal": 0}),
           Event("sandbox_end", t + 20, process=bash, sandbox=sandbox, source="monitor",
                 detail={"code": 0, "signal": 0})]
    return evs


@pytest.fixture()
def rules_a(tmp_path: Path) -> Path:
    path = tmp_path / "rules-a.yaml"
    path.write_text(RULES_A)
    return path


@pytest.fixture()
def journal(tmp_path: Path, rules_a: Path) -> Path:
    """Two sessions journaled through the real pipeline and rule engine (no actor: nothing acts)."""
    directory = tmp_path / "journal"
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    pipeline = Pipeline(None, load_rules([rules_a], audit=True), None, [sink])
    pipeline.process_all(session_events(SB, T0))
    pipeline.process_all(session_events(SB2, T0 + 10**9))
    pipeline.close(pipeline.summary())
    return directory


class Recorder(Sink):
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.closed: dict | None = None

    def on_event(self, event: Event) -> None:
        self.seen.append(("event", event.kind))

    def on_alert(self, alert) -> None:  # noqa: ANN001
        self.seen.append(("alert", alert.rule))

    def close(self, summary: dict) -> None:
        self.closed = summary


# -- replay ---------------------------------------------------------------------------------


def test_same_rules_reproduce_the_recorded_alerts(journal: Path, rules_a: Path) -> None:
    result = replay_journal(ReplayOptions(str(journal), rules=[str(rules_a)]))
    assert result.recorded_by_rule == {"Passwd read": 4, "Curl run": 2}
    assert result.replayed_by_rule == result.recorded_by_rule
    assert result.replayed_pairs == result.recorded_pairs and len(result.recorded_pairs) == 6
    assert [d.status for d in result.diff()] == ["same", "same"]
    assert result.events_seen == 30 and result.sessions == 2
    # replay never acts: the kill is reported as what would have been done
    assert all(a.mode == "audit" for a in result.alerts)
    assert result.would_act == {"Curl run -> kill": 2}


def test_new_rule_is_found_and_removed_rule_reported_gone(journal: Path, tmp_path: Path) -> None:
    rules_b = tmp_path / "rules-b.yaml"
    rules_b.write_text(RULES_A.split("- rule: Curl run")[0] + RULE_HOSTS)
    result = replay_journal(ReplayOptions(str(journal), rules=[str(rules_b)]))
    diff = {d.rule: d for d in result.diff()}
    assert diff["Hosts read"].status == "new" and diff["Hosts read"].replayed == 2
    assert diff["Hosts read"].sentence() == "new rule Hosts read would have fired 2 times"
    assert diff["Curl run"].status == "gone" and diff["Curl run"].recorded == 2
    assert diff["Curl run"].sentence() == "rule Curl run no longer fires (fired 2 times in the recording)"
    assert diff["Passwd read"].status == "same"
    assert len(diff["Curl run"].gone_events) == 2


def test_changed_rule_counts_new_and_lost_events(journal: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed.yaml"
    changed.write_text(RULES_A.replace('event.file.path == "/etc/passwd"',
                                       'event.file.path in ["/etc/hosts"]'))
    diff = {d.rule: d for d in replay_journal(ReplayOptions(str(journal), rules=[str(changed)])).diff()}
    d = diff["Passwd read"]
    assert (d.status, d.recorded, d.replayed, len(d.new_events), len(d.gone_events)) == ("changed", 4, 2, 2, 4)
    assert "2 new, 4 no longer" in d.sentence()


def test_filters_by_sandbox_and_time(journal: Path, rules_a: Path) -> None:
    only_b = replay_journal(ReplayOptions(str(journal), rules=[str(rules_a)], sandbox="sb-bb"))
    assert only_b.events_seen == 15 and only_b.replayed_by_rule == {"Passwd read": 2, "Curl run": 1}
    assert only_b.recorded_by_rule == only_b.replayed_by_rule
    early = replay_journal(ReplayOptions(str(journal), rules=[str(rules_a)], until_ns=T0 + 7))
    assert early.events_seen == 6 and early.replayed_by_rule == {"Curl run": 1}


def test_reexport_sinks_get_every_event_in_order_and_the_alerts(journal: Path, rules_a: Path) -> None:
    recorder = Recorder()
    replay_journal(ReplayOptions(str(journal), rules=[str(rules_a)], sinks=[recorder]))
    kinds = [k for t, k in recorder.seen if t == "event"]
    assert kinds == [e.kind for e in session_events()] * 2
    assert recorder.seen[0] == ("event", "sandbox_start")
    assert ("alert", "Curl run") in recorder.seen and recorder.closed["alerts"] == 6


def test_otlp_reexport_reaches_a_real_receiver(journal: Path, rules_a: Path) -> None:
    with OtlpReceiver() as receiver:
        sink = otlp_sink(receiver.http_url)
        replay_journal(ReplayOptions(str(journal), rules=[str(rules_a)], sinks=[sink]))
        assert receiver.store.wait_for(lambda s: len({sp.trace_id for sp in s.spans()}) >= 2, timeout=20)
        spans = receiver.store.spans()
    roots = [sp for sp in spans if not sp.parent_span_id]
    assert sorted(sp.name for sp in roots) == ["sandbox agent-a", "sandbox agent-b"]
    assert min(sp.start_ns for sp in roots) == T0  # the recorded times, not the replay's


def test_cli_otlp_flag_exports_the_sessions(journal: Path, rules_a: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with OtlpReceiver() as receiver:
        assert main(["replay", str(journal), "--rules", str(rules_a), "--otlp", receiver.http_url,
                     "--sandbox", "sb-bb", "--json", "-"]) == 0
        assert receiver.store.wait_for(lambda s: any(not sp.parent_span_id for sp in s.spans()), timeout=20)
        roots = [sp for sp in receiver.store.spans() if not sp.parent_span_id]
    assert [sp.name for sp in roots] == ["sandbox agent-b"]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["events"] == 15


def test_otlp_bad_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        otlp_sink("ftp://127.0.0.1:1")


def test_parse_time() -> None:
    assert parse_time("2025-11-23T12:00:00Z") == 1_763_899_200 * 10**9
    assert parse_time("2025-11-23T12:00:00.123456789Z") == 1_763_899_200_123_456_789
    assert parse_time("2025-11-23T13:00:00+01:00") == 1_763_899_200 * 10**9
    assert parse_time("1763899200.5") == 1_763_899_200_500_000_000
    assert parse_time(str(T0)) == T0
    assert parse_time("10m", now_ns=T0) == T0 - 600 * 10**9
    with pytest.raises(UsageError):
        parse_time("yesterday-ish")


def test_progress_bar_shows_only_on_long_replays_on_a_terminal() -> None:
    buf = io.StringIO()
    bar = _LazyProgress(1000, Console(file=buf, force_terminal=True, width=80), after_s=0.0)
    bar.advance(500)
    bar.stop()
    assert "replaying" in buf.getvalue()
    quiet = io.StringIO()
    bar = _LazyProgress(1000, Console(file=quiet, force_terminal=False), after_s=0.0)
    bar.advance(500)
    bar.stop()
    assert quiet.getvalue() == ""


# -- CLI ------------------------------------------------------------------------------------


def test_cli_replay_json_to_stdout(journal: Path, rules_a: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(RULE_HOSTS)
    code = main(["replay", str(journal), "--rules", str(rules_a), "--rules", str(hosts), "--json", "-"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["type"] for x in lines].count("alert") == 8
    diff = next(x for x in lines if x["type"] == "diff")
    assert {d["rule"]: d["status"] for d in diff["rules"]} == {"Curl run": "same", "Hosts read": "new",
                                                               "Passwd read": "same"}
    assert lines[-1]["type"] == "summary" and lines[-1]["events"] == 30


def test_cli_replay_human_report(journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(RULE_HOSTS)
    assert main(["replay", str(journal), "--rules", str(hosts), "--since", str(T0)]) == 0
    out = capsys.readouterr().out
    assert "new rule Hosts read would have fired 2 times" in out
    assert "rule Curl run no longer fires (fired 2 times in the recording)" in out
    assert "Hosts read" in out.splitlines()[0]


@pytest.mark.parametrize("argv, message", [
    (["replay", "{tmp}/nope"], "no such journal"),
    (["replay", "{journal}", "--rules", "{tmp}/bad.yaml"], "bad.yaml:3: rule 'Broken'"),
    (["replay", "{journal}", "--since", "soon"], "cannot read time"),
    (["replay", "{journal}", "--json", "{tmp}/no/such/dir/out.json"], "cannot write"),
    (["timeline", "{tmp}/nope"], "no such journal"),
    (["timeline", "{tmp}", "--sandbox", "sb-aa"], "not a journal (no *.seg segments)"),
    (["timeline", "{journal}", "--sandbox", "sb-zz"], "sandboxes there: sb-aa (agent-a), sb-bb (agent-b)"),
    (["replay", "{journal}", "--sandbox", "sb-zz"], "--sandbox sb-zz: not in"),
])
def test_cli_bad_input_is_one_line_and_exit_1(journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               argv: list[str], message: str) -> None:
    (tmp_path / "bad.yaml").write_text("- rule: Broken\n  when: [open]\n  condition: event.file.path ==\n"
                                       "  severity: low\n")
    code = main([a.format(tmp=tmp_path, journal=journal) for a in argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- timeline -------------------------------------------------------------------------------


def test_timeline_tree(journal: Path) -> None:
    sessions = build_timeline(str(journal), sandbox="sb-aa")
    assert len(sessions) == 1
    session = sessions[0]
    assert session.alerts == 3 and session.exit == {"code": 0, "signal": 0}
    [root] = session.roots
    assert root.pid == 1 and root.placeholder  # known only as bash's parent (from ancestors)
    [bash] = root.children
    assert (bash.pid, bash.executable) == (100, "/usr/bin/bash")
    assert list(bash.files) == ["/etc/hosts"]
    curl, cat = bash.children
    assert (curl.pid, curl.executable, curl.exit) == (101, "/usr/bin/curl", {"code": 7, "signal": 0})
    assert curl.previous == ["/usr/bin/bash"]  # forked from bash, then exec'd curl
    assert curl.alerts == ["Curl run"]
    assert curl.model_asked == "run curl http://127.0.0.1:9"
    assert sorted(curl.connections) == ["connect tcp 127.0.0.1:9", "dns example.test"]
    assert curl.connections["connect tcp 127.0.0.1:9"]["result"] == -111
    assert cat.files["/etc/passwd"]["count"] == 2 and cat.files["/etc/passwd"]["alerts"] == ["Passwd read"]
    assert cat.files["/w/out.txt"]["write"] is True and cat.alerts == []

    console = Console(record=True, width=200, color_system="truecolor")
    console.print(render_session(session))
    text = console.export_text(clear=False)
    lines = text.splitlines()
    asked = next(i for i, line in enumerate(lines) if "model asked: run curl http://127.0.0.1:9" in line)
    assert "curl http://127.0.0.1:9" in lines[asked + 1] and "pid 101" in lines[asked + 1]
    assert "⚠ Curl run" in lines[asked + 1]
    assert any("/etc/passwd ×2" in line and "⚠ Passwd read" in line for line in lines)
    assert any("net connect tcp 127.0.0.1:9" in line for line in lines)
    assert any("model answered anthropic/m → run curl http://127.0.0.1:9" in line for line in lines)
    assert bash.llm[0]["asked"] == "run curl http://127.0.0.1:9"
    html = console.export_html()
    assert "color: #800000" in html or "color: #ff0000" in html  # alerts are red


def test_timeline_json_cli(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["timeline", str(journal), "--json"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["sandbox"]["id"] for d in docs] == ["sb-aa", "sb-bb"]
    bash = docs[1]["processes"][0]["children"][0]
    assert [c["executable"] for c in bash["children"]] == ["/usr/bin/curl", "/usr/bin/cat"]
    assert bash["children"][0]["model_asked"].startswith("run curl")


def test_timeline_terminal_cli(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["timeline", str(journal), "--sandbox", "sb-bb"]) == 0
    out = capsys.readouterr().out
    assert "sandbox agent-b" in out and "agent-a" not in out and "cat /etc/passwd" in out


def test_replay_speed_sanity(tmp_path: Path, rules_a: Path) -> None:
    """Not a benchmark (tests/bench/journal.py is): events no rule looks at are not even decoded."""
    directory = tmp_path / "big"
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    p = proc(7, 1, "/usr/bin/true", ["true"])
    for i in range(20_000):
        sink.on_event(Event("connect", T0 + i, process=p, sandbox=SB, net={"address": "127.0.0.1", "port": i}))
    sink.close()
    start = time.perf_counter()
    result = replay_journal(ReplayOptions(str(directory), rules=[str(rules_a)]))
    assert result.events_seen == 20_000 and result.events_evaluated == 0
    assert time.perf_counter() - start < 5


def test_timeline_keeps_what_matters_when_a_process_reads_a_lot(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    p = proc(9, 1, "/usr/bin/python3", ["python3", "agent.py"])
    events = [Event("exec", T0, process=p, sandbox=SB)]
    events += [Event("open", T0 + i, process=p, sandbox=SB, file={"path": f"/usr/lib/m{i}.py", "write": False})
               for i in range(1, 31)]
    events += [Event("open", T0 + 40, process=p, sandbox=SB, file={"path": "/w/late.txt", "write": True}),
               Event("connect", T0 + 41, process=p, sandbox=SB,
                     net={"transport": "tcp", "address": "127.0.0.1", "port": 443})]
    for ev in events:
        sink.on_event(ev)
    sink.close()
    [session] = build_timeline(str(directory))
    console = Console(record=True, width=200)
    console.print(render_session(session))
    text = console.export_text()
    assert text.count("file read /usr/lib/m") == 20
    assert "… 10 more files read" in text
    assert "file write /w/late.txt" in text and "net connect tcp 127.0.0.1:443" in text
    assert len(session.roots[0].children[0].files) == 31  # --json keeps them all


def test_timeline_terminal_budget_keeps_alerts(journal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.timeline as timeline
    monkeypatch.setattr(timeline, "MAX_ITEMS_PER_SESSION", 2)
    [session] = build_timeline(str(journal), sandbox="sb-aa")
    console = Console(record=True, width=200)
    console.print(render_session(session))
    text = console.export_text()
    assert "files/connections not shown past the first 2" in text
    assert "/etc/passwd ×2" in text and "⚠ Passwd read" in text  # alerted: shown whatever the budget
    assert "/w/out.txt" not in text
