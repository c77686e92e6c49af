"""Pure decoding logic of the sensor: flag names, sockaddrs, DNS, wire records (no kernel)."""

from __future__ import annotations

import os
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from monitor.event import Event
from monitor.sensor import wire
from monitor.sensor.file import FILE_ID, decode_file, open_flags
from monitor.sensor.net import decode_net, parse_dns_query, parse_sockaddr
from monitor.sensor.process import decode_exec, decode_sys, namespace_flags


def header(kind: int, flags: int = 0) -> bytes:
    return struct.pack("<QQIIIIIiII16s", 1, 7, kind, 10, 11, 0, 0, 0, flags, 0, b"comm")


def test_open_flags_names_and_write_intent() -> None:
    names, write = open_flags(os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
    assert names[0] == "O_WRONLY" and {"O_CREAT", "O_TRUNC", "O_CLOEXEC"} <= set(names)
    assert write is True
    names, write = open_flags(os.O_RDONLY | os.O_DIRECTORY)
    assert names == ["O_RDONLY", "O_DIRECTORY"] and write is False
    assert open_flags(os.O_RDWR)[1] is True
    assert "O_TMPFILE" in open_flags(os.O_RDWR | os.O_TMPFILE)[0]


def test_sockaddr_inet_inet6_unix_abstract() -> None:
    v4 = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 8080) + socket.inet_aton("10.1.2.3")
    assert parse_sockaddr(v4 + bytes(8), 16) == {"family": "inet", "address": "10.1.2.3", "port": 8080}
    v6 = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 443) + bytes(4) + socket.inet_pton(socket.AF_INET6, "::1")
    assert parse_sockaddr(v6 + bytes(4), 28) == {"family": "inet6", "address": "::1", "port": 443}
    mapped = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 1) + bytes(4) + socket.inet_pton(socket.AF_INET6, "::ffff:1.2.3.4")
    assert parse_sockaddr(mapped + bytes(4), 28)["address"] == "1.2.3.4"
    unix = struct.pack("<H", socket.AF_UNIX) + b"/run/docker.sock\0"
    assert parse_sockaddr(unix, len(unix)) == {"family": "unix", "address": "/run/docker.sock"}
    abstract = struct.pack("<H", socket.AF_UNIX) + b"\0agent"
    assert parse_sockaddr(abstract, len(abstract))["address"] == "@agent"
    assert parse_sockaddr(b"\x00", 1) is None


def dns_query(name: str, qtype: int = 1) -> bytes:
    body = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", 1, 0x100, 1, 0, 0, 0) + body + struct.pack(">HH", qtype, 1)


def test_dns_query_udp_and_tcp_framing() -> None:
    assert parse_dns_query(dns_query("pool.miner.test", 28), stream=False) == ("pool.miner.test", "AAAA")
    framed = struct.pack(">H", 40) + dns_query("a.b")
    assert parse_dns_query(framed, stream=True) == ("a.b", "A")
    assert parse_dns_query(b"\x00" * 5, stream=False) is None


@given(st.binary(max_size=300))
def test_dns_parser_never_raises(data: bytes) -> None:
    parse_dns_query(data, stream=False)
    parse_dns_query(data, stream=True)


def test_exec_record_decodes_args_and_truncation() -> None:
    body = struct.pack(f"<II{wire.PATH_LEN}s", 2, 0, b"/bin/true")
    args = b"/bin/true".ljust(wire.ARG_LEN, b"\0") + b"x".ljust(wire.ARG_LEN, b"\0")
    buf = header(wire.K_EXEC, wire.F_ARGS_TRUNC) + body + args + bytes(wire.ARG_LEN * (wire.MAX_ARGS - 2))
    event = decode_exec(Event(kind="exec", process={}), wire.F_ARGS_TRUNC, buf)
    assert event.process["executable"] == "/bin/true" and event.process["args"] == ["/bin/true", "x"]
    assert event.detail == {"args_truncated": True}


def test_file_record_rename_and_relative_hint() -> None:
    body = (struct.pack("<iiIIII", -100, 5, 0, 0, 0, 4) + bytes(FILE_ID.size)
            + struct.pack(f"<{wire.PATH_LEN}s{wire.PATH_LEN}s", b"old", b"new"))
    event = decode_file(Event(kind="rename"), wire.K_RENAME, header(wire.K_RENAME) + body)
    assert event.file == {"path": "old", "new_path": "new", "write": True}
    assert event.hints == {"dfd": -100, "dfd2": 5}


def test_net_record_and_sys_records() -> None:
    addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 3333) + socket.inet_aton("127.0.0.1")
    body = struct.pack(f"<iIIIII{wire.SOCKADDR_LEN}s", 3, 16, 0, 0, socket.SOCK_STREAM, 0, addr)
    event = decode_net(Event(kind="connect"), wire.K_CONNECT, header(wire.K_CONNECT) + body)
    assert event.net == {"direction": "egress", "family": "inet", "address": "127.0.0.1", "port": 3333,
                         "transport": "tcp"}
    assert event.detail is None, "a record that folded nothing says nothing about repeats"
    folded = struct.pack(f"<iIIIII{wire.SOCKADDR_LEN}s", 3, 16, 0, 0, socket.SOCK_STREAM, 41, addr)
    event = decode_net(Event(kind="connect"), wire.K_CONNECT, header(wire.K_CONNECT) + folded)
    assert event.detail == {"repeats": 41}
    args = struct.pack("<5Q", 0x10000000 | 0x20000, 0, 0, 0, 0)
    event = decode_sys(Event(kind="unshare"), wire.K_UNSHARE, header(wire.K_UNSHARE) + args + bytes(3 * wire.STR_LEN))
    assert set(event.detail["flags"]) == {"CLONE_NEWUSER", "CLONE_NEWNS"}
    assert namespace_flags(0) == []


def test_c_defines_cover_every_constant_the_probes_use() -> None:
    import re
    from pathlib import Path

    from monitor.sensor import btf

    defines = set(re.findall(r"#define (\w+)", wire.c_defines() + btf.c_defines(dict.fromkeys(btf.FIELDS, 0))))
    probes = Path(__file__).resolve().parents[1] / "probes"
    used = set()
    for source in probes.glob("*.[ch]"):
        if source.name == "ssl.c":
            continue
        used |= set(re.findall(r"\b(K_[A-Z0-9_]+|F_[A-Z_]+|[A-Z_]+_LEN|[A-Z_]+_VALUE|RINGBUF_PAGES|MAX_ARGS)\b", source.read_text()))
    assert used - defines == set()
