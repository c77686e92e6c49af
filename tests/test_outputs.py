"""Alert outputs (monitor/outputs): config errors, routing, hygiene under a flood, and delivery to
real receivers on 127.0.0.1 (HTTP, syslog over UDP/TCP/TLS, a local program, OCSF files)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jsonschema
import pytest
import trustme

from monitor.event import Alert, Event, rfc3339
from monitor.outputs import OutputsError, build_outputs, load_outputs
from monitor.outputs.delivery import OutputOptions, OutputSink, RetryPolicy, Undelivered
from monitor.outputs.hygiene import HygieneConfig, Limit
from monitor.outputs.routing import Route
from monitor.outputs.syslog import SyslogTransport
from monitor.outputs.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookTransport
from monitor.policy import Selector
from monitor.sinks.metrics import MetricsSink
from tests.alert_receivers import HttpReceiver, SyslogListener, wait_until

ROOT = Path(__file__).resolve().parents[1]
ALERT_SCHEMA = json.loads((ROOT / "docs" / "schemas" / "alert-v1.schema.json").read_text())
OCSF_SCHEMA = json.loads((ROOT / "tests" / "schemas" / "ocsf-1.8-subset.schema.json").read_text())
MONITOR = str(ROOT / ".venv" / "bin" / "monitor")
FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)


def sandbox(sid: str = "sb-1", name: str = "agent-1", image: str = "python:3.12",
            labels: dict[str, str] | None = None) -> dict[str, object]:
    return {"id": sid, "name": name, "runtime": "docker", "image": image, "labels": labels or {"team": "ml"},
            "cgroup_id": 42, "cgroup_path": "/sys/fs/cgroup/x"}


def make_alert(rule: str = "Cloud credentials read", severity: str = "high", sb: dict | None = None,
               path: str = "/root/.aws/credentials", tags: tuple[str, ...] = ("credential_access", "T1552.001"),
               time_ns: int = 1_765_000_000_000_000_000) -> Alert:
    event = Event(kind="open", time_ns=time_ns, sandbox=sb or sandbox(), file={"path": path, "flags": ["O_RDONLY"]},
                  process={"pid": 300, "ppid": 200, "executable": "/usr/bin/cat", "args": ["cat", path],
                           "ancestors": [{"pid": 200, "executable": "/bin/bash", "args": ["bash"]},
                                         {"pid": 100, "executable": "/usr/bin/python3", "args": ["python3", "agent.py"]}]})
    return Alert(rule=rule, severity=severity, action="alert", tags=list(tags), event=event,
                 description="An agent read a cloud credential file.", matched={"file.path": path})


def webhook_sink(receiver: HttpReceiver, name: str = "hook", **kwargs: object) -> OutputSink:
    transport_args = {k: kwargs.pop(k) for k in ("secret", "headers", "header_secrets", "timeout_s", "verify", "ca_file")
                      if k in kwargs}
    transport = WebhookTransport(receiver.url + "/hook", **transport_args)  # type: ignore[arg-type]
    options = kwargs.pop("options", OutputOptions(retry=FAST_RETRY))
    return OutputSink(name, transport, options=options, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def receiver():
    made: list[HttpReceiver] = []

    def make(**kwargs: object) -> HttpReceiver:
        made.append(HttpReceiver(**kwargs))  # type: ignore[arg-type]
        return made[-1]
    yield make
    for r in made:
        r.close()


# --- config -------------------------------------------------------------------------------------

GOOD = """\
outputs:
  - type: alertmanager
    name: pager
    url: http://127.0.0.1:9093
    min_severity: high
    resolve_after: 5m
    trace_link: "http://127.0.0.1:3000/explore?trace={trace_id}"
  - type: webhook
    url: https://127.0.0.1:8443/hook
    secret: {file: hmac.key}
    headers: {X-Team: secops}
    header_secrets: {Authorization: {env: SM_TEST_TOKEN}}
    tls: {ca_file: ca.pem}
    rules: {include: ["Cloud*"], exclude: ["*test*"]}
    tags: {exclude: [noisy]}
    sandboxes: {names: ["agent-*"], labels: {team: ml}, images: ["python:*"]}
    dedup: {window: 60s, key: [process.executable, file.path]}
    rate_limit: {per_rule: 10/1m, global: 100/1h}
    retry: {attempts: 5, backoff: 200ms, max_backoff: 10s}
    breaker: {failures: 3, cooldown: 1m}
  - {type: syslog, address: "tls://127.0.0.1:6514", facility: local3}
  - {type: ocsf, path: ocsf.jsonl, events: true, max_bytes: 10MiB, backups: 2}
  - {type: command, exec: [/bin/cat]}
