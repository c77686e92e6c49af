"""`monitor gvisor install | uninstall | config | check`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monitor.gvisor.config import pod_init_config
from monitor.gvisor.install import (
    DAEMON_JSON,
    DEFAULT_POD_INIT_CONFIG,
    DEFAULT_RUNTIME_NAME,
    DEFAULT_SOCKET,
    InstallError,
    doctor_checks,
    install_docker_runtime,
    uninstall_docker_runtime,
)


def _install(args: argparse.Namespace) -> int:
    entry = install_docker_runtime(daemon_json=Path(args.daemon_json), name=args.runtime_name,
                                   runsc=args.runsc, socket_path=Path(args.socket),
                                   pod_init_config=Path(args.pod_init_config),
                                   extra_args=args.runsc_arg or [])
    print(f"{args.daemon_json}: runtime {args.runtime_name!r} -> {entry['path']} "
          f"{' '.join(entry['runtimeArgs'])}")
    print(f"containers started with --runtime={args.runtime_name} report to {args.socket} "
          "(`monitor daemon` serves it); reload dockerd to apply: systemctl reload docker "
          "(or kill -HUP $(pidof dockerd))")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    changed = uninstall_docker_runtime(daemon_json=Path(args.daemon_json), name=args.runtime_name)
    print(f"{args.daemon_json}: " + ("trace session removed" if changed else "nothing to remove"))
    return 0


def _config(args: argparse.Namespace) -> int:
    json.dump(pod_init_config(args.socket), sys.stdout, indent=1)
    print()
    return 0


def _check(args: argparse.Namespace) -> int:
    checks = doctor_checks(Path(args.daemon_json))
    for check in checks:
        mark = "ok " if check.ok else "-- "
        print(f"{mark} {check.name}: {check.detail}" + (f"  (fix: {check.fix})" if check.fix and not check.ok else ""))
    return 0 if checks and checks[0].ok else 1


def _handler(args: argparse.Namespace) -> int:
    handlers = {"install": _install, "uninstall": _uninstall, "config": _config, "check": _check}
    try:
        return handlers[args.gvisor_cmd](args)
    except (InstallError, OSError) as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gvisor", help="gVisor (runsc): Docker runtime install, trace config, checks")
    p.add_argument("gvisor_cmd", choices=["install", "uninstall", "config", "check"],
                   help="install: add runsc with the monitor's trace session to Docker's daemon.json; "
                        "uninstall: remove it; config: print the pod-init config; check: host support")
    p.add_argument("--daemon-json", default=str(DAEMON_JSON), metavar="FILE")
    p.add_argument("--runtime-name", default=DEFAULT_RUNTIME_NAME, metavar="NAME")
    p.add_argument("--runsc", metavar="PATH", help="runsc binary (default: from PATH)")
    p.add_argument("--socket", default=str(DEFAULT_SOCKET), metavar="PATH",
                   help="the trace sink socket the monitor daemon serves")
    p.add_argument("--pod-init-config", default=str(DEFAULT_POD_INIT_CONFIG), metavar="FILE")
    p.add_argument("--runsc-arg", action="append", metavar="ARG",
                   help="extra runsc flag for the runtime entry, e.g. --runsc-arg=--network=none (repeatable)")
    p.set_defaults(handler=_handler)
