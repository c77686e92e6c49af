"""CEL functions beyond the standard library whose Python bodies the engine, the pre-filter and
the test oracle share (one definition, so a pre-filter can never disagree with CEL about them).

    list(string).join(separator) -> string   the items joined (cel-go's strings extension)
    string.lowerAscii() -> string            A-Z lowered, every other character kept (same)
"""

from __future__ import annotations

from typing import Any

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower_ascii(text: str) -> str:
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def join(items: Any, separator: str) -> str:
    """TypeError when an item is not a string: CEL reports it as an evaluation error."""
    if not all(type(item) is str for item in items):
        raise TypeError("join: every item must be a string")
    return separator.join(items)
