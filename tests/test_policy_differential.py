"""Differential test: generated events x every rule of the default pack must get the same verdict
from the engine (cel-expr-python, with pre-filters, guards and slim activations) and from
cel-python 0.5, the pure-Python CEL reference, evaluating the same expanded conditions.

Each rule's verdict is "match" (the condition is true), "no match" (false) or an error (the
evaluation raised). The engine's pre-filtered rule set must alert on exactly the rules the reference
matches, and CEL alone (pre-filters off, as the reference is) must agree rule by rule: where both
raise, they must raise for the same reason (see assert_agree)."""

from __future__ import annotations

import logging
import re

import celpy
from celpy.adapter import json_to_cel
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.event import Event
from monitor.policy import DEFAULT_RULES_DIR, load_rules
from monitor.policy.engine import oracle_functions
from monitor.policy.loader import expand_paths
from monitor.policy.tooling import fixture_file, load_fixtures

RULES = load_rules([DEFAULT_RULES_DIR, DEFAULT_RULES_DIR / "enforce"])
CEL_ALONE = load_rules([DEFAULT_RULES_DIR, DEFAULT_RULES_DIR / "enforce"])
CEL_ALONE.disable_prefilters()
_ENV = celpy.Environment()
ORACLE = {rule.name: _ENV.program(_ENV.compile(rule.expanded), functions=oracle_functions())
          for rule in RULES.rules}


def _fixture_values() -> dict[str, list]:
    """Strings and numbers the pack's fixtures use: generated events reach the interesting branches."""
    pools: dict[str, set] = {"path": set(), "exe": set(), "arg": set(), "address": set(), "query": set(),
                             "args_json": set()}
    for rule_file in expand_paths([DEFAULT_RULES_DIR, DEFAULT_RULES_DIR / "enforce"]):
        if not fixture_file(rule_file).is_file():
            continue
        for entry in load_fixtures(fixture_file(rule_file)):
            for event in entry.get("match", []) + entry.get("no_match", []):
                file, process, net = event.get("file") or {}, event.get("process") or {}, event.get("net") or {}
                pools["path"] |= {file[k] for k in ("path", "new_path") if k in file}
                pools["exe"].add(process.get("executable", "/usr/bin/bash"))
                pools["arg"] |= set(process.get("args") or [])
                pools["address"] |= {net["address"]} if "address" in net else set()
                pools["query"] |= {net["query"]} if "query" in net else set()
                for call in (event.get("llm") or {}).get("tool_calls") or []:
                    pools["args_json"].add(call.get("arguments_json", ""))
    return {k: sorted(v, key=str) for k, v in pools.items()}


POOLS = _fixture_values()
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)


def pick(pool: str) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(POOLS[pool]), text, st.sampled_from(POOLS[pool]).map(lambda s: s + "x"))


process = st.fixed_dictionaries({
    "pid": st.integers(1, 5000), "ppid": st.integers(0, 5000), "uid": st.sampled_from([0, 1000, 65534]),
    "gid": st.sampled_from([0, 1000]), "comm": st.just("x"), "executable": pick("exe"),
    "args": st.lists(pick("arg"), max_size=4), "cwd": st.just("/work"),
    "ancestors": st.lists(st.fixed_dictionaries({"pid": st.integers(1, 9), "executable": pick("exe"),
                                                 "args": st.lists(pick("arg"), max_size=2),
                                                 "comm": st.just("p")}), max_size=2)})
file = st.fixed_dictionaries({"path": pick("path"), "write": st.booleans(),
                              "flags": st.lists(st.sampled_from(["O_RDONLY", "O_WRONLY", "O_CREAT", "O_TRUNC"]),
                                                max_size=3)},
                             optional={"new_path": pick("path"), "mode": st.integers(0, 0o7777)})
net = st.fixed_dictionaries({"family": st.sampled_from(["inet", "inet6", "unix"]),
                             "direction": st.sampled_from(["egress", "ingress"])},
                            optional={"address": pick("address"), "port": st.integers(0, 65535),
                                      "transport": st.sampled_from(["tcp", "udp"]), "query": pick("query")})
