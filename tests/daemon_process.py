"""`monitor daemon` as a subprocess for tests: its stderr is its log, /healthz and /metrics are
read over loopback, SIGTERM stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def daemon_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monitor", "daemon", "--config", str(config), *extra]


class DaemonProcess:
    """A `monitor daemon` subprocess whose stderr is read back as its log."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        # its own resident socket unless its config names one: a test's `monitor run` is
        # standalone unless it asks for a daemon (tests/conftest.py)
        env = {**os.environ, "SANDBOX_MONITOR_SOCKET": str(log_path.with_suffix(".sock"))}
        self.proc = subprocess.Popen(daemon_cmd(config), stdout=subprocess.DEVNULL,
                                     stderr=self.log_file, cwd=ROOT, env=env)
        self.port = int(self.wait_log(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", 60).group(1))

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str, timeout_s: float = 15, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log()[start:])
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} in {timeout_s}s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self, timeout_s: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log_file.close()
