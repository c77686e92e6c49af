"""Raw ring-buffer records -> Events: the header, then each probe's own decoder (file.py, net.py,
process.py), and the joins across records (an exec with its result and the kernel's copy of its
path). Pure logic: no kernel, no bcc; the Sensor feeds it what it reads from the ring.

Open, fork, exit and exec records, most of what a busy sandbox sends, are decoded in C when the
extension `_fastdecode` is built (scripts/setup.sh builds it): the same Events as the Python
here, which stays the reference, at a third of the cost. Without it (a pure-Python install)
everything is decoded here.
"""

from __future__ import annotations

import dataclasses
import errno
import struct
import time
from typing import Any

from monitor import event as event_model
from monitor.event import Event
from monitor.sensor import wire
from monitor.sensor.file import O_CREAT, decode_file, open_flags
from monitor.sensor.net import decode_net
from monitor.sensor.process import decode_exec, decode_exec_file, decode_sys

_HDR = struct.Struct("<QQIIIIIiII16s")  # probes/events.h struct hdr
_EXEC_JOIN_WAIT_NS = 200_000_000  # an exec whose result record never came is emitted anyway

_KIND_NAMES, _F_DENIED = wire.KIND_NAMES, wire.F_DENIED  # module names: read for every record
_K_EXEC, _K_EXEC_RESULT, _K_EXEC_FILE, _K_EXIT = wire.K_EXEC, wire.K_EXEC_RESULT, wire.K_EXEC_FILE, wire.K_EXIT
_FILE_KINDS = {wire.K_OPEN, wire.K_OPEN2, wire.K_UNLINK, wire.K_RENAME, wire.K_CHMOD}
_NET_KINDS = {wire.K_CONNECT, wire.K_BIND, wire.K_LISTEN, wire.K_ACCEPT, wire.K_DNS}
_NATIVE_CONSTANTS = {name: getattr(wire, name) for name in (
    "K_OPEN", "K_OPEN2", "K_FORK", "K_EXIT", "K_EXEC", "K_EXEC_FILE", "K_EXEC_RESULT", "F_DENIED",
    "F_PATH_TRUNC", "F_ARG_TRUNC", "F_ARGS_TRUNC", "F_UNREADABLE", "PATH_LEN", "ARG_LEN", "MAX_ARGS",
    "STR_LEN", "ID_RESOLVED", "ID_DETACHED")} | {"O_CREAT": O_CREAT, "ENOENT": errno.ENOENT}


try:
    from monitor.sensor._fastdecode import FIELDS as NATIVE_FIELDS
    from monitor.sensor._fastdecode import NativeDecoder
except ImportError:  # not built: every record is decoded in Python
    NativeDecoder, NATIVE_FIELDS = None, ()


def native_decoder(wall_offset_ns: int, pending: dict[int, Event], exited: set[int]) -> Any:
    """The C decoder, sharing a RecordDecoder's pending execs and exited pids; None when the
    extension is not built or fills other slots than the Event has (a field added to Event and
    not to the C: tests fail on None)."""
    if NativeDecoder is None or set(NATIVE_FIELDS) != {f.name for f in dataclasses.fields(Event)}:
        return None
    return NativeDecoder(Event, wall_offset_ns, event_model.ID_PREFIX, event_model.ID_COUNTER, open_flags,
                         _NATIVE_CONSTANTS, pending, exited)


