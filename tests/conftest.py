"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docker_engine import DockerEngine, EngineUnavailable, start_engine, stop_engine  # noqa: E402


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """One private Docker engine per test session (see tests/docker_engine.py), stopped at the end.

    Tests that take it are skipped, with the reason, where the machine lacks what an engine needs;
    where it has everything and dockerd still fails to start, they error."""
    try:
        engine = start_engine()
    except EngineUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    try:
        yield engine
    finally:
        stop_engine(engine)


# --- monitor run, standalone and through the resident monitor ---------------------------------

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="sm-session-"))
# `monitor run` looks for a resident monitor here: nothing serves it unless a test asks, so a
# plain `monitor run` in a test is standalone, whatever daemon runs on the machine.
os.environ["SANDBOX_MONITOR_SOCKET"] = str(_SESSION_DIR / "nobody.sock")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "standalone_only(reason): a monitor_run test that checks what only "
                                       "a standalone run has (its own probes, loop or runtime)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every e2e test that drives `monitor run` through tests/monitor_run.py runs both ways."""
    if "monitor_run" not in vars(metafunc.module) or metafunc.definition.get_closest_marker("standalone_only"):
        return
    metafunc.fixturenames.append("run_mode")
    metafunc.parametrize("run_mode", ["standalone", "resident"], indirect=True)


@pytest.fixture(scope="session")
def resident_daemon() -> Iterator[str]:
    """A `monitor daemon` serving `monitor run` sandboxes (no rules of its own, no Docker)."""
    from daemon_process import DaemonProcess

    empty = _SESSION_DIR / "no-rules"
    empty.mkdir(exist_ok=True)
    socket_path = _SESSION_DIR / "resident.sock"
    config = _SESSION_DIR / "resident.yaml"
    config.write_text(f"rules: [{empty}]\ndocker: {{enabled: false}}\ngvisor: {{enabled: false}}\n"
                      f"metrics: {{address: '127.0.0.1:0'}}\nsocket: {socket_path}\n")
    daemon = DaemonProcess(config, _SESSION_DIR / "resident.log")
    try:
        daemon.wait_log(r"resident: `monitor run` sandboxes on", 60)
        yield str(socket_path)
    finally:
        assert daemon.stop() == 0, daemon.log()


@pytest.fixture
def run_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    from monitor_run import RESIDENT

    mode = request.param
    RESIDENT.update(mode=mode, socket=request.getfixturevalue("resident_daemon") if mode == "resident" else None)
    try:
        yield mode
    finally:
        RESIDENT.update(mode="standalone", socket=None)
