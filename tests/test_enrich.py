"""The process table's logic on hand-made events (pids that do not exist, so /proc has nothing:
the real-kernel path is tests/e2e/test_capture.py)."""

from __future__ import annotations

from monitor.enrich import Enricher
from monitor.event import Event
from monitor.sandbox import SandboxRegistry

PARENT, CHILD = 3_999_001, 3_999_002  # above any pid this machine hands out


def raw(pid: int, comm: str) -> dict[str, object]:
    return {"pid": pid, "tid": pid, "uid": 0, "gid": 0, "comm": comm}


def test_an_exec_and_the_events_after_it_share_one_process_dict() -> None:
    enricher = Enricher(SandboxRegistry())
    fork = Event(kind="fork", process=raw(PARENT, "workload"), detail={"child_pid": CHILD})
    enricher.enrich(fork)
    exec_process = {**raw(CHILD, "workload"), "executable": "/bin/true", "args": ["true"]}
    exec_event = Event(kind="exec", process=exec_process, result=0, hints={"exited": True})
    opened = Event(kind="open", process=raw(CHILD, "true"), file={"path": "/etc/ld.so.cache"})
    exited = Event(kind="exit", process=raw(CHILD, "true"))
    for event in (exec_event, opened, exited):
        enricher.enrich(event)
    assert exec_event.process["executable"] == "/bin/true" and exec_event.process["comm"] == "true"
    assert exec_event.process["ancestors"][0]["pid"] == PARENT
    # one dict for the three: the journal stores the process once
    assert opened.process is exec_event.process and exited.process is exec_event.process


def test_a_thread_that_renamed_itself_gets_its_own_comm() -> None:
    enricher = Enricher(SandboxRegistry())
    first = Event(kind="open", process=raw(CHILD, "agent"), file={"path": "/a"})
    renamed = Event(kind="open", process=raw(CHILD, "kworker/0:1"), file={"path": "/b"})
    again = Event(kind="open", process=raw(CHILD, "agent"), file={"path": "/c"})
    for event in (first, renamed, again):
        enricher.enrich(event)
    assert renamed.process["comm"] == "kworker/0:1" and renamed.process is not first.process
    assert again.process["comm"] == first.process["comm"]
