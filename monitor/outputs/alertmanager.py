"""Alertmanager (its v2 API: POST /api/v2/alerts): one alert per (rule, sandbox).

Labels: alertname (the rule), severity, sandbox (id), sandbox_name, image, rule_id, and the MITRE
tags (mitre_techniques, mitre_tactics, comma-separated). Annotations: summary, description, the
matched fields (JSON), the process chain, the count, and `trace_url` from the link template.
Alertmanager forgets an alert whose endsAt has passed and expects firing alerts to be sent again
(its clients re-send every minute or so): an active alert is re-posted every `resend_s`, with
endsAt = last match + `resolve_after_s`, so it resolves by itself after a quiet period, or at
once (endsAt = now) when its sandbox ends.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from monitor.event import Alert, Event, rfc3339
from monitor.outputs.delivery import Transport
from monitor.outputs.httppost import HttpPoster
from monitor.outputs.payload import Notice, chain_text, mitre, process_chain, rule_id, sandbox_of, trace_link
from monitor.outputs.secrets import Secret

API_PATH = "/api/v2/alerts"
MAX_ANNOTATION = 4000
MAX_ENDED = 10_000


@dataclass(slots=True)
class _Active:
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_ns: int
    last_seen: float  # monotonic
    count: int = 1
    ends_ns: int | None = None  # set when resolved


@dataclass
class AlertmanagerTransport(Transport):
    url: str
    resolve_after_s: float = 300.0
    resend_s: float = 60.0
    link_template: str = ""
    generator_url: str = ""
    timeout_s: float = 5.0
    verify: bool = True
    ca_file: str | None = None
    token: Secret | None = None
    batch_max: int = 64
    _active: dict[tuple[str, str], _Active] = field(default_factory=dict)
    _traces: dict[str, str] = field(default_factory=dict)
    # sandboxes that ended (the latest MAX_ENDED): a notice that comes after resolves at once
    _ended: dict[str, None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_resend: float = 0.0

    def __post_init__(self) -> None:
        base = self.url.rstrip("/")
        self._poster = HttpPoster(base + API_PATH, self.timeout_s, self.verify, self.ca_file)
        self._headers = {"Content-Type": "application/json", "User-Agent": "sandbox-monitor"}
        if self.token is not None:
            self._headers["Authorization"] = f"Bearer {self.token.value}"

    # pipeline thread
    def observe(self, alert: Alert) -> None:
        key = (alert.rule, str((alert.event.sandbox or {}).get("id", "")))
        with self._lock:
            active = self._active.get(key)
            if active is not None and active.ends_ns is None:
                active.last_seen = time.monotonic()
                active.count += 1

    def sandbox_ended(self, event: Event) -> list[Notice]:
        sandbox_id = str((event.sandbox or {}).get("id", ""))
        self._ended[sandbox_id] = None
        if len(self._ended) > MAX_ENDED:
            del self._ended[next(iter(self._ended))]
        if not any(key[1] == sandbox_id for key in list(self._active)):
            return []
        return [Notice("resolve", event=event)]

    def note_trace(self, sandbox_id: str, trace_id: str) -> None:
        self._traces[sandbox_id] = trace_id

    # worker thread
    def deliver(self, notices: list[Notice]) -> None:
        posted: list[dict[str, Any]] = []
        resolved: list[tuple[str, str]] = []
        now_ns = time.time_ns()
        with self._lock:
            for notice in notices:
                if notice.kind == "alert" and notice.alert is not None:
                    posted.append(self._fire(notice, now_ns))
                elif notice.kind == "resend":
                    payload, expired = self._resend(now_ns)
                    posted += payload
                    resolved += expired
                elif notice.kind == "resolve" and notice.event is not None:
                    sandbox_id = str((notice.event.sandbox or {}).get("id", ""))
                    for key, active in self._active.items():
                        if key[1] == sandbox_id:
                            active.ends_ns = now_ns
                            posted.append(self._wire(active, now_ns))
                            resolved.append(key)
        if posted:
            self._post(posted)
        with self._lock:
            for key in resolved:
                self._active.pop(key, None)

    def tick(self, now: float) -> list[Notice]:
        """A re-send of every active alert every `resend_s` (delivered as a Notice("resend"))."""
        mono = time.monotonic()
        if mono < self._next_resend or not self._active:
            return []
        self._next_resend = mono + self.resend_s
        return [Notice("resend")]

    def _resend(self, now_ns: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Every active alert's wire form; the ones quiet for `resolve_after_s` go out a last
        time (their endsAt has passed) and are forgotten."""
        mono = time.monotonic()
        payload = [self._wire(active, now_ns) for active in self._active.values()]
        expired = [key for key, active in self._active.items() if mono - active.last_seen >= self.resolve_after_s]
        return payload, expired

    def close(self) -> None:
        self._poster.close()

    # wire form
    def _fire(self, notice: Notice, now_ns: int) -> dict[str, Any]:
        alert = notice.alert
        assert alert is not None
        sandbox = sandbox_of(alert.event)
        key = (alert.rule, sandbox["id"])
        active = self._active.get(key)
        labels, annotations = self._describe(alert, sandbox, notice.count)
        if active is None or active.ends_ns is not None:
            active = self._active[key] = _Active(labels, annotations, alert.event.time_ns or now_ns,
                                                 time.monotonic(), notice.count)
        else:
            active.labels, active.annotations = labels, annotations
            active.last_seen = time.monotonic()
            active.count = max(active.count, notice.count)
        if sandbox["id"] in self._ended:  # e.g. folded repeats counted after the sandbox ended
            active.ends_ns = now_ns
            del self._active[key]
        return self._wire(active, now_ns)

    def _wire(self, active: _Active, now_ns: int) -> dict[str, Any]:
        if active.ends_ns is not None:
            ends_ns = active.ends_ns
        else:
            quiet_left = self.resolve_after_s - (time.monotonic() - active.last_seen)
            ends_ns = now_ns + int(max(quiet_left, 0.0) * 1e9)
        active.annotations["count"] = str(active.count)
        out: dict[str, Any] = {"labels": active.labels, "annotations": dict(active.annotations),
                               "startsAt": rfc3339(active.starts_ns), "endsAt": rfc3339(ends_ns)}
        if self.generator_url:
            out["generatorURL"] = self.generator_url
        return out

    def _describe(self, alert: Alert, sandbox: dict[str, Any], count: int) -> tuple[dict[str, str], dict[str, str]]:
        tags = mitre(alert.tags)
        labels = {"alertname": alert.rule, "severity": alert.severity, "sandbox": sandbox["id"],
                  "sandbox_name": sandbox["name"], "image": sandbox["image"], "rule_id": rule_id(alert.rule),
                  "source": "sandbox-monitor"}
        if tags["techniques"]:
            labels["mitre_techniques"] = ",".join(tags["techniques"])
        if tags["tactics"]:
            labels["mitre_tactics"] = ",".join(tags["tactics"])
        chain = chain_text(process_chain(alert.event.process or {}))
        annotations = {"summary": f"{alert.rule} in {sandbox['name'] or sandbox['id']}",
                       "description": alert.description or alert.rule,
                       "matched": json.dumps(alert.matched, default=str, sort_keys=True)[:MAX_ANNOTATION],
                       "process_chain": chain[:MAX_ANNOTATION], "count": str(count),
                       "action": alert.action, "mode": alert.mode}
        link = trace_link(self.link_template, self._traces.get(sandbox["id"], ""), sandbox["id"])
        if link:
            annotations["trace_url"] = link
        return labels, annotations

    def _post(self, alerts: list[dict[str, Any]]) -> None:
        self._poster.post(None, json.dumps(alerts, default=str).encode(), self._headers)
