"""The llm source: the agent's model calls and tool calls, read as TLS plaintext at libssl.

Public API: `LlmSource` (the `Source`), `ToolCallLinker` (caused_by links for enrich),
`TlsDecoder` (records -> events, pure), `CAPTURE_MODES` / `DEFAULT_CAPTURE` (`--llm-capture`).
`LlmSource` needs bcc and root; importing this package does not.
"""

from monitor.llm.link import ToolCallLinker
from monitor.llm.redact import CAPTURE_MODES, DEFAULT_CAPTURE

__all__ = ["CAPTURE_MODES", "DEFAULT_CAPTURE", "LlmSource", "TlsDecoder", "ToolCallLinker"]


def __getattr__(name: str):  # the source pulls in the kernel half lazily
    if name in ("LlmSource", "TlsDecoder"):
        from monitor.llm import source
        return getattr(source, name)
    raise AttributeError(name)
