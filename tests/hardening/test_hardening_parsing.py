"""Strict request parsing (RFC 9112): what the proxy refuses, with which status, and that a
refused request — and anything sent after it on the connection — never reaches the app.

Most tests start with a warm pool: the proxy holds an idle connection to the app, so a request
it wrongly forwarded would be written to the app at once rather than after a connect.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from support.client import Response, get, request
from support.hardening import (
    AppMark,
    TrackingUpstream,
    assert_never_completed,
    assert_nothing_reached,
    assert_rejected,
    exchange,
    mark,
    parse_responses,
    raw_request,
    running,
    touched_since,
)
from support.loop import LoopThread

from sidecar_proxy.server import ProxyServer

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


pytestmark = pytest.mark.usefixtures("no_crash")


@pytest.fixture(scope="module")
def pair(loop: LoopThread) -> Iterator[tuple[TrackingUpstream, ProxyServer]]:
    """One app and proxy for the module (starting a proxy costs about 0.1 s); every test marks
    what had reached the app before it and looks only at what came after."""
    with running(loop) as pair:
        yield pair


def post(*fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return raw_request(b"POST /upload HTTP/" + version, b"Host: test", *fields, body=body)


def get_with(*fields: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return raw_request(line, b"Host: test", *fields)


# Requests refused on their head alone: (raw, status). llhttp runs without leniency flags; the
# rest (versions, Host, transfer codings, target form) are the proxy's own RFC 9112 checks.
HEAD_REJECTS = [
    # -- framing: the root of request smuggling (RFC 9112 §6.1, §6.3)
    pytest.param(
        post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        id="content-length-then-chunked",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"),
        400,
        id="chunked-then-content-length",
    ),
    pytest.param(
        post(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
        400,
        id="two-different-content-lengths",
    ),
    # RFC 9110 §8.6 lets a recipient either reject identical duplicates or collapse them; the
    # proxy rejects (llhttp does), the choice that cannot disagree with any other hop.
    pytest.param(
        post(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
        400,
        id="duplicate-equal-content-length",
    ),
    pytest.param(post(b"Content-Length: 5, 5", body=b"hello"), 400, id="content-length-list"),
    pytest.param(post(b"Content-Length: abc"), 400, id="content-length-abc"),
    pytest.param(post(b"Content-Length: -1"), 400, id="content-length-negative"),
    pytest.param(post(b"Content-Length: 1 2", body=b"ab"), 400, id="content-length-1-2"),
    pytest.param(post(b"Content-Length: +5", body=b"hello"), 400, id="content-length-plus"),
    pytest.param(post(b"Content-Length: 0x5", body=b"hello"), 400, id="content-length-hex"),
    pytest.param(
        post(b"Content-Length: 99999999999999999999999"), 400, id="content-length-overflow"
    ),
    pytest.param(post(b"Content-Length: "), 400, id="content-length-empty"),
    # chunked must be the final coding of a request, else its length is unknowable: 400
    pytest.param(
        post(b"Transfer-Encoding: chunked, gzip", body=b"0\r\n\r\n"), 400, id="te-chunked-gzip"
    ),
    pytest.param(post(b"Transfer-Encoding: gzip", body=b"hello"), 400, id="te-gzip-alone"),
    pytest.param(post(b"Transfer-Encoding: identity"), 400, id="te-identity"),
    pytest.param(post(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400, id="te-xchunked"),
    # chunked applied twice is not allowed (RFC 9112 §7)
    pytest.param(
        post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"),
        400,
        id="te-chunked-twice",
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        id="te-chunked-in-two-fields",
    ),
    # a well-formed but unimplemented coding before the final chunked: 501 (RFC 9112 §6.1)
    pytest.param(
        post(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501, id="te-gzip-chunked"
    ),
    pytest.param(
        post(b"Transfer-Encoding: foo, chunked", body=b"0\r\n\r\n"), 501, id="te-unknown-chunked"
    ),
    # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing
    pytest.param(
        post(b"Transfer-Encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n", version=b"1.0"),
        400,
        id="http10-transfer-encoding",
    ),
    # -- field syntax (RFC 9112 §5)
    pytest.param(get_with(b"X-A: b", b" c"), 400, id="obs-fold-space"),
    pytest.param(get_with(b"X-A: b", b"\tc"), 400, id="obs-fold-tab"),
    pytest.param(get_with(b"X-A : b"), 400, id="space-before-colon"),
    pytest.param(get_with(b"X-A\t: b"), 400, id="tab-before-colon"),
    pytest.param(get_with(b"Transfer-Encoding : chunked"), 400, id="space-before-colon-te"),
    pytest.param(get_with(b"X(A): b"), 400, id="name-with-paren"),
    pytest.param(get_with(b"X A: b"), 400, id="name-with-space"),
    pytest.param(get_with(b": b"), 400, id="empty-name"),
    pytest.param(get_with(b"X-\xe9: b"), 400, id="name-non-ascii"),
    pytest.param(get_with(b"X-A: b\rc"), 400, id="cr-in-value"),
    pytest.param(get_with(b"X-A: b\nc"), 400, id="lf-in-value"),
    pytest.param(get_with(b"X-A: b\x00c"), 400, id="nul-in-value"),
    pytest.param(get_with(b"X-A: b\x7fc"), 400, id="del-in-value"),
    pytest.param(b"GET / HTTP/1.1\nHost: test\n\n", 400, id="bare-lf-line-ends"),
    # -- request line and version (RFC 9112 §2.3, §3; RFC 9110 §15.6.6)
    pytest.param(get_with(line=b"GET / HTTP/2.0"), 505, id="http-2.0"),
    pytest.param(get_with(line=b"GET / HTTP/3.0"), 505, id="http-3.0"),
    pytest.param(get_with(line=b"GET /a b HTTP/1.1"), 400, id="space-in-target"),
    pytest.param(get_with(line=b"GET /a\x00b HTTP/1.1"), 400, id="nul-in-target"),
    pytest.param(get_with(line=b"GET foo HTTP/1.1"), 400, id="target-without-slash"),
    pytest.param(get_with(line=b"GET ftp://h/p HTTP/1.1"), 400, id="absolute-form-not-http"),
    # -- Host (RFC 9110 §7.2, RFC 9112 §3.2)
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="http11-without-host"),
    pytest.param(get_with(b"Host: other"), 400, id="two-hosts"),
    pytest.param(get_with(b"Host: test"), 400, id="two-equal-hosts"),
    *[
        pytest.param(
            raw_request(b"GET / HTTP/1.1", b"Host: " + value), 400, id=f"invalid-host-{name}"
        )
        for name, value in [
            ("space", b"a b"),
            ("slash", b"a/b"),
            ("userinfo", b"user@a"),
            ("port-not-digits", b"a:http"),
            ("unclosed-ip-literal", b"[::1"),
        ]
    ],
]


@pytest.mark.parametrize(("raw", "status"), HEAD_REJECTS)
def test_bad_head_is_refused_and_nothing_reaches_the_app(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, raw: bytes, status: int
) -> None:
    assert_rejected(exchange(sidecar.port, raw), status)
    assert_nothing_reached(app, warm)


# Bodies found malformed while streaming: (head and body, what the parser trips on).
BAD_CHUNKED = [
    pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="chunk-size-zz"),
    pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="no-crlf-after-chunk-data"),
    pytest.param(b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", id="chunk-size-overflow"),
    pytest.param(b"5\nhello\n0\n\n", id="chunk-lines-end-in-lf"),
    pytest.param(b"-5\r\nhello\r\n0\r\n\r\n", id="chunk-size-negative"),
    pytest.param(b"5 5\r\nhello\r\n0\r\n\r\n", id="chunk-size-with-space"),
]


@pytest.mark.parametrize(
    "line",
    [
        # RFC 9112 §3.2.4: the asterisk-form is only for a server-wide OPTIONS
        pytest.param(b"GET * HTTP/1.1", id="asterisk-not-options"),
        # RFC 9112 §3.2.1: origin-form is absolute-path [ "?" query ]; a fragment is not part of
        # it, and servers disagree on whether to strip it
        pytest.param(b"GET /public#/../admin HTTP/1.1", id="fragment"),
        # RFC 9110 §4.2.4: userinfo in an http(s) URI SHOULD be treated as an error
        pytest.param(b"GET http://user:pw@test/p HTTP/1.1", id="userinfo"),
    ],
)
def test_target_outside_the_grammar_is_refused(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, line: bytes
) -> None:
    # RFC 9112 §3: an invalid request-line SHOULD get a 400; forwarding it leaves the app, and
    # any path-based rule in it, to guess what the client meant.
    assert_rejected(exchange(sidecar.port, raw_request(line, b"Host: test")), 400)
    assert_nothing_reached(app, warm)


def test_asterisk_form_options_is_forwarded(sidecar: ProxyServer, app: TrackingUpstream) -> None:
    assert (
        one_response(sidecar.port, raw_request(b"OPTIONS * HTTP/1.1", b"Host: test")).status == 200
    )
    assert app.received[-1].target == "*"


@pytest.mark.parametrize(
    "host",
    [
        pytest.param(b"example.test", id="name"),
        pytest.param(b"example.test:8080", id="name-port"),
        pytest.param(b"192.0.2.1:80", id="ipv4-port"),
        pytest.param(b"[2001:db8::1]:443", id="ipv6-literal-port"),
        pytest.param(b"a-b_c~d.e", id="unreserved-chars"),
        # RFC 9110 §7.2: a target without an authority is sent with an empty Host
        pytest.param(b"", id="empty"),
    ],
)
def test_valid_host_values_are_forwarded_with_exactly_one_host(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, host: bytes
) -> None:
    # The control for the invalid-host refusals: every authority form RFC 3986 allows passes,
    # and the app gets exactly one Host (RFC 9112 §3.2), the client's when it named one.
    resp = one_response(sidecar.port, raw_request(b"GET / HTTP/1.1", b"Host: " + host))
    assert resp.status == 200
    (req,) = app.received[warm.received :]
    hosts = req.header_all("Host")
    assert len(hosts) == 1, hosts
    if host:
        assert hosts == [host.decode()]


@pytest.mark.parametrize("body", BAD_CHUNKED)
def test_bad_chunked_body_on_a_cold_pool_reaches_nothing(loop: LoopThread, body: bytes) -> None:
    # Head and body in one read to a fresh proxy: the body is judged before any app
    # connection exists, so not one byte may leave.
    with running(loop) as (app, sidecar):
        raw = post(b"Transfer-Encoding: chunked", body=body)
        assert_rejected(exchange(sidecar.port, raw), 400)
        assert_nothing_reached(app, mark(app), settle=0.1)


@pytest.mark.parametrize("body", BAD_CHUNKED)
def test_bad_chunked_body_on_a_warm_pool_never_completes_at_the_app(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, body: bytes
) -> None:
    # With a connection ready, the head streams to the app before the body is read; the
    # request must then never complete there, and that connection must be closed, not reused.
    assert_rejected(exchange(sidecar.port, post(b"Transfer-Encoding: chunked", body=body)), 400)
    assert_never_completed(app, warm)
    touched = touched_since(app, warm)
    assert get(sidecar.port).status == 200
    assert app.received[-1].connection not in touched


SMUGGLED = raw_request(b"GET /smuggled HTTP/1.1", b"Host: test")

# A refused request followed, in the same write, by a valid one: the classic smuggling shapes
# and the proxy's own refusals.
SMUGGLING = [
    pytest.param(
        post(b"Content-Length: 6", b"Transfer-Encoding: chunked", body=b"0\r\n\r\nX"), id="CL.TE"
    ),
    pytest.param(
        post(b"Transfer-Encoding: chunked", b"Content-Length: 4", body=b"5c\r\n"), id="TE.CL"
    ),
    pytest.param(
        post(b"Content-Length: 4", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"),
        id="TE-obfuscated-value",
    ),
    pytest.param(
        post(b"Content-Length: 4", b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"),
        id="TE-obfuscated-name",
    ),
    pytest.param(
        post(b"Content-Length: 4", b"X-Pad: a", b" Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        id="TE-in-obs-fold",
    ),
    pytest.param(post(b"Content-Length: 0", b"Content-Length: 37"), id="CL.CL"),
    pytest.param(post(b"Transfer-Encoding: gzip", body=b"x"), id="TE-not-chunked"),
    pytest.param(get_with(line=b"GET / HTTP/2.0"), id="version-refused"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="host-missing"),
]


@pytest.mark.parametrize("bad", SMUGGLING)
def test_request_pipelined_behind_a_refused_one_is_never_forwarded(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, bad: bytes
) -> None:
    cap = exchange(sidecar.port, bad + SMUGGLED)
    assert_rejected(cap, {400, 501, 505})
    assert_nothing_reached(app, warm)


def test_bad_chunked_body_then_pipelined_request_is_never_forwarded(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark
) -> None:
    bad = post(b"Transfer-Encoding: chunked", body=b"5\r\nhelloXX0\r\n\r\n")
    assert_rejected(exchange(sidecar.port, bad + SMUGGLED), 400)
    time.sleep(0.05)
    assert app.received[warm.received :] == []
    assert all(b"/smuggled" not in raw for raw in app.raw)


SECOND = [
    pytest.param(post(b"Content-Length: 1", b"Content-Length: 2", body=b"ab"), 400, id="llhttp"),
    pytest.param(post(b"Transfer-Encoding: gzip", body=b"abc"), 400, id="te-check"),
    pytest.param(get_with(line=b"GET / HTTP/2.0"), 505, id="version-check"),
    pytest.param(
        post(b"Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n"), 400, id="body"
    ),
]


@pytest.mark.parametrize(("bad", "status"), SECOND)
def test_valid_then_refused_then_valid_pipelined(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, bad: bytes, status: int
) -> None:
    first = raw_request(b"GET /first HTTP/1.1", b"Host: test")
    third = raw_request(b"GET /third HTTP/1.1", b"Host: test")
    cap = exchange(sidecar.port, first + bad + third)
    parsed = parse_responses(cap.data)
    assert parsed.error is None, cap.data
    assert parsed.partial is None, cap.data
    assert parsed.statuses == [200, status], cap.data
    assert parsed.responses[0].body == b"GET /first"
    assert (parsed.responses[1].header("Connection") or "").lower() == "close"
    assert cap.closed
    time.sleep(0.05)
    assert [r.target for r in app.received[warm.received :]] == ["/first"]
    assert all(b"/third" not in raw for raw in app.raw)


# -- hop-by-hop and forwarding headers ---------------------------------------------------------


@pytest.mark.parametrize(
    "nominated",
    [
        b"Host",
        b"X-Forwarded-For",
        b"X-Request-ID",
        b"X-Forwarded-Host",
        b"Content-Length",
    ],
)
def test_connection_cannot_strip_what_the_proxy_must_send(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, nominated: bytes
) -> None:
    # Connection options name hop-by-hop fields to drop (RFC 9110 §7.6.1), but never the fields
    # the next hop needs: Host (RFC 9112 §3.2), framing, and what the proxy itself adds.
    raw = post(b"Connection: " + nominated, b"Content-Length: 3", body=b"abc")
    assert one_response(sidecar.port, raw).status == 200
    (req,) = app.received[warm.received :]
    assert req.header_all("Host") == ["test"]
    assert len(req.header_all("X-Forwarded-For")) == 1
    assert len(req.header_all("X-Request-ID")) == 1
    assert req.header_all("X-Forwarded-Host") == ["test"]
    assert req.header_all("Content-Length") == ["3"] and req.body == b"abc"
    assert req.header_all("Connection") == []


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param(b"req-42_abc.DEF", True, id="token"),
        pytest.param(b"a" * 200, True, id="200-chars"),
        pytest.param(b"a" * 201, False, id="201-chars"),
        pytest.param(b"two words", False, id="inner-space"),
        pytest.param(b"caf\xe9", False, id="obs-text"),
        pytest.param(b"", False, id="empty"),
    ],
)
def test_request_id_is_kept_only_when_safe(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark, sent: bytes, kept: bool
) -> None:
    # The id is copied into logs and response headers: only short visible ASCII survives.
    resp = one_response(sidecar.port, get_with(b"X-Request-ID: " + sent))
    assert resp.status == 200
    (req,) = app.received[warm.received :]
    (rid,) = req.header_all("X-Request-ID")
    # one id for the exchange: what the app got is what the client is told
    assert resp.header_all("X-Request-ID") == [rid]
    if kept:
        assert rid == sent.decode("latin-1")
    else:
        assert UUID.match(rid), rid


def test_several_request_ids_become_exactly_one(
    sidecar: ProxyServer, app: TrackingUpstream, warm: AppMark
) -> None:
    raw = get_with(b"X-Request-ID: first", b"X-Request-ID: two words", b"x-request-id: third")
    resp = one_response(sidecar.port, raw)
    (req,) = app.received[warm.received :]
    (rid,) = req.header_all("X-Request-ID")
    assert resp.header_all("X-Request-ID") == [rid]


def test_rejection_does_not_echo_an_unsafe_request_id(sidecar: ProxyServer) -> None:
    # The 400 carries a request id of its own; a client id fit to forge a header must not
    # be echoed into it. (llhttp refuses the control byte; the id must still be clean.)
    resp = assert_rejected(exchange(sidecar.port, get_with(b"X-Request-ID: x\x01y")), 400)
    rid = resp.header("X-Request-ID")
    assert rid is None or UUID.match(rid), rid


def one_response(port: int, raw: bytes) -> Response:
    responses = request(port, raw)
    assert len(responses) == 1 and responses[0].complete, responses
    return responses[0]
