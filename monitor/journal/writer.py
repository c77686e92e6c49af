"""The journal's writer: appends events, alerts, actions and the final summary to segment files.

Crash safety: a block is written with one write() when it fills and at least every
`flush_interval_s` (default 1 s), so a SIGKILL loses at most the records of the last interval;
`fsync=True` also survives power loss at the cost of one fsync per flush (default False: the
page cache survives a killed process; segments are fsynced when closed, a rolled one on a
thread of its own). The writer runs on the judging thread: `append` makes the record's row
at once (while the event is still in the CPU cache) and writes a full block, but only when the
flush thread does not hold the lock; else the record is queued. It never waits for a disk.

Retention: `max_bytes` (default 1 GiB) and `max_age_s` (default 7 days) cap the journal; whole
segments are dropped oldest first, never one being written, and counted in `stats()`
(dropped_segments, dropped_bytes, dropped_records, dropped_events). Segments are at most
max_bytes/4, and room for the next one is kept, so the directory stays under max_bytes
(give or take one block).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import zstandard

from monitor.journal.format import (
    BLOCK_FORMAT,
    FILE_MAGIC,
    FRAME_BLOCK,
    FRAME_META,
    INDEX_SUFFIX,
    MAX_BLOCK_RAW_BYTES,
    MAX_FRAME_BYTES,
    SEGMENT_SUFFIX,
    BlockEncoder,
    SegmentIndex,
    Undelivered,
    file_size,
    frame,
    index_path,
    load_index,
    segment_files,
    write_private,
)

DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_BLOCK_RECORDS = 4096
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_SEGMENT_AGE_S = 3600.0


class JournalWriter:
    """Appends every event, alert, action and the summary to a journal directory.

    Never raises to its caller: a failed write is counted in stats()["errors"] with the
    last error message, and the records of that block are counted as lost.
    """

    def __init__(self, directory: str | os.PathLike[str], flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
                 fsync: bool = False, max_bytes: int | None = DEFAULT_MAX_BYTES,
                 max_age_s: float | None = DEFAULT_MAX_AGE_S, *, block_records: int = DEFAULT_BLOCK_RECORDS,
                 segment_bytes: int | None = None, segment_age_s: float | None = None,
                 level: int = 3, clock: Callable[[], int] = time.time_ns) -> None:
        self.directory = os.fspath(directory)
        self.flush_interval_s = flush_interval_s
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.block_records = max(1, block_records)
        # Segments small enough that retention can drop whole ones without losing most of the cap.
        seg_bytes = segment_bytes or DEFAULT_SEGMENT_BYTES
        if max_bytes:
            seg_bytes = min(seg_bytes, max(64 << 10, max_bytes // 4))
        self.segment_bytes = seg_bytes
        seg_age = segment_age_s or DEFAULT_SEGMENT_AGE_S
        if max_age_s:
            seg_age = min(seg_age, max(1.0, max_age_s / 4))
        self.segment_age_s = seg_age
        self._clock = clock
        # Small match tables (32 KiB, against 768 KiB at level 3): the compressor then leaves the
        # pipeline's data in the CPU cache, and the blocks come out no bigger (opens: smaller).
        params = zstandard.ZstdCompressionParameters.from_level(level, hash_log=12, chain_log=12)
        self._compressor = zstandard.ZstdCompressor(compression_params=params)
        self._encoder = BlockEncoder()  # the block being filled (held by the lock)
        self._pending: collections.deque[Any] = collections.deque()  # came while the lock was taken
        self._lock = threading.Lock()  # serialises block writes, rolls and retention
        self._sealing: list[threading.Thread] = []  # rolled segments being fsynced and indexed
        self._closed = False
        self._finished = False  # close() is done: the segment is closed for good
        self._dirty = False  # written since the last fsync
        self._fd = -1
        self._segment = ""
        self._segment_index: SegmentIndex | None = None
        self._segment_opened = 0.0
        self.counters: collections.Counter[str] = collections.Counter()
        self.last_error = ""
        self._ensure_directory()
        with self._lock:
            self._apply_retention()
            self._open_segment()
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="journal-flush", daemon=True)
        self._flusher.start()

    # -- records ------------------------------------------------------------------------------

    def append(self, record: Any) -> None:
        """An Event, Alert or ActionRecord. Its row is made now, on the judging thread, while
        the event is in the CPU cache; a full block is written here too. Never waits: while the
        flush thread holds the lock, the record is queued, and goes with a later one."""
        if not self._lock.acquire(False):
            self._pending.append(record)
            return
        try:
            if self._pending:  # what came while the lock was taken goes first, now
                self._pending.append(record)
                self._flush_locked()
                return
            if self._encoder.add(record) >= self.block_records:
                self._write_encoder()
        finally:
            self._lock.release()

    def append_undelivered(self, time_ns: int, fields: dict[str, Any]) -> None:
        """An alert an output could not deliver (from the output's own thread)."""
        self.append(Undelivered(time_ns, fields))

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self._closed:
            return
        if summary is not None:
            self._pending.append((self._clock(), summary))
        self._wake.set()
        self._closed = True
        self._flusher.join(timeout=10)
        with self._lock:
            self._flush_locked()
            self._close_segment()
            self._finished = True
        for finisher in self._sealing:
            finisher.join()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"directory": self.directory, **self.counters}
        if self.last_error:
            out["last_error"] = self.last_error
        return out

    # -- writing ------------------------------------------------------------------------------

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        pending = self._pending
        while pending:
            self._encoder.add(pending.popleft())
            if len(self._encoder.rows) >= self.block_records:
                self._write_encoder()
        if self._encoder.rows:
            self._write_encoder()
        if self.fsync and self._dirty and self._fd >= 0:
            self._dirty = False
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.counters["errors"] += 1
                self.last_error = f"fsync: {exc}"

    def _write_encoder(self) -> None:
        encoder, self._encoder = self._encoder, BlockEncoder()
        if self._finished:  # records after close() have nowhere to go: counted, not written
            self.counters["records_after_close"] += len(encoder.rows)
            return
        try:
            self._write_block(encoder)
        except Exception as exc:  # the journal must never take the pipeline down
            self.counters["errors"] += 1
            self.counters["records_lost"] += len(encoder.rows)
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _write_block(self, encoder: BlockEncoder) -> None:
        if self._fd < 0:
            self._open_segment()
        raw = encoder.encode()
        records = len(encoder.rows)
        if len(raw) > MAX_BLOCK_RAW_BYTES and records > 1:  # huge records (LLM text): smaller blocks
            first, second = encoder.split()
            self._write_block(first)
            self._write_block(second)
            return
        payload = self._compressor.compress(raw)
        if len(payload) > MAX_FRAME_BYTES:
            self.counters["records_too_large"] += 1
            self.counters["records_lost"] += 1
            self.last_error = f"a record of {len(raw)} bytes is over the {MAX_FRAME_BYTES}-byte frame limit"
            return
        data = frame(FRAME_BLOCK, payload)
        self._write_all(data)
        self._dirty = True
        index = self._segment_index
        assert index is not None
        index.add_block(encoder, records)
        self.counters["records"] += records
        self.counters["events"] += len(encoder.times)
        self.counters["blocks"] += 1
        self.counters["bytes_written"] += len(data)
        index.bytes += len(data)
        if index.bytes >= self.segment_bytes or time.monotonic() - self._segment_opened >= self.segment_age_s:
            self._roll()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            view = view[written:]

    def _flush_loop(self) -> None:
        last_retention = time.monotonic()
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            if self._closed:
                return
            with self._lock:
                if self._closed:
                    return
                self._flush_locked()
                if self._fd >= 0 and time.monotonic() - self._segment_opened >= self.segment_age_s:
                    self._roll()
                elif time.monotonic() - last_retention >= 60:
                    self._apply_retention()
                    last_retention = time.monotonic()

    # -- segments -----------------------------------------------------------------------------

    def _ensure_directory(self) -> None:
        path = self.directory
        try:
            os.makedirs(path, mode=0o700)
            os.chmod(path, 0o700)  # makedirs' mode is filtered by the umask
        except FileExistsError:
            if not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "journal path is not a directory", path) from None
            mode = os.stat(path).st_mode & 0o777
            if mode & 0o077:
                foreign = [n for n in os.listdir(path)
                           if not n.endswith((SEGMENT_SUFFIX, INDEX_SUFFIX)) and ".tmp" not in n]
                if foreign:  # not ours alone: leave its mode, say so
                    self.last_error = f"{path}: directory is mode {mode:o}, not 0700"
                else:
                    os.chmod(path, 0o700)

    def _open_segment(self) -> None:
        existing = segment_files(self.directory)
        seq = int(os.path.basename(existing[-1])[: -len(SEGMENT_SUFFIX)]) + 1 if existing else 1
        while True:
            path = os.path.join(self.directory, f"{seq:08d}{SEGMENT_SUFFIX}")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:  # another monitor writes to the same journal
                seq += 1
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # retention (ours or another's) skips it
        meta = {"format": BLOCK_FORMAT, "created_ns": self._clock(), "host": socket.gethostname(),
                "pid": os.getpid()}
        self._fd = fd
        self._segment = path
        data = FILE_MAGIC + frame(FRAME_META, json.dumps(meta).encode())
        self._write_all(data)
        self._segment_index = SegmentIndex(path=path, bytes=len(data))
        self._segment_opened = time.monotonic()
        self.counters["segments"] += 1
        self.counters["bytes_written"] += len(data)

    def _close_segment(self, in_background: bool = False) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        index = self._segment_index
        if in_background:
            # A roll can happen on the judging thread (the journal runs inline): the fsync of a
            # full segment (64 MiB by default) must not hold up the next kill. close() waits.
            finisher = threading.Thread(target=self._finish_segment, args=(fd, index),
                                        name="journal-seal", daemon=True)
            self._sealing.append(finisher)
            finisher.start()
            return
        self._finish_segment(fd, index)

    def _finish_segment(self, fd: int, index: SegmentIndex | None) -> None:
        """fsync, then the index that says the segment is complete, then close (its lock goes)."""
        try:
            os.fsync(fd)
        except OSError as exc:
            self.counters["errors"] += 1
            self.last_error = f"fsync: {exc}"
        if index is not None:
            index.complete = True
            try:
                write_private(index_path(index.path), json.dumps(index.to_json()).encode())
            except OSError as exc:
                self.counters["errors"] += 1
                self.last_error = f"index: {exc}"
        os.close(fd)

    def _roll(self) -> None:
        self._sealing = [t for t in self._sealing if t.is_alive()]
        self._close_segment(in_background=True)
        self._apply_retention()
        if not self._closed:
            self._open_segment()

    def _apply_retention(self) -> None:
        """Drop whole segments, oldest first, until both caps hold. Locked segments are in use."""
        active = self._segment if self._fd >= 0 else None
        every = segment_files(self.directory)
        sizes = {s: file_size(s) for s in every}
        total = sum(sizes.values())
        segments = [s for s in every if s != active]
        # Room for one whole segment more: the cap holds while the next one fills.
        budget = self.max_bytes - self.segment_bytes if self.max_bytes else None
        now = self._clock()
        for seg in segments:  # oldest first (names are sequence numbers)
            too_big = budget is not None and total > budget
            too_old = False
            info = None
            if self.max_age_s and not too_big:
                info = load_index(seg)
                last_ns = info.last_ns if info else 0
                if not last_ns:
                    last_ns = int(os.stat(seg).st_mtime * 1e9) if os.path.exists(seg) else 0
                too_old = now - last_ns > self.max_age_s * 1e9
            if not (too_big or too_old):
                break
            if not self._drop_segment(seg, info):
                continue
            total -= sizes[seg]

    def _drop_segment(self, seg: str, info: SegmentIndex | None) -> bool:
        try:
            fd = os.open(seg, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another writer holds it
            info = info or load_index(seg)
            size = os.fstat(fd).st_size
            os.unlink(seg)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(index_path(seg))
        finally:
            os.close(fd)
        self.counters["dropped_segments"] += 1
        self.counters["dropped_bytes"] += size
        if info is not None:
            self.counters["dropped_records"] += info.records
            self.counters["dropped_events"] += info.events
        return True
