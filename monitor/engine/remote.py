"""`monitor run` through the resident monitor: the daemon watches and judges, this process starts
CMD in the daemon's sandbox and shows what the daemon streams back, with the same sinks, summary
and exit status as a standalone run (monitor/engine/run.py).

Kept light on purpose (no probe, rule engine or exporter is imported unless asked for): its
start-up is what an agent harness pays for every sandbox.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from monitor.client import Client, ClientError, SandboxRun
from monitor.engine.config import RunError, RunOptions
from monitor.engine.pipeline import Pipeline
from monitor.engine.signals import sigterm_stops
from monitor.engine.sinks import AssemblyError, build_sinks
from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink


def run_resident(options: RunOptions, client: Client) -> int:
    """Run CMD in a sandbox of the daemon `client` is connected to."""
    if options.runtime != "cgroup":
        raise RunError(f"--runtime {options.runtime}: the resident monitor runs cgroup sandboxes "
                       "(use --standalone)")
    try:
        sinks = build_sinks(options.config())
    except AssemblyError as exc:
        raise RunError(str(exc)) from None
    pipeline = Pipeline(None, None, None, sinks)  # shows, never judges: the daemon did
    try:
        remote = client.sandbox(options.name, options.rules, audit=options.audit)
    except ClientError as exc:
        pipeline.close({})
        raise RunError(str(exc)) from None
    env = dict(remote.env)
    for sink in sinks:  # our own sinks' trace context wins over the daemon's
        env.update(sink.start_session(remote.sandbox))
    with sigterm_stops(remote.kill):
        remote.start(options.cmd, env=_child_env(options, env), stdout=sys.stderr if options.json == "-" else None)
        try:
            summary = _show(remote, sinks)
        except ClientError as exc:
            pipeline.close({"error": str(exc)})
            raise RunError(str(exc)) from None
    if remote.start_error:
        print(f"monitor: {remote.start_error}", file=sys.stderr)
    status = 137 if summary.get("killed_by") else (remote.returncode if remote.returncode is not None else 1)
    summary.pop("type", None)
    summary.update({"sandbox": {"id": remote.sandbox.id, "name": remote.sandbox.name, "runtime": "cgroup"},
                    "exit_status": status})
    pipeline.close(summary)
    return status


def _child_env(options: RunOptions, trace_env: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(trace_env)
    env.update(options.env)
    return env


def _show(remote: SandboxRun, sinks: list[Sink]) -> dict[str, Any]:
    """Every streamed record to the sinks, in the daemon's judging order; the summary."""
    frozen_noted = False
    for record in remote.records():
        kind = record.get("type")
        if kind == "event":
            event = Event.from_dict(record)
            for sink in sinks:
                sink.on_event(event)
        elif kind == "alert":
            alert = Alert.from_dict(record)
            for sink in sinks:
                sink.on_alert(alert)
        elif kind == "action":
            action = ActionRecord.from_dict(record)
            for sink in sinks:
                sink.on_action(action)
            if action.action == "freeze" and action.outcome == "done" and not frozen_noted:
                frozen_noted = True
                sandbox = remote.sandbox.id
                print(f"monitor: sandbox {sandbox} is FROZEN (quarantined); resolve with "
                      f"`monitor sandbox thaw {sandbox}` or `monitor sandbox kill {sandbox}`", file=sys.stderr)
    return dict(remote.summary)
