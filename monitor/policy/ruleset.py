"""RuleSet: rule files -> compiled rules indexed by event kind -> alerts for an event."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.event import KINDS, Alert, Event
from monitor.policy import ast
from monitor.policy.correlation import Sequence, Threshold, field_getter, scope_getter
from monitor.policy.deny import DenySpec, NotCompilable, compile_deny
from monitor.policy.engine import CelEngine, CompileError, EvalError, Program
from monitor.policy.errors import PolicyError
from monitor.policy.expand import Expander
from monitor.policy.loader import ListEntry, MacroEntry, RuleEntry, Selector, expand_paths, load_file
from monitor.policy.plan import event_getter, event_view, plan_kind
from monitor.policy.prefilter import (
    MISSING,
    Guard,
    Predicate,
    compile_regex,
    getter,
    guard_choices,
    kinds_of,
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
    origin: dict[str, Any] = field(default_factory=dict)  # e.g. a converted Sigma rule's id, author

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
    guard_choices: dict[str, list[Guard]] = field(default_factory=dict)  # per kind: equally good guards
    # a correlation rule's matches feed its state: (event time, event view) -> the pattern completed
    correlate: Callable[[int, dict[str, Any]], bool] | None = None
    correlator: Any = None  # the Threshold / Sequence holding that state (its `evicted` count)


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

    def refuse(self, error: PolicyError) -> None:
        """A Sigma rule that could not be converted: an error for lint, else a warning (logged)
        while the other rules load."""
        if self.keep_going:
            self.errors.append(error)
            return
        self.warnings.append(error)
        log.warning("%s (not loaded)", error)

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
                    fields=[".".join(p) for p in paths], origin=entry.origin)
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
        choices = guard_choices(tree, when) if tree is not None else {}
        return _Compiled(rule, program, reads, prefilters, selector, _field_getters(paths), choices)


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
        for refused in loaded.refused:
            compiler.refuse(refused)
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
        if entry.sequence is not None:
            compiled += _compile_sequence(entry, compiler, expander)
            continue
        result = compiler.compile_rule(entry, expander)
        if result is not None and entry.threshold is not None:
            spec = entry.threshold
            result.correlator = Threshold(spec.count, int(spec.within * 1e9), scope_getter(spec.by),
                                          field_getter(spec.distinct) if spec.distinct else None)
            result.correlate = result.correlator.observe
        if result is not None:
            compiled.append(result)
    return compiled, compiler


def _compile_sequence(entry: RuleEntry, compiler: _Compiler, expander: Expander) -> list[_Compiled]:
    """One compiled entry per step (the last first: one event never completes two steps at once),
    all feeding one Sequence."""
    spec = entry.sequence
    assert spec is not None
    sequence = Sequence(len(spec.steps), int(spec.within * 1e9), scope_getter(spec.by),
                        [field_getter(step.key) if step.key else None for step in spec.steps])
    out = []
    for index in reversed(range(len(spec.steps))):
        step = spec.steps[index]
        step_entry = dataclasses.replace(entry, condition=step.condition, when=step.when,
                                         condition_line=step.line, sequence=None)
        result = compiler.compile_rule(step_entry, expander)
        if result is None:
            return []
        result.correlator = sequence
        result.correlate = functools.partial(sequence.observe, index)
        out.append(result)
    return out


class RuleSet:
    """Compiled rules, indexed by event kind. `evaluate` is the hot path (one activation per event)."""

    def __init__(self, compiled: list[_Compiled], paths: list[str | Path], audit: bool = False,
                 engine: CelEngine | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.audit = audit
        self.eval_errors: dict[str, int] = {}
        self.last_reload_error: str | None = None
        self.warnings: list[str] = []  # rules left out at the last (re)load, e.g. unconvertible Sigma rules
        self._lock = threading.Lock()
        self._install(compiled, engine or CelEngine())
        self._signature = self._files_signature()

    def _install(self, compiled: list[_Compiled], engine: CelEngine) -> None:
        """Activations come from the environment that compiled the programs."""
        by_kind: dict[str, list[_Compiled]] = {}
        for entry in compiled:
            for kind in entry.rule.when:
                by_kind.setdefault(kind, []).append(entry)
        plans = {kind: plan_kind(kind, entries) for kind, entries in by_kind.items()}
        # one assignment: evaluate() on another thread sees the old or the new set, never a mix
        self._state = (tuple(c.rule for c in compiled), plans, engine)

    def disable_prefilters(self) -> None:
        """CEL decides alone (benchmarks and the differential test compare against this)."""
        unique = list({id(c.rule): c for plan in self._state[1].values() for c, _ in plan.entries}.values())
        order = {id(rule): index for index, rule in enumerate(self._state[0])}
        unique.sort(key=lambda c: order[id(c.rule)])
        for entry in unique:
            entry.prefilters = {kind: (None, None) for kind in entry.rule.when}
            entry.guard_choices = {}
            entry.rule.prefiltered = False
        self._install(unique, self._state[2])

    @property
    def rules(self) -> list[Rule]:
        """One per rule (a sequence rule is compiled once per step: it is listed once, with the
        kinds of all its steps)."""
        seen: dict[str, Rule] = {}
        for rule in self._state[0]:
            first = seen.get(rule.name)
            seen[rule.name] = rule if first is None else dataclasses.replace(
                first, when=list(dict.fromkeys(first.when + rule.when)))
        return list(seen.values())

    def correlation_evictions(self) -> dict[str, int]:
        """Per correlation rule, the partial matches dropped because its state was full."""
        plans = self._state[1].values()
        found = {id(c.correlator): (c.rule.name, c.correlator) for plan in plans for c, _ in plan.entries
                 if c.correlator is not None}
        return {name: correlator.evicted for name, correlator in found.values()}

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
        for get, select, _ in plan.guards:
            value = get(event)
            if value is MISSING:  # no guard passes on a field the event lacks
                continue
            group = select(value)
            if group:
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
            if matched and (entry.correlate is None or entry.correlate(event.time_ns, data)):
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
            self.warnings = [str(w) for w in compiler.warnings]
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
    ruleset = RuleSet(compiled, list(paths), audit=audit, engine=compiler.engine)
    ruleset.warnings = [str(w) for w in compiler.warnings]
    return ruleset


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


__all__ = ["Rule", "RuleSet", "RuleWatcher", "event_getter", "event_view", "lint_paths", "load_rules"]
