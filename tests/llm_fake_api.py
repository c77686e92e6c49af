"""A local model API for the llm tests and benchmark: TLS on 127.0.0.1 with a trustme certificate,
answering in the Anthropic Messages, OpenAI Chat Completions and OpenAI Responses wire formats,
streamed (SSE, chunked) or not (gzip when the client accepts it).

The first call of a conversation asks for a tool call (`bash` with {"command": TOOL_COMMAND});
a call whose last message carries a tool result gets a final text answer.
Other routes: GET /health (a non-LLM JSON exchange), POST /truncated (headers promise more body
than is sent, then the connection closes). A model named "long-stream" streams STREAM_DELTAS
text deltas (the benchmark's long response).
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

TOOL_COMMAND = "cat /etc/shadow"
STREAM_DELTAS = 2000


def _has_tool_result(body: dict[str, Any]) -> bool:
    items = body.get("messages") or body.get("input") or []
    if not isinstance(items, list) or not items:
        return False
    last = items[-1]
    if not isinstance(last, dict):
        return False
    if last.get("role") == "tool" or last.get("type") == "function_call_output":
        return True
    content = last.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                             for b in content)


def _sse(name: str | None, data: Any) -> bytes:
    head = f"event: {name}\n" if name else ""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {payload}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing ---------------------------------------------------------------------
    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", "req_fake_1")
        if "gzip" in self.headers.get("accept-encoding", ""):
            body = gzip.compress(body)
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self, events: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for ev in events:
            self.wfile.write(f"{len(ev):x}\r\n".encode() + ev + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            self._json({"status": "ok", "uptime": 1})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        raw = self.rfile.read(length)
        self.server.seen_auth.append(self.headers.get("authorization") or self.headers.get("x-api-key") or "")
        if self.path.startswith("/truncated"):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "5000")
            self.end_headers()
            self.wfile.write(b'{"id": "msg_cut", "type": "message", "content": [')
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.loads(raw or b"{}")
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        final = _has_tool_result(body)
        model = body.get("model", "fake-model")
        stream = body.get("stream") is True
        if self.path.endswith("/messages"):
            self._anthropic(model, final, stream)
        elif self.path.endswith("/chat/completions"):
            self._chat(model, final, stream, body)
        elif self.path.endswith("/responses"):
            self._responses(model, final, stream)
        else:
            self._json({"error": "not found"}, 404)

    # -- Anthropic Messages -----------------------------------------------------------
    def _anthropic(self, model: str, final: bool, stream: bool) -> None:
        args = {"command": TOOL_COMMAND}
        usage = {"input_tokens": 42, "output_tokens": 17}
        if not stream:
            content: list[dict[str, Any]] = [{"type": "text", "text": "All done." if final else "Let me look."}]
            if not final:
                content.append({"type": "tool_use", "id": "toolu_fake_1", "name": "bash", "input": args})
            self._json({"id": "msg_fake_1", "type": "message", "role": "assistant", "model": model,
                        "content": content, "stop_reason": "end_turn" if final else "tool_use",
                        "stop_sequence": None, "usage": usage})
            return
        deltas = STREAM_DELTAS if model == "long-stream" else 3
        events = [_sse("message_start", {"type": "message_start", "message": {
            "id": "msg_fake_1", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 42, "output_tokens": 1}}}),
            _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
            _sse("ping", {"type": "ping"})]
        for i in range(deltas):
            events.append(_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "text_delta", "text": f"word{i} "}}))
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        if not final and model != "long-stream":
            text = json.dumps(args)
            events.append(_sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
                "type": "tool_use", "id": "toolu_fake_1", "name": "bash", "input": {}}}))
            for part in (text[:10], text[10:]):
                events.append(_sse("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {
                    "type": "input_json_delta", "partial_json": part}}))
            events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 1}))
        stop = "end_turn" if final or model == "long-stream" else "tool_use"
        events.append(_sse("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 17}}))
        events.append(_sse("message_stop", {"type": "message_stop"}))
        self._stream(events)

    # -- OpenAI Chat Completions ------------------------------------------------------
    def _chat(self, model: str, final: bool, stream: bool, body: dict[str, Any]) -> None:
        args = json.dumps({"command": TOOL_COMMAND})
        base = {"id": "chatcmpl-fake1", "created": 1700000000, "model": model}
        usage = {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "All done." if final else None}
            if not final:
                message["tool_calls"] = [{"id": "call_fake_1", "type": "function",
                                          "function": {"name": "bash", "arguments": args}}]
            self._json({**base, "object": "chat.completion", "usage": usage, "choices": [{
                "index": 0, "message": message, "logprobs": None,
                "finish_reason": "stop" if final else "tool_calls"}]})
            return

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _sse(None, {**base, "object": "chat.completion.chunk",
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        events = [chunk({"role": "assistant", "content": ""})]
        if final:
            events += [chunk({"content": "All "}), chunk({"content": "done."}), chunk({}, "stop")]
        else:
            events.append(chunk({"tool_calls": [{"index": 0, "id": "call_fake_1", "type": "function",
                                                 "function": {"name": "bash", "arguments": ""}}]}))
            for part in (args[:10], args[10:]):
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
            events.append(chunk({}, "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(_sse(None, {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}))
        events.append(_sse(None, "[DONE]"))
        self._stream(events)

    # -- OpenAI Responses -------------------------------------------------------------
    def _responses(self, model: str, final: bool, stream: bool) -> None:
        output: list[dict[str, Any]]
        if final:
            output = [{"type": "message", "id": "msg_fake_2", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": "All done.", "annotations": []}]}]
        else:
            output = [{"type": "function_call", "id": "fc_fake_1", "call_id": "call_fake_1", "name": "bash",
                       "arguments": json.dumps({"command": TOOL_COMMAND}), "status": "completed"}]
        response = {"id": "resp_fake_1", "object": "response", "created_at": 1700000000,
                    "status": "completed", "model": model, "output": output, "parallel_tool_calls": True,
                    "tool_choice": "auto", "tools": [],
                    "usage": {"input_tokens": 42, "output_tokens": 17, "total_tokens": 59,
                              "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens_details": {"reasoning_tokens": 0}}}
        if not stream:
            self._json(response)
            return
        created = {**response, "status": "in_progress", "output": [], "usage": None}
        events = [_sse("response.created", {"type": "response.created", "sequence_number": 0, "response": created})]
        for i, item in enumerate(output):
            events.append(_sse("response.output_item.done", {"type": "response.output_item.done",
                                                             "sequence_number": i + 1, "output_index": i,
                                                             "item": item}))
        events.append(_sse("response.completed", {"type": "response.completed", "sequence_number": 9,
                                                  "response": response}))
        self._stream(events)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen_auth: list[str]
    delay_s: float


class FakeApi:
    """Start with `FakeApi(tmpdir).start()`; `url`, `ca_path`; `stop()` at the end."""

    def __init__(self, workdir: Path, delay_s: float = 0.0) -> None:
        """`delay_s`: wait this long before answering each POST (a model's time to first token)."""
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path = workdir / "fake-api-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self._context)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.seen_auth = []
        self._server.delay_s = delay_s
        self._server.socket = self._context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def seen_auth(self) -> list[str]:
        """The credential each POST carried (the tests check it never reaches the output)."""
        return self._server.seen_auth

    def start(self) -> FakeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
