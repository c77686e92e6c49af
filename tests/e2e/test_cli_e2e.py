"""Commands as a user runs them, read as a user reads them: `monitor demo` and `monitor doctor`
(real probes, real kernel), their printed output and exit status."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor_run import MONITOR, needs_root  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]
WIDE = {**os.environ, "COLUMNS": "1000"}  # one printed record a line
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# each step's narration, and the alerts its acts raise (shown after it, before the next step's)
DEMO_STEPS = [
    ("ordinary work: git init, edit, commit", set()),
    ("ordinary work: compile and run", set()),
    ("reads a cloud credential file", {"Cloud credentials read"}),
    ("reads /etc/shadow", {"Shadow password file read"}),
    ("persists in ~/.bashrc", {"Shell startup file modified"}),
    ("runs a binary dropped in /tmp", {"Program run from a temporary directory"}),
    ("decodes a payload and pipes it to a shell", set()),
    ("contacts a mining-pool port (127.0.0.1:3333)", {"Reverse shell"}),
    ("reaches for an SSH private key (the demo's kill rule), then waits for what comes",
     {"SSH private key read", "Demo - stop the agent at the SSH key"}),
]


def test_demo_narrates_what_happens_and_its_view_keeps_pace() -> None:
    demo = subprocess.run([MONITOR, "demo"], capture_output=True, text=True, timeout=300, env=WIDE, cwd="/")
    assert demo.returncode == 137, demo.stderr[-3000:]
    lines = [ANSI.sub("", line) for line in demo.stderr.splitlines()]
    narrated = [i for i, line in enumerate(lines) if line.startswith("[agent] ")]
    assert [lines[i].removeprefix("[agent] ") for i in narrated] == [text for text, _ in DEMO_STEPS]
    ends = [*narrated[1:], len(lines)]
    for (text, rules), start, end in zip(DEMO_STEPS, narrated, ends, strict=True):
        alerted = {m.group(1) for line in lines[start:end]
                   if (m := re.match(r"ALERT \w+ (.+?) sandbox=demo-agent ", line))}
        assert alerted == rules, (text, alerted)
    last_step = lines[narrated[-1]:]
    kill = [i for i, line in enumerate(last_step)
            if line.startswith("ACTION kill done") and "rule=Demo - stop the agent at the SSH key" in line]
    ended = [i for i, line in enumerate(last_step) if "sandbox_end code=137" in line]
    assert kill and ended and kill[0] < ended[0], last_step
    assert lines[-1] == ("[demo] the kill rule stopped the sandbox as it read the key: "
                         "nothing it ran afterwards is left (exit status 137)")
    assert not any("still running" in line for line in lines)
    assert not any("demo-shown-" in line or "/sync/" in line for line in lines)  # the view's plumbing


def _doctor_rows(stdout: str) -> dict[str, str]:
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 6 and cells[1] and cells[1] != "check":
            rows[cells[1]] = cells[2]
    return rows


REQUIRED = ["root", "kernel >= 5.8 (ring buffer)", "BTF", "tracefs", "cgroup v2", "kernel headers", "bcc",
            "tracepoints", "probes compile + attach"]


def test_doctor_passes_on_this_machine_and_fails_without_root() -> None:
    doctor = subprocess.run([MONITOR, "doctor"], capture_output=True, text=True, timeout=300, env=WIDE)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    rows = _doctor_rows(doctor.stdout)
    assert {name: rows.get(name) for name in REQUIRED} == dict.fromkeys(REQUIRED, "ok"), doctor.stdout
    assert set(rows.values()) <= {"ok", "optional"}, rows
    unprivileged = subprocess.run([MONITOR, "doctor"], capture_output=True, text=True, timeout=300,
                                  user=65534, cwd="/", env={**WIDE, "PYTHONDONTWRITEBYTECODE": "1"})
    assert unprivileged.returncode == 1, unprivileged.stdout + unprivileged.stderr
    assert _doctor_rows(unprivileged.stdout)["root"] == "MISSING"
    assert "Traceback" not in unprivileged.stderr


def test_json_to_stdout_beside_the_terminal_view() -> None:
    """`--json -`: stdout holds only JSON lines (the command's own output goes to stderr), while
    stderr shows the terminal view: the events, the alert, the summary table."""
    run = subprocess.run([MONITOR, "run", "--json", "-", "--name", "json-view", "--", "bash", "-c",
                          "/bin/true json-marker; echo command-output; cat /etc/shadow >/dev/null"],
                         capture_output=True, text=True, timeout=180, env=WIDE, cwd="/")
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert records[0]["kind"] == "sandbox_start" and records[-1]["type"] == "summary"
    marker = [r for r in records if r["type"] == "event" and r["kind"] == "exec"
              and r["process"]["args"] == ["/bin/true", "json-marker"]]
    assert len(marker) == 1 and marker[0]["sandbox"]["name"] == "json-view"
    (alert,) = [r for r in records if r["type"] == "alert"]
    assert alert["rule"] == "Shadow password file read" and alert["matched"]["file.path"] == "/etc/shadow"
    assert records[-1]["alerts_by_rule"] == {"Shadow password file read": 1} and records[-1]["exit_status"] == 0
    view = [ANSI.sub("", line) for line in run.stderr.splitlines()]
    assert "command-output" in view
    shown = [i for i, line in enumerate(view) if re.fullmatch(r" *json-view true\[\d+\] exec /bin/true json-marker", line)]
    cat = [i for i, line in enumerate(view) if re.fullmatch(r" *json-view cat\[\d+\] exec cat /etc/shadow", line)]
    alerted = [i for i, line in enumerate(view) if line.startswith(
        "ALERT HIGH Shadow password file read sandbox=json-view cat[")]
    assert len(shown) == len(cat) == len(alerted) == 1 and shown[0] < cat[0] < alerted[0], view
    table = {cells[1]: cells[2] for line in view if len(cells := [c.strip() for c in line.split("│")]) == 4}
    assert table["exit_status"] == "0" and table["alerts"] == "1" and table["lost events"] == "0", table
