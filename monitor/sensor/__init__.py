"""The eBPF event source: compiles probes/*.c with bcc, attaches them, keeps the watched-cgroup
map, drains the ring buffer and decodes records into Events (monitor/sensor/decode.py).

Every probe checks the watched-cgroup map first, so host processes never leave the kernel.
Records lost to a full ring buffer are counted per kind in the kernel (`lost`), and records
user space could not decode are counted too; `lost()` reports both, never silently zero.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import mmap
import os
import struct
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from monitor.bpf.memory import release_compiler_memory
from monitor.bpf.ringbuf import RingReader, walk
from monitor.event import Event
from monitor.sandbox import Sandbox
from monitor.sensor import btf, wire
from monitor.sensor.decode import RecordDecoder
from monitor.source import Source

PROBES_DIR = Path(__file__).resolve().parents[2] / "probes"
PROBE_FILES = ("events.h", "identity.h", "process.c", "file.c", "walk.c", "net.c", "netdeny.c")
# (program, attach type) for the in-kernel network deny, attached per sandbox cgroup
NET_DENY_HOOKS = (("deny_connect4", 10), ("deny_connect6", 11), ("deny_sendmsg4", 14), ("deny_sendmsg6", 15))


try:  # the ring walk in C (monitor/sensor/_fastdecode.c), several times faster than Python's
    from monitor.sensor._fastdecode import walk as native_walk
except ImportError:
    native_walk = walk


class SensorError(RuntimeError):
    pass


def bpf_source(probe_dir: Path = PROBES_DIR, offsets: dict[str, int] | None = None) -> str:
    """The probes' C: wire constants, the kernel struct offsets (zeros when the BTF gave none:
    the probes then send no identity), then the probe files."""
    offsets = offsets if offsets is not None else dict.fromkeys(btf.FIELDS, 0)
    return wire.c_defines() + btf.c_defines(offsets) + "".join((probe_dir / name).read_text() for name in PROBE_FILES)


def kernel_offsets() -> tuple[dict[str, int] | None, str]:
    """(offsets, "") from the running kernel's BTF, or (None, why not)."""
    try:
        return btf.kernel_offsets(), ""
    except btf.BTFError as exc:
        return None, str(exc)


