"""The wire format shared with probes/events.h: constants (prepended to the BPF C as #defines,
so C and Python cannot drift) and the record header."""

from __future__ import annotations

import ctypes as ct

PATH_LEN = 256
STR_LEN = 256
MAX_ARGS = 20
ARG_LEN = 128
SOCKADDR_LEN = 128
DNS_LEN = 256
DENY_PATH_LEN = 248
CANON_LEN = 512  # the canonical path a probe builds from the kernel's dentry chain (probes/identity.h)
PATH_DEPTH = 32  # dentries and mount crossings walked before a path is called truncated
NET_DENY_PORTS = 8  # ports per (sandbox, address) deny entry
WAKEUP_RECORDS = 256  # batched records wake the reader every this many, per CPU
AGG_WINDOW_NS = 1_000_000_000  # repeated identical opens and connects fold into one record per second
STASH_SLOTS = 65536  # syscall-argument slots, by thread id (a power of two)
RINGBUF_PAGES = 4096  # 16 MiB: an exec storm or open storm never waits for user space
RESCUE_PAGES = 64  # 256 KiB: records the kernel refused on the main ring (see probes/events.h)

# Record kinds on the wire. Several map to one event kind (K_OPEN2 -> open).
K_EXEC, K_EXEC_RESULT, K_FORK, K_EXIT = 1, 2, 3, 4
K_SETUID, K_SETGID, K_CAPSET, K_PTRACE, K_MEMFD, K_UNSHARE, K_SETNS, K_MOUNT, K_BPF = range(5, 14)
K_CHDIR, K_FCHDIR = 14, 15
K_OPEN, K_OPEN2, K_UNLINK, K_RENAME, K_CHMOD = 16, 17, 18, 19, 20
K_CONNECT, K_BIND, K_LISTEN, K_ACCEPT, K_DNS, K_SOCKET = 21, 22, 23, 24, 25, 26
K_STASH = 27  # lost counter only: a syscall's arguments overwritten before its exit
K_EXEC_FILE = 28  # the kernel's copy of an exec's path (sched_process_exec), joined to the exec
K_MAX = 32

# Header flag bits.
F_PATH_TRUNC = 1
F_ARG_TRUNC = 2
F_ARGS_TRUNC = 4
F_DENIED = 8
F_UNREADABLE = 16  # a string of the call was not in memory (not faulted in yet): left empty

# file_id.id_flags (probes/identity.h): how the kernel-side identity of a file came out.
ID_RESOLVED = 1  # the path runs from the task's own root
ID_DETACHED = 2  # a pseudo file (memfd:, pipe:, socket:) or a file outside the task's root
ID_TRUNC = 4  # longer than CANON_LEN or PATH_DEPTH: no path sent
ID_UNREADABLE = 8  # a kernel read failed on the way: no path sent
ID_UNLINKED = 16  # the dentry is unhashed: the name was deleted
ID_NOFILE = 32  # no struct file behind the fd (or no executable)
ID_OFF = 64  # the BTF offsets failed their self-test: no identity at all
ID_EXE_UNLINKED = 128  # unlink record: this call unlinked the caller's own running executable

KIND_NAMES: dict[int, str] = {
    K_EXEC: "exec", K_EXEC_RESULT: "exec_result", K_FORK: "fork", K_EXIT: "exit", K_SETUID: "setuid",
    K_SETGID: "setgid", K_CAPSET: "capset", K_PTRACE: "ptrace", K_MEMFD: "memfd",
    K_UNSHARE: "unshare", K_SETNS: "setns", K_MOUNT: "mount", K_BPF: "bpf", K_CHDIR: "chdir",
    K_FCHDIR: "chdir", K_OPEN: "open", K_OPEN2: "open", K_UNLINK: "unlink", K_RENAME: "rename",
    K_CHMOD: "chmod", K_CONNECT: "connect", K_BIND: "bind", K_LISTEN: "listen",
    K_ACCEPT: "accept", K_DNS: "dns", K_STASH: "stash_collision", K_EXEC_FILE: "exec_file",
}

# Event kinds whose records never wake the reader (probes/events.h: submit_batched), and those
# whose records can (at once for the kinds Sensor.set_eager_wakeup names).
BATCHED_KINDS = frozenset({"open", "fork", "exit"})
WAKING_KINDS = frozenset(KIND_NAMES.values()) - BATCHED_KINDS - {"exec_result", "exec_file", "stash_collision"}


def c_defines() -> str:
    """#define lines for every constant above, plus the few kernel ABI values the probes need."""
    names = {k: v for k, v in globals().items() if k.isupper() and isinstance(v, int)}
    names |= {"NAME_MAX_VALUE": 255, "AT_FDCWD_VALUE": -100, "AF_INET_VALUE": 2, "AF_INET6_VALUE": 10,
              "EINPROGRESS_VALUE": 115, "CLONE_THREAD_FLAG": 0x00010000}
    return "".join(f"#define {k} ({v})\n" for k, v in names.items())


class Hdr(ct.Structure):
    _fields_ = [
        ("ts", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("kind", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("uid", ct.c_uint32),
        ("gid", ct.c_uint32),
        ("result", ct.c_int32),
        ("flags", ct.c_uint32),
        ("size", ct.c_uint32),
        ("comm", ct.c_char * 16),
    ]


HDR_SIZE = ct.sizeof(Hdr)


def cstr(raw: bytes) -> str:
    """A NUL-terminated C string field as text (undecodable bytes escaped, never an error)."""
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    return raw.decode("utf-8", "backslashreplace")
