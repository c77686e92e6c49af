"""The forensic report: a journaled sandbox session as one self-contained web page
(`monitor report`, `monitor run --report`). model.py builds the page's data from a journal
(the timeline's process trees), html.py writes the page (page.html, page.css, page.js inline)."""

from __future__ import annotations

from typing import Any

from monitor.report.html import embed_json, render_page, write_page
from monitor.report.model import Limits, Replayed, ReportOptions, build_report_data


def write_report(options: ReportOptions, out: str, replayed: Replayed | None = None) -> tuple[dict[str, Any], int]:
    """Build the page from the journal and write it to `out`: (its data, its size in bytes).
    JournalError if there is no journal; OSError if `out` cannot be written."""
    data = build_report_data(options, replayed)
    return data, write_page(data, out)


__all__ = ["Limits", "Replayed", "ReportOptions", "build_report_data", "embed_json", "render_page", "write_page",
           "write_report"]
