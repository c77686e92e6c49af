"""OCSF (1.8): alerts as Detection Finding (2004); with `events: true`, every event as Process
Activity (1007), File System Activity (1001) or Network Activity (4001), model calls (llm_request,
llm_response) as Network Activity with the `ai_operation` profile's `ai_model` and
`message_context`. Kinds none of these classes describe (sandbox_start, container_start, ...)
are not written (counted as `events_unmapped`).

As JSON lines to a file (created 0600, rotated at `max_bytes` keeping `backups` old files), or
through the webhook (`url:`), one record a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from monitor.event import Alert, Event
from monitor.outputs.delivery import DeliveryError, Transport
from monitor.outputs.payload import Notice, mitre, process_chain, rule_id, sandbox_of, trace_link
from monitor.sinks.jsonl import open_private

OCSF_VERSION = "1.8.0"
PRODUCT = {"name": "sandbox-monitor", "vendor_name": "sandbox-monitor", "version": "0.1"}
SEVERITY_ID = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
SEVERITY_NAME = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

DETECTION_FINDING = (2004, "Detection Finding", 2, "Findings")
PROCESS_ACTIVITY = (1007, "Process Activity", 1, "System Activity")
FILE_ACTIVITY = (1001, "File System Activity", 1, "System Activity")
NETWORK_ACTIVITY = (4001, "Network Activity", 4, "Network Activity")

PROCESS_ACTIVITIES = {"exec": (1, "Launch"), "exit": (2, "Terminate"), "ptrace": (4, "Inject"),
                      "memfd": (99, "Other"), "fork": (99, "Other"), "setuid": (99, "Other"),
                      "setgid": (99, "Other"), "capset": (99, "Other"), "unshare": (99, "Other"),
                      "setns": (99, "Other"), "mount": (99, "Other"), "bpf": (99, "Other"),
                      "chdir": (99, "Other")}
FILE_ACTIVITIES = {"open": (14, "Open"), "unlink": (4, "Delete"), "rename": (5, "Rename"),
                   "chmod": (7, "Set Security")}
NETWORK_ACTIVITIES = {"connect": (1, "Open"), "accept": (1, "Open"), "listen": (7, "Listen"),
                      "bind": (99, "Other"), "dns": (99, "Other"), "llm_request": (6, "Traffic"),
                      "llm_response": (6, "Traffic"), "tls_data": (6, "Traffic")}
AI_KINDS = ("llm_request", "llm_response")


def _ms(time_ns: int) -> int:
    return time_ns // 1_000_000


def _base(klass: tuple[int, str, int, str], activity: tuple[int, str], severity_id: int, time_ns: int,
          uid: str, profiles: list[str]) -> dict[str, Any]:
    class_uid, class_name, category_uid, category_name = klass
    activity_id, activity_name = activity
    return {"class_uid": class_uid, "class_name": class_name, "category_uid": category_uid,
            "category_name": category_name, "activity_id": activity_id, "activity_name": activity_name,
            "type_uid": class_uid * 100 + activity_id, "type_name": f"{class_name}: {activity_name}",
            "severity_id": severity_id, "severity": SEVERITY_NAME[severity_id], "time": _ms(time_ns),
            "metadata": {"version": OCSF_VERSION, "product": dict(PRODUCT), "uid": uid, "profiles": profiles}}


def _process(process: dict[str, Any]) -> dict[str, Any]:
    executable = str(process.get("executable") or "")
    out: dict[str, Any] = {"pid": int(process.get("pid") or 0),
                           "name": executable.rsplit("/", 1)[-1] or str(process.get("comm") or "")}
    if executable:
        out["file"] = {"path": executable, "name": executable.rsplit("/", 1)[-1], "type_id": 1}
    if process.get("args"):
        out["cmd_line"] = " ".join(str(a) for a in process["args"])
    if process.get("cwd"):
        out["working_directory"] = str(process["cwd"])
    if process.get("uid") is not None:
        out["user"] = {"uid": str(process["uid"])}
    ancestors = process.get("ancestors") or []
    if ancestors:
        parent = ancestors[0]
        out["parent_process"] = {"pid": int(parent.get("pid") or 0),
                                 "name": str(parent.get("executable") or "").rsplit("/", 1)[-1]}
    elif process.get("ppid"):
        out["parent_process"] = {"pid": int(process["ppid"])}
    return out


def _container(event: Event) -> dict[str, Any] | None:
    sandbox = sandbox_of(event)
    if not sandbox["id"]:
        return None
    out: dict[str, Any] = {"uid": sandbox["id"], "name": sandbox["name"] or sandbox["id"],
                           "runtime": sandbox["runtime"]}
    if sandbox["image"]:
        out["image"] = {"name": sandbox["image"]}
    if sandbox["labels"]:
        out["labels"] = [f"{k}={v}" for k, v in sorted(sandbox["labels"].items())]
    return out


def _endpoint(net: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    address = net.get("address")
    if address:
        out["ip" if net.get("family") in ("inet", "inet6") else "hostname"] = str(address)
    if net.get("port") is not None:
        out["port"] = int(net["port"])
    if net.get("query"):
        out["hostname"] = str(net["query"])
    return out or {"hostname": "unknown"}


def detection_finding(notice: Notice, trace_id: str = "", link_template: str = "") -> dict[str, Any]:
    alert: Alert | None = notice.alert
    assert alert is not None
    event = alert.event
    severity_id = SEVERITY_ID.get(alert.severity, 3)
    record = _base(DETECTION_FINDING, (1, "Create"), severity_id, alert.time_ns, alert.id, ["container"])
    tags = mitre(alert.tags)
    finding: dict[str, Any] = {
        "uid": alert.id, "title": alert.rule, "desc": alert.description or alert.rule,
        "types": list(alert.tags),
        "analytic": {"name": alert.rule, "uid": rule_id(alert.rule), "type_id": 1, "type": "Rule"},
        "first_seen_time": _ms(notice.first_ns or event.time_ns),
        "last_seen_time": _ms(notice.last_ns or event.time_ns)}
    attacks = [{"technique": {"uid": t}} for t in tags["techniques"]]
    attacks += [{"tactic": {"name": t.replace("_", " ").title()}} for t in tags["tactics"]]
    if attacks:
        finding["attacks"] = attacks
    link = trace_link(link_template, trace_id, sandbox_of(event)["id"])
    if link:
        finding["src_url"] = link
    record.update({"finding_info": finding, "message": f"{alert.rule}: {alert.description}".strip(": "),
                   "status_id": 1, "status": "New", "count": notice.count,
                   "action_id": 2 if alert.action != "alert" and alert.mode == "enforce" else 1,
                   "action": "Denied" if alert.action != "alert" and alert.mode == "enforce" else "Allowed",
                   "disposition": alert.action,
                   "evidences": [_evidence(event)],
                   "unmapped": {"matched": alert.matched, "mode": alert.mode, "event_kind": event.kind,
                                "process_chain": process_chain(event.process or {}), "trace_id": trace_id}})
    container = _container(event)
    if container is not None:
        record["container"] = container
    return record


def _evidence(event: Event) -> dict[str, Any]:
    evidence: dict[str, Any] = {}
    if event.process:
        evidence["process"] = _process(event.process)
    if event.file:
        evidence["file"] = _file(event.file)
    if event.net:
        evidence["dst_endpoint"] = _endpoint(event.net)
    return evidence or {"data": {"kind": event.kind}}


def _file(file: dict[str, Any]) -> dict[str, Any]:
    path = str(file.get("path") or "")
    return {"path": path, "name": path.rsplit("/", 1)[-1] or path, "type_id": 1}


def activity(event: Event) -> dict[str, Any] | None:
    """The OCSF activity record of an event, or None when no emitted class describes it."""
    kind = event.kind
    if kind in PROCESS_ACTIVITIES:
        record = _base(PROCESS_ACTIVITY, PROCESS_ACTIVITIES[kind], 1, event.time_ns, event.id, ["container"])
        record["process"] = _process(event.process or {})
        record["actor"] = {"process": _process(event.process or {})}
        if kind == "exit" and event.detail:
            record["exit_code"] = int(event.detail.get("code") or 0)
    elif kind in FILE_ACTIVITIES and event.file:
        record = _base(FILE_ACTIVITY, FILE_ACTIVITIES[kind], 1, event.time_ns, event.id, ["container"])
        record["file"] = _file(event.file)
        record["actor"] = {"process": _process(event.process or {})}
        if event.file.get("new_path"):
            record["file_result"] = _file({"path": event.file["new_path"]})
    elif kind in NETWORK_ACTIVITIES:
        record = _network(event)
    else:
        return None
    if event.result is not None and event.result < 0:
        record["status_id"], record["status"], record["status_code"] = 2, "Failure", str(event.result)
    elif event.verdict == "denied":
        record["status_id"], record["status"] = 2, "Failure"
    container = _container(event)
    if container is not None:
        record["container"] = container
    record["unmapped"] = {"event_kind": kind, "source": event.source}
    return record


def _network(event: Event) -> dict[str, Any]:
    profiles = ["container"] + (["ai_operation"] if event.kind in AI_KINDS else [])
    record = _base(NETWORK_ACTIVITY, NETWORK_ACTIVITIES[event.kind], 1, event.time_ns, event.id, profiles)
    net = event.net or {}
    llm = event.llm or {}
    dst = _endpoint(net) if net else {"hostname": str(llm.get("host") or "unknown")}
    record["dst_endpoint"] = dst
    record["src_endpoint"] = {"ip": str(net["local_address"])} if net.get("local_address") else {"hostname": "localhost"}
    direction = net.get("direction", "egress")
    record["connection_info"] = {"direction_id": 2 if direction == "egress" else 1,
                                 "direction": "Outbound" if direction == "egress" else "Inbound",
                                 "protocol_name": str(net.get("transport") or "tcp")}
    if event.process:
        record["actor"] = {"process": _process(event.process)}
    if event.kind in AI_KINDS:
        record.update(_ai_operation(llm))
    return record


def _ai_operation(llm: dict[str, Any]) -> dict[str, Any]:
    """The ai_operation profile (OCSF 1.8): ai_model and message_context."""
    usage = llm.get("usage") or {}
    context: dict[str, Any] = {"service": {"name": str(llm.get("host") or llm.get("provider") or "unknown")},
                               "ai_role_id": 2 if llm.get("stop_reason") is not None else 1}
    context["ai_role"] = "Assistant" if context["ai_role_id"] == 2 else "User"
    if llm.get("id") or llm.get("request_id"):
        context["uid"] = str(llm.get("id") or llm.get("request_id"))
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if isinstance(prompt, int):
        context["prompt_tokens"] = prompt
    if isinstance(completion, int):
        context["completion_tokens"] = completion
    if isinstance(prompt, int) and isinstance(completion, int):
        context["total_tokens"] = prompt + completion
    model = {"model_name": str(llm.get("model") or "unknown"), "ai_provider": str(llm.get("provider") or "unknown")}
    return {"ai_model": model, "message_context": context}


def ocsf_record(notice: Notice, trace_id: str = "", link_template: str = "") -> dict[str, Any] | None:
    if notice.kind == "alert" and notice.alert is not None:
        return detection_finding(notice, trace_id, link_template)
    if notice.kind == "event" and notice.event is not None:
        return activity(notice.event)
    return None


@dataclass
class OcsfFileTransport(Transport):
    """JSON lines to a 0600 file, rotated by size."""
    path: str
    events: bool = False
    max_bytes: int = 100 << 20
    backups: int = 5
    link_template: str = ""
    batch_max: int = 256
    unmapped: int = 0
    _traces: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import json

        self._dumps = json.JSONEncoder(default=str, separators=(",", ":")).encode
        self.wants_events = self.events
        self._out = open_private(self.path, "a")
        self._out.reconfigure(line_buffering=False)  # flushed once a batch
        self._size = os.fstat(self._out.fileno()).st_size

    def note_trace(self, sandbox_id: str, trace_id: str) -> None:
        self._traces[sandbox_id] = trace_id

    def deliver(self, notices: list[Notice]) -> None:
        lines = []
        for notice in notices:
            sandbox_id = sandbox_of(notice.alert.event)["id"] if notice.alert else ""
            record = ocsf_record(notice, self._traces.get(sandbox_id, ""), self.link_template)
            if record is None:
                self.unmapped += 1
                continue
            lines.append(self._dumps(record) + "\n")
        try:
            for line in lines:
                size = len(line.encode())
                if self._size and self._size + size > self.max_bytes:
                    self._rotate()
                self._out.write(line)
                self._size += size
            self._out.flush()
        except OSError as exc:
            raise DeliveryError(f"{self.path}: {exc.strerror or exc}") from None

    def _rotate(self) -> None:
        self._out.close()
        for index in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        if self.backups > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._out = open_private(self.path, "a")
        self._out.reconfigure(line_buffering=False)
        self._size = 0

    def close(self) -> None:
        self._out.close()
