"""Decoder for probes/net.c: net_event records -> Events (connect, bind, listen, accept, dns)."""

from __future__ import annotations

import socket
import struct

from monitor.event import Event
from monitor.linux import parse_sockaddr
from monitor.sensor import wire

_NET_BODY = struct.Struct(f"<iIIIII{wire.SOCKADDR_LEN}s")
_DIRECTION = {wire.K_CONNECT: "egress", wire.K_DNS: "egress", wire.K_ACCEPT: "ingress",
              wire.K_LISTEN: "ingress", wire.K_BIND: "ingress"}
_TRANSPORT = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}
DNS_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
              33: "SRV", 65: "HTTPS"}


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
