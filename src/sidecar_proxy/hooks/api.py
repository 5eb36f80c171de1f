"""What a hook sees: the request, the app's response, their header fields, and a local answer.

These are the objects handed to ``on_request(request)`` and ``on_response(request, response)``
(see :mod:`sidecar_proxy.hooks`). They are views over the proxy's own head records, made only
when a hook is set, and they convert lazily: a hook that never reads ``request.headers`` costs
no header decoding, and one that reads but does not change them costs no re-encoding. The proxy
learns what a hook changed through :func:`request_edits` and :func:`response_edits`.

Field names and values are ``str``, decoded from the wire as ISO-8859-1 (RFC 9110 §5.5: the
bytes are kept as they came, whatever they mean). Everything a hook sets is checked at once, so
a bad name or value raises ``ValueError`` in the hook's own line rather than reaching the wire:
a name must be a token (RFC 9110 §5.6.2), a value visible ISO-8859-1 characters, spaces and
tabs (no CR, LF or NUL: no header injection), surrounding whitespace stripped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Generic, Protocol, TypeVar

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# A path or query set by a hook goes into the request line as it is: visible ASCII only (a
# hook percent-encodes anything else), no fragment, and no "?" in the path.
_PATH = re.compile(r"/[\x21\x22\x24-\x3e\x40-\x7e]*")  # no "#" (0x23), no "?" (0x3f)
_QUERY = re.compile(r"[\x21\x22\x24-\x7e]*")  # no "#"

Fields = Mapping[str, str] | Iterable[tuple[str, str]]


def _checked(name: str, value: str) -> tuple[str, str]:
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header field name {name!r}")
    if not isinstance(value, str):
        raise TypeError(f"header field {name}: the value must be a str, not {type(value).__name__}")
    value = value.strip(" \t")
    if not _VALUE.fullmatch(value):
        raise ValueError(f"header field {name}: invalid characters in the value {value!r}")
    return name, value


class Headers(MutableMapping[str, str]):
    """Header fields as a mutable mapping whose keys ignore case.

    Order and repeated fields are kept. ``headers[name]`` is the first value (``KeyError`` when
    there is none), ``headers[name] = value`` replaces every field of that name with one,
    ``del headers[name]`` removes them all; :meth:`get_all` and :meth:`add` handle repeats
    (``Set-Cookie``, say). Iteration gives each name once, as first written.
    """

    __slots__ = ("_fields", "_lines", "_names", "changed")

    def __init__(self, fields: Fields | None = None) -> None:
        self._fields: list[tuple[str, str, str]] | None = []  # (lower-cased name, name, value)
        self._lines: list[bytes] = []
        self._names: list[bytes] = []
        self.changed = False  # set by every change, so an untouched mapping is never re-encoded
        if fields is not None:
            pairs = fields.items() if isinstance(fields, Mapping) else fields
            for name, value in pairs:
                self.add(name, value)

    @classmethod
    def _of_lines(cls, lines: list[bytes], names: list[bytes]) -> Headers:
        """A view of a head record's ``Name: value\\r\\n`` lines, decoded on first use."""
        headers = cls()
        headers._fields = None
        headers._lines = lines
        headers._names = names
        return headers

    def _all(self) -> list[tuple[str, str, str]]:
        fields = self._fields
        if fields is None:
            fields = self._fields = [
                (
                    low.decode("latin-1"),
                    line[: len(low)].decode("latin-1"),
                    line[len(low) + 2 : -2].decode("latin-1"),
                )
                for line, low in zip(self._lines, self._names, strict=True)
            ]
        return fields

    def __getitem__(self, name: str) -> str:
        low = name.lower()
        for key, _, value in self._all():
            if key == low:
                return value
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        low = name.lower()
        return any(key == low for key, _, _ in self._all())

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order; empty when there is none."""
        low = name.lower()
        return [value for key, _, value in self._all() if key == low]

    def add(self, name: str, value: str) -> None:
        """One more field, after the others, even if the name is there already."""
        name, value = _checked(name, value)
        self._all().append((name.lower(), name, value))
        self.changed = True

    def __setitem__(self, name: str, value: str) -> None:
        name, value = _checked(name, value)
        low = name.lower()
        fields = self._all()
        new: tuple[str, str, str] | None = (low, name, value)
        kept = []
        for field in fields:
            if field[0] != low:
                kept.append(field)
            elif new is not None:  # in the place of the first field it replaces
                kept.append(new)
                new = None
        if new is not None:
            kept.append(new)
        fields[:] = kept
        self.changed = True

    def __delitem__(self, name: str) -> None:
        low = name.lower()
        fields = self._all()
        kept = [field for field in fields if field[0] != low]
        if len(kept) == len(fields):
            raise KeyError(name)
        fields[:] = kept
        self.changed = True

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for low, name, _ in self._all():
            if low not in seen:
                seen.add(low)
                yield name

    def __len__(self) -> int:
        return len({low for low, _, _ in self._all()})

    def __repr__(self) -> str:
        return f"Headers({[(name, value) for _, name, value in self._all()]!r})"

    def fields(self) -> list[tuple[str, str]]:
        """Every field as a ``(name, value)`` pair, in order, repeats included."""
        return [(name, value) for _, name, value in self._all()]


class HeadRecord(Protocol):
    """What the views read of the proxy's head records (``lines`` of ready
    ``Name: value\r\n`` bytes with the lower-cased ``names`` alongside)."""

    lines: list[bytes]
    names: list[bytes]


class RequestRecord(HeadRecord, Protocol):
    method: bytes
    target: bytes


class ResponseRecord(HeadRecord, Protocol):
    status: int


H = TypeVar("H", bound=HeadRecord)


class _View(Generic[H]):
    """A view over one head record, its fields decoded on first use."""

    __slots__ = ("_head", "_headers")

    def __init__(self, head: H) -> None:
        self._head = head
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            head = self._head
            headers = self._headers = Headers._of_lines(head.lines, head.names)
        return headers


class Request(_View[RequestRecord]):
    """The request as ``on_request`` and ``on_response`` see it; ``on_request`` may change it.

    ``method``, ``client_ip`` and ``request_id`` are read-only. ``path`` (from ``/``, as sent,
    percent-encoding and all) and ``query`` (after the ``?``, ``""`` when there is none) may be
    set, which changes the target the app gets; ``headers`` may be changed in place. The same
    object is passed to ``on_response``, so a hook may leave itself a note in :attr:`notes`.
    """

    __slots__ = ("_notes", "_path", "_query", "_retargeted", "client_ip", "request_id")

    # Made for every request while a hook is set, so nothing is decoded before it is asked for.
    def __init__(self, head: RequestRecord, client_ip: str, request_id: str) -> None:
        super().__init__(head)
        self.client_ip = client_ip
        self.request_id = request_id
        self._path: str | None = None
        self._query = ""
        self._retargeted = False
        self._notes: dict[str, object] | None = None

    @property
    def method(self) -> str:
        return self._head.method.decode("latin-1")

    def _split(self) -> str:
        path = self._path
        if path is None:
            raw_path, _, raw_query = self._head.target.partition(b"?")
            path = self._path = raw_path.decode("latin-1")
            self._query = raw_query.decode("latin-1")
        return path

    @property
    def path(self) -> str:
        return self._split()

    @path.setter
    def path(self, path: str) -> None:
        if not isinstance(path, str) or not _PATH.fullmatch(path):
            raise ValueError(f"invalid path {path!r}: '/' and visible ASCII, no '?' or '#'")
        self._retarget(path, self.query)

    @property
    def query(self) -> str:
        self._split()
        return self._query

    @query.setter
    def query(self, query: str) -> None:
        if not isinstance(query, str) or not _QUERY.fullmatch(query):
            raise ValueError(f"invalid query {query!r}: visible ASCII, no '#'")
        self._retarget(self.path, query)

    def _retarget(self, path: str, query: str) -> None:
        self._path = path
        self._query = query
        self._retargeted = True

    @property
    def notes(self) -> dict[str, object]:
        """The hooks' own, from ``on_request`` to ``on_response`` of the same request."""
        notes = self._notes
        if notes is None:
            notes = self._notes = {}
        return notes

    def __repr__(self) -> str:
        target = self.path + ("?" + self.query if self.query else "")
        return f"<Request {self.method} {target} id={self.request_id}>"


