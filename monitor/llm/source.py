"""The llm event source: TLS plaintext from libssl uprobes, reassembled into HTTP exchanges and
turned into `llm_request` / `llm_response` events.

    source = LlmSource(capture="metadata")          # loads probes/ssl.c, attaches the host libssl
    source.add_cgroup(sandbox.cgroup_id, sandbox.cgroup_path)
    for event in source.poll(100): pipeline.process(event)
    source.notice_exec(pid, executable, cgroup_id)  # optional: attach at once to what pid maps
    source.lost(); source.stats(); source.close()

`TlsDecoder` is the pure half (records in, events out) and is what the unit tests drive.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from monitor.event import Event
from monitor.llm.http import Exchange, HttpConversation
from monitor.llm.probe import DIR_CLOSE, DIR_WRITE, TlsProbe, TlsRecord, static_tls_runtimes, system_libssl
from monitor.llm.providers import RequestInfo, parse_request, parse_response
from monitor.llm.redact import CAPTURE_MODES, DEFAULT_CAPTURE, apply_capture
from monitor.sandbox import Sandbox
from monitor.source import Source

MAX_CONNECTIONS = 4096
RESCAN_S = 5.0  # a process already scanned is scanned again this often (it may load a TLS library late)


class _Conn:
    __slots__ = ("conv", "pid", "tid", "uid", "gid", "comm", "cgroup_id", "expect", "total", "last_seen",
                 "llm_exchanges")

    def __init__(self, rec: TlsRecord) -> None:
        self.conv = HttpConversation()
        self.pid, self.tid, self.uid, self.gid, self.comm = rec.pid, rec.tid, rec.uid, rec.gid, rec.comm
        self.cgroup_id = rec.cgroup_id
        self.expect = [0, 0]  # per direction: next offset expected within the current call
        self.total = [0, 0]   # per direction: bytes the current call moved
        self.last_seen = 0
        self.llm_exchanges = 0


class TlsDecoder:
    """TLS records -> llm events. `call_cap` is the most bytes the probe copies of one call."""

    def __init__(self, capture: str = DEFAULT_CAPTURE, mono_to_wall: int = 0,
                 call_cap: int = 16384 * 64) -> None:
        if capture not in CAPTURE_MODES:
            raise ValueError(f"unknown llm capture mode {capture!r}")
        self.capture = capture
        self.mono_to_wall = mono_to_wall
        self.call_cap = call_cap
        self.conns: dict[tuple[int, int], _Conn] = {}
        self.counters: Counter[str] = Counter()

    def flush(self, ts_mono: int) -> list[Event]:
        """Close every connection (the sandbox is gone): responses cut short come out truncated."""
        events: list[Event] = []
        for key in list(self.conns):
            events += self._forget(key, ts_mono)
        return events

    def gap_all(self) -> None:
        """Records were lost somewhere: no open connection's framing can be trusted."""
        for conn in self.conns.values():
            conn.conv.mark_gap()

    def feed(self, rec: TlsRecord) -> list[Event]:
        return self.feed_batch([rec])

    def feed_batch(self, records: Iterable[TlsRecord]) -> list[Event]:
        """Events from records in arrival order. Consecutive records of one connection and
        direction (a streamed response read piece by piece) are parsed as one run of bytes."""
        events: list[Event] = []
        run: list[bytes] = []
        run_conn: _Conn | None = None
        run_out, run_ts = False, 0

        def flush() -> None:
            nonlocal run
            if run and run_conn is not None:
                events.extend(self._feed(run_conn, run_out, b"".join(run), run_ts))
            run = []

        for rec in records:
            key = (rec.pid, rec.ssl)
            if rec.direction == DIR_CLOSE:
                flush()
                events.extend(self._forget(key, rec.ts_mono))
                continue
            conn = self.conns.get(key)
            if conn is None:
                flush()
                if len(self.conns) >= MAX_CONNECTIONS:
                    events.extend(self._forget(min(self.conns, key=lambda k: self.conns[k].last_seen),
                                               rec.ts_mono))
                conn = self.conns[key] = _Conn(rec)
            conn.tid, conn.last_seen = rec.tid, rec.ts_mono
            self.counters["tls_records"] += 1
            self.counters["tls_bytes"] += len(rec.data)
            outgoing = rec.direction == DIR_WRITE
            d = 0 if outgoing else 1
            if conn is not run_conn or outgoing != run_out:
                flush()
            if rec.offset == 0:
                if conn.total[d] > conn.expect[d]:
                    flush()
                    events.extend(self._fill(conn, outgoing, conn.total[d] - conn.expect[d], rec.ts_mono))
                conn.total[d], conn.expect[d] = rec.total, 0
            elif rec.offset != conn.expect[d]:
                flush()
                conn.conv.mark_gap()  # a chunk of this call was lost
            run.append(rec.data)
            run_conn, run_out, run_ts = conn, outgoing, rec.ts_mono
            conn.expect[d] = rec.offset + len(rec.data)
            if rec.truncated and conn.expect[d] >= self.call_cap:
                flush()
                events.extend(self._fill(conn, outgoing, conn.total[d] - conn.expect[d], rec.ts_mono))
                conn.expect[d] = conn.total[d]
        flush()
        return events

    def _fill(self, conn: _Conn, outgoing: bool, missing: int, ts: int) -> list[Event]:
        """Keep HTTP framing through bytes the probe did not copy: zeros, and the message
        marked truncated."""
        if missing <= 0:
            return []
        self.counters["tls_bytes_not_copied"] += missing
        return self._feed(conn, outgoing, b"\0" * missing, ts, filler=True)

    def _feed(self, conn: _Conn, outgoing: bool, data: bytes, ts: int,
              filler: bool = False) -> list[Event]:
        was_opaque = conn.conv.opaque
        started, finished = conn.conv.feed(outgoing, data, ts, filler=filler)
        if conn.conv.opaque and not was_opaque:
            self.counters["tls_streams_unparsed"] += 1
        events = [e for ex in started if (e := self._on_request(conn, ex)) is not None]
        events += [e for ex in finished if (e := self._on_response(conn, ex)) is not None]
        return events

    def _event(self, conn: _Conn, kind: str, ts_mono: int, llm: dict[str, Any]) -> Event:
        return Event(kind=kind, time_ns=ts_mono + self.mono_to_wall, source="llm",
                     cgroup_id=conn.cgroup_id,
                     process={"pid": conn.pid, "tid": conn.tid, "comm": conn.comm, "uid": conn.uid,
                              "gid": conn.gid},
                     llm=apply_capture(llm, self.capture))

    def _on_request(self, conn: _Conn, exchange: Exchange) -> Event | None:
        req = exchange.request
        info = parse_request(req.target, req.headers, req.body, req.truncated)
        if info is None:
            self.counters["http_requests_other"] += 1
            return None
        exchange.context["info"] = info
        self.counters["llm_requests"] += 1
        conn.llm_exchanges += 1
        event = self._event(conn, "llm_request", req.start_ns, info.llm)
        exchange.context["request_event_id"] = event.id
        return event

    def _on_response(self, conn: _Conn, exchange: Exchange) -> Event | None:
        info: RequestInfo | None = exchange.context.get("info")
        resp = exchange.response
        if info is None or resp is None:
            return None
        parsed = parse_response(info, resp.status, resp.headers.get("content-type", ""), resp.body)
        if parsed is None:
            self.counters["llm_responses_unparsed"] += 1
            return None
        self.counters["llm_responses"] += 1
        llm: dict[str, Any] = {"provider": info.provider, "host": info.llm.get("host", ""),
                               "path": info.llm.get("path", "")}
        llm.update({k: v for k, v in parsed.items() if v is not None})
        llm["model"] = parsed.get("model") or info.model
        llm.setdefault("stream", info.stream)
        if exchange.context.get("request_event_id"):
            llm["request_event_id"] = exchange.context["request_event_id"]
        request_id = resp.headers.get("request-id") or resp.headers.get("x-request-id")
        if request_id:
            llm["request_id"] = request_id
        if resp.truncated:
            llm["truncated"] = True
        return self._event(conn, "llm_response", resp.end_ns, llm)

    def _forget(self, key: tuple[int, int], ts: int) -> list[Event]:
        conn = self.conns.pop(key, None)
        if conn is None:
            return []
        events = [e for ex in conn.conv.close(ts) if (e := self._on_response(conn, ex)) is not None]
        if conn.llm_exchanges == 0:
            self.counters["tls_bytes_other"] += conn.conv.bytes_seen
        if conn.conv.pending():
            self.counters["http_incomplete"] += 1  # closed before the response completed
        return events


