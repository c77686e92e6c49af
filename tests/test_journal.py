"""Journal: framing, roundtrip, torn and corrupted segments, retention, permissions, flushing."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

from monitor.event import ActionRecord, Alert, Event
from monitor.journal import (
    FILE_MAGIC,
    FRAME_BLOCK,
    FRAME_HEADER,
    FRAME_MAGIC,
    JournalError,
    JournalReader,
    frame,
)
from monitor.sinks.journal import JournalSink

NOW = time.time_ns()
SANDBOX = {"id": "sb-1", "name": "agent", "runtime": "cgroup", "labels": {"team": "x"}, "cgroup_id": 77,
           "cgroup_path": "/sys/fs/cgroup/monitor/sb-1"}
OTHER = {"id": "sb-2", "name": "other", "runtime": "docker", "labels": {}, "cgroup_id": 78,
         "cgroup_path": "/sys/fs/cgroup/docker/abc", "image": "busybox"}
PROC = {"pid": 10, "tid": 10, "ppid": 1, "uid": 0, "gid": 0, "comm": "bash", "executable": "/usr/bin/bash",
        "args": ["bash", "-c", "cat /etc/passwd"], "cwd": "/", "ancestors": [{"pid": 1, "executable": "/init",
                                                                               "args": ["init"]}]}


def make_events(n: int, start: int = NOW, sandbox: dict | None = SANDBOX) -> list[Event]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(Event("open", start + i * 1000, process=PROC, sandbox=sandbox,
                             file={"path": f"/etc/f{i}", "flags": ["O_RDONLY"], "write": False}, result=3))
        elif i % 3 == 1:
            out.append(Event("connect", start + i * 1000, process=PROC, sandbox=sandbox,
                             net={"family": "inet", "transport": "tcp", "address": "127.0.0.1", "port": 80 + i,
                                  "direction": "egress"}, result=0))
        else:
            out.append(Event("exec", start + i * 1000, process={**PROC, "pid": 100 + i}, sandbox=sandbox,
                             detail={"args_truncated": False}, result=0))
    return out


def write_journal(directory: Path, events: list[Event], **kwargs) -> JournalSink:
    sink = JournalSink(directory, max_bytes=None, max_age_s=None, **kwargs)
    for ev in events:
        sink.on_event(ev)
    sink.close({"events": len(events)})
    return sink


def read_all(path: Path) -> tuple[list, list[str]]:
    reader = JournalReader(path)
    return list(reader.records()), reader.warnings


def comparable(ev: Event) -> dict:
    return {**ev.to_dict(), "cgroup_id": ev.cgroup_id}


# -- roundtrip ------------------------------------------------------------------------------


def test_every_record_type_roundtrips(tmp_path: Path) -> None:
    events = make_events(30)
    odd = Event("llm_response", NOW + 10**6, process={}, sandbox=None, source="llm", cgroup_id=99,
                llm={"provider": "anthropic", "tool_calls": [{"id": "t1", "name": "bash",
                                                              "arguments": '{"command": "ls"}'}]},
                detail={"bytes": b"\x00\xffraw", "flags": ["A", "B"]}, verdict="denied", result=-1)
    posture = Event("container_start", NOW + 2 * 10**6, sandbox=OTHER, source="docker",
                    container={"privileged": True, "cap_add": ["SYS_ADMIN"], "mounts": [
                        {"source": "/", "destination": "/host", "rw": True}]})
    alert = Alert(rule="Shadow read", severity="high", action="kill", tags=["T1003"], event=events[0],
                  description="d", matched={"file.path": "/etc/f0"}, mode="audit")
    action = ActionRecord(action="kill", rule="Shadow read", target={"sandbox": "sb-1", "pid": 10},
                          outcome="done", latency_ms=1.25, message="killed", alert_id=alert.id)
    sink = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=None)
    for ev in events[:10]:
        sink.on_event(ev)
    sink.on_alert(alert)
    sink.on_action(action)
    for ev in [*events[10:], odd, posture]:
        sink.on_event(ev)
    sink.close({"events": 32, "exit_status": 0})

    records, warnings = read_all(tmp_path / "j")
    assert warnings == []
    assert [r.type for r in records] == ["event"] * 10 + ["alert", "action"] + ["event"] * 22 + ["summary"]
    got_events = [r.value for r in records if r.type == "event"]
    want = [*events, odd, posture]
    assert [comparable(e) for e in got_events] == [comparable(e) for e in want]
    # bytes stay bytes
    assert got_events[30].detail == {"bytes": b"\x00\xffraw", "flags": ["A", "B"]}
    assert got_events[30].cgroup_id == 99
    got_alert = records[10].value
    assert (got_alert.rule, got_alert.severity, got_alert.action, got_alert.mode, got_alert.id) == \
           ("Shadow read", "high", "kill", "audit", alert.id)
    assert got_alert.matched == {"file.path": "/etc/f0"} and got_alert.event.id == events[0].id
    assert records[10].sandbox_id == "sb-1" and records[10].kind == "open"
    assert records[11].value == action
    assert records[-1].value == {"events": 32, "exit_status": 0}


def test_event_dict_roundtrip_is_faithful() -> None:
    for ev in [*make_events(3), Event("exit", NOW, process=PROC, cgroup_id=5, detail={"code": 1, "signal": 9})]:
        back = Event.from_dict(ev.to_dict())
        assert comparable(back) == comparable(ev)


def test_unencodable_values_are_journaled_as_text_not_raised(tmp_path: Path) -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd-object"

    ev = Event("open", NOW, process=PROC, sandbox=SANDBOX,
               file={"path": "/x", "inode": 1 << 70, "tags": {"b"}, "obj": Odd(), "pair": (1, 2)})
    sink = write_journal(tmp_path / "j", [ev])
    assert sink.stats().get("errors", 0) == 0
    records, _ = read_all(tmp_path / "j")
    assert records[0].value.file == {"path": "/x", "inode": str(1 << 70), "tags": ["b"], "obj": "odd-object",
                                 "pair": [1, 2]}  # tuples come back as lists (the JSON/CEL form)


def test_a_lone_surrogate_is_journaled_exactly_and_loses_nothing_around_it(tmp_path: Path) -> None:
    """JSON allows "\\ud800", so a model's text can carry a lone surrogate; strict UTF-8 failed
    the whole block (every record in it lost, counted)."""
    llm = {"tool_calls": [{"name": "bash", "arguments_json": "x \ud800 y"}]}
    events = [Event("llm_response", NOW, source="llm", llm=llm), *make_events(3, NOW + 1)]
    sink = write_journal(tmp_path / "j", events)
    assert sink.stats().get("errors", 0) == 0 and sink.stats().get("records_lost", 0) == 0
    records, _ = read_all(tmp_path / "j")
    events_back = [r.value for r in records if isinstance(r.value, Event)]
    assert [e.kind for e in events_back] == ["llm_response", "open", "connect", "exec"]
    assert events_back[0].llm == llm


def test_compact_on_disk(tmp_path: Path) -> None:
    events = make_events(20_000)
    write_journal(tmp_path / "j", events)
    size = sum(p.stat().st_size for p in (tmp_path / "j").iterdir())
    assert size / len(events) <= 40, size / len(events)


# -- framing --------------------------------------------------------------------------------


def test_frame_layout_and_crc() -> None:
    payload = b"hello"
    data = frame(FRAME_BLOCK, payload)
    magic, ftype, codec, _res, length, crc = FRAME_HEADER.unpack_from(data)
    assert (magic, ftype, codec, length) == (FRAME_MAGIC, FRAME_BLOCK, 0, 5)
    assert crc == zlib.crc32(payload, zlib.crc32(data[4:12]))
    assert data[FRAME_HEADER.size:] == payload


def frame_offsets(segment: Path) -> list[int]:
    data = segment.read_bytes()
    assert data.startswith(FILE_MAGIC)
    pos, out = len(FILE_MAGIC), []
    while pos < len(data):
        out.append(pos)
        pos += FRAME_HEADER.size + struct.unpack_from("<I", data, pos + 8)[0]
    return out


def small_journal(tmp_path: Path, blocks: int = 4, per_block: int = 5) -> tuple[Path, list[Event]]:
    events = make_events(blocks * per_block)
    sink = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=None, block_records=per_block)
    for ev in events:
        sink.on_event(ev)  # a block is written every per_block events
    sink.close()  # no summary: the last frame is the last block of events
    return tmp_path / "j", events


def test_torn_last_frame_at_every_offset(tmp_path: Path) -> None:
    directory, events = small_journal(tmp_path)
    segment = next(directory.glob("*.seg"))
    (directory / segment.name.replace(".seg", ".idx")).unlink()
    original = segment.read_bytes()
    last = frame_offsets(segment)[-1]
    kept_ids = [e.id for e in events[:15]]
    for cut in range(last, len(original)):
        segment.write_bytes(original[:cut])
        records, warnings = read_all(directory)
        assert [r.value.id for r in records] == kept_ids, cut
        if cut == last:
            assert warnings == []  # a clean frame boundary: nothing torn
        else:
            assert len(warnings) == 1 and "torn last frame" in warnings[0] and f":{last}:" in warnings[0], cut


def test_torn_segment_header(tmp_path: Path) -> None:
    directory, _ = small_journal(tmp_path)
    segment = next(directory.glob("*.seg"))
    segment.write_bytes(segment.read_bytes()[:5])
    records, warnings = read_all(directory)
    assert records == [] and "torn segment header" in warnings[0]


@pytest.mark.parametrize("where", ["payload", "length"])
def test_corrupt_middle_frame_is_skipped_and_reading_resumes(tmp_path: Path, where: str) -> None:
    directory, events = small_journal(tmp_path)
    segment = next(directory.glob("*.seg"))
    offsets = frame_offsets(segment)  # [meta, block0, block1, block2, block3]
    data = bytearray(segment.read_bytes())
    damaged = offsets[2]
    pos = damaged + FRAME_HEADER.size + 3 if where == "payload" else damaged + 9
    data[pos] ^= 0x5A
    segment.write_bytes(bytes(data))
    records, warnings = read_all(directory)
    assert [r.value.id for r in records] == [e.id for e in events[:5] + events[10:]]
    assert len(warnings) == 1 and f":{damaged}: corrupt frame" in warnings[0] and "resumed at" in warnings[0]


def test_garbage_and_missing_journal(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "00000001.seg").write_bytes(b"not a journal at all")
    records, warnings = read_all(tmp_path / "j")
    assert records == [] and "not a journal segment" in warnings[0]
    with pytest.raises(JournalError):
        JournalReader(tmp_path / "absent")


# -- filters and index ----------------------------------------------------------------------


def test_filters_by_sandbox_time_and_kind(tmp_path: Path) -> None:
    a = make_events(30, start=NOW)
    b = make_events(30, start=NOW + 10**9, sandbox=OTHER)
    write_journal(tmp_path / "j", a + b)
    reader = JournalReader(tmp_path / "j")
    assert [e.id for e in reader.events(sandbox="sb-2")] == [e.id for e in b]
    assert [e.id for e in reader.events(since_ns=NOW + 10**9)] == [e.id for e in b]
    assert [e.id for e in reader.events(until_ns=NOW + 5000)] == [e.id for e in a[:6]]
    skipped = __import__("collections").Counter()
    got = list(reader.events(kinds={"exec"}, skipped=skipped))
    assert all(e.kind == "exec" for e in got) and len(got) == 20
    assert skipped == {"open": 20, "connect": 20}


def test_index_written_at_close_and_rebuilt_after_a_crash(tmp_path: Path) -> None:
    a = make_events(30, start=NOW)
    write_journal(tmp_path / "j", a)
    write_journal(tmp_path / "j", make_events(9, start=NOW + 10**9, sandbox=OTHER))
    idx_files = sorted((tmp_path / "j").glob("*.idx"))
    assert len(idx_files) == 2
    idx_files[1].unlink()  # as if the second monitor had died: scanned instead
    reader = JournalReader(tmp_path / "j")
    infos = reader.index()
    assert [i.complete for i in infos] == [True, False]
    assert infos[0].events == 30 and infos[0].first_ns == NOW and infos[0].last_ns == NOW + 29_000
    sandboxes = reader.sandboxes()
    assert sandboxes["sb-1"]["events"] == 30 and sandboxes["sb-2"]["events"] == 9
    assert sandboxes["sb-2"]["name"] == "other"
    # an index that no longer matches its segment (appended to, truncated) is ignored
    seg = sorted((tmp_path / "j").glob("*.seg"))[0]
    with open(seg, "ab") as f:
        f.write(b"xx")
    assert JournalReader(tmp_path / "j").index()[0].complete is False


# -- retention ------------------------------------------------------------------------------


def test_size_cap_drops_oldest_segments_and_counts_them(tmp_path: Path) -> None:
    cap = 300_000
    sink = JournalSink(tmp_path / "j", max_bytes=cap, max_age_s=None, block_records=256,
                       segment_bytes=64 << 10)
    events = []
    for i in range(200):  # incompressible-ish paths so that segments fill
        batch = [Event("open", NOW + (i * 500 + k) * 1000, process=PROC, sandbox=SANDBOX,
                       file={"path": os.urandom(24).hex()}) for k in range(500)]
        for ev in batch:
            sink.on_event(ev)
        events += batch
    sink.close()
    stats = sink.stats()
    total = sum(p.stat().st_size for p in (tmp_path / "j").glob("*.seg"))
    assert stats["dropped_segments"] > 0 and stats["dropped_bytes"] > 0
    assert stats["dropped_records"] > 0
    assert total <= cap + (16 << 10), total  # give or take one block
    # what is left is the newest: a contiguous tail of what was written
    ids = [e.id for e in JournalReader(tmp_path / "j").events()]
    assert ids == [e.id for e in events[-len(ids):]]
    assert len(ids) + stats["dropped_events"] == len(events)
    seqs = sorted(int(p.stem) for p in (tmp_path / "j").glob("*.seg"))
    assert seqs[0] > 1 and seqs == list(range(seqs[0], seqs[-1] + 1))


def test_age_cap_drops_old_segments_at_open(tmp_path: Path) -> None:
    day = 86400 * 10**9
    write_journal(tmp_path / "j", make_events(10, start=NOW - 10 * day))
    write_journal(tmp_path / "j", make_events(10, start=NOW - 1 * day))
    sink = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=7 * 86400)
    sink.close()
    assert sink.stats()["dropped_segments"] == 1 and sink.stats()["dropped_events"] == 10
    assert sorted(p.name for p in (tmp_path / "j").glob("*.seg")) == ["00000002.seg", "00000003.seg"]
    assert not (tmp_path / "j" / "00000001.idx").exists()


def test_retention_skips_a_segment_another_writer_holds(tmp_path: Path) -> None:
    write_journal(tmp_path / "j", make_events(10, start=NOW - 30 * 86400 * 10**9))
    seg = tmp_path / "j" / "00000001.seg"
    fd = os.open(seg, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        sink = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=86400)
        sink.close()
        assert seg.exists() and sink.stats().get("dropped_segments", 0) == 0
    finally:
        os.close(fd)


# -- permissions ----------------------------------------------------------------------------


def test_directory_0700_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_journal(tmp_path / "deep" / "j", make_events(5))
    finally:
        os.umask(old)
    directory = tmp_path / "deep" / "j"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert {p.suffix for p in files} == {".seg", ".idx"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_existing_open_directory_is_tightened_only_when_it_is_ours(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    os.chmod(ours, 0o755)
    write_journal(ours, make_events(2))
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    (shared / "notes.txt").write_text("someone else's")
    sink = write_journal(shared, make_events(2))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert "not 0700" in sink.stats()["last_error"]


# -- flushing -------------------------------------------------------------------------------


def test_records_reach_the_file_within_the_flush_interval(tmp_path: Path) -> None:
    sink = JournalSink(tmp_path / "j", flush_interval_s=0.1, max_bytes=None, max_age_s=None)
    try:
        events = make_events(7)
        for ev in events:
            sink.on_event(ev)
        deadline = time.monotonic() + 5
        got: list = []
        while time.monotonic() < deadline and len(got) < 7:
            time.sleep(0.05)
            got = list(JournalReader(tmp_path / "j").events())
        assert [e.id for e in got] == [e.id for e in events]
    finally:
        sink.close()


def test_fsync_mode_and_write_errors_never_raise(tmp_path: Path) -> None:
    sink = JournalSink(tmp_path / "j", fsync=True, max_bytes=None, max_age_s=None)
    sink.on_event(make_events(1)[0])
    sink.flush()
    os.close(sink._fd)  # the disk goes away under the sink
    sink._fd = os.open(os.devnull, os.O_RDONLY)
    sink.on_event(make_events(1)[0])
    sink.flush()  # must not raise
    assert sink.stats()["errors"] >= 1 and sink.stats()["records_lost"] == 1
    sink.close()


def test_two_writers_share_a_directory(tmp_path: Path) -> None:
    a = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=None)
    b = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=None)
    ea, eb = make_events(10), make_events(10, sandbox=OTHER)
    for x, y in zip(ea, eb, strict=True):
        a.on_event(x)
        b.on_event(y)
    a.close()
    b.close()
    reader = JournalReader(tmp_path / "j")
    assert len(reader.segments) == 2
    assert sorted(e.id for e in reader.events()) == sorted(e.id for e in ea + eb)


def test_huge_records_split_blocks_and_an_oversized_one_is_counted(tmp_path: Path) -> None:
    big = os.urandom(3 << 20).hex()  # 6 MiB of incompressible text each
    events = [Event("llm_response", NOW + i, process=PROC, sandbox=SANDBOX, llm={"text": big}) for i in range(4)]
    sink = write_journal(tmp_path / "j", events)
    assert sink.stats()["blocks"] >= 4 and sink.stats().get("records_lost", 0) == 0
    got = list(JournalReader(tmp_path / "j").events())
    assert [e.id for e in got] == [e.id for e in events] and got[3].llm["text"] == big
    monster = Event("llm_response", NOW, process=PROC, sandbox=SANDBOX, llm={"text": os.urandom(70 << 20)})
    sink = write_journal(tmp_path / "k", [monster, events[0]])
    assert sink.stats()["records_too_large"] == 1
    assert [e.id for e in JournalReader(tmp_path / "k").events()] == [events[0].id]


def test_records_after_close_are_counted_not_written(tmp_path: Path) -> None:
    sink = write_journal(tmp_path / "j", make_events(3))
    sink.close({"again": True})  # a second close is harmless
    for ev in make_events(5000):
        sink.on_event(ev)
    sink.flush()
    assert sink.stats()["records_after_close"] == 5000
    assert len(list((tmp_path / "j").glob("*.seg"))) == 1
    assert len(list(JournalReader(tmp_path / "j").events())) == 3


def test_the_judging_thread_never_waits_for_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal runs inline on the judging thread: a full block is written there only when
    the lock is free, and a roll's fsync happens on a thread of its own (close() waits for it)."""
    sink = JournalSink(tmp_path / "j", block_records=10, segment_bytes=64 << 10, max_bytes=None)
    events = make_events(25)
    held, done = threading.Event(), threading.Event()

    def flush_thread_writing() -> None:
        with sink._lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=flush_thread_writing)
    holder.start()
    assert held.wait(5)
    started = time.monotonic()
    for ev in events[:20]:
        sink.on_event(ev)
    assert time.monotonic() - started < 1.0, "on_event waited for the lock"
    assert len(sink._pending) == 20, "nothing was written while another held the lock"
    done.set()
    holder.join()
    sink.on_event(events[20])
    assert not sink._pending and sink.stats()["records"] == 21, "the next event wrote what waited"
    for ev in events[21:]:
        sink.on_event(ev)
    sink.flush()
    assert sink.stats()["records"] == 25

    fsyncing = threading.Event()
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        fsyncing.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    started = time.monotonic()
    with sink._lock:
        sink._roll()  # as a full segment does inside a block write
    assert time.monotonic() - started < 1.0, "the roll waited for its fsync"
    assert fsyncing.wait(5)
    for ev in make_events(30, start=NOW + 10**9):
        sink.on_event(ev)  # the new segment takes them while the old one is still being sealed
    assert sink.stats()["records"] == 55 and sink.stats()["segments"] == 2
    release.set()
    sink.close()
    indexes = JournalReader(tmp_path / "j").index()
    assert len(indexes) == 2 and all(i.complete for i in indexes)
    assert len(list(JournalReader(tmp_path / "j").events())) == 55


