"""Linux facts both kernel-side sources need (the eBPF probes and gVisor's trace session report
the same syscalls): open(2) flags, clone(2) namespace flags, ptrace(2) requests, sockaddr layouts.
Kernel ABI values for x86-64, independent of what the running Python's os module knows.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

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



CLONE_NAMESPACE_FLAGS = {
    0x00020000: "CLONE_NEWNS", 0x02000000: "CLONE_NEWCGROUP", 0x04000000: "CLONE_NEWUTS",
    0x08000000: "CLONE_NEWIPC", 0x10000000: "CLONE_NEWUSER", 0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET", 0x00000080: "CLONE_NEWTIME",
}
PTRACE_REQUESTS = {0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA",
                   4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 16: "PTRACE_ATTACH",
                   17: "PTRACE_DETACH", 0x4206: "PTRACE_SEIZE"}

def namespace_flags(flags: int) -> list[str]:
    return [name for bit, name in CLONE_NAMESPACE_FLAGS.items() if flags & bit]


def parse_sockaddr(raw: bytes, length: int) -> dict[str, object] | None:
    """A sockaddr (as the process passed it) -> {family, address, port}; None if unknown."""
    if length < 2:
        return None
    (family,) = struct.unpack_from("<H", raw)
    if family == socket.AF_INET and length >= 8:
        port = struct.unpack_from(">H", raw, 2)[0]
        return {"family": "inet", "address": str(ipaddress.IPv4Address(raw[4:8])), "port": port}
    if family == socket.AF_INET6 and length >= 24:
        port = struct.unpack_from(">H", raw, 2)[0]
        address = ipaddress.IPv6Address(raw[8:24])
        mapped = address.ipv4_mapped
        return {"family": "inet6", "address": str(mapped or address), "port": port}
    if family == socket.AF_UNIX:
        path = raw[2:length]
        if path[:1] == b"\0":  # abstract namespace
            name = "@" + path[1:].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        else:
            name = path.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        return {"family": "unix", "address": name}
    return None
