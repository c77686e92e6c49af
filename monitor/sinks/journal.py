"""Forensic journal: every event, alert, action and the final summary, appended to segment files.

Layout of a journal directory (0700; every file 0600):

    00000001.seg   segment: an 8-byte file magic, then frames
    00000001.idx   JSON index of a closed segment (sandboxes, time range, counts); a segment
                   without one (the monitor died) is scanned on open instead

A frame is a 16-byte header (sync magic, type, length, CRC32 of header fields + payload) and a
payload. A block frame holds one zstd-compressed msgpack block of up to `block_records` records
(layout: `_BlockEncoder`); process and sandbox maps repeated inside a block are stored once and
referenced by index, which keeps a typical exec/open/connect mix under 20 bytes per event on disk,
and the kinds, times and sandboxes are columns in the block header, so a reader skips the events
it does not want without decoding them.

Crash safety: a block is written with one write() when it fills and at least every
`flush_interval_s` (default 1 s), so a SIGKILL loses at most the records of the last interval;
`fsync=True` also survives power loss at the cost of one fsync per flush (default False: the
page cache survives a killed process; segments are fsynced when closed, a rolled one on a
thread of its own). The journal runs on the judging thread: `on_event` makes the record's row
at once (while the event is still in the CPU cache) and writes a full block, but only when the
flush thread does not hold the lock; else the record is queued. It never waits for a disk. On read, a torn last
frame is skipped with a warning; a damaged frame in the middle is skipped with a warning and
reading resumes at the next frame that checks out (the sync magic makes that findable).

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
import itertools
import json
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

from monitor.event import ActionRecord, Alert, Event
from monitor.sinks import Sink

FILE_MAGIC = b"SMJRNL\x00\x01"
FRAME_MAGIC = b"\xa7J\x8fR"
FRAME_HEADER = struct.Struct("<4sBBHII")  # magic, type, codec, reserved, payload length, crc32
FRAME_META = 1  # JSON, uncompressed: segment metadata
FRAME_BLOCK = 2  # zstd(msgpack(block))
MAX_FRAME_BYTES = 64 << 20
MAX_BLOCK_RAW_BYTES = 8 << 20  # a block over this (before compression) is split in two
BLOCK_FORMAT = 3

# Record tags (first element of each row in a block).
REC_EVENT, REC_ALERT, REC_ACTION, REC_SUMMARY = 0, 1, 2, 3
RECORD_TYPES = {REC_EVENT: "event", REC_ALERT: "alert", REC_ACTION: "action", REC_SUMMARY: "summary"}

SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"

DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_BLOCK_RECORDS = 4096
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_SEGMENT_AGE_S = 3600.0

_ALERT_FIELDS = ("id", "rule", "severity", "action", "mode", "tags", "description", "matched", "time_ns")
_ACTION_FIELDS = ("action", "rule", "target", "outcome", "latency_ms", "message", "alert_id", "time_ns")


def _pack_default(obj: Any) -> Any:
    """Whatever msgpack cannot encode natively is journaled in a readable form, never raised."""
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def _sanitize(obj: Any) -> Any:
    """Last resort for a row msgpack rejects (integers beyond 64 bits): such values become strings."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str | int) else k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(1 << 63) <= obj < (1 << 64):
        return str(obj)
    return obj


# A lone surrogate (JSON allows "\ud800": a model's text can carry one) is not UTF-8: strict
# encoding failed the whole block. "surrogatepass" both ways keeps the text exactly as it came.
UNICODE_ERRORS = "surrogatepass"


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, default=_pack_default, unicode_errors=UNICODE_ERRORS)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, unicode_errors=UNICODE_ERRORS)


def frame(frame_type: int, payload: bytes) -> bytes:
    """One frame: header + payload. The CRC covers type, codec, length and payload."""
    header = FRAME_HEADER.pack(FRAME_MAGIC, frame_type, 0, 0, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(header[4:12]))
    return header[:12] + struct.pack("<I", crc) + payload


# ---------------------------------------------------------------------------------------------
# Block encoding


