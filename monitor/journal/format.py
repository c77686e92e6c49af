"""The journal's on-disk format: framing, the block layout, segment files and their index.

Layout of a journal directory (0700; every file 0600):

    00000001.seg   segment: an 8-byte file magic, then frames
    00000001.idx   JSON index of a closed segment (sandboxes, time range, counts); a segment
                   without one (the monitor died) is scanned on open instead

A frame is a 16-byte header (sync magic, type, length, CRC32 of header fields + payload) and a
payload. A block frame holds one zstd-compressed msgpack block of up to `block_records` records
(layout: `BlockEncoder`, read back by `Block`); process and sandbox maps repeated inside a block
are stored once and referenced by index, which keeps a typical exec/open/connect mix under 20
bytes per event on disk, and the kinds, times and sandboxes are columns in the block header, so a
reader skips the events it does not want without decoding them. The sync magic lets a reader find
the next intact frame after a damaged one.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from monitor.event import ActionRecord, Alert, Event

FILE_MAGIC = b"SMJRNL\x00\x01"
FRAME_MAGIC = b"\xa7J\x8fR"
FRAME_HEADER = struct.Struct("<4sBBHII")  # magic, type, codec, reserved, payload length, crc32
FRAME_META = 1  # JSON, uncompressed: segment metadata
FRAME_BLOCK = 2  # zstd(msgpack(block))
MAX_FRAME_BYTES = 64 << 20
MAX_BLOCK_RAW_BYTES = 8 << 20  # a block over this (before compression) is split in two
BLOCK_FORMAT = 3

# Record tags (first element of each row in a block).
REC_EVENT, REC_ALERT, REC_ACTION, REC_SUMMARY, REC_UNDELIVERED = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class Undelivered:
    """An alert an output could not deliver (its fields: output, reason, rule, alert_id, sandbox_id,
    ...), kept so `monitor replay --alerts-to` can send it again."""
    time_ns: int
    fields: dict[str, Any]
RECORD_TYPES = {REC_EVENT: "event", REC_ALERT: "alert", REC_ACTION: "action", REC_SUMMARY: "summary"}

SEGMENT_SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"

_ALERT_FIELDS = ("id", "rule", "severity", "action", "mode", "tags", "description", "matched", "time_ns")
ACTION_FIELDS = ("action", "rule", "target", "outcome", "latency_ms", "message", "alert_id", "time_ns")


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


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, unicode_errors=UNICODE_ERRORS)


def frame(frame_type: int, payload: bytes) -> bytes:
    """One frame: header + payload. The CRC covers type, codec, length and payload."""
    header = FRAME_HEADER.pack(FRAME_MAGIC, frame_type, 0, 0, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(header[4:12]))
    return header[:12] + struct.pack("<I", crc) + payload


# ---------------------------------------------------------------------------------------------
# Block encoding


class BlockEncoder:
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
        """One record's row (an Event, Alert, ActionRecord, Undelivered or (time_ns, summary)); the rows so far."""
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
            return [REC_ACTION, item.time_ns, {f: getattr(item, f) for f in ACTION_FIELDS}]
        if isinstance(item, Undelivered):
            return [REC_UNDELIVERED, item.time_ns, item.fields]
        time_ns, summary = item
        return [REC_SUMMARY, time_ns, summary]

    def split(self) -> tuple[BlockEncoder, BlockEncoder]:
        """The rows in two blocks (for one too big to write); both keep the whole tables."""
        half = len(self.rows) // 2
        events = sum(kind is not None for kind in self.kinds[:half])
        parts = []
        for rows, kinds, times, sbs in ((self.rows[:half], self.kinds[:half], self.times[:events],
                                         self.event_sandboxes[:events]),
                                        (self.rows[half:], self.kinds[half:], self.times[events:],
                                         self.event_sandboxes[events:])):
            part = BlockEncoder()
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

    def add_block(self, encoder: BlockEncoder, records: int) -> None:
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
            sandbox = unpack(encoder.sandboxes[sidx])
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


def write_private(path: str, data: bytes) -> None:
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


def segment_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names
                  if n.endswith(SEGMENT_SUFFIX) and n[: -len(SEGMENT_SUFFIX)].isdigit())


def index_path(segment: str) -> str:
    return segment[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def load_index(segment: str) -> SegmentIndex | None:
    """The .idx of a segment if it exists and still describes it (same size), else None."""
    try:
        with open(index_path(segment), "rb") as f:
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
# Block decoding


class Block:
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
        self.sandboxes: list[Any] = [unpack(b) for b in packed_sandboxes]
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
            process = self.procs[pidx] = unpack(self.packed_procs[pidx])
        return process

    def event(self, kind: str, time_ns: int, sidx: int | None, row: list[Any]) -> Event:
        return Event(kind=kind, time_ns=time_ns, id=row[0], process=self.process(row[1]),
                     sandbox=self.sandboxes[sidx] if sidx is not None else None, file=row[2], net=row[3],
                     container=row[4], llm=row[5], detail=row[6], result=row[7], verdict=row[8],
                     source=row[9], cgroup_id=row[10])

    def full_event(self, row: list[Any]) -> Event:
        kind, time_ns, sidx = row[0], row[1], row[2]
        return self.event(kind, time_ns, sidx, row[3:])
