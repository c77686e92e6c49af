"""Decoder for probes/file.c: file_event records -> Events (open, unlink, rename, chmod)."""

from __future__ import annotations

import os
import struct

from monitor.event import Event
from monitor.sensor import wire
from monitor.sensor.wire import cstr

_FILE_BODY = struct.Struct(f"<iiII{wire.PATH_LEN}s")
_PATH2 = struct.Struct(f"<{wire.PATH_LEN}s")
AT_FDCWD = -100

_ACCESS = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}
_OPEN_FLAGS = [(getattr(os, name), name) for name in (
    "O_CREAT", "O_EXCL", "O_NOCTTY", "O_TRUNC", "O_APPEND", "O_NONBLOCK", "O_DSYNC", "O_DIRECT",
    "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_PATH", "O_TMPFILE")
    if hasattr(os, name)]
# O_TMPFILE includes O_DIRECTORY's bit: test whole masks, longest first.
_OPEN_FLAGS.sort(key=lambda pair: -bin(pair[0]).count("1"))
WRITE_INTENT = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_flag_cache: dict[int, tuple[list[str], bool]] = {}


def open_flags(flags: int) -> tuple[list[str], bool]:
    """Flag names and write intent for an open(2) flags word (cached: a build reuses few)."""
    cached = _flag_cache.get(flags)
    if cached is None:
        names = [_ACCESS.get(flags & os.O_ACCMODE, "O_ACCMODE")]
        rest = flags & ~os.O_ACCMODE
        for bit, name in _OPEN_FLAGS:
            if rest & bit == bit:
                names.append(name)
                rest &= ~bit
        cached = (names, bool(flags & WRITE_INTENT))
        _flag_cache[flags] = cached
    return cached


def decode_file(event: Event, kind: int, buf: bytes) -> Event:
    dfd, dfd2, oflags, mode, raw_path = _FILE_BODY.unpack_from(buf, wire.HDR_SIZE)
    path = cstr(raw_path)
    file: dict[str, object] = {"path": path}
    if kind in (wire.K_OPEN, wire.K_OPEN2):
        names, write = open_flags(oflags)
        file["flags"] = names
        file["write"] = write
        if oflags & os.O_CREAT:
            file["mode"] = mode & 0o7777
    elif kind == wire.K_UNLINK:
        file["write"] = True
        if oflags & 0x200:  # AT_REMOVEDIR
            file["flags"] = ["AT_REMOVEDIR"]
    elif kind == wire.K_CHMOD:
        file["mode"] = mode & 0o7777
        file["write"] = True
    elif kind == wire.K_RENAME:
        (raw_new,) = _PATH2.unpack_from(buf, wire.HDR_SIZE + _FILE_BODY.size)
        file["new_path"] = cstr(raw_new)
        file["write"] = True
    event.file = file
    hints: dict[str, int] = {}
    if not path.startswith("/"):
        hints["dfd"] = dfd
    if kind == wire.K_RENAME and not str(file["new_path"]).startswith("/"):
        hints["dfd2"] = dfd2
    if hints:
        event.hints = hints
    return event
