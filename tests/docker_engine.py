"""A private Docker engine for tests: Debian's docker.io dockerd on its own socket under /tmp.

Used through the session-scoped `docker_engine` fixture (tests/conftest.py), which starts ONE
engine per test session, yields a `DockerEngine`, and stops it at the end; a test that needs it
but runs where no engine can be started is skipped with the reason. Any test may use it:

    def test_x(docker_engine):
        cid = docker_engine.run(["sleep", "30"], labels={"agent.sandbox": "true"})
        docker_engine.client.containers.get(cid).kill()

The engine: `dockerd --iptables=false --ip-masq=false --bridge=none --storage-driver=vfs` with its
own data-root, exec-root, pidfile, config file and unix socket (nothing of the host's Docker is
touched; DOCKER_HOST is never set globally). Its managed containerd lives under the exec-root.
The test image `sm-busybox:test` is a busybox-static rootfs (Debian's `busybox-static`) made an
image with the engine's import API (`docker import`): no registry is needed. Containers run
with `--network none` (or host); nothing leaves the machine.

Hosts whose root lacks capabilities in its bounding set (CAP_SYS_RESOURCE on our CI VMs) cannot
start `--privileged` containers with plain runc ("unable to apply caps"); there the engine's
default runtime is a small runc wrapper that drops the capabilities the host cannot grant from
the OCI spec. The container's inspect document (Privileged: true) is unchanged.

Another runtime (e.g. gVisor's runsc): write it under "runtimes" in `engine.config_path` (dockerd's
daemon.json) and call `engine.reload()` (SIGHUP; returns once the engine lists it).

Run `python tests/docker_engine.py` to start one by hand (prints DOCKER_HOST; Ctrl-C stops it).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

TEST_IMAGE = "sm-busybox:test"
BUSYBOX = "/bin/busybox"
DOCKERD = "dockerd"
START_TIMEOUT_S = 60.0


class EngineUnavailable(Exception):
    """This machine lacks what an engine needs (root, docker.io, busybox-static, cgroup v2);
    the message says which (a test skip reason)."""


class EngineStartError(RuntimeError):
    """Everything is installed, yet dockerd did not come up: a failure, not a skip."""


def unavailable_reason() -> str | None:
    """Why no engine can be started on this machine, or None when one can."""
    if os.geteuid() != 0:
        return "the Docker engine needs root"
    for binary in (DOCKERD, "containerd", "runc"):
        if shutil.which(binary) is None:
            return f"{binary} not installed (Debian's docker.io; scripts/setup.sh installs it)"
    if not _is_static_busybox(BUSYBOX):
        return f"{BUSYBOX} missing or not static (Debian's busybox-static builds the test image)"
    if not any(line.split()[2:3] == ["cgroup2"] for line in _read("/proc/mounts").splitlines()):
        return "no cgroup-v2 hierarchy mounted"
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _is_static_busybox(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    # A dynamic ELF names its interpreter (PT_INTERP) near the start.
    return head.startswith(b"\x7fELF") and b"/ld-linux" not in head and b"ld.so" not in head


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `condition` until it is truthy; AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for: {what}")


# --- runc wrapper for hosts with a reduced capability bounding set --------------------------

# Capability numbers 0..40, in order (linux/capability.h)
_CAP_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

_WRAPPER = """#!{python}
# runc, minus capabilities this host's bounding set cannot grant (written by tests/docker_engine.py)
import json, os, sys
args = sys.argv[1:]
if "create" in args and "--bundle" in args:
    spec_path = os.path.join(args[args.index("--bundle") + 1], "config.json")
    with open(spec_path) as f:
        spec = json.load(f)
    missing = set({missing!r})
    caps = spec.get("process", {{}}).get("capabilities") or {{}}
    for key in caps:
        caps[key] = [c for c in caps[key] if c not in missing]
    with open(spec_path, "w") as f:
        json.dump(spec, f)
os.execv({runc!r}, ["runc"] + args)
"""


def missing_capabilities() -> list[str]:
    """Capabilities the kernel knows that this process's bounding set lacks ("CAP_SYS_RESOURCE")."""
    bounding = 0
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
    last = int(_read("/proc/sys/kernel/cap_last_cap").strip() or len(_CAP_NAMES) - 1)
    return [f"CAP_{_CAP_NAMES[bit]}" for bit in range(min(last + 1, len(_CAP_NAMES)))
            if not bounding & (1 << bit)]


# --- the engine ------------------------------------------------------------------------------

