"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docker_engine import DockerEngine, EngineUnavailable, start_engine, stop_engine  # noqa: E402

_engine_failure: str | None = None


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """One private Docker engine per test session (see tests/docker_engine.py), stopped at the end.

    Tests that take it are skipped, with the reason, where no engine can be started."""
    global _engine_failure
    if _engine_failure:
        pytest.skip(f"no Docker engine: {_engine_failure}")
    try:
        engine = start_engine()
    except EngineUnavailable as exc:
        _engine_failure = str(exc)
        pytest.skip(f"no Docker engine: {exc}")
    try:
        yield engine
    finally:
        stop_engine(engine)
