"""Correlation rules (threshold, sequence): counting and ordering per scope, windows on event time,
bounded state, bad input, and replay finding what a live run's single-event rules missed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from monitor.engine.pipeline import Pipeline
from monitor.engine.replay import ReplayOptions, replay_journal
from monitor.event import Event
from monitor.policy import PolicyError, load_rules
from monitor.policy.correlation import Threshold, scope_getter
from monitor.sinks.journal import JournalSink

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_replay import RULES_A, SB, SB2, T0, session_events  # noqa: E402

S = 10**9
RULES = """
- rule: Burst of discovery
  when: [exec]
  condition: event.process.executable.matches("/(id|whoami|uname|hostname)$")
  threshold: {count: 3, within: 10s, by: parent, distinct: event.process.executable}
- rule: Many writes
  when: [open]
  condition: event.file.write == true
  threshold: {count: 3, within: 1m}
- rule: Download chmod run
  sequence:
    within: 60
    steps:
      - {when: [open], condition: 'event.file.write == true', key: event.file.path}
      - {when: [chmod], condition: 'true', key: event.file.path}
      - {when: [exec], condition: 'true', key: event.process.executable}
"""


@pytest.fixture()
def rules(tmp_path: Path):
    path = tmp_path / "correlation.yaml"
    path.write_text(RULES)
    return load_rules([path])


def exe(seconds: float, path: str, ppid: int = 5, sandbox: dict | None = None) -> Event:
    return Event("exec", int(seconds * S), process={"pid": 100, "ppid": ppid, "executable": path, "args": [path]},
                 sandbox=sandbox or {"id": "s1"})


def write(seconds: float, path: str, sandbox: dict | None = None) -> Event:
    return Event("open", int(seconds * S), process={"pid": 9, "ppid": 5, "executable": "/usr/bin/curl"},
                 sandbox=sandbox or {"id": "s1"}, file={"path": path, "write": True})


def chmod(seconds: float, path: str) -> Event:
    return Event("chmod", int(seconds * S), process={"pid": 10, "ppid": 5, "executable": "/usr/bin/chmod"},
                 sandbox={"id": "s1"}, file={"path": path, "mode": 0o755})


def fired(rules, events: list[Event], rule: str) -> list[int]:
    """Indexes of the events the rule alerted on."""
    return [i for i, event in enumerate(events) if any(a.rule == rule for a in rules.evaluate(event))]


def test_threshold_counts_distinct_values_per_scope_within_the_window(rules) -> None:
    events = [exe(1, "/bin/id"), exe(2, "/bin/id"), exe(3, "/bin/whoami"), exe(4, "/bin/uname"),
              exe(5, "/bin/id", ppid=6), exe(6, "/bin/whoami", ppid=6), exe(20, "/bin/uname", ppid=6),
              exe(21, "/bin/hostname"), exe(22, "/bin/id"), exe(23, "/bin/uname")]
    # 3 distinct under ppid 5 at t=4; ppid 6's third comes after its window; ppid 5 starts again
    assert fired(rules, events, "Burst of discovery") == [3, 9]


def test_threshold_by_sandbox_keeps_sandboxes_apart(rules) -> None:
    a, b = {"id": "a"}, {"id": "b"}
    events = [write(1, "/w/1", a), write(2, "/w/2", b), write(3, "/w/3", a), write(4, "/w/4", b),
              write(5, "/w/5", a), write(100, "/w/6", b)]
    assert fired(rules, events, "Many writes") == [4]


def test_sequence_needs_the_order_the_key_and_the_window(rules) -> None:
    rule = "Download chmod run"
    assert fired(rules, [write(1, "/w/x"), chmod(2, "/w/x"), exe(3, "/w/x")], rule) == [2]
    assert fired(rules, [chmod(1, "/w/y"), write(2, "/w/y"), exe(3, "/w/y")], rule) == []    # order
    assert fired(rules, [write(1, "/w/z"), chmod(2, "/w/z"), exe(3, "/w/other")], rule) == []  # key
    assert fired(rules, [write(1, "/w/v"), chmod(2, "/w/v"), exe(90, "/w/v")], rule) == []   # window


def test_one_event_never_completes_two_steps(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("- rule: Twice\n  sequence:\n    within: 10\n    steps:\n"
                    "      - {when: [exec], condition: 'true'}\n      - {when: [exec], condition: 'true'}\n")
    rules = load_rules([path])
    assert fired(rules, [exe(1, "/bin/a"), exe(2, "/bin/b")], "Twice") == [1]


def test_state_is_bounded_and_evictions_are_counted() -> None:
    threshold = Threshold(count=2, within_ns=60 * S, scope=scope_getter("process"), max_keys=2)
    for pid in range(5):
        assert threshold.observe(S, {"sandbox": {"id": "s"}, "process": {"pid": pid}}) is False
    assert len(threshold.state) == 2 and threshold.evicted == 3
    assert threshold.observe(2 * S, {"sandbox": {"id": "s"}, "process": {"pid": 4}}) is True


@pytest.mark.parametrize(("entry", "message"), [
    ("  when: [exec]\n  condition: 'true'\n  threshold: {count: 1, within: 5}", "'threshold.count' must be an integer >= 2"),
    ("  when: [exec]\n  condition: 'true'\n  threshold: {count: 2, within: soon}", "'threshold.within' must be a positive duration"),
    ("  when: [exec]\n  condition: 'true'\n  threshold: {count: 2, within: 5, by: tree}", "'threshold.by' must be one of"),
    ("  condition: 'true'\n  sequence: {within: 5, steps: [{condition: 'true'}, {condition: 'true'}]}",
     "a sequence rule has its conditions in its steps"),
    ("  sequence: {within: 5, steps: [{condition: 'true'}]}", "at least 2"),
    ("  sequence: {within: 5, steps: [{condition: 'true', key: event.file.path}, {condition: 'true'}]}",
     "give every step a key, or none"),
    ("  when: [exec]\n  condition: 'true'\n  action: deny\n  threshold: {count: 2, within: 5}", "cannot deny"),
])
def test_bad_correlation_rules_are_one_line_with_file_and_line(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"- rule: Bad\n{entry}\n")
    with pytest.raises(PolicyError) as error:
        load_rules([path])
    assert message in str(error.value) and str(error.value).startswith(f"{path}:")


REPEATED_READS = """
- rule: Passwd read twice
  when: [open]
  condition: event.file.path == "/etc/passwd"
  threshold: {count: 2, within: 1s, by: process}
