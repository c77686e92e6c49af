"""The judging loop's logic: one wait for every source (sources here are pipes, not probes: the
kernel side of the same wait is tested in tests/e2e/test_capture.py)."""

from __future__ import annotations

import os
import select
from pathlib import Path
from typing import Any

from monitor.engine.loop import Loop, one_wait
from monitor.engine.pipeline import Pipeline
from monitor.event import Event
from monitor.source import Source


class PipeSource(Source):
    """A source whose records are bytes written to a pipe; it waits like a real one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.read_end, self.write_end = os.pipe()
        self.timeouts: list[int] = []

    def fileno(self) -> int:
        return self.read_end

    def poll(self, timeout_ms: int) -> list[Event]:
        self.timeouts.append(timeout_ms)
        if not select.select([self.read_end], [], [], timeout_ms / 1000)[0]:
            return []
        return [Event(kind="open", time_ns=n, file={"path": self.name}) for n in os.read(self.read_end, 64)]

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class NoDescriptor(Source):
    name = "plain"

    def poll(self, timeout_ms: int) -> list[Event]:
        return []


def test_a_record_of_a_later_source_does_not_wait_behind_an_idle_earlier_one() -> None:
    quiet, busy = PipeSource("quiet"), PipeSource("busy")
    pipeline = Pipeline(None, None, None, [])
    session = Loop(pipeline, [quiet, busy])
    try:
        os.write(busy.write_end, b"\x01\x02")
        # without the shared wait, `quiet` would be polled first with the whole timeout
        assert session.pump(5_000) == 2
        assert quiet.timeouts == [0] and busy.timeouts == [0]
        assert pipeline.events_by_kind["open"] == 2
        assert session.pump(1) == 0  # nothing left: the shared wait times out
    finally:
        session.close()
        quiet.close()
        busy.close()


def test_one_wait_only_when_every_source_has_a_descriptor() -> None:
    single, other = PipeSource("single"), PipeSource("other")
    try:
        assert one_wait([single]) is None  # one source waits on its own
        assert one_wait([single, NoDescriptor()]) is None  # it could miss the other's records
        ready = one_wait([single, other])
        assert ready is not None
        ready.close()
    finally:
        single.close()
        other.close()


RULE = """\
- rule: Test rule
  description: for the wakeup decision
  when: [{when}]
  condition: event.process.executable == "/bin/nc"
  severity: high
  action: {action}
  mode: {mode}
  tags: [T1059]
"""


def test_the_reader_is_woken_eagerly_only_for_rules_that_act_from_user_space(tmp_path: Path) -> None:
    from monitor.engine.loop import eager_kinds
    from monitor.policy import load_rules

    def policy(action: str, mode: str = "enforce", audit: bool = False, when: str = "exec") -> Any:
        path = tmp_path / f"{action}-{mode}-{when.replace(', ', '-')}.yaml"
        path.write_text(RULE.format(action=action, mode=mode, when=when))
        return load_rules([str(path)], audit=audit)

    assert eager_kinds(policy("kill")) == eager_kinds(policy("freeze")) == {"exec"}
    assert eager_kinds(policy("kill_process", when="exec, connect")) == {"exec", "connect"}
    assert eager_kinds(policy("alert")) == set()
    assert eager_kinds(policy("deny")) == set()  # in the kernel, before the exec
    assert eager_kinds(policy("kill", mode="audit")) == set()
    assert eager_kinds(policy("kill", audit=True)) == set()
    assert eager_kinds(None) == set()


def test_batched_records_wait_5_ms_while_a_rule_enforces_from_user_space_else_50(tmp_path: Path) -> None:
    from monitor.engine.loop import ALERT_POLL_MS, POLL_MS, poll_ms
    from monitor.policy import load_rules

    def policy(action: str, mode: str = "enforce", audit: bool = False) -> Any:
        path = tmp_path / f"{action}-{mode}-{audit}.yaml"
        path.write_text(RULE.format(action=action, mode=mode, when="exec"))
        return load_rules([str(path)], audit=audit)

    assert (POLL_MS, ALERT_POLL_MS) == (5, 50)
    for action in ("kill", "kill_process", "freeze", "deny"):  # deny: its user-space fallback
        assert poll_ms(policy(action)) == POLL_MS, action
    assert poll_ms(policy("alert")) == poll_ms(None) == ALERT_POLL_MS
    assert poll_ms(policy("kill", mode="audit")) == poll_ms(policy("deny", audit=True)) == ALERT_POLL_MS


def in_thread(work: Any) -> Any:
    """work() on a fresh thread (CPU affinity is per thread), its result or its exception."""
    import threading

    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = work()
        except Exception as exc:
            out["error"] = exc
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_judging_cpu_auto_is_the_highest_allowed_off_is_none_and_a_bad_number_one_line() -> None:
    import pytest

    from monitor.engine.loop import LoopError as RunError
    from monitor.engine.loop import judging_cpu

    allowed = os.sched_getaffinity(0)
    assert judging_cpu("off") is None
    assert judging_cpu("auto") == (max(allowed) if len(allowed) > 1 else None)
    assert judging_cpu(str(min(allowed))) == min(allowed)
    for bad in (str(max(allowed) + 1), "-1", "fast", ""):
        with pytest.raises(RunError, match="not auto, off or one of this process's CPUs") as info:
            judging_cpu(bad)
        assert "\n" not in str(info.value)

    def on_one_cpu() -> int | None:
        os.sched_setaffinity(0, {min(allowed)})
        return judging_cpu("auto")
    assert in_thread(on_one_cpu) is None  # nothing to choose between


def test_pinned_to_holds_the_thread_on_one_cpu_and_gives_it_back() -> None:
    from monitor.engine.loop import pinned_to

    allowed = os.sched_getaffinity(0)

    def pinned_then_released() -> tuple[set[int], set[int]]:
        with pinned_to(max(allowed)):
            inside = os.sched_getaffinity(0)
        return inside, os.sched_getaffinity(0)
    assert in_thread(pinned_then_released) == ({max(allowed)}, allowed)

    def released_on_error() -> set[int]:
        try:
            with pinned_to(min(allowed)):
                raise ValueError("a failing loop")
        except ValueError:
            return os.sched_getaffinity(0)
    assert in_thread(released_on_error) == allowed
    with pinned_to(None):
        assert os.sched_getaffinity(0) == allowed

    def cpu_not_ours() -> set[int]:
        with pinned_to(max(allowed) + 4096):  # as if it went offline since it was chosen
            return os.sched_getaffinity(0)
    assert in_thread(cpu_not_ours) == allowed  # the loop runs on, unpinned
