"""The llm source: the agent's model calls and tool calls, read as TLS plaintext at libssl.

Public API: `LlmSource` (the `Source`), `ToolCallLinker` (caused_by links for enrich),
`TlsDecoder` (records -> events, pure), `CAPTURE_MODES` / `DEFAULT_CAPTURE` (`--llm-capture`).
`LlmSource` needs bcc and root to start; importing this package needs neither.
"""

from monitor.llm.link import ToolCallLinker
from monitor.llm.redact import CAPTURE_MODES, DEFAULT_CAPTURE
from monitor.llm.source import LlmSource, TlsDecoder

__all__ = ["CAPTURE_MODES", "DEFAULT_CAPTURE", "LlmSource", "TlsDecoder", "ToolCallLinker"]
