"""gVisor trace points -> monitor Events, shaped exactly like the eBPF sensor's.

gVisor reports thread and thread-group ids in the sandbox's own PID namespace and no parent pid,
so the mapper keeps a small process table per session: sentry/clone gives parent -> child,
container/start and sentry/execve give the executable and argv, and socket()/bind() results give
what a later connect/listen/accept on that fd is (transport, local address).
"""

from __future__ import annotations

import os
import posixpath
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from monitor.event import Event, ProcessFacts
from monitor.gvisor.proto import points_pb2 as pb
from monitor.gvisor.wire import T
from monitor.linux import PTRACE_REQUESTS, namespace_flags, open_flags, parse_sockaddr

AT_FDCWD = -100
CLONE_THREAD = 0x10000
MAX_ANCESTORS = 8
MAX_PROCESSES = 4096  # exited entries are pruned past this (children keep their own ppid)
FOLD_WINDOW_NS = 1_000_000_000
FOLD_KEYS = 8192
NO_ID = 0xFFFFFFFF
_TRANSPORT = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}

# x86_64 syscall numbers traced through raw `syscall/sysno/N/enter` points (gVisor has no
# dedicated point for them, so only their integer arguments are known: no paths, no names).
SYS_LISTEN, SYS_PTRACE, SYS_SETREUID, SYS_SETREGID = 50, 101, 113, 114
SYS_UNLINK, SYS_RENAME, SYS_CHMOD, SYS_FCHMOD = 87, 82, 90, 91
SYS_UNLINKAT, SYS_RENAMEAT, SYS_FCHMODAT, SYS_RENAMEAT2 = 263, 264, 268, 316
SYS_MOUNT, SYS_UNSHARE, SYS_SETNS, SYS_MEMFD_CREATE, SYS_BPF = 165, 272, 308, 319, 321
SYS_SETUID, SYS_SETGID, SYS_SETRESUID, SYS_SETRESGID = 105, 106, 117, 119
RAW_SYSCALLS: dict[int, str] = {
    SYS_LISTEN: "listen", SYS_PTRACE: "ptrace", SYS_SETREUID: "setreuid", SYS_SETREGID: "setregid",
    SYS_UNLINK: "unlink", SYS_UNLINKAT: "unlinkat", SYS_RENAME: "rename", SYS_RENAMEAT: "renameat",
    SYS_RENAMEAT2: "renameat2", SYS_CHMOD: "chmod", SYS_FCHMOD: "fchmod", SYS_FCHMODAT: "fchmodat",
    SYS_MOUNT: "mount", SYS_UNSHARE: "unshare", SYS_SETNS: "setns",
    SYS_MEMFD_CREATE: "memfd_create", SYS_BPF: "bpf",
}
_FILE_CALLS = {SYS_UNLINK: "unlink", SYS_UNLINKAT: "unlink", SYS_RENAME: "rename",
               SYS_RENAMEAT: "rename", SYS_RENAMEAT2: "rename", SYS_CHMOD: "chmod",
               SYS_FCHMOD: "chmod", SYS_FCHMODAT: "chmod"}


@dataclass(slots=True)
class Proc(ProcessFacts):
    uid: int | None = None
    gid: int | None = None
    exited: bool = False
    socket_types: dict[int, int] = field(default_factory=dict)  # fd -> SOCK_* type
    bound: dict[int, dict[str, Any]] = field(default_factory=dict)  # fd -> {address, port}


def _signed_id(value: int) -> int:
    return -1 if value == NO_ID else value


def _result(exit_info: pb.Exit) -> int:
    return -exit_info.errorno if exit_info.errorno else exit_info.result


