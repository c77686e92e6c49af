"""What an llm event may carry, by capture mode, and the credential scrub applied in every mode.

Modes (`--llm-capture`):
  off       no TLS probes, no llm events.
  metadata  (default) provider, host, model, counts, stop reason, token usage, and every tool
            call with its name and arguments; no prompt or response text. Tool calls are what
            rules and the caused_by link need; prompts and answers carry the user's code and data,
            which a security log should not copy by default.
  full      metadata plus the last message's text and the response text.

Credential headers are dropped when a head is parsed (monitor.llm.http); this module also
scrubs key-shaped strings from whatever text or arguments are kept.
"""

from __future__ import annotations

import re
from typing import Any

CAPTURE_MODES = ("off", "metadata", "full")
DEFAULT_CAPTURE = "metadata"
REDACTED = "[REDACTED]"

_SECRET = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{8,}"            # Anthropic
    r"|sk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{16,}"  # OpenAI
    r"|(?<=Bearer )[A-Za-z0-9._~+/=\-]{8,}"  # any bearer token
    r"|AIza[0-9A-Za-z_\-]{30,}"             # Google
    r"|gh[pousr]_[A-Za-z0-9]{20,}"          # GitHub
    r"|xox[abpr]-[A-Za-z0-9\-]{10,}"        # Slack
    r"|AKIA[0-9A-Z]{16}"                    # AWS access key id
)


def scrub(value: Any) -> Any:
    """`value` with key-shaped substrings replaced, recursively through lists and maps."""
    if isinstance(value, str):
        return _SECRET.sub(REDACTED, value)
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    return value


def apply_capture(llm: dict[str, Any], mode: str) -> dict[str, Any]:
    """The llm map as `mode` allows it, scrubbed."""
    if mode not in CAPTURE_MODES:
        raise ValueError(f"unknown llm capture mode {mode!r} (expected one of {', '.join(CAPTURE_MODES)})")
    out = dict(llm)
    if mode != "full":
        out.pop("text", None)
        last = out.get("last_message")
        if isinstance(last, dict):
            out["last_message"] = {k: v for k, v in last.items() if k != "text"}
    return scrub(out)
