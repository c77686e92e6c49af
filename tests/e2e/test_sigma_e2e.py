"""SigmaHQ rules end to end: the Sigma files themselves are loaded with `--rules` (converted at
load), each scenario below performs the behaviour its rule describes inside one real `monitor run`
(real probes, real kernel), and each test asserts its rule's alert on the process that did it.

Harmless stand-ins: a tool the rule looks for by name is /bin/true copied to that name in the
workspace (`fake NAME ARGS`); system files are written only in a private mount namespace over a
tmpfs copy of /etc (and a tmpfs /tmp); network behaviours run in a network namespace of their own
(`unshare -n`) with only loopback up and the documentation address 198.51.100.7 on it, where DNS
queries go to 127.0.0.1:53 and nothing answers: no packet leaves the machine.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monitor_run import ROOT, RunResult, monitor_run, needs_root  # noqa: E402

from monitor.policy.sigma import convert_paths  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]
SIGMA = ROOT / "tests" / "fixtures" / "sigma" / "rules" / "linux"
RULE_DIRS = [SIGMA / "process_creation", SIGMA / "file_event", SIGMA / "network_connection"]
PY = "/usr/bin/python3"

PREAMBLE = r"""
fake() { n=$1; shift; [ -x "$B/$n" ] || cp /bin/true "$B/$n"; "$B/$n" "$@"; }
safe_etc() { unshare -m --propagation private bash -c "mount -t tmpfs none /mnt && cp -a /etc /mnt/etc && mount --bind /mnt/etc /etc && mount -t tmpfs none /tmp && $1"; }
netns() { unshare -n bash -c "ip link set lo up && ip addr add 198.51.100.7/32 dev lo && $1"; }
"""
DNS_QUERY = """import socket, struct, sys
name = b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[1].split(".")) + b"\\0"
query = struct.pack(">HHHHHH", 0x1234, 0x100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(query, ("127.0.0.1", 53))
"""
CONNECT = """import socket, sys
socket.socket().connect_ex((sys.argv[1], int(sys.argv[2])))
"""

# Sigma id -> (the behaviour, as shell; the end of the acting process's executable). $B: the
# stand-ins' folder, $T: a scratch folder under /tmp, $WS: the workspace, $PY: a system python.
SCENARIOS: dict[str, tuple[str, str]] = {
    # process_creation
    "d2d642d7-b393-43fe-bae4-e81ed5915c4b": ("fake at now", "/at"),                       # at job
    "bed26dea-4525-47f4-b24a-76e30e44ffb0": ("fake auditctl -D", "/auditctl"),            # audit rules deleted
    "36388120-b3f1-4ce9-b50b-280d9a7f4c04": ("fake systemctl stop kesl", "/systemctl"),   # Kaspersky stopped
    "8c1a5675-cb85-452f-a298-b01b22a51856": ("awk 'BEGIN {system(\"/bin/sh -c true\")}'", "awk"),
    "e2072cab-8c9a-459b-b63c-40ae79e27031": ("echo aGk= | base64 -d >/dev/null", "/base64"),
    "ba592c6d-6888-43c3-b8c6-689b8fe47337": ("bash -c 'echo dHJ1ZQ== | base64 -d | sh'", "/bash"),
    "fe2f9663-41cb-47e2-b954-8a228f3b9dff": ("/bin/echo IyEvYmluL2Jhc2gK >/dev/null", "/echo"),
    "6104e693-a7d6-4891-86cb-49a258523559": ("bash -i -c true </dev/null >/dev/null 2>&1", "/bash"),
    "f8341cb2-ee25-43fa-a975-d8a5a9714b39": ("fake bpftrace --unsafe -e x", "/bpftrace"),
    "3a716279-c18c-4488-83be-f9ececbfb9fc": ("fake setcap cap_setgid+ep $T/f", "/setcap"),
    "ed447910-bc30-4575-a598-3a2e49516a7a": ("fake setcap cap_setuid+ep $T/f", "/setcap"),
    "d8d97d51-122d-4cdd-9e2f-01b4b4933530": ("fake getcap -r /", "/getcap"),
    "db1ac3be-f606-4e3a-89e0-9607cbe6b98a": ("fake capsh --", "/capsh"),
    "34979410-e4b5-4e5d-8cfb-389fdff05c12": ("fake chattr -i $T/f", "/chattr"),
    "6419afd1-3742-47a5-a7e6-b50386cd15f8": ("touch $T/f && chmod 600 $T/f", "/chmod"),
    "f2bed782-994e-4f40-9cd5-518198cb3fba": ("fake sudo --chroot / true", "/sudo"),
    "80915f59-9b56-4616-9de0-fd0dea6c12fe": ("rm -f /var/log/monitor-sigma-e2e-absent", "/rm"),
    "3fcc9b35-39e4-44c0-a2ad-9e82b6902b31": ("fake unlink /var/log/syslog", "/unlink"),
    "ec127035-a636-4b9a-8555-0efd4e59f316": ("fake xclip -sel clip -o", "/xclip"),
    "fa4aaed5-4fe0-498d-bbc0-08e3346387ba": ("cp /etc/passwd $T/passwd.copy", "/cp"),
    "403ed92c-b7ec-4edd-9947-5b535ee12d46": ("fake crontab -l", "/crontab"),
    "c2e234de-03a3-41e1-b39a-1e56dc17ba67": ("fake crontab -r", "/crontab"),
    "9069ea3c-b213-4c52-be13-86506a227ab1": ("fake xmrig --donate-level=0", "/xmrig"),
    "ea34fb97-e2c4-4afb-810f-785e4459b194": ("curl --version >/dev/null", "/curl"),
    "2953194b-e33c-4859-b9e8-05948c167447": ("/usr/bin/dd if=/dev/zero of=$T/zero bs=1 count=1 2>/dev/null", "/dd"),
    "4cad6c64-d6df-42d6-8dae-eb78defdc415": ("fake dd of=/proc/self/mem", "/dd"),
    "84c9e83c-599a-458a-a0cb-0ecce44e807a": ("fake ufw disable", "/ufw"),
    "067d8238-7127-451c-a9ec-fa78045b618b": ("fake doas true", "/doas"),
    "bed978f8-7f3a-432b-82c5-9286a9b3031a": ("env /bin/sh -c true", "/env"),
    "2992ac4d-31e9-4325-99f2-b18a73221bb2": ("fake esxcli vm process kill --type=soft --world-id=1", "/esxcli"),
    "e80273e1-9faf-40bc-bd85-dbaff104c4e9": ("fake esxcli system version get", "/esxcli"),
    # file_event: written in the private copy of /etc (and a private /tmp)
    "00eee2a5-fdb0-4746-a21d-e43fbdea5681": ("safe_etc 'echo permit > /etc/doas.conf'", "/bash"),
    "ddb26b76-4447-4807-871f-1b035b2bfa5d": ("safe_etc 'echo e2e > /etc/sudoers.d/e2e'", "/bash"),
    "6c4e2f43-d94d-4ead-b64d-97e53fa2bd05": ("safe_etc 'echo \\# > /etc/cron.d/e2e'", "/bash"),
    "13f08f54-e705-4498-91fd-cce9d9cee9f1": ("safe_etc 'echo true > /etc/profile.d/e2e.sh'", "/bash"),
    "c0239255-822c-4630-b7f1-35362bcb8f44": ("safe_etc 'echo x > /tmp/rootlog'", "/bash"),
    # network_connection: loopback-only network namespace
    "dbfc7c98-04ab-4ab7-aa94-c74d22aa7376": ("netns '$PY $WS/connect.py 198.51.100.7 4444'", "python3"),
    "83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871": ("netns 'exec 3<>/dev/tcp/198.51.100.7/9' 2>/dev/null", "/bin/bash"),
    "19bf6fdb-7721-4f3d-867f-53467f6a5db6": ("netns '$PY $WS/dnsq.py tunnel.us.ngrok.com'", "python3"),
    "a46c93b7-55ed-4d27-a41b-c259456c4746": ("netns '$PY $WS/dnsq.py pool.minexmr.com'", "python3"),
}


# The event kind each non-exec scenario's alert is on.
KINDS = {"00eee2a5-fdb0-4746-a21d-e43fbdea5681": "open", "ddb26b76-4447-4807-871f-1b035b2bfa5d": "open",
         "6c4e2f43-d94d-4ead-b64d-97e53fa2bd05": "open", "13f08f54-e705-4498-91fd-cce9d9cee9f1": "open",
         "c0239255-822c-4630-b7f1-35362bcb8f44": "open", "dbfc7c98-04ab-4ab7-aa94-c74d22aa7376": "connect",
         "83dcd9f6-9ca8-4af7-a16e-a1c7a6b51871": "connect", "19bf6fdb-7721-4f3d-867f-53467f6a5db6": "dns",
         "a46c93b7-55ed-4d27-a41b-c259456c4746": "dns"}


@pytest.fixture(scope="module")
def rule_names() -> dict[str, str]:
    """Sigma id -> the name of the rule it converts to."""
    return {rule.sigma_id: rule.entry["rule"] for rule in convert_paths(RULE_DIRS).rules}


@pytest.fixture(scope="module")
def sigma_run() -> Iterator[RunResult]:
    # not under /tmp: running programs from /tmp is itself what some of these rules look for
    workspace = Path(tempfile.mkdtemp(prefix="monitor-sigma-e2e-", dir=Path.home()))
    scratch = Path(tempfile.mkdtemp(prefix="monitor-sigma-e2e-"))
    (workspace / "bin").mkdir()
    (workspace / "dnsq.py").write_text(DNS_QUERY)
    (workspace / "connect.py").write_text(CONNECT)
    script = PREAMBLE + "\n".join(f"( {snippet} ) || true" for snippet, _ in SCENARIOS.values())
    rules = [arg for folder in RULE_DIRS for arg in ("--rules", str(folder))]
    try:
        yield monitor_run(script, *rules, timeout=300, cwd=str(workspace),
                          env={"WS": str(workspace), "B": str(workspace / "bin"), "T": str(scratch), "PY": PY})
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_sigma_files_load_and_the_refused_ones_are_named(sigma_run: RunResult) -> None:
    assert sigma_run.summary, f"monitor run wrote no summary: {sigma_run.stderr[-2000:]}"
    refused = [line for line in sigma_run.stderr.splitlines() if "(not loaded)" in line]
    assert len(refused) == 2 and all("LogonId" in line for line in refused), sigma_run.stderr[-2000:]


@pytest.mark.parametrize("sigma_id", list(SCENARIOS))
def test_sigma_rule_fires_on_its_behaviour(sigma_run: RunResult, rule_names: dict[str, str],
                                           sigma_id: str) -> None:
    _, executable = SCENARIOS[sigma_id]
    rule = rule_names[sigma_id]
    alerts = [a for a in sigma_run.alerts if a["rule"] == rule]
    assert alerts, f"no alert for {rule!r}; alerts seen: {sorted(sigma_run.alert_rules())}"
    acting = [(a["event"]["kind"], a["event"]["process"]["executable"]) for a in alerts]
    assert any(kind == KINDS.get(sigma_id, "exec") and exe.endswith(executable) for kind, exe in acting), acting
