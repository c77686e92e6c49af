"""OTLP attribute values from the monitor's events, processes, sandboxes and alerts (semantic
conventions where one exists; names in monitor/sinks/metrics.py)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from monitor.event import Alert, Event, utf8_safe
from monitor.sinks import metrics as m


def clip(value: Any, limit: int = 4096) -> Any:
    """A string attribute: at most `limit` characters, valid UTF-8 (protobuf refuses a lone
    surrogate, and one bad value failed the export of its whole batch)."""
    if isinstance(value, str):
        return utf8_safe(value[:limit])
    return value


def attr_value(value: Any) -> Any:
    """An OTLP attribute value: primitives and homogeneous primitive lists as they are, else JSON."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [clip(v, 1024) for v in value]
    return clip(json.dumps(value, default=str, sort_keys=True))


def sandbox_attrs(sandbox: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {m.SANDBOX_ID: str(sandbox.get("id") or ""),
                             m.SANDBOX_NAME: str(sandbox.get("name") or "")}
    return attrs


def root_attrs(sandbox: Mapping[str, Any]) -> dict[str, Any]:
    attrs = sandbox_attrs(sandbox)
    attrs[m.SANDBOX_RUNTIME] = str(sandbox.get("runtime") or "")
    attrs[m.R_HOST_NAME] = socket.gethostname()
    if sandbox.get("cgroup_path"):
        attrs[m.SANDBOX_CGROUP] = str(sandbox["cgroup_path"])
    if sandbox.get("image"):
        attrs[m.CONTAINER_IMAGE_NAME] = str(sandbox["image"])
    if sandbox.get("image_digest"):
        attrs[m.CONTAINER_IMAGE_DIGEST] = str(sandbox["image_digest"])
    if sandbox.get("runtime") == "docker":
        attrs[m.CONTAINER_ID] = str(sandbox.get("id") or "")
    for key, value in (sandbox.get("labels") or {}).items():
        attrs[m.SANDBOX_LABEL_PREFIX + str(key)] = str(value)
    return attrs


def process_attrs(process: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, name in (("pid", m.PROCESS_PID), ("ppid", m.PROCESS_PARENT_PID), ("uid", m.PROCESS_USER_ID),
                      ("gid", m.PROCESS_GROUP_ID)):
        if isinstance(process.get(key), int):
            attrs[name] = process[key]
    executable = process.get("executable")
    if executable:
        attrs[m.PROCESS_EXECUTABLE_PATH] = str(executable)
        attrs[m.PROCESS_EXECUTABLE_NAME] = os.path.basename(str(executable))
    if process.get("args"):
        attrs[m.PROCESS_COMMAND_ARGS] = [clip(str(a), 1024) for a in process["args"]]
    if process.get("cwd"):
        attrs[m.PROCESS_CWD] = str(process["cwd"])
    if process.get("caused_by"):
        attrs[m.PROCESS_CAUSED_BY] = str(process["caused_by"])
    return attrs


def event_attrs(event: Event, span_pid: int) -> dict[str, Any]:
    """A span event's attributes (its name is the kind; the pid only when not the span's own).
    Lean on purpose: the exporter pays for every attribute it encodes."""
    attrs: dict[str, Any] = {}
    pid = event.process.get("pid")
    if pid is not None and pid != span_pid:
        attrs[m.PROCESS_PID] = pid
    if event.file:
        if event.file.get("path"):
            attrs[m.FILE_PATH] = str(event.file["path"])
        if event.file.get("new_path"):
            attrs[m.FILE_NEW_PATH] = str(event.file["new_path"])
        if event.file.get("flags"):
            attrs[m.FILE_FLAGS] = [str(f) for f in event.file["flags"]]
        if "write" in event.file:
            attrs[m.FILE_WRITE] = bool(event.file["write"])
    if event.net:
        net = event.net
        if net.get("transport"):
            attrs[m.NETWORK_TRANSPORT] = str(net["transport"])
        family = net.get("family")
        if family:
            attrs[m.NETWORK_TYPE] = {"inet": "ipv4", "inet6": "ipv6"}.get(str(family), str(family))
        if net.get("address"):
            attrs[m.NETWORK_PEER_ADDRESS] = str(net["address"])
        if isinstance(net.get("port"), int):
            attrs[m.NETWORK_PEER_PORT] = net["port"]
        if net.get("direction"):
            attrs[m.NET_DIRECTION] = str(net["direction"])
        if net.get("query"):
            attrs[m.DNS_QUESTION_NAME] = str(net["query"])
    for key, value in (event.detail or {}).items():
        if value is not None:
            attrs[m.DETAIL_PREFIX + key] = attr_value(value)
    if event.result is not None:
        attrs[m.EVENT_RESULT] = event.result
    if event.verdict:
        attrs[m.EVENT_VERDICT] = event.verdict
    return attrs


def alert_line(alert: Alert) -> str:
    """The human line of an alert (the log record's body)."""
    proc = alert.event.process
    sandbox = alert.event.sandbox or {}
    what = alert.description or alert.event.kind
    exe = proc.get("executable") or proc.get("comm") or "?"
    return (f"[{alert.severity}] {alert.rule}: {what} (sandbox {sandbox.get('name') or sandbox.get('id') or '-'},"
            f" pid {proc.get('pid', '?')} {exe}, action {alert.action}{' audit' if alert.mode == 'audit' else ''})")


def alert_attrs(alert: Alert) -> dict[str, Any]:
    attrs: dict[str, Any] = {m.ALERT_RULE: alert.rule, m.ALERT_SEVERITY: alert.severity,
                             m.ALERT_ACTION: alert.action, m.ALERT_MODE: alert.mode, m.ALERT_ID: alert.id,
                             m.ALERT_TAGS: [str(t) for t in alert.tags], m.EVENT_ID: alert.event.id,
                             m.EVENT_KIND: alert.event.kind}
    if alert.description:
        attrs[m.ALERT_DESCRIPTION] = alert.description
    for key, value in (alert.matched or {}).items():
        attrs[m.ALERT_MATCHED_PREFIX + str(key)] = attr_value(value)
    return attrs
