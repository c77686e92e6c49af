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
