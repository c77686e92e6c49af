"""`monitor rules lint|test|import-sigma|coverage`.

    monitor rules lint [PATH...]                 validate; file:line messages, exit 1 on error
    monitor rules test [PATH...]                 run the fixtures beside each rule file
    monitor rules import-sigma PATH... --out DIR Sigma rules -> our rule files (one per Sigma file);
                                                 one line per refused rule, exit 1 if any
    monitor rules coverage [PATH...] [--json]    ATT&CK tactics/techniques -> rules -> proof
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from monitor.policy import DEFAULT_RULES_DIR, PolicyError, load_rules
from monitor.policy.tooling import lint, test

TESTS_DIR = DEFAULT_RULES_DIR.parent / "tests" / "e2e"


def register(subparsers: argparse._SubParsersAction) -> None:
    rules = subparsers.add_parser("rules", help="validate, test, import (Sigma) and map rule files")
    actions = rules.add_subparsers(dest="rules_command", required=True)
    for name, function, text in (("lint", lint, "validate rule files; file:line messages, exit 1 on error"),
                                 ("test", test, "run the fixtures beside each rule file; exit 1 on a failure")):
        p = actions.add_parser(name, help=text)
        p.add_argument("paths", nargs="*", metavar="PATH",
                       help=f"rule file or folder (default: {DEFAULT_RULES_DIR})")
        p.set_defaults(handler=lambda args, run=function: run(args.paths or [str(DEFAULT_RULES_DIR)]))
    p = actions.add_parser("import-sigma", help="convert Sigma rules into rule files; exit 1 if any is refused")
    p.add_argument("paths", nargs="+", metavar="PATH", help="Sigma rule file or folder (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the converted rule files")
    p.set_defaults(handler=import_sigma)
    p = actions.add_parser("coverage", help="ATT&CK coverage map: rules and their proof per technique")
    p.add_argument("paths", nargs="*", metavar="PATH", help=f"rule file or folder (default: {DEFAULT_RULES_DIR})")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.add_argument("--tests", default=str(TESTS_DIR), metavar="DIR",
                   help="end-to-end tests to search for proof (default: %(default)s)")
    p.set_defaults(handler=coverage_command)


def _header(source: Path, origin: dict[str, object]) -> str:
    lines = [f"# Converted from the Sigma rule {source.name} by `monitor rules import-sigma` (pySigma)."]
    if origin.get("author"):
        lines.append(f"# Sigma rule by {origin['author']}" +
                     (f", under the {origin['license']} (Detection Rule License)."
                      if origin.get("license") == "DRL-1.1" else
                      f", license {origin['license']}." if origin.get("license") else "."))
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)


def import_sigma(args: argparse.Namespace) -> int:
    from monitor.policy.sigma import convert_paths, rules_yaml

    try:
        result = convert_paths(args.paths)
    except FileNotFoundError as exc:
        print(f"monitor: import-sigma: {exc.args[0]}", file=sys.stderr)
        return 1
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        print(f"monitor: import-sigma: {out_dir}: cannot create: {exc.strerror or exc}", file=sys.stderr)
        return 1
    by_file: dict[str, list] = {}
    for rule in result.rules:
        by_file.setdefault(rule.file, []).append(rule)
    written: set[str] = set()
    for source, rules in by_file.items():
        stem = Path(source).stem
        name = f"{stem}.yaml" if f"{stem}.yaml" not in written else f"{stem}-{rules[0].sigma_id[:8]}.yaml"
        written.add(name)
        try:
            _write(out_dir / name, rules_yaml(rules, _header(Path(source), rules[0].entry["origin"])))
        except OSError as exc:
            print(f"monitor: import-sigma: {out_dir / name}: cannot write: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
    for refusal in result.refusals:
        print(f"refused: {refusal}", file=sys.stderr)
    total = len(result.rules) + len(result.refusals)
    print(f"converted {len(result.rules)} of {total} Sigma rules into {out_dir} "
          f"({len(result.refusals)} refused)")
    return 1 if result.refusals else 0


def coverage_command(args: argparse.Namespace) -> int:
    from monitor.policy.coverage import coverage, render

    try:
        ruleset = load_rules(args.paths or [DEFAULT_RULES_DIR])
    except PolicyError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 1
    cover = coverage(ruleset.rules, Path(args.tests))
    if args.json:
        print(json.dumps(cover.to_dict(), indent=2))
    else:
        print("\n".join(render(cover)))
    return 0
