"""What the legs write, byte for byte: 1xx, HEAD, 204 and 304, trailers both ways, close-delimited
bodies, the upgrade tunnel, malformed app responses, and the proxy's own answers.

Each test plays the client and the app with bytes on fake transports and checks the bytes each
side received, the app connection's fate (back to the pool, or closed), and the request's record.
"""

from __future__ import annotations

import pytest
from support.dataplane import DataPath, request, response
from support.scrape import value

from sidecar_proxy.http.phase import AWAITING_HEAD, CONNECTING

UPGRADE = request(headers="Connection: upgrade\r\nUpgrade: websocket\r\n")
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-ID: rid-1\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


# == 1xx ===========================================================================================


def test_100_continue_is_relayed_and_the_app_decides_when_the_body_comes() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, ex = dp.begin(request("POST", "/e", headers="Expect: 100-continue\r\nContent-Length: 5\r\n"))
    assert b"Expect: 100-continue\r\n" in app.received()  # the app sees the expectation

    app.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert ex.phase is AWAITING_HEAD  # the 1xx is over; the final head is still to come

    c.send(b"hello")
    assert app.received() == b"hello"
    app.send(response(201, b"made", reason="Created"))
    assert c.received() == (
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Request-ID: rid-1\r\n\r\nmade"
    )
    assert dp.record.status == 201


def test_103_early_hints_reach_an_http11_client_before_the_response() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(EARLY_HINTS + response())
    assert c.received() == EARLY_HINTS + OK_HEAD + b"ok"
    assert dp.pool.released == [app.leg]


def test_1xx_is_not_relayed_to_an_http10_client() -> None:
    # RFC 9110 §15.2: an HTTP/1.0 client does not expect an interim response.
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(request(version="1.0"))
    app.send(b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS + response())
    out = c.response()
    assert (out.status, out.body) == (200, b"ok")


def test_malformed_final_response_after_a_relayed_1xx_is_still_a_clean_502() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.received() == b"HTTP/1.1 100 Continue\r\n\r\n"

    app.send(CHUNKED_HEAD + b"zz\r\n")

    out = c.response()  # a 1xx and then a 502 is a complete, valid exchange
    assert (out.status, out.complete) == (502, True) and not c.closed
    assert (dp.record.status, dp.record.flags) == (502, ["UPE"])


# == responses without a body ======================================================================


def test_head_response_has_no_body_and_its_connection_serves_the_next_request() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(request("HEAD", "/h"))
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")

    # HEAD keeps the representation's length; no body follows it
    assert c.received() == b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Request-ID: rid-1\r\n\r\n"
    assert dp.pool.released == [app.leg] and dp.record.bytes_out == 0

    # The app leg's parser still waits for 1234 body bytes; the next exchange must not read
    # the next response as that body.
    app.received()
    c.send(request(target="/next", rid="rid-2"))
    assert app.received().startswith(b"GET /next ")
    app.send(response(body=b"after"))
    assert c.response().body == b"after"
    assert [r.status for r in dp.records] == [200, 200]