@dataclass
class DockerEngine:
    root: Path
    socket: Path
    image: str = TEST_IMAGE
    proc: subprocess.Popen[bytes] | None = None
    initial_config: dict = field(default_factory=dict)  # daemon.json written at first start
    _client: object | None = None

    @property
    def host(self) -> str:
        """DOCKER_HOST / base_url of this engine."""
        return f"unix://{self.socket}"

    @property
    def client(self):  # -> docker.DockerClient (typed loosely: docker is imported lazily)
        import docker
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.host, timeout=60)
        return self._client

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def env(self) -> dict[str, str]:
        """os.environ plus DOCKER_HOST for a subprocess (e.g. `docker` CLI, the daemon)."""
        return {**os.environ, "DOCKER_HOST": self.host}

    # daemon lifecycle ------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        """dockerd's --config-file (daemon.json): e.g. add "runtimes", then `reload()`."""
        return self.root / "config.json"

    def reload(self, timeout_s: float = 15.0) -> None:
        """SIGHUP dockerd so it re-reads config_path (runtimes are reloadable); returns once the
        engine lists every runtime the file names."""
        import json
        wanted = set((json.loads(self.config_path.read_text()) or {}).get("runtimes") or {})
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: wanted <= self.runtimes(), timeout_s, f"dockerd to list runtimes {sorted(wanted)}")

    def runtimes(self) -> set[str]:
        """Runtimes the engine lists now (empty while it does not answer)."""
        import docker
        try:
            client = docker.APIClient(base_url=self.host, timeout=5)
            try:
                return set(client.info().get("Runtimes") or {})
            finally:
                client.close()
        except Exception:
            return set()

    def start_daemon(self, timeout_s: float = START_TIMEOUT_S) -> None:
        if not self.config_path.exists():
            import json
            self.config_path.write_text(json.dumps(self.initial_config, indent=1) + "\n")
        cmd = [DOCKERD, "--iptables=false", "--ip-masq=false", "--bridge=none",
               "--storage-driver=vfs", f"--data-root={self.root / 'data'}",
               f"--exec-root={self.root / 'exec'}", f"--pidfile={self.root / 'dockerd.pid'}",
               f"--config-file={self.config_path}", f"--host={self.host}",
               "--shutdown-timeout=2"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineStartError(f"dockerd exited with {self.proc.returncode}: "
                                        f"{self._log_tail()}")
            if self.ping():
                return
            time.sleep(0.2)
        self.stop_daemon()
        raise EngineStartError(f"dockerd did not answer within {timeout_s:g}s: {self._log_tail()}")

    def ping(self) -> bool:
        import docker
        try:
            client = docker.APIClient(base_url=self.host, timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def stop_daemon(self, timeout_s: float = 30.0) -> None:
        """Stop dockerd (it kills its containers and its managed containerd)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()  # type: ignore[attr-defined]
            self._client = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def _log_tail(self, lines: int = 3) -> str:
        text = _read(str(self.log_path)).strip().splitlines()
        return " | ".join(text[-lines:]) or "(no log)"

    # images and containers -------------------------------------------------------------------
    def build_test_image(self) -> None:
        """`docker import` a rootfs holding busybox-static and its applet links."""
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for directory in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/agent"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, arcname="bin/busybox")
            for applet in applets:
                if applet != "busybox":
                    link = tarfile.TarInfo(f"bin/{applet}")
                    link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                    tar.addfile(link)
            for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                                              "agent:x:1000:1000:agent:/home/agent:/bin/sh\n"),
                               ("etc/group", "root:x:0:\nagent:x:1000:\n")):
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        repo, _, tag = self.image.partition(":")
        self.client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag,
                                               changes=['CMD ["/bin/sh"]'])

    def run(self, command: list[str], *, name: str | None = None,
            labels: dict[str, str] | None = None, network: str = "none", **kwargs) -> str:
        """Start a detached container of the test image; returns its full id. kwargs go to
        docker-py's containers.run (privileged=True, read_only=True, user="1000", ...)."""
        container = self.client.containers.run(self.image, command, name=name, labels=labels or {},
                                               network_mode=network, detach=True, **kwargs)
        return container.id

    def remove_all(self) -> None:
        for container in self.client.containers.list(all=True):
            with contextlib.suppress(Exception):
                container.remove(force=True)

    def init_pid(self, container_id: str) -> int:
        return int(self.client.api.inspect_container(container_id)["State"]["Pid"])


def start_engine(root: str | None = None) -> DockerEngine:
    """Start a private engine and build the test image. EngineUnavailable: this machine lacks a
    prerequisite (skip); EngineStartError: it has them all and dockerd still failed (fail)."""
    reason = unavailable_reason()
    if reason:
        raise EngineUnavailable(reason)
    base = Path(root or tempfile.mkdtemp(prefix="sm-docker-", dir="/tmp"))
    base.chmod(0o700)
    engine = DockerEngine(root=base, socket=base / "docker.sock")
    missing = missing_capabilities()
    if missing:
        wrapper = base / "runc-wrapper"
        wrapper.write_text(_WRAPPER.format(python=sys.executable, missing=missing,
                                           runc=shutil.which("runc")))
        wrapper.chmod(0o700)
        # In daemon.json, not flags: dockerd refuses a reload that finds "runtimes" in both.
        engine.initial_config = {"runtimes": {"sm-runc": {"path": str(wrapper)}},
                                 "default-runtime": "sm-runc"}
    try:
        engine.start_daemon()
        engine.build_test_image()
    except Exception:
        stop_engine(engine)
        raise
    return engine


def stop_engine(engine: DockerEngine) -> None:
    """Remove its containers, stop dockerd, unmount what it left, delete its directory."""
    if engine.ping():
        with contextlib.suppress(Exception):
            engine.remove_all()
    engine.stop_daemon()
    _unmount_below(engine.root)
    shutil.rmtree(engine.root, ignore_errors=True)


def _unmount_below(root: Path) -> None:
    prefix = str(root) + "/"
    points = [line.split()[1] for line in _read("/proc/self/mounts").splitlines()
              if len(line.split()) > 1 and line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@contextlib.contextmanager
def engine_session() -> Iterator[DockerEngine]:
    engine = start_engine()
    try:
        yield engine
    finally:
        stop_engine(engine)


def _serve_until_signalled() -> None:
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):  # set both: a background job starts with SIGINT ignored
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    with engine_session() as eng:
        print(f"DOCKER_HOST={eng.host}  image={eng.image}  (Ctrl-C or SIGTERM stops it)", flush=True)
        while not stop:
            signal.pause()


if __name__ == "__main__":
    _serve_until_signalled()
