"""Decoder for probes/process.c: exec_event and sys_event records -> Events."""

from __future__ import annotations

import struct

from monitor.event import Event
from monitor.linux import PTRACE_REQUESTS, namespace_flags
from monitor.sensor import wire
from monitor.sensor.file import FILE_ID, canonical_path, user_dev
from monitor.sensor.wire import cstr

_EXEC_BODY = struct.Struct(f"<II{wire.PATH_LEN}s")
_SYS_ARGS = struct.Struct("<5Q")
_SYS_STRS = struct.Struct(f"<{wire.STR_LEN}s{wire.STR_LEN}s{wire.STR_LEN}s")
_SYS_STRS_AT = wire.HDR_SIZE + _SYS_ARGS.size

SETUID_CALLS = {0: ("setuid", "setgid"), 1: ("setreuid", "setregid"), 2: ("setresuid", "setresgid")}
_NO_ID = 0xFFFFFFFF


def decode_exec(event: Event, flags: int, buf: bytes) -> Event:
    argc, _, filename = _EXEC_BODY.unpack_from(buf, wire.HDR_SIZE)
    base = wire.HDR_SIZE + _EXEC_BODY.size
    args = [cstr(buf[base + i * wire.ARG_LEN: base + (i + 1) * wire.ARG_LEN]) for i in range(min(argc, wire.MAX_ARGS))]
    event.process["executable"] = cstr(filename)
    event.process["args"] = args
    detail: dict[str, bool] = {}
    if flags & (wire.F_ARG_TRUNC | wire.F_ARGS_TRUNC | wire.F_PATH_TRUNC):
        detail["args_truncated"] = True
    if flags & wire.F_UNREADABLE:
        detail["args_unreadable"] = True  # not in memory at exec time (see probes/process.c)
    if detail:
        event.detail = detail
    return event


_EXEC_FILE_ID_AT = wire.HDR_SIZE + 8  # probes/process.c struct exec_file_event: hdr, old_pid, file_id,
_EXEC_FILE_NAME_AT = _EXEC_FILE_ID_AT + FILE_ID.size  # filename[STR_LEN], canonical path
_EXEC_FILE_CANON_AT = _EXEC_FILE_NAME_AT + wire.STR_LEN


def decode_exec_file(buf: bytes) -> tuple[int, str, tuple[int, int, int, int, str]]:
    """(pid before the exec, the path the kernel ran, the identity of the file the new image runs
    from: (dev, ino, nlink, id_flags, canonical path)) of a sched_process_exec record."""
    (old_pid,) = struct.unpack_from("<Q", buf, wire.HDR_SIZE)
    ino, dev, nlink, _mode, id_flags, canon_len, _ = FILE_ID.unpack_from(buf, _EXEC_FILE_ID_AT)
    filename = cstr(buf[_EXEC_FILE_NAME_AT:_EXEC_FILE_CANON_AT])
    canonical = canonical_path(buf, _EXEC_FILE_CANON_AT, canon_len)
    return old_pid, filename, (user_dev(dev), ino, nlink, id_flags, canonical)


def _ids(a: tuple[int, ...]) -> list[int | None]:
    return [None if (v & _NO_ID) == _NO_ID else v & _NO_ID for v in a[:3]]


def decode_sys(event: Event, kind: int, buf: bytes) -> Event:
    a = _SYS_ARGS.unpack_from(buf, wire.HDR_SIZE)
    strs = [cstr(s) for s in _SYS_STRS.unpack_from(buf, _SYS_STRS_AT)] if len(buf) > _SYS_STRS_AT else []
    if kind == wire.K_FORK:
        event.detail = {"child_pid": a[0]}
    elif kind == wire.K_EXIT:
        event.detail = {"code": a[1] & 0xFF} if a[0] else {"signal": "unknown"}
    elif kind in (wire.K_SETUID, wire.K_SETGID):
        real, eff, saved = _ids(a)
        is_uid = kind == wire.K_SETUID
        prefix = "uid" if is_uid else "gid"
        detail: dict[str, object] = {"call": SETUID_CALLS[a[3] & 3][0 if is_uid else 1], prefix: real}
        if eff is not None:
            detail["e" + prefix] = eff
        if saved is not None:
            detail["s" + prefix] = saved
        event.detail = detail
    elif kind == wire.K_CAPSET:
        event.detail = {"effective": a[2], "permitted": a[3]}
    elif kind == wire.K_PTRACE:
        event.detail = {"request": PTRACE_REQUESTS.get(a[0], str(a[0])), "target_pid": a[1]}
    elif kind == wire.K_MEMFD:
        event.detail = {"name": strs[0], "flags": a[1]}
    elif kind == wire.K_UNSHARE:
        event.detail = {"call": "unshare", "flags": namespace_flags(a[0])}
    elif kind == wire.K_SETNS:
        event.detail = {"call": "setns", "flags": namespace_flags(a[1])}
    elif kind == wire.K_MOUNT:
        event.detail = {"source": strs[0], "target": strs[1], "fstype": strs[2], "flags": a[3]}
    elif kind == wire.K_BPF:
        event.detail = {"cmd": a[0]}
    elif kind == wire.K_CHDIR:
        event.hints = {"chdir": strs[0]}
    elif kind == wire.K_FCHDIR:
        event.hints = {"fchdir": a[0]}
    return event