@pytest.mark.parametrize(
    ("status_line", "sent"),
    [
        (b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 204 No Content\r\n"),
        (
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 99\r\n',
            b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 99\r\n',
        ),
    ],
    ids=["204", "304"],
)
def test_204_and_304_have_no_body_and_keep_both_connections(
    status_line: bytes, sent: bytes
) -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(status_line + b"\r\n")
    assert c.received() == sent + b"X-Request-ID: rid-1\r\n\r\n"
    assert not c.closed and dp.pool.released == [app.leg]
    c.send(request(rid="rid-2"))
    app.send(response())
    assert c.response().body == b"ok"


# == bodies and trailers ===========================================================================


def test_chunked_response_streams_read_by_read_and_its_trailers_are_relayed() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(CHUNKED_HEAD + b"4\r\nwxyz\r\n")
    # what one read from the app brought goes out at once, in one write
    assert c.received() == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Request-ID: rid-1\r\n\r\n4\r\nwxyz\r\n"
    )
    assert c.transport.writes == 1

    app.send(b"1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert c.received() == b"1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n"
    assert dp.pool.released == [app.leg] and dp.record.bytes_out == 5


def test_close_delimited_response_becomes_chunked_and_its_connection_is_not_reused() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of")
    app.send(b" it")
    app.transport.peer_eof()  # the end of the body
    out = c.response()
    assert (out.status, out.body, out.complete) == (200, b"all of it", True)
    assert out.header("Transfer-Encoding") == "chunked"
    assert not c.closed  # the client's connection outlives the app's
    assert app.transport.closed and dp.pool.released == []


def test_chunked_response_to_an_http10_client_ends_with_the_connection() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(request(version="1.0"))
    app.send(CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n")
    dp.loop.run_ready()
    assert c.received() == (
        b"HTTP/1.1 200 OK\r\nX-Request-ID: rid-1\r\nConnection: close\r\n\r\nhello"
    )
    assert c.closed


CHUNKED_UPLOAD = request("POST", "/c", headers="Transfer-Encoding: chunked\r\n")
WIRE_BODY = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"
FORWARDED_BODY = b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"  # extensions are not passed on


def test_request_trailers_are_forwarded_as_the_body_streams() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(CHUNKED_UPLOAD)
    head = app.received()
    assert head.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    c.send(WIRE_BODY)
    assert app.received() == FORWARDED_BODY


def test_request_trailers_that_arrive_before_the_app_connection_go_with_the_head() -> None:
    dp = DataPath()
    _, ex = dp.begin(CHUNKED_UPLOAD + WIRE_BODY)
    assert ex.phase is CONNECTING and ex.request_complete
    app = dp.pool.accept()
    assert app.received().endswith(b"Transfer-Encoding: chunked\r\n\r\n" + FORWARDED_BODY)
    assert app.transport.writes == 1  # head, body and trailers in one write


# == the upgrade tunnel ============================================================================


def test_upgrade_tunnel_holds_early_bytes_until_the_101_then_relays_both_ways() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(UPGRADE + b"hello")

    head = app.received()
    # anything before the app's 101 would be a request-smuggling vector: only the head goes
    assert head.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert not c.transport.reading  # and reading waits for the 101 too

    app.send(SWITCH + b"from-app")
    assert c.received() == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"X-Request-ID: rid-1\r\n\r\nfrom-app"
    )
    assert app.received() == b"hello" and c.transport.reading

    c.send(b"ping")
    assert app.received() == b"ping"
    app.send(b"pong")
    assert c.received() == b"pong"

    c.transport.peer_eof()  # a client closing its tunnel is how tunnels end
    assert app.transport.closed and dp.pool.released == []
    rec = dp.record
    assert (rec.status, rec.flags, rec.bytes_in, rec.bytes_out) == (101, [], 9, 12)


def test_app_closing_the_tunnel_closes_the_clients_connection() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(UPGRADE)
    app.send(SWITCH)
    c.received()
    app.send(b"bye")
    app.transport.peer_eof()
    assert c.received() == b"bye" and c.closed
    assert (dp.record.status, dp.record.flags) == (101, [])


def test_101_the_client_did_not_ask_for_is_a_502() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(SWITCH)
    out = c.response()
    assert out.status == 502 and b"switched protocols unasked" in out.body
    assert app.transport.closed and dp.record.flags == ["UPE"]


# == malformed app responses =======================================================================


def test_malformed_response_whose_head_is_unsent_is_retracted_for_a_clean_502() -> None:
    # The head and the fault come in one read: nothing of the 200 has left the proxy yet.
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(CHUNKED_HEAD + b"4\r\nwxyz\r\nzz\r\n")

    assert c.received() == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 51\r\nX-Request-ID: rid-1\r\n\r\n"
        b"502 Bad Gateway: the app sent a malformed response\n"
    )
    assert not c.closed and app.transport.closed
    rec = dp.record
    assert (rec.status, rec.flags, rec.upstream_errors, rec.bytes_out) == (
        502,
        ["UPE"],
        ["protocol_error"],
        0,
    )


