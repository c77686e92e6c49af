"""The kernel half of the llm source (probes/ssl.c via monitor.llm.probe / LlmSource) on real TLS:
a child in a cgroup-v2 directory the test creates makes HTTPS calls to the local fake API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_fake_api import FakeApi  # noqa: E402
from monitor_run import needs_root  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]

CLIENT = r"""
import json, ssl, sys, httpx
url, ca, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = {"model": "claude-big", "max_tokens": 8, "messages": [{"role": "user", "content": "x" * size}]}
with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30) as client:
    r = client.post(url + "/v1/messages", json=body, headers={"x-api-key": "sk-ant-probe-0000000000000000"})
    print(r.status_code)
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApi]:
    server = FakeApi(tmp_path_factory.mktemp("probe-api")).start()
    yield server
    server.stop()


@pytest.fixture
def cgroup() -> Iterator[str]:
    from monitor.llm.source import cgroup2_root

    path = os.path.join(cgroup2_root(), f"llm-probe-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    yield path
    os.rmdir(path)


def run_in(cgroup_dir: str | None, api: FakeApi, size: int) -> str:
    argv = [sys.executable, "-c", CLIENT, api.url, str(api.ca_path), str(size)]
    if cgroup_dir:
        argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup_dir, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def collect(source: object, rounds: int = 10) -> list:
    events = []
    for _ in range(rounds):
        events += source.poll(50)  # type: ignore[attr-defined]
    return events


def test_watched_cgroup_only_and_a_big_call_truncated_with_its_model(api: FakeApi, cgroup: str) -> None:
    from monitor.llm.source import LlmSource

    source = LlmSource(max_chunks=4)  # 64 KiB per call: a 200 KB body is truncated
    try:
        assert any("libssl" in p for p in source.stats()["attached"])
        source.add_cgroup(os.stat(cgroup).st_ino, cgroup)
        assert run_in(None, api, 10) == "200"  # the same call from outside: nothing
        assert collect(source, 4) == []
        assert run_in(cgroup, api, 10) == "200"
        small = collect(source)
        assert [e.kind for e in small] == ["llm_request", "llm_response"]
        assert small[0].cgroup_id == os.stat(cgroup).st_ino and small[0].process["comm"].startswith("python")
        assert run_in(cgroup, api, 200_000) == "200"
        big = collect(source)
        assert [e.kind for e in big] == ["llm_request", "llm_response"]
        assert big[0].llm["model"] == "claude-big" and big[0].llm["truncated"] is True
        lost = source.lost()
        assert lost.get("ssl_truncated_calls", 0) >= 1 and "ssl_write" not in lost and "ssl_read" not in lost
        assert source.decoder.counters["tls_bytes_not_copied"] > 100_000
        assert "probe-0000" not in json.dumps([e.to_dict() for e in small + big])
        source.remove_cgroup(os.stat(cgroup).st_ino)
        assert run_in(cgroup, api, 10) == "200"
        assert collect(source, 4) == []
    finally:
        source.close()


def test_doctor_checks_report_uprobes_libssl_and_a_working_attach() -> None:
    from monitor.llm.probe import doctor_checks

    checks = {c.name: c for c in doctor_checks()}
    assert checks["uprobes (model-call capture)"].ok
    assert "libssl.so" in checks["libssl (model-call capture)"].detail
    attach = checks["TLS probes compile + attach"]
    assert attach.ok and "file(s)" in attach.detail


def test_an_executable_is_looked_at_once_per_sandbox_not_at_every_exec() -> None:
    from monitor.llm.source import LlmSource

    source = LlmSource(capture="metadata")
    scanned: list[int] = []
    scan_pid = source.probe.scan_pid
    source.probe.scan_pid = lambda pid: scanned.append(pid) or scan_pid(pid)  # type: ignore[method-assign]
    try:
        me = os.getpid()
        for _ in range(3):
            source.notice_exec(me, sys.executable, 7)
        assert scanned == [me], "a build execs one compiler thousands of times: one look is enough"
        source.notice_exec(me, sys.executable, 8)
        source.notice_exec(me, "relative/tool", 7)
        source.notice_exec(me, "relative/tool", 7)
        assert len(scanned) == 4, "another sandbox, or a path that names no one file, is looked at"
    finally:
        source.close()
