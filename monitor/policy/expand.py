"""Lists and macros expand into rule conditions before compilation (Falco-style, by name).

A name is replaced only where it stands as an identifier: not inside a string, not after a `.`
(a field or method), not before `(` (a function). Macros expand recursively (cycles are errors);
lists become CEL list literals, and a list item that names another list is inlined.
"""

from __future__ import annotations

import json
import re
from typing import Any

from monitor.policy.errors import PolicyError
from monitor.policy.loader import ListEntry, MacroEntry

_TOKEN = re.compile(
    r'''(?P<string>[rRbB]{0,2}(?:"""(?:\\.|[^\\])*?"""|\'\'\'(?:\\.|[^\\])*?\'\'\'|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))'''
    r"|(?P<comment>//[^\n]*)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<space>\s+)"
    r"|(?P<other>.)", re.S)

MAX_EXPANDED_CHARS = 200_000


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


class Expander:
    def __init__(self, lists: dict[str, ListEntry], macros: dict[str, MacroEntry]) -> None:
        self.lists = lists
        self.macros = macros
        self._list_text: dict[str, str] = {}
        self._macro_text: dict[str, str] = {}

    def list_items(self, name: str, stack: tuple[str, ...] = ()) -> list[Any]:
        entry = self.lists[name]
        if name in stack:
            raise PolicyError(f"list cycle: {' -> '.join(stack + (name,))}", entry.file, entry.line)
        items: list[Any] = []
        for item in entry.items:
            if isinstance(item, str) and item in self.lists and item != name:
                items.extend(self.list_items(item, stack + (name,)))
            else:
                items.append(item)
        return items

    def _list(self, name: str) -> str:
        if name not in self._list_text:
            self._list_text[name] = "[" + ", ".join(_literal(v) for v in self.list_items(name)) + "]"
        return self._list_text[name]

    def _macro(self, name: str, stack: tuple[str, ...]) -> str:
        if name in stack:
            entry = self.macros[name]
            raise PolicyError(f"macro cycle: {' -> '.join(stack + (name,))}", entry.file, entry.line)
        if name not in self._macro_text:
            entry = self.macros[name]
            self._macro_text[name] = "(" + self.expand(entry.condition, stack + (name,)) + ")"
        return self._macro_text[name]

    def used_names(self, text: str) -> set[str]:
        return {token for token, _ in self._names(text)}

    def _names(self, text: str) -> list[tuple[str, re.Match[str]]]:
        tokens = [t for t in _TOKEN.finditer(text) if t.lastgroup not in ("space", "comment")]
        found = []
        for index, match in enumerate(tokens):
            if match.lastgroup != "ident":
                continue
            if index > 0 and tokens[index - 1].group() == ".":
                continue
            if index + 1 < len(tokens) and tokens[index + 1].group() == "(":
                continue
            found.append((match.group(), match))
        return found

    def expand(self, text: str, stack: tuple[str, ...] = ()) -> str:
        pieces: list[str] = []
        last = 0
        for name, match in self._names(text):
            if name in self.macros:
                replacement = self._macro(name, stack)
            elif name in self.lists:
                replacement = self._list(name)
            else:
                continue
            pieces.append(text[last:match.start()])
            pieces.append(replacement)
            last = match.end()
        pieces.append(text[last:])
        out = "".join(pieces)
        if len(out) > MAX_EXPANDED_CHARS:
            raise PolicyError(f"condition expands to over {MAX_EXPANDED_CHARS} characters")
        return out
