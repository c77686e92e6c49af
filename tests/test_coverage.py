"""`monitor rules coverage`: tactics and techniques from rule tags, proof from fixtures and e2e tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from monitor.policy import DEFAULT_RULES_DIR, load_rules
from monitor.policy.coverage import NO_TACTIC, coverage, render

ROOT = Path(__file__).resolve().parents[1]
MONITOR = str(ROOT / ".venv" / "bin" / "monitor")

RULES = """
- rule: Proven by both
  when: [exec]
  condition: event.process.executable.endsWith("/nc")
  tags: [execution, command_and_control, T1059.004, T1095]
- rule: Proven by nothing
  when: [exec]
  condition: event.process.executable.endsWith("/xmrig")
  tags: [impact, T1496]
- rule: Technique without tactic
  when: [exec]
  condition: event.process.executable.endsWith("/at")
  tags: [T1053.002]
- rule: Untagged
  when: [exec]
  condition: event.process.executable.endsWith("/id")
"""
FIXTURES = """
- rule: Proven by both
  match: [{kind: exec, process: {executable: /usr/bin/nc}}]
- rule: Proven by nothing
  no_match: [{kind: exec, process: {executable: /usr/bin/true}}]
"""


def write_pack(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "tests").mkdir()
    (tmp_path / "rules" / "pack.yaml").write_text(RULES)
    (tmp_path / "rules" / "tests" / "pack.yaml").write_text(FIXTURES)
    e2e = tmp_path / "e2e"
    e2e.mkdir()
    (e2e / "test_pack_e2e.py").write_text('BEHAVIOURS = {"Proven by both": "nc -z 127.0.0.1 9"}\n')
    return tmp_path / "rules", e2e


def test_map_groups_rules_by_tactic_and_technique_with_their_proof(tmp_path: Path) -> None:
    rules_dir, e2e = write_pack(tmp_path)
    cover = coverage(load_rules([rules_dir]).rules, e2e)
    assert list(cover.tactics) == ["execution", "command_and_control", "impact", NO_TACTIC]
    assert set(cover.tactics["execution"]) == {"T1059.004", "T1095"}
    (proof,) = cover.tactics["command_and_control"]["T1095"]
    assert proof.rule == "Proven by both"
    assert proof.fixtures == [str(rules_dir / "tests" / "pack.yaml")]
    assert proof.e2e == [str(e2e / "test_pack_e2e.py")]
    (unproven,) = cover.tactics["impact"]["T1496"]
    assert unproven.fixtures == [] and unproven.e2e == [] and not unproven.proven  # no_match proves nothing
    assert [p.rule for p in cover.tactics[NO_TACTIC]["T1053.002"]] == ["Technique without tactic"]
    assert [p.rule for p in cover.untagged] == ["Untagged"]
    totals = cover.to_dict()["totals"]
    assert totals == {"tactics": 3, "techniques": 4, "rules": 4, "rules_proven": 1}
    text = render(cover)
    assert "execution: 2 techniques, 1 rules" in text
    assert "    Proven by both  [fixture pack.yaml, e2e test_pack_e2e.py]" in text
    assert "    Proven by nothing  [unproven]" in text


def test_sigma_rules_are_proven_by_their_id_in_an_e2e_test(tmp_path: Path) -> None:
    sigma = tmp_path / "sigma"
    sigma.mkdir()
    (sigma / "at.yml").write_text(
        "title: At job\nid: d2d642d7-b393-43fe-bae4-e81ed5915c4b\ntags: [attack.persistence, attack.t1053.002]\n"
        "logsource: {product: linux, category: process_creation}\n"
        "detection:\n  selection:\n    Image|endswith: /at\n  condition: selection\n")
    e2e = tmp_path / "e2e"
    e2e.mkdir()
    (e2e / "test_sigma.py").write_text('SCENARIOS = {"d2d642d7-b393-43fe-bae4-e81ed5915c4b": "at now"}\n')
    cover = coverage(load_rules([sigma]).rules, e2e)
    (proof,) = cover.tactics["persistence"]["T1053.002"]
    assert proof.sigma_id == "d2d642d7-b393-43fe-bae4-e81ed5915c4b" and proof.e2e == [str(e2e / "test_sigma.py")]


def test_default_pack_every_rule_is_mapped_and_proven() -> None:
    cover = coverage(load_rules([DEFAULT_RULES_DIR]).rules, ROOT / "tests" / "e2e")
    assert not cover.untagged
    assert all(p.fixtures for p in cover.proofs()), [p.rule for p in cover.proofs() if not p.fixtures]
    by_e2e = {p.rule for p in cover.proofs() if p.e2e}
    assert {"SSH private key read", "Reverse shell", "Container privileged"} <= by_e2e


def test_cli_text_and_json(tmp_path: Path) -> None:
    rules_dir, e2e = write_pack(tmp_path)
    proc = subprocess.run([MONITOR, "rules", "coverage", str(rules_dir), "--tests", str(e2e), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["tactics"]["impact"]["T1496"][0]["rule"] == "Proven by nothing"
    assert data["totals"]["rules_proven"] == 1
    text = subprocess.run([MONITOR, "rules", "coverage", str(rules_dir), "--tests", str(e2e)],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and text.stdout.splitlines()[-1] == \
        "3 tactics, 4 techniques, 4 rules (1 proven by a fixture or an end-to-end test)"
    bad = subprocess.run([MONITOR, "rules", "coverage", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip().endswith("no such rule file or folder")
    assert len(bad.stderr.strip().splitlines()) == 1
