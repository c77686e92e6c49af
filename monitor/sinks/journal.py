"""The journal sink: every event, alert, action and the final summary to a journal directory.

The format, the writer and the reader are the `monitor.journal` package; this is the writer
seen as a sink. It runs on the judging thread and never waits for a disk (see
monitor/journal/writer.py).
"""

from __future__ import annotations

from monitor.journal.writer import JournalWriter
from monitor.sinks import Sink


class JournalSink(JournalWriter, Sink):
    """A JournalWriter as a sink: events, alerts and action records are appended as they come;
    close(summary) writes the summary and closes the journal. Takes JournalWriter's settings."""

    name = "journal"
    on_event = on_alert = on_action = JournalWriter.append


__all__ = ["JournalSink"]
