"""The forensic report page (`monitor report`, `monitor run --report`) opened in a real browser:
Debian's headless Chromium driven through its chromedriver by Selenium (nothing is downloaded).
Every page is made from the journal of a real `monitor run` (cgroup and gVisor runtimes, a kill,
a model tool call captured from TLS), or, for the bounds, a synthetic journal of 30,000 events.
A screenshot of each page is kept under a temporary folder whose path is printed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from llm_agent import API_KEY  # noqa: E402
from llm_fake_api import TOOL_COMMAND, FakeApi  # noqa: E402
from monitor_run import MONITOR, monitor_run, needs_root  # noqa: E402

from monitor.event import Event  # noqa: E402
from monitor.sinks.journal import JournalSink  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOTS = Path(tempfile.mkdtemp(prefix="report-screenshots-"))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1600", "--no-first-run", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def make_report(journal: Path, out: Path, *extra: str) -> None:
    proc = subprocess.run([MONITOR, "report", str(journal), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_mode & 0o777 == 0o600


def open_page(browser: WebDriver, page: Path, name: str) -> None:
    browser.get(page.as_uri())
    assert browser.execute_script("return document.body.dataset.ready") == "1"
    shot = SCREENSHOTS / f"{name}.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def shown(elements: list[WebElement]) -> list[WebElement]:
    return [e for e in elements if e.is_displayed()]


def procs(browser: WebDriver, with_context: bool = False) -> list[WebElement]:
    """The process tree's processes that are shown (context: ancestors kept for a shown one)."""
    return [e for e in shown(browser.find_elements(By.CSS_SELECTOR, ".tree .proc"))
            if with_context or "context" not in (e.get_attribute("class") or "")]


def cmd(proc: WebElement) -> str:
    return proc.find_element(By.CSS_SELECTOR, ".head .cmd").get_attribute("textContent") or ""


def filtered(browser: WebDriver) -> None:
    """Wait until the page has applied what was typed (it waits for a pause in typing)."""
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.pending") == "0")


def fill(browser: WebDriver, field: str, text: str) -> None:
    box = browser.find_element(By.ID, field)
    box.clear()
    box.send_keys(text)
    filtered(browser)


def clear_filters(browser: WebDriver) -> None:
    browser.find_element(By.ID, "f-reset").click()
    filtered(browser)


def alert_rows(browser: WebDriver, cls: str = "alert") -> list[WebElement]:
    return shown(browser.find_elements(By.CSS_SELECTOR, f"table.{cls} tbody tr"))


def row_rules(rows: list[WebElement]) -> list[str]:
    return sorted(r.find_element(By.CSS_SELECTOR, "td.rule").text for r in rows)


SUSPICIOUS = r"""
cat /etc/shadow > /dev/null
cat /etc/hostname > /dev/null
echo ZWNobyBoaQo= | base64 -d | sh > /dev/null
(exec 3<>/dev/tcp/127.0.0.1/3333) 2>/dev/null || true
true
"""