class AppResponse(_View[ResponseRecord]):
    """The app's final response head as ``on_response`` sees it: ``status`` to read,
    ``headers`` to change before the head goes to the client."""

    __slots__ = ()

    @property
    def status(self) -> int:
        return self._head.status

    def __repr__(self) -> str:
        return f"<AppResponse {self.status}>"


class Response:
    """A local answer: returned by ``on_request``, it goes to the client and the app is never
    called. ``status`` 200-599; ``body`` bytes, or a str sent as UTF-8; ``headers`` a mapping
    or ``(name, value)`` pairs. Without a ``Content-Type`` field the body is sent as
    ``text/plain; charset=utf-8``. The proxy frames the answer itself and adds
    ``X-Request-ID``, so framing, hop-by-hop and request-id fields given here are ignored."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes | bytearray | memoryview | str = b"",
        headers: Fields | None = None,
    ) -> None:
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"a local answer's status must be 200-599, not {status!r}")
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"a local answer's body must be bytes or str, not {type(body)}")
        if body and status in (204, 304):
            raise ValueError(f"a {status} answer has no body (RFC 9110 §15.3.5, §15.4.5)")
        self.status = status
        self.body = bytes(body)
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


# -- for the proxy: what a hook changed ---------------------------------------------------------

Edits = tuple[bytes | None, list[tuple[str, str]] | None]


def request_edits(request: Request) -> Edits | None:
    """What the hook changed: the new target (or None) and every field (or None when they are
    unchanged); None when it changed nothing, which is the one test a no-op hook costs."""
    headers = request._headers
    changed = headers is not None and headers.changed
    if not changed and not request._retargeted:
        return None
    target = None
    if request._retargeted:
        target = (request.path + ("?" + request.query if request.query else "")).encode("ascii")
    return target, headers.fields() if headers is not None and changed else None


def response_edits(response: AppResponse) -> list[tuple[str, str]] | None:
    """Every field after the hook changed them; None when it did not (or never looked)."""
    headers = response._headers
    if headers is None or not headers.changed:
        return None
    return headers.fields()
