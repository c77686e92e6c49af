"""The literal gate in front of RE2 (monitor/policy/literals.py): it may let through strings no
pattern matches (RE2 still decides), never stop one that a pattern matches."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.policy import DEFAULT_RULES_DIR, load_rules
from monitor.policy.literals import literal_gate, required_literals
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
    assert literal_gate(["/[.]ssh/id_", "/[.]aws/", "/[.]"]) == ("/.",)


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
          "/var/spool/cron/", "/etc/", "/.", "environ", "/proc/1/", "secrets/", "aws/credentials"]


def test_the_pack_has_gated_patterns() -> None:
    gated = [p for p in PACK_PATTERNS if required_literals(p)]
    assert len(gated) >= len(PACK_PATTERNS) // 2, "most pack regexes should have a literal gate"


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=8).map("".join), st.sampled_from(PACK_PATTERNS))
def test_gate_never_stops_a_match(text: str, pattern: str) -> None:
    literals = required_literals(pattern)
    if compile_regex(pattern).search(text) is not None and literals:
        assert any(lit in text for lit in literals), (pattern, text, literals)
