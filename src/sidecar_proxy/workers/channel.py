"""The messages between the parent and one worker, over a ``socketpair`` made for that worker.

Each message is a 4-byte big-endian length and a pickle. Pickle, because both ends are this
program (the worker is started by the parent, and the socket pair is theirs alone, inherited by
no one else), and it carries the frozen :class:`~sidecar_proxy.config.Settings` and the metric
families exactly, with no second encoding to keep in step with them.

Parent to worker: :class:`Hello` first (read before the worker's event loop starts), then
:class:`PodReady`, :class:`SnapshotRequest` and :class:`Reload` at any time. Worker to parent:
:class:`Serving` once it accepts on its socket, :class:`Snapshot` for each request.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from dataclasses import dataclass

from prometheus_client.core import Metric

from sidecar_proxy.config import Settings

_LENGTH = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Hello:
    """Who the worker is and what it is handed: descriptors are its own numbers (the parent
    passes them at the same numbers)."""

    worker: int
    workers: int
    settings: Settings
    listen_fds: tuple[int, ...]  # one per address the proxy listens on
    memory_fd: int


@dataclass(frozen=True, slots=True)
class Serving:
    """The worker accepts on its socket."""


@dataclass(frozen=True, slots=True)
class PodReady:
    """Whether every worker serves and the app is ready (``APP_READY_CHECK``, which the parent
    runs for the pod): what ``/ready`` on the proxy port answers, until a drain."""

    ready: bool


@dataclass(frozen=True, slots=True)
class Reload:
    """The settings to run with from now on: a SIGHUP reload the parent has loaded and planned
    (only live settings differ from the running ones)."""

    settings: Settings


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    seq: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The worker's metric families as of now, answering :class:`SnapshotRequest` ``seq``."""

    seq: int
    families: list[Metric]


Message = Hello | Serving | PodReady | SnapshotRequest | Snapshot | Reload


def encode(message: Message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class Decoder:
    """Turns the bytes of a stream into the messages it carries."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        buffer = self._buffer
        buffer += data
        out: list[Message] = []
        while len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            end = _LENGTH.size + length
            if len(buffer) < end:
                break
            out.append(pickle.loads(buffer[_LENGTH.size : end]))
            del buffer[:end]
        return out


def read_hello(sock: socket.socket) -> Hello:
    """The first message, read with blocking calls before any event loop exists. The parent
    sends nothing more until the worker says it serves, so nothing after it is lost here."""
    decoder = Decoder()
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the parent closed the channel before saying hello")
        messages = decoder.feed(data)
        if messages:
            (hello,) = messages
            if not isinstance(hello, Hello):
                raise ConnectionError(f"expected Hello first, got {type(hello).__name__}")
            return hello


async def receive(reader: asyncio.StreamReader) -> Message:
    """The next message; :class:`asyncio.IncompleteReadError` at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    message: Message = pickle.loads(await reader.readexactly(length))
    return message
