"""Identity facts enrich adds from what the kernel said of a file (monitor/sensor: canonical path,
device, inode) so rules can judge what a file *is*, not what it was called:

- `file.path` of a hard link to a protected file is the protected file's path (the name opened
  stays in `file.hardlink`): the shadow file through `ln /etc/shadow /tmp/x` is the shadow file.
- `file.is_running_executable` on an unlink of a file some process of the sandbox runs from
  (the probe flags a process unlinking its own executable in the kernel; the others come from
  the process table here).
- `process.exe` on every event of a process after its exec: the file its image runs from
  {path, dev, ino, resolved, deleted, memfd, fd_exec, temp, writable, written_in_sandbox, identity,
  script}: `writable` when users other than root can write its directory, `written_in_sandbox`
  when a process of the same sandbox opened that very file (by inode) for writing before: `identity` names
  the known shell or interpreter the file is (by device + inode, or by content hash for a copy
  under another name; cached by device + inode + mtime, so an exec storm of one binary pays one
  stat each and no hash), `script` the script an interpreter runs (a #! file, or its first
  argument).
- unix socket paths canonical like files (realpath inside the process's root, in user space: a
  symlink swapped between the connect and this lookup is a race left open).
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import time
from typing import Any

from monitor.sensor import wire

PROTECTED_PATHS = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers",
                   "/run/docker.sock", "/var/run/docker.sock", "/run/containerd/containerd.sock")
PROTECTED_GLOBS = ("/root/.ssh/id_*", "/home/*/.ssh/id_*", "/etc/ssh/ssh_host_*_key", "/root/.aws/credentials",
                   "/home/*/.aws/credentials", "/root/.kube/config", "/home/*/.kube/config",
                   "/root/.docker/config.json", "/home/*/.docker/config.json")
WRITTEN_KEEP = 65536  # files (by inode) a sandbox opened for write, remembered for `written_in_sandbox`
PROTECTED_REFRESH_S = 30.0  # a protected file rewritten (a new inode) is found again within this

# Programs known by identity: a copy or link of one of these under any name is still it.
SHELLS = ("sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "busybox")
INTERPRETERS = ("python3", "python", "perl", "ruby", "node", "php", "lua", "tclsh", "Rscript")
_KNOWN_DIRS = ("/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin")
TEMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/", "/run/shm/")
_HASH_CHUNK = 1 << 20


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def resolve_in_root(root: str, path: str, max_links: int = 40) -> str | None:
    """`path` with symlinks, `.` and `..` resolved as a process whose root is `root` sees it (a
    symlink's absolute target is taken inside that root, never the monitor's); None when a link
    loops or the root cannot be read. Components that do not exist are kept as they are."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink(root + "/" + "/".join(done + [part]))
        except OSError:
            done.append(part)  # not a symlink, or absent
            continue
        links += 1
        if links > max_links:
            return None
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p] + parts
    if not os.path.exists(root):
        return None
    return "/" + "/".join(done)


class ProtectedFiles:
    """(device, inode) -> path of the files the pack protects by name (stat'ed now and again)."""

    def __init__(self, paths: tuple[str, ...] = PROTECTED_PATHS, globs: tuple[str, ...] = PROTECTED_GLOBS) -> None:
        self.paths, self.globs = paths, globs
        self._by_inode: dict[tuple[int, int], str] = {}
        self._loaded = 0.0

    def lookup(self, dev: int, ino: int) -> str | None:
        if time.monotonic() - self._loaded > PROTECTED_REFRESH_S:
            self._load()
        return self._by_inode.get((dev, ino))

    def _load(self) -> None:
        names = list(self.paths) + [p for pattern in self.globs for p in glob.glob(pattern)]
        by_inode = {}
        for name in names:
            st = _stat(name)
            if st is not None:
                by_inode.setdefault((st.st_dev, st.st_ino), name)
        self._by_inode, self._loaded = by_inode, time.monotonic()


