"""Decoder for probes/net.c: net_event records -> Events (connect, bind, listen, accept, dns)."""

from __future__ import annotations

import ipaddress
import socket
import struct

from monitor.event import Event
from monitor.sensor import wire

_NET_BODY = struct.Struct(f"<iIIIII{wire.SOCKADDR_LEN}s")
_DIRECTION = {wire.K_CONNECT: "egress", wire.K_DNS: "egress", wire.K_ACCEPT: "ingress",
              wire.K_LISTEN: "ingress", wire.K_BIND: "ingress"}
_TRANSPORT = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}
DNS_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
              33: "SRV", 65: "HTTPS"}


def parse_sockaddr(raw: bytes, length: int) -> dict[str, object] | None:
    """A sockaddr (as the process passed it) -> {family, address, port}; None if unknown."""
    if length < 2:
        return None
    (family,) = struct.unpack_from("<H", raw)
    if family == socket.AF_INET and length >= 8:
        port = struct.unpack_from(">H", raw, 2)[0]
        return {"family": "inet", "address": str(ipaddress.IPv4Address(raw[4:8])), "port": port}
    if family == socket.AF_INET6 and length >= 24:
        port = struct.unpack_from(">H", raw, 2)[0]
        address = ipaddress.IPv6Address(raw[8:24])
        mapped = address.ipv4_mapped
        return {"family": "inet6", "address": str(mapped or address), "port": port}
    if family == socket.AF_UNIX:
        path = raw[2:length]
        if path[:1] == b"\0":  # abstract namespace
            name = "@" + path[1:].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        else:
            name = path.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        return {"family": "unix", "address": name}
    return None


def parse_dns_query(payload: bytes, stream: bool) -> tuple[str, str] | None:
    """The first question of a DNS query -> (name, qtype); None when it is not one."""
    data = payload[2:] if stream else payload
    if len(data) < 17:
        return None
    pos, labels = 12, []
    while pos < len(data):
        length = data[pos]
        if length == 0:
            break
        if length > 63 or pos + 1 + length > len(data):
            return None
        labels.append(data[pos + 1: pos + 1 + length].decode("ascii", "backslashreplace"))
        pos += 1 + length
    else:
        return None
    if pos + 3 > len(data):
        return ".".join(labels), ""
    qtype = struct.unpack_from(">H", data, pos + 1)[0]
    return ".".join(labels), DNS_QTYPES.get(qtype, str(qtype))


def decode_net(event: Event, kind: int, buf: bytes) -> Event:
    fd, addrlen, backlog, payload_len, socktype, repeats, raw_addr = _NET_BODY.unpack_from(buf, wire.HDR_SIZE)
    net: dict[str, object] = {"direction": _DIRECTION[kind]}
    transport = _TRANSPORT.get(socktype & 0xF)
    addr = parse_sockaddr(raw_addr, addrlen) if addrlen else None
    if addr:
        net.update(addr)
    if transport and net.get("family") != "unix":
        net["transport"] = transport
    if kind == wire.K_DNS:
        payload_at = wire.HDR_SIZE + _NET_BODY.size
        parsed = parse_dns_query(buf[payload_at: payload_at + payload_len], socktype == socket.SOCK_STREAM)
        if parsed is None:
            return event  # not DNS after all: the caller drops records without a net map
        net["query"], qtype = parsed
        if qtype:
            net["query_type"] = qtype
        net.setdefault("port", 53)
        net.setdefault("transport", "udp")
    event.net = net
    if repeats:
        event.detail = {"repeats": repeats}
    hints: dict[str, int] = {"fd": fd}
    if kind == wire.K_LISTEN:
        hints["backlog"] = backlog
    event.hints = hints
    return event
