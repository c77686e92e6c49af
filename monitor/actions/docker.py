"""Docker containers: killed through their engine (cgroup.kill when it does not answer in time),
frozen with the container's cgroup-v2 cgroup.freeze, processes killed by host pid."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from monitor.actions.enforcer import Enforcer
from monitor.sandbox import DEFAULT_KILL_TIMEOUT_S, Sandbox
from monitor.sandbox import cgroup as cg
from monitor.sandbox.docker import api_version_of, engine_of, engine_url, short_error


@dataclass(frozen=True, slots=True)
class KillResult:
    outcome: str  # done | already_gone | failed (ActionRecord's vocabulary)
    message: str


def kill_container(sandbox: Sandbox, timeout_s: float = DEFAULT_KILL_TIMEOUT_S,
                   base_url: str | None = None) -> KillResult:
    """SIGKILL a container through its engine; when the engine does not answer within timeout_s,
    kill every process of its cgroup with cgroup.kill instead."""
    url = base_url or engine_of.get(sandbox.id) or engine_url(None)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="docker-kill")
    future = pool.submit(_engine_kill, url, sandbox.id, timeout_s)
    try:
        return future.result(timeout=timeout_s)
    except docker.errors.NotFound:
        return KillResult("already_gone", "container no longer exists")
    except docker.errors.APIError as exc:
        if exc.status_code == 409:  # "is not running"
            return KillResult("already_gone", short_error(exc))
        return _cgroup_kill(sandbox, f"engine refused: {short_error(exc)}")
    except (FutureTimeout, requests.exceptions.Timeout):
        return _cgroup_kill(sandbox, f"engine did not answer within {timeout_s:g}s")
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        return _cgroup_kill(sandbox, f"engine unavailable: {short_error(exc)}")
    finally:
        pool.shutdown(wait=False)


def _engine_kill(url: str, container_id: str, timeout_s: float) -> KillResult:
    # The caller's bound (future.result) decides; the client's own timeout only frees the thread.
    client = docker.APIClient(base_url=url, timeout=timeout_s + 5,
                              version=api_version_of.get(url, "auto"))
    api_version_of[url] = client.api_version
    try:
        client.kill(container_id, signal="SIGKILL")
    finally:
        client.close()
    return KillResult("done", "killed through the engine")


def _cgroup_kill(sandbox: Sandbox, why: str) -> KillResult:
    if not sandbox.cgroup_path:
        return KillResult("failed", f"{why}; no cgroup to kill")
    try:
        outcome = cg.kill(sandbox.cgroup_path)
    except OSError as exc:
        return KillResult("failed", f"{why}; cgroup.kill: {exc.strerror or exc}")
    if outcome == "already_gone":
        return KillResult(outcome, f"{why}; cgroup already empty")
    return KillResult(outcome, f"{why}; killed with cgroup.kill")


class DockerEnforcer(Enforcer):
    def __init__(self, kill_timeout_s: float = DEFAULT_KILL_TIMEOUT_S) -> None:
        self.kill_timeout_s = kill_timeout_s
        self.last: KillResult | None = None  # how the last kill went (engine or fallback)

    def kill(self, sandbox: Sandbox) -> tuple[str, str]:
        self.last = kill_container(sandbox, self.kill_timeout_s)
        return self.last.outcome, self.last.message
