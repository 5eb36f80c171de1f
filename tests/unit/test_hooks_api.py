"""What a hook sees and may change: the header mapping, the request, the local answer."""

from __future__ import annotations

import pytest

from sidecar_proxy.hooks import AppResponse, Headers, Request, Response
from sidecar_proxy.hooks.api import request_edits, response_edits
from sidecar_proxy.http.fields import RequestHead, ResponseHead

LINES = [b"Host: example\r\n", b"Accept: */*\r\n", b"X-Tag: a\r\n", b"x-tag: b\r\n"]
NAMES = [b"host", b"accept", b"x-tag", b"x-tag"]


def request(target: bytes = b"/users/42?full=1") -> Request:
    head = RequestHead()
    head.method, head.target, head.lines, head.names = b"GET", target, list(LINES), list(NAMES)
    return Request(head, "10.0.0.7", "rid-1")


def target_of(r: Request) -> bytes | None:
    edits = request_edits(r)
    return None if edits is None else edits[0]


def test_a_view_of_the_head_lines_decodes_names_values_and_repeats() -> None:
    h = request().headers
    assert h["HOST"] == "example" and h["accept"] == "*/*"
    assert h["X-Tag"] == "a" and h.get_all("x-TAG") == ["a", "b"]
    assert list(h) == ["Host", "Accept", "X-Tag"]  # each name once, as first written
    assert len(h) == 3 and "x-tag" in h and "missing" not in h
    assert h.get("missing") is None
    with pytest.raises(KeyError):
        h["missing"]
    assert h.fields()[-1] == ("x-tag", "b")
    assert not h.changed


def test_setting_replaces_every_field_of_the_name_in_the_first_ones_place() -> None:
    h = request().headers
    h["x-TAG"] = "c"
    assert h.fields() == [("Host", "example"), ("Accept", "*/*"), ("x-TAG", "c")]
    h["New"] = " spaced\t"
    assert h["new"] == "spaced"  # surrounding whitespace is not part of a value
    assert h.changed


def test_add_keeps_repeats_and_delete_removes_them_all() -> None:
    h = Headers([("Set-Cookie", "a=1")])
    h.add("set-cookie", "b=2")
    assert h.get_all("SET-COOKIE") == ["a=1", "b=2"]
    del h["Set-Cookie"]
    assert "set-cookie" not in h and len(h) == 0
    with pytest.raises(KeyError):
        del h["set-cookie"]
    assert Headers({"A": "1", "b": "2"}).fields() == [("A", "1"), ("b", "2")]
    assert h.pop("nothing", None) is None  # the MutableMapping methods come with it


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Bad Name", "x"),
        ("", "x"),
        ("X-Ok", "injected\r\nX-Evil: 1"),
        ("X-Ok", "nul\x00"),
        ("X-Ok", "not latin-1: \u20ac"),
        ("Colon:", "x"),
    ],
)
def test_what_could_break_the_wire_is_refused_where_the_hook_sets_it(name: str, value: str) -> None:
    h = Headers()
    with pytest.raises(ValueError, match="header field"):
        h[name] = value
    with pytest.raises(ValueError, match="header field"):
        h.add(name, value)
    assert not h.changed and len(h) == 0


def test_a_value_must_be_text() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        Headers()["X-Count"] = 5  # type: ignore[assignment]


def test_request_fields_and_target() -> None:
    r = request()
    assert (r.method, r.path, r.query) == ("GET", "/users/42", "full=1")
    assert (r.client_ip, r.request_id) == ("10.0.0.7", "rid-1")
    assert request_edits(r) is None
    r.path = "/v2/users/42"
    assert request_edits(r) == (b"/v2/users/42?full=1", None)
    r.query = ""
    assert target_of(r) == b"/v2/users/42"
    assert repr(r) == "<Request GET /v2/users/42 id=rid-1>"
    assert request(b"*").path == "*"  # OPTIONS *: shown as it came


@pytest.mark.parametrize("path", ["users", "/a b", "/a?b", "/a#b", "/caf\u00e9", ""])
def test_a_path_that_cannot_go_into_a_request_line_is_refused(path: str) -> None:
    r = request()
    with pytest.raises(ValueError, match="invalid path"):
        r.path = path
    assert request_edits(r) is None


def test_a_query_is_checked_too() -> None:
    r = request()
    for query in ("a b", "a#b", "\n"):
        with pytest.raises(ValueError, match="invalid query"):
            r.query = query
    assert request_edits(r) is None


def test_the_proxy_learns_only_what_changed() -> None:
    r = request()
    assert request_edits(r) is None  # never looked at: nothing decoded, nothing to do
    assert r.headers["accept"] == "*/*" and r.notes == {}
    assert request_edits(r) is None  # read, not changed
    r.headers["accept"] = "text/html"
    assert request_edits(r) == (
        None,
        [("Host", "example"), ("accept", "text/html"), ("X-Tag", "a"), ("x-tag", "b")],
    )
    head = ResponseHead()
    head.status, head.lines, head.names = 200, [b"Server: app\r\n"], [b"server"]
    resp = AppResponse(head)
    assert resp.status == 200 and response_edits(resp) is None
    assert resp.headers["server"] == "app" and response_edits(resp) is None
    del resp.headers["server"]
    assert response_edits(resp) == []


def test_a_local_answer() -> None:
    answer = Response(401, "no key\n", {"WWW-Authenticate": "ApiKey"})
    assert (answer.status, answer.body, answer.headers["www-authenticate"]) == (
        401,
        b"no key\n",
        "ApiKey",
    )
    assert Response(204).body == b""
    assert Response(200, bytearray(b"x")).body == b"x"


@pytest.mark.parametrize("status", [100, 101, 199, 600, True, "200", 200.0])
def test_a_local_answer_has_a_final_status(status: object) -> None:
    with pytest.raises(ValueError, match="status must be 200-599"):
        Response(status)  # type: ignore[arg-type]


def test_a_local_answer_without_a_body_cannot_have_one() -> None:
    for status in (204, 304):
        with pytest.raises(ValueError, match="has no body"):
            Response(status, b"x")
    with pytest.raises(TypeError, match="bytes or str"):
        Response(200, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="header field"):
        Response(200, headers={"X": "a\r\nb"})
