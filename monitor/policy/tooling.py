"""`monitor rules lint` and `monitor rules test`: print results, return the exit code.

lint: YAML errors, unknown keys, unknown macro/list names, CEL compile errors, unknown event kinds
in `when`, fields the event never has (monitor.event.FIELDS). One `file:line: rule 'name': message`
line per problem; exit 1 if any.

test: for each rule file F, the fixtures in F.parent/tests/F.name (see package docstring) are run
through the whole rule set of the paths given; one PASS/FAIL line per case; exit 1 on a failure.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from monitor import yamlfile
from monitor.event import FIELDS, Event
from monitor.policy import ast
from monitor.policy.errors import PolicyError
from monitor.policy.loader import expand_paths, read_text
from monitor.policy.ruleset import Rule, RuleSet, compile_paths, lint_paths

_SKIP = object()


def _paths_through_index(root: ast.Node) -> list[tuple[str, ...]]:
    """Field paths, reading `event.a.b[0].c` as a.b.c (list items share the list's fields), and a
    comprehension variable as its list (`event.process.ancestors.exists(p, p.exe ..)`: ancestors.exe)."""
    found: list[tuple[str, ...]] = []

    def path_of(node: ast.Node, scope: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
        parts: list[str] = []
        while True:
            if isinstance(node, ast.Select):
                parts.append(node.field)
                node = node.operand
            elif isinstance(node, ast.Call) and node.function == "_[_]" and isinstance(node.args[1], ast.Lit) \
                    and isinstance(node.args[1].value, int):
                node = node.args[0]
            else:
                break
        if isinstance(node, ast.Ident) and node.name == "event" and parts:
            return tuple(reversed(parts))
        if isinstance(node, ast.Ident) and node.name in scope:
            return scope[node.name] + tuple(reversed(parts))
        return None

    def walk(node: ast.Node, scope: dict[str, tuple[str, ...]]) -> None:
        path = path_of(node, scope)
        if path is not None:
            if path:
                found.append(path)
            return
        if (isinstance(node, ast.Call) and node.function in ast.COMPREHENSIONS and node.target is not None
                and node.args and isinstance(node.args[0], ast.Ident)):
            walk(node.target, scope)
            target = path_of(node.target, scope)
            inner = {**scope, node.args[0].name: target} if target else \
                {k: v for k, v in scope.items() if k != node.args[0].name}
            for arg in node.args[1:]:
                walk(arg, inner)
            return
        for child in ast.children(node):
            walk(child, scope)

    walk(root, {})
    return found


def unknown_field(path: tuple[str, ...]) -> str | None:
    """The first component of `path` the event model does not have, as "a.b", else None."""
    for depth in range(len(path)):
        parent = ".".join(path[:depth])
        allowed = FIELDS.get(parent)
        if allowed is None:
            return None  # below here the map is free-form (labels, detail values, ...)
        if path[depth] not in allowed:
            return ".".join(path[:depth + 1])
    return None


def field_problems(rule: Rule) -> list[str]:
    try:
        tree = ast.parse(rule.expanded)
    except ast.Unsupported as exc:
        return [f"condition could not be analysed for field names: {exc}"]
    problems = []
    for path in _paths_through_index(tree):
        bad = unknown_field(path)
        if bad is not None:
            message = f"event.{bad} is not a field any event has (see FIELDS in monitor/event.py)"
            if message not in problems:
                problems.append(message)
    return problems


def lint(paths: list[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        errors, rules = lint_paths(list(paths))
    except PolicyError as exc:
        print(exc, file=out)
        return 1
    messages = [str(e) for e in errors]
    for rule in rules:
        for problem in field_problems(rule):
            messages.append(str(PolicyError(problem, rule.file, rule.line, rule.name)))
    for message in messages:
        print(message, file=out)
    if len(messages) > 1:
        print(f"{len(messages)} problems", file=out)
    if messages:
        return 1
    print(f"ok: {len(rules)} rules", file=out)
    return 0


def fixture_file(rule_file: Path) -> Path:
    return rule_file.parent / "tests" / rule_file.name


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_fixtures(path: Path) -> list[dict[str, Any]]:
    """Entries `{rule, match: [event..], no_match: [event..]}`; an entry `{defaults: {..}}` is merged
    into every later event of the file (nested maps merged, the event's own values win)."""
    try:
        loader, root = yamlfile.compose(read_text(path), str(path))
        data = yamlfile.construct(loader, root, str(path)) if root is not None else None
    except yamlfile.YamlError as exc:
        raise PolicyError(exc.message, exc.file, exc.line) from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise PolicyError("a fixture file is a list of {rule, match, no_match} entries", str(path), 1)
    defaults: dict[str, Any] = {}
    cases = []
    for index, entry in enumerate(data):
        if isinstance(entry, dict) and set(entry) == {"defaults"} and isinstance(entry["defaults"], dict):
            defaults = entry["defaults"]
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("rule"), str) or \
                set(entry) - {"rule", "match", "no_match"}:
            raise PolicyError(f"fixture entry {index + 1}: needs 'rule' and 'match'/'no_match' lists only",
                              str(path), 1)
        for key in ("match", "no_match"):
            events = entry.get(key) or []
            if not isinstance(events, list) or not all(isinstance(e, dict) and "kind" in e for e in events):
                raise PolicyError(f"fixture for {entry['rule']!r}: '{key}' must be a list of events "
                                  "with a 'kind'", str(path), 1)
            entry[key] = [_merge(defaults, e) if defaults else e for e in events]
        cases.append(entry)
    return cases


def test(paths: list[str], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    # fixture events are partial on purpose: evaluation errors are expected, shown per case instead
    policy_log = logging.getLogger("monitor.policy")
    level = policy_log.level
    policy_log.setLevel(logging.ERROR)
    try:
        return _test(paths, out)
    finally:
        policy_log.setLevel(level)


def _test(paths: list[str], out: TextIO) -> int:
    try:
        compiled, compiler = compile_paths(list(paths))
        ruleset = RuleSet(compiled, list(paths), engine=compiler.engine)
        files = expand_paths(list(paths))
    except PolicyError as exc:
        print(exc, file=out)
        return 1
    names = {rule.name for rule in ruleset.rules}
    passed = failed = 0
    untested = set(names)
    for rule_file in files:
        fixtures = fixture_file(rule_file)
        if not fixtures.is_file():
            continue
        try:
            entries = load_fixtures(fixtures)
        except PolicyError as exc:
            print(f"FAIL {exc}", file=out)
            failed += 1
            continue
        for entry in entries:
            name = entry["rule"]
            if name not in names:
                print(f"FAIL {fixtures}: rule {name!r}: no such rule loaded", file=out)
                failed += 1
                continue
            untested.discard(name)
            for expect, key in ((True, "match"), (False, "no_match")):
                for index, data in enumerate(entry.get(key) or []):
                    ok, detail = _run_case(ruleset, name, data, expect)
                    status = "PASS" if ok else "FAIL"
                    print(f"{status} {fixtures}: rule {name!r}: {key}[{index}]{detail}", file=out)
                    passed += ok
                    failed += not ok
    for name in sorted(untested):
        print(f"note: rule {name!r} has no fixtures", file=out)
    print(f"{passed} passed, {failed} failed", file=out)
    return 1 if failed or not passed else 0


def _run_case(ruleset: RuleSet, name: str, data: dict[str, Any], expect: bool) -> tuple[bool, str]:
    errors_before = ruleset.eval_errors.get(name, 0)
    try:
        event = Event.from_dict(copy.deepcopy(data))
    except (KeyError, TypeError, ValueError) as exc:
        return False, f" (bad event: {exc})"
    alerts = [a for a in ruleset.evaluate(event) if a.rule == name]
    got = bool(alerts)
    errored = ruleset.eval_errors.get(name, 0) > errors_before
    if got == expect:
        return True, ""
    why = " (evaluation error: a field the condition reads is missing)" if errored else ""
    return False, f": expected {'a match' if expect else 'no match'}, got {'a match' if got else 'none'}{why}"
