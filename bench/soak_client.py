"""The soak's clients: a few dozen keep-alive connections sending mixed traffic at a bounded rate,
and the ledger of what each request got back.

The HTTP client is written here on non-blocking sockets and httptools rather than taken from a
library, because the ledger must be able to trust that each request left the client exactly
once (library clients may resend an idempotent request on a stale keep-alive connection) and
must tell apart the ways a request can end: a complete response, a body cut short, a connection
closed or reset with no response, a timeout, or a hang-up the client made itself.

It reads while it sends, and stops sending once the answer is complete, as curl and browsers
do, so an early answer (a 503 before a 100 KiB body is through) is read rather than lost. It uses
``loop.sock_recv``/``sock_sendall`` rather than asyncio streams for the same reason: after a
failed write (the proxy closed with body bytes unread, so its kernel answered them with a
reset), a stream reader raises at once even with the answer already in its buffer, and a
transport stops reading; a plain socket still returns what the kernel had received. Such
requests are marked ``write_error`` so the report can count them.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from bench.soak_app import HOST, request_payload, response_payload, response_size, sha256_hex

# kind -> (method, path segment, weight in percent). "hold", "partial" and "midstream" are the
# hang-ups: the client gives up before the answer, half-way through its body, or half-way
# through a streamed answer.
KINDS: dict[str, tuple[str, str, int]] = {
    "get": ("GET", "get", 44),
    "post": ("POST", "post", 20),
    "postkey": ("POST", "postkey", 12),
    "put": ("PUT", "put", 8),
    "stream": ("GET", "stream", 8),
    "hold": ("GET", "hold", 3),
    "partial": ("POST", "partial", 3),
    "midstream": ("GET", "stream", 2),
}
HANGUP_KINDS = frozenset({"hold", "partial", "midstream"})
# Requests the proxy must never send twice: POSTs without Idempotency-Key.
UNSAFE_KINDS = frozenset({"post", "partial"})

PUT_BYTES = 100 * 1024  # over the proxy's 64 KiB replay buffer, so never retried
PARTIAL_DECLARED = 4096  # a "partial" POST declares this much body ...
PARTIAL_SENT = 2048  # ... and sends only this much before hanging up
HANG_UP_AFTER = 0.15  # seconds a "hold" or "partial" client waits for an answer before leaving
# A request with no complete answer by then is lost. The slowest legitimate answer is a stream
# whose head took the whole REQUEST_TIMEOUT (2 s) followed by its 1 s body; twice that is ample.
CLIENT_TIMEOUT = 6.0

# Outcomes (ClientRecord.outcome)
RESPONSE = "response"  # a complete response
TRUNCATED = "truncated"  # the response head came, its body did not finish
CLOSED = "closed"  # the connection closed with no response at all
RESET = "reset"  # the connection was reset with no response at all
TIMEOUT = "timeout"  # nothing complete within CLIENT_TIMEOUT
PROTOCOL_ERROR = "protocol-error"  # the bytes were not a valid HTTP/1.1 response
EXTRA = "extra"  # more response bytes followed the complete response
CONNECT_ERROR = "connect-error"  # the client could not connect to the proxy
HANGUP = "hangup"  # the client hung up on purpose before a complete response

# Bounds on the loops below, far above what a soak reaches; they only stop a runaway.
_MAX_READS_PER_RESPONSE = 100_000
_MAX_REQUESTS_PER_WORKER = 10_000_000


@dataclass(slots=True)
class ClientRecord:
    """One request as the client sent it and what it got back."""

    rid: str
    kind: str
    method: str
    worker: int
    t_start: float  # time.monotonic() just before the first byte was written
    t_end: float = 0.0  # when the outcome was known
    outcome: str = ""
    status: int = 0
    resp_rid: str = ""  # the response's X-Request-ID
    soak_id: str = ""  # X-Soak-Id: set only on answers the app itself produced
    soak_fault: str = ""  # X-Soak-Fault: the app's 503 burst
    body_ok: bool | None = None  # for 200s: every byte as expected, request body echoed intact
    body_len: int = 0
    detail: str = ""  # start of a non-200 body, or what went wrong
    sent_len: int = 0  # request body bytes the client meant to send
    sent_sha: str = ""
    idempotency_key: bool = False
    reused: bool = False  # sent on a connection that had carried a request before
    write_error: str = ""  # sending failed (the proxy had closed); the answer may still have come
    conn_id: int = 0  # which client connection carried it (1-based)
    prev_rid: str = ""  # the request before it on the same connection


class _Response:
    """httptools callbacks for one connection's responses."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reset()

    def reset(self) -> None:
        self.began = False
        self.head_done = False
        self.complete = False
        self.extra = False
        self.status = 0
        self.keep_alive = False
        self.headers: dict[str, str] = {}
        self.body = bytearray()

    def on_message_begin(self) -> None:
        if self.began:
            self.extra = True  # a second response to one request
        self.began = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.head_done = True
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.extra = True
        else:
            self.body += body

    def on_message_complete(self) -> None:
        if self.complete:
            self.extra = True
        self.complete = True


