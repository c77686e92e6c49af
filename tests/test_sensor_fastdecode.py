"""The C decoder (monitor/sensor/_fastdecode.c) against the Python one: for any batches of
records, the same Events in the same order (ids aside: each draws the next one), the same decode
errors, the same execs held for their result and exits noted, and every record it does not
handle left to Python."""

from __future__ import annotations

import dataclasses
import os
import struct
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.event import Event
from monitor.sensor import decode, wire
from monitor.sensor.decode import RecordDecoder
from monitor.sensor.file import FILE_ID
from tests.test_sensor_decode import exec_record, exit_record, record

_FILE = struct.Struct("<iiIIII")
O_WRONLY_CREAT_TRUNC = 0o1101


def open_record(path: bytes, oflags: int = 0, mode: int = 0, repeats: int = 0, dfd: int = -100,
                kind: int = wire.K_OPEN, flags: int = 0, comm: bytes = b"tool", pid: int = 42,
                result: int = 3, cut: bool = True, canonical: bytes | None = None, id_flags: int = 0,
                dev: int = 0, ino: int = 0, canon_len: int | None = None, path_used: int | None = None) -> bytes:
    """As probes/file.c sends it: cut after the path's NUL, or the whole path field; then the
    canonical path the kernel walked (canon_len and path_used: as sent, or made up)."""
    field = path + b"\0" if cut else path.ljust(wire.PATH_LEN, b"\0")[: wire.PATH_LEN]
    canon = b"" if canonical is None else canonical + b"\0"
    used = len(field) if path_used is None else path_used
    body = _FILE.pack(dfd, 0, oflags, mode, repeats, used)
    body += FILE_ID.pack(ino, dev, 1, 0o100644, id_flags, len(canon) if canon_len is None else canon_len, 0)
    hdr = struct.pack("<QQIIIIIiII16s", time.monotonic_ns(), 77, kind, pid, pid + 1, 1000, 1001,
                      result, flags, 0, comm)
    return hdr + body + field + canon


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


def test_the_extension_is_built_and_used_for_opens() -> None:  # (and below: fork, exit, exec)
    assert decode.NativeDecoder is not None, "monitor/sensor/_fastdecode is not built (scripts/setup.sh)"
    (event,) = assert_same([open_record(b"/etc/hosts")])
    assert event.kind == "open" and event.file == {"path": "/etc/hosts", "flags": ["O_RDONLY"], "write": False,
                                                   "resolved": False}  # no identity in this record
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
    result=st.integers(-(2**31), 2**31 - 1), cut=st.booleans(),
    canonical=st.one_of(st.none(), st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"/"))),
    id_flags=st.integers(0, 255), dev=st.integers(0, 2**32 - 1), ino=st.integers(0, 2**64 - 1),
    canon_len=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    path_used=st.one_of(st.none(), st.integers(0, 2**32 - 1))), max_size=8))
def test_any_batch_of_file_records_decodes_alike(records: list[bytes]) -> None:
    assert_same(records)


def test_an_opens_kernel_identity_decodes_alike_and_the_caller_path_is_kept() -> None:
    dev = (8 << 20) | 1  # the kernel's encoding of 8:1
    records = [
        open_record(b"/tmp/link-to-shadow", canonical=b"/etc/shadow", id_flags=wire.ID_RESOLVED, dev=dev, ino=77),
        open_record(b"/etc/hosts", canonical=b"/etc/hosts", id_flags=wire.ID_RESOLVED, dev=dev, ino=5),
        open_record(b"/proc/self/fd/3", canonical=b"/memfd:x", id_flags=wire.ID_DETACHED, dev=dev, ino=9),
        open_record(b"deep/path", id_flags=wire.ID_TRUNC, dev=dev, ino=10, dfd=4),
        open_record(b"/etc/shadow", canonical=b"/etc/shadow", id_flags=wire.ID_RESOLVED, result=-13),
        open_record(b"/" + b"a" * 300, cut=False, canonical=b"/a-long-one", id_flags=wire.ID_RESOLVED, ino=3),
    ]
    events = assert_same(records)
    linked, plain, memfd, deep, failed, long_one = (e.file for e in events)
    assert linked == {"path": "/etc/shadow", "requested": "/tmp/link-to-shadow", "flags": ["O_RDONLY"],
                      "write": False, "resolved": True, "dev": os.makedev(8, 1), "ino": 77}
    assert plain["path"] == "/etc/hosts" and "requested" not in plain and plain["resolved"] is True
    assert memfd["path"] == "/proc/self/fd/3" and memfd["resolved"] is False and memfd["ino"] == 9
    assert deep["resolved"] is False and events[3].hints == {"dfd": 4}
    assert "resolved" not in failed and "ino" not in failed, "a failed open opened nothing"
    assert long_one["path"] == "/a-long-one" and len(long_one["requested"]) == wire.PATH_LEN
    native, python = RecordDecoder(0, native=True), RecordDecoder(0, native=False)
    native.decode_batch(list(records))
    python.decode_batch(list(records))
    assert native.unresolved == python.unresolved == 2


