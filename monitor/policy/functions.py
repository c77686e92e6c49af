"""CEL functions beyond the standard library whose Python bodies the engine, the pre-filter and
the test oracle share (one definition, so a pre-filter can never disagree with CEL about them).

    list(string).join(separator) -> string   the items joined (cel-go's strings extension)
    string.lowerAscii() -> string            A-Z lowered, every other character kept (same)

`Derived` is a field-path step that applies one of them (`event.process.args.join(" ")`), for the
pre-filters and guards that read fields in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MISSING = object()  # a field the event does not have (the pre-filters' and guards' sentinel)

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower_ascii(text: str) -> str:
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def join(items: Any, separator: str) -> str:
    """TypeError when an item is not a string: CEL reports it as an evaluation error."""
    if not all(type(item) is str for item in items):
        raise TypeError("join: every item must be a string")
    return separator.join(items)


@dataclass(frozen=True, slots=True)
class Derived:
    """A path step computing a value from the one before it: `args.join(" ")`, `s.lowerAscii()`."""
    function: str  # "join" | "lowerAscii"
    argument: str = ""

    def apply(self, value: Any) -> Any:
        """The derived value; the last one per step is kept (held, so `is` cannot be fooled by a
        reused id): the rules of an event all read the same list and string objects, so a command
        line is joined and lowered once per event, not once per rule."""
        key = (self.function, self.argument)
        last = _LAST_DERIVED.get(key)
        if last is not None and last[0] is value:
            return last[1]
        if self.function == "lowerAscii":
            out = lower_ascii(value) if type(value) is str else MISSING
        elif type(value) is not list:
            out = MISSING
        else:
            try:
                out = join(value, self.argument)
            except TypeError:
                out = MISSING
        _LAST_DERIVED[key] = (value, out)
        return out


_LAST_DERIVED: dict[tuple[str, str], tuple[Any, Any]] = {}  # (function, argument) -> (input, output)
