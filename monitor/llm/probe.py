"""Kernel half of the llm source: load probes/ssl.c with bcc, attach its uprobes to every libssl
(or binary exporting SSL_write) that a watched process maps, and decode its ring-buffer records.

The probe object is separate from the sensor's and has its own `watched` map: callers feed it
cgroup ids with `add_cgroup` / `remove_cgroup`.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from monitor.bpf.memory import release_compiler_memory
from monitor.bpf.ringbuf import RingReader
from monitor.checks import Check

PROBE_SOURCE = Path(__file__).resolve().parents[2] / "probes" / "ssl.c"

DIR_WRITE, DIR_READ, DIR_CLOSE = 0, 1, 2
F_TRUNC = 1
LOST_NAMES = ("ssl_write", "ssl_read", "ssl_truncated_calls", "ssl_close", "ssl_copy_failed")

# struct tls_hdr: u64 ts, cgroup_id, ssl; u32 pid, tid, uid, dir, total, offset, len, flags, gid,
# pad; char comm[16]
_HDR = struct.Struct("<QQQIIIIIIIIII16s")

# (symbol, entry program, return program); SSL_free has only an entry program
_PROBES = (("SSL_write", "ssl_write_enter", "ssl_write_return"),
           ("SSL_write_ex", "ssl_write_ex_enter", "ssl_write_ex_return"),
           ("SSL_read", "ssl_read_enter", "ssl_read_return"),
           ("SSL_read_ex", "ssl_read_ex_enter", "ssl_read_ex_return"),
           ("SSL_free", "ssl_free_enter", None))

_LIBSSL_NAME = re.compile(r"/libssl\.so[.\d]*$")


@dataclass(slots=True)
class TlsRecord:
    """One ring-buffer record: a chunk of the plaintext one SSL call moved, or a close."""
    ts_mono: int
    cgroup_id: int
    ssl: int
    pid: int
    tid: int
    uid: int
    gid: int
    direction: int  # DIR_*
    total: int
    offset: int
    data: bytes
    truncated: bool
    comm: str


def decode_record(raw: bytes) -> TlsRecord:
    (ts, cgroup_id, ssl, pid, tid, uid, direction, total, offset, length, flags, gid, _pad,
     comm) = _HDR.unpack_from(raw)
    data = raw[_HDR.size:_HDR.size + length]
    return TlsRecord(ts, cgroup_id, ssl, pid, tid, uid, gid, direction, total, offset, data,
                     bool(flags & F_TRUNC), comm.split(b"\0", 1)[0].decode("utf-8", "replace"))


def system_libssl() -> list[str]:
    """The host's shared libssl files (what most dynamically linked clients map)."""
    found: list[str] = []
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if "libssl.so" in line and "=>" in line:
            path = line.split("=>", 1)[1].strip()
            if os.path.exists(path) and os.path.realpath(path) not in map(os.path.realpath, found):
                found.append(path)
    return found


# Runtimes that link OpenSSL statically and export its symbols (Node: for native addons). The
# coding agents most often run on Node, so it is attached at start, not at its first exec.
STATIC_TLS_RUNTIMES = ("node", "nodejs")


def static_tls_runtimes() -> list[str]:
    """The host's Node binaries (resolved on PATH, deduplicated)."""
    found: list[str] = []
    for name in STATIC_TLS_RUNTIMES:
        path = shutil.which(name)
        if path and os.path.realpath(path) not in found:
            found.append(os.path.realpath(path))
    return found


def ssl_candidates(pid: int) -> list[str]:
    """Objects a process maps that may carry SSL_write: any libssl, and its executable (Node and
    other statically linked programs export OpenSSL's symbols from the binary itself).
    Paths go through /proc/PID/root so a process in another mount namespace resolves."""
    root = f"/proc/{pid}/root"
    paths: list[str] = []
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        paths.append(root + exe)
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and _LIBSSL_NAME.search(parts[5].strip()):
                    path = root + parts[5].strip()
                    if path not in paths:
                        paths.append(path)
    except OSError:
        return []
    return paths


