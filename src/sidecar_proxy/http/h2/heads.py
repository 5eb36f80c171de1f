"""Heads between HTTP/2 field lists and the line records the exchange works with.

The exchange sees every message as a :class:`~sidecar_proxy.http.fields.RequestHead` or
:class:`~sidecar_proxy.http.fields.ResponseHead`: ``lines`` of ready ``Name: value\\r\\n`` bytes
with lower-cased ``names``. An HTTP/2 leg converts at its edge, both ways:

- pseudo-header fields (RFC 9113 §8.3) become the record's method, target and status, and
  ``:authority`` stands for Host (§8.3.1), in both directions;
- connection-specific fields (§8.2.2) make a received message malformed; on the way out they are
  never written (the HTTP/1.1 leg has dropped them already, and fields its Connection header
  nominated are dropped here); ``te: trailers`` is the one exception, and is kept (gRPC needs it);
- split ``cookie`` crumbs are joined again for HTTP/1.1 (§8.2.3).

A received field list that breaks a rule of RFC 9113 §8.2-8.3 is *malformed*: the stream is reset
with PROTOCOL_ERROR and no exchange is made (:class:`Malformed`). A well-formed request the
proxy will not forward (too large, a bad authority, CONNECT) becomes an exchange that answers
it, like the same request over HTTP/1.1.
"""

from __future__ import annotations

import re
from typing import Final

from sidecar_proxy.http import fields as H
from sidecar_proxy.http.fields import RequestHead, ResponseHead
from sidecar_proxy.http.h2.hpack import Field
from sidecar_proxy.http.headers import end_to_end, valid_host
from sidecar_proxy.http.legs import Trailers

# RFC 9113 §8.2.1: a name is lower-case token characters; a value holds no NUL, CR or LF and
# neither starts nor ends with whitespace. Checked on every field received from either peer: a
# CR or LF let through would split a line on the HTTP/1.1 side (request smuggling). A whole list
# is checked in two passes rather than two regex calls per field, which cost a fifth of a
# request's conversion: the names joined, with every token character deleted, must leave just
# the colons of the pseudo-header names; the values joined by LF (itself forbidden in a value,
# so a count tells one inside a value) must hold no NUL or CR, and no whitespace next to an LF
# or at either end: substring searches, each one pass in C, cheaper than one regex here. With
# find(), not ``in``: CPython's ``bytes in bytes`` first tries the operand as an integer and
# formats a TypeError it then discards; the six tests take 0.97 us instead of 1.65 us
# (docs/benchmarks.md, "gRPC").
_TOKEN: Final = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_BLANK: Final = (b" ", b"\t")
# what may not appear in a method or a target written into an HTTP/1.1 request line
_BAD_TARGET: Final = re.compile(rb"[\x00-\x20\x7f]")
_METHOD: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9113 §8.2.2; ``te`` is allowed with the value "trailers" only
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path"})
# methods whose request without content still tells an HTTP/1.1 app "Content-Length: 0"
_CONTENT_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})

# Fields only this leg reads: cookie crumbs to join, and what makes a request a gRPC call (gRPC
# is defined over HTTP/2 only, so the HTTP/1.1 leg never looks).
_NOTED: Final = frozenset({b"cookie", b"content-type", b"grpc-timeout"})

_STATUS: Final = {code: b"%d" % code for code in range(100, 600)}


class Malformed(Exception):
    """A field list RFC 9113 calls malformed (§8.1.1): a stream error PROTOCOL_ERROR."""


def _classify(head: RequestHead, kind: int, value: bytes) -> bool:
    """Note a request field the proxy reads or rewrites (``kind`` from ``REQUEST_FIELDS``, Host
    and the connection-specific ones taken care of before); True when it is forwarded as it is.
    The HTTP/1.1 leg does the same inline in its parser callback, where a call per field counts."""
    if kind == H.REQ_USER_AGENT:
        head.user_agent = value
    elif kind == H.REQ_TRACEPARENT:
        head.traceparent = value
    elif kind == H.REQ_B3_TRACE_ID:
        head.b3_trace_id = value
    elif kind == H.REQ_IDEMPOTENCY_KEY:
        head.idempotency_key = True
    else:  # not forwarded as it is: the length, hop-by-hop, or re-added by the exchange
        if kind == H.REQ_CONTENT_LENGTH:
            length = _length(value)
            if head.content_length is not None and head.content_length != length:
                raise Malformed("conflicting content-length fields")
            head.content_length = length
        elif kind == H.REQ_REQUEST_ID:
            head.request_id = value
        elif kind == H.REQ_X_FORWARDED_FOR:
            head.xff = head.xff + b", " + value if head.xff else value
        elif kind == H.REQ_X_FORWARDED_PROTO:
            head.forwarded_proto = value
        elif kind == H.REQ_X_FORWARDED_HOST:
            head.forwarded_host = value
        return False
    return True


