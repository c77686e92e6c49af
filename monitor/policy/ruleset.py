"""RuleSet: rule files -> compiled rules indexed by event kind -> alerts for an event."""

from __future__ import annotations

import fnmatch
import logging
import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.event import KINDS, Alert, Event, rfc3339
from monitor.policy import ast
from monitor.policy.deny import DenySpec, NotCompilable, compile_deny
from monitor.policy.engine import CelEngine, CompileError, EvalError, Program
from monitor.policy.errors import PolicyError
from monitor.policy.expand import Expander
from monitor.policy.loader import ListEntry, MacroEntry, RuleEntry, Selector, expand_paths, load_file
from monitor.policy.prefilter import (
    MISSING,
    Guard,
    Predicate,
    compile_regex,
    getter,
    guarded_field,
    kinds_of,
    merge_guards,
    necessary,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Rule:
    name: str
    description: str
    severity: str
    action: str
    tags: list[str]
    when: list[str]                     # the event kinds this rule is indexed under
    mode: str                           # enforce | audit
    sandboxes: Selector | None
    file: str
    line: int
    condition: str                      # as written
    exception: str | None
    expanded: str                       # what was compiled: macros/lists expanded, except folded in
    fields: list[str] = field(default_factory=list)  # event fields the condition reads ("file.path")
    deny_spec: DenySpec | None = None
    prefiltered: bool = False           # a Python pre-filter runs before CEL

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(slots=True)
class _Compiled:
    rule: Rule
    program: Program
    reads: set[tuple[str, ...]] | None  # event field paths the condition reads; None: all
    prefilters: dict[str, tuple[Predicate | None, Guard | None]]  # per kind: (pre-filter, guard)
    selector: Callable[[Any], bool] | None
    field_getters: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]


def selector_predicate(selector: Selector) -> Callable[[Any], bool]:
    """A `sandboxes:` selector as a test of an event's sandbox map (rules and outputs share it)."""
    names, images, labels = selector.names, selector.images, selector.labels

    def matches(sandbox: Any) -> bool:
        if type(sandbox) is not dict:
            return False
        if names and not any(fnmatch.fnmatchcase(str(sandbox.get("name", "")), n) for n in names):
            return False
        if images and not any(fnmatch.fnmatchcase(str(sandbox.get("image", "")), i) for i in images):
            return False
        if labels:
            have = sandbox.get("labels") or {}
            return all(key in have and str(have[key]) == value for key, value in labels.items())
        return True
    return matches


def _field_getters(paths: list[tuple[str, ...]]) -> tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]:
    return tuple((".".join(p), getter(p)) for p in paths if p != ("kind",))


def event_view(event: Event) -> dict[str, Any]:
    """Event.to_dict() without the RFC 3339 `time` string (formatting it costs more than all the
    rules together); a rule that reads event.time gets it through the projection below."""
    out: dict[str, Any] = {"id": event.id, "kind": event.kind, "time_ns": event.time_ns,
                           "source": event.source}
    if event.process:
        out["process"] = event.process
    if event.sandbox is not None:
        out["sandbox"] = event.sandbox
    if event.file is not None:
        out["file"] = event.file
    if event.net is not None:
        out["net"] = event.net
    if event.container is not None:
        out["container"] = event.container
    if event.llm is not None:
        out["llm"] = event.llm
    if event.detail is not None:
        out["detail"] = event.detail
    if event.result is not None:
        out["result"] = event.result
    if event.verdict is not None:
        out["verdict"] = event.verdict
    return out


_ALWAYS = ("id", "kind", "time_ns", "source")  # in event_view even when None
_WHEN_SET = ("sandbox", "file", "net", "container", "llm", "detail", "result", "verdict")  # when not None


def event_getter(path: tuple[Any, ...]) -> Callable[[Event], Any]:
    """getter(path) applied to event_view(event), read from the event itself: the guards decide
    without a view (most events are rejected by them: building it would be ~0.25 us wasted)."""
    top = path[0]
    if top not in _ALWAYS and top not in _WHEN_SET and top != "process":
        return lambda event: MISSING
    if len(path) == 1:
        if top in _ALWAYS:
            return operator.attrgetter(top)
        if top == "process":
            return lambda event: event.process or MISSING  # as event_view: no process when empty
        return lambda event: MISSING if (value := getattr(event, top)) is None else value
    if len(path) == 2 and type(path[1]) is str:
        key = path[1]

        def get2(event: Event) -> Any:
            value = getattr(event, top)
            return value.get(key, MISSING) if type(value) is dict else MISSING
        return get2
    rest = getter(path[1:])

    def get_deep(event: Event) -> Any:
        value = getattr(event, top)
        return rest(value) if type(value) is dict else MISSING
    return get_deep


_Planned = tuple[int, _Compiled, Predicate | None]  # rule index, rule, its pre-filter for the kind


