"""The command line (a contract: see ../shared/DESIGN.md). Every failure a user can cause is one
line on stderr and exit status 1; no traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from monitor.runner import RunError, RunOptions, run

Handler = Callable[[argparse.Namespace], int]


def _run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise RunError("run: no command given (monitor run [options] -- CMD [ARG...])")
    options = RunOptions(cmd=cmd, name=args.name or "", rules=args.rules or [], no_rules=args.no_rules,
                         json=args.json, json_events=args.json_events, journal=args.journal, otlp=args.otlp, audit=args.audit,
                         runtime=args.runtime, verbose=args.verbose, quiet=args.quiet,
                         llm_capture=args.llm_capture, cpu=args.cpu)
    return run(options)


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run CMD in a fresh watched sandbox")
    p.add_argument("--rules", action="append", metavar="PATH", help="rule file or folder (repeatable; default: the shipped pack)")
    p.add_argument("--no-rules", action="store_true", help="capture only, evaluate no rules")
    p.add_argument("--json", metavar="FILE|-", help="JSON lines of events, alerts, actions and the summary")
    p.add_argument("--json-events", action=argparse.BooleanOptionalAction, default=True,
                   help="events in the JSON output too (--no-json-events: alerts, actions, summary)")
    p.add_argument("--journal", metavar="DIR", help="append everything to a forensic journal")
    p.add_argument("--otlp", metavar="URL", help="export OTLP traces/metrics/logs (http(s):// or grpc://)")
    p.add_argument("--audit", action="store_true", help="enforce nothing: report what each action would do")
    p.add_argument("--name", help="sandbox name (default: its id)")
    p.add_argument("--runtime", choices=["cgroup", "gvisor"], default="cgroup")
    p.add_argument("--llm-capture", choices=["off", "metadata", "full"], default="metadata",
                   help="model-call capture from TLS (default metadata: no prompt/response text)")
    p.add_argument("--cpu", default="auto", metavar="auto|off|N",
                   help="keep the judging loop on one CPU (default auto: the highest this process may use)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every event on the terminal")
    p.add_argument("-q", "--quiet", action="store_true", help="no terminal view")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(handler=_run)


def _doctor(args: argparse.Namespace) -> int:
    from monitor.doctor import doctor

    return doctor()


def _sandbox(args: argparse.Namespace) -> int:
    from monitor.sandbox.commands import sandbox_command

    return sandbox_command(args.sandbox_cmd, args.id)


def _demo(args: argparse.Namespace) -> int:
    from monitor.demo import demo

    return demo(json_path=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitor", description="Runtime monitor for AI agents in sandboxes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    p = sub.add_parser("doctor", help="what this host supports, what is missing, how to fix it")
    p.set_defaults(handler=_doctor)
    p = sub.add_parser("sandbox", help="list sandboxes; thaw or kill a frozen (quarantined) one")
    p.add_argument("sandbox_cmd", choices=["list", "thaw", "kill"])
    p.add_argument("id", nargs="?")
    p.set_defaults(handler=_sandbox)
    p = sub.add_parser("demo", help="a scripted agent in a sandbox: ordinary and suspicious acts, live")
    p.add_argument("--json", metavar="FILE|-")
    p.set_defaults(handler=_demo)
    for register in _extension_parsers():
        register(sub)
    return parser


# Subcommands owned by other modules: each module offers `add_<name>_parser(subparsers)`.
EXTENSIONS = (
    ("monitor.commands.rules", "register"),              # rules lint | test | import-sigma | coverage
    ("monitor.replay", "add_replay_parser"),             # replay JOURNAL
    ("monitor.replay", "add_timeline_parser"),           # timeline JOURNAL
    ("monitor.daemon", "add_daemon_parser"),             # daemon [--config FILE]
    ("monitor.gvisor.commands", "add_gvisor_parser"),    # gvisor install
)


def _extension_parsers() -> list[Callable[[argparse._SubParsersAction], None]]:
    import importlib

    registers = []
    for module_name, function in EXTENSIONS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        if hasattr(module, function):
            registers.append(getattr(module, function))
    return registers


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RunError as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