def _length(value: bytes) -> int:
    """A content-length value: plain digits, and not absurdly many (RFC 9110 §8.6)."""
    if not value.isdigit() or len(value) > 18:
        raise Malformed("invalid content-length")
    return int(value)


def _check_fields(fields: list[Field], pseudo: int) -> None:
    """RFC 9113 §8.2.1 over a field list with ``pseudo`` pseudo-header fields."""
    if b"".join([f[0] for f in fields]).translate(None, _TOKEN) != b":" * pseudo:
        raise Malformed("invalid field name")
    values = b"\n".join([f[1] for f in fields])
    # find(), not ``in``: CPython's bytes ``in`` first tries its operand as an integer and, for a
    # bytes operand, formats a TypeError it then discards: twice the cost of a find() call.
    if (
        values.count(b"\n") != len(fields) - 1
        or values.find(b"\r") >= 0
        or values.find(b"\x00") >= 0
        or values.find(b"\n ") >= 0
        or values.find(b" \n") >= 0
        or values.find(b"\n\t") >= 0
        or values.find(b"\t\n") >= 0
        or values[:1] in _BLANK
        or values[-1:] in _BLANK
    ):
        raise Malformed("invalid field value")


def request_head(
    fields: list[Field], end_stream: bool, max_bytes: int, max_count: int
) -> tuple[RequestHead, tuple[int, str] | None]:
    """The request as the exchange wants it, and the answer it needs instead of forwarding
    (a status and a reason) when it cannot be forwarded."""
    head = RequestHead()
    head.version = "2.0"
    pseudo: dict[bytes, bytes] = {}
    size = 0
    for name, value, _ in fields:  # RFC 9113 §8.3: pseudo-header fields first, each once
        if name[:1] != b":":
            break
        if name not in _REQUEST_PSEUDO or name in pseudo:
            raise Malformed("an unknown or repeated pseudo-header field")
        pseudo[name] = value
        size += len(name) + len(value) + 4
    count = len(pseudo)
    head.method = pseudo.get(b":method", b"")
    head.target = pseudo.get(b":path", b"")
    head.header_bytes = size
    host = _regular_fields(head, fields, count)
    _check_fields(fields, count)
    authority = pseudo.get(b":authority") or host  # §8.3.1: :authority wins over Host
    problem = _request_line(head, pseudo.get(b":scheme", b""))
    if authority:
        head.host = authority
        head.host_count = 1
        head.host_line = len(head.lines)
        head.lines.append(b"host: " + authority + b"\r\n")
        head.names.append(b"host")
        if not valid_host(authority):
            problem = problem or (400, "invalid :authority")
    if end_stream:
        if head.content_length:
            raise Malformed("content-length on a request without content")
        if head.content_length is None and head.method in _CONTENT_METHODS:
            head.content_length = 0
    elif head.content_length is None:
        head.chunked = True  # the length is not known ahead: HTTP/1.1 carries it chunked
    if head.header_bytes > max_bytes:
        problem = (431, "request header section too large")
    elif head.header_count > max_count:
        problem = (431, "too many request header fields")
    return head, problem


def _request_line(head: RequestHead, scheme: bytes) -> tuple[int, str] | None:
    """What RFC 9113 §8.3.1 asks of :method, :scheme and :path, and of what an HTTP/1.1 request
    line can carry; the answer for a CONNECT."""
    method, target = head.method, head.target
    if not method or _METHOD.fullmatch(method) is None or _BAD_TARGET.search(target):
        raise Malformed("no :method, or a :method or :path no request line can carry")
    if method == b"CONNECT":
        return 501, "CONNECT is not supported by a reverse proxy"
    if not scheme or not target:
        raise Malformed("no :scheme or :path")
    if target[:1] != b"/" and not (target == b"*" and method == b"OPTIONS"):
        raise Malformed("a :path that is neither absolute nor the asterisk for OPTIONS")
    return None


def _regular_fields(head: RequestHead, fields: list[Field], start: int) -> bytes:
    """The fields after the pseudo-header ones, into ``head``; the Host field's value."""
    lines = head.lines
    names = head.names
    host = b""
    cookies: list[bytes] = []
    size = 0
    for name, value, _ in fields[start:]:
        size += len(name) + len(value) + 4  # counted as HTTP/1.1 counts a line
        if name[:1] == b":":
            raise Malformed("a pseudo-header field after a regular one")
        if name in _CONNECTION_SPECIFIC:
            raise Malformed("a connection-specific field")
        kind = H.REQUEST_FIELDS.get(name)
        if kind is None:
            if name in _NOTED:  # one set lookup for the common field
                if name == b"cookie":
                    cookies.append(value)
                    continue
                if name == b"grpc-timeout":
                    head.grpc_timeout = value
                    continue
                head.content_type = value
        elif name == b"te":
            if value != b"trailers":
                raise Malformed("te other than trailers")
        elif kind == H.REQ_HOST:
            host = host or value
            continue  # the Host line is written from :authority or it by the caller
        elif not _classify(head, kind, value):
            continue
        lines.append(name + b": " + value + b"\r\n")
        names.append(name)
    if cookies:  # §8.2.3: crumbs go to HTTP/1.1 as one field
        lines.append(b"cookie: " + b"; ".join(cookies) + b"\r\n")
        names.append(b"cookie")
    head.header_count = len(fields) - start
    head.header_bytes += size
    return host