class _BlockEncoder:
    """Collects records as rows and turns them into one block (format 3):

        header  [3, procs, sandboxes, kinds, times, event_sandboxes]   (one msgpack array)
        rows    one msgpack array of the records' rows, after the header

    procs/sandboxes: each distinct process/sandbox map once (msgpack bytes), referenced by index.
    kinds: one entry per row: the event kind, or None for an alert/action/summary row.
    times: the events' time_ns, delta-coded (the first absolute); event_sandboxes: their sandbox
    index. An event row is [id, proc, file, net, container, llm, detail, result, verdict, source,
    cgroup_id]: a reader filters on the header alone and skips unwanted rows without decoding them.

    A row is made when its record arrives (`add`), while the event is still in the CPU cache; the
    block is packed when it is written (`encode`).
    """

    def __init__(self) -> None:
        self.packer = _new_packer()
        self.rows: list[list[Any]] = []
        self.proc_by_obj: dict[int, int] = {}
        self.proc_by_bytes: dict[bytes, int] = {}
        self.procs: list[bytes] = []
        self.sb_by_obj: dict[int, int] = {}
        self.sb_by_bytes: dict[bytes, int] = {}
        self.sandboxes: list[bytes] = []
        self.interned: list[Any] = []  # keeps the maps interned by id() alive while the block fills
        self.kinds: list[str | None] = []
        self.times: list[int] = []  # of the events, in order
        self.event_sandboxes: list[int | None] = []  # their sandbox index
        self.alerts = 0

    def _intern(self, obj: dict[str, Any], by_obj: dict[int, int], by_bytes: dict[bytes, int],
                table: list[bytes]) -> int:
        # Identity first (the enricher shares one dict per process); content second.
        idx = by_obj.get(id(obj))
        if idx is None:
            packed = self.packer.pack(obj)
            idx = by_bytes.get(packed)
            if idx is None:
                idx = len(table)
                table.append(packed)
                by_bytes[packed] = idx
            by_obj[id(obj)] = idx
            self.interned.append(obj)  # its id() stays its own
        return idx

    def _refs(self, ev: Event) -> tuple[int | None, int | None]:
        proc = ev.process
        if proc:
            pidx = self.proc_by_obj.get(id(proc))
            if pidx is None:
                pidx = self._intern(proc, self.proc_by_obj, self.proc_by_bytes, self.procs)
        else:
            pidx = None
        sb = ev.sandbox
        if sb is not None:
            sidx = self.sb_by_obj.get(id(sb))
            if sidx is None:
                sidx = self._intern(sb, self.sb_by_obj, self.sb_by_bytes, self.sandboxes)
        else:
            sidx = None
        return pidx, sidx

    def add(self, item: Any) -> int:
        """One record's row (an Event, Alert, ActionRecord or (time_ns, summary)); the rows so far."""
        rows = self.rows
        if type(item) is not Event:
            rows.append(self.row(item))
            return len(rows)
        pidx, sidx = self._refs(item)
        self.kinds.append(item.kind)
        self.times.append(item.time_ns)
        self.event_sandboxes.append(sidx)
        rows.append([item.id, pidx, item.file, item.net, item.container, item.llm, item.detail,
                     item.result, item.verdict, item.source, item.cgroup_id])
        return len(rows)

    def full_event_row(self, ev: Event) -> list[Any]:
        """An alert's copy of its event (self-contained: kind, time and sandbox included)."""
        pidx, sidx = self._refs(ev)
        return [ev.kind, ev.time_ns, sidx, ev.id, pidx, ev.file, ev.net, ev.container, ev.llm, ev.detail,
                ev.result, ev.verdict, ev.source, ev.cgroup_id]

    def row(self, item: Any) -> list[Any]:
        self.kinds.append(None)
        if isinstance(item, Alert):
            self.alerts += 1
            return [REC_ALERT, item.time_ns, {f: getattr(item, f) for f in _ALERT_FIELDS},
                    self.full_event_row(item.event)]
        if isinstance(item, ActionRecord):
            return [REC_ACTION, item.time_ns, {f: getattr(item, f) for f in _ACTION_FIELDS}]
        time_ns, summary = item
        return [REC_SUMMARY, time_ns, summary]

    def split(self) -> tuple[_BlockEncoder, _BlockEncoder]:
        """The rows in two blocks (for one too big to write); both keep the whole tables."""
        half = len(self.rows) // 2
        events = sum(kind is not None for kind in self.kinds[:half])
        parts = []
        for rows, kinds, times, sbs in ((self.rows[:half], self.kinds[:half], self.times[:events],
                                         self.event_sandboxes[:events]),
                                        (self.rows[half:], self.kinds[half:], self.times[events:],
                                         self.event_sandboxes[events:])):
            part = _BlockEncoder()
            part.procs, part.sandboxes = self.procs, self.sandboxes
            part.rows, part.kinds, part.times, part.event_sandboxes = rows, kinds, times, sbs
            part.alerts = sum(kind is None and row[0] == REC_ALERT for kind, row in zip(kinds, rows, strict=True))
            parts.append(part)
        return parts[0], parts[1]

    def encode(self) -> bytes:
        """The block's bytes."""
        pack = self.packer.pack
        try:
            body = pack(self.rows)
        except (OverflowError, ValueError, TypeError):
            self.packer = _new_packer()
            pack = self.packer.pack
            body = pack([_sanitize(r) for r in self.rows])
        times = self.times
        deltas = [b - a for a, b in zip(times, times[1:], strict=False)]
        if times:
            deltas.insert(0, times[0])
        header = [BLOCK_FORMAT, self.procs, self.sandboxes, self.kinds, deltas, self.event_sandboxes]
        return pack(header) + body