def exec_file_rec(pid: int, tid: int, old_pid: int, filename: bytes, canonical: bytes = b"", id_flags: int = 0,
                  dev: int = 0, ino: int = 0, nlink: int = 1, canon_len: int | None = None,
                  size: int | None = None) -> bytes:
    """probes/process.c struct exec_file_event: hdr, old_pid, file_id, filename, canonical path"""
    canon = canonical + b"\0" if canonical else b""
    raw = (header(wire.K_EXEC_FILE, pid, tid) + struct.pack("<Q", old_pid)
           + FILE_ID.pack(ino, dev, nlink, 0o100755, id_flags, len(canon) if canon_len is None else canon_len, 0)
           + filename.ljust(wire.STR_LEN, b"\0")[: wire.STR_LEN] + canon)
    return raw if size is None else raw[:size]


def test_an_execs_file_identity_goes_to_its_hints_alike() -> None:
    batch = [exec_rec(20, 20, b"./script.sh", [b"./script.sh"]),
             exec_file_rec(20, 20, 20, b"./script.sh", b"/usr/bin/dash", wire.ID_RESOLVED, (8 << 20) | 2, 1234),
             record(wire.K_EXEC_RESULT, 20, 0),
             exec_rec(21, 21, b"", [b"x"]),
             exec_file_rec(21, 21, 21, b"/dev/fd/3", b"/memfd:payload", wire.ID_DETACHED, 1, 99, nlink=0),
             record(wire.K_EXEC_RESULT, 21, 0),
             exec_rec(22, 22, b"/x", [b"x"]),
             exec_file_rec(22, 22, 22, b"/x", id_flags=wire.ID_TRUNC, ino=5),
             record(wire.K_EXEC_RESULT, 22, 0)]
    script, memfd, deep = assert_same_batches([batch])
    assert script.hints == {"exe": (os.makedev(8, 2), 1234, 1, wire.ID_RESOLVED, "/usr/bin/dash")}
    assert memfd.process["executable"] == "/dev/fd/3"
    assert memfd.hints == {"exe": (os.makedev(0, 1), 99, 0, wire.ID_DETACHED, "/memfd:payload")}
    assert deep.hints["exe"][3:] == (wire.ID_TRUNC, "")


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
    assert decode.native_decoder(0, {}, set()) is not None
    monkeypatch.setattr(decode, "NATIVE_FIELDS", decode.NATIVE_FIELDS[:-1])
    assert decode.native_decoder(0, {}, set()) is None


# -- fork, exit and exec ------------------------------------------------------------------------

_FAR = 10**15  # record times far ahead: no exec is ever flushed as stale during a test


def header(kind: int, pid: int, tid: int, flags: int = 0, result: int = 0, comm: bytes = b"sh") -> bytes:
    return struct.pack("<QQIIIIIiII16s", time.monotonic_ns() + _FAR, 77, kind, pid, tid, 0, 0, result, flags, 0,
                       comm)


def sys_record(kind: int, pid: int, tid: int, a0: int, a1: int = 0, strs: bytes | None = None,
               flags: int = 0, size: int | None = None) -> bytes:
    raw = header(kind, pid, tid, flags) + struct.pack("<5Q", a0, a1, 0, 0, 0) + (strs or b"")
    return raw if size is None else raw[:size].ljust(size, b"\0")


def exec_rec(pid: int, tid: int, path: bytes, args: list[bytes], flags: int = 0, argc: int | None = None,
             size: int | None = None) -> bytes:
    body = struct.pack(f"<II{wire.PATH_LEN}s", len(args) if argc is None else argc, 0, path)
    body += b"".join(a.ljust(wire.ARG_LEN, b"\0") for a in args).ljust(wire.ARG_LEN * wire.MAX_ARGS, b"\0")
    raw = header(wire.K_EXEC, pid, tid, flags) + body
    return raw if size is None else raw[:size]


def pending_fields(decoder: RecordDecoder) -> dict[int, dict[str, object]]:
    return {tid: fields(event) for tid, event in decoder._exec_pending.items()}


