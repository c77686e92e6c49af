"""Docker integration: register runsc in daemon.json with the monitor's trace session, and host checks.

`install_docker_runtime` adds (or updates) one entry under "runtimes" and leaves every other key
and runtime as it was; dockerd picks runtimes up on SIGHUP (`systemctl reload docker`). Every
container started with `--runtime=<name>` then connects to the monitor daemon's sink socket
before its first instruction runs. runsc refuses to start a sandbox whose sink it cannot reach,
so with this entry a container of that runtime runs only while the monitor is serving: the
watched runtime fails closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from monitor.checks import Check
from monitor.gvisor.config import write_pod_init_config

DAEMON_JSON = Path("/etc/docker/daemon.json")
DEFAULT_RUNTIME_NAME = "runsc"
DEFAULT_SOCKET = Path("/run/sandbox-monitor/gvisor.sock")
DEFAULT_POD_INIT_CONFIG = Path("/etc/sandbox-monitor/gvisor-pod-init.json")
POD_INIT_FLAG = "--pod-init-config="


class InstallError(RuntimeError):
    """daemon.json cannot be read or written; the message names the file (and line)."""


def _load_daemon_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InstallError(f"{path}: {exc.strerror}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InstallError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path}:1: expected a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".sandbox-monitor.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def runtime_entry(runsc: str, pod_init_config: Path, existing: dict[str, Any] | None = None,
                  extra_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The daemon.json runtime entry: the existing one's other runtimeArgs are kept."""
    entry = dict(existing or {})
    args = [a for a in entry.get("runtimeArgs") or [] if not str(a).startswith(POD_INIT_FLAG)]
    args += [a for a in extra_args if a not in args]
    entry["path"] = runsc
    entry["runtimeArgs"] = args + [f"{POD_INIT_FLAG}{pod_init_config}"]
    return entry


def install_docker_runtime(*, daemon_json: Path = DAEMON_JSON, name: str = DEFAULT_RUNTIME_NAME,
                           runsc: str | None = None, socket_path: Path = DEFAULT_SOCKET,
                           pod_init_config: Path = DEFAULT_POD_INIT_CONFIG,
                           extra_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the pod-init config and the runtime entry (plus `extra_args` for runsc, e.g.
    "--network=none"); returns the new entry."""
    runsc_path = runsc or shutil.which("runsc")
    if not runsc_path:
        raise InstallError("runsc not found: install Debian's 'runsc' package (apt-get install runsc)")
    data = _load_daemon_json(daemon_json)
    runtimes = data.get("runtimes") or {}
    if not isinstance(runtimes, dict):
        raise InstallError(f"{daemon_json}: \"runtimes\" is not an object")
    pod_init_config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_pod_init_config(pod_init_config, str(socket_path))
    entry = runtime_entry(runsc_path, pod_init_config, runtimes.get(name), extra_args)
    runtimes[name] = entry
    data["runtimes"] = runtimes
    _write_json(daemon_json, data)
    return entry


def uninstall_docker_runtime(*, daemon_json: Path = DAEMON_JSON, name: str = DEFAULT_RUNTIME_NAME) -> bool:
    """Drop the monitor's pod-init flag from the runtime (the entry goes if nothing else is left)."""
    data = _load_daemon_json(daemon_json)
    runtimes = data.get("runtimes") or {}
    entry = runtimes.get(name) if isinstance(runtimes, dict) else None
    if not isinstance(entry, dict):
        return False
    args = [a for a in entry.get("runtimeArgs") or [] if not str(a).startswith(POD_INIT_FLAG)]
    if args == list(entry.get("runtimeArgs") or []):
        return False
    if args:
        entry["runtimeArgs"] = args
    else:
        del runtimes[name]
    if not runtimes:
        data.pop("runtimes", None)
    _write_json(daemon_json, data)
    return True


def platform_works(runsc: str, platform: str, timeout_s: float = 15.0) -> tuple[bool, str]:
    """Start `/bin/true` in a sandbox on `platform` (its own process group: a hung platform
    is killed whole at the timeout)."""
    try:
        proc = subprocess.Popen([runsc, f"--platform={platform}", "--network=none", "do", "--quiet",
                                 "/bin/true"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    except OSError as exc:
        return False, str(exc)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"no sandbox within {timeout_s:g} s"
    last = (stderr.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, last[:160]


def docker_knows(daemon_json: Path = DAEMON_JSON, name: str = DEFAULT_RUNTIME_NAME) -> tuple[bool, str]:
    try:
        data = _load_daemon_json(daemon_json)
    except InstallError as exc:
        return False, str(exc)
    entry = (data.get("runtimes") or {}).get(name)
    if not isinstance(entry, dict):
        return False, f"{daemon_json} has no runtime {name!r}"
    traced = any(str(a).startswith(POD_INIT_FLAG) for a in entry.get("runtimeArgs") or [])
    return True, f"runtime {name!r} -> {entry.get('path')}" + ("" if traced else " (no trace session)")


def doctor_checks(daemon_json: Path = DAEMON_JSON) -> list[Check]:
    """For `monitor doctor`: runsc installed, which platforms start a sandbox, Docker's entry."""
    runsc = shutil.which("runsc")
    if runsc is None:
        return [Check("gVisor runsc", False, "not installed",
                      "apt-get install runsc (or EXTRAS=gvisor scripts/setup.sh)")]
    checks = [Check("gVisor runsc", True, runsc)]
    if os.geteuid() == 0:
        ok, detail = platform_works(runsc, "ptrace")
        checks.append(Check("gVisor platform ptrace", ok, "starts a sandbox" if ok else detail))
        if os.path.exists("/dev/kvm"):
            ok, detail = platform_works(runsc, "kvm", timeout_s=5.0)
            checks.append(Check("gVisor platform kvm", ok, "starts a sandbox" if ok else detail))
        else:
            checks.append(Check("gVisor platform kvm", False, "no /dev/kvm", "ptrace is used"))
    ok, detail = docker_knows(daemon_json)
    checks.append(Check("Docker runtime runsc", ok, detail, "" if ok else "monitor gvisor install"))
    return checks
