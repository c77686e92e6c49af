"""The forensic journal: its on-disk format, the writer the journal sink runs, the reader replay uses.

`format` holds the framing, the block layout and the segment files; `writer` appends records
(`JournalWriter`, wrapped as a sink by monitor/sinks/journal.py); `reader` reads them back
(`JournalReader`), damage reported as warnings, never raised. docs/journal.md describes it all.
"""

from __future__ import annotations

from monitor.journal.format import (
    FILE_MAGIC,
    FRAME_BLOCK,
    FRAME_HEADER,
    FRAME_MAGIC,
    FRAME_META,
    SegmentIndex,
    frame,
)
from monitor.journal.reader import JournalError, JournalReader, Record, fewer_collections, open_journal
from monitor.journal.writer import JournalWriter

__all__ = ["FILE_MAGIC", "FRAME_BLOCK", "FRAME_HEADER", "FRAME_MAGIC", "FRAME_META", "JournalError",
           "JournalReader", "JournalWriter", "Record", "SegmentIndex", "fewer_collections", "frame",
           "open_journal"]
