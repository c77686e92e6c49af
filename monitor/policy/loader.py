"""Rule files -> validated entries (lists, macros, rules) with file:line kept for every message.

Format (docs/design.md): a YAML list of entries, each one of
  - list: NAME      items: [..]
  - macro: NAME     condition: CEL
  - rule: NAME      condition: CEL, and optional description, when, except, severity, action,
                    tags, sandboxes {names, labels, images}, mode (enforce|audit), enabled
A folder loads its *.yaml / *.yml files (not sub-folders), sorted by name.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitor import yamlfile
from monitor.event import ACTIONS, KINDS, SEVERITIES
from monitor.policy.errors import PolicyError

RULE_KEYS = ("rule", "description", "when", "condition", "except", "severity", "action", "tags",
             "sandboxes", "mode", "enabled")
MACRO_KEYS = ("macro", "condition", "description")
LIST_KEYS = ("list", "items", "description")
SELECTOR_KEYS = ("names", "labels", "images")
MODES = ("enforce", "audit")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
RESERVED = {"event", "true", "false", "null", "in", "has", "all", "exists", "exists_one", "map",
            "filter", "size", "int", "uint", "double", "string", "bytes", "bool", "type", "dyn",
            "matches", "in_cidr", "as", "break", "const", "continue", "else", "for", "function",
            "if", "import", "let", "loop", "package", "namespace", "return", "var", "void", "while"}


@dataclass(slots=True)
class Selector:
    names: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ListEntry:
    name: str
    items: list[Any]
    file: str
    line: int


@dataclass(slots=True)
class MacroEntry:
    name: str
    condition: str
    file: str
    line: int


@dataclass(slots=True)
class RuleEntry:
    name: str
    condition: str
    file: str
    line: int
    condition_line: int
    description: str = ""
    when: list[str] = field(default_factory=list)
    exception: str | None = None
    severity: str = "medium"
    action: str = "alert"
    tags: list[str] = field(default_factory=list)
    sandboxes: Selector | None = None
    mode: str = "enforce"
    enabled: bool = True


@dataclass(slots=True)
class RuleFile:
    path: str
    lists: list[ListEntry] = field(default_factory=list)
    macros: list[MacroEntry] = field(default_factory=list)
    rules: list[RuleEntry] = field(default_factory=list)


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders -> their *.yaml/*.yml files, sorted. Missing path -> PolicyError."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise PolicyError("no such rule file or folder", str(path), 0)
    return files


def read_text(path: Path) -> str:
    try:
        return yamlfile.read_text(path, "rule file")
    except yamlfile.YamlError as exc:
        raise PolicyError(exc.message, exc.file, exc.line) from None


def load_file(path: Path) -> RuleFile:
    return parse_text(read_text(path), str(path))


def _yaml_nodes(text: str, file: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    try:
        return yamlfile.compose(text, file)
    except yamlfile.YamlError as exc:
        raise PolicyError(exc.message, exc.file, exc.line) from None


def _construct(loader: yaml.SafeLoader, node: yaml.Node, file: str) -> Any:
    try:
        return yamlfile.construct(loader, node, file)
    except yamlfile.YamlError as exc:
        raise PolicyError(exc.message, exc.file, exc.line) from None


def parse_text(text: str, file: str) -> RuleFile:
    loader, root = _yaml_nodes(text, file)
    out = RuleFile(file)
    if root is None:
        return out
    if not isinstance(root, yaml.SequenceNode):
        raise PolicyError("a rule file is a YAML list of list/macro/rule entries", file,
                          root.start_mark.line + 1)
    seen_rules: dict[str, int] = {}
    for item in root.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.MappingNode):
            raise PolicyError("each entry is a mapping with a 'rule', 'macro' or 'list' key", file, line)
        key_lines: dict[str, int] = {}
        for key_node, _ in item.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise PolicyError("entry keys must be plain strings", file, key_node.start_mark.line + 1)
            if key in key_lines:
                raise PolicyError(f"duplicate key '{key}'", file, key_node.start_mark.line + 1)
            key_lines[key] = key_node.start_mark.line + 1
        entry = _construct(loader, item, file)
        kinds = [k for k in ("rule", "macro", "list") if k in entry]
        if len(kinds) != 1:
            raise PolicyError("each entry has exactly one of the keys 'rule', 'macro', 'list'",
                              file, line)
        kind = kinds[0]
        if kind == "list":
            out.lists.append(_list_entry(entry, key_lines, file, line))
        elif kind == "macro":
            out.macros.append(_macro_entry(entry, key_lines, file, line))
        else:
            rule = _rule_entry(entry, key_lines, file, line)
            if rule.name in seen_rules:
                raise PolicyError(f"defined twice in this file (first at line {seen_rules[rule.name]})",
                                  file, line, rule.name)
            seen_rules[rule.name] = line
            out.rules.append(rule)
    return out


def _check_keys(entry: dict[str, Any], allowed: tuple[str, ...], key_lines: dict[str, int], file: str,
                rule: str = "") -> None:
    for key in entry:
        if key not in allowed:
            raise PolicyError(yamlfile.unknown_key(str(key), allowed), file, key_lines.get(str(key), 0), rule)


def _name(entry: dict[str, Any], kind: str, file: str, line: int) -> str:
    name = entry[kind]
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"'{kind}' must be a non-empty string", file, line)
    if kind != "rule" and (not NAME.match(name) or name in RESERVED):
        raise PolicyError(f"{kind} name {name!r} must be an identifier (letters, digits, _) "
                          "and not a CEL keyword", file, line)
    return name.strip()


def _string(entry: dict[str, Any], key: str, file: str, line: int, rule: str = "") -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"'{key}' must be a non-empty string", file, line, rule)
    return value


def _list_entry(entry: dict[str, Any], key_lines: dict[str, int], file: str, line: int) -> ListEntry:
    _check_keys(entry, LIST_KEYS, key_lines, file)
    name = _name(entry, "list", file, line)
    items = entry.get("items")
    if not isinstance(items, list) or not all(isinstance(i, str | int | float | bool) for i in items):
        raise PolicyError(f"list '{name}': 'items' must be a list of strings or numbers", file,
                          key_lines.get("items", line))
    return ListEntry(name, items, file, line)


def _macro_entry(entry: dict[str, Any], key_lines: dict[str, int], file: str, line: int) -> MacroEntry:
    _check_keys(entry, MACRO_KEYS, key_lines, file)
    name = _name(entry, "macro", file, line)
    condition = entry.get("condition")
    if not isinstance(condition, str) or not condition.strip():
        raise PolicyError(f"macro '{name}': 'condition' must be a non-empty string", file,
                          key_lines.get("condition", line))
    return MacroEntry(name, condition, file, key_lines.get("condition", line))


def _string_list(value: Any, what: str, file: str, line: int, rule: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"'{what}' must be a string or a list of strings", file, line, rule)
    return value


def _selector(value: Any, key_lines: dict[str, int], file: str, rule: str) -> Selector:
    line = key_lines.get("sandboxes", 0)
    if not isinstance(value, dict):
        raise PolicyError("'sandboxes' must be a mapping with names, labels and/or images", file, line,
                          rule)
    _check_keys(value, SELECTOR_KEYS, {}, file, rule)
    labels = value.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str | int | bool)
                                               for k, v in labels.items()):
        raise PolicyError("'sandboxes.labels' must map label names to values", file, line, rule)
    return Selector(names=_string_list(value.get("names", []), "sandboxes.names", file, line, rule),
                    labels={k: str(v) for k, v in labels.items()},
                    images=_string_list(value.get("images", []), "sandboxes.images", file, line, rule))


def _choice(entry: dict[str, Any], key: str, allowed: tuple[str, ...], default: str,
            key_lines: dict[str, int], file: str, rule: str) -> str:
    value = entry.get(key, default)
    if value not in allowed:
        raise PolicyError(f"unknown {key} {value!r} (one of: {', '.join(allowed)})", file,
                          key_lines.get(key, 0), rule)
    return str(value)


def _rule_entry(entry: dict[str, Any], key_lines: dict[str, int], file: str, line: int) -> RuleEntry:
    name = _name(entry, "rule", file, line)
    _check_keys(entry, RULE_KEYS, key_lines, file, name)
    condition = _string(entry, "condition", file, key_lines.get("condition", line), name)
    exception = entry.get("except")
    if exception is not None and (not isinstance(exception, str) or not exception.strip()):
        raise PolicyError("'except' must be a CEL string", file, key_lines.get("except", line), name)
    when = _string_list(entry.get("when", []), "when", file, key_lines.get("when", line), name)
    for kind in when:
        if kind not in KINDS:
            hint = difflib.get_close_matches(kind, KINDS, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise PolicyError(f"unknown event kind '{kind}' in when{suggestion}", file,
                              key_lines.get("when", line), name)
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise PolicyError("'description' must be a string", file, key_lines.get("description", line),
                          name)
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PolicyError("'enabled' must be true or false", file, key_lines.get("enabled", line), name)
    return RuleEntry(
        name=name, condition=condition, file=file, line=line,
        condition_line=key_lines.get("condition", line), description=description.strip(),
        when=list(dict.fromkeys(when)), exception=exception,
        severity=_choice(entry, "severity", SEVERITIES, "medium", key_lines, file, name),
        action=_choice(entry, "action", ACTIONS, "alert", key_lines, file, name),
        tags=_string_list(entry.get("tags", []), "tags", file, key_lines.get("tags", line), name),
        sandboxes=(_selector(entry["sandboxes"], key_lines, file, name) if "sandboxes" in entry
                   else None),
        mode=_choice(entry, "mode", MODES, "enforce", key_lines, file, name), enabled=enabled)
