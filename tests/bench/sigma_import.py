"""Benchmark: the Sigma import on the SigmaHQ Linux corpus (tests/fixtures/sigma), on one core.

Prints how many of the corpus's rules convert and the refusal reasons grouped, the conversion
rate (rules/s: parse, pipeline, backend, and a CEL compile of each result), and what loading the
Sigma files with --rules adds to loading the default pack (conversion at load + compile). Then
the policy benchmark (tests/bench/policy.py) with the default pack plus every converted rule:
target >= 200,000 events/s on the recorded agent mix, as for the pack alone.

    python -m tests.bench.sigma_import [--smoke] [--seconds 5]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from monitor.policy import DEFAULT_RULES_DIR, load_rules  # noqa: E402
from monitor.policy.sigma import convert_paths  # noqa: E402
from tests.bench import policy  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "sigma" / "rules"
SIGMA_DIRS = [str(p) for p in sorted((CORPUS / "linux").iterdir()) if p.is_dir()]


def best_of(runs: int, function) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    runs = 1 if args.smoke else 3
    result = convert_paths([CORPUS])
    total = len(result.rules) + len(result.refusals)
    print(f"SigmaHQ Linux corpus: {len(result.rules)} of {total} rules convert, {len(result.refusals)} refused")
    reasons = collections.Counter(re.sub(r"'[^']*'", "'...'", r.reason) for r in result.refusals)
    for reason, count in reasons.most_common():
        print(f"  refused {count}: {reason}")
    seconds = best_of(runs, lambda: convert_paths([CORPUS]))
    print(f"  conversion: {total / seconds:,.0f} rules/s ({seconds * 1000:.0f} ms CPU for {total} files)")
    load_rules([DEFAULT_RULES_DIR])  # warm: imports, the CEL parser's grammar
    load_rules([DEFAULT_RULES_DIR, *SIGMA_DIRS])
    pack = best_of(runs, lambda: load_rules([DEFAULT_RULES_DIR]))
    both = best_of(runs, lambda: load_rules([DEFAULT_RULES_DIR, *SIGMA_DIRS]))
    print(f"  load: pack {pack * 1000:.0f} ms, pack + Sigma files {both * 1000:.0f} ms CPU "
          f"({len(result.rules) / (both - pack):,.0f} converted rules/s at load, compile included)")
    figures = policy.run([str(DEFAULT_RULES_DIR), *SIGMA_DIRS], 0.5 if args.smoke else args.seconds,
                         prefilter=True, with_fixtures=False)
    print(f"policy, pack + converted SigmaHQ rules: {figures['rules']} rules, "
          f"{figures['events_per_s']:,.0f} events/s per CPU-second, mean {figures['mean_us']:.2f} us, "
          f"p99 {figures['p99_us']:.2f} us, {figures['eval_errors']} evaluation errors "
          f"(target >= {policy.TARGET_EVENTS_PER_S:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