def assert_same_batches(batches: list[list[bytes]]) -> list[Event]:
    native, python = RecordDecoder(123, native=True), RecordDecoder(123, native=False)
    assert native.native is not None, "the C decoder is not built: scripts/setup.sh builds it"
    decoded = []
    for batch in batches:
        from_c, from_python = native.decode_batch(list(batch)), python.decode_batch(list(batch))
        assert [fields(e) for e in from_c] == [fields(e) for e in from_python]
        assert native._exited == python._exited
        assert pending_fields(native) == pending_fields(python)
        decoded += from_c
    assert (native.errors, native.exec_enoent, native.unresolved) == (python.errors, python.exec_enoent,
                                                                       python.unresolved)
    return decoded


def test_fork_exit_and_exec_are_decoded_in_c_and_joined_alike() -> None:
    path = b"/usr/bin/env".ljust(wire.STR_LEN, b"\0")
    batch = [sys_record(wire.K_FORK, 10, 10, 11, 10),
             exec_rec(11, 11, b"/usr/local/bin/tool", [b"tool"]),
             record(wire.K_EXEC_RESULT, 11, -2),  # execvp's walk along $PATH: counted
             exec_rec(11, 11, b"", [b"env", b"-i"], flags=wire.F_UNREADABLE | wire.F_ARG_TRUNC),
             sys_record(wire.K_EXEC_FILE, 11, 11, 11, strs=path[: wire.STR_LEN]),  # fills the empty path
             record(wire.K_EXEC_RESULT, 11, 0),
             sys_record(wire.K_EXIT, 11, 11, 1, 0x1FF),
             sys_record(wire.K_EXIT, 12, 12, 0, 0)]  # killed by a signal
    calls: list[bytes] = []
    decoder = RecordDecoder(123)
    events = decoder.native.decode(batch, lambda record: calls.append(record))
    assert calls == [], "a fork, exit or exec record went to the Python decoder"
    assert [e.kind for e in events] == ["fork", "exec", "exit", "exit"]
    fork, exec_, exit_, killed = events
    assert fork.detail == {"child_pid": 11} and fork.result == 0
    assert exec_.process["executable"] == "/usr/bin/env" and exec_.process["args"] == ["env", "-i"]
    assert exec_.detail == {"args_truncated": True, "args_unreadable": True} and exec_.result == 0
    assert exit_.detail == {"code": 0xFF} and killed.detail == {"signal": "unknown"}
    assert decoder.exec_enoent == 1 and decoder._exited == {11, 12}
    assert_same_batches([batch])


_pids = st.sampled_from([10, 11, 12])
_text = st.binary(max_size=wire.ARG_LEN).map(lambda b: b.replace(b"\0", b"x"))
_exec_flags = st.sampled_from([0, wire.F_UNREADABLE, wire.F_ARG_TRUNC | wire.F_PATH_TRUNC, wire.F_DENIED,
                               wire.F_ARGS_TRUNC | wire.F_UNREADABLE])
_records = st.one_of(
    st.builds(exec_rec, _pids, _pids, _text, st.lists(_text, max_size=wire.MAX_ARGS), _exec_flags,
              st.one_of(st.none(), st.integers(0, 40), st.just(2**32 - 1)),
              st.one_of(st.none(), st.integers(0, 3000))),
    st.builds(sys_record, st.just(wire.K_EXEC_FILE), _pids, _pids, _pids, st.just(0),
              _text.map(lambda b: b.ljust(wire.STR_LEN, b"\0")), st.sampled_from([0, wire.F_DENIED]),
              st.one_of(st.none(), st.integers(60, 400))),
    st.builds(exec_file_rec, _pids, _pids, _pids, _text, _text, st.integers(0, 255), st.integers(0, 2**32 - 1),
              st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
              st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.one_of(st.none(), st.integers(60, 900))),
    st.builds(lambda tid, result, flags: header(wire.K_EXEC_RESULT, tid, tid, flags, result), _pids,
              st.sampled_from([0, -2, -13]), st.sampled_from([0, wire.F_DENIED])),
    st.builds(sys_record, st.sampled_from([wire.K_FORK, wire.K_EXIT]), _pids, _pids,
              st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.just(bytes(3 * wire.STR_LEN)),
              st.sampled_from([0, wire.F_DENIED]), st.sampled_from([None, 104, 200, 60])),
    st.builds(open_record, st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"/"))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_records, max_size=10), min_size=1, max_size=3))
def test_any_batches_of_process_records_decode_and_join_alike(batches: list[list[bytes]]) -> None:
    assert_same_batches(batches)