detail = st.fixed_dictionaries({}, optional={
    "uid": st.one_of(st.none(), st.sampled_from([0, 1000])), "euid": st.sampled_from([0, 1000]),
    "cmd": st.integers(0, 6), "request": st.sampled_from(["PTRACE_ATTACH", "PTRACE_TRACEME", "PTRACE_POKEDATA"]),
    "flags": st.lists(st.sampled_from(["CLONE_NEWUSER", "CLONE_NEWNET", "CLONE_NEWNS"]), max_size=2)})
llm = st.fixed_dictionaries({"provider": st.just("openai"), "tool_calls": st.lists(
    st.fixed_dictionaries({"id": st.just("t"), "name": st.just("bash"), "arguments_json": pick("args_json")}),
    max_size=2)})
container = st.fixed_dictionaries({
    "privileged": st.booleans(), "user": st.sampled_from(["root", "1000", ""]), "read_only_rootfs": st.booleans(),
    "no_new_privileges": st.booleans(), "seccomp": st.sampled_from(["default", "unconfined", "custom"]),
    "cap_add": st.lists(st.sampled_from(["SYS_ADMIN", "CHOWN", "NET_ADMIN"]), max_size=2), "cap_drop": st.just([]),
    "host_pid": st.booleans(), "host_network": st.booleans(), "host_ipc": st.booleans(),
    "mounts": st.lists(st.fixed_dictionaries({"source": st.sampled_from(["/var/run/docker.sock", "/srv"]),
                                              "destination": st.sampled_from(["/data", "/run/docker.sock"]),
                                              "rw": st.booleans()}), max_size=2),
    "tmpfs": st.lists(st.fixed_dictionaries({"destination": st.just("/t"), "noexec": st.booleans()}), max_size=1),
    "image_pinned": st.booleans()})

KINDS = sorted({kind for rule in RULES.rules for kind in rule.when})


@st.composite
def events(draw) -> dict:
    kind = draw(st.sampled_from(KINDS))
    event: dict = {"kind": kind, "process": draw(process),
                   "sandbox": {"id": "s", "name": "agent", "runtime": "cgroup", "labels": {}}}
    for name, strategy in (("file", file), ("net", net), ("detail", detail), ("llm", llm),
                           ("container", container)):
        if draw(st.booleans()):
            event[name] = draw(strategy)
    if draw(st.booleans()):
        event["result"] = draw(st.sampled_from([0, -1, -13]))
    return event


FIXTURE_ENTRIES = [entry for rule_file in expand_paths([DEFAULT_RULES_DIR, DEFAULT_RULES_DIR / "enforce"])
                   if fixture_file(rule_file).is_file() for entry in load_fixtures(fixture_file(rule_file))]
FIXTURE_EVENTS = [data for entry in FIXTURE_ENTRIES for data in entry.get("match", []) + entry.get("no_match", [])]
ANY_POOL = sorted({v for pool in POOLS.values() for v in pool}, key=str)


def _mutate(draw, value):
    """Perturb a fixture value near the rules' boundaries: drop, swap, trim, extend, retype."""
    if isinstance(value, dict):
        out = {}
        for key, inner in value.items():
            if key != "kind" and draw(st.integers(0, 9)) == 0:
                continue  # field dropped: has() and missing-key errors
            out[key] = _mutate(draw, inner) if draw(st.integers(0, 3)) == 0 else inner
        return out
    if isinstance(value, list):
        return [_mutate(draw, v) for v in value if draw(st.integers(0, 5))]
    if isinstance(value, str):
        choice = draw(st.integers(0, 4))
        if choice == 0:
            return draw(st.sampled_from(ANY_POOL))
        if choice == 1:
            return value[: draw(st.integers(0, len(value)))]
        if choice == 2:
            return value + draw(text)
        if choice == 3:
            return draw(text) + value
        return value.upper()
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return draw(st.sampled_from([0, 1, -1, value + 1, value - 1, 1024, 2048, 65534, 3333, 53]))
    return value


@st.composite
def mutated_fixture_events(draw) -> dict:
    return _mutate(draw, draw(st.sampled_from(FIXTURE_EVENTS)))


MISSING_IN_ENGINE = re.compile(r'Key not found in map : "([^"]*)"')
MISSING_IN_REFERENCE = re.compile(r"no such member in mapping: [\\']+([A-Za-z_0-9]+)")