class KnownPrograms:
    """Which shell or interpreter a file is: by (device, inode) of the real ones, else by content
    (a copy under another name), hashed only when the size matches one of them."""

    def __init__(self) -> None:
        self._by_inode: dict[tuple[int, int], str] = {}
        self._by_size: dict[int, list[tuple[str, str]]] = {}  # size -> [(path, name)]
        self._hashes: dict[str, str] = {}  # path of a known program -> sha256 (lazily)
        self._cache: dict[tuple[int, int, int], str] = {}  # (dev, ino, mtime_ns) -> name or ""
        for name in SHELLS + INTERPRETERS:
            for folder in _KNOWN_DIRS:
                path = os.path.join(folder, name)
                st = _stat(path)
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue
                self._by_inode.setdefault((st.st_dev, st.st_ino), name)
                sizes = self._by_size.setdefault(st.st_size, [])
                if all(os.path.realpath(path) != os.path.realpath(p) for p, _ in sizes):
                    sizes.append((path, name))

    def name_of(self, dev: int, ino: int, path: str) -> str:
        """The known program a file is ("" when none); `path` is where to read it (a path, or
        /proc/PID/exe for a deleted file or a memfd)."""
        known = self._by_inode.get((dev, ino))
        if known is not None:
            return known
        st = _stat(path)
        if st is None or (st.st_dev, st.st_ino) != (dev, ino) and not path.startswith("/proc/"):
            return ""
        key = (dev, ino, st.st_mtime_ns)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._by_content(path, st.st_size)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def _by_content(self, path: str, size: int) -> str:
        candidates = self._by_size.get(size)
        if not candidates:
            return ""
        digest = _sha256(path)
        for known_path, name in candidates:
            if known_path not in self._hashes:
                self._hashes[known_path] = _sha256(known_path) or ""
            if digest and self._hashes[known_path] == digest:
                return name
        return ""


def _writable_by_users(st: os.stat_result) -> bool:
    """A directory someone other than root can write to (world or group writable, or a user's)."""
    return bool(st.st_mode & (stat.S_IWOTH | stat.S_IWGRP)) or (st.st_uid != 0 and bool(st.st_mode & stat.S_IWUSR))


