"""The agent's model calls and tool calls, captured from TLS by libssl uprobes under the real
`monitor run`: official SDK clients (and Node's fetch) talk real TLS to a local model API, and
run the tool call they get back. Nothing on this path is mocked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_agent import API_KEY  # noqa: E402
from llm_fake_api import TOOL_COMMAND, FakeApi  # noqa: E402
from monitor_run import RunResult, monitor_run, needs_root  # noqa: E402
from otlp_receiver import OtlpReceiver  # noqa: E402

pytestmark = [needs_root, pytest.mark.root]
TESTS = Path(__file__).resolve().parents[1]
AGENT = [sys.executable, str(TESTS / "llm_agent.py")]
SECRET_PART = API_KEY.split("SECRET")[1]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApi]:
    server = FakeApi(tmp_path_factory.mktemp("llm-api")).start()
    yield server
    server.stop()


def agent(api: FakeApi, kind: str, *extra: str) -> list[str]:
    return [*AGENT, "--api", kind, "--base-url", api.url, "--ca", str(api.ca_path), *extra]


def no_secret_anywhere(result: RunResult) -> None:
    everything = json.dumps(result.records) + result.stdout + result.stderr
    assert API_KEY not in everything and SECRET_PART not in everything


def assert_agent_turn(result: RunResult, provider: str, model: str, stream: bool) -> dict:
    """The request and response events of the tool-call turn, and the exec they caused."""
    assert result.returncode == 0, result.stderr[-2000:]
    requests, responses = result.events("llm_request"), result.events("llm_response")
    assert len(requests) == 2 and len(responses) == 2, (requests, responses)
    first = requests[0]["llm"]
    assert (first["provider"], first["model"], first["stream"], first["message_count"]) == \
        (provider, model, stream, 1)
    assert first["host"].startswith("127.0.0.1:")
    assert first["last_message"]["role"] == "user"
    assert requests[1]["llm"]["last_message"]["type"] == "tool_result"
    asked = responses[0]
    llm = asked["llm"]
    assert llm["stop_reason"] in ("tool_use", "tool_calls")
    assert llm["usage"] == {"input_tokens": 42, "output_tokens": 17}
    assert [(c["name"], c["arguments"]) for c in llm["tool_calls"]] == [("bash", {"command": TOOL_COMMAND})]
    assert asked["process"]["pid"] == requests[0]["process"]["pid"]
    assert asked["sandbox"]["cgroup_id"] > 0
    cat = result.execs("/cat")
    assert len(cat) == 1 and cat[0]["process"]["args"] == TOOL_COMMAND.split()
    assert cat[0]["process"]["caused_by"] == asked["id"]
    assert not responses[1]["llm"]["tool_calls"]
    assert "caused_by" not in result.execs("/python3")[0]["process"] if result.execs("/python3") else True
    assert any(a["event"]["kind"] == "llm_response" for a in result.alerts), result.alert_rules()
    no_secret_anywhere(result)
    assert "text" not in llm  # metadata mode (the default) keeps no response text
    return asked


@pytest.mark.parametrize("kind,provider,model,stream", [
    ("anthropic", "anthropic", "claude-fake-1", False),
    ("anthropic", "anthropic", "claude-fake-1", True),
    ("openai", "openai", "gpt-4.1", False),
    ("openai", "openai", "gpt-4.1", True),
    ("responses", "openai", "gpt-4.1", False),
])
def test_sdk_agent_tool_call_is_captured_and_linked(api: FakeApi, kind: str, provider: str, model: str,
                                                    stream: bool) -> None:
    extra = ["--stream"] if stream else []
    result = monitor_run(agent(api, kind, *extra))
    assert_agent_turn(result, provider, model, stream)
    assert result.summary["lost"] == {}
    assert api.seen_auth[-1] in (API_KEY, f"Bearer {API_KEY}")  # the client did send its key


def test_full_capture_keeps_text_and_still_no_key(api: FakeApi) -> None:
    result = monitor_run(agent(api, "anthropic"), "--llm-capture", "full")
    responses = result.events("llm_response")
    assert [r["llm"]["text"] for r in responses] == ["Let me look.", "All done."]
    assert result.events("llm_request")[0]["llm"]["last_message"]["text"] == "What is in /etc/shadow?"
    no_secret_anywhere(result)


def test_capture_off_attaches_nothing(api: FakeApi) -> None:
    result = monitor_run(agent(api, "anthropic"), "--llm-capture", "off")
    assert result.returncode == 0
    assert not result.events("llm_request") and not result.events("llm_response")
    assert "caused_by" not in result.execs("/cat")[0]["process"]


def test_non_llm_https_and_garbage_make_no_llm_events_and_are_counted(api: FakeApi) -> None:
    script = " && ".join(" ".join(agent(api, k)) for k in ("health", "garbage", "truncated"))
    result = monitor_run(script)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not result.events("llm_response")
    # the truncated POST is shaped like a model call: its request is seen, its cut response skipped
    assert [r["llm"]["path"] for r in result.events("llm_request")] == ["/truncated"]
    lost = result.summary["lost"]
    assert lost.get("llm.tls_streams_unparsed", 0) >= 1, lost        # the garbage stream
    assert lost.get("llm.llm_responses_unparsed", 0) >= 1, lost      # the cut response
    no_secret_anywhere(result)


def test_same_calls_outside_the_sandbox_produce_nothing(api: FakeApi) -> None:
    outside: dict[str, subprocess.CompletedProcess[str]] = {}

    def run_outside() -> None:
        outside["r"] = subprocess.run(agent(api, "anthropic"), capture_output=True, text=True, timeout=60)

    # the sandbox only waits while an unwatched agent on the same host makes the same calls
    thread = threading.Thread(target=run_outside)
    result_box: dict[str, RunResult] = {}

    def run_sandbox() -> None:
        result_box["r"] = monitor_run(["sleep", "4"])

    sandbox = threading.Thread(target=run_sandbox)
    sandbox.start()
    thread.start()
    thread.join()
    sandbox.join()
    assert json.loads(outside["r"].stdout)["ran"] == [TOOL_COMMAND]
    result = result_box["r"]
    assert result.returncode == 0
    assert not result.events("llm_request") and not result.events("llm_response")
    assert not result.execs("/cat")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (EXTRAS=node scripts/setup.sh)")
def test_node_fetch_is_captured(api: FakeApi) -> None:
    """Node links OpenSSL statically but exports SSL_* from its binary: the monitor attaches
    to the binary itself when the sandboxed process execs it."""
    result = monitor_run(["node", str(TESTS / "llm_node_agent.js"), api.url],
                         env={"NODE_EXTRA_CA_CERTS": str(api.ca_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    (request,) = result.events("llm_request")
    (response,) = result.events("llm_response")
    assert request["llm"]["model"] == "claude-node-1" and request["process"]["comm"] == "node"
    assert response["llm"]["tool_calls"][0]["arguments"] == {"command": TOOL_COMMAND}
    assert result.execs("/cat")[0]["process"]["caused_by"] == response["id"]
    no_secret_anywhere(result)


def test_trace_has_genai_span_linked_from_the_caused_process_and_no_key(api: FakeApi, tmp_path: Path) -> None:
    raw: list[bytes] = []
    journal = tmp_path / "journal"
    with OtlpReceiver() as rx:
        rx.store.on_request = lambda _signal, data: raw.append(data)
        result = monitor_run(agent(api, "openai", "--stream"), "--otlp", rx.http_url, "--journal", str(journal))
        asked = assert_agent_turn(result, "openai", "gpt-4.1", True)
        assert rx.store.wait_for(lambda st: any(sp.attributes.get("gen_ai.request.model") for sp in st.spans())
                                 and any(sp.links for sp in st.spans()), 15), result.stderr[-2000:]
        spans = rx.store.spans()
    genai = [sp for sp in spans if sp.attributes.get("gen_ai.request.model") == "gpt-4.1"]
    assert genai, [sp.name for sp in spans]
    tool_turn = [sp for sp in genai if sp.attributes.get("gen_ai.response.id") == "chatcmpl-fake1"
                 and any(e[2].get("gen_ai.tool.name") == "bash" for e in sp.events)]
    assert tool_turn, [(sp.name, sp.attributes) for sp in genai]
    span = tool_turn[0]
    assert span.attributes["gen_ai.usage.input_tokens"] == 42
    assert span.end_ns > span.start_ns  # from the request to the response
    linked = [sp for sp in spans for link in sp.links if link[1] == span.span_id]
    assert linked and any("cat" in sp.name or sp.attributes.get("process.executable.path", "").endswith("/cat")
                          for sp in linked), [(sp.name, sp.attributes) for sp in linked]
    assert asked["id"]
    import json

    from monitor.journal import JournalReader

    journaled = [json.dumps(r.value if isinstance(r.value, dict) else r.value.to_dict(), default=str)
                 for r in JournalReader(journal).records()]
    assert journaled, "the journal holds the session"  # decoded: its blocks are compressed
    everything = b"".join(raw) + "\n".join(journaled).encode()
    assert raw and API_KEY.encode() not in everything and SECRET_PART.encode() not in everything


def test_a_kill_rule_on_the_tool_call_stops_the_sandbox_before_the_command_runs(api: FakeApi,
                                                                              tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- rule: E2E kill on shadow tool call\n  description: test rule\n  when: [llm_response]\n"
        "  condition: has(event.llm.tool_calls) && event.llm.tool_calls.exists(t, "
        "t.arguments_json.contains(\"/etc/shadow\"))\n  severity: critical\n  action: kill\n  tags: [T1552]\n")
    # the agent takes a second before running a tool, as one deliberating or asking permission does
    result = monitor_run(agent(api, "anthropic", "--think", "1.5"), "--rules", str(rules))
    assert result.returncode == 137, result.stderr[-2000:]
    assert result.summary["killed_by"] == "E2E kill on shadow tool call"
    (action,) = [a for a in result.actions if a["rule"] == "E2E kill on shadow tool call"]
    assert action["action"] == "kill" and action["outcome"] == "done"
    assert not result.execs("/cat"), "the command the model asked for never ran"
    assert len(result.events("llm_response")) == 1


def test_llm_unit_helpers_are_importable_without_root() -> None:
    # the package imports without bcc (the source loads it lazily)
    out = subprocess.run([sys.executable, "-c", "import monitor.llm as m; print(m.DEFAULT_CAPTURE)"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    assert out.stdout.strip() == "metadata"
