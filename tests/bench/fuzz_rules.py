"""Fuzz the rule loader (hypothesis): random and mutated rule files must load or fail with a
one-line PolicyError carrying file:line, never anything else (no traceback, no hang).

    python tests/bench/fuzz_rules.py [--seconds 60] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from monitor.policy import DEFAULT_RULES_DIR, PolicyError, load_rules  # noqa: E402
from monitor.policy.tooling import lint  # noqa: E402

SEEDS = [p.read_bytes() for p in sorted(DEFAULT_RULES_DIR.glob("*.yaml"))]
TOKENS = [b"- rule: ", b"- macro: ", b"- list: ", b"  condition: ", b"  when: ", b"  except: ", b"  items: ",
          b"  action: deny\n", b"  sandboxes: {names: [a]}\n", b"event.process.executable", b" && ", b" || ",
          b"!", b"(", b")", b"[", b"]", b"{", b"}", b'"', b"'", b"\n", b": ", b"&a ", b"*a", b"!!python/object:os.system",
          b"\xff", b"\t", b"- ", b'.matches("(")', b"has(event.file)", b"is_shell", b"exec", b"open", b"\x00",
          b"%YAML 1.1\n", b"---\n", b"? ", b"2001-02-30", b"1e999999"]


@st.composite
def rule_files(draw) -> bytes:
    if draw(st.booleans()):
        seed = bytearray(draw(st.sampled_from(SEEDS)))
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(seed)))
            if draw(st.booleans()) and len(seed) > 1:
                end = min(len(seed), at + draw(st.integers(1, 40)))
                del seed[at:end]
            else:
                seed[at:at] = draw(st.sampled_from(TOKENS))
        return bytes(seed)
    return b"".join(draw(st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8)), max_size=60)))


class Stats:
    cases = loaded = refused = 0


def check(data: bytes, folder: Path) -> None:
    path = folder / "fuzz.yaml"
    path.write_bytes(data)
    Stats.cases += 1
    try:
        load_rules([path])
        Stats.loaded += 1
    except PolicyError as exc:
        message = str(exc)
        assert message.startswith(f"{path}:"), message
        assert "\n" not in message, message
        Stats.refused += 1


def run(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        @settings(max_examples=300, deadline=2000, database=None, suppress_health_check=list(HealthCheck))
        @given(rule_files())
        def fuzz(data: bytes) -> None:
            check(data, folder)

        while time.monotonic() < deadline:
            fuzz()  # a batch of examples; a crash raises here with the failing file
        # lint goes through the same loader plus field analysis: one last pass on a mutated seed
        (folder / "fuzz.yaml").write_bytes(SEEDS[0][: len(SEEDS[0]) // 2])
        with open(os.devnull, "w") as sink:
            lint([str(folder / "fuzz.yaml")], out=sink)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--smoke", action="store_true", help="a few seconds")
    args = parser.parse_args(argv)
    seconds = 3.0 if args.smoke else args.seconds
    started = time.monotonic()
    run(seconds)
    took = time.monotonic() - started
    print(f"fuzzed the rule loader for {took:.1f}s: {Stats.cases} files, {Stats.loaded} loaded, "
          f"{Stats.refused} refused with a file:line error, 0 crashes")
    return 0 if Stats.cases else 1


if __name__ == "__main__":
    sys.exit(main())
