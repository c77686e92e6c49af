"""The journal's reader: records back from a journal directory (or one segment), filtered.

Damage never raises. On read, a torn last frame (the writer died mid-write) is skipped with a
warning; a damaged frame in the middle is skipped with a warning and reading resumes at the next
frame that checks out (the sync magic makes that findable). Warnings read "FILE:OFFSET: what".
"""

from __future__ import annotations

import collections
import gc
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

from monitor.event import ActionRecord, Alert, Event
from monitor.journal.format import (
    ACTION_FIELDS,
    FILE_MAGIC,
    FRAME_BLOCK,
    FRAME_HEADER,
    FRAME_MAGIC,
    MAX_FRAME_BYTES,
    REC_ACTION,
    REC_ALERT,
    REC_EVENT,
    REC_SUMMARY,
    REC_UNDELIVERED,
    SEGMENT_SUFFIX,
    Block,
    SegmentIndex,
    file_size,
    load_index,
    segment_files,
)


@dataclass(slots=True)
class Record:
    """One journaled record. value: Event | Alert | ActionRecord | dict (summary, undelivered)."""
    type: str  # event | alert | action | summary | undelivered
    time_ns: int  # of the event (for an alert: of its event), else when it was written
    value: Any
    sandbox_id: str | None = None
    kind: str = ""  # the event kind (for alerts: their event's kind)


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
            self.segments = segment_files(self.path)
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
        return sum(file_size(s) for s in self.segments)

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
               progress: Callable[[int], None] | None = None) -> Iterator[Block]:
        for segment in self.segments if segments is None else segments:
            done = 0
            for offset, ftype, payload in self.frames(segment):
                if progress is not None:
                    progress(offset - done)
                    done = offset
                if ftype != FRAME_BLOCK:
                    continue
                try:
                    block = Block(segment, offset, self._decompressor.decompress(payload))
                except Exception as exc:  # CRC passed, content not: a writer bug, not a crash
                    self._warn(f"{segment}:{offset}: undecodable block skipped ({exc})")
                    continue
                yield block
            if progress is not None:
                progress(file_size(segment) - done)

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

    def _block_records(self, block: Block, sandbox: str | None, since_ns: int | None, until_ns: int | None,
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

    def _other(self, row: list[Any], block: Block) -> Record | None:
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
            record = ActionRecord(**{k: fields[k] for k in ACTION_FIELDS if k in fields})
            target = record.target if isinstance(record.target, dict) else {}
            sid = target.get("sandbox")
            return Record("action", row[1], record, str(sid) if sid is not None else None)
        if tag == REC_SUMMARY:
            return Record("summary", row[1], row[2], None)
        if tag == REC_UNDELIVERED:
            fields = row[2] if isinstance(row[2], dict) else {}
            sid = fields.get("sandbox_id")
            return Record("undelivered", row[1], fields, str(sid) if sid else None)
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
            info = load_index(seg)
            out.append(info if info is not None else self._scan(seg))
        return out

    def _scan(self, segment: str) -> SegmentIndex:
        """The index of a segment from its block headers (rows are read only to count alerts)."""
        info = SegmentIndex(path=segment, bytes=file_size(segment))
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
            info = load_index(seg)
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


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Reading a journal allocates millions of short-lived, acyclic objects: collecting the young
    generation every 700 allocations (the default) costs a large share of the time and frees
    nothing. For the length of a replay or a report, collect it less often."""
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], 100_000), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
