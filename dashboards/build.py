"""Build the Grafana dashboards (dashboards/grafana/dashboards/*.json) from the code's own metric and
attribute names, so a dashboard cannot drift from what the monitor emits.

    .venv/bin/python dashboards/build.py          # write the JSON
    .venv/bin/python dashboards/build.py --check  # exit 1 if the committed JSON is stale

Datasources are dashboard variables (ds_prometheus, ds_tempo, ds_loki) whose defaults are the uids
provisioned in grafana/provisioning/datasources/datasources.yaml; nothing names a uid directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor.sinks import metrics as m  # noqa: E402

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards"
SCHEMA_VERSION = 39
TAGS = ["sandbox-monitor"]
DATASOURCES = {"prometheus": "sm-prometheus", "tempo": "sm-tempo", "loki": "sm-loki"}  # provisioned uids

PROM = {"type": "prometheus", "uid": "${ds_prometheus}"}
TEMPO = {"type": "tempo", "uid": "${ds_tempo}"}
LOKI = {"type": "loki", "uid": "${ds_loki}"}
RATE = "[$__rate_interval]"
RANGE = "[$__range]"


def total(metric: m.MetricDef) -> str:
    return metric.name + "_total"


def bucket(metric: m.MetricDef) -> str:
    return metric.name + "_bucket"


# --- panel helpers ------------------------------------------------------------------------------

class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.panels: list[dict[str, Any]] = []

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0


def prom(expr: str, legend: str = "", instant: bool = False, ref: str = "A") -> dict[str, Any]:
    target: dict[str, Any] = {"refId": ref, "datasource": PROM, "expr": expr, "legendFormat": legend or "__auto",
                              "editorMode": "code"}
    if instant:
        target.update({"instant": True, "range": False, "format": "table"})
    else:
        target["range"] = True
    return target


def traceql(query: str, table: str = "traces", limit: int = 20) -> dict[str, Any]:
    return {"refId": "A", "datasource": TEMPO, "queryType": "traceql", "query": query, "limit": limit,
            "tableType": table}


def logql(expr: str) -> dict[str, Any]:
    return {"refId": "A", "datasource": LOKI, "expr": expr, "queryType": "range"}


def panel(kind: str, title: str, datasource: dict[str, str], targets: list[dict[str, Any]],
          description: str = "", unit: str = "", options: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "title": title, "description": description, "datasource": datasource,
                           "targets": targets, "fieldConfig": {"defaults": {}, "overrides": []},
                           "options": options or {}}
    if unit:
        out["fieldConfig"]["defaults"]["unit"] = unit
    return out


def stat(title: str, expr: str, unit: str = "short", description: str = "") -> dict[str, Any]:
    return panel("stat", title, PROM, [prom(expr)], description, unit,
                 {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                  "colorMode": "value", "graphMode": "area"})


def series(title: str, *targets: dict[str, Any], unit: str = "short", description: str = "",
           stack: bool = False) -> dict[str, Any]:
    out = panel("timeseries", title, PROM, list(targets), description, unit,
                {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}})
    if stack:
        out["fieldConfig"]["defaults"]["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 30}
    return out


def table(title: str, expr: str, description: str = "") -> dict[str, Any]:
    return panel("table", title, PROM, [prom(expr, instant=True)], description,
                 options={"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]})


def bars(title: str, expr: str, legend: str, description: str = "") -> dict[str, Any]:
    return panel("bargauge", title, PROM, [prom(expr, legend, instant=True)], description,
                 options={"orientation": "horizontal", "displayMode": "gradient",
                          "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}})


def trace_table(title: str, query: str, table_type: str = "traces", description: str = "") -> dict[str, Any]:
    return panel("table", title, TEMPO, [traceql(query, table_type)], description)


def logs(title: str, expr: str, description: str = "") -> dict[str, Any]:
    return panel("logs", title, LOKI, [logql(expr)], description,
                 options={"showTime": True, "wrapLogMessage": True, "sortOrder": "Descending",
                          "enableLogDetails": True})


# --- variables ----------------------------------------------------------------------------------

def datasource_var(kind: str) -> dict[str, Any]:
    uid = DATASOURCES[kind]
    return {"name": f"ds_{kind}", "label": f"{kind.capitalize()}", "type": "datasource", "query": kind,
            "current": {"text": uid, "value": uid}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_var(name: str, label: str, query: str, multi: bool = False, all_value: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "label": label, "type": "query", "datasource": PROM,
                           "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                           "definition": query, "refresh": 2, "sort": 1, "hide": 0, "multi": multi,
                           "includeAll": all_value is not None, "current": {}, "options": [], "regex": ""}
    if all_value is not None:
        out["allValue"] = all_value
    return out


def dashboard(uid: str, title: str, description: str, layout: Layout, variables: list[dict[str, Any]],
              links: bool = True) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": TAGS, "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "timezone": "browser", "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "",
        "templating": {"list": variables}, "annotations": {"list": []},
        "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "sandbox-monitor",
                   "includeVars": False, "keepTime": True}] if links else [],
        "panels": layout.panels,
    }


DS_VARS = [datasource_var("prometheus"), datasource_var("tempo"), datasource_var("loki")]


# --- the three dashboards -------------------------------------------------------------------------

def fleet() -> dict[str, Any]:
    sel = '{runtime=~"$runtime"}'
    lay = Layout()
    lay.row("Fleet")
    lay.add(stat("Sandboxes watched", f"sum({m.SANDBOXES_WATCHED.name}{sel})"), 4, 4)
    lay.add(stat("Events / s", f"sum(rate({total(m.EVENTS)}{sel}{RATE}))", "ops"), 5, 4)
    lay.add(stat("Alerts in range", f"sum(increase({total(m.ALERTS)}{RANGE}))"), 5, 4)
    lay.add(stat("Actions in range", f"sum(increase({total(m.ACTIONS)}{RANGE}))"), 5, 4)
    lay.add(stat("Lost events in range", f"sum(increase({total(m.LOST_EVENTS)}{RANGE}))",
                 description="Records the kernel or a source could not deliver. Should be 0."), 5, 4)
    lay.add(series("Events / s by kind", prom(f"sum by (kind) (rate({total(m.EVENTS)}{sel}{RATE}))", "{{kind}}"),
                   unit="ops", stack=True), 12, 8)
    lay.add(series("Alerts by severity",
                   prom(f"sum by (severity) (increase({total(m.ALERTS)}{RATE}))", "{{severity}}"), stack=True), 12, 8)
    lay.add(bars("Alerts by rule (range)", f"topk(15, sum by (rule) (increase({total(m.ALERTS)}{RANGE})))",
                 "{{rule}}"), 8, 9)
    lay.add(bars("Top sandboxes by events / s",
                 f"topk(10, sum by (sandbox_name, sandbox_id) (rate({total(m.SANDBOX_EVENTS)}{sel}{RATE})))",
                 "{{sandbox_name}} ({{sandbox_id}})"), 8, 9)
    lay.add(bars("Top sandboxes by alerts (range)",
                 f"topk(10, sum by (sandbox_name, sandbox_id) (increase({total(m.SANDBOX_ALERTS)}{RANGE})))",
                 "{{sandbox_name}} ({{sandbox_id}})"), 8, 9)
    lay.add(series("Actions by kind and outcome",
                   prom(f"sum by (action, outcome) (increase({total(m.ACTIONS)}{RATE}))", "{{action}} {{outcome}}")),
            12, 8)
    lay.add(series("Lost events / s by probe",
                   prom(f"sum by (probe) (rate({total(m.LOST_EVENTS)}{RATE}))", "{{probe}}"), unit="ops"), 12, 8)
    lay.row("Export health")
    lay.add(series("Export queue depth", prom(f"sum by (signal) ({m.EXPORT_QUEUE_DEPTH.name})", "{{signal}}")), 8, 8)
    lay.add(series("Exported / s", prom(f"sum by (signal) (rate({total(m.EXPORTED)}{RATE}))", "{{signal}}"),
                   unit="ops"), 8, 8)
    lay.add(series("Not exported (dropped) and failed requests",
                   prom(f"sum by (signal, reason) (increase({total(m.EXPORT_DROPPED)}{RATE}))",
                        "dropped {{signal}} {{reason}}"),
                   prom(f"sum by (signal) (increase({total(m.EXPORT_FAILURES)}{RATE}))", "failed {{signal}}", ref="B"),
                   description="Dropped items are still in the journal; failed requests are retried with backoff."),
            8, 8)
    lay.row("Alert delivery")
    lay.add(series("Notifications delivered / s and queued",
                   prom(f"sum by (output) (rate({total(m.OUTPUT_SENT)}{RATE}))", "sent {{output}}"),
                   prom(f"sum by (output) ({m.OUTPUT_QUEUE_DEPTH.name})", "queued {{output}}", ref="B")), 8, 8)
    lay.add(series("Undelivered alerts and failed attempts",
                   prom(f"sum by (output, reason) (increase({total(m.OUTPUT_UNDELIVERED)}{RATE}))",
                        "undelivered {{output}} {{reason}}"),
                   prom(f"sum by (output) (increase({total(m.OUTPUT_FAILURES)}{RATE}))", "failed {{output}}", ref="B"),
                   description="Undelivered alerts are kept in the journal: monitor replay --alerts-to resends them."),
            8, 8)
    lay.add(bars("Suppressed alerts by rule (range)",
                 f"topk(15, sum by (rule, reason) (increase({total(m.OUTPUT_SUPPRESSED)}{RANGE})))",
                 "{{rule}} {{reason}}"), 8, 8)
    lay.row("Model calls")
    lay.add(series("LLM tokens / s by model",
                   prom(f"sum by (model, type) (rate({total(m.LLM_TOKENS)}{RATE}))", "{{model}} {{type}}"),
                   unit="ops"), 12, 8)
    lay.add(logs("Latest alerts", '{service_name="sandbox-monitor"} | alert_rule != ""',
                 "One log record per alert (OTLP logs in Loki)."), 12, 8)
    runtime = query_var("runtime", "Runtime", f"label_values({total(m.EVENTS)}, runtime)", multi=True, all_value=".*")
    return dashboard("sandbox-monitor-fleet", "Sandbox monitor: fleet overview",
                     "Every watched sandbox: activity, alerts, actions, losses and export health.",
                     lay, [*DS_VARS, runtime])


def drilldown() -> dict[str, Any]:
    sb = '{sandbox_id="$sandbox"}'
    scope = f'span.{m.SANDBOX_ID} = "$sandbox"'
    lay = Layout()
    lay.row("Sandbox")
    lay.add(stat("Events in range", f"sum(increase({total(m.SANDBOX_EVENTS)}{sb}{RANGE}))"), 6, 4)
    lay.add(stat("Alerts in range", f"sum(increase({total(m.SANDBOX_ALERTS)}{sb}{RANGE}))"), 6, 4)
    lay.add(series("Events / s", prom(f"sum(rate({total(m.SANDBOX_EVENTS)}{sb}{RATE}))", "events"), unit="ops"),
            12, 4)
    lay.add(series("Alerts by severity",
                   prom(f"sum by (severity) (increase({total(m.SANDBOX_ALERTS)}{sb}{RATE}))", "{{severity}}"),
                   stack=True), 12, 8)
    lay.add(logs("Its alerts", f'{{service_name="sandbox-monitor"}} | {m.SANDBOX_ID.replace(".", "_")} = "$sandbox"',
                 "Alert log records of this sandbox; each links to its process span."), 12, 8)
    lay.row("Trace (Tempo)")
    lay.add(trace_table("Session traces",
                        f'{{ {scope} && span.{m.SANDBOX_RUNTIME} != nil }}',
                        description="The root span of each session: open one to see the process tree."), 12, 8)
    lay.add(trace_table("Processes that raised an alert",
                        f'{{ {scope} && span.{m.ALERT_RULE} =~ "$rule" }} | select(span.{m.ALERT_RULE}, '
                        f'span.{m.ALERT_SEVERITY}, span.{m.PROCESS_EXECUTABLE_PATH}, span.{m.PROCESS_COMMAND_ARGS})',
                        "spans"), 12, 8)
    lay.add(trace_table("Network destinations",
                        f'{{ {scope} && span.{m.NET_DESTINATIONS} != nil }} | select(span.{m.NET_DESTINATIONS}, '
                        f'span.{m.PROCESS_EXECUTABLE_PATH}, span.{m.PROCESS_PID})', "spans"), 12, 8)
    lay.add(trace_table("Files written",
                        f'{{ {scope} && span.{m.FILES_WRITTEN} != nil }} | select(span.{m.FILES_WRITTEN}, '
                        f'span.{m.PROCESS_EXECUTABLE_PATH}, span.{m.PROCESS_PID})', "spans"), 12, 8)
    lay.add(trace_table("Model calls and the tools they asked for",
                        f'{{ {scope} && span.{m.GEN_AI_OPERATION} = "chat" }} | select(span.{m.GEN_AI_REQUEST_MODEL}, '
                        f'span.{m.GEN_AI_TOOL_NAMES}, span.{m.GEN_AI_INPUT_TOKENS}, span.{m.GEN_AI_OUTPUT_TOKENS})',
                        "spans"), 24, 8)
    sandbox = query_var("sandbox", "Sandbox", f"label_values({total(m.SANDBOX_EVENTS)}, sandbox_id)")
    rule = query_var("rule", "Rule", f"label_values({total(m.ALERTS)}, rule)", multi=False, all_value=".*")
    return dashboard("sandbox-monitor-sandbox", "Sandbox monitor: sandbox drill-down",
                     "One sandbox: its alerts, its session trace, where it connected and what it wrote.",
                     lay, [*DS_VARS, sandbox, rule])


def rule_health() -> dict[str, Any]:
    lay = Layout()
    lay.row("Matches")
    lay.add(series("Matches by rule", prom(f"sum by (rule) (increase({total(m.ALERTS)}{RATE}))", "{{rule}}"),
                   stack=True), 12, 8)
    lay.add(table("Matches in range by rule, severity and mode",
                  f"sum by (rule, severity, mode) (increase({total(m.ALERTS)}{RANGE}))"), 12, 8)
    lay.add(series("Audit vs enforce", prom(f"sum by (mode) (increase({total(m.ALERTS)}{RATE}))", "{{mode}}")),
            12, 8)
    lay.add(series("Evaluation errors by rule",
                   prom(f"sum by (rule) (increase({total(m.RULE_ERRORS)}{RATE}))", "{{rule}}"),
                   description="A rule that raises at run time (wrong field type...) matches nothing: fix it."),
            12, 8)
    lay.row("Latency")
    lay.add(series("Rule evaluation latency per event (p50, p99)",
                   prom(f"histogram_quantile(0.5, sum by (le) (rate({bucket(m.RULE_EVAL_DURATION)}{RATE})))", "p50"),
                   prom(f"histogram_quantile(0.99, sum by (le) (rate({bucket(m.RULE_EVAL_DURATION)}{RATE})))", "p99",
                        ref="B"), unit="s"), 12, 8)
    lay.add(series("p99 evaluation latency by event kind",
                   prom(f"histogram_quantile(0.99, sum by (le, kind) (rate({bucket(m.RULE_EVAL_DURATION)}{RATE})))",
                        "{{kind}}"), unit="s"), 12, 8)
    lay.add(series("Mean evaluation latency",
                   prom(f"sum(rate({m.RULE_EVAL_DURATION.name}_sum{RATE})) / sum(rate({m.RULE_EVAL_DURATION.name}_count{RATE}))",
                        "mean"), unit="s"), 12, 8)
    lay.add(series("Action latency (p99) by action",
                   prom(f"histogram_quantile(0.99, sum by (le, action) (rate({bucket(m.ACTION_DURATION)}{RATE})))",
                        "{{action}}"), unit="s", description="From alert to the action done (kill, freeze...)."),
            12, 8)
    return dashboard("sandbox-monitor-rules", "Sandbox monitor: rule health",
                     "Which rules match, which fail to evaluate, and how long evaluation and actions take.",
                     lay, list(DS_VARS))


DASHBOARDS = {"fleet-overview.json": fleet, "sandbox-drilldown.json": drilldown, "rule-health.json": rule_health}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=False) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description="build the Grafana dashboards")
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"dashboards out of date: {', '.join(stale)} (run dashboards/build.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
