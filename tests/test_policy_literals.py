"""The gate in front of RE2 and of the guards' string tests (monitor/policy/literals.py): it may let
through strings no pattern matches (the tests still decide), never stop one that a pattern matches."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.policy import DEFAULT_RULES_DIR, load_rules
from monitor.policy.literals import gate_check, literal_gate, regex_gate, required_literals
from monitor.policy.prefilter import compile_regex


def test_literals_of_simple_shapes() -> None:
    assert required_literals("^/etc/(passwd|shadow)$") == {"/etc/"}
    assert required_literals("/[.]ssh/") == {"/.ssh/"}
    assert required_literals("(foo|bar)x") == {"foo", "bar"}
    assert required_literals("a?bc") == {"bc"}


def test_no_gate_where_it_cannot_be_shown() -> None:
    assert required_literals("(?i)secret") is None  # case-insensitive: "SECRET" matches too
    assert required_literals("[ab]c") is None  # no 2-character literal
    assert required_literals("(ab|c)") is None  # one branch has none
    assert required_literals("a{0,3}") is None
    assert required_literals(r"\Qa.b\E") is None  # RE2-only syntax
    assert literal_gate(["/etc/", "[ab]"]) is None


def test_redundant_literals_are_dropped() -> None:
    assert literal_gate(["/[.]ssh/id_", "/[.]aws/", "/[.]"]) == ((), ("/.",))
    assert literal_gate(["^/etc/", "^/etc/cron[.]d/", "^/home/[.]x", "[.]x"]) == (("/etc/",), (".x",))


def test_anchored_branches_give_prefixes() -> None:
    assert regex_gate("^/etc/cron(tab$|[.]d/)|^/var/spool/cron/") == (
        {"/etc/crontab", "/etc/cron.d/", "/var/spool/cron/"}, set())
    assert regex_gate("^/(var/)?run/secrets/") == ({"/var/run/secrets/", "/run/secrets/"}, set())
    assert regex_gate("^/proc/[0-9]+/environ$|/[.]ssh/") == ({"/proc/"}, {"/.ssh/"})
    assert regex_gate("^/(etc|lib)/x") == ({"/etc/x", "/lib/x"}, set())
    assert regex_gate("^a+bc") == (set(), {"bc"})  # no prefix of 2+ characters: the literals
    assert regex_gate("(?m)^/etc/x") == (set(), {"/etc/x"})  # ^ after any newline too
    assert regex_gate("^a+") is None


def test_gate_check() -> None:
    passes = gate_check((("/etc/cron", "/etc/passwd", "/proc/"), ("/.",)))
    assert passes is not None
    assert passes("/etc/passwd") and passes("/etc/passwd-") and passes("/proc/1/environ")
    assert passes("/home/u/.bashrc") and passes("/etc/crontab")
    assert not passes("/etc/pass") and not passes("/etc/hosts") and not passes("/pro") and not passes("")
    assert gate_check((("",), ())) is None and gate_check(((), ("",))) is None  # lets everything through
    nothing = gate_check(((), ()))
    assert nothing is not None and not nothing("/etc/passwd")


def _pack_patterns() -> list[str]:
    rules = load_rules([DEFAULT_RULES_DIR])
    patterns: set[str] = set()
    for plan in rules._state[1].values():
        for entry, _ in plan.entries:
            for _prefilter, guard in entry.prefilters.values():
                for test in (guard or {}).values():
                    patterns |= set(test.regexes)
    return sorted(patterns)


PACK_PATTERNS = _pack_patterns()
PIECES = ["/", ".", "etc", "ssh", "/home/u/", ".bashrc", "cron", "systemd/", "id_rsa", "x", "_history",
          "/var/spool/cron/", "/etc/", "/.", "environ", "/proc/1/", "secrets/", "aws/credentials",
          "/run/", "/var/run/", "secrets/tokens/", "/etc/cron.d/", "/usr/lib/systemd/user/", "task/2/"]


def test_the_pack_has_gated_patterns() -> None:
    gated = [p for p in PACK_PATTERNS if required_literals(p)]
    assert len(gated) >= len(PACK_PATTERNS) // 2, "most pack regexes should have a literal gate"


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=8).map("".join), st.sampled_from(PACK_PATTERNS))
def test_gate_never_stops_a_match(text: str, pattern: str) -> None:
    literals, gate = required_literals(pattern), regex_gate(pattern)
    if compile_regex(pattern).search(text) is not None:
        if literals:
            assert any(lit in text for lit in literals), (pattern, text, literals)
        if gate:
            passes = gate_check((tuple(gate[0]), tuple(gate[1])))
            assert passes is None or passes(text), (pattern, text, gate)
