"""The ATT&CK coverage map of a rule set: per tactic and technique, the rules that cover it (from
their tags) and what proves each rule fires: its fixtures (rules/tests/<file>) and the end-to-end
tests that name it (its name in quotes, or its Sigma id, in a tests/e2e/*.py file)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.policy.errors import PolicyError
from monitor.policy.ruleset import Rule
from monitor.policy.tooling import fixture_file, load_fixtures

# Enterprise ATT&CK tactics as rule tags write them (Sigma's attack.defense-evasion too).
TACTICS = ("reconnaissance", "resource_development", "initial_access", "execution", "persistence",
           "privilege_escalation", "defense_evasion", "stealth", "defense_impairment",
           "credential_access", "discovery", "lateral_movement", "collection", "command_and_control",
           "exfiltration", "impact")
TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?\Z")
NO_TACTIC = "(no tactic tagged)"


@dataclass(slots=True)
class RuleProof:
    rule: str
    file: str
    sigma_id: str = ""
    fixtures: list[str] = field(default_factory=list)
    e2e: list[str] = field(default_factory=list)

    @property
    def proven(self) -> bool:
        return bool(self.fixtures or self.e2e)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "file": self.file, "fixtures": self.fixtures,
                               "e2e": self.e2e}
        if self.sigma_id:
            out["sigma_id"] = self.sigma_id
        return out


@dataclass(slots=True)
class Coverage:
    tactics: dict[str, dict[str, list[RuleProof]]] = field(default_factory=dict)  # tactic -> technique -> rules
    untagged: list[RuleProof] = field(default_factory=list)  # rules with no technique tag

    def to_dict(self) -> dict[str, Any]:
        return {"tactics": {tactic: {technique: [p.to_dict() for p in proofs]
                                     for technique, proofs in techniques.items()}
                            for tactic, techniques in self.tactics.items()},
                "untagged": [p.to_dict() for p in self.untagged],
                "totals": {"tactics": len([t for t in self.tactics if t != NO_TACTIC]),
                           "techniques": len({tq for ts in self.tactics.values() for tq in ts}),
                           "rules": len({p.rule for p in self.proofs()} | {p.rule for p in self.untagged}),
                           "rules_proven": len({p.rule for p in self.proofs() if p.proven})}}

    def proofs(self) -> list[RuleProof]:
        return [p for techniques in self.tactics.values() for proofs in techniques.values() for p in proofs]


def fixture_proofs(rules: list[Rule]) -> dict[str, list[str]]:
    """rule name -> fixture files holding at least one `match` case for it."""
    found: dict[str, list[str]] = {}
    for rule_file in sorted({Path(rule.file) for rule in rules}):
        fixtures = fixture_file(rule_file)
        if not fixtures.is_file():
            continue
        try:
            entries = load_fixtures(fixtures)
        except PolicyError:
            continue
        for entry in entries:
            if entry.get("match"):
                found.setdefault(entry["rule"], []).append(str(fixtures))
    return found


def e2e_proofs(rules: list[Rule], tests_dir: Path) -> dict[str, list[str]]:
    """rule name -> end-to-end test files naming the rule (in quotes) or its Sigma id."""
    texts = {}
    if tests_dir.is_dir():
        for path in sorted(tests_dir.glob("*.py")):
            try:
                texts[str(path)] = path.read_text(errors="replace")
            except OSError:
                continue
    found: dict[str, list[str]] = {}
    for rule in rules:
        sigma_id = str(rule.origin.get("sigma_id") or "")
        for path, text in texts.items():
            if f'"{rule.name}"' in text or (sigma_id and sigma_id in text):
                found.setdefault(rule.name, []).append(path)
    return found


def coverage(rules: list[Rule], tests_dir: Path) -> Coverage:
    fixtures, e2e = fixture_proofs(rules), e2e_proofs(rules, tests_dir)
    out = Coverage()
    for rule in rules:
        proof = RuleProof(rule.name, rule.file, str(rule.origin.get("sigma_id") or ""),
                          fixtures.get(rule.name, []), e2e.get(rule.name, []))
        tags = [t.strip() for t in rule.tags]
        techniques = [t.upper() for t in tags if TECHNIQUE.match(t.upper())]
        tactics = [t.lower().replace("-", "_") for t in tags if t.lower().replace("-", "_") in TACTICS]
        if not techniques:
            out.untagged.append(proof)
            continue
        for tactic in tactics or [NO_TACTIC]:
            for technique in techniques:
                out.tactics.setdefault(tactic, {}).setdefault(technique, []).append(proof)
    order = {name: index for index, name in enumerate((*TACTICS, NO_TACTIC))}
    out.tactics = {tactic: dict(sorted(out.tactics[tactic].items()))
                   for tactic in sorted(out.tactics, key=lambda t: order[t])}
    return out


def render(cover: Coverage) -> list[str]:
    """The map as text lines: a tactic, then its techniques with each rule and its proof."""
    lines = []
    for tactic, techniques in cover.tactics.items():
        rules = {p.rule for proofs in techniques.values() for p in proofs}
        lines.append(f"{tactic}: {len(techniques)} techniques, {len(rules)} rules")
        for technique, proofs in techniques.items():
            lines.append(f"  {technique}")
            for proof in proofs:
                lines.append(f"    {proof.rule}  [{_proof_text(proof)}]")
    if cover.untagged:
        lines.append(f"no ATT&CK technique tagged: {len(cover.untagged)} rules")
        lines += [f"    {p.rule}  [{_proof_text(p)}]" for p in cover.untagged]
    totals = cover.to_dict()["totals"]
    lines.append(f"{totals['tactics']} tactics, {totals['techniques']} techniques, {totals['rules']} rules "
                 f"({totals['rules_proven']} proven by a fixture or an end-to-end test)")
    return lines


def _proof_text(proof: RuleProof) -> str:
    parts = [f"fixture {Path(f).name}" for f in proof.fixtures] + [f"e2e {Path(f).name}" for f in proof.e2e]
    return ", ".join(parts) or "unproven"
