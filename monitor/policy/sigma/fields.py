"""What Sigma's Linux log sources and fields are in our events.

Sigma field names are first mapped (by the processing pipeline) to the neutral names below, then
the backend reads each neutral name through the event kind being converted (a "variant"): a file
creation is an open for writing (target: event.file.path) or a rename (target: event.file.new_path).
"""

from __future__ import annotations

from dataclasses import dataclass

PARENT = "has(event.process.ancestors) && size(event.process.ancestors) > 0"


@dataclass(frozen=True, slots=True)
class Access:
    """How a neutral field is read: its CEL value, what it holds, and when it can be read."""
    cel: str
    type: str = "string"  # string | int | uid | direction
    presence: str = ""    # CEL true when `cel` can be evaluated (default: has(cel))

    @property
    def guard(self) -> str:
        return self.presence or f"has({self.cel})"


@dataclass(frozen=True, slots=True)
class Variant:
    """One event kind a Sigma category is converted for."""
    kind: str
    prefix: str  # CEL that selects the kind's events within the rule ("" when the kind alone does)
    fields: dict[str, Access]
    refused: dict[str, str]  # neutral field -> why it cannot be read on this kind


PROCESS: dict[str, Access] = {
    "process.executable": Access("event.process.executable"),
    "process.command_line": Access('event.process.args.join(" ")', presence="has(event.process.args)"),
    "parent.executable": Access("event.process.ancestors[0].executable", presence=PARENT),
    "parent.command_line": Access('event.process.ancestors[0].args.join(" ")', presence=PARENT),
    "process.cwd": Access("event.process.cwd"),
    "process.pid": Access("event.process.pid", "int"),
    "process.ppid": Access("event.process.ppid", "int"),
    "process.user": Access("event.process.uid", "uid"),
}

NET = {
    "net.address": Access("event.net.address"),
    "net.port": Access("event.net.port", "int"),
    "net.local_address": Access("event.net.local_address"),
    "net.local_port": Access("event.net.local_port", "int"),
    "net.initiated": Access("event.net.direction", "direction"),
    "net.transport": Access("event.net.transport"),
}
_HOSTNAME_ON_CONNECT = ("a connect event carries the address, not the host name (names are seen on "
                        "DNS queries: a rule on DestinationHostname alone converts to them)")
_ADDRESS_ON_DNS = ("DestinationHostname is seen on DNS queries and addresses and ports on connects: "
                   "no one event carries both")

EXEC = Variant("exec", "", PROCESS, {})
OPEN_WRITE = Variant("open", 'event.kind == "open" && event.file.write == true',
                     {**PROCESS, "file.target": Access("event.file.path")}, {})
RENAME_TARGET = Variant("rename", 'event.kind == "rename"',
                        {**PROCESS, "file.target": Access("event.file.new_path"),
                         "file.source": Access("event.file.path")}, {})
UNLINK = Variant("unlink", "", {**PROCESS, "file.target": Access("event.file.path")}, {})
CONNECT = Variant("connect", "", {**PROCESS, **NET}, {"net.hostname": _HOSTNAME_ON_CONNECT})
DNS = Variant("dns", "", {**PROCESS, "net.hostname": Access("event.net.query"),
                          "net.initiated": NET["net.initiated"]},
              {name: _ADDRESS_ON_DNS for name in NET if name != "net.initiated"})

# Sigma category -> its Sigma fields (-> neutral names) and the variants it converts to.
_PROCESS_FIELDS = {"Image": "process.executable", "CommandLine": "process.command_line",
                   "ParentImage": "parent.executable", "ParentCommandLine": "parent.command_line",
                   "CurrentDirectory": "process.cwd", "ProcessId": "process.pid",
                   "ParentProcessId": "process.ppid", "User": "process.user"}
CATEGORY_FIELDS: dict[str, dict[str, str]] = {
    "process_creation": _PROCESS_FIELDS,
    "file_event": {**_PROCESS_FIELDS, "TargetFilename": "file.target"},
    "file_delete": {**_PROCESS_FIELDS, "TargetFilename": "file.target"},
    "file_rename": {**_PROCESS_FIELDS, "TargetFilename": "file.target", "SourceFilename": "file.source"},
    "network_connection": {**_PROCESS_FIELDS, "DestinationIp": "net.address", "DestinationPort": "net.port",
                           "SourceIp": "net.local_address", "SourcePort": "net.local_port",
                           "Initiated": "net.initiated", "Protocol": "net.transport",
                           "DestinationHostname": "net.hostname"},
    "dns_query": {**_PROCESS_FIELDS, "QueryName": "net.hostname"},
    "dns": {**_PROCESS_FIELDS, "query": "net.hostname"},
}
CATEGORY_VARIANTS: dict[str, tuple[Variant, ...]] = {
    "process_creation": (EXEC,),
    "file_event": (OPEN_WRITE, RENAME_TARGET),
    "file_delete": (UNLINK,),
    "file_rename": (RENAME_TARGET,),
    "network_connection": (CONNECT,),
    "dns_query": (DNS,),
    "dns": (DNS,),
}
CATEGORIES = tuple(CATEGORY_FIELDS)

# Sigma fields we know and do not capture, with the reason a detection engineer is owed.
UNCAPTURED: dict[str, str] = {
    "LogonId": "LogonId (the login session id) is not captured by our probes",
    "ParentUser": "ParentUser is not captured (events carry the process's own uid only)",
    "Hashes": "file hashes are not computed",
    "md5": "file hashes are not computed",
    "sha1": "file hashes are not computed",
    "sha256": "file hashes are not computed",
    "OriginalFileName": "OriginalFileName is PE metadata, which Linux binaries do not have",
    "Product": "Product is PE metadata, which Linux binaries do not have",
    "Company": "Company is PE metadata, which Linux binaries do not have",
    "Description": "Description is PE metadata, which Linux binaries do not have",
    "IntegrityLevel": "IntegrityLevel is a Windows concept",
    "ParentProcessGuid": "process GUIDs are not assigned",
    "ProcessGuid": "process GUIDs are not assigned",
    "DestinationIsIpv6": "DestinationIsIpv6 is not a field (use DestinationIp|cidr)",
}

# Sigma tactic tags (attack.<name>) as the pack writes them.
def tactic_tag(name: str) -> str:
    return name.replace("-", "_")
