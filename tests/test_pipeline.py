"""The pipeline's hand-over to threaded sinks: judged events gather, alerts go at once, nothing is
left behind at close, and order is kept."""

from __future__ import annotations

import threading
import time
from typing import Any

from monitor.engine.pipeline import SINK_HOLD_S, Pipeline
from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink


class Recording(Sink):
    name = "recording"
    reports_summary = False
    may_block = True  # as a terminal: on the sink thread

    def __init__(self) -> None:
        self.events: list[str] = []
        self.alerts: list[str] = []
        self.seen = threading.Event()

    def on_event(self, event: Event) -> None:
        self.events.append(event.id)
        self.seen.set()

    def on_alert(self, alert: Alert) -> None:
        self.alerts.append(alert.rule)

    def on_action(self, record: ActionRecord) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self, summary: dict[str, Any]) -> None:
        pass


class AlertOnExec:
    def evaluate(self, event: Event) -> list[Alert]:
        if event.kind != "exec":
            return []
        return [Alert(rule="exec seen", severity="low", action="alert", tags=[], event=event)]


def test_plain_events_wait_then_go_together_and_alerts_go_at_once() -> None:
    sink = Recording()
    pipeline = Pipeline(None, AlertOnExec(), None, [sink], threaded_sinks=True)
    opens = [Event(kind="open") for _ in range(3)]
    pipeline.process_all(opens)
    assert not sink.seen.wait(SINK_HOLD_S / 5), "three plain events were handed over one batch at a time"
    time.sleep(SINK_HOLD_S)
    pipeline.flush_due()
    assert sink.seen.wait(5)
    before_exec, exec_event = Event(kind="open"), Event(kind="exec")
    pipeline.process_all([before_exec, exec_event])
    deadline = time.monotonic() + 5
    while "exec seen" not in sink.alerts and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sink.alerts == ["exec seen"], "an alert reaches the sinks without waiting for the hold"
    last = Event(kind="open")
    pipeline.process_all([last])
    pipeline.close({})
    assert sink.events == [e.id for e in opens] + [before_exec.id, exec_event.id, last.id]


def test_inline_sinks_see_each_batch_before_process_all_returns() -> None:
    sink = Recording()
    pipeline = Pipeline(None, None, None, [sink])
    event = Event(kind="open")
    pipeline.process_all([event])
    assert sink.events == [event.id]


class Store(Recording):
    may_block = False  # as the journal: inline


def test_only_sinks_that_may_block_get_the_thread() -> None:
    terminal, store = Recording(), Store()
    pipeline = Pipeline(None, AlertOnExec(), None, [terminal, store], threaded_sinks=True)
    events = [Event(kind="open"), Event(kind="exec")]
    pipeline.process_all(events)
    assert store.events == [e.id for e in events], "an inline sink has the batch when process_all returns"
    assert store.alerts == ["exec seen"]
    assert terminal.seen.wait(5), "the alert took the terminal's batch over at once"
    pipeline.close({})
    assert terminal.events == store.events
    assert not any(t.name == "sinks" for t in threading.enumerate())

    no_thread = Pipeline(None, None, None, [Store()], threaded_sinks=True)
    assert no_thread._worker is None, "no sink may block: no thread, no hand-over"
    no_thread.close({})


def test_a_json_file_runs_inline_and_a_pipe_on_the_thread(tmp_path: Any) -> None:
    import os

    from monitor.sinks.jsonl import JsonlSink

    to_file = JsonlSink(str(tmp_path / "out.jsonl"))
    assert not to_file.may_block
    to_file.close({})
    os.mkfifo(tmp_path / "fifo")
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        to_pipe = JsonlSink(str(tmp_path / "fifo"))
        assert to_pipe.may_block
        to_pipe.close({})
    finally:
        os.close(reader)


class Observer(Store):
    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[str, float]] = []

    def record_rule_eval(self, kind: str, seconds: float) -> None:
        self.samples.append((kind, seconds))


def test_counts_eval_time_and_samples_per_batch_and_per_event() -> None:
    observer = Observer()
    pipeline = Pipeline(None, AlertOnExec(), None, [observer])
    pipeline.process_all(Event(kind=kind) for kind in ["open"] * 12 + ["exec"] * 3)  # any iterable
    pipeline.process(Event(kind="exit"))
    assert pipeline.events_by_kind == {"open": 12, "exec": 3, "exit": 1}
    assert set(pipeline.eval_seconds) == {"open", "exec", "exit"}
    assert all(seconds > 0 for seconds in pipeline.eval_seconds.values())
    assert [kind for kind, _ in observer.samples] == ["open", "exit"]  # the 8th and the 16th event
    assert pipeline.alerts_by_rule == {"exec seen": 3}
    assert len(observer.events) == 16