@dataclass(slots=True)
class _KindPlan:
    """How one event kind is evaluated: merged guard checks (one per field) select the rules worth
    looking at (plus the unguarded ones), then each rule's own pre-filter, then CEL."""
    unguarded: tuple[_Planned, ...]
    # per guarded field: its getter, its check, the rules it selects
    guards: tuple[tuple[Callable[[Event], Any], Callable[[Any], bool], tuple[_Planned, ...]], ...]
    project: Callable[[dict[str, Any]], dict[str, Any]]

    @property
    def entries(self) -> list[tuple[_Compiled, tuple[int, ...]]]:
        found = {index: entry for index, entry, _ in self.unguarded}
        for _, _, group in self.guards:
            found.update((index, entry) for index, entry, _ in group)
        return [(found[i], ()) for i in sorted(found)]


def _plan(kind: str, entries: list[_Compiled]) -> _KindPlan:
    by_path: dict[tuple[Any, ...], list[Any]] = {}
    planned: list[tuple[_Planned, Guard | None]] = []
    for index, entry in enumerate(entries):
        prefilter, guard = entry.prefilters.get(kind, (None, None))
        planned.append(((index, entry, prefilter), guard))
        for path, test in (guard or {}).items():
            by_path.setdefault(path, []).append(test)
    unguarded = tuple(item for item, guard in planned if not guard)
    guards = tuple((event_getter(guarded_field(path)), merge_guards(tests),
                    tuple(item for item, guard in planned if guard and path in guard))
                   for path, tests in by_path.items())
    return _KindPlan(unguarded, guards, _projection(entries))


