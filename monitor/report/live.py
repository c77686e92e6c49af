"""`monitor run --report FILE.html`: the page of the run's session, written when the sandbox ends.
Without --journal the run journals into a temporary directory that goes away afterwards."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

from monitor.journal import JournalError
from monitor.report.html import write_page
from monitor.report.model import ReportOptions, build_report_data


def run_reported(run: Callable[[str], int], journal: str | None, out: str) -> int:
    """`run(journal_dir)` runs the sandbox journaling into journal_dir and returns its status; then
    the page of what it journaled from this run's start on is written to `out`. A report that
    cannot be written is one line on stderr and status 1 (checked before the run, too)."""
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        print(f"monitor: --report {out}: cannot write into {folder}", file=sys.stderr)
        return 1
    scratch = None if journal else tempfile.mkdtemp(prefix="monitor-report-")
    started_ns = time.time_ns()
    try:
        status = run(journal or str(scratch))
        try:
            data = build_report_data(ReportOptions(journal=journal or str(scratch), since_ns=started_ns))
            if scratch is not None:
                data["journal"] = "(a temporary journal, removed after the run)"
            size = write_page(data, out)
        except (OSError, JournalError) as exc:
            print(f"monitor: --report {out}: {exc}", file=sys.stderr)
            return status or 1
        print(f"monitor: report {out} ({size:,} bytes)", file=sys.stderr)
        return status
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
