"""The pod-init config that starts a gVisor trace session feeding the monitor's sink socket.

runsc reads it at sandbox start (`--pod-init-config=FILE`, also valid in Docker's daemon.json
`runtimeArgs`), connects to the "remote" sink's endpoint and streams every enabled point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monitor.gvisor.mapping import RAW_SYSCALLS

SESSION_NAME = "Default"
# What every point carries. `cwd` costs gVisor a path walk per point, so it is asked only where a
# process starts (exec, container start); the mapper follows chdir/fchdir from there.
BASE_CONTEXT = ["time", "thread_id", "group_id", "container_id", "credentials", "process_name"]
WITH_CWD = BASE_CONTEXT + ["cwd"]
# Retries with backoff when the socket is full: back-pressure on the sandbox rather than a dropped
# point (gVisor's default is 0 retries). A monitor that stops reading slows the sandbox to at
# most ~0.1 s per traced syscall before points are dropped (and counted).
DEFAULT_RETRIES = 24
DEFAULT_BACKOFF = "25us"
DEFAULT_BACKOFF_MAX = "5ms"


def trace_points() -> list[dict[str, Any]]:
    """Every point the mapper turns into events, with the context each needs."""
    points: list[dict[str, Any]] = [
        {"name": "container/start", "context_fields": WITH_CWD},
        {"name": "sentry/clone", "context_fields": BASE_CONTEXT},
        {"name": "syscall/execve/enter", "context_fields": ["thread_id", "group_id"]},
        {"name": "syscall/execveat/enter", "optional_fields": ["fd_path"],
         "context_fields": ["thread_id", "group_id"]},
        {"name": "sentry/execve", "context_fields": WITH_CWD},
        {"name": "sentry/task_exit", "context_fields": ["time", "thread_id", "group_id", "container_id"]},
        {"name": "syscall/open/exit", "context_fields": BASE_CONTEXT},
        {"name": "syscall/openat/exit", "optional_fields": ["fd_path"], "context_fields": BASE_CONTEXT},
        {"name": "syscall/creat/exit", "context_fields": BASE_CONTEXT},
        {"name": "syscall/chdir/exit", "context_fields": ["thread_id", "group_id"]},
        {"name": "syscall/fchdir/exit", "optional_fields": ["fd_path"], "context_fields": ["thread_id", "group_id"]},
    ]
    for call in ("socket", "connect", "bind", "accept", "accept4", "setuid", "setgid",
                 "setresuid", "setresgid"):
        points.append({"name": f"syscall/{call}/exit", "context_fields": BASE_CONTEXT})
    # Raw points at enter: runsc (20221219) fills a raw *exit* point's context from the enter
    # point's field set, so an exit-only raw point would arrive without pid or credentials.
    for sysno in sorted(RAW_SYSCALLS):
        points.append({"name": f"syscall/sysno/{sysno}/enter", "context_fields": BASE_CONTEXT})
    return points


def pod_init_config(endpoint: str, *, retries: int = DEFAULT_RETRIES,
                    backoff: str = DEFAULT_BACKOFF, backoff_max: str = DEFAULT_BACKOFF_MAX,
                    points: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    sink_config: dict[str, Any] = {"endpoint": endpoint}
    if retries:
        sink_config.update({"retries": retries, "backoff": backoff, "backoff_max": backoff_max})
    return {"trace_session": {"name": SESSION_NAME,
                              "points": trace_points() if points is None else points,
                              "sinks": [{"name": "remote", "config": sink_config}]}}


def write_pod_init_config(path: str | os.PathLike[str], endpoint: str, **kwargs: Any) -> Path:
    """Write the config 0600: runsc reads it as root and connects to the sink before the
    sandbox process (an unprivileged user) exists, handing it the connected socket."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(pod_init_config(endpoint, **kwargs), indent=1) + "\n")
    os.replace(tmp, target)
    return target