class EngineErrors(logging.Handler):
    """The engine's evaluation errors, by rule, as it logs them (the first of each rule's run)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if "evaluation error" not in str(record.msg):  # reloads, rules left out at load
            return
        rule, _source, message = record.args  # type: ignore[misc]
        self.messages[str(rule)] = str(message)


ENGINE_ERRORS = EngineErrors()
logging.getLogger("monitor.policy.ruleset").addHandler(ENGINE_ERRORS)


def oracle_verdicts(event: Event) -> dict[str, str]:
    """Each rule for the event's kind: "match", "no match", or the error the reference raised."""
    activation = {"event": json_to_cel(event.to_dict())}
    verdicts = {}
    for rule in RULES.rules_for(event.kind):
        try:
            value = ORACLE[rule.name].evaluate(activation)
        except celpy.CELEvalError as exc:
            value = exc
        if isinstance(value, celpy.CELEvalError):
            verdicts[rule.name] = f"error: {value!r}"
        elif isinstance(value, bool | celpy.celtypes.BoolType):
            verdicts[rule.name] = "match" if bool(value) else "no match"
        else:
            raise AssertionError(f"{rule.name}: the reference gave {value!r}, not a bool")
    return verdicts


def engine_verdicts(event: Event) -> dict[str, str]:
    """Each rule for the event's kind in the engine with CEL alone: "match", "no match" or its error."""
    CEL_ALONE.eval_errors.clear()  # so each error is logged, and seen here
    ENGINE_ERRORS.messages.clear()
    matched = {alert.rule for alert in CEL_ALONE.evaluate(event)}
    verdicts = {}
    for rule in CEL_ALONE.rules_for(event.kind):
        if rule.name in ENGINE_ERRORS.messages:
            verdicts[rule.name] = f"error: {ENGINE_ERRORS.messages[rule.name]}"
        else:
            verdicts[rule.name] = "match" if rule.name in matched else "no match"
    return verdicts


def same_error(engine: str, reference: str) -> bool:
    """Both raised for the same reason: the key the engine missed is one the reference missed.
    (The pack's conditions raise only on missing keys in this engine; any other error differs.)"""
    missing = MISSING_IN_ENGINE.search(engine)
    return missing is not None and missing.group(1) in MISSING_IN_REFERENCE.findall(reference)


def assert_agree(data: dict) -> dict[str, str]:
    """The verdicts agree rule by rule: both match, both decide no match, or both raise for the
    same missing key. An error on one side only is a "no match" there (as in production, where
    an evaluation error never alerts): the reference answers has() on a missing parent with
    false where the engine, as the CEL spec says, raises."""
    event = Event.from_dict(data)
    reference, engine = oracle_verdicts(event), engine_verdicts(event)
    assert engine.keys() == reference.keys()
    for rule, verdict in engine.items():
        theirs = reference[rule]
        if verdict.startswith("error") and theirs.startswith("error"):
            assert same_error(verdict, theirs), (rule, verdict, theirs, data)
        else:
            assert (verdict == "match") == (theirs == "match"), (rule, verdict, theirs, data)
    prefiltered = [alert.rule for alert in RULES.evaluate(event)]
    assert prefiltered == [name for name, verdict in reference.items() if verdict == "match"], data
    return reference


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_engine_and_reference_agree_on_every_rule(data):
    assert_agree(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_fixture_events())
@example({"process": {"executable": "\x00/usr/bin/nc"}, "kind": "exec"})  # the runtime stopped at NUL
def test_engine_and_reference_agree_near_the_fixtures(data):
    """Fixture events perturbed around what each rule tests: where verdicts flip, both must flip."""
    assert_agree(data)


def test_fixtures_agree_too():
    """The hand-written fixture events (matches included) through both engines."""
    verdicts: dict[str, int] = {"match": 0, "no match": 0, "error": 0}
    for data in FIXTURE_EVENTS:
        for verdict in assert_agree(data).values():
            verdicts[verdict.split(":")[0]] += 1
    matches = sum(len(entry.get("match", [])) for entry in FIXTURE_ENTRIES)
    assert len(FIXTURE_EVENTS) > 150 and verdicts["match"] >= matches, verdicts
