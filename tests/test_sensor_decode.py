"""Joins across ring-buffer records (monitor/sensor/decode.py), on synthetic wire records: an exec
waits for its result, a failed $PATH probe is counted not reported, a process that has already
exited is never looked up in /proc, a short record is counted as a decode error."""

from __future__ import annotations

import errno
import os
import struct
import time

from monitor.enrich import Enricher
from monitor.sandbox import SandboxRegistry
from monitor.sensor import wire
from monitor.sensor.decode import RecordDecoder

_HDR = struct.Struct("<QQIIIIIiII16s")


def record(kind: int, pid: int, result: int = 0, body: bytes = b"", flags: int = 0) -> bytes:
    return _HDR.pack(time.monotonic_ns(), 7, kind, pid, pid, 0, 0, result, flags, 0, b"tool") + body


def exec_record(pid: int, path: bytes, args: list[bytes], flags: int = 0) -> bytes:
    body = struct.pack(f"<II{wire.PATH_LEN}s", len(args), 0, path)
    body += b"".join(a.ljust(wire.ARG_LEN, b"\0") for a in args)
    return record(wire.K_EXEC, pid, body=body + bytes(wire.ARG_LEN * (wire.MAX_ARGS - len(args))), flags=flags)


def exit_record(pid: int, code: int) -> bytes:
    return record(wire.K_EXIT, pid, body=struct.pack("<5Q", 1, code, 0, 0, 0))


def test_an_exec_is_held_until_its_result_and_a_path_probe_is_counted_not_reported() -> None:
    decoder = RecordDecoder(0)
    assert decoder.decode_batch([exec_record(50, b"/usr/local/bin/tool", [b"tool"])]) == []
    missing = decoder.decode_batch([record(wire.K_EXEC_RESULT, 50, -errno.ENOENT)])
    assert missing == [] and decoder.exec_enoent == 1
    decoder.decode_batch([exec_record(50, b"/usr/bin/tool", [b"tool", b"-v"])])
    (event,) = decoder.decode_batch([record(wire.K_EXEC_RESULT, 50, 0)])
    assert event.kind == "exec" and event.result == 0
    assert event.process["executable"] == "/usr/bin/tool" and event.process["args"] == ["tool", "-v"]


def test_an_exec_whose_exit_came_in_the_same_batch_is_not_read_from_proc() -> None:
    """The pid of a process that already exited may belong to another process by now: enrich
    must not describe the exec with that one's /proc. Here the 'exited' pid is this test's own,
    which is alive: had enrich read /proc, it would have found pytest's stdio."""
    me = os.getpid()
    decoder = RecordDecoder(0)
    unreadable = exec_record(me, b"/bin/true", [b""], flags=wire.F_UNREADABLE)  # args from /proc, if alive
    events = decoder.decode_batch([unreadable, record(wire.K_EXEC_RESULT, me, 0), exit_record(me, 0)])
    exec_event, exit_event = events
    assert exec_event.hints == {"exited": True} and exit_event.kind == "exit"
    enricher = Enricher(SandboxRegistry())
    enricher.enrich(exec_event)
    assert exec_event.process["args"] == [""], "no /proc/PID/cmdline of a pid that has exited"
    assert "stdin" not in exec_event.process and "stdout" not in exec_event.process

    alive = RecordDecoder(0).decode_batch([unreadable, record(wire.K_EXEC_RESULT, me, 0)])
    assert alive[0].hints is None, "no exit record: the process may still be there to read"


def test_a_short_record_is_a_decode_error_not_an_exception() -> None:
    decoder = RecordDecoder(0)
    assert decoder.decode_batch([b"\x01\x02", exit_record(9, 3)])[0].detail == {"code": 3}
    assert decoder.errors == 1
