"""One HTTP(S) connection per output worker, kept alive between requests: POST a body, read the
whole answer, and turn every way it can go wrong (refused, timed out, reset, garbage, a non-2xx
status) into a DeliveryError. TLS verification is on unless the config turns it off."""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

from monitor.outputs.delivery import DeliveryError

MAX_RESPONSE_BYTES = 1 << 20
RETRYABLE_4XX = (408, 425, 429)


def tls_context(verify: bool = True, ca_file: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpPoster:
    def __init__(self, url: str, timeout_s: float = 5.0, verify: bool = True,
                 ca_file: str | None = None) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout_s = timeout_s
        self._context = tls_context(verify, ca_file) if parts.scheme == "https" else None
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._context is not None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                                         context=self._context)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def post(self, path: str | None, body: bytes, headers: dict[str, str]) -> int:
        """The status (2xx); DeliveryError otherwise."""
        conn = self._connection()
        try:
            conn.request("POST", path or self.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            status = response.status
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError and timeouts are OSErrors
            self.close()
            raise DeliveryError(f"{self.host}:{self.port}: {type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return status
        permanent = 400 <= status < 500 and status not in RETRYABLE_4XX
        raise DeliveryError(f"{self.host}:{self.port}: HTTP {status}", permanent=permanent)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
