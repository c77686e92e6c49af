"""The package's shape, checked: stages import only stages to their left, sources never each other,
no import cycle, and no module grows past ~600 lines without saying why at its top.

The stage order is written once, here (docs/design.md explains it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "monitor"

# Left to right. A module may import its own stage and any stage to its left, never one to its right.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("monitor.event", "monitor.source", "monitor.yamlfile", "monitor.linux", "monitor.checks",
                "monitor.sandbox", "monitor.bpf")),
    ("sources", ("monitor.sensor", "monitor.gvisor", "monitor.llm", "monitor.journal")),
    ("enrich", ("monitor.enrich", "monitor.identity")),
    ("policy", ("monitor.policy",)),
    ("actions", ("monitor.actions",)),
    ("sinks", ("monitor.sinks", "monitor.outputs", "monitor.timeline", "monitor.report")),
    ("engine", ("monitor.engine", "monitor.client")),
    ("commands", ("monitor.commands", "monitor.__main__")),
]
SOURCES = dict(STAGES)["sources"]
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The module an import names: `from pkg import sub` is the submodule when `sub` is one."""
    return name if name in known else name.rsplit(".", 1)[0]


def imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported monitor module, line) for every import in the file, at any depth."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [_resolve(f"{base}.{alias.name}", known) for alias in node.names]
        else:
            continue
        for name in names:
            if name == "monitor" or name.startswith("monitor."):
                yield _resolve(name, known) if name not in known else name, node.lineno


def stage_of(module: str) -> tuple[int, str]:
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return index, prefix
    raise AssertionError(f"{module}: in no stage of tests/test_architecture.py STAGES")


def test_every_module_has_a_stage() -> None:
    for module in modules():
        if module != "monitor":
            stage_of(module)


def test_no_stage_imports_one_to_its_right_and_sources_keep_to_themselves() -> None:
    known = modules()
    wrong = []
    for module, path in known.items():
        if module == "monitor":
            continue
        (stage, home) = stage_of(module)
        for target, line in imports(path, known):
            if target == "monitor":
                continue
            (target_stage, target_home) = stage_of(target)
            if target_stage > stage:
                wrong.append(f"{path}:{line}: {module} ({STAGES[stage][0]}) imports {target} "
                             f"({STAGES[target_stage][0]}, to its right)")
            elif home in SOURCES and target_home in SOURCES and target_home != home:
                wrong.append(f"{path}:{line}: source {home} imports another source's {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    known = modules()
    graph = {m: {t for t, _ in imports(p, known) if t in known and t != m} for m, p in known.items()}
    # a package's __init__ importing its own submodules, which import the package for a name
    # it re-exports, is how packages are built: only cycles between distinct modules count
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                if not all(c == cycle[0] or c.startswith(cycle[0] + ".") or cycle[0].startswith(c + ".")
                           for c in cycle):
                    cycles.append(" -> ".join(cycle))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_modules_say_why(path: Path) -> None:
    lines = path.read_text().splitlines()
    if len(lines) <= MAX_LINES or path.name.endswith("_pb2.py"):
        return
    head = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "Why this module is long" in head, (
        f"{path} has {len(lines)} lines: split it, or say at its top (a 'Why this module is long:' "
        "paragraph in its docstring) why it stays one")