- rule: Curl then passwd
  sequence:
    within: 1s
    steps:
      - {when: [exec], condition: 'event.process.executable.endsWith("/curl")'}
      - {when: [open], condition: 'event.file.path == "/etc/passwd"'}
"""


def test_replay_with_new_correlation_rules_finds_what_the_live_run_missed(tmp_path: Path) -> None:
    rules_a = tmp_path / "rules-a.yaml"
    rules_a.write_text(RULES_A)
    directory = tmp_path / "journal"
    live = load_rules([rules_a], audit=True)
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    pipeline = Pipeline(None, live, None, [sink])
    pipeline.process_all(session_events(SB, T0))
    pipeline.process_all(session_events(SB2, T0 + 10**9))
    pipeline.close(pipeline.summary())
    correlation = tmp_path / "correlation.yaml"
    correlation.write_text(REPEATED_READS)
    result = replay_journal(ReplayOptions(str(directory), rules=[str(correlation)]))
    diff = {d.rule: d for d in result.diff()}
    # each session: cat opens /etc/passwd twice (one alert), curl runs before it (one alert)
    assert diff["Passwd read twice"].status == "new" and diff["Passwd read twice"].replayed == 2
    assert diff["Curl then passwd"].status == "new" and diff["Curl then passwd"].replayed == 2
    # the same journal judged live by the same rules gives the same alerts
    again = load_rules([correlation])
    live_alerts = [a.rule for e in session_events(SB, T0) + session_events(SB2, T0 + 10**9) for a in again.evaluate(e)]
    assert sorted(live_alerts) == sorted(a.rule for a in result.alerts)


SIGMA_CORRELATIONS = Path(__file__).resolve().parent / "fixtures" / "sigma_correlation.yml"


def test_sigma_correlations_map_onto_threshold_and_sequence() -> None:
    rules = load_rules([SIGMA_CORRELATIONS])
    # the correlated base rules are not rules of their own (Sigma's `generate: false`)
    assert [r.name for r in rules.rules] == ["Many discovery commands", "Download then shell"]
    assert len(rules.warnings) == 1 and "correlation type temporal has no counterpart" in rules.warnings[0]
    discovery = [exe(1, "/bin/id", ppid=7), exe(2, "/bin/id", ppid=7), exe(3, "/bin/whoami", ppid=8),
                 exe(4, "/bin/whoami", ppid=7), exe(5, "/bin/uname", ppid=7)]
    assert fired(rules, discovery, "Many discovery commands") == [4]  # value_count >= 3 per ppid
    chain = [exe(10, "/bin/sh"), exe(11, "/usr/bin/curl"), exe(12, "/usr/bin/true"), exe(13, "/bin/sh"),
             exe(100, "/usr/bin/curl"), exe(200, "/bin/sh")]
    assert fired(rules, chain, "Download then shell") == [3]  # temporal_ordered within 30 s
