"""`monitor daemon [--config FILE] [--check]`: the long-running host monitor (monitor/daemon.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable

from monitor.engine.assemble import build_policy
from monitor.engine.config import ConfigError, load_config
from monitor.engine.daemon import Daemon, DaemonError, log
from monitor.engine.loop import LoopError
from monitor.engine.sinks import AssemblyError
from monitor.policy import PolicyError


def _install_signals(daemon: Daemon) -> Callable[[], None]:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore


def daemon_command(config_path: str | None, check: bool = False) -> int:
    """`monitor daemon`: run until SIGTERM (exit 0); any start-up error is one line, exit 1."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s monitor daemon: %(levelname)s %(message)s")
    try:
        config = load_config(config_path)
        if check:
            rules = build_policy(config)
            print(f"{config.source}: ok ({len(rules.rules) if rules is not None else 0} rules)")
            return 0
        daemon = Daemon(config)
        restore = _install_signals(daemon)
        try:
            daemon.start()
            daemon.run()
        finally:
            summary = daemon.close()
            restore()
        log.info("stopped: %d events, %d alerts", summary.get("events", 0), summary.get("alerts", 0))
        if "resident" in summary:
            log.info("resident: %s", ", ".join(f"{k} {v}" for k, v in sorted(summary["resident"].items())))
        return 0
    except (ConfigError, DaemonError, AssemblyError, PolicyError, LoopError) as exc:
        print(f"monitor daemon: {exc}", file=sys.stderr)
        return 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("daemon", help="watch Docker containers and sandboxes; serve /metrics, /healthz")
    parser.add_argument("--config", metavar="FILE", help="daemon config (YAML); default: built-in defaults")
    parser.add_argument("--check", action="store_true", help="validate the config and its rules, then exit")
    parser.set_defaults(handler=lambda args: daemon_command(args.config, args.check))