def _projection(entries: list[_Compiled]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The activation for a kind carries only the fields its rules read: the C++ runtime converts
    the whole Python map on first access, so a 1 KB event with its ancestors costs ~15 us, the
    fields the rules read ~2 us. Values are the event's own (same verdicts); None: whole event."""
    paths: set[tuple[str, ...]] = set()
    for entry in entries:
        if entry.reads is None:
            return _with_time
        paths |= entry.reads
    paths.add(("kind",))
    tops = {p[0] for p in paths if len(p) == 1}
    nested: dict[str, set[str]] = {}
    for path in paths:
        if len(path) > 1 and path[0] not in tops:
            nested.setdefault(path[0], set()).add(path[1])
    wants_time = "time" in tops
    top_keys = tuple(sorted(tops - {"time"}))
    nested_keys = tuple((top, tuple(sorted(keys))) for top, keys in sorted(nested.items()))

    def project(data: dict[str, Any]) -> dict[str, Any]:
        out = {key: data[key] for key in top_keys if key in data}
        for top, keys in nested_keys:
            inner = data.get(top)
            if type(inner) is dict:
                out[top] = {key: inner[key] for key in keys if key in inner}
            elif inner is not None:
                out[top] = inner
        if wants_time:
            out["time"] = rfc3339(data["time_ns"])
        return out
    return project


def _with_time(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "time": rfc3339(data["time_ns"])}


def _invalid_regex(root: ast.Node) -> str | None:
    """CEL compiles matches("(") and fails at every evaluation: refuse such a rule at load."""
    stack = [root]
    while stack:
        node = stack.pop()
        if (isinstance(node, ast.Call) and node.function == "matches" and node.args
                and isinstance(node.args[-1], ast.Lit) and isinstance(node.args[-1].value, str)):
            try:
                compile_regex(node.args[-1].value)
            except ValueError as exc:
                return f"invalid regular expression {node.args[-1].value[:60]!r}: {exc}"
        stack.extend(ast.children(node))
    return None


class _Compiler:
    """Turns loaded entries into compiled rules; collects every error (lint wants them all)."""

    def __init__(self, engine: CelEngine, keep_going: bool) -> None:
        self.engine = engine
        self.keep_going = keep_going
        self.errors: list[PolicyError] = []
        self.warnings: list[PolicyError] = []

    def fail(self, error: PolicyError) -> None:
        if not self.keep_going:
            raise error
        self.errors.append(error)

    def compile_rule(self, entry: RuleEntry, expander: Expander) -> _Compiled | None:
        where = {"file": entry.file, "line": entry.condition_line, "rule": entry.name}
        try:
            text = expander.expand(entry.condition)
            if entry.exception:
                text = f"({text}) && !({expander.expand(entry.exception)})"
        except PolicyError as exc:
            self.fail(PolicyError(exc.message, exc.file or entry.file, exc.line or entry.line, entry.name))
            return None
        try:
            program = self.engine.compile(text)
        except CompileError as exc:
            self.fail(PolicyError(str(exc), **where))
            return None
        try:
            tree: ast.Node | None = ast.parse(text)
        except (ast.Unsupported, RecursionError):
            tree = None
        bad_regex = _invalid_regex(tree) if tree is not None else None
        if bad_regex is not None:
            self.fail(PolicyError(bad_regex, **where))
            return None
        when = list(entry.when)
        pinned = kinds_of(tree) if tree is not None else None
        if when and pinned is not None and not set(when) & pinned:
            self.fail(PolicyError(f"the condition needs event.kind in {sorted(pinned)} but when: lists "
                                  f"{when}: the rule can never match", **where))
            return None
        if not when:
            when = sorted(pinned) if pinned else list(KINDS)
        paths = ast.referenced_fields(tree) if tree is not None else []
        rule = Rule(name=entry.name, description=entry.description, severity=entry.severity,
                    action=entry.action, tags=entry.tags, when=when, mode=entry.mode,
                    sandboxes=entry.sandboxes, file=entry.file, line=entry.line,
                    condition=entry.condition, exception=entry.exception, expanded=text,
                    fields=[".".join(p) for p in paths])
        if entry.action == "deny":
            try:
                if tree is None:
                    raise NotCompilable("the condition could not be analysed")
                condition_tree = ast.parse(expander.expand(entry.condition))
                rule.deny_spec = compile_deny(condition_tree, when, entry.exception is not None)
            except (NotCompilable, ast.Unsupported) as exc:
                self.fail(PolicyError(f"action deny: cannot be compiled into the kernel: {exc}", **where))
                return None
        prefilters = necessary(tree, when) if tree is not None else {k: (None, None) for k in when}
        rule.prefiltered = any(p is not None for p, _ in prefilters.values())
        selector = selector_predicate(entry.sandboxes) if entry.sandboxes else None
        reads = ast.activation_paths(tree) if tree is not None else None
        return _Compiled(rule, program, reads, prefilters, selector, _field_getters(paths))


def _collect(paths: list[str | Path], compiler: _Compiler) -> tuple[
        dict[str, ListEntry], dict[str, MacroEntry], list[RuleEntry]]:
    lists: dict[str, ListEntry] = {}
    macros: dict[str, MacroEntry] = {}
    rules: dict[str, RuleEntry] = {}
    for file in expand_paths(paths):
        try:
            loaded = load_file(file)
        except PolicyError as exc:
            compiler.fail(exc)
            continue
        lists.update((e.name, e) for e in loaded.lists)
        macros.update((e.name, e) for e in loaded.macros)
        for rule in loaded.rules:
            if rule.name in rules:
                log.info("rule %r from %s replaces the one in %s", rule.name, rule.file,
                         rules[rule.name].file)
                del rules[rule.name]  # a later file overrides: its position wins too
            rules[rule.name] = rule
    return lists, macros, list(rules.values())


def compile_paths(paths: list[str | Path], keep_going: bool = False) -> tuple[list[_Compiled], _Compiler]:
    compiler = _Compiler(CelEngine(), keep_going)
    lists, macros, entries = _collect(paths, compiler)
    expander = Expander(lists, macros)
    for name in macros:  # a cycle is an error even when no rule uses the macro
        try:
            expander.expand(name)
        except PolicyError as exc:
            compiler.fail(exc)
    compiled = []
    for entry in entries:
        if not entry.enabled:
            continue
        result = compiler.compile_rule(entry, expander)
        if result is not None:
            compiled.append(result)
    return compiled, compiler


class RuleSet:
    """Compiled rules, indexed by event kind. `evaluate` is the hot path (one activation per event)."""

    def __init__(self, compiled: list[_Compiled], paths: list[str | Path], audit: bool = False,
                 engine: CelEngine | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.audit = audit
        self.eval_errors: dict[str, int] = {}
        self.last_reload_error: str | None = None
        self._lock = threading.Lock()
        self._install(compiled, engine or CelEngine())
        self._signature = self._files_signature()

    def _install(self, compiled: list[_Compiled], engine: CelEngine) -> None:
        """Activations come from the environment that compiled the programs."""
        by_kind: dict[str, list[_Compiled]] = {}
        for entry in compiled:
            for kind in entry.rule.when:
                by_kind.setdefault(kind, []).append(entry)
        plans = {kind: _plan(kind, entries) for kind, entries in by_kind.items()}
        # one assignment: evaluate() on another thread sees the old or the new set, never a mix
        self._state = (tuple(c.rule for c in compiled), plans, engine)

    def disable_prefilters(self) -> None:
        """CEL decides alone (benchmarks and the differential test compare against this)."""
        unique = list({id(c.rule): c for plan in self._state[1].values() for c, _ in plan.entries}.values())
        order = {id(rule): index for index, rule in enumerate(self._state[0])}
        unique.sort(key=lambda c: order[id(c.rule)])
        for entry in unique:
            entry.prefilters = {kind: (None, None) for kind in entry.rule.when}
            entry.rule.prefiltered = False
        self._install(unique, self._state[2])

    @property
    def rules(self) -> list[Rule]:
        return list(self._state[0])

    def rules_for(self, kind: str) -> list[Rule]:
        plan = self._state[1].get(kind)
        return [c.rule for c, _ in plan.entries] if plan else []

    def evaluate(self, event: Event) -> list[Alert]:
        _, plans, engine = self._state
        plan = plans.get(event.kind)
        if plan is None:
            return []
        selected = plan.unguarded
        several = False
        for get, check, group in plan.guards:
            value = get(event)
            if value is not MISSING and check(value):  # no guard passes on a field the event lacks
                several = bool(selected)
                selected = selected + group
        if not selected:
            return []
        if several:  # a rule guarded on two fields may be selected twice; keep rule order
            selected = tuple(sorted({item[0]: item for item in selected}.values()))
        data = event_view(event)
        activation = None
        alerts: list[Alert] = []
        for _, entry, prefilter in selected:
            if prefilter is not None and not prefilter(data):
                continue
            if entry.selector is not None and not entry.selector(data.get("sandbox")):
                continue
            try:
                if activation is None:
                    activation = engine.activation(plan.project(data))
                matched = entry.program.eval(activation)
            except EvalError as exc:
                self._count_error(entry.rule, str(exc))
                continue
            if matched:
                alerts.append(self._alert(entry, event, data))
        return alerts

    def _alert(self, entry: _Compiled, event: Event, data: dict[str, Any]) -> Alert:
        rule = entry.rule
        matched = {}
        for name, get in entry.field_getters:
            value = get(data)
            if value is not MISSING:
                matched[name] = value
        mode = "audit" if self.audit or rule.mode == "audit" else "enforce"
        return Alert(rule=rule.name, severity=rule.severity, action=rule.action, tags=list(rule.tags),
                     event=event, description=rule.description, matched=matched, mode=mode)

    def _count_error(self, rule: Rule, message: str) -> None:
        count = self.eval_errors.get(rule.name, 0)
        self.eval_errors[rule.name] = count + 1
        if count == 0:
            log.warning("rule %r (%s): evaluation error: %s (further errors only counted)",
                        rule.name, rule.source, message)

    # -- hot reload -------------------------------------------------------------------------
    def _files_signature(self) -> tuple[tuple[str, int, int], ...]:
        signature = []
        try:
            files = expand_paths(self.paths)
        except PolicyError:
            return ()
        for file in files:
            try:
                stat = file.stat()
            except OSError:
                continue
            signature.append((str(file), stat.st_mtime_ns, stat.st_size))
        return tuple(signature)

    def reload(self) -> bool:
        """Reload from the same paths. On error keep the rules in force, log why, return False."""
        with self._lock:
            signature = self._files_signature()
            try:
                compiled, compiler = compile_paths(self.paths)
            except PolicyError as exc:
                self.last_reload_error = str(exc)
                self._signature = signature
                log.warning("rules reload failed, keeping the previous %d rules: %s",
                            len(self._state[0]), exc)
                return False
            self._install(compiled, compiler.engine)
            self._signature = signature
            self.last_reload_error = None
            log.info("rules reloaded: %d rules from %s", len(compiled), ", ".join(self.paths))
            return True

    def changed(self) -> bool:
        return self._files_signature() != self._signature

    def reload_if_changed(self) -> bool | None:
        """None when nothing changed, else reload()'s result."""
        return self.reload() if self.changed() else None


def load_rules(paths: list[str | Path] | str | Path, audit: bool = False) -> RuleSet:
    """Load, validate and compile rule files/folders; PolicyError (one line, file:line) if any is bad."""
    if isinstance(paths, str | Path):
        paths = [paths]
    compiled, compiler = compile_paths(list(paths))
    return RuleSet(compiled, list(paths), audit=audit, engine=compiler.engine)


def lint_paths(paths: list[str | Path]) -> tuple[list[PolicyError], list[Rule]]:
    """Every error in the files (not just the first), and the rules that compiled."""
    try:
        compiled, compiler = compile_paths(paths, keep_going=True)
    except PolicyError as exc:
        return [exc], []
    return compiler.errors, [c.rule for c in compiled]


class RuleWatcher:
    """Polls the rule files of `ruleset` and reloads on change; `on_reload(ok, error)` after each."""

    def __init__(self, ruleset: RuleSet, on_reload: Callable[[bool, str | None], None] | None = None,
                 interval: float = 1.0) -> None:
        self.ruleset = ruleset
        self.on_reload = on_reload
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rule-watcher", daemon=True)

    def start(self) -> RuleWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            result = self.ruleset.reload_if_changed()
            if result is not None and self.on_reload is not None:
                self.on_reload(result, self.ruleset.last_reload_error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


__all__ = ["Rule", "RuleSet", "RuleWatcher", "event_view", "lint_paths", "load_rules"]