def trailer_fields(fields: list[Field]) -> Trailers:
    """Received trailers: regular fields only (§8.1), connection-specific ones malformed."""
    _check_fields(fields, 0)  # a pseudo-header field fails it: none belong in trailers
    trailers: Trailers = []
    for name, value, _ in fields:
        if name in _CONNECTION_SPECIFIC:
            raise Malformed("a connection-specific field")
        trailers.append((name, value))
    return trailers


def response_fields(status: int, resp: ResponseHead, added: list[bytes]) -> list[Field]:
    """A response head of the app's, with the proxy's ``added`` lines, for an HTTP/2 client."""
    fields: list[Field] = [(b":status", _STATUS.get(status) or b"%d" % status, False)]
    _add_lines(fields, resp.lines, resp.names, resp.connection)
    _add_added(fields, added)
    if resp.content_length is not None and status != 204 and status >= 200:
        fields.append((b"content-length", resp.content_length, False))
    return fields


def local_fields(
    status: int,
    body_length: int,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None,
    request_id_line: bytes,
) -> list[Field]:
    """The head of a response of the proxy's own."""
    fields: list[Field] = [
        (b":status", _STATUS.get(status) or b"%d" % status, False),
        (b"content-type", content_type, False),
        (b"content-length", b"%d" % body_length, False),
    ]
    if request_id_line:
        _add_added(fields, [request_id_line])
    for name, value in extra or ():
        fields.append((name.lower(), value, False))
    return fields


def out_trailers(trailers: Trailers) -> list[Field]:
    return [
        (name.lower(), value, False)
        for name, value in trailers
        if name.lower() not in _CONNECTION_SPECIFIC
    ]


def request_fields(head: RequestHead, added: list[bytes], scheme: bytes) -> list[Field]:
    """A request head, with the proxy's ``added`` lines, for an HTTP/2 app."""
    fields: list[Field] = [
        (b":method", head.method, False),
        (b":scheme", scheme, False),
        (b":path", head.target, False),
    ]
    if head.host_count:
        fields.append((b":authority", head.host, False))
    _add_lines(fields, head.lines, head.names, head.connection, skip=head.host_line)
    _add_added(fields, added)
    if head.content_length is not None:
        fields.append((b"content-length", b"%d" % head.content_length, False))
    return fields


def _add_lines(
    fields: list[Field],
    lines: list[bytes],
    names: list[bytes],
    connection: list[bytes] | None,
    skip: int = -1,
) -> None:
    kept = end_to_end(lines, names, connection)
    if kept is lines:
        for i, line in enumerate(lines):
            if i != skip:
                name = names[i]
                fields.append((name, line[len(name) + 2 : -2], False))
        return
    # Rare: the Connection header nominated fields; the kept lines lost their index.
    for line in kept:
        name, _, value = line[:-2].partition(b": ")
        low = name.lower()
        if low != b"host":
            fields.append((low, value, False))


def _add_added(fields: list[Field], added: list[bytes]) -> None:
    for line in added:
        name, _, value = line[:-2].partition(b": ")
        low = name.lower()
        if low == b"host":
            fields.insert(3, (b":authority", value, False))
        elif low not in _CONNECTION_SPECIFIC and low != b"content-length":
            fields.append((low, value, False))


def response_head(fields: list[Field]) -> ResponseHead:
    """A response head from an HTTP/2 app, as the exchange wants it."""
    resp = ResponseHead()
    resp.keep_alive = True  # the stream ends; the connection goes on
    resp.framed = True  # END_STREAM ends the body: a reset stream is a cut one, never an end
    seen_regular = False
    _check_fields(fields, 1 if fields and fields[0][0] == b":status" else 0)
    lines = resp.lines
    names = resp.names
    for name, value, _ in fields:
        if name[:1] == b":":
            if seen_regular or name != b":status" or resp.status:
                raise Malformed("an unexpected pseudo-header field")
            if len(value) != 3 or not value.isdigit():
                raise Malformed("an invalid :status")
            resp.status = int(value)
            continue
        seen_regular = True
        if name in _CONNECTION_SPECIFIC:
            raise Malformed("a connection-specific field")
        kind = H.RESPONSE_FIELDS.get(name)
        if kind == H.RESP_CONTENT_LENGTH:
            _length(value)
            resp.content_length = value
            continue
        if kind == H.RESP_HOP:
            continue
        if kind == H.RESP_REQUEST_ID:
            resp.has_request_id = True
        elif kind == H.RESP_RETRY_AFTER:
            resp.retry_after = value
        lines.append(name + b": " + value + b"\r\n")
        names.append(name)
    if not resp.status:
        raise Malformed("no :status")
    return resp