def test_malformed_response_whose_head_was_sent_cuts_the_client() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(CHUNKED_HEAD + b"4\r\nwxyz\r\n")
    c.received()
    app.send(b"zz\r\n")
    assert c.received() == b"" and c.closed  # no last chunk: the client sees a truncated body
    assert (dp.record.status, dp.record.flags) == (200, ["UPE"])


def test_transfer_coding_the_proxy_does_not_decode_is_a_502() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n\x1f\x8b\r\n")
    out = c.response()
    assert out.status == 502 and b"transfer coding we do not decode" in out.body


def test_app_reset_mid_body_cuts_the_client() -> None:
    dp = DataPath(max_retries=3)
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    app.transport.peer_reset()
    out = c.response()
    assert (out.status, out.body, out.complete) == (200, b"0123456789", False) and c.closed
    assert (dp.record.flags, dp.record.upstream_errors, dp.record.attempts) == (
        ["UC"],
        ["reset"],
        1,
    )


# == the client hangs up ===========================================================================


def test_client_hang_up_while_connecting_cancels_the_connect() -> None:
    dp = DataPath()
    c, _ = dp.begin()
    (pending,) = dp.pool.pending
    c.transport.peer_eof()
    assert pending.task.cancelled()
    assert (dp.record.status, dp.record.flags, dp.record.upstream_errors) == (499, ["DC"], [])


def test_client_hang_up_mid_response_is_recorded_with_its_status() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")
    c.transport.peer_reset()
    assert app.transport.closed and dp.pool.idle == []
    assert (dp.record.status, dp.record.flags, dp.record.bytes_out) == (200, ["DC"], 2)


# == the proxy's own answers =======================================================================


def test_health_is_answered_on_the_proxy_port_without_the_app() -> None:
    dp = DataPath()
    c = dp.client()
    c.send(request(target="/health"))
    out = c.response()
    assert (out.status, out.body) == (200, b'{"status":"alive"}\n')
    assert dp.pool.connects == 0 and dp.record.flags == ["LR"]


def test_requests_over_the_in_flight_limit_are_shed_at_once_and_places_come_back() -> None:
    dp = DataPath(max_in_flight=2)
    admitted = [dp.begin(request(rid=f"in-{i}"))[0] for i in range(2)]
    shed = []
    for i in range(3):
        c = dp.client(peer=f"198.51.100.{i}")
        c.send(request(rid=f"shed-{i}"))
        shed.append(c.response())  # at once: no admitted request has ended yet
    assert [(o.status, o.header("Retry-After")) for o in shed] == [(503, "1")] * 3
    assert dp.pool.connects == 2  # the shed requests never reach the app
    assert [r.flags for r in dp.records] == [["UO"]] * 3
    assert value(dp.metrics.registry, "sidecar_requests_rejected_total", reason="shed") == 3

    for c in admitted:
        dp.pool.accept().send(response())
        assert c.response().status == 200
    # the places are given back
    c, _ = dp.begin(request(rid="after"))
    dp.app_of(c).send(response())
    assert c.response().status == 200


def test_rejected_pipelined_request_is_answered_in_its_turn_and_nothing_after_it() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c = dp.client()
    c.send(request(rid="a") + b"GET /x HTTP/1.1\r\n\r\n" + request(rid="c"))
    assert c.received() == b""  # the bad request waits for the one before it
    app.send(response())
    responses = c.responses()
    assert [r.status for r in responses] == [200, 400]
    assert responses[1].header("Connection") == "close"
    assert app.received().count(b"GET ") == 1  # the request after the bad one is never sent
    assert [(r.status, r.flags) for r in dp.records] == [(200, []), (400, ["DPE"])]
