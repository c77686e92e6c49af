"""Decoder for probes/file.c: file_event records -> Events (open, unlink, rename, chmod)."""

from __future__ import annotations

import os
import struct

from monitor.event import Event
from monitor.linux import O_CREAT, open_flags
from monitor.sensor import wire
from monitor.sensor.wire import cstr

_FILE_FIXED = struct.Struct("<iiIIII")  # then struct file_id, then the path (see probes/file.c)
FILE_ID = struct.Struct("<QIIIIII")  # probes/identity.h struct file_id
_FIXED_AT = wire.HDR_SIZE
_ID_AT = wire.HDR_SIZE + _FILE_FIXED.size
_PATH_AT = _ID_AT + FILE_ID.size
_PATH_END = _PATH_AT + wire.PATH_LEN
_OPENS = (wire.K_OPEN, wire.K_OPEN2)
_PATH2 = struct.Struct(f"<{wire.PATH_LEN}s")
AT_FDCWD = -100


def user_dev(kernel_dev: int) -> int:
    """A kernel dev_t (major << 20 | minor) as stat(2) reports it (os.makedev)."""
    return os.makedev(kernel_dev >> 20, kernel_dev & 0xFFFFF)


def canonical_path(buf: bytes, at: int, canon_len: int) -> str:
    """The canonical path the probe sent at `at` (canon_len bytes with its NUL)."""
    return cstr(buf[at:at + canon_len])


def _identity(file: dict[str, object], id_flags: int, dev: int, ino: int, canonical: str) -> None:
    """A successful open's kernel identity: `path` becomes the canonical path (what the caller
    passed stays in `requested` when it differs), with `dev` and `ino`; `resolved` says whether
    the kernel's walk reached the task's root (false: too long, unreadable, a pseudo file, the
    identity off: `path` is then the caller's)."""
    if id_flags & wire.ID_RESOLVED and canonical:
        if canonical != file["path"]:
            file["requested"] = file["path"]
            file["path"] = canonical
        file["resolved"] = True
    else:
        file["resolved"] = False
    if ino:
        file["dev"] = dev
        file["ino"] = ino


def decode_file(event: Event, kind: int, buf: bytes) -> Event:
    dfd, dfd2, oflags, mode, repeats, path_used = _FILE_FIXED.unpack_from(buf, _FIXED_AT)
    ino, dev, _nlink, _imode, id_flags, canon_len, _ = FILE_ID.unpack_from(buf, _ID_AT)
    path = cstr(buf[_PATH_AT:_PATH_END])
    file: dict[str, object] = {"path": path}
    if kind in _OPENS:
        names, write = open_flags(oflags)
        file["flags"] = names
        file["write"] = write
        if oflags & O_CREAT:
            file["mode"] = mode & 0o7777
        if event.result is not None and event.result >= 0:
            _identity(file, id_flags, user_dev(dev), ino,
                      canonical_path(buf, _PATH_AT + min(path_used, wire.PATH_LEN), canon_len))
    elif kind == wire.K_UNLINK:
        file["write"] = True
        if oflags & 0x200:  # AT_REMOVEDIR
            file["flags"] = ["AT_REMOVEDIR"]
        if id_flags & wire.ID_EXE_UNLINKED:
            file["is_running_executable"] = True
    elif kind == wire.K_CHMOD:
        file["mode"] = mode & 0o7777
        file["write"] = True
    elif kind == wire.K_RENAME:
        (raw_new,) = _PATH2.unpack_from(buf, _PATH_END)
        file["new_path"] = cstr(raw_new)
        file["write"] = True
    event.file = file
    if repeats:
        event.detail = {"repeats": repeats}
    hints: dict[str, int] = {}
    if not path.startswith("/"):
        hints["dfd"] = dfd
    if kind == wire.K_RENAME and not str(file["new_path"]).startswith("/"):
        hints["dfd2"] = dfd2
    if hints:
        event.hints = hints
    return event
