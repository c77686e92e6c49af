"""Correlation rules live: a real `monitor run` (real probes) where a burst of discovery commands
and a write, chmod +x and run of the same file each raise their correlation rule's alert once."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor_run import monitor_run, needs_root  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]

RULES = """
- rule: Burst of discovery commands
  when: [exec]
  condition: event.process.executable.matches("/(id|whoami|uname|hostname)$")
  threshold: {count: 4, within: 30s, by: parent, distinct: event.process.executable}
- rule: Written, made executable, run
  sequence:
    within: 30s
    steps:
      - {when: [open], condition: 'event.file.write == true', key: event.file.path}
      - {when: [chmod], condition: 'true', key: event.file.path}
      - {when: [exec], condition: 'true', key: event.process.executable}
"""


def test_threshold_and_sequence_fire_live() -> None:
    workspace = Path(tempfile.mkdtemp(prefix="monitor-corr-e2e-", dir=Path.home()))
    try:
        rules = workspace / "correlation.yaml"
        rules.write_text(RULES)
        script = (f"id >/dev/null; whoami >/dev/null; uname >/dev/null; hostname >/dev/null; "
                  f"cp /bin/true {workspace}/dl && chmod +x {workspace}/dl && {workspace}/dl")
        result = monitor_run(script, "--rules", str(rules))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    assert result.summary, result.stderr[-2000:]
    burst = [a for a in result.alerts if a["rule"] == "Burst of discovery commands"]
    assert len(burst) == 1 and burst[0]["event"]["process"]["executable"].endswith("/hostname")
    chain = [a for a in result.alerts if a["rule"] == "Written, made executable, run"]
    assert len(chain) == 1 and chain[0]["event"]["kind"] == "exec"
    assert chain[0]["event"]["process"]["executable"] == f"{workspace}/dl"
