"""HTTP/1.1 reassembly of one TLS connection's plaintext, seen from the side of the process that
holds it: what it wrote and what it read. h11 does the framing (content-length, chunked,
keep-alive); this module adds body decoding (gzip, deflate, zstd) and the bookkeeping of a
passive observer that sees both directions.

Credentials never leave this module: Authorization, x-api-key, cookies and the like are dropped
from the headers the moment a head is parsed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import h11

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


class _Side:
    """One direction parsed with h11 as the peer role (requests or responses)."""

    def __init__(self, reads_requests: bool) -> None:
        self.reads_requests = reads_requests
        self.conn = h11.Connection(h11.SERVER if reads_requests else h11.CLIENT)
        self.current: HttpMessage | None = None
        self.decoder: _Decoder | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self.damaged = False  # bytes of the message in progress were not captured
        self._sse = False      # the message in progress is an event stream
        self._tail = b""       # its last decoded bytes (a terminal marker may straddle chunks)
        self._emitted = False  # it was handed out at its terminal event already

    def expect_response_to(self, method: str) -> None:
        """Mirror the request the other direction carried, so h11 knows what the reply frames."""
        self.conn.send(h11.Request(method=method or "GET", target="/",
                                   headers=[("host", "x"), ("content-length", "0")]))
        self.conn.send(h11.EndOfMessage())

    def answered(self) -> None:
        """Mirror a reply so the request side can parse the next request on this connection."""
        self.conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
        self.conn.send(h11.EndOfMessage())
        self.conn.start_next_cycle()

    def feed(self, data: bytes, ts: int) -> list[HttpMessage]:
        """Complete messages in `data`; raises h11.ProtocolError on a stream that is not HTTP."""
        done: list[HttpMessage] = []
        if data:  # h11 takes b"" as end of stream
            self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Request | h11.Response):
                self._start(event, ts)
            elif isinstance(event, h11.Data) and self.current is not None:
                if self._body(bytes(event.data)) and not self._emitted:
                    self._emitted = True
                    done.append(self._complete(ts))
            elif isinstance(event, h11.EndOfMessage) and self.current is not None:
                if not self._emitted:
                    done.append(self._complete(ts))
                self._parts, self._size, self.damaged, self._emitted = [], 0, False, False
                self.current = None
                if self.reads_requests:
                    self.answered()
                elif self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
        return done

    def _complete(self, ts: int) -> HttpMessage:
        assert self.current is not None
        self.current.end_ns = ts
        self.current.body = b"".join(self._parts)
        self.current.truncated |= self.damaged
        return self.current

    def partial(self, ts: int) -> HttpMessage | None:
        """The message in progress, as far as it got (the connection is closing)."""
        if self.current is None or self._emitted:
            return None
        msg = self._complete(ts)
        msg.truncated = True
        self.current = None
        return msg

    def _start(self, event: h11.Request | h11.Response, ts: int) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in event.headers if k.decode("latin-1").lower() in KEPT_HEADERS}
        if isinstance(event, h11.Request):
            msg = HttpMessage(True, ts, method=event.method.decode("latin-1"),
                              target=event.target.decode("latin-1"), headers=headers)
        else:
            msg = HttpMessage(False, ts, status=event.status_code, headers=headers)
        self.current = msg
        self.decoder = _Decoder(headers.get("content-encoding", ""))
        self._sse = "text/event-stream" in headers.get("content-type", "")
        self._tail = b""

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
        except (h11.ProtocolError, AssertionError, ValueError) as exc:
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
            self._out, self._in = _Side(reads_requests=True), _Side(reads_requests=False)
        started: list[Exchange] = []
        assert self._in is not None
        for request in self._out.feed(data, ts):
            started.append(Exchange(request))
        self._waiting += started
        return started

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
        while True:
            if self._in.conn.our_state is h11.IDLE and self._waiting:
                self._in.expect_response_to(self._waiting[0].request.method)
            responses = self._in.feed(data, ts)
            data = b""
            for response in responses:
                exchange = self._waiting.pop(0)
                exchange.response = response
                done.append(exchange)
            if not responses or not self._waiting:
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
