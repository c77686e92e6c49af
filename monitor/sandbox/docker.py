"""Docker containers as sandboxes: inventory and identity (killing one: monitor/actions/docker.py).

`DockerInventory` keeps the `SandboxRegistry` in step with the engine: on (re)connect it lists the
running containers, then follows the event stream (start, die, destroy). Each selected container
becomes a `Sandbox(runtime="docker")` whose cgroup-v2 directory (from its init pid's
/proc/PID/cgroup) and inode (the kernel's cgroup id) the sensor watches. It knows nothing of the
sensor: it calls `on_added(sandbox)` / `on_removed(sandbox)` and hands each container's posture
to `emit(event)`: `sandbox_start` then `container_start` when a container is found (at start-up
or when it starts), `sandbox_end` when it dies. Callbacks run on the inventory's own thread.

Early discovery (`CgroupDirWatch`): runc makes a container's cgroup directory before the
program's first instruction, while the engine answers an inspect only once the start is done.
So the inventory reports the directory at once (`on_cgroup_created`: the daemon watches it and
holds its events), then names the container (`on_added`) or lets it go (`on_cgroup_dropped`:
not selected), and announces it (`sandbox_start`, `container_start`) when the engine starts it.

When the engine is down or its socket is absent, the inventory logs one line and reconnects with
exponential backoff; everything else the monitor watches is unaffected.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions

from monitor.event import Event
from monitor.sandbox import Sandbox, SandboxRegistry
from monitor.sandbox.cgroupwatch import CgroupDirWatch, CgroupRef, log_stderr
from monitor.sandbox.posture import container_start_event

LIFECYCLE_ACTIONS = ("start", "die", "destroy")

# Engine each watched container was found on: kill_container() goes back to the same engine.
engine_of: dict[str, str] = {}
# API version of each engine seen: a kill need not ask /version first (a round trip, slow on a busy engine).
api_version_of: dict[str, str] = {}


# --- cgroup v2 -------------------------------------------------------------------------------

def cgroup2_root(mounts_file: str = "/proc/mounts") -> str | None:
    """Mount point of the cgroup-v2 hierarchy: /sys/fs/cgroup/unified on a hybrid host,
    /sys/fs/cgroup on a pure v2 one. None when there is none."""
    try:
        with open(mounts_file) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return fields[1]
    except OSError:
        return None
    return None


def cgroup2_relpath(cgroup_file_text: str) -> str | None:
    """The v2 path ("0::/docker/<id>") out of a /proc/PID/cgroup text."""
    for line in cgroup_file_text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def cgroup_of_pid(pid: int, root: str) -> CgroupRef | None:
    """The cgroup-v2 directory a process is in, and its inode (= bpf_get_current_cgroup_id())."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            rel = cgroup2_relpath(f.read())
        if rel is None:
            return None
        path = os.path.normpath(root + "/" + rel.lstrip("/"))
        return CgroupRef(path=path, id=os.stat(path).st_ino)
    except OSError:
        return None


# --- selection -------------------------------------------------------------------------------

def parse_selector(text: str | None) -> dict[str, str | None]:
    """`key=value,key2` -> {"key": "value", "key2": None}; None/"" selects every container.

    A key without a value requires only that the label exists."""
    selector: dict[str, str | None] = {}
    for term in (text or "").split(","):
        term = term.strip()
        if not term:
            continue
        key, sep, value = term.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(f"label selector term {term!r} has no key")
        selector[key] = value.strip() if sep else None
    return selector


def selector_matches(selector: dict[str, str | None], labels: dict[str, str]) -> bool:
    return all(key in labels and (want is None or labels[key] == want)
               for key, want in selector.items())


# --- identity --------------------------------------------------------------------------------

def _started_ns(started_at: str) -> int:
    """Docker's RFC 3339 StartedAt (ns precision, 'Z') -> epoch ns; 0 when unparsable."""
    if not started_at or started_at.startswith("0001-"):
        return 0
    head, _, frac = started_at.rstrip("Z").partition(".")
    try:
        secs = datetime.fromisoformat(head + "+00:00").timestamp()
    except ValueError:
        return 0
    return int(secs) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


def sandbox_from_inspect(inspect: dict[str, Any], cgroup: CgroupRef | None,
                         repo_digests: list[str] | None = None) -> Sandbox:
    """Sandbox identity of a container: id, name, image (as asked for) and digest, labels."""
    config = inspect.get("Config") or {}
    state = inspect.get("State") or {}
    digest = (repo_digests or [None])[0]
    image_digest = digest.partition("@")[2] if digest else inspect.get("Image") or None
    return Sandbox(id=inspect["Id"], name=(inspect.get("Name") or "").lstrip("/") or inspect["Id"][:12],
                   runtime="docker", cgroup_id=cgroup.id if cgroup else 0,
                   cgroup_path=cgroup.path if cgroup else "",
                   image=config.get("Image") or None, image_digest=image_digest,
                   labels=dict(config.get("Labels") or {}), root_pid=int(state.get("Pid") or 0),
                   started_ns=_started_ns(state.get("StartedAt") or ""))


