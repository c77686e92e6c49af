#!/usr/bin/env python3
"""Fuzz the gVisor trace decoder: whatever arrives on the sink socket is decoded, mapped and
counted, never raised. Default 60 s; `--smoke` runs 3 s.

    .venv/bin/python tests/bench/fuzz_gvisor.py [--smoke] [--seconds N] [--seed N]

Inputs: random bytes; valid points of every decoded type with random field values (huge and
negative ids, odd strings, bogus sockaddrs, raw syscalls of every mapped number) then corrupted
(bit flips, truncation, splices, header size/type rewrites). Phase 1 calls the datagram path
directly; phase 2 sends a share of the same inputs through a real SOCK_SEQPACKET connection to a
TraceSource and checks that the server still decodes a valid point afterwards. Exit status 1 (with
the input, hex) on the first exception that escapes. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from google.protobuf.message import Message  # noqa: E402

from monitor.gvisor import wire  # noqa: E402
from monitor.gvisor.mapping import RAW_SYSCALLS, EventMapper  # noqa: E402
from monitor.gvisor.proto import points_pb2 as pb  # noqa: E402
from monitor.gvisor.source import TraceSession, TraceSource  # noqa: E402

SANDBOX = {"id": "fuzz", "name": "fuzz", "runtime": "gvisor", "labels": {}}
STRINGS = ["", "/", "..", "../../etc/shadow", "a" * 5000, "\udcff".encode("utf-8", "surrogatepass").decode(
    "utf-8", "replace"), "/proc/self/fd/3", "rel/path", "\x00nul", "ünïcødé", "//x//y/./z/"]
INTS = [0, 1, -1, -100, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 53, 0x10000]


def rand_int(rng: random.Random, bits: int, signed: bool) -> int:
    value = rng.choice(INTS) if rng.random() < 0.5 else rng.getrandbits(bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return min(max(value, lo), hi) if signed else value % (hi + 1)


def sockaddr(rng: random.Random) -> bytes:
    family = rng.choice([0, 1, 2, 10, 16, 0xFFFF])
    body = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 2, 6, 14, 26, 108, 200])))
    return struct.pack("<H", family) + body if rng.random() < 0.9 else body


def fill(message: Message, rng: random.Random, depth: int = 0) -> Message:
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        name, kind = field.name, field.type
        if field.message_type is not None:
            if depth < 2:
                fill(getattr(message, name), rng, depth + 1)
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == 3
        values = range(rng.choice([0, 1, 3])) if repeated else [None]
        for _ in values:
            if kind == field.TYPE_STRING:
                value: Any = rng.choice(STRINGS)
            elif kind == field.TYPE_BYTES:
                value = sockaddr(rng)
            elif kind == field.TYPE_BOOL:
                value = rng.random() < 0.5
            else:
                signed = kind in (field.TYPE_INT32, field.TYPE_INT64, field.TYPE_SINT32, field.TYPE_SINT64)
                bits = 64 if kind in (field.TYPE_INT64, field.TYPE_UINT64, field.TYPE_SINT64) else 32
                value = rand_int(rng, bits, signed)
            if repeated:
                getattr(message, name).append(value)
            else:
                setattr(message, name, value)
    return message


def valid_point(rng: random.Random) -> bytes:
    message_type, cls = rng.choice(list(wire.MESSAGE_CLASSES.items()))
    message = fill(cls(), rng)
    if message_type == pb.MESSAGE_SYSCALL_RAW and rng.random() < 0.8:
        message.sysno = rng.choice(sorted(RAW_SYSCALLS))
    if hasattr(message, "context_data") and rng.random() < 0.7:
        message.context_data.thread_group_id = rng.choice([1, 2, 3, 4])
        message.context_data.thread_id = message.context_data.thread_group_id
    return wire.encode(message_type, message, rng.getrandbits(32))


def corrupt(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.3 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif choice < 0.5:
            del buf[rng.randrange(len(buf) + 1):]
        elif choice < 0.65 and len(buf) >= 8:
            struct.pack_into("<H", buf, 0, rng.choice([0, 7, 8, 9, 16, len(buf), 0xFFFF]))
        elif choice < 0.8 and len(buf) >= 8:
            struct.pack_into("<H", buf, 2, rng.randrange(0, 40))
        else:
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
    return bytes(buf)


def next_input(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.1:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    point = valid_point(rng)
    return point if roll < 0.4 else corrupt(point, rng)


def new_sink() -> TraceSource:
    sink = TraceSource.__new__(TraceSource)  # the datagram path only
    sink.errors, sink.points = Counter(), 0
    return sink


def fuzz_direct(seconds: float, rng: random.Random) -> dict[str, Any]:
    sink = new_sink()
    session = TraceSession(sock=None, mapper=EventMapper(lambda _cid: SANDBOX))  # type: ignore[arg-type]
    inputs = events = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(200):
            data = next_input(rng)
            out: list = []
            try:
                sink.handle_datagram(session, data, out)
                for event in out:
                    json.dumps(event.to_dict())  # every event must serialize (JSON sink, journal)
            except Exception:
                print(json.dumps({"crash": data.hex(), "traceback": traceback.format_exc()}))
                raise SystemExit(1) from None
            inputs += 1
            events += len(out)
            if inputs % 50_000 == 0:  # a fresh session now and then: state must not grow unbounded
                session = TraceSession(sock=None, mapper=EventMapper(lambda _cid: SANDBOX))  # type: ignore[arg-type]
    return {"inputs": inputs, "events": events, "errors": dict(sink.errors)}


def fuzz_socket(seconds: float, rng: random.Random) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="smfuzz-") as tmp:
        sink = TraceSource(Path(tmp) / "fuzz.sock", sandbox_for=lambda _cid: SANDBOX)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client.connect(str(sink.path))
        client.send(wire.HANDSHAKE)
        sink.poll(100)
        client.settimeout(2)
        assert client.recv(16) == wire.HANDSHAKE
        client.setblocking(False)
        sent = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(100):
                try:
                    client.send(next_input(rng) or b"\0")
                    sent += 1
                except BlockingIOError:
                    break
            sink.poll(0)
        probe = pb.Open(context_data=pb.ContextData(thread_group_id=1), pathname="/fuzz/alive")
        client.setblocking(True)
        client.send(wire.encode(pb.MESSAGE_SYSCALL_OPEN, probe))
        alive = False
        for _ in range(200):
            alive = any(e.file and e.file.get("path") == "/fuzz/alive" for e in sink.poll(10))
            if alive:
                break
        client.close()
        stats = sink.stats()
        sink.close()
    if not alive:
        print(json.dumps({"error": "the sink stopped decoding after fuzzed input", "stats": stats}))
        raise SystemExit(1)
    return {"sent": sent, "points": stats["points"], "errors": stats["errors"], "still_decoding": alive}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="3 seconds")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seconds = 3.0 if args.smoke else args.seconds
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    started = time.monotonic()
    direct = fuzz_direct(seconds * 0.8, rng)
    over_socket = fuzz_socket(seconds * 0.2, rng)
    print(json.dumps({"bench": "fuzz_gvisor", "seed": seed, "seconds": round(time.monotonic() - started, 1),
                      "direct": direct, "socket": over_socket, "crashes": 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
