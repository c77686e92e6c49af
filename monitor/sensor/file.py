"""Decoder for probes/file.c: file_event records -> Events (open, unlink, rename, chmod)."""

from __future__ import annotations

import os
import struct

from monitor.event import Event
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

# Kernel ABI values (asm-generic/fcntl.h, x86-64): Python's os module reports O_LARGEFILE as 0.
_ACCESS = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR"}
O_CREAT, O_TRUNC, O_APPEND = 0o100, 0o1000, 0o2000
_OPEN_FLAGS = [  # O_TMPFILE includes O_DIRECTORY's bit: whole masks, widest first
    (0o20200000, "O_TMPFILE"), (0o4010000, "O_SYNC"), (O_CREAT, "O_CREAT"), (0o200, "O_EXCL"),
    (0o400, "O_NOCTTY"), (O_TRUNC, "O_TRUNC"), (O_APPEND, "O_APPEND"), (0o4000, "O_NONBLOCK"),
    (0o10000, "O_DSYNC"), (0o20000, "O_ASYNC"), (0o40000, "O_DIRECT"), (0o100000, "O_LARGEFILE"),
    (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"),
    (0o2000000, "O_CLOEXEC"), (0o10000000, "O_PATH"),
]
WRITE_INTENT = 1 | 2 | O_CREAT | O_TRUNC | O_APPEND
_flag_cache: dict[int, tuple[list[str], bool]] = {}


def open_flags(flags: int) -> tuple[list[str], bool]:
    """Flag names and write intent for an open(2) flags word (cached: a build reuses few)."""
    cached = _flag_cache.get(flags)
    if cached is None:
        names = [_ACCESS.get(flags & 3, "O_ACCMODE")]
        rest = flags & ~3
        for bit, name in _OPEN_FLAGS:
            if rest & bit == bit:
                names.append(name)
                rest &= ~bit
        cached = (names, bool(flags & WRITE_INTENT))
        _flag_cache[flags] = cached
    return cached


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
