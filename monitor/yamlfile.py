"""The one YAML reader of every file a user writes (rule files, their fixtures, the daemon's and
the outputs' configs): whatever is wrong is reported as `file:line: what`, the line being where
the problem is, never a traceback. Ground floor: it knows YAML, nothing of the monitor.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1 << 20  # a config or rule file is text a human wrote; 1 MiB is far beyond any


class YamlError(Exception):
    """One line: `file:line: message` (`file: message` when no line applies)."""

    def __init__(self, message: str, file: str, line: int = 0) -> None:
        self.file = file
        self.line = line
        self.message = message.strip().splitlines()[0] if message.strip() else "invalid"
        super().__init__(f"{file}:{line}: {self.message}" if line > 0 else f"{file}: {self.message}")


def read_text(path: Path, what: str = "file") -> str:
    """The file's text: at most MAX_FILE_BYTES, UTF-8 (the line of the first bad byte named)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise YamlError(f"{what} is {size} bytes, over the {MAX_FILE_BYTES} byte limit", str(path), 1)
        data = path.read_bytes()[:MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise YamlError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlError(f"{what} is over the {MAX_FILE_BYTES} byte limit", str(path), 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise YamlError(f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                        str(path), line) from None


def compose(text: str, file: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    """The document's node tree (None when empty) and the loader that can construct its values."""
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark and mark is exc.problem_mark and mark.index >= len(text.rstrip()):
            mark = exc.context_mark  # "unexpected end of file": where the open construct began
        raise YamlError(f"YAML error: {exc.problem or exc.context or 'invalid YAML'}", file,
                        mark.line + 1 if mark else 1) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlError(f"YAML error: character {exc.character!r} is not allowed", file, line) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML error: {str(exc).splitlines()[0] if str(exc) else 'invalid'}", file, 1) from None
    except RecursionError:
        raise YamlError("YAML nesting is too deep", file, 1) from None
    return loader, node


def construct(loader: yaml.SafeLoader, node: yaml.Node, file: str) -> Any:
    """The Python value of `node` (a YamlError at the node's line when YAML cannot build it)."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark or node.start_mark
        raise YamlError(f"YAML error: {exc.problem or exc.context}", file, mark.line + 1) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise YamlError(f"YAML error: {message}", file, node.start_mark.line + 1) from None


def line_of(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def unknown_key(key: str, allowed: Iterable[str], where: str = "") -> str:
    """`unknown key 'x' in WHERE (did you mean 'y'?)`, or the allowed keys when nothing is close."""
    allowed = list(allowed)
    hint = difflib.get_close_matches(key, allowed, n=1)
    return (f"unknown key {key!r}" + (f" in {where}" if where else "")
            + (f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"))


class NodeReader:
    """Walks a config's node tree so every error names the line it is about."""

    def __init__(self, file: str, base_dir: Path, loader: yaml.SafeLoader | None = None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.loader = loader or yaml.SafeLoader("")

    @classmethod
    def of_text(cls, text: str, file: str, base_dir: Path | None = None) -> tuple[NodeReader, yaml.Node | None]:
        loader, root = compose(text, file)
        return cls(file, base_dir or Path(file).resolve().parent, loader), root

    def fail(self, node: yaml.Node | None, message: str) -> YamlError:
        return YamlError(message, self.file, line_of(node))

    def value(self, node: yaml.Node) -> Any:
        return construct(self.loader, node, self.file)

    def mapping(self, node: yaml.Node, what: str, allowed: Iterable[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{key: (key node, value node)}; an unknown or repeated key is an error at its line."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        allowed = list(allowed)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                raise self.fail(key_node, unknown_key(str(key), allowed, what))
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r} in {what}")
            out[key] = (key_node, value_node)
        return out

    def scalar(self, node: yaml.Node, what: str, kind: Any) -> Any:
        """A value of `kind`: bool, "milliseconds", "seconds", "path" (relative to the file; "-"
        kept), or str (non-empty, stripped)."""
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if kind is bool:
            if not isinstance(value, bool):
                raise self.fail(node, f"{what} must be true or false")
            return value
        if kind == "milliseconds":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.fail(node, f"{what} must be a whole number of milliseconds (>= 0)")
            return value
        if kind == "seconds":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise self.fail(node, f"{what} must be a positive number of seconds")
            return float(value)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, f"{what} must be a non-empty string")
        if kind == "path":
            return value if value == "-" else self.path(value)
        return value.strip()

    def path(self, text: str) -> str:
        path = Path(os.path.expanduser(text))
        return str(path if path.is_absolute() else self.base_dir / path)

    def paths(self, node: yaml.Node, what: str) -> list[str]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        return [self.scalar(item, what, "path") for item in items]