class RecordDecoder:
    def __init__(self, wall_offset_ns: int, native: bool = True) -> None:
        self.wall_offset = wall_offset_ns  # wall clock minus the kernel's monotonic clock
        self.errors = 0  # records that did not decode (counted as lost `decode_error`)
        self._enoent = 0  # see exec_enoent
        self._unresolved = 0  # see unresolved
        self._exec_pending: dict[int, Event] = {}  # by tid: execs waiting for their result
        self._exited: set[int] = set()  # processes whose exit record is in the current batch
        self._comms: dict[bytes, str] = {}  # raw comm field -> text (a few dozen names repeat)
        self.native = native_decoder(wall_offset_ns, self._exec_pending, self._exited) if native else None

    @property
    def exec_enoent(self) -> int:
        """Execs that failed with ENOENT on execvp's $PATH walk (counted, not reported)."""
        return self._enoent + (self.native.exec_enoent if self.native is not None else 0)

    @property
    def unresolved(self) -> int:
        """Successful opens and execs whose file the kernel could not give a canonical path
        (too long, a pseudo file, unreadable, identity off): reported with `resolved: false`."""
        return self._unresolved + (self.native.unresolved if self.native is not None else 0)

    def flush(self) -> list[Event]:
        """The execs still waiting for their result (at the end of a run)."""
        pending = list(self._exec_pending.values())
        self._exec_pending.clear()
        return pending

    def decode_batch(self, records: list[bytes]) -> list[Event]:
        """Events from a batch of raw records, in order (an exec is held until its result)."""
        self._exited.clear()
        if self.native is not None:
            events = self.native.decode(records, self._decode_or_count)
        else:
            events = [event for buf in records if (event := self._decode_or_count(buf)) is not None]
        if self._exec_pending:
            self._flush_stale_execs(events)
        if self._exited:
            self._mark_exited_execs(events)
        return events

    def _mark_exited_execs(self, events: list[Event]) -> None:
        """An exec whose process has already exited (its exit record came in the same batch) says
        so in hints["exited"]: enrich reads nothing of it from /proc, where the pid is gone or,
        worse, already reused (a short-lived process: failed /proc reads, each a cost)."""
        exited = self._exited
        for event in events:
            if event.kind == "exec" and event.process["pid"] in exited:
                event.hints = {**(event.hints or {}), "exited": True}

    def _flush_stale_execs(self, events: list[Event]) -> None:
        now = time.monotonic_ns() + self.wall_offset
        for tid, event in list(self._exec_pending.items()):
            if now - event.time_ns > _EXEC_JOIN_WAIT_NS:
                events.append(self._exec_pending.pop(tid))

    def _decode_or_count(self, buf: bytes) -> Event | None:
        try:
            return self._decode(buf)
        except (struct.error, KeyError, ValueError, IndexError):
            self.errors += 1
            return None

    def _decode(self, buf: bytes) -> Event | None:
        ts, cgroup_id, kind, pid, tid, uid, gid, result, flags, _, raw_comm = _HDR.unpack_from(buf)
        name = _KIND_NAMES[kind]
        if kind == _K_EXEC_RESULT:
            return self._join_exec(tid, result)
        if kind == _K_EXEC_FILE:
            self._exec_file(tid, flags, buf)
            return None
        comm = self._comms.get(raw_comm)
        if comm is None:
            comm = self._comms[raw_comm] = wire.cstr(raw_comm)
            if len(self._comms) > 4096:
                self._comms.clear()
        # positional: this runs for every record, and keyword parsing is a large share of it
        event = Event(name, ts + self.wall_offset,
                      {"pid": pid, "tid": tid, "uid": uid, "gid": gid, "comm": comm})
        event.cgroup_id = cgroup_id
        if flags & _F_DENIED:
            event.verdict = "denied"
        if kind == _K_EXEC:
            decode_exec(event, flags, buf)
            self._exec_pending[tid] = event
            return None
        event.result = result
        if kind == _K_EXIT:
            self._exited.add(pid)
        if kind in _FILE_KINDS:
            decode_file(event, kind, buf)
            if event.file.get("resolved") is False:
                self._unresolved += 1
            return event
        if kind in _NET_KINDS:
            decode_net(event, kind, buf)
            return event if event.net is not None else None
        return decode_sys(event, kind, buf)

    def _exec_file(self, tid: int, flags: int, buf: bytes) -> None:
        """The kernel's copy of the path: fills in what user memory did not give at sys_enter;
        the identity of the file the image runs from goes to hints["exe"] for enrich."""
        old_pid, path, identity = decode_exec_file(buf)
        event = self._exec_pending.get(old_pid) or self._exec_pending.get(tid)
        if event is None:
            return
        if not event.process.get("executable"):
            event.process["executable"] = path
        event.hints = {**(event.hints or {}), "exe": identity}
        if not identity[3] & (wire.ID_RESOLVED | wire.ID_DETACHED):
            self._unresolved += 1
        if flags & wire.F_DENIED:
            event.verdict = "denied"

    def _join_exec(self, tid: int, result: int) -> Event | None:
        event = self._exec_pending.pop(tid, None)
        if event is None:
            return None
        event.result = result
        if result == -errno.ENOENT and event.verdict is None:
            # execvp's walk along $PATH: counted, not an event (the successful try follows).
            self._enoent += 1
            return None
        return event