def engine_url(base_url: str | None) -> str:
    if base_url:
        return base_url
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _noop(_: Any) -> None:
    pass


# --- inventory -------------------------------------------------------------------------------

class DockerInventory:
    """Watches one Docker engine and keeps the registry's docker sandboxes in step with it."""

    def __init__(self, registry: SandboxRegistry, *, base_url: str | None = None,
                 selector: dict[str, str | None] | None = None,
                 on_added: Callable[[Sandbox], None] = _noop,
                 on_removed: Callable[[Sandbox], None] = _noop,
                 emit: Callable[[Event], None] = _noop,
                 log: Callable[[str], None] = log_stderr,
                 backoff_min_s: float = 0.5, backoff_max_s: float = 30.0,
                 cgroup_root: str | None = None, remove_from_registry: bool = True,
                 resolve_cgroup: Callable[[int], CgroupRef | None] | None = None,
                 early: bool = True,
                 on_cgroup_created: Callable[[CgroupRef], None] = _noop,
                 on_cgroup_dropped: Callable[[CgroupRef], None] = _noop) -> None:
        self.registry = registry
        self.base_url = engine_url(base_url)
        self.selector = selector or {}
        self.on_added = on_added
        self.on_removed = on_removed
        # Early discovery: a container's cgroup directory appeared (watch it now; its identity
        # follows once the engine answers, after the start) / it turned out not to be ours.
        self.on_cgroup_created = on_cgroup_created
        self.on_cgroup_dropped = on_cgroup_dropped
        self.emit = emit
        self.log = log
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.cgroup_root = cgroup_root or cgroup2_root()
        # False: on_removed's receiver removes the sandbox from the registry itself (the daemon
        # does, after taking the container's last events from the ring buffer).
        self.remove_from_registry = remove_from_registry
        self.resolve_cgroup = resolve_cgroup or self._cgroup_of_pid
        self._ids: set[str] = set()  # container ids this inventory registered
        self._engine_runtimes: dict[str, str] = {}  # runtime name -> binary path, per engine
        self._gvisor_ids: set[str] = set()  # containers on a runsc runtime
        self._pending_start: set[str] = set()  # watched since their cgroup appeared, not started
        self._early_cgroups: dict[str, CgroupRef] = {}  # container id -> its directory, as seen
        self.start_grace_s = 10.0  # a gone directory whose container never started is forgotten then
        self.early = early
        self._early_client: docker.APIClient | None = None
        self._dir_watch: CgroupDirWatch | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: docker.APIClient | None = None
        self._stream: Any = None
        self.connected = threading.Event()
        self.reconnects = 0
        self.errors = 0

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self.early and self.cgroup_root:
            self._dir_watch = CgroupDirWatch(self.cgroup_root, self._on_cgroup_created,
                                             self._on_cgroup_deleted, self.log)
            self._dir_watch.start()
        self._thread = threading.Thread(target=self._run, name="docker-inventory", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._close_stream()
        if self._dir_watch is not None:
            self._dir_watch.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
        client, self._early_client = self._early_client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def container_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._ids)

    def _run(self) -> None:
        delay = self.backoff_min_s
        down_logged = False
        while not self._stop.is_set():
            try:
                client = docker.APIClient(base_url=self.base_url, timeout=10)
                self._client = client
                api_version_of[self.base_url] = client.api_version
                # Subscribe first, then list: a container starting in between is seen by both.
                stream = client.events(decode=True, since=int(time.time()),
                                       filters={"type": "container", "event": list(LIFECYCLE_ACTIONS)})
                self._stream = stream
                if self._stop.is_set():  # stop() came while connecting: it saw no stream to close
                    break
                self.reconcile(client)
                self.connected.set()
                if down_logged:
                    self.log(f"docker: engine at {self.base_url} is back; watching "
                             f"{len(self.container_ids())} container(s)")
                    self.reconnects += 1
                down_logged = False
                delay = self.backoff_min_s
                for message in stream:
                    if self._stop.is_set():
                        break
                    self._handle_safely(client, message)
                if not self._stop.is_set():
                    raise ConnectionError("event stream closed")
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
                if self._stop.is_set():
                    break
                self.errors += 1
                self.connected.clear()
                if not down_logged:
                    self.log(f"docker: engine at {self.base_url} unavailable ({short_error(exc)}); "
                             "other sandboxes are still watched; reconnecting with backoff")
                    down_logged = True
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
            except Exception as exc:  # a bug must not end the watch: report it, start over
                if self._stop.is_set():
                    break
                self.errors += 1
                self.connected.clear()
                self.log(f"docker: unexpected {type(exc).__name__}: {short_error(exc)}; reconnecting")
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
            finally:
                self._close_stream()
        self.connected.clear()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # reconciliation --------------------------------------------------------------------------
    def reconcile(self, client: docker.APIClient) -> None:
        """Make the registry match the engine's running containers (on connect and reconnect)."""
        running = {c["Id"] for c in client.containers(filters={"status": "running"})}
        with self._lock:
            pending = set(self._pending_start)
        for gone in set(self.container_ids()) - running - pending:
            self.remove(gone)
        for container_id in sorted(running - set(self.container_ids())):
            self.add(client, container_id)

    def _handle_safely(self, client: docker.APIClient, message: dict[str, Any]) -> None:
        try:
            self.handle_event(client, message)
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            raise  # the engine went away: reconnect
        except Exception as exc:  # one odd container must not stop the watch of all the others
            self.errors += 1
            self.log(f"docker: event {message.get('Action')} for {message.get('id', '?')[:12]} "
                     f"not handled: {type(exc).__name__}: {short_error(exc)}")

    def handle_event(self, client: docker.APIClient, message: dict[str, Any]) -> None:
        if message.get("Type") != "container":
            return
        action = message.get("Action") or message.get("status") or ""
        container_id = (message.get("Actor") or {}).get("ID") or message.get("id") or ""
        if not container_id:
            return
        if action == "start":
            self.add(client, container_id, started=True)
        elif action in ("die", "destroy"):
            exit_code = ((message.get("Actor") or {}).get("Attributes") or {}).get("exitCode")
            self.remove(container_id, int(exit_code) if str(exit_code or "").isdigit() else None)

    def add(self, client: docker.APIClient, container_id: str, cgroup: CgroupRef | None = None,
            early: bool = False, started: bool = False) -> Sandbox | None:
        """Register a selected container; None when skipped. `early`: its cgroup directory was
        just created (`cgroup`), it has not started: watch it now, announce it when it starts.
        Otherwise it runs (or `started`: the engine said so, and it may be done already):
        register it if new and emit sandbox_start + container_start."""
        with self._lock:
            known = container_id in self._ids
            if known and (early or container_id not in self._pending_start):
                return None
        try:
            inspect = client.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        if known:
            return self._started(container_id, inspect)
        labels = (inspect.get("Config") or {}).get("Labels") or {}
        state = inspect.get("State") or {}
        if not selector_matches(self.selector, labels) or not (early or started or state.get("Running")):
            return None
        name = (inspect.get("Name") or container_id).lstrip("/")
        gvisor = self._is_gvisor(client, (inspect.get("HostConfig") or {}).get("Runtime"))
        if cgroup is None:
            # a short-lived container may be gone from /proc already: its directory was seen
            cgroup = self.resolve_cgroup(int(state.get("Pid") or 0)) or self._early_cgroups.get(container_id)
        if cgroup is not None and self.cgroup_root and cgroup.path == os.path.normpath(self.cgroup_root):
            # Not a cgroup of its own (runsc on a hybrid host leaves its sandbox at the v2 root):
            # nothing to watch or kill there.
            cgroup = None
        if cgroup is None and not gvisor:  # gVisor's trace session needs no cgroup
            if not early:
                self.log(f"docker: container {name} has no cgroup-v2 directory of its own "
                         "(exited already?); not watched")
            return None
        if cgroup is not None and cgroup.id == self._own_cgroup_id():
            # The monitor itself runs in this container: watching it would feed on its own events.
            self.log(f"docker: container {name} is the monitor's own; not watched")
            return None
        sandbox = sandbox_from_inspect(inspect, cgroup, self._repo_digests(client, inspect))
        with self._lock:
            if container_id in self._ids:  # the other path (early / start) got there first
                take_over = not early and container_id in self._pending_start
                if not take_over:
                    return None
            else:
                take_over = False
                self._ids.add(container_id)
                if gvisor:
                    self._gvisor_ids.add(container_id)
                if early:
                    self._pending_start.add(container_id)
        if take_over:
            return self._started(container_id, inspect)
        engine_of[container_id] = self.base_url
        self.registry.add(sandbox)
        self.on_added(sandbox)
        if not early:
            self._announce(sandbox, inspect)
        return sandbox

    def _started(self, container_id: str, inspect: dict[str, Any]) -> Sandbox | None:
        """A container watched since its cgroup appeared now runs: announce it."""
        with self._lock:
            if container_id not in self._pending_start:
                return None
            self._pending_start.discard(container_id)
        sandbox = self.registry.by_id(container_id)
        if sandbox is None:
            return None
        state = inspect.get("State") or {}
        sandbox.root_pid = int(state.get("Pid") or 0)
        sandbox.started_ns = _started_ns(state.get("StartedAt") or "")
        self._announce(sandbox, inspect)
        return sandbox

    def _announce(self, sandbox: Sandbox, inspect: dict[str, Any]) -> None:
        self.emit(Event(kind="sandbox_start", sandbox=sandbox.identity(), source="docker",
                        cgroup_id=sandbox.cgroup_id,
                        process={"pid": sandbox.root_pid} if sandbox.root_pid else {}))
        self.emit(container_start_event(inspect, sandbox))

    # early discovery: a container's cgroup directory appears before its first instruction -----
    def _on_cgroup_created(self, container_id: str, cgroup: CgroupRef) -> None:
        if cgroup.id == self._own_cgroup_id():
            return
        # Before asking the engine: it answers an inspect of a starting container only once the
        # start is done, when the container's first instructions have run.
        with self._lock:
            self._early_cgroups[container_id] = cgroup
        self.on_cgroup_created(cgroup)
        sandbox = None
        try:
            client = self._early_client
            if client is None:
                client = self._early_client = docker.APIClient(
                    base_url=self.base_url, timeout=10, version=api_version_of.get(self.base_url, "auto"))
            sandbox = self.add(client, container_id, cgroup=cgroup, early=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            self._early_client = None  # the engine's start event will bring it
        finally:
            with self._lock:
                registered = container_id in self._ids
            if sandbox is None and not registered:
                self.on_cgroup_dropped(cgroup)

    def _on_cgroup_deleted(self, container_id: str) -> None:
        # A short-lived container's directory can go before the engine's start event is read:
        # give the engine the last word (start, die), forget it only if it never spoke.
        with self._lock:
            pending = container_id in self._pending_start
        if pending:
            timer = threading.Timer(self.start_grace_s, self._forget_if_never_started, (container_id,))
            timer.daemon = True
            timer.start()

    def _forget_if_never_started(self, container_id: str) -> None:
        with self._lock:
            never_started = container_id in self._pending_start
        if never_started:
            self.remove(container_id)

    def is_gvisor(self, container_id: str) -> bool:
        """The container runs on a runsc runtime: its programs' events come from gVisor's trace
        session (the sandbox stays runtime "docker": the engine kills it; the trace source marks
        its events' identity "gvisor"), and in its cgroup the host's probes see only gVisor."""
        with self._lock:
            return container_id in self._gvisor_ids

    def _is_gvisor(self, client: docker.APIClient, runtime_name: str | None) -> bool:
        if not runtime_name:
            return False
        if runtime_name not in self._engine_runtimes:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                runtimes = client.info().get("Runtimes") or {}
                self._engine_runtimes = {name: str((entry or {}).get("path") or name)
                                         for name, entry in runtimes.items()}
        path = self._engine_runtimes.get(runtime_name, runtime_name)
        return "runsc" in os.path.basename(path) or "runsc" in runtime_name

    def _own_cgroup_id(self) -> int:
        own = self.resolve_cgroup(os.getpid())
        return own.id if own else -1

    def _cgroup_of_pid(self, pid: int) -> CgroupRef | None:
        return cgroup_of_pid(pid, self.cgroup_root) if self.cgroup_root and pid > 0 else None

    @staticmethod
    def _repo_digests(client: docker.APIClient, inspect: dict[str, Any]) -> list[str]:
        try:
            return list(client.inspect_image(inspect.get("Image") or "").get("RepoDigests") or [])
        except docker.errors.DockerException:
            return []

    def remove(self, container_id: str, exit_code: int | None = None) -> Sandbox | None:
        """Forget a container; emit `sandbox_end` so sinks close its trace/session."""
        with self._lock:
            if container_id not in self._ids:
                return None
            self._ids.discard(container_id)
            self._gvisor_ids.discard(container_id)
            announced = container_id not in self._pending_start
            self._pending_start.discard(container_id)
            self._early_cgroups.pop(container_id, None)
        engine_of.pop(container_id, None)
        sandbox = (self.registry.remove(container_id) if self.remove_from_registry
                   else self.registry.by_id(container_id))
        if sandbox is not None:
            self.on_removed(sandbox)
            if not announced:
                return sandbox
            detail = {"code": exit_code} if exit_code is not None else None
            self.emit(Event(kind="sandbox_end", sandbox=sandbox.identity(), detail=detail,
                            source="docker", cgroup_id=sandbox.cgroup_id))
        return sandbox


def short_error(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