def test_a_process_map_freed_while_its_block_fills_is_not_taken_for_a_later_one(tmp_path: Path) -> None:
    """Rows are made as events arrive and maps are interned by identity: a map that dies before its
    block is written must not lend its id() (and its entry) to a new map at the same address."""
    sink = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=None)
    for i in range(300):
        sink.on_event(Event("exec", NOW + i, process={"pid": 1000 + i}, sandbox={"id": f"sb-{i % 7}"}))
    sink.close()
    got = list(JournalReader(tmp_path / "j").events())
    assert [e.process["pid"] for e in got] == [1000 + i for i in range(300)]
    assert [e.sandbox["id"] for e in got] == [f"sb-{i % 7}" for i in range(300)]


def test_a_split_block_keeps_alerts_actions_and_order(tmp_path: Path) -> None:
    big = os.urandom(1 << 20).hex()  # 2 MiB each: 8 records are over a block's raw limit
    sink = JournalSink(tmp_path / "j", max_bytes=None, max_age_s=None)
    events = [Event("llm_response", NOW + i, process=PROC, sandbox=SANDBOX if i % 2 else OTHER,
                    llm={"text": big}) for i in range(8)]
    for ev in events:
        sink.on_event(ev)
        sink.on_alert(Alert(rule="r", severity="high", action="alert", tags=[], event=ev, time_ns=ev.time_ns))
    sink.on_action(ActionRecord(action="kill", rule="r", target={"sandbox": "sb-1"}, outcome="done",
                                  latency_ms=1.0))
    sink.close({"done": True})
    assert sink.stats()["blocks"] >= 2 and not sink.stats().get("records_lost")
    got = [(r.type, r.time_ns) for r in JournalReader(tmp_path / "j").records()]
    assert got[:16] == [(t, ev.time_ns) for ev in events for t in ("event", "alert")]
    assert [t for t, _ in got[16:]] == ["action", "summary"]
    index = JournalReader(tmp_path / "j").index()[0]
    assert (index.events, index.alerts, index.records) == (8, 8, 18)
    assert index.sandboxes["sb-1"]["events"] == 4 and index.sandboxes["sb-2"]["events"] == 4
