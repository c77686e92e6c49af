"""Webhook: POST one alert as JSON (schema sandbox-monitor.alert/v1, docs/outputs.md) or as an
OCSF record (`format: ocsf`).

Signature: with a `secret`, every request carries
    X-Sandbox-Monitor-Timestamp: <unix seconds>
    X-Sandbox-Monitor-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
so a receiver can check the body and refuse a replay of an old one. TLS verification is on
unless `tls: {verify: false}`; `tls: {ca_file: PATH}` trusts a private CA.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.outputs.delivery import DeliveryError, Transport
from monitor.outputs.httppost import HttpPoster
from monitor.outputs.payload import SCHEMA, Notice, alert_document
from monitor.outputs.secrets import Secret

SIGNATURE_HEADER = "X-Sandbox-Monitor-Signature"
TIMESTAMP_HEADER = "X-Sandbox-Monitor-Timestamp"
SCHEMA_HEADER = "X-Sandbox-Monitor-Schema"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass
class WebhookTransport(Transport):
    url: str
    secret: Secret | None = None
    headers: dict[str, str] = field(default_factory=dict)
    header_secrets: dict[str, Secret] = field(default_factory=dict)
    timeout_s: float = 5.0
    verify: bool = True
    ca_file: str | None = None
    link_template: str = ""
    render: Callable[[Notice], dict[str, Any] | None] | None = None  # another format (OCSF); default v1
    schema: str = SCHEMA
    events: bool = False
    _traces: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wants_events = self.events
        self._poster = HttpPoster(self.url, self.timeout_s, self.verify, self.ca_file)
        self._base_headers = {"User-Agent": "sandbox-monitor", **self.headers,
                              "Content-Type": "application/json", SCHEMA_HEADER: self.schema}
        for name, secret in self.header_secrets.items():
            self._base_headers[name] = secret.value

    def note_trace(self, sandbox_id: str, trace_id: str) -> None:
        self._traces[sandbox_id] = trace_id

    def document(self, notice: Notice) -> dict[str, Any] | None:
        if self.render is not None:
            return self.render(notice)
        if notice.alert is None:
            raise DeliveryError("the v1 schema carries alerts only", permanent=True)
        sandbox_id = str((notice.alert.event.sandbox or {}).get("id", ""))
        return alert_document(notice, self._traces.get(sandbox_id, ""), self.link_template)

    def deliver(self, notices: list[Notice]) -> None:
        for notice in notices:
            document = self.document(notice)
            if document is None:  # nothing in this format describes it (an OCSF-unmapped kind)
                continue
            body = json.dumps(document, default=str, separators=(",", ":")).encode()
            headers = dict(self._base_headers)
            if self.secret is not None:
                stamp = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = stamp
                headers[SIGNATURE_HEADER] = signature(self.secret.value, stamp, body)
            self._poster.post(None, body, headers)

    def close(self) -> None:
        self._poster.close()
