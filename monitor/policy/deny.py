"""The kernel-compilable subset of `deny` rules.

exec deny (when: [exec]) - a disjunction of
    event.process.executable == "/path" | in ["/a", "/b"] | .startsWith("/prefix/")
connect deny (when: [connect]) - a disjunction of address and/or port tests:
    event.net.address == "1.2.3.4" | in [...] | in_cidr(event.net.address, "10.0.0.0/8"),
    event.net.port == 3333 | in [3333, 4444], or `address-test && port-test`
Conjuncts `event.kind == ...` and `has(...)` are allowed (the kernel hook implies them).
Anything else cannot be compiled into a BPF map and is refused at load, saying why.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from monitor.policy.ast import Call, Lit, Node, conjuncts, disjuncts, field_path, literal_list

EXECUTABLE = ("process", "executable")
ADDRESS = ("net", "address")
PORT = ("net", "port")


class NotCompilable(Exception):
    pass


@dataclass(slots=True)
class DenySpec:
    exec_paths: list[str] = field(default_factory=list)
    exec_prefixes: list[str] = field(default_factory=list)
    net: list[tuple[str, int | None]] = field(default_factory=list)  # (cidr, port or None: any)


def _is_ignorable(node: Node) -> bool:
    if isinstance(node, Call) and node.function == "has":
        return True
    if isinstance(node, Call) and node.function in ("_==_", "_in_"):
        return field_path(node.args[0]) == ("kind",)
    return isinstance(node, Lit) and node.value is True


def _strings(node: Node, what: str) -> list[str]:
    if isinstance(node, Lit) and isinstance(node.value, str):
        return [node.value]
    values = literal_list(node)
    if values is not None and all(isinstance(v, str) for v in values):
        return values
    raise NotCompilable(f"{what} must be compared with string literals")


def _exec_term(node: Node, spec: DenySpec) -> None:
    if isinstance(node, Call) and node.function in ("_==_", "_in_") and field_path(node.args[0]) == EXECUTABLE:
        for path in _strings(node.args[1], "event.process.executable"):
            if not path.startswith("/"):
                raise NotCompilable(f"executable {path!r} is not an absolute path")
            spec.exec_paths.append(path)
        return
    if (isinstance(node, Call) and node.function == "startsWith" and node.target is not None
            and field_path(node.target) == EXECUTABLE):
        for prefix in _strings(node.args[0], "startsWith"):
            if not prefix.startswith("/"):
                raise NotCompilable(f"prefix {prefix!r} is not an absolute path")
            spec.exec_prefixes.append(prefix)
        return
    raise NotCompilable("an exec deny condition may only test event.process.executable with ==, "
                        "in [...] or startsWith(...)")


def _cidrs(node: Node) -> list[str] | None:
    if isinstance(node, Call) and node.function in ("_==_", "_in_") and field_path(node.args[0]) == ADDRESS:
        out = []
        for address in _strings(node.args[1], "event.net.address"):
            try:
                out.append(str(ipaddress.ip_network(address)))
            except ValueError:
                raise NotCompilable(f"{address!r} is not an IP address") from None
        return out
    if (isinstance(node, Call) and node.function == "in_cidr" and len(node.args) == 2
            and field_path(node.args[0]) == ADDRESS):
        out = []
        for cidr in _strings(node.args[1], "in_cidr"):
            try:
                out.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                raise NotCompilable(f"{cidr!r} is not a CIDR") from None
        return out
    return None


def _ports(node: Node) -> list[int] | None:
    if isinstance(node, Call) and node.function in ("_==_", "_in_") and field_path(node.args[0]) == PORT:
        right = node.args[1]
        values = [right.value] if isinstance(right, Lit) else literal_list(right)
        if values is None or not all(type(v) is int and 0 < v < 65536 for v in values):
            raise NotCompilable("event.net.port must be compared with port numbers (1-65535)")
        return values
    return None


def _net_term(node: Node, spec: DenySpec) -> None:
    cidrs: list[str] | None = None
    ports: list[int] | None = None
    for part in conjuncts(node):
        if _is_ignorable(part):
            continue
        found_cidrs, found_ports = _cidrs(part), _ports(part)
        if found_cidrs is not None and cidrs is None:
            cidrs = found_cidrs
        elif found_ports is not None and ports is None:
            ports = found_ports
        else:
            raise NotCompilable("a connect deny condition may only test event.net.address (==, in, "
                                "in_cidr) and event.net.port (==, in), at most one of each per branch")
    if cidrs is None and ports is None:
        raise NotCompilable("a connect deny branch tests neither address nor port")
    for cidr in cidrs if cidrs is not None else ["0.0.0.0/0", "::/0"]:
        for port in ports if ports is not None else [None]:
            spec.net.append((cidr, port))


def compile_deny(root: Node, when: list[str], has_exception: bool) -> DenySpec:
    if has_exception:
        raise NotCompilable("'except' cannot be compiled into the kernel; fold it into the condition "
                            "or use action kill")
    if set(when) == {"exec"}:
        term = _exec_term
    elif set(when) == {"connect"}:
        term = _net_term
    else:
        raise NotCompilable("a deny rule needs when: [exec] or when: [connect]")
    spec = DenySpec()
    for branch in disjuncts(root):
        parts = [p for p in conjuncts(branch) if not _is_ignorable(p)]
        if term is _exec_term:
            if len(parts) != 1:
                raise NotCompilable("each exec deny branch must be one executable test")
            _exec_term(parts[0], spec)
        else:
            _net_term(branch, spec)
    spec.exec_paths = list(dict.fromkeys(spec.exec_paths))
    spec.exec_prefixes = list(dict.fromkeys(spec.exec_prefixes))
    spec.net = list(dict.fromkeys(spec.net))
    return spec
