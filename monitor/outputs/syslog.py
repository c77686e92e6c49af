"""Syslog (RFC 5424) over UDP (RFC 5426: one message a datagram), TCP (RFC 6587 octet counting)
or TLS (RFC 5425, octet counting).

    <PRI>1 TIMESTAMP HOSTNAME sandbox-monitor PROCID ALERT [sandbox-monitor@32473 rule=".." ...] BOM{json}

The structured data carries what a SIEM filters on (rule, rule_id, severity, sandbox, image,
action, count); the message is the alert's v1 JSON document. Over UDP a document too long for
`max_udp_bytes` is sent without its `event` member.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from monitor.event import rfc3339
from monitor.outputs.delivery import DeliveryError, Transport
from monitor.outputs.httppost import tls_context
from monitor.outputs.payload import Notice, alert_document, rule_id, sandbox_of

FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
              "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21,
              "local6": 22, "local7": 23}
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
SD_ID = "sandbox-monitor@32473"  # 32473: the example private enterprise number of RFC 5612
BOM = b"\xef\xbb\xbf"
MAX_UDP_BYTES = 8192


def sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def header_field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, "-" when empty."""
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def frame_message(facility: int, notice: Notice, hostname: str, app_name: str,
                  max_bytes: int | None = None) -> bytes:
    alert = notice.alert
    assert alert is not None
    document: dict[str, Any] = alert_document(notice)
    sandbox = sandbox_of(alert.event)
    pri = facility * 8 + SYSLOG_SEVERITY.get(alert.severity, 5)
    params = {"rule": alert.rule, "rule_id": rule_id(alert.rule), "severity": alert.severity,
              "sandbox": sandbox["id"], "sandbox_name": sandbox["name"], "image": sandbox["image"],
              "action": alert.action, "count": str(notice.count), "alert_id": alert.id}
    sd = "[" + SD_ID + "".join(f' {k}="{sd_escape(str(v))}"' for k, v in params.items()) + "]"
    head = (f"<{pri}>1 {rfc3339(alert.time_ns)[:26]}Z {header_field(hostname, 255)} "
            f"{header_field(app_name, 48)} {os.getpid()} ALERT {sd} ").encode()
    body = json.dumps(document, default=str, separators=(",", ":")).encode()
    if max_bytes is not None and len(head) + len(BOM) + len(body) > max_bytes:
        document.pop("event", None)
        body = json.dumps(document, default=str, separators=(",", ":")).encode()
    return head + BOM + body


@dataclass
class SyslogTransport(Transport):
    protocol: str  # udp | tcp | tls
    host: str
    port: int
    facility: int = FACILITIES["local0"]
    app_name: str = "sandbox-monitor"
    hostname: str = ""
    timeout_s: float = 5.0
    verify: bool = True
    ca_file: str | None = None
    batch_max: int = 64

    def __post_init__(self) -> None:
        self.hostname = self.hostname or socket.gethostname()
        self._sock: socket.socket | None = None
        self._context = tls_context(self.verify, self.ca_file) if self.protocol == "tls" else None

    def _socket(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            if self.protocol == "udp":
                info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(info[0], socket.SOCK_DGRAM)
                sock.connect(info[4])
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
                if self._context is not None:
                    sock = self._context.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.timeout_s)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"syslog {self.protocol}://{self.host}:{self.port}: {exc}") from None
        self._sock = sock
        return sock

    def deliver(self, notices: list[Notice]) -> None:
        limit = MAX_UDP_BYTES if self.protocol == "udp" else None
        frames = [frame_message(self.facility, n, self.hostname, self.app_name, limit)
                  for n in notices if n.alert is not None]
        sock = self._socket()
        try:
            if self.protocol == "udp":
                for message in frames:
                    sock.send(message)
            else:
                sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in frames))
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise DeliveryError(f"syslog {self.protocol}://{self.host}:{self.port}: {exc}") from None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
