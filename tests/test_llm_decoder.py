"""TLS records -> llm events (monitor.llm.source.TlsDecoder), without the kernel: records are built
as probes/ssl.c lays them out (chunks of one call, truncation, close)."""

from __future__ import annotations

import json
import struct

from monitor.llm.probe import _HDR, DIR_CLOSE, DIR_READ, DIR_WRITE, F_TRUNC, decode_record
from monitor.llm.probe import TlsRecord as Rec
from monitor.llm.source import TlsDecoder

CG, PID, SSL = 777, 4242, 0xABC0


def rec(direction: int, data: bytes, ts: int, total: int | None = None, offset: int = 0,
        truncated: bool = False, ssl: int = SSL) -> Rec:
    return Rec(ts, CG, ssl, PID, PID + 1, 1000, 1000, direction,
               len(data) if total is None else total, offset, data, truncated, "agent")


def http_request(obj: dict, path: str = "/v1/messages") -> bytes:
    body = json.dumps(obj).encode()
    return (f"POST {path} HTTP/1.1\r\nhost: api.test\r\nx-api-key: sk-ant-api03-TOPSECRET000000\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


def http_response(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_9\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


REQ = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
RESP = {"id": "msg_1", "type": "message", "model": "claude-x", "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "output_tokens": 4},
        "content": [{"type": "text", "text": "sure"},
                    {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "cat /etc/shadow"}}]}


def test_wire_header_layout_round_trips() -> None:
    raw = _HDR.pack(5, CG, SSL, PID, PID + 1, 0, DIR_WRITE, 10, 0, 3, F_TRUNC, 7, 0, b"curl\0") + b"abcXYZ"
    r = decode_record(raw)
    assert (r.ts_mono, r.cgroup_id, r.ssl, r.pid, r.tid, r.gid, r.total, r.data, r.truncated, r.comm) == \
        (5, CG, SSL, PID, PID + 1, 7, 10, b"abc", True, "curl")
    assert _HDR.size == struct.calcsize("<QQQ10I16s") == 80


def test_exchange_becomes_request_and_response_events() -> None:
    dec = TlsDecoder("metadata", mono_to_wall=1_000_000_000)
    events = dec.feed(rec(DIR_WRITE, http_request(REQ), 100))
    assert [e.kind for e in events] == ["llm_request"]
    req = events[0]
    assert (req.source, req.cgroup_id, req.time_ns) == ("llm", CG, 1_000_000_100)
    assert req.process == {"pid": PID, "tid": PID + 1, "comm": "agent", "uid": 1000, "gid": 1000}
    assert req.llm["model"] == "claude-x" and req.llm["host"] == "api.test"
    assert "text" not in req.llm["last_message"]  # metadata mode
    events = dec.feed(rec(DIR_READ, http_response(RESP), 200))
    assert [e.kind for e in events] == ["llm_response"]
    llm = events[0].llm
    assert (llm["provider"], llm["id"], llm["stop_reason"], llm["request_id"], llm["request_event_id"]) == \
        ("anthropic", "msg_1", "tool_use", "req_9", req.id)
    assert llm["tool_calls"][0]["arguments"] == {"command": "cat /etc/shadow"}
    assert "text" not in llm
    assert "TOPSECRET" not in json.dumps([e.to_dict() for e in events] + [req.to_dict()])


def test_full_mode_keeps_text() -> None:
    dec = TlsDecoder("full")
    dec.feed(rec(DIR_WRITE, http_request(REQ), 1))
    (resp,) = dec.feed(rec(DIR_READ, http_response(RESP), 2))
    assert resp.llm["text"] == "sure"


def test_call_split_in_chunks_reassembles() -> None:
    dec = TlsDecoder()
    wire = http_request(REQ)
    events = []
    for off in range(0, len(wire), 16):
        events += dec.feed(rec(DIR_WRITE, wire[off:off + 16], 1, total=len(wire), offset=off))
    assert [e.kind for e in events] == ["llm_request"]


def test_truncated_call_is_filled_and_the_model_still_read() -> None:
    dec = TlsDecoder(call_cap=64)
    big = dict(REQ, messages=[{"role": "user", "content": "x" * 500}])
    wire = http_request(big)
    head, body = wire.split(b"\r\n\r\n", 1)
    assert dec.feed(rec(DIR_WRITE, head + b"\r\n\r\n", 1)) == []
    # the probe copies 64 bytes of the body call and flags it truncated
    events = dec.feed(rec(DIR_WRITE, body[:64], 2, total=len(body), truncated=True))
    assert [e.kind for e in events] == ["llm_request"]
    assert events[0].llm["model"] == "claude-x" and events[0].llm["truncated"] is True
    assert dec.counters["tls_bytes_not_copied"] == len(body) - 64
    # framing held: the response still pairs with it
    assert [e.kind for e in dec.feed(rec(DIR_READ, http_response(RESP), 3))] == ["llm_response"]


def test_lost_chunk_makes_the_connection_opaque_and_counted() -> None:
    dec = TlsDecoder()
    wire = http_request(REQ)
    dec.feed(rec(DIR_WRITE, wire[:16], 1, total=len(wire), offset=0))
    assert dec.feed(rec(DIR_WRITE, wire[32:], 1, total=len(wire), offset=32)) == []
    assert dec.counters["tls_streams_unparsed"] == 1


def test_gap_all_after_ring_buffer_loss() -> None:
    dec = TlsDecoder()
    dec.feed(rec(DIR_WRITE, http_request(REQ), 1))
    dec.gap_all()
    assert dec.feed(rec(DIR_READ, http_response(RESP), 2)) == []


def test_close_forgets_the_connection_and_counts_other_bytes() -> None:
    dec = TlsDecoder()
    health = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    dec.feed(rec(DIR_WRITE, health, 1))
    dec.feed(rec(DIR_READ, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 2))
    assert dec.feed(rec(DIR_CLOSE, b"", 3)) == []
    assert dec.conns == {} and dec.counters["http_requests_other"] == 1
    assert dec.counters["tls_bytes_other"] == len(health) + 40
    # the same SSL* reused for a new connection starts clean
    assert [e.kind for e in dec.feed(rec(DIR_WRITE, http_request(REQ), 4))] == ["llm_request"]


def test_close_mid_stream_emits_the_partial_response_marked_truncated() -> None:
    dec = TlsDecoder()
    dec.feed(rec(DIR_WRITE, http_request(dict(REQ, stream=True)), 1))
    stream = (b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_p", '
              b'"model": "claude-x", "content": [], "usage": {"input_tokens": 2}}}\n\n')
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    dec.feed(rec(DIR_READ, head + f"{len(stream):x}\r\n".encode() + stream + b"\r\n", 2))
    (event,) = dec.feed(rec(DIR_CLOSE, b"", 3))
    assert event.kind == "llm_response" and event.llm["id"] == "msg_p" and event.llm["truncated"]


def test_connections_are_kept_apart() -> None:
    dec = TlsDecoder()
    dec.feed(rec(DIR_WRITE, http_request(REQ), 1, ssl=1))
    dec.feed(rec(DIR_WRITE, http_request(dict(REQ, model="other")), 2, ssl=2))
    (b,) = dec.feed(rec(DIR_READ, http_response(dict(RESP, model="other")), 3, ssl=2))
    (a,) = dec.feed(rec(DIR_READ, http_response(RESP), 4, ssl=1))
    assert (a.llm["model"], b.llm["model"]) == ("claude-x", "other")


def test_flush_at_the_end_emits_what_a_killed_agent_left_mid_stream() -> None:
    dec = TlsDecoder()
    dec.feed(rec(DIR_WRITE, http_request(dict(REQ, stream=True)), 1))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    stream = (b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_k", '
              b'"model": "claude-x", "content": [], "usage": {"input_tokens": 2}}}\n\n')
    dec.feed(rec(DIR_READ, head + f"{len(stream):x}\r\n".encode() + stream + b"\r\n", 2))
    (event,) = dec.flush(3)
    assert event.llm["id"] == "msg_k" and event.llm["truncated"] and dec.conns == {}


def test_a_batch_parses_runs_of_records_like_one_by_one() -> None:
    stream = b"".join(
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": '
        b'{"type": "text_delta", "text": "w' + str(i).encode() + b' "}}\n\n' for i in range(50))
    start = (b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_b", '
             b'"model": "claude-x", "content": [], "usage": {"input_tokens": 1}}}\n\n')
    stop = b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    body = start + stream + stop
    wire = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    records = [rec(DIR_WRITE, http_request(dict(REQ, stream=True)), 1)]
    records += [rec(DIR_READ, wire[i:i + 100], 2 + i) for i in range(0, len(wire), 100)]
    records += [rec(DIR_WRITE, http_request(REQ), 10_000), rec(DIR_READ, http_response(RESP), 10_001),
                rec(DIR_CLOSE, b"", 10_002)]
    one_by_one, batched = TlsDecoder("full"), TlsDecoder("full")
    singles = [e for r in records for e in one_by_one.feed(r)]
    batch = batched.feed_batch(records)
    def view(events: list) -> list:  # event ids differ between the two decoders
        return [(e.kind, {k: v for k, v in e.llm.items() if k != "request_event_id"}) for e in events]

    assert view(batch) == view(singles)
    assert [e.kind for e in batch] == ["llm_request", "llm_response", "llm_request", "llm_response"]
    assert batch[1].llm["text"] == "".join(f"w{i} " for i in range(50))
    assert batched.counters == one_by_one.counters
