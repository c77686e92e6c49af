"""The Grafana dashboards and the compose stack: Grafana's dashboard shape, every query names only
metrics, labels and attributes the code defines (monitor/sinks/metrics.py), PromQL parses in a real
Prometheus parser (promtool), datasource references resolve to provisioned uids, and the stack's
files fit together.

Grafana itself installs from none of the registries this project may use (Debian, PyPI, npm), so
panels are not rendered here; `docker compose up` in dashboards/stack/ does that on a Docker host."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.sinks import metrics as m

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
JSON_DIR = DASHBOARDS / "grafana" / "dashboards"
PROVISIONING = DASHBOARDS / "grafana" / "provisioning"
STACK = DASHBOARDS / "stack"
PANEL_TYPES = {"row", "stat", "timeseries", "table", "bargauge", "logs", "heatmap", "text", "gauge", "traces"}
GRAFANA_VARS = {"__rate_interval", "__range", "__interval", "__tags"}
# Tempo intrinsics and resource attributes the monitor sets.
RESOURCE_ATTRIBUTES = {m.R_SERVICE_NAME, m.R_HOST_NAME, m.R_SERVICE_INSTANCE, "service.version"}
LOKI_LABELS = {"service_name"}  # Loki's OTLP ingestion makes service.name this index label

DASHBOARD_FILES = sorted(JSON_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in panels(dashboard) for t in p["targets"]]


def prom_queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p, t in targets(dashboard) if p["datasource"]["type"] == "prometheus"]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def provisioned() -> dict[str, str]:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())
    return {d["uid"]: d["type"] for d in doc["datasources"]}


def test_there_are_three_dashboards_and_they_are_current() -> None:
    assert [p.name for p in DASHBOARD_FILES] == ["fleet-overview.json", "rule-health.json", "sandbox-drilldown.json"]
    check = subprocess.run([sys.executable, str(DASHBOARDS / "build.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_has_grafanas_shape(path: Path) -> None:
    dash = load(path)
    for key, kind in (("uid", str), ("title", str), ("panels", list), ("schemaVersion", int),
                      ("templating", dict), ("time", dict), ("tags", list), ("editable", bool)):
        assert isinstance(dash.get(key), kind), key
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dash["uid"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        assert p["type"] in PANEL_TYPES and p["title"]
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            query = t.get("expr") or t.get("query")
            assert isinstance(query, str) and query.strip(), p["title"]
    names = [v["name"] for v in dash["templating"]["list"]]
    assert len(names) == len(set(names))
    text = json.dumps([p.get("targets", []) for p in dash["panels"]] + [dash["templating"]["list"]])
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used - GRAFANA_VARS <= set(names), f"undefined variables: {used - GRAFANA_VARS - set(names)}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_datasource_references_resolve_to_provisioned_uids(path: Path) -> None:
    dash = load(path)
    uids = provisioned()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    refs = [p["datasource"] for p in panels(dash)] + [t["datasource"] for _, t in targets(dash)]
    refs += [v["datasource"] for v in variables.values() if "datasource" in v]
    assert refs
    for ref in refs:
        uid = ref["uid"]
        var = re.fullmatch(r"\$\{(\w+)\}", uid)
        assert var, f"hard-coded datasource uid {uid!r}: use a datasource variable"
        variable = variables[var.group(1)]
        assert variable["type"] == "datasource" and variable["query"] == ref["type"]
        default = variable["current"]["value"]
        assert uids.get(default) == ref["type"], f"{uid} defaults to {default!r}, not a provisioned {ref['type']}"


def test_provisioned_datasources_cross_references_resolve() -> None:
    uids = provisioned()
    text = (PROVISIONING / "datasources" / "datasources.yaml").read_text()
    for uid in re.findall(r"datasourceUid:\s*(\S+)", text):
        assert uid in uids


def _labels_of(expr: str) -> tuple[set[str], set[str]]:
    """(metric series named, label names used in matchers and by/without clauses)."""
    series = set(re.findall(r"\b(sandbox_monitor_\w+)", expr))
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for _, label in re.findall(r"label_values\((\w+),\s*(\w+)\)", expr):
        labels.add(label)
    return series, labels


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_promql_names_only_defined_metrics_and_labels(path: Path) -> None:
    known = m.prometheus_series()
    for expr in prom_queries(load(path)):
        series, labels = _labels_of(expr)
        assert series, f"query names no sandbox_monitor metric: {expr}"
        assert series <= set(known), f"undefined series {series - set(known)} in {expr}"
        allowed = {label for s in series for label in known[s].labels} | {"job", "instance"}
        if any(s.endswith("_bucket") for s in series):
            allowed.add("le")
        assert labels <= allowed, f"labels {labels - allowed} not on {series}: {expr}"


def test_every_metric_is_on_a_dashboard() -> None:
    used = set()
    for path in DASHBOARD_FILES:
        for expr in prom_queries(load(path)):
            used |= {m.prometheus_series()[s].name for s in _labels_of(expr)[0] if s in m.prometheus_series()}
    assert used == {metric.name for metric in m.METRICS}


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian's prometheus package) is not installed: EXTRAS=prometheus scripts/setup.sh")
def test_promql_parses_in_prometheus(tmp_path: Path) -> None:
    substitutions = {"$__rate_interval": "1m", "$__range": "1h", "$runtime": ".*", "$sandbox": "sb", "$rule": ".*"}
    rules = []
    for path in DASHBOARD_FILES:
        for i, (panel, target) in enumerate(targets(load(path))):
            if panel["datasource"]["type"] != "prometheus":
                continue
            expr = target["expr"]
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            rules.append({"record": f"check:{path.stem.replace('-', '_')}:{i}", "expr": expr})
    assert len(rules) > 20
    file = tmp_path / "rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    check = subprocess.run(["promtool", "check", "rules", str(file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_traceql_and_logql_name_only_emitted_attributes(path: Path) -> None:
    dash = load(path)
    for panel, target in targets(dash):
        kind = panel["datasource"]["type"]
        if kind == "tempo":
            query = target["query"]
            assert query.count("{") == query.count("}") and query.lstrip().startswith("{")
            for scope, attr in re.findall(r"\b(span|resource)\.([\w.]+)", query):
                if scope == "span":
                    assert m.is_known_attribute(attr), f"span attribute {attr!r} is never set: {query}"
                else:
                    assert attr in RESOURCE_ATTRIBUTES, query
        elif kind == "loki":
            expr = target["expr"]
            selector = re.match(r"\{([^}]*)\}", expr)
            assert selector, expr
            for label, value in re.findall(r'(\w+)\s*=\s*"([^"]*)"', selector.group(1)):
                assert label in LOKI_LABELS
                assert value == m.SERVICE_NAME
            loki_fields = {a.replace(".", "_") for a in m.ATTRIBUTES}
            for field in re.findall(r"\|\s*(\w+)\s*(?:=~|!~|!=|=)", expr[selector.end():]):
                assert field in loki_fields, f"log attribute {field!r} is never emitted: {expr}"


def test_drilldown_finds_alerts_with_traceql_on_alert_rule() -> None:
    dash = load(JSON_DIR / "sandbox-drilldown.json")
    queries = [t["query"] for p, t in targets(dash) if p["datasource"]["type"] == "tempo"]
    assert any(f"span.{m.ALERT_RULE} =~" in q for q in queries)
    assert any(t["datasource"]["type"] == "loki" for _, t in targets(dash))


# --- the compose stack -------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load((STACK / "docker-compose.yml").read_text())


def test_stack_mounts_exist_and_ports_are_loopback() -> None:
    doc = compose()
    assert set(doc["services"]) == {"otel-collector", "tempo", "loki", "prometheus", "grafana"}
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (STACK / source).resolve().exists(), f"{name}: {source} does not exist"
            else:
                assert source in doc["volumes"], f"{name}: undeclared volume {source}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert ":" in service["image"] and not service["image"].endswith(":latest")
    grafana_mounts = dict(v.split(":")[1::-1] for v in doc["services"]["grafana"]["volumes"])
    assert (STACK / grafana_mounts["/etc/grafana/provisioning"]).resolve() == PROVISIONING
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())["providers"][0]
    assert (STACK / grafana_mounts[provider["options"]["path"]]).resolve() == JSON_DIR


def test_collector_pipelines_reach_tempo_prometheus_and_loki() -> None:
    config = yaml.safe_load((STACK / "otel-collector.yaml").read_text())
    services = set(compose()["services"])
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"traces", "metrics", "logs"}
    for pipeline in pipelines.values():
        for section in ("receivers", "processors", "exporters"):
            for name in pipeline.get(section, []):
                assert name in config[section], f"{section}: {name} is not defined"
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert config["exporters"]["otlp/tempo"]["endpoint"].split(":")[0] in services
    assert "//loki:3100/otlp" in config["exporters"]["otlphttp/loki"]["endpoint"]
    prom = yaml.safe_load((STACK / "prometheus.yml").read_text())
    targets_ = [t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert f"otel-collector:{config['exporters']['prometheus']['endpoint'].rsplit(':', 1)[1]}" in targets_


def test_datasource_urls_name_stack_services() -> None:
    services = set(compose()["services"])
    doc = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())
    for datasource in doc["datasources"]:
        host = re.match(r"https?://([\w-]+):\d+", datasource["url"])
        assert host and host.group(1) in services, datasource["url"]


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian's prometheus package) is not installed: EXTRAS=prometheus scripts/setup.sh")
def test_stack_prometheus_config_is_valid() -> None:
    check = subprocess.run(["promtool", "check", "config", "--syntax-only", str(STACK / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