"""


def test_a_full_config_parses(tmp_path, monkeypatch):
    (tmp_path / "hmac.key").write_text("k3y\n")
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.setenv("SM_TEST_TOKEN", "Bearer t0ken")
    path = tmp_path / "outputs.yaml"
    path.write_text(GOOD)
    configs = load_outputs(str(path))
    assert [(c.type, c.name) for c in configs] == [("alertmanager", "pager"), ("webhook", "webhook"),
                                                   ("syslog", "syslog"), ("ocsf", "ocsf"), ("command", "command")]
    hook = configs[1]
    assert hook.settings["secret"].value == "k3y" and "k3y" not in repr(hook.settings)
    assert hook.settings["header_secrets"]["Authorization"].value == "Bearer t0ken"
    assert "t0ken" not in repr(hook.settings)
    assert hook.hygiene.dedup_window_s == 60 and hook.hygiene.dedup_key == ("process.executable", "file.path")
    assert hook.hygiene.per_rule == Limit(10, 60.0) and hook.hygiene.ceiling == Limit(100, 3600.0)
    assert hook.settings["retry_backoff"] == pytest.approx(0.2) and hook.settings["breaker_cooldown"] == 60
    assert configs[2].settings["protocol"] == "tls" and configs[2].settings["facility"] == 19
    assert configs[3].settings["path"] == str(tmp_path / "ocsf.jsonl") and configs[3].settings["max_bytes"] == 10 << 20
    assert configs[0].route.min_severity == "high"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("outputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    colour: red\n", 4, "unknown key 'colour'"),
    ("outputs:\n  - type: webhook\n    url: ftp://127.0.0.1/x\n", 3, "expected http://HOST[:PORT] or https://"),
    ("outputs:\n  - type: webhook\n    url: http://\n", 3, "expected http://"),
    ("outputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    secret: {file: /nonexistent/key}\n", 4,
     "secret: secret file /nonexistent/key: No such file or directory"),
    ("outputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    secret: {env: SM_TEST_UNSET_VAR}\n", 4,
     "secret environment variable SM_TEST_UNSET_VAR is not set"),
    ("outputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    secret: hunter2\n", 4, "secret must be a mapping"),
    ("outputs:\n  - type: pagerduty\n", 2, "unknown output type 'pagerduty'"),
    ("outputs:\n  - url: http://127.0.0.1:1/\n", 2, "an output needs type:"),
    ("outputs:\n  - type: alertmanager\n", 2, "a alertmanager output needs url:"),
    ("outputs:\n  - type: syslog\n    address: http://127.0.0.1:514\n", 3, "expected udp://"),
    ("outputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    min_severity: severe\n", 4, "min_severity 'severe'"),
    ("outputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    rate_limit: {per_rule: lots}\n", 4,
     "expected COUNT/PERIOD"),
    ("outputs:\n  - type: command\n    exec: [/nonexistent/responder]\n", 3, "not an executable program"),
    ("outputs:\n  - type: ocsf\n    path: /nonexistent/dir/x.jsonl\n", 3, "its folder does not exist"),
    ("outputs:\n  - {type: webhook, url: 'http://127.0.0.1:1/'}\n  - {type: webhook, url: 'http://127.0.0.1:2/', name: webhook}\n",
     3, "duplicate output name 'webhook'"),
    ("outputs: [\n", 2, "YAML error"),
])
def test_config_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "outputs.yaml"
    path.write_text(text)
    with pytest.raises(OutputsError) as caught:
        load_outputs(str(path))
    assert str(caught.value).startswith(f"{path}:{line}: "), str(caught.value)
    assert message in str(caught.value)


def test_monitor_run_refuses_a_bad_outputs_file_before_attaching(tmp_path):
    path = tmp_path / "outputs.yaml"
    path.write_text("outputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    secret: {file: missing.key}\n")
    result = subprocess.run([MONITOR, "run", "--outputs", str(path), "-q", "--", "true"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"monitor: {path}:4: secret: secret file {tmp_path / 'missing.key'}: No such file or directory"]


def test_daemon_config_outputs_errors_name_the_line(tmp_path):
    from monitor.engine.config import ConfigError, parse_config
    text = "audit: true\noutputs:\n  - type: webhook\n    url: http://127.0.0.1:1/\n    retry: {attempts: 0}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, str(tmp_path / "daemon.yaml"))
    assert str(caught.value) == f"{tmp_path / 'daemon.yaml'}:5: retry.attempts must be a whole number >= 1"
    config = parse_config("outputs:\n  - {type: webhook, url: 'http://127.0.0.1:1/'}\n", str(tmp_path / "d.yaml"))
    assert [c.type for c in config.outputs] == ["webhook"]


# --- routing ------------------------------------------------------------------------------------

def test_routing_by_severity_rules_tags_and_sandbox_selector():
    route = Route(min_severity="medium", rules_include=["Cloud*", "Miner*"], rules_exclude=["*test*"],
                  tags_exclude=["noisy"], sandboxes=Selector(names=["agent-*"], labels={"team": "ml"},
                                                             images=["python:*"]))
    assert route.accepts(make_alert())
    assert not route.accepts(make_alert(severity="low"))
    assert not route.accepts(make_alert(rule="Shell spawned"))
    assert not route.accepts(make_alert(rule="Cloud test rule"))
    assert not route.accepts(make_alert(tags=("noisy",)))
    assert not route.accepts(make_alert(sb=sandbox(name="builder")))
    assert not route.accepts(make_alert(sb=sandbox(labels={"team": "web"})))
    assert not route.accepts(make_alert(sb=sandbox(image="node:22")))
    tagged = Route(tags_include=["T1552*"])
    assert tagged.accepts(make_alert()) and not tagged.accepts(make_alert(tags=("execution",)))


# --- hygiene: a flood ---------------------------------------------------------------------------

def test_a_flood_of_100000_matches_in_a_minute_gives_bounded_notifications_and_exact_counts(receiver):
    """Two rules x 500 paths x 100 repeats, 0.6 ms apart (one minute). Dedup folds the repeats,
    each rule passes 20 a minute, the output 30 a minute; each delivered key's repeats come back
    as one notice with its count when its window closes."""
    hook = receiver()
    now = [0.0]
    sink = webhook_sink(hook, name="flood", clock=lambda: now[0],
                        hygiene=HygieneConfig(dedup_window_s=300, per_rule=Limit(20, 60), ceiling=Limit(30, 60)))
    metrics = MetricsSink()
    metrics.add_output_source(lambda: {sink.name: sink.readings()})
    rules = ("Rule one", "Rule two")
    for i in range(100_000):
        now[0] = i * 0.0006
        sink.on_alert(make_alert(rule=rules[i % 2], path=f"/data/{(i // 2) % 500}"))
    sink.close({})
    stats = sink.stats()
    per_rule = {"dedup": 49_500, "rate_limit": 480, "global_limit": 5}
    assert stats["suppressed"] == {"Rule one": per_rule, "Rule two": per_rule}
    assert stats["sent"] == 60 and stats["undelivered"] == 0 and stats["aggregates"] == 30
    bodies = hook.bodies()
    assert len(bodies) == 60
    firsts = [b for b in bodies if b["count"] == 1]
    folded = [b for b in bodies if b["count"] > 1]
    assert len(firsts) == 30 and len(folded) == 30
    assert all(b["count"] == 100 for b in folded)
    assert {b["matched"]["file.path"] for b in folded} == {b["matched"]["file.path"] for b in firsts}
    assert sorted({(b["rule"], b["matched"]["file.path"]) for b in firsts}) == sorted(
        (rule, f"/data/{k}") for rule in rules for k in range(15))
    text = metrics.exposition().decode()
    assert 'sandbox_monitor_output_suppressed_total{output="flood",reason="dedup",rule="Rule one"} 49500.0' in text
    assert 'sandbox_monitor_output_suppressed_total{output="flood",reason="global_limit",rule="Rule two"} 5.0' in text
    assert 'sandbox_monitor_output_sent_total{output="flood"} 60.0' in text


def test_dedup_key_from_event_fields_and_a_closed_window_reopens():
    now = [0.0]
    sink = OutputSink("x", WebhookTransport("http://127.0.0.1:9/"), clock=lambda: now[0], start=False,
                      hygiene=HygieneConfig(dedup_window_s=10, dedup_key=("process.executable",)))
    sink.on_alert(make_alert(path="/a"))
    sink.on_alert(make_alert(path="/b"))  # same executable: folded
    now[0] = 10.0
    sink.on_alert(make_alert(path="/c"))  # the window closed: delivered again
    assert sink.hygiene.suppressed == {"Cloud credentials read": {"dedup": 1}}
    assert sink._queue.qsize() == 2
    closed = sink.hygiene.due(now[0])
    assert [n.count for n in closed] == [2]


# --- webhook ------------------------------------------------------------------------------------

def test_webhook_signs_the_body_sends_custom_headers_and_the_v1_schema(receiver, tmp_path):
    hook = receiver()
    from monitor.outputs.secrets import Secret
    sink = webhook_sink(hook, secret=Secret("s3cret", "test"), headers={"X-Team": "secops"},
                        header_secrets={"Authorization": Secret("Bearer abc", "test")})
    sink.on_alert(make_alert())
    sink.close({})
    assert len(hook.requests) == 1
    request = hook.requests[0]
    stamp = request.headers[TIMESTAMP_HEADER]
    expected = "sha256=" + hmac.new(b"s3cret", stamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert request.headers[SIGNATURE_HEADER] == expected
    assert request.headers["X-Team"] == "secops" and request.headers["Authorization"] == "Bearer abc"
    assert request.headers["X-Sandbox-Monitor-Schema"] == "sandbox-monitor.alert/v1"
    body = request.json()
    jsonschema.validate(body, ALERT_SCHEMA)
    assert body["mitre"] == {"techniques": ["T1552.001"], "tactics": ["credential_access"]}
    assert body["process_chain_text"] == "python3(100) > bash(200) > cat(300)"
    assert body["sandbox"]["image"] == "python:3.12" and body["count"] == 1


def test_webhook_retries_an_endpoint_that_fails_then_recovers(receiver):
    hook = receiver(behaviour=lambda n: 503 if n <= 2 else "ok")
    records: list[Undelivered] = []
    sink = webhook_sink(hook, on_undelivered=records.append)
    sink.on_alert(make_alert())
    sink.close({})
    assert hook.attempts == 3 and len(hook.requests) == 1
    stats = sink.stats()
    assert stats["sent"] == 1 and stats["failures"] == 2 and stats["retries"] == 2 and stats["undelivered"] == 0
    assert records == []


def test_webhook_that_never_recovers_counts_every_alert_and_opens_the_breaker(receiver):
    hook = receiver(behaviour=lambda n: 503)
    records: list[Undelivered] = []
    options = OutputOptions(retry=FAST_RETRY, breaker_failures=2, breaker_cooldown_s=3600)
    sink = webhook_sink(hook, on_undelivered=records.append, options=options)
    alerts = [make_alert(path=f"/p{i}") for i in range(5)]
    for alert in alerts:
        sink.on_alert(alert)
    sink.close({})
    assert hook.attempts == 6  # two alerts x three attempts; then the circuit is open
    stats = sink.stats()
    assert stats["sent"] == 0 and stats["undelivered"] == 5 and stats["failures"] == 6
    assert stats["undelivered_by_reason"] == {"failed": 2, "circuit_open": 3}
    assert stats["breaker_opened"] == 1
    assert [r.alert_id for r in records] == [a.id for a in alerts]
    assert {r.to_dict()["type"] for r in records} == {"undelivered"}
    assert all(r.output == "hook" and r.rule == "Cloud credentials read" and r.sandbox_id == "sb-1" for r in records)
    assert "HTTP 503" in records[0].error


def test_a_refusing_endpoint_is_not_retried(receiver):
    hook = receiver(behaviour=lambda n: 400)
    sink = webhook_sink(hook)
    sink.on_alert(make_alert())
    sink.close({})
    assert hook.attempts == 1 and sink.stats()["undelivered_by_reason"] == {"refused": 1}


@pytest.mark.parametrize("misbehaviour", ["hang", "garbage", "close"])
def test_an_endpoint_that_hangs_answers_garbage_or_closes_mid_response_is_retried(receiver, misbehaviour):
    hook = receiver(behaviour=lambda n: misbehaviour if n == 1 else "ok")
    sink = webhook_sink(hook, timeout_s=0.5)
    sink.on_alert(make_alert(path="/first"))
    wait_until(lambda: hook.attempts >= 1, what="the first attempt")
    for i in range(3):  # the judging thread never waits on the endpoint
        sink.on_alert(make_alert(path=f"/next{i}"))
    sink.close({})
    stats = sink.stats()
    assert stats["sent"] == 4 and stats["undelivered"] == 0 and stats["failures"] == 1
    assert [b["matched"]["file.path"] for b in hook.bodies()] == ["/first", "/next0", "/next1", "/next2"]


def test_webhook_tls_is_verified_by_default_and_a_ca_file_is_trusted(receiver, tmp_path):
    ca = trustme.CA()
    server_context = __import__("ssl").SSLContext(__import__("ssl").PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    hook = receiver(tls=server_context)
    untrusted = webhook_sink(hook, name="untrusted")
    untrusted.on_alert(make_alert())
    untrusted.close({})
    assert untrusted.stats()["undelivered"] == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stats()["last_error"]
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    trusted = webhook_sink(hook, name="trusted", ca_file=str(ca_file))
    trusted.on_alert(make_alert())
    trusted.close({})
    assert trusted.stats()["sent"] == 1 and len(hook.requests) == 1


def test_a_queue_that_fills_counts_what_it_drops(receiver):
    hook = receiver(behaviour=lambda n: "hang" if n == 1 else "ok")
    records: list[Undelivered] = []
    sink = webhook_sink(hook, timeout_s=1.0, on_undelivered=records.append,
                        options=OutputOptions(queue_size=2, retry=RetryPolicy(attempts=2, backoff_s=0.01)))
    sink.on_alert(make_alert(path="/0"))
    wait_until(lambda: hook.attempts >= 1, what="the first attempt")
    for i in range(1, 6):
        sink.on_alert(make_alert(path=f"/{i}"))
    sink.close({})
    stats = sink.stats()
    assert stats["undelivered_by_reason"] == {"queue_full": 3}
    assert stats["sent"] == 3 and [r.reason for r in records] == ["queue_full"] * 3


# --- syslog -------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["udp", "tcp", "tls"])
def test_syslog_rfc5424_frames_over_udp_tcp_and_tls(protocol, tmp_path):
    import ssl
    server_tls = client_ca = None
    if protocol == "tls":
        ca = trustme.CA()
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(server_tls)
        client_ca = str(tmp_path / "ca.pem")
        ca.cert_pem.write_to_path(client_ca)
    listener = SyslogListener(protocol, server_tls)
    try:
        host, port = "127.0.0.1", int(listener.address.rsplit(":", 1)[1])
        sink = OutputSink("siem", SyslogTransport(protocol, host, port, hostname="host-a", ca_file=client_ca),
                          options=OutputOptions(retry=FAST_RETRY))
        alert = make_alert()
        sink.on_alert(alert)
        sink.on_alert(make_alert(rule='Odd "rule" [x]', severity="critical", path="/etc/shadow"))
        sink.close({})
        assert sink.stats()["sent"] == 2
        wait_until(lambda: len(listener.messages) == 2, 10, "two syslog messages")
    finally:
        listener.close()
    first, second = sorted(listener.messages, key=lambda m: m.pri, reverse=True)
    assert first.pri == 16 * 8 + 3 and second.pri == 16 * 8 + 2  # local0.err (high), local0.crit
    assert (first.hostname, first.app_name, first.msgid, first.procid) == ("host-a", "sandbox-monitor", "ALERT",
                                                                           str(os.getpid()))
    assert first.sd_id == "sandbox-monitor@32473"
    assert first.params["rule"] == "Cloud credentials read" and first.params["sandbox"] == "sb-1"
    assert second.params["rule"] == 'Odd "rule" [x]' and second.params["severity"] == "critical"
    assert first.msg.startswith(b"\xef\xbb\xbf")
    document = json.loads(first.msg[3:])
    jsonschema.validate(document, ALERT_SCHEMA)
    assert first.timestamp == rfc3339(alert.time_ns)[:26] + "Z"  # RFC 5424: at most microseconds


def test_syslog_to_a_closed_port_is_counted_not_raised():
    from tests.alert_receivers import free_port
    sink = OutputSink("siem", SyslogTransport("tcp", "127.0.0.1", free_port(), timeout_s=0.5),
                      options=OutputOptions(retry=FAST_RETRY))
    sink.on_alert(make_alert())
    sink.close({})
    assert sink.stats()["undelivered_by_reason"] == {"failed": 1} and sink.stats()["failures"] == 3


# --- command ------------------------------------------------------------------------------------

def test_command_gets_the_alert_on_stdin_and_a_failing_one_is_counted(tmp_path):
    out = tmp_path / "got.json"
    script = tmp_path / "responder.py"
    script.write_text(textwrap.dedent(f"""\
        import json, sys
        alert = json.load(sys.stdin)
        open({str(out)!r}, "a").write(json.dumps(alert) + "\\n")
        sys.exit(3 if alert["matched"]["file.path"] == "/fail" else 0)
        """))
    config = tmp_path / "outputs.yaml"
    config.write_text(f"outputs:\n  - type: command\n    exec: [{sys.executable}, {script}]\n"
                      f"    retry: {{attempts: 2, backoff: 10ms}}\n")
    outputs = build_outputs(load_outputs(str(config)))
    sink = outputs.sinks[0]
    sink.on_alert(make_alert())
    sink.on_alert(make_alert(path="/fail"))
    sink.close({})
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["matched"]["file.path"] for line in lines] == ["/root/.aws/credentials", "/fail", "/fail"]
    jsonschema.validate(lines[0], ALERT_SCHEMA)
    stats = sink.stats()
    assert stats["sent"] == 1 and stats["undelivered"] == 1 and "exit status 3" in stats["last_error"]


# --- OCSF ---------------------------------------------------------------------------------------

def ocsf_events() -> list[Event]:
    sb = sandbox()
    proc = {"pid": 300, "ppid": 200, "executable": "/usr/bin/curl", "args": ["curl", "x"], "uid": 0}
    return [
        Event(kind="sandbox_start", sandbox=sb, source="monitor"),
        Event(kind="exec", sandbox=sb, process=proc),
        Event(kind="open", sandbox=sb, process=proc, file={"path": "/etc/passwd", "flags": ["O_RDONLY"]}),
        Event(kind="rename", sandbox=sb, process=proc, file={"path": "/tmp/a", "new_path": "/tmp/b"}),
        Event(kind="connect", sandbox=sb, process=proc, result=-111,
              net={"family": "inet", "transport": "tcp", "address": "127.0.0.1", "port": 9, "direction": "egress"}),
        Event(kind="dns", sandbox=sb, process=proc, net={"query": "pypi.org", "transport": "udp"}),
        Event(kind="llm_response", sandbox=sb, process=proc, source="llm",
              llm={"provider": "anthropic", "host": "api.anthropic.com", "model": "claude-x", "id": "msg_1",
                   "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}}),
        Event(kind="exit", sandbox=sb, process=proc, detail={"code": 0, "signal": 0}),
    ]


def test_ocsf_file_holds_valid_findings_and_activities_0600_and_rotates(tmp_path):
    path = tmp_path / "ocsf.jsonl"
    config = tmp_path / "outputs.yaml"
    config.write_text(f"outputs:\n  - {{type: ocsf, path: {path}, events: true, max_bytes: 6000, backups: 2}}\n")
    sink = build_outputs(load_outputs(str(config))).sinks[0]
    for event in ocsf_events():
        sink.on_event(event)
    sink.on_alert(make_alert())
    sink.close({})
    files = sorted(tmp_path.glob("ocsf.jsonl*"))
    assert [f.name for f in files] == ["ocsf.jsonl", "ocsf.jsonl.1"]
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    records = [json.loads(line) for f in reversed(files) for line in f.read_text().splitlines()]
    for record in records:
        jsonschema.validate(record, OCSF_SCHEMA)
    assert [r["class_uid"] for r in records] == [1007, 1001, 1001, 4001, 4001, 4001, 1007, 2004]
    assert [r["activity_id"] for r in records] == [1, 14, 5, 1, 99, 6, 2, 1]
    finding = records[-1]
    assert finding["finding_info"]["analytic"]["name"] == "Cloud credentials read"
    assert finding["finding_info"]["attacks"][0] == {"technique": {"uid": "T1552.001"}}
    assert finding["container"] == {"uid": "sb-1", "name": "agent-1", "runtime": "docker",
                                    "image": {"name": "python:3.12"}, "labels": ["team=ml"]}
    model_call = records[5]
    assert model_call["metadata"]["profiles"] == ["container", "ai_operation"]
    assert model_call["ai_model"] == {"model_name": "claude-x", "ai_provider": "anthropic"}
    assert model_call["message_context"]["total_tokens"] == 15
    assert records[3]["status"] == "Failure"
    assert sink.transport.unmapped == 1  # sandbox_start: no class of these describes it


def test_the_ocsf_schema_rejects_what_it_should():
    from monitor.outputs.ocsf import detection_finding
    from monitor.outputs.payload import Notice
    good = detection_finding(Notice("alert", make_alert()))
    jsonschema.validate(good, OCSF_SCHEMA)
    for broken in ({**good, "class_uid": 9999}, {**good, "severity_id": 7},
                   {k: v for k, v in good.items() if k != "finding_info"},
                   {**good, "metadata": {"product": {"vendor_name": "x", "name": "y"}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, OCSF_SCHEMA)


def test_ocsf_through_the_webhook(receiver, tmp_path):
    hook = receiver()
    config = tmp_path / "outputs.yaml"
    config.write_text(f"outputs:\n  - {{type: ocsf, url: '{hook.url}/ocsf', events: true}}\n")
    sink = build_outputs(load_outputs(str(config))).sinks[0]
    for event in ocsf_events()[:3]:
        sink.on_event(event)
    sink.on_alert(make_alert())
    sink.close({})
    bodies = hook.bodies()
    assert [b["class_uid"] for b in bodies] == [1007, 1001, 2004]
    assert hook.requests[0].headers["X-Sandbox-Monitor-Schema"] == "ocsf/1.8.0"
    for body in bodies:
        jsonschema.validate(body, OCSF_SCHEMA)


def test_secrets_never_reach_stats_or_undelivered_records(receiver, tmp_path, monkeypatch):
    hook = receiver(behaviour=lambda n: 503)
    monkeypatch.setenv("SM_TEST_HMAC", "topsecret-value")
    config = tmp_path / "outputs.yaml"
    config.write_text(f"outputs:\n  - type: webhook\n    url: '{hook.url}/x'\n    secret: {{env: SM_TEST_HMAC}}\n"
                      "    retry: {attempts: 1}\n")
    records: list[Undelivered] = []
    sink = build_outputs(load_outputs(str(config)), on_undelivered=records.append).sinks[0]
    sink.on_alert(make_alert())
    sink.close({})
    text = json.dumps(sink.stats()) + json.dumps([r.to_dict() for r in records]) + repr(sink.transport)
    assert records and "topsecret-value" not in text


def test_outputs_do_not_hold_up_the_caller_while_an_endpoint_hangs(receiver):
    hook = receiver(behaviour=lambda n: "hang")
    sink = webhook_sink(hook, timeout_s=30, options=OutputOptions(retry=FAST_RETRY, drain_timeout_s=0.2))
    done = threading.Event()

    def judge() -> None:
        for i in range(1000):
            sink.on_alert(make_alert(path=f"/{i}"))
        done.set()
    worker = threading.Thread(target=judge)
    worker.start()
    worker.join()
    assert done.is_set() and hook.requests == []
    sink.close({})
    assert sink.stats()["undelivered"] == 1000


def test_the_readme_examples_are_a_valid_outputs_file_and_alertmanager_route(tmp_path):
    import re
    import shutil

    import yaml
    readme = (ROOT / "README.md").read_text()
    outputs_block, route_block = re.findall(r"```yaml\n(outputs:.*?|route:.*?)```", readme, re.DOTALL)[:2]
    (tmp_path / "hmac.key").write_text("k\n")
    outputs = tmp_path / "outputs.yaml"
    outputs.write_text(outputs_block.replace("/etc/sandbox-monitor/hmac.key", str(tmp_path / "hmac.key")))
    assert [c.type for c in load_outputs(str(outputs))] == ["alertmanager", "webhook"]
    amtool = shutil.which("amtool")
    assert amtool, "amtool (Debian's prometheus-alertmanager) is not installed: EXTRAS=prometheus scripts/setup.sh"
    config = yaml.safe_load(route_block)
    config["route"]["receiver"] = "default"
    config["receivers"] = [{"name": "default"}, {"name": "agent-security"}]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Found:" in result.stdout and "- 1 inhibit rules" in result.stdout


def test_events_that_do_not_fit_are_counted_apart_from_alerts(tmp_path):
    from monitor.outputs.ocsf import OcsfFileTransport
    records: list[Undelivered] = []
    sink = OutputSink("ocsf", OcsfFileTransport(str(tmp_path / "o.jsonl"), events=True), start=False,
                      options=OutputOptions(queue_size=2), on_undelivered=records.append)
    for event in ocsf_events()[1:6]:
        sink.on_event(event)
    sink.on_alert(make_alert())
    stats = sink.stats()
    assert stats["events_dropped"] == 3 and stats["undelivered"] == 1
    assert [r.kind for r in records] == ["alert"]
