"""Property-based checks of the request path.

1. Forwarding: for generated requests (methods, targets, end-to-end and hop-by-hop fields,
   forwarding fields, bodies framed by Content-Length or by chunks split anywhere, the whole
   sent in arbitrary pieces), the app receives exactly what a correct proxy forwards.
2. Fuzzing: mutations of valid requests (bytes flipped, inserted, deleted, lines duplicated,
   truncations) never crash the proxy, never make it send the app something the app cannot
   parse, never make it answer with malformed bytes, and never stop it serving.

One proxy serves all the examples of a test (hence the suppressed fixture health check); each
example looks only at what reached the app after it started.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.client import connect, get, read_responses
from support.hardening import (
    TrackingUpstream,
    check_request_head,
    exchange,
    loop_errors,
    parse_app_stream,
    parse_responses,
    running,
    wait_for,
)
from support.loop import LoopThread
from support.upstream import Received, ok

from sidecar_proxy.server import ProxyServer

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def pair(loop: LoopThread) -> Iterator[tuple[TrackingUpstream, ProxyServer]]:
    with running(loop, ok) as pair:
        yield pair


# == 1. what a correct proxy forwards ============================================================

TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
# Fields the proxy reads or rewrites itself; generated separately, never as random names.
RESERVED = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "expect",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
}
HOP_BY_HOP = [
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Proxy-Authorization", "Basic c2VjcmV0"),
    ("Proxy-Authenticate", "Basic"),
    ("Upgrade", "example/1"),  # without "Connection: upgrade" it is just a hop-by-hop field
]
PROXY_ADDED = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"}
FRAMING = {"content-length", "transfer-encoding"}

names = st.text(TCHAR, min_size=1, max_size=16).filter(lambda n: n.lower() not in RESERVED)
# visible ASCII, inner spaces and tabs, obs-text; a value never starts or ends with whitespace
# on the wire (llhttp strips it), so the generated ones do not either
values = st.text(
    string.ascii_letters + string.digits + string.punctuation + " \t" + "\xe9\xff", max_size=24
).map(lambda v: v.strip(" \t"))
segments = st.text(string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@", max_size=12)


@dataclass
class Generated:
    method: str
    target: str
    fields: list[tuple[str, str]]  # in the order sent, Host included
    nominated: list[str]  # field names the Connection field names
    xff: list[str]
    request_id: str | None
    body: bytes
    framing: str  # "length", "chunked" or "none"
    chunks: list[int]  # chunk sizes, for "chunked"
    pieces: list[int]  # where the raw request is cut into separate writes

    def raw(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{n}: {v}" for n, v in self.fields]
        if self.nominated:
            lines.append("Connection: " + ", ".join(self.nominated))
        lines += [f"X-Forwarded-For: {v}" for v in self.xff]
        if self.request_id is not None:
            lines.append(f"X-Request-ID: {self.request_id}")
        body = b""
        if self.framing == "length":
            lines.append(f"Content-Length: {len(self.body)}")
            body = self.body
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            pos = 0
            for size in [*self.chunks, len(self.body)]:
                if size > pos:
                    body += b"%x\r\n%b\r\n" % (size - pos, self.body[pos:size])
                    pos = size
            body += b"0\r\n\r\n"
        return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body

    def expected_fields(self) -> list[tuple[str, str]]:
        dropped = {n.lower() for n in self.nominated} | {n.lower() for n, _ in HOP_BY_HOP}
        return [(n, v) for n, v in self.fields if n.lower() not in dropped]


@st.composite
def requests(draw: st.DrawFn) -> Generated:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    path = "/" + "/".join(draw(st.lists(segments, max_size=4)))
    query = draw(st.one_of(st.just(""), segments.map(lambda q: "?" + q)))
    custom = draw(st.lists(st.tuples(names, values), max_size=8))
    hop = draw(st.lists(st.sampled_from(HOP_BY_HOP), max_size=3, unique=True))
    fields = [("Host", "test"), *custom, *hop]
    fields = draw(st.permutations(fields))
    custom_names = [n for n, _ in custom]
    nominated = draw(st.lists(st.sampled_from(custom_names), max_size=2)) if custom_names else []
    xff = draw(st.lists(st.sampled_from(["10.0.0.1", "192.0.2.7", "2001:db8::1"]), max_size=2))
    request_id = draw(
        st.one_of(st.none(), st.just("client-id-42"), st.just("not valid"), st.just("x" * 300))
    )
    body = draw(st.binary(max_size=3000))
    framing = draw(
        st.sampled_from(["length", "chunked"] if body else ["length", "chunked", "none"])
    )
    # chunk boundaries: cut points inside the body (none for an empty body)
    cuts = st.lists(st.integers(1, len(body)), max_size=6) if body else st.just([])
    chunks = sorted(draw(cuts))
    raw_len = 4000 + len(body)
    pieces = sorted(draw(st.lists(st.integers(1, raw_len), max_size=3, unique=True)))
    return Generated(
        method, path + query, fields, nominated, xff, request_id, body, framing, chunks, pieces
    )


def send_in_pieces(port: int, raw: bytes, cuts: list[int]) -> bytes:
    with connect(port) as sock:
        last = 0
        for cut in [c for c in cuts if c < len(raw)] + [len(raw)]:
            sock.sendall(raw[last:cut])
            last = cut
            time.sleep(0.002)  # separate writes, so separate reads at the proxy
        responses, _ = read_responses(sock, 1)
    assert len(responses) == 1 and responses[0].complete, responses
    assert responses[0].status == 200
    return responses[0].body


def non_proxy_fields(req: Received) -> list[tuple[str, str]]:
    return [(n, v) for n, v in req.headers if n.lower() not in PROXY_ADDED | FRAMING]


@EXAMPLES
@given(gen=requests())
def test_app_receives_exactly_what_a_correct_proxy_forwards(
    pair: tuple[TrackingUpstream, ProxyServer], gen: Generated
) -> None:
    app, sidecar = pair
    before = len(app.received)
    body = send_in_pieces(sidecar.port, gen.raw(), gen.pieces)
    assert body == f"{gen.method} {gen.target}".encode()
    assert wait_for(lambda: len(app.received) == before + 1)
    req = app.received[-1]

    assert (req.method, req.target, req.version) == (gen.method, gen.target, "1.1")
    assert req.body == gen.body
    # end-to-end fields, values and order as sent; hop-by-hop and nominated ones gone
    assert non_proxy_fields(req) == gen.expected_fields()
    # framing re-done by the proxy, in the same kind the client used
    if gen.framing == "chunked":
        assert req.header_all("Transfer-Encoding") == ["chunked"]
        assert req.header_all("Content-Length") == []
    elif gen.framing == "length":
        assert req.header_all("Content-Length") == [str(len(gen.body))]
        assert req.header_all("Transfer-Encoding") == []
    else:
        assert req.header_all("Content-Length") + req.header_all("Transfer-Encoding") == []
    # forwarding fields: exactly one each, the client's chain extended with its address
    assert req.header_all("X-Forwarded-For") == [", ".join([*gen.xff, "127.0.0.1"])]
    assert req.header_all("X-Forwarded-Proto") == ["http"]
    assert req.header_all("X-Forwarded-Host") == ["test"]
    (rid,) = req.header_all("X-Request-ID")
    if gen.request_id == "client-id-42":
        assert rid == gen.request_id
    else:
        assert UUID.match(rid), rid


# == 2. fuzzing the request path ==================================================================

BASES = [
    b"GET /a?b=c HTTP/1.1\r\nHost: test\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
    b"PUT /c HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: t\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: test\r\n\r\n"
    b"GET /2 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]
INSERTS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b",",
    b"0",
    b"9",
    b"f",
    b"\xff",
    b"chunked",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: other\r\n",
    b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n",
]


def mutate(base: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(base)
    for kind, pos, arg in ops:
        if not data:
            break
        at = pos % len(data)
        if kind == 0:  # flip some bits of one byte
            data[at] ^= arg or 1
        elif kind == 1:  # insert something meaningful to a parser
            data[at:at] = INSERTS[arg % len(INSERTS)]
        elif kind == 2:  # delete a few bytes
            del data[at : at + 1 + arg % 8]
        elif kind == 3:  # truncate
            del data[at:]
        else:  # duplicate the line that contains ``at``
            start = data.rfind(b"\n", 0, at) + 1
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end + 1
            data[end:end] = data[start:end]
    return bytes(data)


mutations = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=3,
)


def assert_responses_well_formed(data: bytes) -> None:
    parsed = parse_responses(data)
    assert parsed.error is None, f"malformed bytes from the proxy ({parsed.error}): {data!r}"
    assert parsed.partial is None, f"a response was left unfinished: {data!r}"
    for resp in parsed.responses:
        assert 100 <= resp.status <= 599
        framing = [n.lower() for n, _ in resp.headers if n.lower() in FRAMING]
        assert len(framing) <= 1, resp.headers


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(base=st.sampled_from(BASES), ops=mutations)
def fuzz_one(sidecar: ProxyServer, base: bytes, ops: list[tuple[int, int, int]]) -> None:
    # A short wait per input: most are refused at once; one the proxy is still reading (a
    # truncated head, a body that never comes) is abandoned, which is also worth fuzzing.
    cap = exchange(sidecar.port, mutate(base, ops), timeout=0.15, linger=0.05)
    assert_responses_well_formed(cap.data)


def test_mutated_requests_never_break_the_proxy(
    loop: LoopThread, pair: tuple[TrackingUpstream, ProxyServer]
) -> None:
    app, sidecar = pair
    with loop_errors(loop) as errors:
        fuzz_one(sidecar)
        # still serving
        assert get(sidecar.port).status == 200
    assert errors == [], errors

    # Everything the app was sent parses, request by request, and each head is clean. A
    # request may be cut short only where the proxy then closed that connection.
    cut_short: list[int] = []
    for number, raw in enumerate(app.raw, start=1):
        stream = parse_app_stream(bytes(raw))
        assert stream.error is None, f"app connection {number} got unparsable bytes: {raw!r}"
        for head in stream.heads:
            assert check_request_head(head) == [], (head, check_request_head(head))
        if stream.tail:
            cut_short.append(number)
    assert wait_for(lambda: all(n in app.ended for n in cut_short)), (
        f"connections {cut_short} were left open in the middle of a request"
    )
    for req in app.received:
        assert len(req.header_all("X-Request-ID")) == 1