def _file_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class TlsProbe:
    """bcc object for probes/ssl.c. Not thread-safe: one poller."""

    def __init__(self, chunk: int = 16384, max_chunks: int = 64, ringbuf_pages: int = 2048) -> None:
        from bcc import BPF  # imported here: only the kernel path needs bcc

        if chunk & (chunk - 1):
            raise ValueError("chunk must be a power of two")
        defines = (f"#define CHUNK {chunk}\n#define MAX_CHUNKS {max_chunks}\n"
                   f"#define RINGBUF_PAGES {ringbuf_pages}\n")
        self.bpf = BPF(text=(defines + PROBE_SOURCE.read_text()).encode())
        for _sym, enter, ret in _PROBES:  # load now: a verifier error must not pass for "no symbol"
            self.bpf.load_func(enter.encode(), BPF.KPROBE)
            if ret:
                self.bpf.load_func(ret.encode(), BPF.KPROBE)
        release_compiler_memory()
        # read through its own mapping, like the sensor's: a turn of the loop with nothing to
        # read costs two memory loads, not an epoll_wait through ctypes
        self._ring = RingReader(self.bpf[b"tls_events"].map_fd, ringbuf_pages * mmap.PAGESIZE)
        self._checked: dict[tuple[int, int], bool] = {}  # file identity -> has SSL_write
        self.attached_paths: list[str] = []
        self.attach_errors: list[str] = []  # failures other than "this file has no such symbol"
        self.mono_to_wall = time.time_ns() - time.monotonic_ns()

    def attach(self, path: str) -> bool:
        """Attach to one object file once (by device and inode). True if it has SSL_write."""
        key = _file_key(path)
        if key is None:
            return False
        if key in self._checked:
            return self._checked[key]
        attached = 0
        for sym, enter, ret in _PROBES:
            try:
                self.bpf.attach_uprobe(name=path.encode(), sym=sym.encode(), fn_name=enter.encode())
                if ret:
                    self.bpf.attach_uretprobe(name=path.encode(), sym=sym.encode(), fn_name=ret.encode())
                attached += 1
            except Exception as exc:  # bcc raises plain Exception, a missing symbol included
                if "could not determine address of symbol" not in str(exc):
                    self.attach_errors.append(f"{path}: {sym}: {exc}")
                continue
        has_ssl = attached > 0
        self._checked[key] = has_ssl
        if has_ssl:
            self.attached_paths.append(path)
        return has_ssl

    def scan_pid(self, pid: int) -> list[str]:
        """Attach to whatever new SSL-carrying object `pid` maps; returns newly attached paths."""
        before = len(self.attached_paths)
        for path in ssl_candidates(pid):
            self.attach(path)
        return self.attached_paths[before:]

    def add_cgroup(self, cgroup_id: int) -> None:
        self.bpf[b"watched"][ctypes.c_uint64(cgroup_id)] = ctypes.c_uint8(1)

    def remove_cgroup(self, cgroup_id: int) -> None:
        with contextlib.suppress(KeyError):
            del self.bpf[b"watched"][ctypes.c_uint64(cgroup_id)]

    def poll(self, timeout_ms: int) -> list[TlsRecord]:
        records = self._ring.read()
        if not records and timeout_ms > 0:
            self._ring.wait(timeout_ms)
            records = self._ring.read()
        return [decode_record(raw) for raw in records]

    def fileno(self) -> int:
        return self._ring.fileno()

    def lost(self) -> dict[str, int]:
        table = self.bpf[b"tls_lost"]
        return {name: int(sum(table[ctypes.c_int(i)])) for i, name in enumerate(LOST_NAMES)}

    def close(self) -> None:
        self._ring.close()
        self.bpf.cleanup()


def doctor_checks() -> list[Check]:
    """For `monitor doctor`: uprobes, which TLS libraries the llm source attaches at start, and
    (as root) whether probes/ssl.c compiles and attaches."""
    uprobes = os.path.exists("/sys/kernel/tracing/uprobe_events") or \
        os.path.exists("/sys/kernel/debug/tracing/uprobe_events")
    checks = [Check("uprobes (model-call capture)", uprobes, "uprobe_events in tracefs" if uprobes else "absent",
                    "a kernel with CONFIG_UPROBE_EVENTS; mount tracefs")]
    libs = system_libssl()
    checks.append(Check("libssl (model-call capture)", bool(libs), ", ".join(libs) or "none found by ldconfig",
                        "apt-get install libssl3"))
    node = static_tls_runtimes()
    checks.append(Check("node TLS (model-call capture)", bool(node),
                        ", ".join(node) if node else "no node on PATH",
                        "only needed for Node agents (EXTRAS=node scripts/setup.sh)"))
    if os.geteuid() == 0 and uprobes:
        try:
            started = time.monotonic()
            probe = TlsProbe()
            attached = [p for p in libs + node if probe.attach(p)]
            probe.close()
            checks.append(Check("TLS probes compile + attach", bool(attached),
                                f"{time.monotonic() - started:.2f} s; {len(attached)} file(s)"))
        except Exception as exc:
            checks.append(Check("TLS probes compile + attach", False, str(exc)[:200], "run scripts/setup.sh as root"))
    return checks
