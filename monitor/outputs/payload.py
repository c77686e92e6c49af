"""The alert as outputs send it: one versioned JSON document (schema `sandbox-monitor.alert/v1`).

Documented field by field in docs/outputs.md; tests/schemas/alert-v1.schema.json checks it. The
webhook, the command output and syslog's message carry it as is; Alertmanager and OCSF map it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from monitor.event import Alert, Event, rfc3339

SCHEMA = "sandbox-monitor.alert/v1"
MITRE_TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?\Z")
MITRE_TACTICS = frozenset({
    "reconnaissance", "resource_development", "initial_access", "execution", "persistence",
    "privilege_escalation", "defense_evasion", "credential_access", "discovery", "lateral_movement",
    "collection", "command_and_control", "exfiltration", "impact"})
SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass(slots=True)
class Notice:
    """One thing an output delivers: an alert (`count` > 1 when duplicates were folded into it),
    an event (OCSF's every-event mode), or a resolution (Alertmanager)."""
    kind: str  # alert | event | resolve
    alert: Alert | None = None
    event: Event | None = None
    count: int = 1
    first_ns: int = 0
    last_ns: int = 0

    @property
    def rule(self) -> str:
        return self.alert.rule if self.alert is not None else ""


def rule_id(rule: str) -> str:
    """A stable identifier for a rule name, fit for a label value and a URL."""
    return re.sub(r"[^a-z0-9]+", "-", rule.lower()).strip("-") or "rule"


def mitre(tags: list[str]) -> dict[str, list[str]]:
    return {"techniques": [t for t in tags if MITRE_TECHNIQUE.match(t)],
            "tactics": [t for t in tags if t in MITRE_TACTICS]}


def process_chain(process: dict[str, Any]) -> list[dict[str, Any]]:
    """Oldest ancestor first, the acting process last."""
    chain = [{"pid": a.get("pid"), "executable": a.get("executable", ""), "args": a.get("args") or []}
             for a in reversed(process.get("ancestors") or [])]
    if process:
        chain.append({"pid": process.get("pid"), "executable": process.get("executable", ""),
                      "args": process.get("args") or []})
    return chain


def chain_text(chain: list[dict[str, Any]]) -> str:
    return " > ".join(f"{str(p['executable']).rsplit('/', 1)[-1] or '?'}({p['pid']})" for p in chain)


def sandbox_of(event: Event) -> dict[str, Any]:
    sandbox = event.sandbox or {}
    return {"id": str(sandbox.get("id") or ""), "name": str(sandbox.get("name") or ""),
            "runtime": str(sandbox.get("runtime") or ""), "image": str(sandbox.get("image") or ""),
            "labels": {str(k): str(v) for k, v in (sandbox.get("labels") or {}).items()}}


def trace_link(template: str, trace_id: str, sandbox_id: str) -> str:
    """`template` with {trace_id} and {sandbox_id} filled in ("" without a template, or when it
    needs a trace id nobody knows)."""
    if not template or ("{trace_id}" in template and not trace_id):
        return ""
    return template.replace("{trace_id}", trace_id).replace("{sandbox_id}", sandbox_id)


def alert_document(notice: Notice, trace_id: str = "", link_template: str = "") -> dict[str, Any]:
    """The v1 document for an alert notice."""
    alert = notice.alert
    assert alert is not None
    event = alert.event
    sandbox = sandbox_of(event)
    chain = process_chain(event.process or {})
    first = notice.first_ns or event.time_ns
    return {
        "schema": SCHEMA, "id": alert.id, "time": rfc3339(alert.time_ns),
        "rule": alert.rule, "rule_id": rule_id(alert.rule), "description": alert.description,
        "severity": alert.severity, "action": alert.action, "mode": alert.mode, "tags": list(alert.tags),
        "mitre": mitre(alert.tags), "matched": alert.matched, "count": notice.count,
        "first_seen": rfc3339(first), "last_seen": rfc3339(notice.last_ns or first),
        "sandbox": sandbox, "process_chain": chain, "process_chain_text": chain_text(chain),
        "trace_id": trace_id, "trace_url": trace_link(link_template, trace_id, sandbox["id"]),
        "event": event.to_dict(),
    }
