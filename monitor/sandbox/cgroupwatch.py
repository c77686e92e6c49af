"""Early discovery of Docker containers: their cgroup-v2 directories, seen as runc makes them."""

from __future__ import annotations

import ctypes
import os
import re
import select
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CgroupRef:
    path: str
    id: int  # inode of the directory = bpf_get_current_cgroup_id() of its processes


def log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_IN_CREATE, _IN_DELETE, _IN_DELETE_SELF, _IN_ISDIR = 0x100, 0x200, 0x400, 0x40000000
_INOTIFY_EVENT = struct.Struct("iIII")
# Where runc puts a container's cgroup: <root>/docker/<id> (cgroupfs driver) or
# <root>/system.slice/docker-<id>.scope (systemd driver).
_PARENT_DIRS = ("docker", "system.slice")
_CONTAINER_DIR = re.compile(r"^(?:docker-)?([0-9a-f]{64})(?:\.scope)?$")


def container_id_of_cgroup_dir(name: str) -> str | None:
    match = _CONTAINER_DIR.match(name)
    return match.group(1) if match else None


class CgroupDirWatch:
    """inotify on the cgroup-v2 parents Docker's runtimes use: a container's directory appears
    when runc creates the container, before its first instruction runs, so the probes can watch
    it from the start rather than from the engine's `start` event (later, too late for a
    short `docker run`)."""

    def __init__(self, root: str, on_created: Callable[[str, CgroupRef], None],
                 on_deleted: Callable[[str], None], log: Callable[[str], None] = log_stderr) -> None:
        self.root = root
        self.on_created = on_created
        self.on_deleted = on_deleted
        self.log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = -1
        self._watches: dict[int, str] = {}  # wd -> directory
        # container dirs reported, by path -> inode: a dir made just as its parent's watch is added
        # is both in the parent's scan and in an inotify event, and is reported once
        self._reported: dict[str, int] = {}

    def start(self) -> None:
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            self.log(f"docker: inotify unavailable ({os.strerror(ctypes.get_errno())}); containers "
                     "are watched from the engine's start event")
            return
        self._add_watch(self.root)
        for parent in _PARENT_DIRS:
            self._add_watch(os.path.join(self.root, parent))
        self._thread = threading.Thread(target=self._run, name="docker-cgroup-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _add_watch(self, path: str) -> None:
        if not os.path.isdir(path) or path in self._watches.values():
            return
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF)
        if wd >= 0:
            self._watches[wd] = path

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                continue
            except OSError:
                return
            for wd, mask, name in self._parse(data):
                try:
                    self._handle(wd, mask, name)
                except Exception as exc:  # never let one directory stop the watch
                    self.log(f"docker: cgroup watch: {type(exc).__name__}: {exc}")

    @staticmethod
    def _parse(data: bytes) -> list[tuple[int, int, str]]:
        out, offset = [], 0
        while offset + _INOTIFY_EVENT.size <= len(data):
            wd, mask, _cookie, length = _INOTIFY_EVENT.unpack_from(data, offset)
            raw = data[offset + _INOTIFY_EVENT.size: offset + _INOTIFY_EVENT.size + length]
            out.append((wd, mask, raw.rstrip(b"\0").decode(errors="replace")))
            offset += _INOTIFY_EVENT.size + length
        return out

    def _handle(self, wd: int, mask: int, name: str) -> None:
        directory = self._watches.get(wd)
        if directory is None:
            return
        if mask & _IN_DELETE_SELF:
            self._watches.pop(wd, None)
            return
        if not mask & _IN_ISDIR:
            return
        path = os.path.join(directory, name)
        if directory == self.root:
            if mask & _IN_CREATE and name in _PARENT_DIRS:
                self._add_watch(path)  # the first container on this host made its parent...
                for child in sorted(os.listdir(path)):  # ...and maybe its own dir already
                    self._handle_child(path, _IN_CREATE | _IN_ISDIR, child)
            return
        self._handle_child(directory, mask, name)

    def _handle_child(self, directory: str, mask: int, name: str) -> None:
        path = os.path.join(directory, name)
        container_id = container_id_of_cgroup_dir(name)
        if container_id is None:
            return
        if mask & _IN_CREATE:
            try:
                inode = os.stat(path).st_ino
            except OSError:
                return  # gone already
            if self._reported.get(path) == inode:
                return
            self._reported[path] = inode
            self.on_created(container_id, CgroupRef(path=path, id=inode))
        elif mask & _IN_DELETE:
            self._reported.pop(path, None)
            self.on_deleted(container_id)


