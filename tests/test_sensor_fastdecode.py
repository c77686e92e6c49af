"""The C decoder of open records (monitor/sensor/_fastdecode.c) against the Python one: for any
batch of records, the same Events in the same order (ids aside: each draws the next one), the
same decode errors, and every record it does not handle left to Python."""

from __future__ import annotations

import dataclasses
import struct
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.event import Event
from monitor.sensor import decode, wire
from monitor.sensor.decode import RecordDecoder
from tests.test_sensor_decode import exec_record, exit_record, record

_FILE = struct.Struct("<iiIIII")
O_WRONLY_CREAT_TRUNC = 0o1101


def open_record(path: bytes, oflags: int = 0, mode: int = 0, repeats: int = 0, dfd: int = -100,
                kind: int = wire.K_OPEN, flags: int = 0, comm: bytes = b"tool", pid: int = 42,
                result: int = 3, cut: bool = True) -> bytes:
    """As probes/file.c sends it: cut after the path's NUL, or the whole path field."""
    body = _FILE.pack(dfd, 0, oflags, mode, repeats, 0)
    field = path + b"\0" if cut else path.ljust(wire.PATH_LEN, b"\0")[: wire.PATH_LEN]
    hdr = struct.pack("<QQIIIIIiII16s", time.monotonic_ns(), 77, kind, pid, pid + 1, 1000, 1001,
                      result, flags, 0, comm)
    return hdr + body + field


def fields(event: Event) -> dict[str, object]:
    values = dataclasses.asdict(event)
    values.pop("id")
    return values


def both(records: list[bytes]) -> tuple[list[Event], list[Event], RecordDecoder, RecordDecoder]:
    native, python = RecordDecoder(123, native=True), RecordDecoder(123, native=False)
    assert native.native is not None, "the C decoder is not built: scripts/setup.sh builds it"
    return native.decode_batch(list(records)), python.decode_batch(list(records)), native, python


def assert_same(records: list[bytes]) -> list[Event]:
    from_c, from_python, native, python = both(records)
    assert [fields(e) for e in from_c] == [fields(e) for e in from_python]
    assert native.errors == python.errors
    ids = [e.id for e in from_c]
    assert len(set(ids)) == len(ids) and all(ids)
    return from_c


def test_the_extension_is_built_and_used_for_opens() -> None:
    assert decode.OpenDecoder is not None, "monitor/sensor/_fastdecode is not built (scripts/setup.sh)"
    (event,) = assert_same([open_record(b"/etc/hosts")])
    assert event.kind == "open" and event.file == {"path": "/etc/hosts", "flags": ["O_RDONLY"], "write": False}
    assert event.process == {"pid": 42, "tid": 43, "uid": 1000, "gid": 1001, "comm": "tool"}
    assert event.cgroup_id == 77 and event.result == 3 and event.source == "ebpf"
    assert event.hints is None and event.detail is None and event.verdict is None


def test_the_ordinary_and_the_odd_open_decode_alike() -> None:
    records = [
        open_record(b"/tmp/out.txt", O_WRONLY_CREAT_TRUNC, mode=0o100644),  # mode kept, type bits cut
        open_record(b"relative/x.c", dfd=5),  # a relative path keeps its dirfd for enrich
        open_record(b"", dfd=7),
        open_record(b"/lib/libc.so.6", 0o2000000, repeats=41),  # folded in the kernel
        open_record(b"/tmp/\xff\xfe-not-utf8", comm=b"\xe9t\xe9"),
        open_record(b"/" + b"a" * 300, cut=False),  # truncated at PATH_LEN, no NUL
        open_record(b"/etc/shadow", flags=wire.F_DENIED),  # out of the ordinary: Python decodes it
        open_record(b"/x", kind=wire.K_OPEN2, comm=b"other-comm-16by"),
        open_record(b"/y", comm=b"other-comm-16by", result=-13),
    ]
    events = assert_same(records)
    assert [e.file["path"][:12] for e in events][:3] == ["/tmp/out.txt", "relative/x.c", ""]
    assert events[0].file["mode"] == 0o644 and events[1].hints == {"dfd": 5}
    assert events[3].detail == {"repeats": 41} and events[6].verdict == "denied"
    assert len(events[5].file["path"]) == wire.PATH_LEN


def test_other_records_keep_their_order_around_opens_and_short_records_are_counted() -> None:
    records = [open_record(b"/a"), exit_record(9, 3), b"\x01\x02", open_record(b"/b")[:60],
               exec_record(50, b"/bin/sh", [b"sh"]), record(wire.K_EXEC_RESULT, 50, 0),
               open_record(b"/c")]
    events = assert_same(records)
    assert [e.kind for e in events] == ["open", "exit", "exec", "open"]
    assert RecordDecoder(0).decode_batch(records[2:4]) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(
    open_record,
    path=st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"/")),
    oflags=st.integers(0, 2**32 - 1), mode=st.integers(0, 2**32 - 1), repeats=st.integers(0, 5),
    dfd=st.integers(-(2**31), 2**31 - 1), kind=st.sampled_from([wire.K_OPEN, wire.K_OPEN2, wire.K_UNLINK]),
    flags=st.sampled_from([0, wire.F_PATH_TRUNC, wire.F_DENIED]), comm=st.binary(max_size=16),
    result=st.integers(-(2**31), 2**31 - 1), cut=st.booleans()), max_size=8))
def test_any_batch_of_file_records_decodes_alike(records: list[bytes]) -> None:
    assert_same(records)


def test_the_built_extension_is_not_older_than_its_source() -> None:
    """scripts/setup.sh rebuilds it when the C changes (its stamp hashes the source); a stale
    build would decode with yesterday's code."""
    from pathlib import Path

    from monitor.sensor import _fastdecode

    source = Path(decode.__file__).with_name("_fastdecode.c")
    assert Path(_fastdecode.__file__).stat().st_mtime >= source.stat().st_mtime, \
        "monitor/sensor/_fastdecode.c changed since the build: run scripts/setup.sh"


def test_the_c_decoder_is_not_used_when_it_fills_other_slots_than_the_event_has(monkeypatch) -> None:
    """A field added to Event and not to the C would be left unset (AttributeError on read)."""
    assert decode.native_open_decoder(0) is not None
    monkeypatch.setattr(decode, "NATIVE_FIELDS", decode.NATIVE_FIELDS[:-1])
    assert decode.native_open_decoder(0) is None