def test_suspicious_run_tree_alerts_timeline_filters_and_search(browser: WebDriver, tmp_path: Path) -> None:
    journal, page = tmp_path / "journal", tmp_path / "report.html"
    result = monitor_run(SUSPICIOUS, "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    recorded = sorted(a["rule"] for a in result.alerts)
    assert "Shadow password file read" in recorded and len(recorded) >= 3, recorded
    make_report(journal, page)
    open_page(browser, page, "suspicious")

    # the tree: every exec of the run is a process with its command line
    commands = [cmd(p) for p in procs(browser)]
    for event in result.events("exec"):
        assert " ".join(event["process"]["args"]) in commands
    shadow = next(p for p in procs(browser) if cmd(p) == "cat /etc/shadow")
    assert "alerted" in shadow.get_attribute("class")
    item = shadow.find_element(By.CSS_SELECTOR, "li.item.file.alerted")
    assert "/etc/shadow" in item.text and "Shadow password file read" in item.text
    # the alerts: the table and the red timeline marks are the run's own alerts
    assert row_rules(alert_rows(browser)) == recorded
    assert len(shown(browser.find_elements(By.CSS_SELECTOR, ".timeline .mark.alert"))) == len(recorded)
    header = browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "cgroup" in header and f"{len(recorded)} (" in header
    assert f"{result.summary['events']}:" in header or str(len(result.events())) in header

    fill(browser, "f-path", "/etc/shadow")  # only the process that opened it, its ancestors as context
    assert [cmd(p) for p in procs(browser)] == ["cat /etc/shadow"]
    assert all("/etc/shadow" in li.text for li in shown(shadow.find_elements(By.CSS_SELECTOR, "li.item")))
    assert row_rules(alert_rows(browser)) == ["Shadow password file read"]
    clear_filters(browser)

    fill(browser, "f-address", "3333")
    assert procs(browser) and all(
        any(":3333" in li.text for li in shown(p.find_elements(By.CSS_SELECTOR, "li.item.network")))
        for p in procs(browser))
    clear_filters(browser)

    critical = sorted(a["rule"] for a in result.alerts if a["severity"] == "critical")
    Select(browser.find_element(By.ID, "f-severity")).select_by_value("critical")
    assert row_rules(alert_rows(browser)) == critical
    clear_filters(browser)

    browser.find_element(By.ID, "f-kind-alert").click()  # kinds: alerts off
    assert alert_rows(browser) == []
    assert shown(browser.find_elements(By.CSS_SELECTOR, ".timeline .mark.alert")) == []
    browser.find_element(By.ID, "f-kind-file").click()  # files off: no file item left anywhere
    assert shown(browser.find_elements(By.CSS_SELECTOR, "li.item.file")) == []
    assert shown(browser.find_elements(By.CSS_SELECTOR, ".timeline .mark.file")) == []
    clear_filters(browser)
    assert len(alert_rows(browser)) == len(recorded)

    fill(browser, "f-search", "base64")
    found = [cmd(p) for p in procs(browser)]
    assert "base64 -d" in found and all("base64" in c for c in found), found
    fill(browser, "f-search", "/etc/hostname")  # the script's bash (its command line) and cat (its file)
    found = procs(browser)
    assert "cat /etc/hostname" in [cmd(p) for p in found] and "cat /etc/shadow" not in [cmd(p) for p in found]
    assert all("/etc/hostname" in p.text for p in found)
    status = browser.find_element(By.ID, "filter-status").text
    assert status.startswith(f"showing {len(found)} of {len(commands)} processes")
    clear_filters(browser)
    fill(browser, "f-process", "bin/cat")  # their executable; no command line names it
    assert sorted(cmd(p) for p in procs(browser)) == ["cat /etc/hostname", "cat /etc/shadow"]
    clear_filters(browser)


def test_kill_rule_report_from_monitor_run_report(browser: WebDriver, tmp_path: Path) -> None:
    """`monitor run --report` without --journal: the run journals to a temporary folder."""
    rules, page, marker = tmp_path / "kill.yaml", tmp_path / "kill.html", tmp_path / "secret-token"
    marker.write_text("x\n")
    rules.write_text("- rule: Report test kill on token read\n  description: test\n  when: [open]\n"
                     f"  condition: event.file.path == \"{marker}\"\n  severity: critical\n  action: kill\n"
                     "  tags: [test]\n")
    result = monitor_run(f"cat {marker} > /dev/null; sleep 30; echo never", "--rules", str(rules),
                         "--report", str(page))
    assert result.returncode == 137, result.stderr
    assert [a["action"] for a in result.actions] == ["kill"]
    open_page(browser, page, "kill")
    actions = shown(browser.find_elements(By.CSS_SELECTOR, "ul.actions li.action"))
    assert len(actions) == 1 and "kill (Report test kill on token read): " + result.actions[0]["outcome"] \
        in actions[0].text
    assert len(shown(browser.find_elements(By.CSS_SELECTOR, ".timeline .mark.action"))) == 1
    assert row_rules(alert_rows(browser)) == ["Report test kill on token read"]
    cat = next(p for p in procs(browser) if cmd(p) == f"cat {marker}")
    assert "Report test kill on token read" in cat.text
    assert not [p for p in procs(browser) if cmd(p).startswith("echo")]
    verdicts = browser.find_element(By.CSS_SELECTOR, "dd.verdicts").text
    assert "kill (Report test kill on token read)" in verdicts
    browser.find_element(By.ID, "f-kind-action").click()
    assert shown(browser.find_elements(By.CSS_SELECTOR, "ul.actions li.action")) == []
    assert shown(browser.find_elements(By.CSS_SELECTOR, ".timeline .mark.action")) == []
    clear_filters(browser)


@pytest.mark.gvisor
@pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc not installed (scripts/setup.sh installs it)")
def test_gvisor_run_report(browser: WebDriver, tmp_path: Path) -> None:
    journal, page = tmp_path / "journal", tmp_path / "gvisor.html"
    result = monitor_run("cat /etc/shadow > /dev/null; head -c 1 /etc/hostname > /dev/null", "--runtime", "gvisor",
                         "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    assert "Shadow password file read" in result.alert_rules()
    make_report(journal, page)
    open_page(browser, page, "gvisor")
    header = browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "runtime\ngvisor" in header
    commands = [cmd(p) for p in procs(browser)]
    assert "cat /etc/shadow" in commands and "head -c 1 /etc/hostname" in commands, commands
    assert row_rules(alert_rows(browser)) == sorted(a["rule"] for a in result.alerts)
    fill(browser, "f-process", "bin/head")
    assert [cmd(p) for p in procs(browser)] == ["head -c 1 /etc/hostname"]
    clear_filters(browser)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApi]:
    server = FakeApi(tmp_path_factory.mktemp("llm-api")).start()
    yield server
    server.stop()


def test_model_tool_call_links_to_the_process_it_caused(browser: WebDriver, api: FakeApi, tmp_path: Path) -> None:
    journal, page = tmp_path / "journal", tmp_path / "llm.html"
    agent = [sys.executable, str(TESTS / "llm_agent.py"), "--api", "anthropic", "--base-url", api.url,
             "--ca", str(api.ca_path)]
    result = monitor_run(agent, "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    (caused,) = [e for e in result.events("exec") if e["process"].get("caused_by")]
    make_report(journal, page, "--rules", str(TESTS.parent / "rules"))
    html = page.read_text()
    assert API_KEY not in html and API_KEY.split("SECRET")[1] not in html
    open_page(browser, page, "llm")
    calls = shown(browser.find_elements(By.CSS_SELECTOR, "ul.model-calls > li"))
    assert len(calls) == len(result.events("llm_request")) + len(result.events("llm_response"))
    tool = browser.find_element(By.CSS_SELECTOR, "ul.model-calls .toolcall")
    assert TOOL_COMMAND in tool.text
    (link,) = tool.find_elements(By.CSS_SELECTOR, "a.proc-link")
    assert f"pid {caused['process']['pid']} {TOOL_COMMAND}" in link.text
    link.click()
    target = browser.find_element(By.ID, link.get_attribute("href").split("#")[1])
    assert cmd(target) == TOOL_COMMAND and "flash" in target.get_attribute("class")
    assert "model asked: run " + TOOL_COMMAND in target.text
    assert len(shown(browser.find_elements(By.CSS_SELECTOR, ".timeline .mark.toolcall"))) == 1
    # --rules: the shipped pack again, marked apart; it flags nothing the recording did not
    section = browser.find_element(By.CSS_SELECTOR, ".would-section")
    assert "With the given rules" in section.text
    browser.find_element(By.ID, "f-kind-model").click()
    assert shown(browser.find_elements(By.CSS_SELECTOR, "ul.model-calls > li")) == []
    clear_filters(browser)
    fill(browser, "f-search", "claude-fake")
    assert len(shown(browser.find_elements(By.CSS_SELECTOR, "ul.model-calls > li"))) == len(calls)
    clear_filters(browser)


def test_would_flag_with_new_rules_is_marked_apart(browser: WebDriver, tmp_path: Path) -> None:
    journal, page, rules = tmp_path / "journal", tmp_path / "would.html", tmp_path / "new.yaml"
    result = monitor_run("cat /etc/hostname > /dev/null", "--journal", str(journal))
    assert result.returncode == 0 and not result.alerts, result.alert_rules()
    rules.write_text("- rule: New rule hostname read\n  description: test\n  when: [open]\n"
                     "  condition: event.file.path == \"/etc/hostname\"\n  severity: medium\n")
    make_report(journal, page, "--rules", str(rules))
    open_page(browser, page, "would-flag")
    assert alert_rows(browser) == []
    rows = alert_rows(browser, "would-flag")
    assert row_rules(rows) == ["New rule hostname read"] * len(rows) and rows
    assert "new rule New rule hostname read would have fired" in \
        browser.find_element(By.CSS_SELECTOR, ".would-section").text
    assert shown(browser.find_elements(By.CSS_SELECTOR, ".timeline .mark.would"))
    cat = next(p for p in procs(browser) if cmd(p) == "cat /etc/hostname")
    assert "would flag: New rule hostname read" in cat.text


HOSTILE_FILE = "rep-<img src=x onerror=window.__pwned=1>"
HOSTILE_ARG = "<script>window.__pwned=2</script>\u2028<!--"


def test_hostile_names_and_command_lines_run_no_script(browser: WebDriver, tmp_path: Path) -> None:
    journal, page = tmp_path / "journal", tmp_path / "hostile.html"
    folder = tmp_path / "h"
    folder.mkdir()
    result = monitor_run(["bash", "-c", f': > "{folder}/$1"; echo "$2" > /dev/null', "bash", HOSTILE_FILE,
                          HOSTILE_ARG], "--journal", str(journal))
    assert result.returncode == 0, result.stderr
    make_report(journal, page)
    assert "<img src=x" not in page.read_text() and "<script>window" not in page.read_text()
    open_page(browser, page, "hostile")
    assert browser.execute_script("return window.__pwned === undefined") is True
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    shown_cmds = [cmd(p) for p in procs(browser)]
    assert any(HOSTILE_ARG in c for c in shown_cmds), shown_cmds
    items = [li.text for li in shown(browser.find_elements(By.CSS_SELECTOR, "li.item.file"))]
    assert any(f"{folder}/{HOSTILE_FILE}" in t for t in items), items
    fill(browser, "f-search", "onerror")  # the search matches the literal text
    assert procs(browser)
    assert browser.execute_script("return window.__pwned === undefined") is True


def write_synthetic_journal(directory: Path, count: int) -> list[Event]:
    sys.path.insert(0, str(TESTS.parent))
    from tests.bench.journal import synthetic_events

    events = synthetic_events(count)
    sink = JournalSink(directory, max_bytes=None, max_age_s=None)
    for event in events:
        sink.on_event(event)
    sink.close({"events": count})
    return events


def test_large_journal_is_bounded_and_says_so(browser: WebDriver, tmp_path: Path) -> None:
    journal, page = tmp_path / "journal", tmp_path / "large.html"
    events = write_synthetic_journal(journal, 30_000)
    execs = sum(1 for e in events if e.kind == "exec")
    make_report(journal, page)
    found = re.search(r'id="report-data">(.*?)</script>', page.read_text(), re.S)
    assert found is not None
    data = json.loads(found.group(1))
    (session,) = data["sessions"]
    assert session["events"] == 30_000 and session["processes_total"] > execs
    open_page(browser, page, "large")
    notices = browser.find_element(By.ID, "notices").text
    assert session["processes_total"] > data["limits"]["processes"]
    assert f"{data['limits']['processes']} of {session['processes_total']} processes shown" in notices
    more = shown(browser.find_elements(By.CSS_SELECTOR, "li.more"))
    assert more and "more file events on other paths" in more[0].text
    bound = data["limits"]["items_per_process"]
    assert all(len(p["files"]) <= 2 * bound for p in session["processes"])  # reads to the bound, writes as many
    capped = [p for p in session["processes"] if p["more_files"]]
    assert capped and all(len(p["files"]) >= bound for p in capped)
    assert len(procs(browser, with_context=True)) == len(session["processes"])


def test_report_bad_input_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([MONITOR, "report", str(tmp_path / "none"), "--out", str(tmp_path / "x.html")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "no such journal" in proc.stderr
    assert not (tmp_path / "x.html").exists()