# ---------------------------------------------------------------------------------------------
# Segment index (what a .idx file holds, or what a scan of a segment finds)


@dataclass
class SegmentIndex:
    path: str
    bytes: int = 0
    records: int = 0
    events: int = 0
    alerts: int = 0
    first_ns: int = 0
    last_ns: int = 0
    sandboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False  # an .idx was written at close (else: found by scanning)

    def note(self, rec_type: int, time_ns: int, sandbox: dict[str, Any] | None) -> None:
        self.records += 1
        if rec_type == REC_ALERT:
            self.alerts += 1
        if rec_type != REC_EVENT:
            return
        self.events += 1
        if time_ns:  # the time range is the events' (alerts and the summary are stamped later)
            self.first_ns = time_ns if not self.first_ns else min(self.first_ns, time_ns)
            self.last_ns = max(self.last_ns, time_ns)
        if sandbox is None or sandbox.get("id") is None:
            return
        sid = str(sandbox["id"])
        entry = self.sandboxes.get(sid)
        if entry is None:
            entry = self.sandboxes[sid] = {"name": sandbox.get("name"), "runtime": sandbox.get("runtime"),
                                           "first_ns": time_ns, "last_ns": time_ns, "events": 0}
        entry["events"] += 1
        if time_ns:
            entry["first_ns"] = min(entry["first_ns"] or time_ns, time_ns)
            entry["last_ns"] = max(entry["last_ns"], time_ns)

    def add_block(self, encoder: _BlockEncoder, records: int) -> None:
        """What one written block adds: counts, the events' time range, per-sandbox ranges."""
        self.records += records
        self.alerts += encoder.alerts
        times = encoder.times
        if not times:
            return
        self.events += len(times)
        first, last = min(times), max(times)
        self.first_ns = first if not self.first_ns else min(self.first_ns, first)
        self.last_ns = max(self.last_ns, last)
        counts = collections.Counter(encoder.event_sandboxes)
        ranges: dict[int | None, list[int]] = {}
        if len(counts) == 1:
            ranges[next(iter(counts))] = [first, last]
        else:
            for sidx, t in zip(encoder.event_sandboxes, times, strict=True):
                span = ranges.get(sidx)
                if span is None:
                    ranges[sidx] = [t, t]
                elif t < span[0]:
                    span[0] = t
                elif t > span[1]:
                    span[1] = t
        for sidx, count in counts.items():
            if sidx is None:
                continue
            sandbox = _unpack(encoder.sandboxes[sidx])
            if not isinstance(sandbox, dict) or sandbox.get("id") is None:
                continue
            sid = str(sandbox["id"])
            lo, hi = ranges[sidx]
            entry = self.sandboxes.get(sid)
            if entry is None:
                self.sandboxes[sid] = {"name": sandbox.get("name"), "runtime": sandbox.get("runtime"),
                                       "first_ns": lo, "last_ns": hi, "events": count}
                continue
            entry["events"] += count
            entry["first_ns"] = min(entry["first_ns"] or lo, lo)
            entry["last_ns"] = max(entry["last_ns"], hi)

    def to_json(self) -> dict[str, Any]:
        return {"segment": os.path.basename(self.path), "bytes": self.bytes, "records": self.records,
                "events": self.events, "alerts": self.alerts, "first_ns": self.first_ns,
                "last_ns": self.last_ns, "sandboxes": self.sandboxes}


