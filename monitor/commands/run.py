"""`monitor run [options] -- CMD`: one command in a fresh watched sandbox.

Through the resident monitor when a `monitor daemon` serves its socket (it watches and judges,
this process only starts CMD and shows what comes back), standalone otherwise or with
`--standalone` (this process attaches the probes itself).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from monitor.client import Client, ResidentUnavailable
from monitor.engine.config import RunError, RunOptions
from monitor.engine.remote import run_resident


def _run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise RunError("run: no command given (monitor run [options] -- CMD [ARG...])")
    options = RunOptions(cmd=cmd, name=args.name or "", rules=args.rules or [], no_rules=args.no_rules,
                         json=args.json, json_events=args.json_events, journal=args.journal, otlp=args.otlp, audit=args.audit,
                         runtime=args.runtime, verbose=args.verbose, quiet=args.quiet,
                         llm_capture=args.llm_capture, cpu=args.cpu,
                         exit_at_once=not args.report,  # --report: the page is written after run() returns
                         outputs=_outputs(args.outputs))
    if args.report:
        from monitor.report.live import run_reported
        return run_reported(lambda journal: _start(replace(options, journal=journal), args), args.journal, args.report)
    return _start(options, args)


def _start(options: RunOptions, args: argparse.Namespace) -> int:
    if not args.standalone and args.runtime == "cgroup":
        try:
            client = Client(args.connect)
        except ResidentUnavailable as exc:
            if args.connect:
                raise RunError(f"--connect {exc}: no resident monitor there (monitor daemon)") from None
        else:
            with client:
                return run_resident(options, client)
    # imported here: the probes, the rule engine and the exporters are this path's alone
    from monitor.engine.run import run

    return run(options)


def _outputs(path: str | None) -> list[object]:
    """The --outputs file, validated before anything is attached or asked of a daemon."""
    if path is None:
        return []
    from monitor.outputs import OutputsError, load_outputs

    try:
        return list(load_outputs(path))
    except OutputsError as exc:
        raise RunError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run CMD in a fresh watched sandbox")
    p.add_argument("--rules", action="append", metavar="PATH", help="rule file or folder (repeatable; default: the shipped pack)")
    p.add_argument("--no-rules", action="store_true", help="capture only, evaluate no rules")
    p.add_argument("--json", metavar="FILE|-", help="JSON lines of events, alerts, actions and the summary")
    p.add_argument("--json-events", action=argparse.BooleanOptionalAction, default=True,
                   help="events in the JSON output too (--no-json-events: alerts, actions, summary)")
    p.add_argument("--journal", metavar="DIR", help="append everything to a forensic journal")
    p.add_argument("--report", metavar="FILE.html", help="write the session's forensic report page when it ends")
    p.add_argument("--otlp", metavar="URL", help="export OTLP traces/metrics/logs (http(s):// or grpc://)")
    p.add_argument("--outputs", metavar="FILE", help="deliver alerts to the outputs a YAML file lists "
                   "(Alertmanager, webhook, OCSF, syslog, command: docs/outputs.md)")
    p.add_argument("--audit", action="store_true", help="enforce nothing: report what each action would do")
    p.add_argument("--name", help="sandbox name (default: its id)")
    p.add_argument("--runtime", choices=["cgroup", "gvisor"], default="cgroup")
    p.add_argument("--llm-capture", choices=["off", "metadata", "full"], default="metadata",
                   help="model-call capture from TLS (default metadata: no prompt/response text)")
    p.add_argument("--cpu", default="auto", metavar="auto|off|N",
                   help="keep the judging loop on one CPU (default auto: the highest this process may use)")
    p.add_argument("--standalone", action="store_true",
                   help="attach the probes in this process even when a monitor daemon serves sandboxes")
    p.add_argument("--connect", metavar="SOCKET",
                   help="the resident monitor's socket (default: $SANDBOX_MONITOR_SOCKET or "
                        "/run/sandbox-monitor/monitor.sock; standalone when nothing listens there)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every event on the terminal")
    p.add_argument("-q", "--quiet", action="store_true", help="no terminal view")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(handler=_run)
