"""Differential test: generated events x every rule of the default pack must get the same verdict
from the engine (cel-expr-python, with pre-filters, guards and slim activations) and from
cel-python 0.5, the pure-Python CEL reference, evaluating the same expanded conditions.

A verdict is "match" (the condition is true) or "no match" (false, or an evaluation error)."""

from __future__ import annotations

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


def _fixture_events() -> list[dict]:
    found = []
    for rule_file in expand_paths([DEFAULT_RULES_DIR, DEFAULT_RULES_DIR / "enforce"]):
        if fixture_file(rule_file).is_file():
            for entry in load_fixtures(fixture_file(rule_file)):
                found += entry.get("match", []) + entry.get("no_match", [])
    return found


FIXTURE_EVENTS = _fixture_events()
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


def oracle_verdicts(event: Event) -> list[str]:
    activation = {"event": json_to_cel(event.to_dict())}
    matched = []
    for rule in RULES.rules_for(event.kind):
        try:
            verdict = ORACLE[rule.name].evaluate(activation)
        except Exception:  # CELEvalError and friends: an error is "no match", as in the engine
            continue
        if verdict is True or (isinstance(verdict, celpy.celtypes.BoolType) and bool(verdict)):
            matched.append(rule.name)
    return matched


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_engine_and_reference_agree_on_every_rule(data):
    event = Event.from_dict(data)
    engine = [alert.rule for alert in RULES.evaluate(event)]
    assert engine == oracle_verdicts(event), data


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_fixture_events())
@example({"process": {"executable": "\x00/usr/bin/nc"}, "kind": "exec"})  # the runtime stopped at NUL
def test_engine_and_reference_agree_near_the_fixtures(data):
    """Fixture events perturbed around what each rule tests: where verdicts flip, both must flip."""
    event = Event.from_dict(data)
    engine = [alert.rule for alert in RULES.evaluate(event)]
    assert engine == oracle_verdicts(event), data


def test_fixtures_agree_too():
    """The hand-written fixture events (matches included) through both engines."""
    checked = matched = 0
    for rule_file in expand_paths([DEFAULT_RULES_DIR, DEFAULT_RULES_DIR / "enforce"]):
        if fixture_file(rule_file).is_file():
            for entry in load_fixtures(fixture_file(rule_file)):
                for data in entry.get("match", []) + entry.get("no_match", []):
                    event = Event.from_dict(data)
                    engine = [a.rule for a in RULES.evaluate(event)]
                    assert engine == oracle_verdicts(event), data
                    checked += 1
                    matched += bool(engine)
    assert checked > 150 and matched > 80
