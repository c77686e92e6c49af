"""The report page: one self-contained HTML file (styles and script inline, no network access: its
Content-Security-Policy allows nothing to be fetched and only its own script to run).

Journal text reaches the page only as JSON inside a `<script type="application/json">` element,
escaped so that no journal string can close that element or start markup (`<`, `>`, `&`, and
U+2028/2029 become \\u escapes), and the page's script puts it into the document with
textContent only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from contextlib import suppress
from importlib import resources
from typing import Any

PLACEHOLDER_DATA = "__REPORT_DATA__"
PLACEHOLDER_SCRIPT = "__REPORT_SCRIPT__"
PLACEHOLDER_STYLE = "__REPORT_STYLE__"
PLACEHOLDER_CSP = "__REPORT_CSP__"
PLACEHOLDER_TITLE = "__REPORT_TITLE__"

_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
            0x2028: "\\u2028", 0x2029: "\\u2029"}


def embed_json(data: Any) -> str:
    """JSON that is inert inside a script element: ASCII only (ensure_ascii also escapes lone
    surrogates and U+2028/2029), and no `<`, `>` or `&` (they only occur inside strings, where the
    \\u escape is the same string to JSON.parse)."""
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=str).translate(_ESCAPES)


def _asset(name: str) -> str:
    return resources.files("monitor.report").joinpath(name).read_text(encoding="utf-8")


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render_page(data: dict[str, Any]) -> str:
    script = _asset("page.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src 'none'; "
           "connect-src 'none'; form-action 'none'; base-uri 'none'")
    names = [str(s.get("sandbox", {}).get("name") or s.get("sandbox", {}).get("id") or "")
             for s in data.get("sessions", [])]
    title = "sandbox-monitor report" + (f": {', '.join(names)[:120]}" if names else "")
    page = _asset("page.html")
    # placeholders filled last-to-first so no inserted text is searched again
    page = page.replace(PLACEHOLDER_CSP, csp).replace(PLACEHOLDER_TITLE, _html_text(title))
    page = page.replace(PLACEHOLDER_STYLE, _asset("page.css"))
    head, _, tail = page.partition(PLACEHOLDER_DATA)
    tail = tail.replace(PLACEHOLDER_SCRIPT, script)
    return head + embed_json(data) + tail


def write_page(data: dict[str, Any], path: str) -> int:
    """Write the page (0600, replaced atomically); returns its size in bytes."""
    body = render_page(data).encode("utf-8")
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return len(body)
