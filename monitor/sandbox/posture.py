"""Container posture at start: a `docker inspect` document -> the `event.container` map.

Pure: no engine, no I/O. The facts are those of a hardened-runtime checklist (privileged,
root user, writable root filesystem, no-new-privileges, seccomp, capabilities, host namespaces,
mounts incl. the Docker socket, tmpfs noexec, image pinned by digest), named as DESIGN.md's
`event.container`, so posture rules are plain CEL over one `container_start` event.
"""

from __future__ import annotations

import re
from typing import Any

from monitor.event import Event
from monitor.sandbox import Sandbox

# An image reference that names immutable content: `name@sha256:<hex>` or a bare image id.
_PINNED_REF = re.compile(r"(@sha256:[0-9a-f]{64}$)|(^(sha256:)?[0-9a-f]{64}$)")
_ROOT_USERS = ("", "0", "root")


def posture(inspect: dict[str, Any]) -> dict[str, Any]:
    """The `event.container` posture map of one container's inspect document."""
    host: dict[str, Any] = inspect.get("HostConfig") or {}
    config: dict[str, Any] = inspect.get("Config") or {}
    security_opts: list[str] = host.get("SecurityOpt") or []
    privileged = bool(host.get("Privileged"))
    return {
        "privileged": privileged,
        "user": user_of(config.get("User") or ""),
        "read_only_rootfs": bool(host.get("ReadonlyRootfs")),
        "no_new_privileges": no_new_privileges(security_opts),
        "seccomp": seccomp_mode(security_opts, privileged),
        "cap_add": capabilities(host.get("CapAdd")),
        "cap_drop": capabilities(host.get("CapDrop")),
        "host_pid": host.get("PidMode") == "host",
        "host_network": host.get("NetworkMode") == "host",
        "host_ipc": host.get("IpcMode") == "host",
        "mounts": mounts(inspect.get("Mounts") or []),
        "tmpfs": tmpfs_mounts(host.get("Tmpfs") or {}),
        "image_pinned": image_pinned(config.get("Image") or ""),
    }


def user_of(configured: str) -> str:
    """"root" when the container runs as uid 0 (unset, "0", "root", "0:...", "root:..."), else as given."""
    name = configured.split(":", 1)[0]
    return "root" if name in _ROOT_USERS else configured


def no_new_privileges(security_opts: list[str]) -> bool:
    for opt in security_opts:
        key, sep, value = _split_opt(opt)
        if key == "no-new-privileges":
            return not sep or value.lower() in ("true", "1", "yes")
    return False


def _split_opt(opt: str) -> tuple[str, str, str]:
    """`key=value` or the legacy `key:value` (Docker accepts both)."""
    match = re.match(r"^([^=:]+)([=:]?)(.*)$", opt, re.DOTALL)
    if match is None:
        return opt, "", ""
    return match.group(1), match.group(2), match.group(3)


def seccomp_mode(security_opts: list[str], privileged: bool) -> str:
    """default | unconfined | custom. Docker runs privileged containers without seccomp."""
    if privileged:
        return "unconfined"
    for opt in security_opts:
        key, _, value = _split_opt(opt)
        if key == "seccomp":
            # The CLI inlines a custom profile's JSON into the option.
            return "unconfined" if value == "unconfined" else "custom"
    return "default"


def capabilities(names: list[str] | None) -> list[str]:
    """Upper-case names without the CAP_ prefix, as Docker's CLI accepts them either way."""
    out: list[str] = []
    for name in names or []:
        cap = name.upper()
        cap = cap.removeprefix("CAP_")
        if cap not in out:
            out.append(cap)
    return out


def mounts(inspect_mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"source": m.get("Source") or m.get("Name") or "", "destination": m.get("Destination") or "",
             "rw": bool(m.get("RW")), "type": m.get("Type") or ""}
            for m in inspect_mounts]


def tmpfs_mounts(tmpfs: dict[str, str]) -> list[dict[str, Any]]:
    """--tmpfs mounts. Docker adds noexec unless the options ask for exec (checked on the engine)."""
    out = []
    for destination, options in sorted(tmpfs.items()):
        opts = [o.strip() for o in (options or "").split(",") if o.strip()]
        out.append({"destination": destination, "noexec": "exec" not in opts})
    return out


def image_pinned(reference: str) -> bool:
    """The image was asked for by digest (`repo@sha256:...` or an image id), not by a mutable tag."""
    return bool(_PINNED_REF.search(reference))


def container_start_event(inspect: dict[str, Any], sandbox: Sandbox | None = None) -> Event:
    """The `container_start` event of a container: its posture, and its identity when known."""
    state = inspect.get("State") or {}
    config = inspect.get("Config") or {}
    process: dict[str, Any] = {}
    if state.get("Pid"):
        process["pid"] = int(state["Pid"])
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    if command:
        process["executable"] = command[0]
        process["args"] = command
    event = Event(kind="container_start", process=process, container=posture(inspect), source="docker")
    if sandbox is not None:
        event.sandbox = sandbox.identity()
        event.cgroup_id = sandbox.cgroup_id
    return event
