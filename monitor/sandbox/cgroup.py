"""cgroup-v2 sandboxes for `monitor run`, and the cgroup primitives actions use on any sandbox.

A sandbox is `<v2 root>/sandbox-monitor/<id>`; its kernel cgroup id is the directory's inode.
A state file per sandbox (/run/sandbox-monitor/sandboxes/<id>.json, 0600) records its owner
monitor's pid, so the next run can clean up after a crashed one: a sandbox whose owner is dead
is killed and removed, unless it is frozen (a quarantine is evidence: it waits for
`monitor sandbox thaw|kill`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from monitor.sandbox import Sandbox

STATE_DIR = Path(os.environ.get("SANDBOX_MONITOR_STATE", "/run/sandbox-monitor")) / "sandboxes"
SUBTREE = "sandbox-monitor"


class CgroupError(RuntimeError):
    pass


def cgroup_v2_root() -> Path:
    """Where cgroup v2 is mounted: /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified on a
    hybrid one; read from /proc/mounts, never assumed."""
    mounts: list[str] = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                mounts.append(parts[1])
    if not mounts:
        raise CgroupError("no cgroup v2 mount found in /proc/mounts (mount -t cgroup2 none /sys/fs/cgroup)")
    return Path("/sys/fs/cgroup" if "/sys/fs/cgroup" in mounts else mounts[0])


def cgroup_id(path: str | Path) -> int:
    return os.stat(path).st_ino


def cgroup_path_of(pid: int) -> Path | None:
    """The cgroup-v2 directory of a process (its `0::` line in /proc/PID/cgroup)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return cgroup_v2_root() / line[3:].strip().lstrip("/")
    except OSError:
        return None
    return None


def _events(path: str | Path) -> dict[str, str]:
    with open(os.path.join(path, "cgroup.events")) as f:
        return dict(line.split() for line in f if line.strip())


def populated(path: str | Path) -> bool:
    try:
        return _events(path).get("populated") == "1"
    except OSError:
        return False


def frozen(path: str | Path) -> bool:
    try:
        return _events(path).get("frozen") == "1"
    except OSError:
        return False


def pids(path: str | Path) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def _write(path: str | Path, name: str, value: str) -> None:
    with open(os.path.join(path, name), "w") as f:
        f.write(value)


def kill(path: str | Path) -> str:
    """SIGKILL every process in the cgroup (cgroup.kill). Returns done | already_gone."""
    if not os.path.isdir(path) or not populated(path):
        return "already_gone"
    _write(path, "cgroup.kill", "1")
    return "done"


def freeze(path: str | Path) -> str:
    """Freeze (cgroup.freeze). Returns done | already_frozen | already_gone."""
    if not os.path.isdir(path):
        return "already_gone"
    if frozen(path):
        return "already_frozen"
    _write(path, "cgroup.freeze", "1")
    return "done"


def thaw(path: str | Path) -> str:
    if not os.path.isdir(path):
        return "already_gone"
    if not frozen(path):
        return "not_frozen"
    _write(path, "cgroup.freeze", "0")
    return "done"


def wait_empty(path: str | Path, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while populated(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- sandboxes of `monitor run` -----------------------------------------------------------

def _state_file(sandbox_id: str) -> Path:
    return STATE_DIR / f"{sandbox_id}.json"


def write_state(sandbox: Sandbox, **extra: object) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {"id": sandbox.id, "name": sandbox.name, "runtime": sandbox.runtime,
              "cgroup_path": sandbox.cgroup_path, "cgroup_id": sandbox.cgroup_id,
              "owner_pid": os.getpid(), "created_ns": sandbox.started_ns, **extra}
    path = _state_file(sandbox.id)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)


def read_states() -> list[dict[str, object]]:
    states = []
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return states


def _read_state(sandbox_id: str) -> dict[str, object] | None:
    try:
        return json.loads(_state_file(sandbox_id).read_text())
    except (OSError, ValueError):
        return None


def create(name: str, runtime: str = "cgroup") -> Sandbox:
    base = cgroup_v2_root() / SUBTREE
    base.mkdir(exist_ok=True)
    sandbox_id = f"sb-{os.urandom(4).hex()}"
    path = base / sandbox_id
    path.mkdir()
    sandbox = Sandbox(id=sandbox_id, name=name or sandbox_id, runtime=runtime,
                      cgroup_id=cgroup_id(path), cgroup_path=str(path), started_ns=time.time_ns())
    write_state(sandbox)
    return sandbox


def joiner(sandbox: Sandbox) -> Callable[[], None]:
    """A preexec_fn: the child moves itself into the sandbox before exec (so its first
    instruction already runs watched: the cgroup id is in the map before the fork)."""
    procs = os.path.join(sandbox.cgroup_path, "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write("0")

    return join


def dispose(path: str | Path, sandbox_id: str, timeout_s: float = 5.0) -> bool:
    """Kill what is left in a sandbox's cgroup, rmdir it, and forget its state once it is gone
    (a cgroup that would not empty keeps its state: `monitor sandbox list` still shows it).
    True when the cgroup is gone."""
    if os.path.isdir(path):
        kill(path)
        if wait_empty(path, timeout_s):
            with contextlib.suppress(OSError):
                os.rmdir(path)
    if os.path.isdir(path):
        return False
    _state_file(sandbox_id).unlink(missing_ok=True)
    return True


def remove(sandbox: Sandbox, keep_if_frozen: bool = True) -> bool:
    """Kill what is left, rmdir the cgroup and forget its state. A frozen sandbox is kept."""
    if keep_if_frozen and frozen(sandbox.cgroup_path):
        return False
    dispose(sandbox.cgroup_path, sandbox.id)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale() -> list[str]:
    """Remove sandboxes left by a monitor that died (never a frozen one, never a live owner's)."""
    removed: list[str] = []
    owners = {str(s.get("id")): s for s in read_states()}
    try:
        base = cgroup_v2_root() / SUBTREE
    except CgroupError:
        return removed
    for path in sorted(base.glob("sb-*")) if base.is_dir() else []:
        # a sandbox made since read_states() (its directory first, then its state): read again
        state = owners.pop(path.name, None) or _read_state(path.name)
        owner = int(state.get("owner_pid", 0)) if state else 0
        if (owner and _alive(owner)) or frozen(path):
            continue
        if dispose(path, path.name, 2.0):
            removed.append(path.name)
    for sandbox_id in owners:  # state without a cgroup
        if not os.path.isdir(str(owners[sandbox_id].get("cgroup_path", ""))):
            _state_file(sandbox_id).unlink(missing_ok=True)
    return removed