def cgroup2_root() -> str:
    """Where the cgroup-v2 hierarchy is mounted (hybrid hosts: /sys/fs/cgroup/unified)."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    raise OSError("no cgroup2 mount in /proc/mounts")


def find_cgroup_path(cgroup_id: int) -> str | None:
    """The cgroup-v2 directory whose inode is `cgroup_id` (a walk: call once per sandbox)."""
    for dirpath, _dirs, _files in os.walk(cgroup2_root()):
        try:
            if os.stat(dirpath).st_ino == cgroup_id:
                return dirpath
        except OSError:
            continue
    return None


def cgroup_pids(path: str) -> list[int]:
    pids: list[int] = []
    for dirpath, _dirs, _files in os.walk(path):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as procs:
                pids += [int(line) for line in procs if line.strip()]
        except (OSError, ValueError):
            continue
    return pids


class LlmSource(Source):
    """llm_request / llm_response events from watched cgroups."""

    name = "llm"

    def __init__(self, capture: str = DEFAULT_CAPTURE, scan_interval_s: float = 0.5,
                 chunk: int = 16384, max_chunks: int = 64, ringbuf_pages: int = 2048) -> None:
        if capture == "off":
            raise ValueError("llm capture is off: do not create an LlmSource")
        self.probe = TlsProbe(chunk=chunk, max_chunks=max_chunks, ringbuf_pages=ringbuf_pages)
        self.decoder = TlsDecoder(capture, self.probe.mono_to_wall, chunk * max_chunks)
        for path in system_libssl() + static_tls_runtimes():
            self.probe.attach(path)
        self.cgroups: dict[int, str | None] = {}
        self.scan_interval_s = scan_interval_s
        self._next_scan = 0.0
        self._scanned: dict[int, float] = {}  # pid -> when its mappings were last looked at
        self._exec_scanned: dict[tuple[int, str], float] = {}  # (cgroup, executable) -> when
        self._lost_seen = 0

    def watch(self, sandbox: Sandbox) -> None:
        self.add_cgroup(sandbox.cgroup_id, sandbox.cgroup_path)

    def unwatch(self, sandbox: Sandbox) -> None:
        self.remove_cgroup(sandbox.cgroup_id)

    def add_cgroup(self, cgroup_id: int, cgroup_path: str | None = None) -> None:
        """Watch a sandbox's cgroup (its id is the inode of its cgroup-v2 directory). May be
        called from another thread than the poller (a container inventory)."""
        self.probe.add_cgroup(cgroup_id)
        self.cgroups[cgroup_id] = cgroup_path or find_cgroup_path(cgroup_id)
        self._next_scan = 0.0

    def remove_cgroup(self, cgroup_id: int) -> None:
        self.probe.remove_cgroup(cgroup_id)
        self.cgroups.pop(cgroup_id, None)

    def notice_exec(self, pid: int, executable: str = "", cgroup_id: int = 0) -> None:
        """A watched process exec'd: attach to its binary or libssl now (Node exports SSL_*).
        An executable already looked at in this sandbox within RESCAN_S is not looked at again
        (a build execs the same compiler thousands of times; libraries it loads later are found
        by the periodic scan)."""
        key = (cgroup_id, executable)
        now = time.monotonic()
        if executable.startswith("/") and now - self._exec_scanned.get(key, -RESCAN_S) < RESCAN_S:
            return
        self.probe.scan_pid(pid)
        if len(self._exec_scanned) >= 4096:
            self._exec_scanned.clear()
        self._exec_scanned[key] = now

    def _scan(self) -> None:
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + self.scan_interval_s
        scanned: dict[int, float] = {}
        for path in list(self.cgroups.values()):
            for pid in cgroup_pids(path) if path else []:
                last = self._scanned.get(pid)
                if last is None or now - last >= RESCAN_S:
                    self.probe.scan_pid(pid)
                    last = now
                scanned[pid] = last
        self._scanned = scanned

    def poll(self, timeout_ms: int) -> list[Event]:
        self._scan()
        records = self.probe.poll(timeout_ms)
        if not records:  # a loss matters to the streams only before the records that follow it
            return []
        lost = self.probe.lost()  # a table read through bcc: not on every turn of the loop
        lost_records = lost["ssl_write"] + lost["ssl_read"]
        if lost_records != self._lost_seen:
            self._lost_seen = lost_records
            self.decoder.gap_all()
        return self.decoder.feed_batch(records)

    def fileno(self) -> int:
        return self.probe.fileno()

    def drain(self) -> list[Event]:
        """At the end of a run: what is left of open connections (an agent killed mid-stream)."""
        return self.decoder.flush(time.monotonic_ns())

    def lost(self) -> dict[str, int]:
        """Non-zero counts only: records the kernel dropped or truncated, and streams or responses
        the decoder could not parse (skipped, never an error)."""
        lost = self.probe.lost()
        for key in ("tls_streams_unparsed", "llm_responses_unparsed", "http_incomplete"):
            lost[key] = self.decoder.counters[key]
        return {k: v for k, v in lost.items() if v}

    def stats(self) -> dict[str, Any]:
        return {**dict(self.decoder.counters), "attached": list(self.probe.attached_paths),
                "attach_errors": list(self.probe.attach_errors[-10:]), "capture": self.decoder.capture}

    def close(self) -> None:
        self.probe.close()
