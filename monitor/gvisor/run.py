"""`monitor run --runtime gvisor -- CMD`: the same options, sinks, rules and exit-status contract as
the cgroup runtime, with the gVisor trace session as the event source.

Differences, by necessity: no enricher (gVisor's pids live in the sandbox's PID namespace, so the
host's /proc knows nothing of them; the trace mapper builds the lineage itself), and `deny` rules
are refused at load (see runner.DENY_REFUSED) unless the run is in audit mode.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from monitor.event import ActionRecord, Event
from monitor.gvisor.runner import GvisorActor, GvisorError, GvisorSandbox, deny_rules_refused
from monitor.pipeline import Pipeline
from monitor.runner import RunError, RunOptions, Session, build_sinks, judging_cpu, load_policy, pinned_to
from monitor.sandbox import SandboxRegistry


def _refuse_denies(policy: Any, audit: bool) -> None:
    if policy is None or audit:
        return
    enforced = [rule for rule in getattr(policy, "rules", []) if getattr(rule, "mode", "") != "audit"]
    refused = deny_rules_refused(enforced)
    if refused:
        raise RunError(f"--runtime gvisor: {refused[0]}" + (f" (and {len(refused) - 1} more deny rules)"
                                                            if len(refused) > 1 else ""))


def run_gvisor(options: RunOptions) -> int:
    cpu = judging_cpu(options.cpu)
    policy = load_policy(options)
    _refuse_denies(policy, options.audit)
    registry = SandboxRegistry()
    stdout = sys.stderr if options.json == "-" else None
    try:
        sandbox = GvisorSandbox(options.cmd, options.name or None, registry=registry, stdout=stdout)
    except GvisorError as exc:
        raise RunError(str(exc)) from exc
    sinks = build_sinks(options)
    killed_by: dict[str, str] = {}

    def note(record: ActionRecord) -> None:
        if record.action == "kill" and record.outcome == "done":
            killed_by.setdefault(record.target.get("sandbox") or "", record.rule)
        if record.action == "freeze" and record.outcome == "done":
            print(f"monitor: sandbox {sandbox.sandbox.id} is FROZEN (quarantined, runsc pause); resolve "
                  f"with `{sandbox.control_command('resume')}` or `{sandbox.control_command('kill')}`",
                  file=sys.stderr)

    actor = GvisorActor(sandbox, audit=options.audit, on_record=note)
    pipeline = Pipeline(None, policy, actor, sinks)
    started = time.monotonic()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGTERM:
            sandbox.kill()  # the summary is still written

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        with sandbox:
            identity = sandbox.sandbox.identity()
            pipeline.process(Event(kind="sandbox_start", time_ns=sandbox.sandbox.started_ns,
                                   source="monitor", sandbox=identity))
            if sandbox.not_found:
                print(f"monitor: {options.cmd[0]}: command not found", file=sys.stderr)
            session = Session(pipeline, [sandbox])
            with pinned_to(cpu):
                session.run_until(lambda: sandbox.finished)
                session.drain()
            if sandbox.proc is not None:
                sandbox.wait()
            status = sandbox.exit_status()
            lost = sandbox.lost()
            stats = sandbox.stats()
    except GvisorError as exc:
        raise RunError(str(exc)) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    rule = killed_by.get(sandbox.sandbox.id)
    if rule:
        status = 137
    pipeline.process(Event(kind="sandbox_end", source="monitor", sandbox=identity,
                           detail={"code": status}))
    summary = pipeline.summary()
    summary.update({"sandbox": {"id": sandbox.sandbox.id, "name": sandbox.sandbox.name,
                                "runtime": "gvisor"},
                    "exit_status": status, "duration_s": round(time.monotonic() - started, 3),
                    "lost": lost, "killed_by": rule, "gvisor": stats, "monitor": {"cpu": cpu},
                    "sinks": {s.name: s.stats() for s in pipeline.sinks if s.stats()}})
    pipeline.close(summary)
    return status
