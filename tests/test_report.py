"""The report page's data embedding (pure logic): journal text can never end the data element
or start markup, and reads back unchanged."""

from __future__ import annotations

import json

from monitor.report import embed_json, render_page

HOSTILE = ["</script><script>alert(1)</script>", "<!--", "a\u2028b\u2029c", "&amp;", "\ud800 lone", "é ü 字",
           "<img src=x onerror=alert(1)>"]


def test_embedded_json_has_no_markup_and_reads_back() -> None:
    text = embed_json({"strings": HOSTILE, HOSTILE[0]: 1})
    assert text.isascii()
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == {"strings": HOSTILE, HOSTILE[0]: 1}


def test_page_holds_the_data_once_inside_its_json_element_and_fetches_nothing() -> None:
    page = render_page({"sessions": [{"sandbox": {"id": "sb-1", "name": HOSTILE[0]}}], "strings": HOSTILE})
    head, _, rest = page.partition('<script type="application/json" id="report-data">')
    data, _, tail = rest.partition("</script>")
    assert json.loads(data)["strings"] == HOSTILE
    assert "<script>alert" not in head + tail and "<img" not in head + tail
    assert "default-src 'none'" in head and "script-src 'sha256-" in head
    assert "http://" not in page and "https://" not in page and "src=" not in head + tail


# ---------------------------------------------------------------------------------------------
# the page's data from a journal, and the command's bad input

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from monitor.event import Event  # noqa: E402
from monitor.report import Limits, ReportOptions, build_report_data  # noqa: E402
from monitor.sinks.journal import JournalSink  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MONITOR = str(ROOT / ".venv" / "bin" / "monitor")


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Event]]:
    sys.path.insert(0, str(ROOT))
    from tests.bench.journal import synthetic_events

    events = synthetic_events(3000)
    directory = tmp_path_factory.mktemp("report") / "journal"
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    for event in events:
        sink.on_event(event)
    sink.close({"events": len(events)})
    return directory, events


def test_time_window_keeps_the_events_inside_it(journal: tuple[Path, list[Event]]) -> None:
    directory, events = journal
    since, until = events[1000].time_ns, events[2000].time_ns
    data = build_report_data(ReportOptions(journal=str(directory), since_ns=since, until_ns=until))
    (session,) = data["sessions"]
    assert session["events"] == sum(1 for e in events if since <= e.time_ns <= until)
    assert data["window"]["since"] is not None and data["window"]["until"] is not None


def test_bounds_keep_ancestors_and_count_what_is_left_out(journal: tuple[Path, list[Event]]) -> None:
    directory, events = journal
    limits = Limits(processes=40, items_per_process=3, marks=50)
    data = build_report_data(ReportOptions(journal=str(directory), limits=limits))
    (session,) = data["sessions"]
    processes = session["processes"]
    assert session["processes_total"] > 40 >= len(processes) > 0
    assert all(p["parent"] is None or p["parent"] < i for i, p in enumerate(processes))  # parents first
    assert all(len(p["connections"]) <= 3 and len(p["files"]) <= 6 for p in processes)
    assert any(p["more_files"] for p in processes)
    marks = sum(1 for p in processes for item in (*p["files"], *p["connections"]) if item.get("mark"))
    assert marks == 50 and data["marks_hidden"] > 0
    assert all(session["paths"][f["p"]].startswith("/") for p in processes for f in p["files"])


def test_report_command_bad_input_is_one_line(journal: tuple[Path, list[Event]], tmp_path: Path) -> None:
    directory, _ = journal
    bad_rule = tmp_path / "bad.yaml"
    bad_rule.write_text("- rule: Broken\n  when: [open]\n  condition: event.file.path ==\n  severity: low\n")
    cases = [([str(tmp_path / "none")], "no such journal"),
             ([str(directory), "--sandbox", "sb-nope"], "--sandbox sb-nope: not in"),
             ([str(directory), "--since", "yesterday-ish"], "cannot read time"),
             ([str(directory), "--rules", str(bad_rule)], str(bad_rule)),
             ([str(directory), "--out", str(tmp_path / "no-dir" / "x.html")], "cannot write")]
    for argv, message in cases:
        out = ["--out", str(tmp_path / "x.html")] if "--out" not in argv else []
        proc = subprocess.run([MONITOR, "report", *argv, *out], capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and message in proc.stderr, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.html").exists()
