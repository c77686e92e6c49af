"""Decoder for probes/file.c: file_event records -> Events (open, unlink, rename, chmod)."""

from __future__ import annotations

import struct

from monitor.event import Event
from monitor.linux import O_CREAT, open_flags
from monitor.sensor import wire
from monitor.sensor.wire import cstr

_FILE_FIXED = struct.Struct("<iiIIII")  # then the path, cut after its NUL (rename: full, then path2)
_FIXED_AT = wire.HDR_SIZE
_PATH_AT = wire.HDR_SIZE + _FILE_FIXED.size
_PATH_END = _PATH_AT + wire.PATH_LEN
_OPENS = (wire.K_OPEN, wire.K_OPEN2)
_PATH2 = struct.Struct(f"<{wire.PATH_LEN}s")
AT_FDCWD = -100

def decode_file(event: Event, kind: int, buf: bytes) -> Event:
    dfd, dfd2, oflags, mode, repeats, _ = _FILE_FIXED.unpack_from(buf, _FIXED_AT)
    path = cstr(buf[_PATH_AT:_PATH_END])
    file: dict[str, object] = {"path": path}
    if kind in _OPENS:
        names, write = open_flags(oflags)
        file["flags"] = names
        file["write"] = write
        if oflags & O_CREAT:
            file["mode"] = mode & 0o7777
    elif kind == wire.K_UNLINK:
        file["write"] = True
        if oflags & 0x200:  # AT_REMOVEDIR
            file["flags"] = ["AT_REMOVEDIR"]
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
