"""HTTP/1.1 reassembly of one TLS connection (monitor.llm.http), fed the bytes a client moves."""

from __future__ import annotations

import gzip
import zlib

import zstandard

from monitor.llm.http import MAX_BODY, HttpConversation

REQUEST = (b"POST /v1/messages HTTP/1.1\r\nHost: api.example\r\nAuthorization: Bearer sk-secret-1\r\n"
           b"x-api-key: sk-ant-secret-2\r\nCookie: session=3\r\nContent-Type: application/json\r\n"
           b"Content-Length: 17\r\n\r\n{\"model\": \"m-1\"}\n")


def response(body: bytes, encoding: str = "", chunked: bool = False, ctype: str = "application/json") -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n"
    if encoding:
        head += f"content-encoding: {encoding}\r\n"
    if chunked:
        mid = len(body) // 2
        framed = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:mid], body[mid:]) if p)
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + framed + b"0\r\n\r\n"
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


def test_request_then_response_with_credentials_dropped() -> None:
    conv = HttpConversation()
    started, finished = conv.feed(True, REQUEST, 10)
    assert finished == [] and len(started) == 1
    req = started[0].request
    assert (req.method, req.target, req.host, req.body) == ("POST", "/v1/messages", "api.example",
                                                            b'{"model": "m-1"}\n')
    assert not {"authorization", "x-api-key", "cookie"} & set(req.headers)
    assert "secret" not in repr(req)
    _, finished = conv.feed(False, response(b'{"ok": 1}'), 20)
    assert finished == started and finished[0].response is not None
    assert (finished[0].response.status, finished[0].response.body, finished[0].response.end_ns) == \
        (200, b'{"ok": 1}', 20)


def test_bytes_split_at_every_offset_reassemble() -> None:
    wire = response(b'{"answer": "x"}', chunked=True)
    for cut in range(1, len(wire)):
        conv = HttpConversation()
        conv.feed(True, REQUEST, 1)
        assert conv.feed(False, wire[:cut], 2)[1] == []
        _, finished = conv.feed(False, wire[cut:], 3)
        assert [ex.response.body for ex in finished if ex.response] == [b'{"answer": "x"}'], cut


def test_gzip_deflate_zstd_bodies_are_decoded() -> None:
    body = b'{"type": "message", "content": []}'
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                             ("zstd", zstandard.ZstdCompressor().compress(body))):
        conv = HttpConversation()
        conv.feed(True, REQUEST, 1)
        _, finished = conv.feed(False, response(packed, encoding, chunked=True), 2)
        assert finished[0].response.body == body, encoding
        assert not finished[0].response.truncated


def test_keep_alive_pipelined_requests_pair_in_order() -> None:
    conv = HttpConversation()
    started, _ = conv.feed(True, REQUEST + REQUEST.replace(b"m-1", b"m-2"), 1)
    assert [s.request.body for s in started] == [b'{"model": "m-1"}\n', b'{"model": "m-2"}\n']
    _, finished = conv.feed(False, response(b"1") + response(b"2"), 2)
    assert [(f.request.body[-6:-3], f.response.body) for f in finished] == [(b"m-1", b"1"), (b"m-2", b"2")]


def test_response_bytes_before_their_request_wait_for_it() -> None:
    conv = HttpConversation()
    wire = response(b"late")
    assert conv.feed(False, wire[:20], 1) == ([], [])
    started, finished = conv.feed(True, REQUEST, 2)
    assert len(started) == 1 and finished == []
    _, finished = conv.feed(False, wire[20:], 3)
    assert finished[0].response.body == b"late"


def test_event_stream_completes_at_its_terminal_event_without_the_chunk_terminator() -> None:
    conv = HttpConversation()
    conv.feed(True, REQUEST, 1)
    stream = b'data: {"a": 1}\n\ndata: [DONE]\n\n'
    wire = response(stream, chunked=True, ctype="text/event-stream")
    _, finished = conv.feed(False, wire[:-5], 2)  # the client stopped reading before "0\r\n\r\n"
    assert finished and finished[0].response.body == stream
    # the terminator arriving later does not hand the message out twice
    assert conv.feed(False, wire[-5:], 3) == ([], [])


def test_close_hands_out_a_cut_response_as_truncated() -> None:
    conv = HttpConversation()
    conv.feed(True, REQUEST, 1)
    wire = response(b'{"id": "msg_1", "content": [' + b" " * 50)
    conv.feed(False, wire[:-20], 2)
    closed = conv.close(3)
    assert len(closed) == 1 and closed[0].response.truncated
    assert closed[0].response.body.startswith(b'{"id": "msg_1"')


def test_garbage_and_http2_become_opaque_byte_counts() -> None:
    for first in (b"\x16\x03garbage\x00\xff" * 5, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        conv = HttpConversation()
        assert conv.feed(True, first, 1) == ([], [])
        assert conv.opaque and conv.bytes_seen == len(first)
        assert conv.feed(False, b"anything", 2) == ([], [])
    conv = HttpConversation()
    conv.feed(True, REQUEST, 1)
    assert conv.feed(False, b"HTTP/1.1 abc nonsense\r\n\r\n", 2) == ([], [])
    assert conv.opaque and conv.error


def test_lost_bytes_stop_parsing_instead_of_misframing() -> None:
    conv = HttpConversation()
    conv.feed(True, REQUEST, 1)
    conv.mark_gap()
    assert conv.feed(False, response(b"x"), 2) == ([], []) and conv.opaque


def test_filler_bytes_keep_framing_and_mark_the_message_truncated() -> None:
    conv = HttpConversation()
    head = REQUEST.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    conv.feed(True, head + b'{"model"', 1)
    started, _ = conv.feed(True, b"\0" * 9, 2, filler=True)
    assert started[0].request.truncated and len(started[0].request.body) == 17


def test_body_over_the_cap_is_truncated_not_kept() -> None:
    big = b"x" * (MAX_BODY + 10)
    conv = HttpConversation()
    conv.feed(True, REQUEST, 1)
    _, finished = conv.feed(False, response(big), 2)
    assert finished[0].response.truncated and len(finished[0].response.body) == MAX_BODY


def test_informational_head_and_no_body_responses_frame_correctly() -> None:
    conv = HttpConversation()
    head_req = b"HEAD /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"
    conv.feed(True, REQUEST + head_req + REQUEST, 1)
    wire = (b"HTTP/1.1 100 Continue\r\n\r\n" + response(b'{"a": 1}')
            + b"HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n"  # HEAD: a length, no body
            + b"HTTP/1.1 204 No Content\r\n\r\n")
    _, finished = conv.feed(False, wire, 2)
    assert [(f.request.method, f.response.status, f.response.body) for f in finished] == \
        [("POST", 200, b'{"a": 1}'), ("HEAD", 200, b""), ("POST", 204, b"")]


def test_body_until_close_is_complete_at_close() -> None:
    conv = HttpConversation()
    conv.feed(True, REQUEST, 1)
    assert conv.feed(False, b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"x\": 1}", 2) == ([], [])
    (exchange,) = conv.close(3)
    assert exchange.response.body == b'{"x": 1}' and not exchange.response.truncated


def test_more_responses_than_requests_is_not_trusted() -> None:
    conv = HttpConversation()
    conv.feed(True, REQUEST, 1)
    conv.feed(False, response(b"1") + response(b"2"), 2)
    assert conv.opaque and "more responses" in conv.error
