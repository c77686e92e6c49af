"""Replay: what a journal says an agent did, judged again.

Re-evaluates the journaled events with the given rules (audit mode: actions are reported as what
would have been done, never executed), and diffs the alerts with those recorded at the time, per
rule. A journal read back is a source like any other: the events reach the rules in the order
they were recorded, and sinks (an OTLP re-export) see them after they are judged, as in a live run.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.engine.config import COMMAND_LINE, MonitorConfig
from monitor.engine.sinks import AssemblyError, build_sinks
from monitor.event import Alert, Event
from monitor.journal import JournalReader, fewer_collections
from monitor.policy import DEFAULT_RULES_DIR, RuleSet, load_rules
from monitor.sinks import Sink

SESSION_KINDS = frozenset({"sandbox_start", "sandbox_end"})


class UsageError(Exception):
    """Bad input: printed as one line, exit status 1."""


# ---------------------------------------------------------------------------------------------
# time arguments

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)$")
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
            "d": 86400 * 10**9}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """RFC 3339 / ISO 8601 ("2026-11-23T10:00:00Z", naive = UTC), epoch seconds ("1763890000.5"),
    epoch nanoseconds (19 digits), or a duration back from now ("90s", "10m", "2h", "1d")."""
    value = text.strip()
    found = _DURATION.match(value)
    if found:
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(float(found.group(1)) * _UNIT_NS[found.group(2)])
    if re.fullmatch(r"\d{16,}", value):
        return int(value)
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return int(float(value) * 10**9)
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    fraction_ns = 0
    frac = re.search(r"\.(\d+)", iso)
    if frac:  # datetime keeps microseconds only: keep the nanoseconds ourselves
        digits = frac.group(1)
        fraction_ns = int(digits[:9].ljust(9, "0"))
        iso = iso[:frac.start()] + iso[frac.end():]
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise UsageError(f"cannot read time {text!r} (use RFC 3339, epoch seconds, or 10m/2h/1d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 10**9 + fraction_ns


# ---------------------------------------------------------------------------------------------
# replay


@dataclass
class ReplayOptions:
    journal: str
    rules: list[str] | None = None  # None: the default pack
    sandbox: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    sinks: list[Sink] = field(default_factory=list)  # re-export (OTLP): fed every event and new alert


@dataclass
class RuleDiff:
    rule: str
    recorded: int
    replayed: int
    status: str  # new | gone | changed | same
    new_events: list[str] = field(default_factory=list)   # event ids that fire now, did not then
    gone_events: list[str] = field(default_factory=list)  # event ids that fired then, not now

    def sentence(self) -> str:
        fired = times(self.replayed)
        if self.status == "new":
            return f"new rule {self.rule} would have fired {fired}"
        if self.status == "gone":
            return f"rule {self.rule} no longer fires (fired {times(self.recorded)} in the recording)"
        if self.status == "changed":
            extra = []
            if self.new_events:
                extra.append(f"{len(self.new_events)} new")
            if self.gone_events:
                extra.append(f"{len(self.gone_events)} no longer")
            detail = f" ({', '.join(extra)})" if extra else ""
            return f"rule {self.rule} would have fired {fired}, {times(self.recorded)} in the recording{detail}"
        return f"rule {self.rule} fires as recorded ({fired})"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "recorded": self.recorded, "replayed": self.replayed,
                "status": self.status, "new_events": self.new_events, "gone_events": self.gone_events,
                "text": self.sentence()}


def times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


@dataclass
class ReplayResult:
    events_seen: int = 0
    events_evaluated: int = 0
    alerts: list[Alert] = field(default_factory=list)
    replayed_by_rule: Counter[str] = field(default_factory=Counter)
    recorded_by_rule: Counter[str] = field(default_factory=Counter)
    would_act: Counter[str] = field(default_factory=Counter)  # "rule -> kill": n
    recorded_actions: Counter[str] = field(default_factory=Counter)
    replayed_pairs: set[tuple[str, str]] = field(default_factory=set)  # (rule, event id)
    recorded_pairs: set[tuple[str, str]] = field(default_factory=set)
    sessions: int = 0
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def diff(self) -> list[RuleDiff]:
        out = []
        for rule in sorted(set(self.replayed_by_rule) | set(self.recorded_by_rule)):
            recorded, replayed = self.recorded_by_rule[rule], self.replayed_by_rule[rule]
            now = {e for r, e in self.replayed_pairs if r == rule}
            then = {e for r, e in self.recorded_pairs if r == rule}
            new_events, gone_events = sorted(now - then), sorted(then - now)
            if not recorded:
                status = "new"
            elif not replayed:
                status = "gone"
            elif recorded != replayed or new_events or gone_events:
                status = "changed"
            else:
                status = "same"
            out.append(RuleDiff(rule, recorded, replayed, status, new_events, gone_events))
        return out

    def summary(self) -> dict[str, Any]:
        return {"type": "summary", "events": self.events_seen, "events_evaluated": self.events_evaluated,
                "alerts": sum(self.replayed_by_rule.values()), "alerts_by_rule": dict(self.replayed_by_rule),
                "recorded_alerts": sum(self.recorded_by_rule.values()),
                "recorded_alerts_by_rule": dict(self.recorded_by_rule),
                "would_act": dict(self.would_act), "recorded_actions": dict(self.recorded_actions),
                "sessions": self.sessions, "warnings": self.warnings, "elapsed_s": round(self.elapsed_s, 3)}


def load_replay_rules(paths: list[str] | None) -> RuleSet:
    """The rule set in audit mode (replay never acts). PolicyError on a bad rule file."""
    return load_rules(list(paths) if paths else [DEFAULT_RULES_DIR], audit=True)


def _rule_kinds(ruleset: RuleSet) -> frozenset[str] | None:
    """The event kinds any rule is indexed under (None: a rule with no `when` reads every kind)."""
    kinds: set[str] = set()
    for rule in ruleset.rules:
        if not rule.when:
            return None
        kinds.update(rule.when)
    return frozenset(kinds)


def replay_journal(options: ReplayOptions, ruleset: RuleSet | None = None,
                   on_alert: Callable[[Alert], None] | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_warning: Callable[[str], None] | None = None) -> ReplayResult:
    """Re-evaluate a journal. JournalError if there is no journal; PolicyError if a rule is bad."""
    result = ReplayResult()
    reader = JournalReader(options.journal, on_warning=on_warning)
    if ruleset is None:
        ruleset = load_replay_rules(options.rules)
    evaluate = ruleset.evaluate
    kinds = _rule_kinds(ruleset)
    if kinds is not None and options.sinks:
        kinds = None  # re-export wants every event
    elif kinds is not None:
        kinds = kinds | SESSION_KINDS
    skipped: Counter[str] = Counter()
    started = time.perf_counter()
    with fewer_collections():
        _replay_records(reader, options, kinds, skipped, evaluate, result, on_alert, progress)
    result.events_seen += sum(skipped.values())
    result.elapsed_s = time.perf_counter() - started
    result.warnings = list(reader.warnings)
    for sink in options.sinks:
        try:
            sink.close(result.summary())
        except Exception as exc:  # an exporter failing at the end must not hide the replay
            result.warnings.append(f"{sink.name}: {exc}")
    return result


def _replay_records(reader: JournalReader, options: ReplayOptions, kinds: frozenset[str] | None,
                    skipped: Counter[str], evaluate: Callable[[Event], list[Alert]], result: ReplayResult,
                    on_alert: Callable[[Alert], None] | None, progress: Callable[[int], None] | None) -> None:
    for rec in reader.records(sandbox=options.sandbox, since_ns=options.since_ns, until_ns=options.until_ns,
                              kinds=kinds, skipped=skipped, progress=progress):
        rtype = rec.type
        if rtype == "event":
            event = rec.value
            result.events_seen += 1
            if event.kind == "sandbox_start":
                result.sessions += 1
            alerts = evaluate(event)  # judged first, then shown, as in a live run
            result.events_evaluated += 1
            for alert in alerts:
                result.alerts.append(alert)
                result.replayed_by_rule[alert.rule] += 1
                result.replayed_pairs.add((alert.rule, event.id))
                if alert.action != "alert":
                    result.would_act[f"{alert.rule} -> {alert.action}"] += 1
                if on_alert is not None:
                    on_alert(alert)
            for sink in options.sinks:
                sink.on_event(event)
                for alert in alerts:
                    sink.on_alert(alert)
        elif rtype == "alert":
            result.recorded_by_rule[rec.value.rule] += 1
            result.recorded_pairs.add((rec.value.rule, rec.value.event.id))
        elif rtype == "action":
            result.recorded_actions[f"{rec.value.rule} -> {rec.value.action}: {rec.value.outcome}"] += 1


def otlp_sink(url: str) -> Sink:
    """The OTLP sink for --otlp, built as every command builds its sinks (traces and logs: a
    replay adds nothing to live metrics); UsageError when the URL cannot be used."""
    try:
        [sink] = build_sinks(MonitorConfig(source=COMMAND_LINE, otlp=url), signals=("traces", "logs"))
    except AssemblyError as exc:
        raise UsageError(str(exc)) from None
    return sink


