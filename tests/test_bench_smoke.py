"""The benchmarks are scripts, not timed tests: CI only checks that each one runs (smoke mode)
and says something. Their figures come from full runs (`python -m tests.bench`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench.__main__ import BENCHMARKS, run_one  # noqa: E402

NEEDS_ROOT = {"overhead", "exec_path", "reaction", "capacity", "tls", "gvisor", "docker_sandboxes", "outputs"}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_in_smoke_mode(name: str) -> None:
    if name in NEEDS_ROOT and os.geteuid() != 0:
        pytest.skip("needs root (eBPF); CI runs as root")
    result = run_one(name, smoke=True, timeout=600)
    assert result["status"] == 0, result["error"]
    assert result["output"], "a benchmark prints its figures"
