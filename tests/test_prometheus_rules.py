"""deploy/prometheus: the monitor's health alerting rules pass promtool's check and unit tests,
and name only metrics and labels the monitor exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from monitor.sinks import metrics as m

RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES = RULES_DIR / "sandbox-monitor-alerts.yaml"
PROMTOOL = shutil.which("promtool")


def test_promtool_checks_the_rules():
    assert PROMTOOL, "promtool (Debian's prometheus) is not installed: EXTRAS=prometheus scripts/setup.sh"
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_promtool_unit_tests_pass():
    assert PROMTOOL
    result = subprocess.run([PROMTOOL, "test", "rules", "sandbox-monitor-alerts.test.yaml"], cwd=RULES_DIR,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_name_only_exposed_series_and_their_labels():
    known = m.prometheus_series()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    named: set[str] = set()
    for rule in rules:
        for series in re.findall(r"\b(sandbox_monitor_\w+)", rule["expr"]):
            assert series in known, f"{rule['alert']}: {series} is not a metric the monitor exposes"
            named.add(known[series].name)
            by = re.search(r"by \(([^)]*)\)", rule["expr"])
            labels = {label.strip() for label in by.group(1).split(",")} if by else set()
            assert labels <= set(known[series].labels) | {"instance", "job"}, rule["alert"]
    assert {m.LOST_EVENTS.name, m.RULE_ERRORS.name, m.EXPORT_FAILURES.name, m.EXPORT_DROPPED.name,
            m.OUTPUT_UNDELIVERED.name, m.OUTPUT_FAILURES.name, m.OUTPUT_QUEUE_DEPTH.name} <= named