class Identity:
    """The identity facts of one Enricher (see the module's comment)."""

    def __init__(self) -> None:
        self.protected = ProtectedFiles()
        self.programs = KnownPrograms()
        self._running: dict[str, set[int]] = {}  # canonical executable path -> live pids
        self._exe_of: dict[int, str] = {}
        self._dir_writable_cache: dict[str, tuple[float, bool]] = {}  # folder -> (when, writable)
        self._written: dict[tuple[int, int, int], None] = {}  # (cgroup id, dev, ino) opened for write

    # -- files ------------------------------------------------------------------------------
    def file_facts(self, event: Any) -> None:
        """A file event: a protected file reached through another name; an unlink of a file a
        process of the sandbox runs from."""
        file = event.file
        ino = file.get("ino")
        if ino is not None and file.get("write") and event.kind == "open":
            self._note_written((event.cgroup_id, file["dev"], ino))
        if ino is not None:
            protected = self.protected.lookup(file["dev"], ino)
            if protected is not None and protected != file["path"]:
                file["hardlink"] = file["path"]
                file["path"] = protected
        if (event.kind == "unlink" and event.result == 0 and not file.get("is_running_executable")
                and self._running.get(file.get("path", ""))):
            file["is_running_executable"] = True

    def _note_written(self, key: tuple[int, int, int]) -> None:
        written = self._written
        written.pop(key, None)
        written[key] = None
        if len(written) > WRITTEN_KEEP:
            del written[next(iter(written))]  # the oldest

    def unix_path(self, net: dict[str, Any], pids: list[int]) -> None:
        """A unix socket path as the file it names (symlinks and `..` resolved inside the root of
        the first of `pids` still running: the process, else its nearest living ancestor, which
        shares its root unless it chroots); the path as given stays in `requested`."""
        address = net.get("address", "")
        if not address.startswith("/"):
            return  # abstract (@name), or relative to a cwd this cannot see without a race
        for pid in pids:
            real = resolve_in_root(f"/proc/{pid}/root", address)
            if real is not None:
                break
        else:
            return  # they are all gone, or a symlink loop
        if real != address:
            net["requested"] = address
            net["address"] = real

    # -- executables --------------------------------------------------------------------------
    def exec_facts(self, event: Any, pid: int, cwd: str, alive: bool) -> dict[str, Any] | None:
        """`process.exe` for a successful exec, from the kernel's identity of its file."""
        raw = (event.hints or {}).get("exe")
        if raw is None:
            return None
        dev, ino, nlink, id_flags, canonical = raw
        memfd = bool(id_flags & wire.ID_DETACHED) and canonical.startswith("/memfd:")
        resolved = bool(id_flags & wire.ID_RESOLVED)
        kernel_path = event.process.get("executable", "")
        exe: dict[str, Any] = {"path": canonical if (resolved or memfd) else "", "dev": dev, "ino": ino,
                               "deleted": bool(id_flags & wire.ID_UNLINKED) or (nlink == 0 and not memfd),
                               "memfd": memfd, "fd_exec": kernel_path.startswith("/dev/fd/"),
                               "resolved": resolved}
        path = exe["path"]
        exe["temp"] = memfd or exe["deleted"] or path.startswith(TEMP_DIRS)
        exe["written_in_sandbox"] = (event.cgroup_id, dev, ino) in self._written
        exe["writable"] = self._dir_writable(os.path.dirname(path)) if resolved else True
        read_from = f"/proc/{pid}/exe" if (alive and (memfd or exe["deleted"] or not resolved)) else path
        name = self.programs.name_of(dev, ino, read_from) if read_from else ""
        if name:
            exe["identity"] = name
        script = self._script(kernel_path, canonical, dev, ino, name, event.process.get("args", []), cwd)
        if script:
            exe["script"] = script
        self._note_running(pid, path if resolved else "")
        return exe

    def _script(self, kernel_path: str, canonical: str, dev: int, ino: int, name: str, args: list[str],
                cwd: str) -> str:
        """The script an interpreter runs: the #! file the kernel was asked to run, or for a known
        interpreter its first argument that is not an option ("-c": inline, "-": stdin)."""
        if kernel_path and not kernel_path.startswith(("/dev/fd/", "/proc/")):  # an fd: no script
            asked = os.path.normpath(os.path.join(cwd, kernel_path)) if not kernel_path.startswith("/") else kernel_path
            if asked != canonical:
                st = _stat(asked)
                if st is not None and (st.st_dev, st.st_ino) != (dev, ino):
                    return asked
        if name in SHELLS or name in INTERPRETERS:
            for arg in args[1:]:
                if arg in ("-c", "-e", "-m", "-"):
                    return arg
                if not arg.startswith("-"):
                    return os.path.normpath(os.path.join(cwd, arg))
        return ""

    def _dir_writable(self, folder: str) -> bool:
        now = time.monotonic()
        cached = self._dir_writable_cache.get(folder)
        if cached is not None and now - cached[0] < PROTECTED_REFRESH_S:
            return cached[1]
        st = _stat(folder)
        writable = st is not None and _writable_by_users(st)
        if len(self._dir_writable_cache) > 4096:
            self._dir_writable_cache.clear()
        self._dir_writable_cache[folder] = (now, writable)
        return writable

    def _note_running(self, pid: int, path: str) -> None:
        self.forget(pid)
        if path:
            self._running.setdefault(path, set()).add(pid)
            self._exe_of[pid] = path

    def forget(self, pid: int) -> None:
        old = self._exe_of.pop(pid, None)
        if old is not None:
            pids = self._running.get(old)
            if pids is not None:
                pids.discard(pid)
                if not pids:
                    del self._running[old]


__all__ = ["Identity", "KnownPrograms", "ProtectedFiles"]