class Sensor(Source):
    name = "ebpf"

    def __init__(self, probe_dir: Path = PROBES_DIR) -> None:
        try:
            from bcc import BPF  # imported late: pure-Python units run without bcc
        except ImportError as exc:
            raise SensorError("bcc is not importable: install python3-bpfcc (scripts/setup.sh)") from exc
        started = time.monotonic()
        offsets, self.identity_status = kernel_offsets()
        try:
            self.bpf = BPF(text=bpf_source(probe_dir, offsets), cflags=["-Wno-macro-redefined", "-w"])
        except Exception as exc:
            raise SensorError(f"BPF compile/attach failed: {exc}") from exc
        if offsets is not None:
            self.identity_status = self._check_offsets()
        self.attach_seconds = time.monotonic() - started
        release_compiler_memory()
        self._watched = self.bpf["watched"]
        self._lost = self.bpf["lost"]
        self._folded = self.bpf["folded"]
        self._ring = RingReader(self.bpf["events"].map_fd, wire.RINGBUF_PAGES * mmap.PAGESIZE, native_walk)
        self._rescue = RingReader(self.bpf["rescue"].map_fd, wire.RESCUE_PAGES * mmap.PAGESIZE, native_walk)
        self._ring.wake_on(self.bpf["rescue"].map_fd)  # a rescued exec result wakes us too
        self.rescued = 0  # records the kernel refused on the main ring and took on the rescue ring
        self.eager_kinds: list[str] = []  # event kinds whose records wake the reader at once
        self.decoder = RecordDecoder(time.time_ns() - time.monotonic_ns())
        self._net_attached: dict[str, tuple[int, list[tuple[object, int]]]] = {}

    def _check_offsets(self) -> str:
        """Turn the probes' kernel struct reads on once they read what the helpers and /proc say:
        this process's tgid, its parent's, its executable's inode and path (the walk), through the
        BTF offsets. Returns "" when on, else why they stay off."""
        from bcc import BPF

        walker = self.bpf.load_func("identity_walk", BPF.TRACEPOINT)
        self.bpf["walkers"][ct.c_int(0)] = ct.c_int(walker.fd)
        table = self.bpf["btf_selftest"]
        probe = table[ct.c_int(0)]
        probe.want_pid, probe.done = os.getpid(), 0
        table[ct.c_int(0)] = probe
        os.getppid()  # the self-test runs on this call's tracepoint
        got = table[ct.c_int(0)]
        exe = f"/proc/{os.getpid()}/exe"
        want = (os.getpid(), os.getpid(), os.getppid(), os.stat(exe).st_ino, os.readlink(exe))
        seen = (got.helper_tgid, got.read_tgid, got.parent_tgid, got.exe_ino,
                bytes(got.exe_path)[: max(got.exe_path_len - 1, 0)].decode("utf-8", "replace"))
        if not got.done or seen != want:
            return f"BTF offsets failed their self-test (read {seen}, expected {want}): identity off"
        self.bpf["identity_on"][ct.c_int(0)] = ct.c_uint32(1)
        return ""

    @property
    def identity_on(self) -> bool:
        return not self.identity_status

    # -- watched cgroups ---------------------------------------------------------------
    def watch(self, sandbox: Sandbox) -> None:
        self.add_cgroup(sandbox.cgroup_id)

    def unwatch(self, sandbox: Sandbox) -> None:
        self.remove_cgroup(sandbox.cgroup_id)

    def add_cgroup(self, cgroup_id: int) -> None:
        self._watched[ct.c_uint64(cgroup_id)] = ct.c_uint8(1)

    def remove_cgroup(self, cgroup_id: int) -> None:
        with contextlib.suppress(KeyError):
            del self._watched[ct.c_uint64(cgroup_id)]

    def set_eager_wakeup(self, kinds: Iterable[str]) -> None:
        """Records of these event kinds wake the reader at once, not only when nothing unread
        precedes them (probes/events.h): the kinds a rule kills or freezes on from user space.
        Open, fork and exit records never wake it: a rule on them turns on every kind that can
        (its violation is acted on at the process's next exec, connect...). Empty: all off."""
        names = set(kinds)
        if names & wire.BATCHED_KINDS:
            names |= wire.WAKING_KINDS
        names &= wire.WAKING_KINDS
        table = self.bpf["eager_wakeup"]
        for kind, name in wire.KIND_NAMES.items():
            table[ct.c_int(kind)] = ct.c_uint32(name in names)
        self.eager_kinds = sorted(names)

    def stats(self) -> dict[str, object]:
        """For the run's summary: which kinds wake the reader at once, and records the rescue
        ring took."""
        return {"wakeup": "eager" if self.eager_kinds else "batched", "eager_kinds": self.eager_kinds,
                "rescued": self.rescued,
                "identity": {"kernel": self.identity_status or "btf offsets checked",
                             "unresolved": self.decoder.unresolved}}

    # -- in-kernel exec deny (see probes/process.c) ----------------------------------------
    def deny_exec(self, cgroup_id: int, path: str, prefix: bool = False) -> None:
        table = self.bpf["exec_deny"]
        key = table.Key()
        raw = path.encode()[: wire.DENY_PATH_LEN - 1]
        key.prefixlen = 64 + 8 * (len(raw) + (0 if prefix else 1))
        ct.memmove(key.cgroup, struct.pack("<Q", cgroup_id), 8)
        # key.path reads back as a bytes copy (c_char array): write through the address
        ct.memmove(ct.addressof(key) + type(key).path.offset, raw, len(raw))
        table[key] = ct.c_uint32(1)

    def deny_net(self, cgroup_path: str, cgroup_id: int, cidr: str, port: int | None) -> None:
        """Refuse connects (and UDP sends) from one sandbox to a CIDR, on one port or all."""
        import ipaddress

        from bcc import BPF

        network = ipaddress.ip_network(cidr, strict=False)
        table = self.bpf["deny4" if network.version == 4 else "deny6"]
        key = table.Key()
        key.prefixlen = 64 + network.prefixlen
        ct.memmove(key.cgroup, struct.pack("<Q", cgroup_id), 8)
        ct.memmove(key.addr, network.network_address.packed, len(network.network_address.packed))
        rule = table.get(key) or table.Leaf()
        if port is None:
            rule.any_port = 1
        elif port not in list(rule.ports):
            free = [i for i, p in enumerate(rule.ports) if p == 0]
            if not free:
                rule.any_port = 1  # more ports than slots: deny the whole address (safer)
            else:
                rule.ports[free[0]] = port
        table[key] = rule
        self._attach_net_deny(cgroup_path, BPF)

    def _attach_net_deny(self, cgroup_path: str, bpf_cls: type) -> None:
        if cgroup_path in self._net_attached:
            return
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        attached = []
        for name, attach_type in NET_DENY_HOOKS:
            fn = self.bpf.load_func(name, bpf_cls.CGROUP_SOCK_ADDR, attach_type=attach_type)
            bpf_cls.attach_func(fn, fd, attach_type)
            attached.append((fn, attach_type))
        self._net_attached[cgroup_path] = (fd, attached)

    def detach_net_deny(self, cgroup_path: str) -> None:
        from bcc import BPF

        fd, attached = self._net_attached.pop(cgroup_path, (None, []))
        if fd is None:
            return
        for fn, attach_type in attached:
            with contextlib.suppress(Exception):  # the cgroup is gone: so is the attachment
                BPF.detach_func(fn, fd, attach_type)
        os.close(fd)

    def clear_denies(self, cgroup_id: int) -> None:
        table = self.bpf["exec_deny"]
        for key in list(table.keys()):
            if struct.unpack("<Q", bytes(key.cgroup))[0] == cgroup_id:
                del table[key]

    # -- ring buffer ---------------------------------------------------------------------
    def poll(self, timeout_ms: int = 100) -> list[Event]:
        self._ring.wait(timeout_ms)
        return self.decoder.decode_batch(self._read())  # batched records arrive without a wakeup

    def fileno(self) -> int:
        return self._ring.fileno()

    def drain(self) -> list[Event]:
        """Everything already in the ring buffers, without waiting; pending execs flushed."""
        events: list[Event] = []
        while records := self._read():
            events.extend(self.decoder.decode_batch(records))
        return events + self.decoder.flush()

    def _read(self) -> list[bytes]:
        rescued = self._rescue.read()  # two loads when empty, as it nearly always is
        if not rescued:
            return self._ring.read()
        self.rescued += len(rescued)
        return rescued + self._ring.read()  # older than what the main ring holds now

    # -- accounting ----------------------------------------------------------------------
    def lost(self) -> dict[str, int]:
        lost = _per_kind(self._lost)
        if self.decoder.errors:
            lost["decode_error"] = self.decoder.errors
        return lost

    def folded(self) -> dict[str, int]:
        """Records counted instead of reported, by kind: folded in the kernel into an earlier one
        (its detail.repeats), and execs that failed with ENOENT on execvp's walk along $PATH."""
        folded = _per_kind(self._folded)
        if self.decoder.exec_enoent:
            folded["exec_enoent"] = self.decoder.exec_enoent
        return folded

    def close(self) -> None:
        for path in list(self._net_attached):
            self.detach_net_deny(path)
        detach_tracepoints(self.bpf)
        self._ring.close()
        self._rescue.close()
        self.bpf.cleanup()


