"""The consumer side of a BPF ring buffer, mapped into the monitor and read in batches.

bcc's `ring_buffer_poll` calls back into Python once per record through ctypes, a cost per
record that dominates at high rates. Here the ring is mapped like libbpf maps it and walked in Python:
the consumer position page (read-write) at offset 0, then the producer position page and the
data pages, mapped twice back to back so a record that wraps is contiguous. Each record has
an 8-byte header: u32 length with BUSY (being written) and DISCARD bits, u32 page offset;
records are 8-byte aligned. Reading stops at the first BUSY record; the consumer position
is advanced after the batch is copied out, which frees that space for the kernel.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Callable

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8
READ_LIMIT = 4096  # records per read: a full ring (~150k records) is never one Python batch
_POS = struct.Struct("<Q")
_LEN = struct.Struct("<I")


def walk(data: bytes | mmap.mmap, base: int, mask: int, consumer: int, producer: int,
         limit: int = 1 << 62) -> tuple[list[bytes], int, int]:
    """Committed records from `consumer` up to `producer` (or the first one still being
    written, or `limit` records): (records, new consumer position, discarded count). `base` is
    where the data pages start in `data`; positions wrap with `mask` (data size - 1)."""
    records: list[bytes] = []
    discarded = 0
    unpack_len = _LEN.unpack_from
    while consumer < producer and len(records) < limit:
        at = base + (consumer & mask)
        (length,) = unpack_len(data, at)
        if length & BUSY_BIT:
            break
        size = length & ~(BUSY_BIT | DISCARD_BIT)
        if length & DISCARD_BIT:
            discarded += 1
        else:
            records.append(data[at + HEADER_SIZE: at + HEADER_SIZE + size])
        consumer += (size + HEADER_SIZE + 7) & ~7
    return records, consumer, discarded


Walk = Callable[..., tuple[list[bytes], int, int]]


class RingReader:
    """Batches of raw records from one BPF_MAP_TYPE_RINGBUF map (by fd and data size)."""

    def __init__(self, map_fd: int, data_size: int, walk: Walk = walk) -> None:
        """`walk`: how records are cut out of the data pages (the eBPF sensor passes its C one)."""
        if data_size & (data_size - 1):
            raise ValueError("ring buffer size must be a power of two")
        page = mmap.PAGESIZE
        self._consumer_page = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                                        mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._base = page
        self._mask = data_size - 1
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self._walk = walk

    def wake_on(self, map_fd: int) -> None:
        """Let wait() return for another ring's records too (read with that ring's reader)."""
        self._epoll.register(map_fd, select.EPOLLIN)

    def wait(self, timeout_ms: int) -> None:
        """Until the kernel wakes readers (or data is already there), at most timeout_ms."""
        if timeout_ms:
            self._epoll.poll(timeout_ms / 1000 if timeout_ms > 0 else -1)

    def fileno(self) -> int:
        """A descriptor that polls readable when any of the rings waited on is woken (an epoll
        descriptor, so a caller can wait on several readers at once)."""
        return self._epoll.fileno()

    def read(self, limit: int = READ_LIMIT) -> list[bytes]:
        """Records committed so far, oldest first, at most `limit` (the rest wait in the ring,
        where they cost the monitor no memory); their space is handed back."""
        (consumer,) = _POS.unpack_from(self._consumer_page, 0)
        (producer,) = _POS.unpack_from(self._data, 0)
        if consumer == producer:
            return []
        records, consumer, _ = self._walk(self._data, self._base, self._mask, consumer, producer, limit)
        _POS.pack_into(self._consumer_page, 0, consumer)
        return records

    def close(self) -> None:
        self._epoll.close()
        self._data.close()
        self._consumer_page.close()