class _Conn:
    """One keep-alive connection to the proxy."""

    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.conn_id = conn_id
        self.resp = _Response()
        self.requests = 0
        self.last_rid = ""
        self.closed = False

    def abort(self) -> None:
        self.closed = True
        self.sock.close()


class Pacer:
    """Spaces request starts across all workers to at most ``rate`` per second, until ``until``."""

    def __init__(self, rate: float, until: float) -> None:
        self.interval = 1.0 / rate
        self.until = until
        self.next = time.monotonic()

    async def wait(self) -> bool:
        """Wait for the next slot; False once the traffic phase is over."""
        now = time.monotonic()
        slot = max(self.next, now)
        if slot >= self.until:
            return False
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
        return True


class Traffic:
    """The workers and their shared ledger."""

    def __init__(self, port: int, workers: int, pacer: Pacer, seed: int, run_tag: str) -> None:
        self.port = port
        self.workers = workers
        self.pacer = pacer
        self.seed = seed
        self.run_tag = run_tag  # 8 hex digits, so ids are unique across runs
        self.ledger: list[ClientRecord] = []
        self.connections = 0
        self._seq = 0
        names = list(KINDS)
        weights = [KINDS[k][2] for k in names]
        self._pick: Callable[[random.Random], str] = lambda rng: rng.choices(names, weights)[0]

    def _next_rid(self) -> str:
        # 16 hex digits: unique per request, and the proxy's path labels collapse it to :id, so
        # the soak does not fill the metrics' path label set.
        self._seq += 1
        return f"{self.run_tag}{self._seq:08x}"

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(i) for i in range(self.workers)))

    async def _worker(self, idx: int) -> None:
        rng = random.Random(self.seed * 1009 + idx)
        conn: _Conn | None = None
        try:
            for _ in range(_MAX_REQUESTS_PER_WORKER):
                if not await self.pacer.wait():
                    break
                kind = self._pick(rng)
                method = KINDS[kind][0]
                rec = ClientRecord(self._next_rid(), kind, method, idx, time.monotonic())
                self.ledger.append(rec)
                conn = await self._one(conn, rec, rng)
        finally:
            if conn is not None:
                conn.abort()

    async def _connect(self) -> _Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (HOST, self.port)), 5.0
            )
        except BaseException:
            sock.close()
            raise
        self.connections += 1
        return _Conn(sock, self.connections)

    def _request(self, rec: ClientRecord, rng: random.Random) -> tuple[bytes, bytes]:
        """The request head and the body bytes to send (for "partial", less than declared)."""
        _, segment, _ = KINDS[rec.kind]
        lines = [
            f"{rec.method} /soak/{segment}/{rec.rid} HTTP/1.1",
            f"Host: {HOST}:{self.port}",
            f"X-Request-ID: {rec.rid}",
        ]
        body = b""
        declared = 0
        if rec.kind in ("post", "postkey"):
            # small JSON of varying size, so bodies do not all fall on the same boundaries
            doc = {"id": rec.rid, "kind": rec.kind, "pad": "x" * rng.randrange(16, 400)}
            body = json.dumps(doc).encode()
            lines.append("Content-Type: application/json")
            if rec.kind == "postkey":
                lines.append(f"Idempotency-Key: key-{rec.rid}")
                rec.idempotency_key = True
            declared = len(body)
        elif rec.kind == "put":
            body = request_payload(rec.rid, PUT_BYTES)
            lines.append("Content-Type: application/octet-stream")
            declared = len(body)
        elif rec.kind == "partial":
            body = request_payload(rec.rid, PARTIAL_SENT)
            lines.append("Content-Type: application/octet-stream")
            declared = PARTIAL_DECLARED
        if declared or rec.method in ("POST", "PUT"):
            lines.append(f"Content-Length: {declared}")
        rec.sent_len = len(body)
        rec.sent_sha = sha256_hex(body)
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), body

    async def _one(self, conn: _Conn | None, rec: ClientRecord, rng: random.Random) -> _Conn | None:
        """Send one request and read its outcome; returns the connection if it can be reused."""
        head, body = self._request(rec, rng)
        if conn is None or conn.closed:
            try:
                conn = await self._connect()
            except (OSError, TimeoutError) as exc:
                rec.outcome, rec.detail, rec.t_end = CONNECT_ERROR, repr(exc), time.monotonic()
                return None
        rec.reused = conn.requests > 0
        rec.conn_id, rec.prev_rid = conn.conn_id, conn.last_rid
        conn.requests += 1
        conn.last_rid = rec.rid
        conn.resp.reset()
        rec.t_start = time.monotonic()
        deadline = rec.t_start + CLIENT_TIMEOUT
        loop = asyncio.get_running_loop()
        sending = asyncio.create_task(loop.sock_sendall(conn.sock, head + body))
        hang_up_at = None
        if rec.kind in ("hold", "partial"):
            hang_up_at = time.monotonic() + HANG_UP_AFTER
        try:
            await self._read(conn, rec, deadline, hang_up_at, midstream=rec.kind == "midstream")
        finally:
            rec.t_end = time.monotonic()
            sent_all = sending.done() and not sending.cancelled() and not sending.exception()
            if sending.done() and not sending.cancelled() and sending.exception() is not None:
                rec.write_error = repr(sending.exception())
            sending.cancel()  # an answer came before the whole body went: stop sending it
            await asyncio.gather(sending, return_exceptions=True)
        if rec.outcome == RESPONSE:
            self._judge(conn.resp, rec)
            if conn.resp.extra:
                rec.outcome = EXTRA
        if rec.outcome != RESPONSE or not conn.resp.keep_alive or not sent_all:
            conn.abort()
            return None
        return conn

    async def _read(
        self,
        conn: _Conn,
        rec: ClientRecord,
        deadline: float,
        hang_up_at: float | None,
        *,
        midstream: bool,
    ) -> None:
        resp = conn.resp
        for _ in range(_MAX_READS_PER_RESPONSE):
            if resp.complete:
                rec.outcome = RESPONSE
                return
            if midstream and resp.status == 200 and resp.body:
                conn.abort()  # hang up half-way through a streamed answer
                rec.outcome = HANGUP
                return
            now = time.monotonic()
            until = deadline
            if hang_up_at is not None and not resp.began:
                until = min(until, hang_up_at)
            if now >= until:
                conn.abort()
                rec.outcome = HANGUP if until != deadline else TIMEOUT
                return
            try:
                data = await asyncio.wait_for(
                    asyncio.get_running_loop().sock_recv(conn.sock, 65536), until - now
                )
            except TimeoutError:
                continue  # the loop top decides: hang up, or time out
            except ConnectionError as exc:
                conn.abort()
                rec.outcome = TRUNCATED if resp.head_done else RESET
                rec.detail = repr(exc)
                return
            if not data:
                conn.abort()
                rec.outcome = TRUNCATED if resp.head_done else CLOSED
                return
            try:
                resp.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                conn.abort()
                rec.outcome, rec.detail = PROTOCOL_ERROR, repr(exc)
                return
        conn.abort()
        rec.outcome, rec.detail = TIMEOUT, "read bound reached"

    @staticmethod
    def _judge(resp: _Response, rec: ClientRecord) -> None:
        rec.status = resp.status
        rec.resp_rid = resp.headers.get("x-request-id", "")
        rec.soak_id = resp.headers.get("x-soak-id", "")
        rec.soak_fault = resp.headers.get("x-soak-fault", "")
        rec.body_len = len(resp.body)
        if resp.status != 200:
            rec.detail = bytes(resp.body[:120]).decode("latin-1").strip()
            return
        problems = []
        if rec.soak_id != rec.rid:
            problems.append(f"X-Soak-Id {rec.soak_id!r}")
        echoed = resp.headers.get("x-soak-req-sha", "")
        if echoed != rec.sent_sha:
            problems.append("request body arrived altered")
        expected = response_payload(rec.rid, response_size(KINDS[rec.kind][1]))
        if resp.body != expected:
            problems.append(f"body differs ({len(resp.body)} of {len(expected)} bytes)")
        rec.body_ok = not problems
        if problems:
            rec.detail = "; ".join(problems)