def _write_private(path: str, data: bytes) -> None:
    """Atomically replace path with data, mode 0600."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _segment_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if n.endswith(SEGMENT_SUFFIX) and n[: -len(SEGMENT_SUFFIX)].isdigit())


def _index_path(segment: str) -> str:
    return segment[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX


# ---------------------------------------------------------------------------------------------
# Writer


class JournalSink(Sink):
    """Appends every event, alert, action and the summary to a journal directory.

    Never raises into the pipeline: a failed write is counted in stats()["errors"] with the
    last error message, and the records of that block are counted as lost.
    """

    name = "journal"

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
        self._encoder = _BlockEncoder()  # the block being filled (held by the lock)
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

    # -- Sink interface -----------------------------------------------------------------------

    def on_event(self, record: Any) -> None:
        """An Event (also on_alert, on_action). Its row is made now, on the judging thread, while
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

    on_alert = on_action = on_event

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
        encoder, self._encoder = self._encoder, _BlockEncoder()
        if self._finished:  # records after close() have nowhere to go: counted, not written
            self.counters["records_after_close"] += len(encoder.rows)
            return
        try:
            self._write_block(encoder)
        except Exception as exc:  # the journal must never take the pipeline down
            self.counters["errors"] += 1
            self.counters["records_lost"] += len(encoder.rows)
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _write_block(self, encoder: _BlockEncoder) -> None:
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
        existing = _segment_files(self.directory)
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
                _write_private(_index_path(index.path), json.dumps(index.to_json()).encode())
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
        every = _segment_files(self.directory)
        sizes = {s: _file_size(s) for s in every}
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
                info = _load_index(seg)
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
            info = info or _load_index(seg)
            size = os.fstat(fd).st_size
            os.unlink(seg)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_index_path(seg))
        finally:
            os.close(fd)
        self.counters["dropped_segments"] += 1
        self.counters["dropped_bytes"] += size
        if info is not None:
            self.counters["dropped_records"] += info.records
            self.counters["dropped_events"] += info.events
        return True


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _load_index(segment: str) -> SegmentIndex | None:
    """The .idx of a segment if it exists and still describes it (same size), else None."""
    try:
        with open(_index_path(segment), "rb") as f:
            data = json.loads(f.read())
        size = os.stat(segment).st_size
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("bytes") != size:
        return None
    return SegmentIndex(path=segment, bytes=size, records=int(data.get("records", 0)),
                        events=int(data.get("events", 0)), alerts=int(data.get("alerts", 0)),
                        first_ns=int(data.get("first_ns", 0)), last_ns=int(data.get("last_ns", 0)),
                        sandboxes=dict(data.get("sandboxes") or {}), complete=True)


# ---------------------------------------------------------------------------------------------
# Reader


@dataclass(slots=True)
class Record:
    """One journaled record. value: Event | Alert | ActionRecord | dict (summary)."""
    type: str  # event | alert | action | summary
    time_ns: int  # of the event (for an alert: of its event), else when it was written
    value: Any
    sandbox_id: str | None = None
    kind: str = ""  # the event kind (for alerts: their event's kind)


