"""`monitor run --otlp URL` against a real OTLP receiver: a real sandbox session, its trace is the
real process tree, the alert is on the right span, and an OpenTelemetry-instrumented program inside
the sandbox joins the same trace through TRACEPARENT."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor_run import ROOT, monitor_run, needs_root  # noqa: E402
from otlp_receiver import OtlpReceiver, Span  # noqa: E402

from monitor.sinks import metrics as m  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")

# The agent: an OpenTelemetry-instrumented program that continues the trace it was handed and does
# its "tool call" (sh -c 'cat /etc/shadow') inside its own span.
AGENT = r"""
import os, subprocess
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

parent = TraceContextTextMapPropagator().extract({"traceparent": os.environ["TRACEPARENT"]})
provider = TracerProvider(resource=Resource.create({"service.name": "test-agent"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=os.environ["AGENT_OTLP"])))
with provider.get_tracer("agent").start_as_current_span("agent.tool_call", context=parent) as span:
    span.set_attribute("gen_ai.tool.name", "bash")
    subprocess.run(["sh", "-c", "cat /etc/shadow > /dev/null; echo done > /tmp/otlp-e2e-out"], check=True)
provider.shutdown()
"""


def monitor_spans(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.resource.get("service.name") == "sandbox-monitor"]


def expected_parent_pids(execs: list[dict[str, Any]]) -> dict[int, int | None]:
    """pid -> pid of the exec'd process its span must hang under (None: the root span)."""
    seen: set[int] = set()
    parents: dict[int, int | None] = {}
    for event in sorted(execs, key=lambda e: e["time_ns"]):
        pid, ppid = event["process"]["pid"], event["process"]["ppid"]
        parents[pid] = ppid if ppid in seen else None
        seen.add(pid)
    return parents


@needs_root
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_monitor_run_trace_is_the_process_tree_and_agent_joins(scheme: str) -> None:
    with OtlpReceiver() as rx:
        url = rx.http_url if scheme == "http" else rx.grpc_url
        result = monitor_run([PYTHON, "-c", AGENT], "--rules", str(ROOT / "rules"), "--otlp", url,
                             env={"AGENT_OTLP": f"{rx.http_url}/v1/traces"})
        assert result.returncode == 0, result.stderr
        execs = result.events("exec")
        assert rx.store.wait_for(
            lambda s: len(monitor_spans(s.spans())) >= 1 + len(execs) and s.logs(), 15), result.stderr
        spans = rx.store.spans()

    ours = monitor_spans(spans)
    (root,) = [s for s in ours if not s.parent_span_id]
    assert root.attributes[m.SANDBOX_ID] == result.summary["sandbox"]["id"]
    assert {s.trace_id for s in spans} == {root.trace_id}, "every span, the agent's too, is in one trace"

    # the agent's own span continues the session trace, under the root span
    (agent,) = [s for s in spans if s.name == "agent.tool_call"]
    assert agent.parent_span_id == root.span_id
    assert agent.resource["sandbox.id"] == root.attributes[m.SANDBOX_ID]

    # one span per exec, parented as the real process tree
    by_pid = {s.attributes[m.PROCESS_PID]: s for s in ours if m.PROCESS_PID in s.attributes and s is not root}
    assert sorted(by_pid) == sorted(e["process"]["pid"] for e in execs)
    for pid, parent_pid in expected_parent_pids(execs).items():
        want = root.span_id if parent_pid is None else by_pid[parent_pid].span_id
        assert by_pid[pid].parent_span_id == want, f"pid {pid}"
    exe_of = {pid: s.attributes[m.PROCESS_EXECUTABLE_PATH] for pid, s in by_pid.items()}
    (cat_pid,) = [pid for pid, exe in exe_of.items() if exe.endswith("/cat")]
    (sh_pid,) = [pid for pid, exe in exe_of.items() if exe.endswith("/sh") or exe.endswith("/dash")]
    assert by_pid[cat_pid].parent_span_id == by_pid[sh_pid].span_id
    for event in execs:
        span = by_pid[event["process"]["pid"]]
        assert span.start_ns == event["time_ns"]
        assert span.attributes[m.PROCESS_COMMAND_ARGS] == event["process"]["args"]

    # the alert: on cat's span, ERROR, findable by TraceQL { span.alert.rule = "..." }, and a log record
    (alert,) = [a for a in result.alerts if a["event"]["process"]["pid"] == cat_pid]
    cat = by_pid[cat_pid]
    assert cat.attributes[m.ALERT_RULE] == alert["rule"] and cat.status_code == 2
    assert any(name == "alert" and attrs[m.ALERT_RULE] == alert["rule"] for name, _, attrs in cat.events)
    (record,) = [r for r in rx.store.logs() if r.attributes[m.ALERT_ID] == alert["id"]]
    assert (record.trace_id, record.span_id) == (cat.trace_id, cat.span_id)
    assert alert["rule"] in record.body
    # the file written by sh's redirection is on sh's span
    assert "/tmp/otlp-e2e-out" in by_pid[sh_pid].attributes.get(m.FILES_WRITTEN, [])


@needs_root
def test_monitor_run_with_the_collector_down_runs_and_says_so() -> None:
    import socket
    import time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    started = time.monotonic()
    result = monitor_run("for i in 1 2 3 4 5; do /bin/true; done; exit 7", "--otlp", f"http://127.0.0.1:{dead}")
    elapsed = time.monotonic() - started
    assert result.returncode == 7, result.stderr
    assert len(result.execs("/true")) == 5  # capture and the JSON output are complete
    assert "items not exported" in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 60
