"""Enrich: the process table (pid -> binary, args, cwd, parent chain) and sandbox identity.

Lineage comes from fork and exec events; a process first seen mid-life (it existed before its
sandbox was watched, or its fork record was lost) is seeded from /proc. Relative paths are
resolved against the process's cwd (tracked from chdir events), or against the directory fd
the call named (read from /proc at enrich time: a fd closed by then leaves the path relative).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.event import Event, ProcessFacts
from monitor.identity import Identity
from monitor.llm.redact import scrub
from monitor.sandbox import SandboxRegistry

MAX_ANCESTORS = 16
EXITED_KEEP = 4096  # exited processes stay resolvable this long (late events, children)
AT_FDCWD = -100
TABLE_KINDS = frozenset({"fork", "exec", "chdir", "exit"})  # the kinds that change the process table


class Linker(Protocol):
    """Links processes to the model response whose tool call caused them (monitor.llm)."""

    kinds: frozenset[str]  # the event kinds it reads: no other event is handed to it

    def observe(self, event: Event) -> None: ...


@dataclass(slots=True)
class ProcInfo(ProcessFacts):
    caused_by: str | None = None
    start_ns: int = 0
    stdio: dict[str, str] = field(default_factory=dict)  # {"stdin": "socket"|"pipe"|"tty"|"file"|...}
    exe: dict[str, Any] | None = None  # `process.exe`: the identity of the file its image runs from
    view: dict[str, Any] | None = None  # cached `event.process` base, rebuilt after changes
    last: tuple[Any, ...] | None = None  # (view, thread facts, the event.process they gave)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def cmdline(pid: int) -> list[str]:
    """A live process's arguments from /proc ([] when it is gone). Read with os.open/os.read:
    three syscalls, where open() adds an fstat and an ioctl (this runs on exec)."""
    try:
        fd = os.open(f"/proc/{pid}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return []
    finally:
        os.close(fd)
    return [a.decode("utf-8", "backslashreplace") for a in b"".join(chunks).split(b"\0")[:-1]]


def proc_info_from_proc(pid: int) -> ProcInfo | None:
    """What /proc says of a live process (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except (OSError, ValueError):
        return None
    return ProcInfo(pid=pid, ppid=int(fields.get("PPid", "0").strip() or 0),
                    executable=_readlink(f"/proc/{pid}/exe"), args=scrub(cmdline(pid)),
                    comm=fields.get("Name", "").strip(), cwd=_readlink(f"/proc/{pid}/cwd"))


def socket_local_address(pid: int, fd: int) -> tuple[str, int] | None:
    """The local (address, port) of a process's inet socket, from /proc (for listen, and for a
    bind to port 0 whose port the kernel chose)."""
    link = _readlink(f"/proc/{pid}/fd/{fd}")
    if not link.startswith("socket:["):
        return None
    inode = link[8:-1]
    for table, width in (("tcp", 8), ("udp", 8), ("tcp6", 32), ("udp6", 32)):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[9] == inode:
                        hex_addr, hex_port = cols[1].split(":")
                        return _proc_net_address(hex_addr, width), int(hex_port, 16)
        except (OSError, StopIteration, ValueError):
            continue
    return None


def _proc_net_address(hex_addr: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_addr)
    # /proc/net prints each 32-bit word in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words) if width == 8 else ipaddress.IPv6Address(words)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def fd_kind(pid: int, fd: int) -> str | None:
    """What a process's fd is: socket, pipe, tty, file, null (None when unknown or gone)."""
    target = _readlink(f"/proc/{pid}/fd/{fd}")
    if not target:
        return None
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target == "/dev/null":
        return "null"
    if target.startswith(("/dev/pts/", "/dev/tty", "/dev/console")):
        return "tty"
    return "file"


def stdio_of(pid: int) -> dict[str, str]:
    kinds = {name: fd_kind(pid, fd) for fd, name in ((0, "stdin"), (1, "stdout"))}
    return {name: kind for name, kind in kinds.items() if kind}


def resolve(path: str, base: str) -> str:
    if not path or path.startswith("/") or not base:
        return path
    return os.path.normpath(os.path.join(base, path))


class Enricher:
    def __init__(self, registry: SandboxRegistry, linker: Linker | None = None) -> None:
        self.registry = registry
        self.linker = linker
        self.procs: dict[int, ProcInfo] = {}
        self._exited: deque[int] = deque()
        self._bound: dict[tuple[int, int], dict[str, Any]] = {}  # (pid, fd) -> bind's net map
        self.identity = Identity()

    # -- table maintenance ------------------------------------------------------------
    def seed(self, pid: int) -> ProcInfo:
        info = self.procs.get(pid)
        if info is None:
            info = proc_info_from_proc(pid) or ProcInfo(pid=pid)
            self.procs[pid] = info
        return info

    def seed_cgroup(self, cgroup_path: str) -> int:
        """Seed every process already in a cgroup (a container found running). Returns count."""
        try:
            with open(os.path.join(cgroup_path, "cgroup.procs")) as procs:
                pids = [int(line) for line in procs if line.strip()]
        except OSError:
            return 0
        for pid in pids:
            self.seed(pid)
        return len(pids)

    def _forget_later(self, pid: int) -> None:
        self._exited.append(pid)
        while len(self._exited) > EXITED_KEEP:
            self.procs.pop(self._exited.popleft(), None)

    def _update(self, event: Event, info: ProcInfo) -> None:
        kind = event.kind
        if kind == "fork":
            child_pid = (event.detail or {}).get("child_pid", 0)
            self.procs[child_pid] = ProcInfo(pid=child_pid, ppid=info.pid, executable=info.executable,
                                             args=info.args, comm=info.comm, cwd=info.cwd,
                                             caused_by=info.caused_by, start_ns=event.time_ns, exe=info.exe)
        elif kind == "exec" and event.result in (0, None) and event.verdict is None:
            info.executable = resolve(event.process.get("executable", ""), info.cwd)
            args = event.process.get("args", [])
            alive = not (event.hints or {}).get("exited")  # else /proc has nothing (or a new pid)
            if alive and (event.detail or {}).get("args_unreadable"):
                args = cmdline(info.pid) or args  # the new image's own, while it still runs
            info.args = scrub(args)  # a key on a command line stays out
            info.stdio = stdio_of(info.pid) if alive else {}
            info.exe = self.identity.exec_facts(event, info.pid, info.cwd, alive)
            info.comm = os.path.basename(info.executable)[:15]
            info.view = None
        elif kind == "chdir" and event.result == 0:
            hints = event.hints or {}
            if "chdir" in hints:
                info.cwd = resolve(hints["chdir"], info.cwd)
            else:
                info.cwd = _readlink(f"/proc/{info.pid}/cwd") or info.cwd
            info.view = None
        elif kind == "exit":
            self._forget_later(info.pid)
            self.identity.forget(info.pid)
            for key in [k for k in self._bound if k[0] == info.pid]:
                del self._bound[key]

    # -- the stage --------------------------------------------------------------------
    def enrich(self, event: Event) -> None:
        if event.source == "gvisor":
            # pids are the sandbox's own namespace: /proc here would describe host processes.
            # The gVisor mapper fills process and sandbox from the trace session itself.
            return
        if event.sandbox is None and event.cgroup_id:
            sandbox = self.registry.by_cgroup(event.cgroup_id)
            if sandbox is not None:
                event.sandbox = sandbox.identity()
        pid = event.process.get("pid")
        if not pid:
            return
        info = self.seed(pid)
        if event.kind in TABLE_KINDS:
            self._update(event, info)
        file = event.file
        if file is not None:
            if not (file.get("path", "").startswith("/") and "new_path" not in file):
                self._resolve_file(event, info)  # a relative path (most paths are absolute)
            self.identity.file_facts(event)
        elif event.kind in ("listen", "bind") and event.net is not None:
            self._resolve_local(event)
        if event.net is not None and event.net.get("family") == "unix":
            self.identity.unix_path(event.net, self._lineage_pids(info))
        if self.linker is not None and event.kind in self.linker.kinds:
            event.process.setdefault("ancestors", self._ancestors(info))  # the linker needs lineage
            self.linker.observe(event)  # may set event.process["caused_by"]
        caused_by = event.process.get("caused_by")
        if caused_by and caused_by != info.caused_by:
            info.caused_by = caused_by  # inherited by the children it forks
            info.view = None
        event.process = self._process_view(event, info)

    def _resolve_local(self, event: Event) -> None:
        """listen carries no address: take it from /proc, else from the socket's bind."""
        net = event.net or {}
        fd = (event.hints or {}).get("fd")
        key = (event.process["pid"], fd if fd is not None else -1)
        if not (event.kind == "bind" and net.get("port")):  # listen, or a bind to port 0
            local = socket_local_address(key[0], key[1]) if fd is not None else None
            if local is not None:
                net["address"], net["port"] = local
                net.setdefault("family", "inet6" if ":" in local[0] else "inet")
            elif event.kind == "listen" and key in self._bound:
                for name in ("family", "address", "port"):
                    net.setdefault(name, self._bound[key][name])
        if event.kind == "bind" and net.get("port"):
            self._bound[key] = dict(net)

    def _resolve_file(self, event: Event, info: ProcInfo) -> None:
        hints = event.hints or {}
        file = event.file or {}
        for key, fd_key in (("path", "dfd"), ("new_path", "dfd2")):
            path = file.get(key)
            if path is None or path.startswith("/"):
                continue
            dfd = hints.get(fd_key, AT_FDCWD)
            base = info.cwd if dfd == AT_FDCWD else _readlink(f"/proc/{info.pid}/fd/{dfd}")
            file[key] = resolve(path, base) if path else base

    def _process_view(self, event: Event, info: ProcInfo) -> dict[str, Any]:
        """`event.process`: the process's view plus this event's thread facts. Events with the
        same facts share one dict (read-only from here on): the journal then stores it once."""
        if info.view is None:
            view: dict[str, Any] = {"pid": info.pid, "ppid": info.ppid, "comm": info.comm,
                                    "executable": info.executable, "args": info.args,
                                    "cwd": info.cwd, "ancestors": self._ancestors(info)}
            if info.caused_by:
                view["caused_by"] = info.caused_by
            if info.exe is not None:
                view["exe"] = info.exe
            view.update(info.stdio)
            info.view = view
        raw = event.process
        if event.kind == "exec" and not (event.result in (0, None) and event.verdict is None):
            # a failed or denied exec: the image did not change, report what was attempted
            process = self._thread_view(info.view, raw, None)
            process["executable"] = resolve(raw.get("executable", ""), info.cwd)
            process["args"] = scrub(raw.get("args", []))
            return process
        comm = raw.get("comm") if event.kind != "exec" else None
        if comm == info.comm:
            comm = None  # the usual case: the exec event and the ones after it share one dict
        facts = (raw.get("tid", info.pid), raw.get("uid"), raw.get("gid"), comm)
        last = info.last
        if last is not None and last[0] is info.view and last[1] == facts:
            return last[2]
        process = self._thread_view(info.view, raw, comm)
        info.last = (info.view, facts, process)
        return process

    @staticmethod
    def _thread_view(view: dict[str, Any], raw: dict[str, Any], comm: str | None) -> dict[str, Any]:
        process = dict(view)
        process["tid"] = raw.get("tid", view["pid"])
        if "uid" in raw:
            process["uid"] = raw["uid"]
            process["gid"] = raw["gid"]
        if comm:
            process["comm"] = comm
        return process

    def _lineage_pids(self, info: ProcInfo, depth: int = 4) -> list[int]:
        """The process and its nearest known ancestors, parent first."""
        pids, ppid = [info.pid], info.ppid
        while ppid and len(pids) <= depth:
            parent = self.procs.get(ppid)
            if parent is None:
                break
            pids.append(parent.pid)
            ppid = parent.ppid
        return pids

    def _ancestors(self, info: ProcInfo) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        ppid = info.ppid
        while ppid and len(chain) < MAX_ANCESTORS:
            parent = self.procs.get(ppid)
            if parent is None:
                break
            chain.append({"pid": parent.pid, "executable": parent.executable, "args": parent.args,
                          "comm": parent.comm})
            ppid = parent.ppid
        return chain