def detach_tracepoints(bpf: object) -> None:
    """Detach every tracepoint of a bcc BPF object. Each detach waits for an RCU grace period, so
    one after the other they add up to seconds; side by side (ctypes drops the GIL) they take
    about one grace period."""
    tracepoints = list(bpf.tracepoint_fds)  # type: ignore[attr-defined]
    if tracepoints:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(tracepoints)) as pool:
            list(pool.map(bpf.detach_tracepoint, tracepoints))  # type: ignore[attr-defined]


def _per_kind(per_cpu_counters: object) -> dict[str, int]:
    """A per-CPU array of counters indexed by wire kind -> {kind name: total} (zeros left out)."""
    totals: Counter[str] = Counter()
    for key, per_cpu in per_cpu_counters.items():  # type: ignore[attr-defined]
        total = sum(per_cpu)
        if total:
            totals[wire.KIND_NAMES.get(key.value, str(key.value))] += total
    return dict(totals)


def probe_names(probe_dir: Path = PROBES_DIR) -> list[str]:
    """The tracepoints the probes attach to (for `monitor doctor`)."""
    import re

    text = "".join((probe_dir / name).read_text() for name in PROBE_FILES)
    names = re.findall(r"TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", text)
    # each SYS_/FILE_/RENAME_/NET_PROBE(call, ...) line attaches sys_enter_call and sys_exit_call
    for call in re.findall(r"^(?:SYS|FILE|RENAME|NET)_PROBE\((\w+),", text, flags=re.M):
        names += [("syscalls", f"sys_enter_{call}"), ("syscalls", f"sys_exit_{call}")]
    return sorted({f"{cat}:{ev}" for cat, ev in names})


__all__ = ["Sensor", "SensorError", "bpf_source", "detach_tracepoints", "probe_names"]
