"""Walking a BPF ring buffer's records (monitor/bpf/ringbuf.py) over a buffer laid out like
the kernel's: 8-byte headers (length, BUSY and DISCARD bits), 8-byte aligned records, data
mapped twice so a record that wraps reads contiguously; each test for the Python walk and the C
one (monitor/sensor/_fastdecode.c, what RingReader uses). The kernel path runs in tests/e2e."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest

from monitor.bpf.ringbuf import BUSY_BIT, DISCARD_BIT, walk
from monitor.sensor import _fastdecode

both_walks = pytest.mark.parametrize("walk", [walk, _fastdecode.walk], ids=["python", "c"])
Walk = Callable[..., Any]

SIZE = 64  # data bytes (a power of two)


def ring(records: list[tuple[bytes, int]], start: int = 0) -> tuple[bytearray, int]:
    """(buffer: one header page stand-in of 8 bytes + data twice, producer position)."""
    data = bytearray(SIZE)
    pos = start
    for payload, bits in records:
        blob = struct.pack("<II", len(payload) | bits, 0) + payload
        blob += bytes(-len(blob) % 8)
        for i, byte in enumerate(blob):
            data[(pos + i) % SIZE] = byte
        pos += len(blob)
    return bytearray(8) + data + data, pos


@both_walks
def test_committed_records_in_order_discarded_skipped(walk: Walk) -> None:
    buf, producer = ring([(b"one", 0), (b"gone", DISCARD_BIT), (b"three33", 0)])
    records, consumer, discarded = walk(bytes(buf), 8, SIZE - 1, 0, producer)
    assert records == [b"one", b"three33"] and discarded == 1 and consumer == producer


@both_walks
def test_stops_at_a_record_still_being_written(walk: Walk) -> None:
    buf, producer = ring([(b"done", 0), (b"half", BUSY_BIT), (b"after", 0)])
    records, consumer, _ = walk(bytes(buf), 8, SIZE - 1, 0, producer)
    assert records == [b"done"] and consumer == 16  # the next read starts at the busy record


@both_walks
def test_a_record_that_wraps_reads_whole(walk: Walk) -> None:
    start = SIZE - 8  # header at the last 8 bytes, payload past the end of the data pages
    buf, producer = ring([(b"wrapping-payload", 0)], start=start)
    records, consumer, _ = walk(bytes(buf), 8, SIZE - 1, start, producer)
    assert records == [b"wrapping-payload"] and consumer == producer


@both_walks
def test_a_read_takes_at_most_limit_records_and_resumes_after_them(walk: Walk) -> None:
    buf, producer = ring([(b"a", 0), (b"b", 0), (b"c", 0)])
    first, consumer, _ = walk(bytes(buf), 8, SIZE - 1, 0, producer, limit=2)
    rest, consumer, _ = walk(bytes(buf), 8, SIZE - 1, consumer, producer, limit=2)
    assert first == [b"a", b"b"] and rest == [b"c"] and consumer == producer