class _Block:
    """A decoded block header; `unpacker` is positioned at its first row."""

    __slots__ = ("segment", "offset", "packed_procs", "procs", "sandboxes", "sb_ids", "kinds", "times",
                 "event_sandboxes", "unpacker")

    def __init__(self, segment: str, offset: int, raw: bytes) -> None:
        self.segment = segment
        self.offset = offset
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True,
                                         max_buffer_size=max(len(raw), 1), unicode_errors=UNICODE_ERRORS)
        self.unpacker.feed(raw)
        fmt, packed_procs, packed_sandboxes, kinds, deltas, event_sandboxes = self.unpacker.unpack()
        if fmt != BLOCK_FORMAT:
            raise ValueError(f"block format {fmt}, this reader knows {BLOCK_FORMAT}")
        if len(deltas) != len(event_sandboxes) or len(deltas) > len(kinds) or \
                self.unpacker.read_array_header() != len(kinds):
            raise ValueError("block columns disagree")
        self.packed_procs: list[bytes] = packed_procs
        self.procs: list[Any] = [None] * len(packed_procs)  # decoded on first use
        self.sandboxes: list[Any] = [_unpack(b) for b in packed_sandboxes]
        self.sb_ids = [str(sb["id"]) if isinstance(sb, dict) and sb.get("id") is not None else None
                       for sb in self.sandboxes]
        self.kinds: list[str | None] = kinds
        self.times: list[int] = list(itertools.accumulate(deltas))
        self.event_sandboxes: list[int | None] = event_sandboxes

    def process(self, pidx: int | None) -> dict[str, Any]:
        if pidx is None:
            return {}
        process = self.procs[pidx]
        if process is None:
            process = self.procs[pidx] = _unpack(self.packed_procs[pidx])
        return process

    def event(self, kind: str, time_ns: int, sidx: int | None, row: list[Any]) -> Event:
        return Event(kind=kind, time_ns=time_ns, id=row[0], process=self.process(row[1]),
                     sandbox=self.sandboxes[sidx] if sidx is not None else None, file=row[2], net=row[3],
                     container=row[4], llm=row[5], detail=row[6], result=row[7], verdict=row[8],
                     source=row[9], cgroup_id=row[10])

    def full_event(self, row: list[Any]) -> Event:
        kind, time_ns, sidx = row[0], row[1], row[2]
        return self.event(kind, time_ns, sidx, row[3:])


class JournalError(Exception):
    """The journal cannot be opened at all (missing, not a journal)."""


