"""Prefixes and literal substrings a regex cannot match without: a gate in front of RE2.

A call into RE2 costs about the same whatever the pattern, far more than `"/." in path`. For most file
paths none of the pack's path regexes can match (no "/.", not under /etc/...), so the pre-filter
asks the cheap question first and RE2 decides only when the answer is yes.

`required_literals(pattern)` returns strings of which every match contains at least one, or
None when that cannot be shown (a branch with no literal run of 2+ characters, a case-
insensitive flag, syntax Python's parser does not know). None means: always ask RE2.
`regex_gate(pattern)` also uses `^`: a branch anchored at the start of the text gives the
prefixes the text must start with (`^/etc/cron[.]d/` -> "/etc/cron.d/", `^/(var/)?run/` ->
"/var/run/", "/run/"): one slice and a set lookup test all the prefixes of a gate at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

try:  # the parser behind `re`; same syntax as RE2 for what rules use
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

MIN_LITERAL = 2
MAX_PREFIXES = 64  # alternatives multiply: (a|b)(c|d) has 4 prefixes
_LITERAL, _IN, _BRANCH, _SUBPATTERN = (sre_constants.LITERAL, sre_constants.IN, sre_constants.BRANCH,
                                       sre_constants.SUBPATTERN)
_AT, _STARTS = sre_constants.AT, (sre_constants.AT_BEGINNING, sre_constants.AT_BEGINNING_STRING)
_OPTIONAL = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT)

Gate = tuple[tuple[str, ...], tuple[str, ...]]  # (prefixes, substrings): a match needs one of them


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


def _prefixes(items: list[tuple[Any, Any]]) -> tuple[set[str], bool]:
    """Strings of which every match of the sequence starts with one, and whether they are the
    whole match (then what follows the sequence may be appended). Literal characters, and groups,
    alternations and `?` of them, are followed; anything else ends the prefixes."""
    found = {""}
    for op, arg in items:
        char = _char((op, arg))
        if char is not None:
            options, whole = {char}, True
        elif op == _BRANCH:
            branches = [_prefixes(list(branch)) for branch in arg[1]]
            options = set().union(*(starts for starts, _ in branches))
            whole = all(w for _, w in branches)
        elif op == _SUBPATTERN and not arg[1] and not arg[2]:  # a group without inline flags
            options, whole = _prefixes(list(arg[3]))
        elif op in _OPTIONAL and arg[0] == 0 and arg[1] == 1:
            options, whole = _prefixes(list(arg[2]))
            if not whole:
                return found, False
            options = options | {""}
        else:
            return found, False
        longer = {start + option for start in found for option in options}
        if len(longer) > MAX_PREFIXES:
            return found, False
        found = longer
        if not whole:
            return found, False
    return found, True


def _gate(items: list[tuple[Any, Any]]) -> tuple[set[str], set[str]] | None:
    """(prefixes, substrings) of a sequence: a `^` branch by the prefixes it starts with, an
    alternation branch by branch, anything else by its required literals."""
    if items and items[0][0] == _AT and items[0][1] in _STARTS:
        starts, _ = _prefixes(items[1:])
        if min(map(len, starts)) >= MIN_LITERAL:
            return starts, set()
    if len(items) == 1 and items[0][0] == _BRANCH:
        prefixes: set[str] = set()
        substrings: set[str] = set()
        for branch in items[0][1][1]:
            found = _gate(list(branch))
            if found is None:
                return None
            prefixes |= found[0]
            substrings |= found[1]
        return prefixes, substrings
    literals = _sequence(items)
    return (set(), literals) if literals else None


def _parse(pattern: str) -> Any:
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None
    if parsed.state.flags & re.IGNORECASE:
        return None
    return parsed


def required_literals(pattern: str) -> set[str] | None:
    parsed = _parse(pattern)
    return None if parsed is None else _sequence(list(parsed))


def regex_gate(pattern: str) -> tuple[set[str], set[str]] | None:
    """(prefixes, substrings): a text the pattern matches starts with one of the prefixes or
    contains one of the substrings (None: that cannot be shown)."""
    parsed = _parse(pattern)
    if parsed is None:
        return None
    if parsed.state.flags & re.MULTILINE:  # (?m): `^` matches after any newline too
        literals = _sequence(list(parsed))
        return (set(), literals) if literals else None
    return _gate(list(parsed))


def simplest_gate(prefixes: set[str], substrings: set[str]) -> Gate:
    """The same gate without what is redundant: a substring that contains another ("/.ssh/" and
    "/."), a prefix that starts with another or contains a substring."""
    subs = {s for s in substrings if not any(other != s and other in s for other in substrings)}
    starts = {p for p in prefixes if not any(s in p for s in subs)
              and not any(other != p and p.startswith(other) for other in prefixes)}
    return tuple(sorted(starts)), tuple(sorted(subs))


def gate_check(gate: Gate) -> Callable[[str], bool] | None:
    """The gate as a test: does the text start with one of the prefixes or contain one of the
    substrings? The prefixes are grouped by their first characters (as many as the shortest has),
    so one slice and one dict lookup find the few a text may start with (a startswith tuple of
    all of them costs time per prefix). None: the gate lets everything through."""
    prefixes, substrings = gate
    if "" in prefixes or "" in substrings:
        return None
    size = min(map(len, prefixes), default=0)
    grouped: dict[str, list[str]] = {}
    for prefix in prefixes:
        grouped.setdefault(prefix[:size], []).append(prefix)
    heads = {head: tuple(group) for head, group in grouped.items()}

    def passes(text: str) -> bool:
        for part in substrings:
            if part in text:
                return True
        starts = heads.get(text[:size])
        return starts is not None and text.startswith(starts)
    return passes


def literal_gate(patterns: list[str]) -> Gate | None:
    """(prefixes, substrings) of which any match of any pattern needs one (None: no gate possible)."""
    prefixes: set[str] = set()
    substrings: set[str] = set()
    for pattern in patterns:
        found = regex_gate(pattern)
        if found is None:
            return None
        prefixes |= found[0]
        substrings |= found[1]
    return simplest_gate(prefixes, substrings)
