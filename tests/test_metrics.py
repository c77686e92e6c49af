"""MetricsSink (prometheus_client) and the /metrics + /healthz listener."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import metrics as m


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_events_alerts_actions_and_sandboxes_are_counted() -> None:
    sink = m.MetricsSink()
    docker = {"id": "c1", "name": "web", "runtime": "docker"}
    cgroup = {"id": "s1", "name": "agent", "runtime": "cgroup"}
    for sandbox in (docker, cgroup):
        sink.on_event(Event("sandbox_start", sandbox=sandbox))
    exec_event = Event("exec", sandbox=cgroup)
    sink.on_event(exec_event)
    sink.on_event(Event("dns"))  # no sandbox: runtime "none"
    sink.on_alert(Alert("R1", "critical", "kill", [], exec_event, mode="audit"))
    sink.on_action(ActionRecord("kill", "R1", {"sandbox": "s1"}, "audit", 0.4))
    sink.on_event(Event("sandbox_end", sandbox=docker))
    got = samples(sink.exposition().decode())
    assert got[("sandbox_monitor_events_total", (("kind", "exec"), ("runtime", "cgroup")))] == 1
    assert got[("sandbox_monitor_events_total", (("kind", "dns"), ("runtime", "none")))] == 1
    assert got[("sandbox_monitor_alerts_total", (("mode", "audit"), ("rule", "R1"), ("severity", "critical")))] == 1
    assert got[("sandbox_monitor_actions_total", (("action", "kill"), ("outcome", "audit")))] == 1
    assert got[("sandbox_monitor_sandboxes_watched", (("runtime", "cgroup"),))] == 1
    assert got[("sandbox_monitor_sandboxes_watched", (("runtime", "docker"),))] == 0
    assert got[("sandbox_monitor_action_duration_seconds_count", (("action", "kill"),))] == 1


def test_lost_and_rule_error_totals_are_absolute_and_monotonic() -> None:
    sink = m.MetricsSink()
    sink.record_lost({"exec": 5, "open": 1})
    sink.record_lost({"exec": 3})  # a smaller reading never makes a counter go back
    sink.close({"lost": {"open": 4}})
    sink.record_rule_errors({"Bad rule": 2})
    sink.record_rule_errors({"Bad rule": 1})
    got = samples(sink.exposition().decode())
    assert got[("sandbox_monitor_rule_errors_total", (("rule", "Bad rule"),))] == 2
    assert got[("sandbox_monitor_lost_events_total", (("probe", "exec"),))] == 5
    assert got[("sandbox_monitor_lost_events_total", (("probe", "open"),))] == 4


def test_every_series_name_is_a_defined_one() -> None:
    sink = m.MetricsSink()
    sink.on_event(Event("exec", sandbox={"id": "s", "name": "n", "runtime": "cgroup"}))
    sink.record_rule_eval("exec", 1e-5)
    sink.add_export_source(lambda: {"traces": {"queued": 2, "exported": 9, "failures": 1,
                                               "dropped_queue_full": 3, "dropped_shutdown": 0}})
    defined = set(m.prometheus_series())
    names = {name for name, _ in samples(sink.exposition().decode()) if not name.endswith("_created")}
    assert names <= defined
    got = samples(sink.exposition().decode())
    assert got[("sandbox_monitor_export_dropped_total", (("reason", "queue_full"), ("signal", "traces")))] == 3
    assert got[("sandbox_monitor_export_queue_depth", (("signal", "traces"),))] == 2


def test_serve_metrics_and_health() -> None:
    sink = m.MetricsSink()
    sink.on_event(Event("exec"))
    healthy = [True]
    server = m.serve_metrics(sink, 0, health=lambda: (healthy[0], "ok" if healthy[0] else "probes detached"))
    try:
        assert server.server.server_address[0] == "127.0.0.1"
        status, body = scrape(server.port, "/metrics")
        assert status == 200 and 'sandbox_monitor_events_total{kind="exec",runtime="none"} 1.0' in body
        assert scrape(server.port, "/healthz") == (200, "ok\n")
        healthy[0] = False
        assert scrape(server.port, "/healthz") == (503, "probes detached\n")
        assert scrape(server.port, "/nope")[0] == 404
    finally:
        server.close()


def test_attribute_names_are_known() -> None:
    assert m.is_known_attribute("alert.rule")
    assert m.is_known_attribute("sandbox.label.team")
    assert not m.is_known_attribute("alert.rulez")
    assert "service.name" in m.ATTRIBUTES and "text/plain" not in "".join(m.ATTRIBUTES)


def test_docs_list_every_metric() -> None:
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "otlp.md").read_text()
    for metric in m.METRICS:
        assert f"`{metric.series()[0].removesuffix('_bucket')}`" in doc, metric.name


def test_a_lone_surrogate_in_a_label_does_not_break_the_exposition():
    """A model's reply names its model; "\\ud800" in it made every later scrape of /metrics fail."""
    sink = m.MetricsSink()
    sink.on_event(Event(kind="llm_response", source="llm",
                        llm={"provider": "anthropic", "model": "claude\ud800", "usage": {"input_tokens": 5}}))
    text = sink.exposition().decode()
    assert 'model="claude\\\\ud800"' in text
