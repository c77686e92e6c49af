"""Shared pytest fixtures."""

from __future__ import annotations

import sys
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