class EventMapper:
    """Stateful translator for one trace session (one sink connection)."""

    def __init__(self, sandbox_for: Callable[[str], dict[str, Any] | None]) -> None:
        self._sandbox_for = sandbox_for  # called per event: the caller caches what is final
        self.unresolved: dict[str, str] = {}  # event id -> container id the sandbox_for did not know
        self.procs: dict[int, Proc] = {}
        self.container_ids: list[str] = []  # in the order their container/start arrived
        self._exec_paths: dict[int, str] = {}  # tid -> execve's path as the program passed it
        self._recent_opens: dict[tuple[Any, ...], int] = {}
        self.folded = 0  # repeated opens not emitted (see _repeated)
        self._handlers: dict[int, Callable[[Any], list[Event]]] = {
            T.MESSAGE_CONTAINER_START: self._container_start,
            T.MESSAGE_SENTRY_CLONE: self._clone,
            T.MESSAGE_SENTRY_EXEC: self._exec,
            T.MESSAGE_SYSCALL_EXECVE: self._execve_enter,
            T.MESSAGE_SENTRY_TASK_EXIT: self._task_exit,
            T.MESSAGE_SYSCALL_OPEN: self._open,
            T.MESSAGE_SYSCALL_CONNECT: self._connect,
            T.MESSAGE_SYSCALL_SOCKET: self._socket,
            T.MESSAGE_SYSCALL_BIND: self._bind,
            T.MESSAGE_SYSCALL_ACCEPT: self._accept,
            T.MESSAGE_SYSCALL_SETID: self._setid,
            T.MESSAGE_SYSCALL_SETRESID: self._setresid,
            T.MESSAGE_SYSCALL_CHDIR: self._chdir,
            T.MESSAGE_SYSCALL_RAW: self._raw,
        }

    def map(self, message_type: int, message: Message) -> list[Event]:
        handler = self._handlers.get(message_type)
        return handler(message) if handler is not None else []

    # --- process table ------------------------------------------------------------------

    def _proc(self, ctx: pb.ContextData) -> Proc:
        pid = ctx.thread_group_id
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = Proc(pid=pid)
        if ctx.process_name:
            proc.comm = ctx.process_name
        if ctx.cwd:
            proc.cwd = ctx.cwd
        if ctx.HasField("credentials"):
            proc.uid = ctx.credentials.real_uid
            proc.gid = ctx.credentials.real_gid
        return proc

    def _ancestors(self, proc: Proc) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = []
        seen = {proc.pid}
        parent = self.procs.get(proc.ppid)
        while parent is not None and len(chain) < MAX_ANCESTORS and parent.pid not in seen:
            seen.add(parent.pid)
            chain.append({"pid": parent.pid, "executable": parent.executable,
                          "args": list(parent.args), "comm": parent.comm})
            parent = self.procs.get(parent.ppid)
        return chain

    def _process_map(self, proc: Proc, ctx: pb.ContextData) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": proc.pid, "tid": ctx.thread_id or proc.pid}
        if proc.ppid:
            out["ppid"] = proc.ppid
        if proc.uid is not None:
            out["uid"] = proc.uid
            out["gid"] = proc.gid
        if proc.comm:
            out["comm"] = proc.comm
        if proc.executable:
            out["executable"] = proc.executable
            out["args"] = list(proc.args)
        if proc.cwd:
            out["cwd"] = proc.cwd
        ancestors = self._ancestors(proc)
        if ancestors:
            out["ancestors"] = ancestors
        return out

    def _event(self, kind: str, ctx: pb.ContextData, proc: Proc | None = None) -> Event:
        proc = proc or self._proc(ctx)
        sandbox = self._sandbox_for(ctx.container_id)
        event = Event(kind=kind, time_ns=ctx.time_ns or time.time_ns(),
                      process=self._process_map(proc, ctx), sandbox=sandbox, source="gvisor")
        if sandbox is None:
            self.unresolved[event.id] = ctx.container_id  # the sink resolves or times it out
        return event

    def _prune(self) -> None:
        if len(self.procs) > MAX_PROCESSES:
            for pid in [pid for pid, proc in self.procs.items() if proc.exited]:
                del self.procs[pid]

    def _socket_proc(self, proc: Proc, fd: int) -> tuple[int | None, dict[str, Any] | None]:
        """Socket type and bound address of fd, looked up in proc then its ancestors (fork)."""
        sock_type: int | None = None
        bound: dict[str, Any] | None = None
        seen: set[int] = set()
        cur: Proc | None = proc
        while cur is not None and cur.pid not in seen and (sock_type is None or bound is None):
            seen.add(cur.pid)
            if sock_type is None:
                sock_type = cur.socket_types.get(fd)
            if bound is None:
                bound = cur.bound.get(fd)
            cur = self.procs.get(cur.ppid)
        return sock_type, bound

    # --- sentry points ------------------------------------------------------------------

    def _container_start(self, msg: pb.ContainerStart) -> list[Event]:
        ctx = msg.context_data
        if msg.id and msg.id not in self.container_ids:
            self.container_ids.append(msg.id)
        proc = self._proc(ctx)
        if not ctx.container_id and msg.id:
            ctx.container_id = msg.id
        proc.args = list(msg.args)
        proc.executable = msg.args[0] if msg.args else ""
        proc.comm = proc.comm or posixpath.basename(proc.executable)[:15]
        proc.cwd = msg.cwd or proc.cwd
        return [self._event("exec", ctx, proc)]

    def _clone(self, msg: pb.CloneInfo) -> list[Event]:
        ctx = msg.context_data
        parent = self._proc(ctx)
        child_pid = msg.created_thread_group_id
        if msg.flags & CLONE_THREAD or child_pid == parent.pid or not child_pid:
            return []
        self.procs[child_pid] = Proc(pid=child_pid, ppid=parent.pid, executable=parent.executable,
                                     args=list(parent.args), comm=parent.comm, cwd=parent.cwd,
                                     uid=parent.uid, gid=parent.gid)
        self._prune()
        event = self._event("fork", ctx, parent)
        event.detail = {"child_pid": child_pid}
        return [event]

    def _execve_enter(self, msg: pb.Execve) -> list[Event]:
        """Remember the path as passed: sentry/execve reports the symlink-resolved binary, the
        eBPF sensor (and rules written against it) the path the program named."""
        ctx = msg.context_data
        path = msg.pathname
        if path and not path.startswith("/"):
            base = msg.fd_path if msg.fd >= 0 and msg.fd_path else self._proc(ctx).cwd
            path = posixpath.normpath(posixpath.join(base or "/", path))
        if path:
            self._exec_paths[ctx.thread_id] = path
        return []

    def _exec(self, msg: pb.ExecveInfo) -> list[Event]:
        ctx = msg.context_data
        proc = self._proc(ctx)
        proc.executable = self._exec_paths.pop(ctx.thread_id, "") or msg.binary_path
        proc.args = list(msg.argv)
        # The context is taken before the new image's name replaces the old one.
        proc.comm = posixpath.basename(proc.executable)[:15]
        return [self._event("exec", ctx, proc)]

    def _task_exit(self, msg: pb.TaskExit) -> list[Event]:
        ctx = msg.context_data
        if ctx.thread_id and ctx.thread_id != ctx.thread_group_id:
            return []  # a thread, not the process
        proc = self._proc(ctx)
        event = self._event("exit", ctx, proc)
        status = msg.exit_status
        signal_number = status & 0x7F
        if signal_number:
            event.detail = {"code": 128 + signal_number, "signal": signal_number}
        else:
            event.detail = {"code": (status >> 8) & 0xFF}
        proc.exited = True
        return [event]

    # --- syscall points -----------------------------------------------------------------

    def _open(self, msg: pb.Open) -> list[Event]:
        ctx = msg.context_data
        proc = self._proc(ctx)
        path = msg.pathname
        if not path.startswith("/"):
            base = proc.cwd if msg.fd == AT_FDCWD else msg.fd_path
            path = posixpath.join(base or "/", path)
        path = posixpath.normpath(path) if path else path
        result = _result(msg.exit) if msg.HasField("exit") else None
        if self._repeated((proc.pid, path, msg.flags, result), ctx.time_ns):
            return []
        event = self._event("open", ctx, proc)
        names, write = open_flags(msg.flags)
        file: dict[str, Any] = {"path": path, "flags": names, "write": write}
        if msg.flags & os.O_CREAT:
            file["mode"] = msg.mode & 0o7777
        event.file = file
        event.result = result
        return [event]

    def _repeated(self, key: tuple[Any, ...], time_ns: int) -> bool:
        """The same process opening the same path the same way again within FOLD_WINDOW_NS:
        counted in `folded`, not emitted (what the eBPF probes aggregate in the kernel)."""
        last = self._recent_opens.get(key)
        if last is not None and 0 <= time_ns - last < FOLD_WINDOW_NS:
            self.folded += 1
            return True
        if len(self._recent_opens) >= FOLD_KEYS:
            self._recent_opens.clear()
        self._recent_opens[key] = time_ns
        return False

    def _chdir(self, msg: pb.Chdir) -> list[Event]:
        """Track cwd (opens carry no cwd context: asking gVisor for it costs a path walk each)."""
        if msg.HasField("exit") and _result(msg.exit) != 0:
            return []
        proc = self._proc(msg.context_data)
        if msg.pathname:
            proc.cwd = posixpath.normpath(posixpath.join(proc.cwd or "/", msg.pathname))
        elif msg.fd_path:
            proc.cwd = msg.fd_path
        return []

    def _socket(self, msg: pb.Socket) -> list[Event]:
        ctx = msg.context_data
        if msg.HasField("exit") and _result(msg.exit) >= 0:
            self._proc(ctx).socket_types[_result(msg.exit)] = msg.type & 0xF
        return []

    def _net(self, proc: Proc, fd: int, raw_address: bytes, direction: str) -> dict[str, Any]:
        net: dict[str, Any] = {"direction": direction}
        address = parse_sockaddr(raw_address, len(raw_address)) if raw_address else None
        if address:
            net.update(address)
        sock_type, bound = self._socket_proc(proc, fd)
        transport = _TRANSPORT.get(sock_type or 0)
        if transport and net.get("family") != "unix":
            net["transport"] = transport
        if bound and direction == "ingress":
            net["local_address"] = bound.get("address")
            if "port" in bound:
                net["local_port"] = bound["port"]
        return net

    def _connect(self, msg: pb.Connect) -> list[Event]:
        ctx = msg.context_data
        proc = self._proc(ctx)
        event = self._event("connect", ctx, proc)
        event.net = self._net(proc, msg.fd, msg.address, "egress")
        if msg.HasField("exit"):
            event.result = _result(msg.exit)
        events = [event]
        if event.net.get("port") == 53 and event.net.get("family") in ("inet", "inet6"):
            # The resolver's connect() on its DNS socket: gVisor carries no payload, so the
            # query name is unknown; the lookup itself is still reported.
            dns = self._event("dns", ctx, proc)
            dns.net = dict(event.net)
            dns.net.setdefault("transport", "udp")
            events.append(dns)
        return events

    def _bind(self, msg: pb.Bind) -> list[Event]:
        ctx = msg.context_data
        proc = self._proc(ctx)
        event = self._event("bind", ctx, proc)
        net = self._net(proc, msg.fd, msg.address, "ingress")
        event.net = net
        result = _result(msg.exit) if msg.HasField("exit") else 0
        if msg.HasField("exit"):
            event.result = result
        if result == 0 and "address" in net:
            proc.bound[msg.fd] = {k: net[k] for k in ("address", "port") if k in net}
        return [event]

    def _accept(self, msg: pb.Accept) -> list[Event]:
        ctx = msg.context_data
        proc = self._proc(ctx)
        event = self._event("accept", ctx, proc)
        event.net = self._net(proc, msg.fd, msg.address, "ingress")
        if msg.HasField("exit"):
            event.result = _result(msg.exit)
        return [event]

    def _setid(self, msg: pb.Setid) -> list[Event]:
        ctx = msg.context_data
        is_uid = msg.sysno != SYS_SETGID
        event = self._event("setuid" if is_uid else "setgid", ctx)
        event.detail = {"call": "setuid" if is_uid else "setgid",
                        "uid" if is_uid else "gid": _signed_id(msg.id)}
        if msg.HasField("exit"):
            event.result = _result(msg.exit)
        return [event]

    def _setresid(self, msg: pb.Setresid) -> list[Event]:
        ctx = msg.context_data
        is_uid = msg.sysno != SYS_SETRESGID
        prefix = "uid" if is_uid else "gid"
        event = self._event("setuid" if is_uid else "setgid", ctx)
        detail: dict[str, Any] = {"call": "setresuid" if is_uid else "setresgid",
                                  prefix: _signed_id(msg.rid)}
        if msg.eid != NO_ID:
            detail["e" + prefix] = msg.eid
        if msg.sid != NO_ID:
            detail["s" + prefix] = msg.sid
        event.detail = detail
        if msg.HasField("exit"):
            event.result = _result(msg.exit)
        return [event]

    def _raw(self, msg: pb.Syscall) -> list[Event]:
        ctx = msg.context_data
        sysno = msg.sysno
        proc = self._proc(ctx)
        kind, detail, net, file = self._raw_fields(proc, sysno, msg)
        if kind is None:
            return []
        event = self._event(kind, ctx, proc)
        event.detail, event.net, event.file = detail, net, file
        if msg.HasField("exit"):
            event.result = _result(msg.exit)
        return [event]

    def _raw_fields(self, proc: Proc, sysno: int, msg: pb.Syscall) -> tuple[
            str | None, dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
        a1, a2, a3, a4 = msg.arg1, msg.arg2, msg.arg3, msg.arg4
        call = RAW_SYSCALLS.get(sysno)
        if sysno == SYS_PTRACE:
            return "ptrace", {"request": PTRACE_REQUESTS.get(a1, str(a1)), "target_pid": a2}, None, None
        if sysno == SYS_MEMFD_CREATE:
            return "memfd", {"flags": a2}, None, None
        if sysno == SYS_LISTEN:
            net = self._net(proc, a1 & 0xFFFFFFFF, b"", "ingress")
            if "local_address" in net:
                net["address"] = net["local_address"]
                if "local_port" in net:
                    net["port"] = net["local_port"]
            return "listen", None, net, None
        if sysno in (SYS_SETREUID, SYS_SETREGID):
            is_uid = sysno == SYS_SETREUID
            prefix = "uid" if is_uid else "gid"
            detail: dict[str, Any] = {"call": call, prefix: _signed_id(a1 & NO_ID)}
            if a2 & NO_ID != NO_ID:
                detail["e" + prefix] = a2 & NO_ID
            return ("setuid" if is_uid else "setgid"), detail, None, None
        if sysno in _FILE_CALLS:
            # Path arguments are user pointers gVisor does not copy for raw points.
            file: dict[str, Any] = {"write": True}
            if sysno in (SYS_CHMOD, SYS_FCHMOD):
                file["mode"] = a2 & 0o7777
            elif sysno == SYS_FCHMODAT:
                file["mode"] = a3 & 0o7777
            return _FILE_CALLS[sysno], {"call": call}, None, file
        if sysno == SYS_UNSHARE:
            return "unshare", {"call": "unshare", "flags": namespace_flags(a1)}, None, None
        if sysno == SYS_SETNS:
            return "setns", {"call": "setns", "flags": namespace_flags(a2)}, None, None
        if sysno == SYS_MOUNT:
            return "mount", {"flags": a4}, None, None
        if sysno == SYS_BPF:
            return "bpf", {"cmd": a1}, None, None
        return None, None, None, None
