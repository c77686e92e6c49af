"""Literal substrings a regex cannot match without: a gate in front of RE2.

A call into RE2 costs ~1 us whatever the pattern; `"/." in path` costs ~40 ns. For most file
paths none of the pack's path regexes can match (no "/.", no "/etc/", no "/systemd/"...), so
the pre-filter asks the cheap question first and RE2 decides only when the answer is yes.

`required_literals(pattern)` returns strings of which every match contains at least one, or
None when that cannot be shown (a branch with no literal run of 2+ characters, a case-
insensitive flag, syntax Python's parser does not know). None means: always ask RE2.
"""

from __future__ import annotations

import re
from typing import Any

try:  # the parser behind `re`; same syntax as RE2 for what rules use
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

MIN_LITERAL = 2
_LITERAL, _IN, _BRANCH, _SUBPATTERN = (sre_constants.LITERAL, sre_constants.IN, sre_constants.BRANCH,
                                       sre_constants.SUBPATTERN)


def _char(item: tuple[Any, Any]) -> str | None:
    """The one character an item matches, if it matches exactly one ("a", "[.]", "\\.")."""
    op, arg = item
    if op == _LITERAL:
        return chr(arg)
    if op == _IN and len(arg) == 1 and arg[0][0] == _LITERAL:
        return chr(arg[0][1])
    return None


def _sequence(items: list[tuple[Any, Any]]) -> set[str] | None:
    """Required literals of a sequence: its longest literal run, else the alternatives of one
    of its groups when every alternative has some."""
    longest, run = "", ""
    for item in items:
        char = _char(item)
        run = run + char if char is not None else ""
        longest = max(longest, run, key=len)
    if len(longest) >= MIN_LITERAL:
        return {longest}
    for op, arg in items:
        found = None
        if op == _BRANCH:
            found = _alternatives(arg[1])
        elif op == _SUBPATTERN and not arg[1] and not arg[2]:  # a group without inline flags
            found = _sequence(list(arg[3]))
        if found:
            return found
    return None


def _alternatives(branches: list[Any]) -> set[str] | None:
    union: set[str] = set()
    for branch in branches:
        found = _sequence(list(branch))
        if not found:
            return None
        union |= found
    return union


def required_literals(pattern: str) -> set[str] | None:
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    return _sequence(list(parsed))


def literal_gate(patterns: list[str]) -> tuple[str, ...] | None:
    """Literals of which any match of any pattern contains one (None: no gate possible)."""
    union: set[str] = set()
    for pattern in patterns:
        found = required_literals(pattern)
        if not found:
            return None
        union |= found
    # a literal that contains another is redundant: "/.ssh/" is covered by "/."
    kept = {lit for lit in union if not any(other != lit and other in lit for other in union)}
    return tuple(sorted(kept))
