"""HTTP/1.1 reassembly of one TLS connection's plaintext, seen from the side of the process that
holds it: what it wrote and what it read: framing (content-length, chunked, until close,
keep-alive, pipelining), body decoding (gzip, deflate, zstd), and the bookkeeping of a passive
observer that sees both directions.

Credentials never leave this module: Authorization, x-api-key, cookies and the like are dropped
from the headers the moment a head is parsed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

# Headers kept on a parsed message: nothing else is retained, so nothing else can leak.
KEPT_HEADERS = frozenset({"host", "content-type", "content-encoding", "content-length",
                          "transfer-encoding", "anthropic-version", "openai-beta", "user-agent",
                          "request-id", "x-request-id", "accept"})
MAX_BODY = 8 * 1024 * 1024  # bytes of decoded body kept per message; past it the body is truncated
MAX_EARLY = 256 * 1024      # bytes read before the request that explains them was seen
# An event stream is complete at its API's last event: clients stop reading there (the OpenAI SDK
# closes the connection after [DONE], before the chunked terminator).
SSE_TERMINAL = (b"data: [DONE]", b"message_stop", b"response.completed", b"response.failed",
                b"response.incomplete")

_METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ")


@dataclass(slots=True)
class HttpMessage:
    """A complete request or response. `body` is de-chunked and decompressed."""
    is_request: bool
    start_ns: int
    end_ns: int = 0
    method: str = ""
    target: str = ""
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False  # bytes of the body were not captured or not decodable

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


@dataclass(slots=True)
class Exchange:
    """A request, and its response once complete."""
    request: HttpMessage
    response: HttpMessage | None = None
    context: dict[str, Any] = field(default_factory=dict)  # the consumer's notes (parsed request)


class _Decoder:
    """Incremental content-encoding decoder (identity, gzip, deflate, zstd)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding.strip().lower()
        self.failed = False
        self._obj: Any = None
        if self.encoding in ("gzip", "x-gzip"):
            self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._obj = zlib.decompressobj(zlib.MAX_WBITS)
        elif self.encoding == "zstd":
            import zstandard
            self._obj = zstandard.ZstdDecompressor().decompressobj()
        elif self.encoding not in ("", "identity"):
            self.failed = True  # br and others: framing still works, the body is opaque

    def feed(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        if self._obj is None:
            return data
        try:
            return self._obj.decompress(data)
        except Exception:  # zlib.error / zstd.ZstdError: corrupt or truncated stream
            self.failed = True
            return b""


class HttpParseError(ValueError):
    """The bytes are not HTTP/1.x (or not any more): the connection becomes opaque."""


_HEAD_END = b"\r\n\r\n"
MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = (204, 304)


class _Side:
    """One direction of a connection, parsed as a stream of HTTP/1.x requests or responses.

    A small framing parser (start line, headers, content-length / chunked / until-close bodies):
    the monitor runs it on every exchange of every watched process, and a general-purpose
    state machine (h11) cost five times the CPU for the same work."""

    def __init__(self, reads_requests: bool, request_method: Any = None) -> None:
        self.reads_requests = reads_requests
        # responses: (n) -> method of the request the n-th response of this feed call answers
        self.request_method = request_method
        self._done_in_call = 0
        self.current: HttpMessage | None = None
        self.decoder: _Decoder | None = None
        self.damaged = False  # bytes of the message in progress were not captured
        self._buf = bytearray()
        self._state = "head"  # head | length | chunk_size | chunk_data | chunk_crlf | trailers | close
        self._remaining = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._sse = False      # the message in progress is an event stream
        self._tail = b""       # its last decoded bytes (a terminal marker may straddle chunks)
        self._emitted = False  # it was handed out at its terminal event already

    def feed(self, data: bytes, ts: int) -> list[HttpMessage]:
        """Complete messages in `data`; raises HttpParseError on a stream that is not HTTP."""
        done: list[HttpMessage] = []
        buf = self._buf
        buf += data
        self._done_in_call = 0
        while buf:
            self._done_in_call = len(done)
            state = self._state
            if state == "head":
                end = buf.find(_HEAD_END)
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise HttpParseError("head too large")
                    break
                head = bytes(buf[:end])
                del buf[:end + 4]
                self._start(head, ts)
                if self._state == "head" and self.current is not None:  # no body
                    done.append(self._finish(ts))
            elif state in ("length", "chunk_data", "close"):
                take = len(buf) if state == "close" else min(self._remaining, len(buf))
                chunk = bytes(buf[:take])
                del buf[:take]
                self._remaining -= take
                if self._body(chunk) and not self._emitted:
                    self._emitted = True
                    done.append(self._complete(ts))
                if state != "close" and self._remaining == 0:
                    if state == "length":
                        if (msg := self._finish(ts)) is not None:
                            done.append(msg)
                    else:
                        self._state = "chunk_crlf"
            elif state == "chunk_size":
                nl = buf.find(b"\r\n")
                if nl < 0:
                    if len(buf) > 1024:
                        raise HttpParseError("chunk size line too long")
                    break
                try:
                    size = int(bytes(buf[:nl]).split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpParseError("bad chunk size") from None
                del buf[:nl + 2]
                self._remaining = size
                self._state = "chunk_data" if size else "trailers"
            elif state == "chunk_crlf":
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise HttpParseError("chunk not followed by CRLF")
                del buf[:2]
                self._state = "chunk_size"
            elif state == "trailers":
                nl = buf.find(b"\r\n")
                if nl < 0:
                    break
                del buf[:nl + 2]
                if nl == 0 and (msg := self._finish(ts)) is not None:
                    done.append(msg)
        return done

    def _start(self, head: bytes, ts: int) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise HttpParseError("bad header line")
            key = name.decode("latin-1").lower()
            if key in KEPT_HEADERS:  # nothing else is kept: credentials never leave this loop
                headers[key] = value.strip().decode("latin-1")
        if self.reads_requests:
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[0].isalpha():
                raise HttpParseError("not an HTTP/1.x request line")
            msg = HttpMessage(True, ts, method=parts[0].decode("latin-1"),
                              target=parts[1].decode("latin-1"), headers=headers)
        else:
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() \
                    or len(parts[1]) != 3:
                raise HttpParseError("not an HTTP/1.x status line")
            msg = HttpMessage(False, ts, status=int(parts[1]), headers=headers)
            if msg.status < 200:  # informational (100 Continue): no body, not the answer
                return
        self.current = msg
        self.decoder = _Decoder(headers.get("content-encoding", ""))
        self._sse = "text/event-stream" in headers.get("content-type", "")
        self._tail = b""
        self._state = self._framing(msg, headers)

    def _framing(self, msg: HttpMessage, headers: dict[str, str]) -> str:
        if not msg.is_request:
            method = self.request_method(self._done_in_call) if self.request_method else "GET"
            if method == "HEAD" or msg.status in _NO_BODY_STATUS:
                return "head"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return "chunk_size"
        if "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise HttpParseError("bad content-length") from None
            if self._remaining < 0:
                raise HttpParseError("bad content-length")
            return "length" if self._remaining else "head"
        return "head" if msg.is_request else "close"

    def _complete(self, ts: int) -> HttpMessage:
        assert self.current is not None
        self.current.end_ns = ts
        self.current.body = b"".join(self._parts)
        self.current.truncated |= self.damaged
        return self.current

    def _finish(self, ts: int) -> HttpMessage | None:
        """End of the message in progress: it, unless it was handed out at its terminal event."""
        msg = None if self._emitted else self._complete(ts)
        self.current, self._state = None, "head"
        self._parts, self._size, self.damaged, self._emitted = [], 0, False, False
        return msg

    def partial(self, ts: int) -> HttpMessage | None:
        """The message in progress, as far as it got (the connection is closing). A body that
        runs until the connection closes is complete then."""
        if self.current is None or self._emitted:
            return None
        until_close = self._state == "close"
        msg = self._complete(ts)
        msg.truncated = msg.truncated or not until_close
        self.current = None
        return msg

    def _body(self, data: bytes) -> bool:
        """Add body bytes; True when an event stream just reached its terminal event."""
        assert self.current is not None and self.decoder is not None
        msg = self.current
        decoded = self.decoder.feed(data)
        if self.decoder.failed:
            msg.truncated = True
        room = MAX_BODY - self._size
        if len(decoded) > room:
            msg.truncated = True
            decoded = decoded[:max(room, 0)]
        if decoded:
            self._parts.append(decoded)
            self._size += len(decoded)
        if not self._sse or msg.is_request:
            return False
        window = self._tail + decoded
        self._tail = window[-64:]
        return any(marker in window for marker in SSE_TERMINAL)


class HttpConversation:
    """One TLS connection of a watched process. Feed it plaintext in the order the process moved
    it; get back requests as they complete and exchanges as their responses complete."""

    def __init__(self) -> None:
        self.opaque = False        # not HTTP/1.x (HTTP/2, another protocol, or unparseable)
        self.error = ""
        self.bytes_seen = 0
        self._out: _Side | None = None
        self._in: _Side | None = None
        self._waiting: list[Exchange] = []  # requests whose responses are not complete yet
        self._early: list[tuple[bytes, int]] = []  # response bytes seen before their request
        self._gap = False

    def mark_gap(self) -> None:
        """Bytes of this connection were lost: framing can no longer be trusted."""
        self._gap = True

    def feed(self, outgoing: bool, data: bytes, ts: int,
             filler: bool = False) -> tuple[list[Exchange], list[Exchange]]:
        """Returns (exchanges whose request completed, exchanges whose response completed):
        the same Exchange object comes back in the second list once answered. `filler` bytes
        stand in for bytes the probe did not copy: the message they fall in is truncated."""
        self.bytes_seen += len(data)
        if self.opaque or not data:
            return [], []
        if self._gap:
            self._fail("bytes lost in the ring buffer")
            return [], []
        side = self._out if outgoing else self._in
        if filler and side is not None:
            side.damaged = True
        try:
            if outgoing:
                return self._feed_out(data, ts), self._drain_early()
            return [], self._feed_in(data, ts)
        except (AssertionError, ValueError) as exc:  # HttpParseError is a ValueError
            self._fail(f"{type(exc).__name__}: {exc}")
            return [], []

    def _fail(self, why: str) -> None:
        self.opaque = True
        self.error = why
        self._waiting.clear()
        self._early.clear()

    def _feed_out(self, data: bytes, ts: int) -> list[Exchange]:
        if self._out is None:
            if not data.startswith(_METHODS):
                # a server inside the sandbox, HTTP/2, or another protocol: bytes only
                self._fail("not an HTTP/1.1 client stream")
                return []
            self._out = _Side(reads_requests=True)
            self._in = _Side(reads_requests=False, request_method=self._answered_method)
        started: list[Exchange] = []
        assert self._in is not None
        for request in self._out.feed(data, ts):
            started.append(Exchange(request))
        self._waiting += started
        return started

    def _answered_method(self, index: int) -> str:
        return self._waiting[index].request.method if index < len(self._waiting) else "GET"

    def _drain_early(self) -> list[Exchange]:
        if not self._early or not self._waiting:
            return []
        early, self._early = self._early, []
        done: list[Exchange] = []
        for data, ts in early:
            done += self._feed_in(data, ts)
        return done

    def _feed_in(self, data: bytes, ts: int) -> list[Exchange]:
        if self._in is None or (not self._waiting and self._in.current is None):
            # a reply whose request we have not seen yet (the writer's return probe ran late)
            if sum(len(d) for d, _ in self._early) + len(data) > MAX_EARLY:
                self._fail("response bytes without a request")
                return []
            self._early.append((data, ts))
            return []
        done: list[Exchange] = []
        for response in self._in.feed(data, ts):
            if not self._waiting:
                raise HttpParseError("more responses than requests")
            exchange = self._waiting.pop(0)
            exchange.response = response
            done.append(exchange)
        return done

    def close(self, ts: int) -> list[Exchange]:
        """The connection is closing: a response cut short is handed out as it got (truncated)."""
        if self.opaque or self._in is None or not self._waiting:
            return []
        response = self._in.partial(ts)
        if response is None:
            return []
        exchange = self._waiting.pop(0)
        exchange.response = response
        return [exchange]

    def pending(self) -> list[Exchange]:
        """Requests still waiting for their responses."""
        return self._waiting
