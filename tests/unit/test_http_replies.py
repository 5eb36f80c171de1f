"""The proxy's own responses: status lines, complete local replies, error bodies."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from support.client import ResponseParse

from sidecar_proxy.http.replies import error_body, local_reply, status_line


@pytest.mark.parametrize("status", list(HTTPStatus))
def test_status_line_of_every_known_status(status: HTTPStatus) -> None:
    expected = b"HTTP/1.1 %d %b\r\n" % (status.value, status.phrase.encode())
    assert status_line(status.value) == expected
    # an app's standard reason phrase finds the same precomputed line
    assert status_line(status.value, status.phrase.encode()) is status_line(status.value)


def test_status_line_keeps_the_apps_own_reason_phrase() -> None:
    assert status_line(200, b"Fine") == b"HTTP/1.1 200 Fine\r\n"
    assert status_line(599, b"Custom") == b"HTTP/1.1 599 Custom\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Unknown\r\n"


def test_local_reply_bytes() -> None:
    out = local_reply(
        503,
        b"503 Service Unavailable: busy\n",
        request_id_line=b"X-Request-ID: r-1\r\n",
        close=True,
        extra=[(b"Retry-After", b"1")],
    )
    assert out == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 30\r\n"
        b"X-Request-ID: r-1\r\n"
        b"Retry-After: 1\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"503 Service Unavailable: busy\n"
    )


def test_local_reply_to_head_keeps_the_length_and_drops_the_body() -> None:
    out = local_reply(
        200,
        b'{"status":"alive"}\n',
        request_id_line=None,
        close=False,
        content_type=b"application/json",
        head_only=True,
    )
    assert out == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n"
    )


@pytest.mark.parametrize("close", [False, True])
def test_local_reply_is_one_complete_message_for_a_strict_parser(close: bool) -> None:
    body = error_body(502, "the app is unreachable")
    p = ResponseParse()
    p.parser.feed_data(local_reply(502, body, request_id_line=b"X-Request-ID: a\r\n", close=close))
    (resp,) = p.done
    assert (resp.status, resp.body, resp.header("X-Request-ID")) == (502, body, "a")
    assert resp.header("Connection") == ("close" if close else None)


def test_error_body_names_the_status_and_what_happened() -> None:
    assert error_body(504, "the app did not answer in time") == (
        b"504 Gateway Timeout: the app did not answer in time\n"
    )
    assert error_body(499, "client went away") == b"499 Error: client went away\n"