class JournalReader:
    """Reads a journal directory (or a single segment file). Damage never raises: it is reported in
    `warnings` ("file:offset: ...") and reading goes on past it where a later frame checks out."""

    def __init__(self, path: str | os.PathLike[str], on_warning: Callable[[str], None] | None = None) -> None:
        self.path = os.fspath(path)
        self.warnings: list[str] = []
        self._on_warning = on_warning
        if os.path.isdir(self.path):
            self.segments = _segment_files(self.path)
            if not self.segments:
                raise JournalError(f"{self.path}: not a journal (no *{SEGMENT_SUFFIX} segments)")
        elif os.path.isfile(self.path):
            self.segments = [self.path]
        else:
            raise JournalError(f"{self.path}: no such journal")
        self._decompressor = zstandard.ZstdDecompressor()

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._on_warning is not None:
            self._on_warning(message)

    def total_bytes(self) -> int:
        return sum(_file_size(s) for s in self.segments)

    # -- frames and blocks --------------------------------------------------------------------

    def frames(self, segment: str) -> Iterator[tuple[int, int, bytes]]:
        """(offset, frame type, payload) of every intact frame of a segment."""
        try:
            with open(segment, "rb") as f:
                data = f.read()
        except OSError as exc:
            self._warn(f"{segment}: cannot read: {exc.strerror}")
            return
        if not data.startswith(FILE_MAGIC):
            if len(data) < len(FILE_MAGIC) and FILE_MAGIC.startswith(data):
                self._warn(f"{segment}:0: torn segment header ({len(data)} bytes), skipped")
            else:
                self._warn(f"{segment}:0: not a journal segment, skipped")
            return
        pos = len(FILE_MAGIC)
        end = len(data)
        hsize = FRAME_HEADER.size
        while pos < end:
            damage = None
            if end - pos < hsize:
                damage = "torn"
            else:
                magic, ftype, _codec, _res, length, crc = FRAME_HEADER.unpack_from(data, pos)
                if magic != FRAME_MAGIC or length > MAX_FRAME_BYTES:
                    damage = "corrupt"
                elif pos + hsize + length > end:
                    damage = "torn"
                else:
                    payload = data[pos + hsize: pos + hsize + length]
                    if zlib.crc32(payload, zlib.crc32(data[pos + 4: pos + 12])) == crc:
                        yield pos, ftype, payload
                        pos += hsize + length
                        continue
                    damage = "torn" if pos + hsize + length == end else "corrupt"
            if damage == "torn" and self._find_frame(data, pos + 1) < 0:
                self._warn(f"{segment}:{pos}: torn last frame ({end - pos} bytes), skipped")
                return
            nxt = self._find_frame(data, pos + 1)
            if nxt < 0:
                self._warn(f"{segment}:{pos}: corrupt frame, {end - pos} bytes to the end skipped")
                return
            self._warn(f"{segment}:{pos}: corrupt frame, {nxt - pos} bytes skipped, resumed at {nxt}")
            pos = nxt

    @staticmethod
    def _find_frame(data: bytes, start: int) -> int:
        """Offset of the next frame at or after start whose CRC checks out, or -1."""
        hsize = FRAME_HEADER.size
        pos = data.find(FRAME_MAGIC, start)
        while pos >= 0:
            if pos + hsize <= len(data):
                _m, _t, _c, _r, length, crc = FRAME_HEADER.unpack_from(data, pos)
                stop = pos + hsize + length
                if length <= MAX_FRAME_BYTES and stop <= len(data) and \
                        zlib.crc32(data[pos + hsize: stop], zlib.crc32(data[pos + 4: pos + 12])) == crc:
                    return pos
            pos = data.find(FRAME_MAGIC, pos + 1)
        return -1

    def blocks(self, segments: Iterable[str] | None = None,
               progress: Callable[[int], None] | None = None) -> Iterator[_Block]:
        for segment in self.segments if segments is None else segments:
            done = 0
            for offset, ftype, payload in self.frames(segment):
                if progress is not None:
                    progress(offset - done)
                    done = offset
                if ftype != FRAME_BLOCK:
                    continue
                try:
                    block = _Block(segment, offset, self._decompressor.decompress(payload))
                except Exception as exc:  # CRC passed, content not: a writer bug, not a crash
                    self._warn(f"{segment}:{offset}: undecodable block skipped ({exc})")
                    continue
                yield block
            if progress is not None:
                progress(_file_size(segment) - done)

    # -- records ------------------------------------------------------------------------------

    def records(self, *, sandbox: str | None = None, since_ns: int | None = None,
                until_ns: int | None = None, kinds: set[str] | frozenset[str] | None = None,
                types: set[str] | None = None, skipped: collections.Counter[str] | None = None,
                progress: Callable[[int], None] | None = None) -> Iterator[Record]:
        """Records in journal order, filtered. `kinds`: only events of these kinds are decoded and
        yielded (the others are counted by kind in `skipped`); alerts, actions and summaries are
        yielded unless `types` leaves them out. A sandbox filter keeps records without a sandbox
        (actions, summaries) only when their target names it."""
        segments = self._segments_in_range(sandbox, since_ns, until_ns)
        want_events = types is None or "event" in types
        for block in self.blocks(segments, progress):
            try:
                yield from self._block_records(block, sandbox, since_ns, until_ns, kinds, types, skipped,
                                               want_events)
            except (IndexError, KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
                self._warn(f"{block.segment}:{block.offset}: malformed block, rest of it skipped ({exc})")

    def _block_records(self, block: _Block, sandbox: str | None, since_ns: int | None, until_ns: int | None,
                       kinds: set[str] | frozenset[str] | None, types: set[str] | None,
                       skipped: collections.Counter[str] | None, want_events: bool) -> Iterator[Record]:
        unpack, skip = block.unpacker.unpack, block.unpacker.skip
        times, event_sandboxes, sb_ids = block.times, block.event_sandboxes, block.sb_ids
        n = 0  # index into the event columns
        for kind in block.kinds:
            if kind is None:  # alert, action, summary
                rec = self._other(unpack(), block)
                if rec is None or (types is not None and rec.type not in types):
                    continue
                if (since_ns is not None and rec.time_ns < since_ns) or \
                        (until_ns is not None and rec.time_ns > until_ns):
                    continue
                if sandbox is not None and rec.sandbox_id != sandbox:
                    continue
                yield rec
                continue
            time_ns, sidx = times[n], event_sandboxes[n]
            n += 1
            if not want_events or (since_ns is not None and time_ns < since_ns) or \
                    (until_ns is not None and time_ns > until_ns):
                skip()
                continue
            sid = sb_ids[sidx] if sidx is not None else None
            if sandbox is not None and sid != sandbox:
                skip()
                continue
            if kinds is not None and kind not in kinds:
                skip()
                if skipped is not None:
                    skipped[kind] += 1
                continue
            yield Record("event", time_ns, block.event(kind, time_ns, sidx, unpack()), sid, kind)

    def _other(self, row: list[Any], block: _Block) -> Record | None:
        tag = row[0]
        if tag == REC_ALERT:
            ev_row = row[3]
            event = block.full_event(ev_row)
            fields = row[2]
            alert = Alert(rule=fields["rule"], severity=fields["severity"], action=fields["action"],
                          tags=list(fields.get("tags") or []), event=event,
                          description=fields.get("description", ""), matched=fields.get("matched") or {},
                          mode=fields.get("mode", "enforce"), time_ns=fields.get("time_ns", row[1]),
                          id=fields.get("id", ""))
            sid = block.sb_ids[ev_row[2]] if ev_row[2] is not None else None
            return Record("alert", event.time_ns, alert, sid, event.kind)  # filtered as its event is
        if tag == REC_ACTION:
            fields = row[2]
            record = ActionRecord(**{k: fields[k] for k in _ACTION_FIELDS if k in fields})
            target = record.target if isinstance(record.target, dict) else {}
            sid = target.get("sandbox")
            return Record("action", row[1], record, str(sid) if sid is not None else None)
        if tag == REC_SUMMARY:
            return Record("summary", row[1], row[2], None)
        self._warn(f"{block.segment}:{block.offset}: unknown record type {tag} skipped")
        return None

    def events(self, **filters: Any) -> Iterator[Event]:
        for rec in self.records(types={"event"}, **filters):
            yield rec.value

    # -- index --------------------------------------------------------------------------------

    def index(self) -> list[SegmentIndex]:
        """Per segment: its .idx where it is current, else what a scan finds."""
        out = []
        for seg in self.segments:
            info = _load_index(seg)
            out.append(info if info is not None else self._scan(seg))
        return out

    def _scan(self, segment: str) -> SegmentIndex:
        """The index of a segment from its block headers (rows are read only to count alerts)."""
        info = SegmentIndex(path=segment, bytes=_file_size(segment))
        for block in self.blocks([segment]):
            for sidx, time_ns in zip(block.event_sandboxes, block.times, strict=True):
                info.note(REC_EVENT, time_ns, block.sandboxes[sidx] if sidx is not None else None)
            try:
                for kind in block.kinds:
                    if kind is None:
                        row = block.unpacker.unpack()
                        info.note(row[0], row[1], None)
                    else:
                        block.unpacker.skip()
            except (IndexError, TypeError, ValueError, msgpack.UnpackException):
                continue
        return info

    def sandboxes(self) -> dict[str, dict[str, Any]]:
        """Sandbox id -> {name, runtime, first_ns, last_ns, events} over the whole journal."""
        merged: dict[str, dict[str, Any]] = {}
        for info in self.index():
            for sid, entry in info.sandboxes.items():
                cur = merged.get(sid)
                if cur is None:
                    merged[sid] = dict(entry)
                    continue
                cur["events"] += entry["events"]
                cur["first_ns"] = min(cur["first_ns"] or entry["first_ns"], entry["first_ns"] or cur["first_ns"])
                cur["last_ns"] = max(cur["last_ns"], entry["last_ns"])
        return merged

    def _segments_in_range(self, sandbox: str | None, since_ns: int | None,
                           until_ns: int | None) -> list[str]:
        if sandbox is None and since_ns is None and until_ns is None:
            return list(self.segments)
        keep = []
        for seg in self.segments:
            info = _load_index(seg)
            if info is None:  # unindexed (the writer died): read it, it is small anyway
                keep.append(seg)
                continue
            if sandbox is not None and sandbox not in info.sandboxes:
                continue
            if since_ns is not None and info.last_ns and info.last_ns < since_ns:
                continue
            if until_ns is not None and info.first_ns and info.first_ns > until_ns:
                continue
            keep.append(seg)
        return keep


def open_journal(path: str | os.PathLike[str], on_warning: Callable[[str], None] | None = None) -> JournalReader:
    return JournalReader(path, on_warning)


__all__ = ["JournalSink", "JournalReader", "JournalError", "Record", "SegmentIndex", "open_journal",
           "frame", "FILE_MAGIC", "FRAME_MAGIC", "FRAME_HEADER"]
