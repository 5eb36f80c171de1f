"""HPACK (RFC 7541), from jh2's Rust codec, behind the few typed names the connection uses.

Measured on this machine (docs/benchmarks.md): encoding and decoding a gRPC-like request head of
eight fields takes 3.3 us with jh2's codec against 41 us with the pure-Python ``hpack`` package,
which is most of the difference between a frame layer of our own and the ``h2`` library. jh2
ships no type information for its compiled module, so this is the one place that touches it.
"""

from __future__ import annotations

from typing import Protocol, cast

from jh2._hazmat import Decoder as _Decoder
from jh2._hazmat import Encoder as _Encoder
from jh2._hazmat import HPACKError as _HPACKError
from jh2._hazmat import OversizedHeaderListError as _Oversized

# A decoded or to-be-encoded field: name, value, and whether it must never be indexed.
Field = tuple[bytes, bytes, bool]


class Encoder(Protocol):
    header_table_size: int

    def encode(self, headers: list[Field], huffman: bool | None = None) -> bytes: ...


class Decoder(Protocol):
    max_header_list_size: int
    max_allowed_table_size: int

    def decode(self, data: bytes, raw: bool | None = None) -> list[Field]: ...


def new_encoder() -> Encoder:
    return cast(Encoder, _Encoder())


def new_decoder(max_header_list_size: int) -> Decoder:
    """A decoder that refuses a header list decoding to more than ``max_header_list_size``
    (RFC 7541 §4.1 sizes: name + value + 32 per field), the bound on an HPACK bomb."""
    return cast(Decoder, _Decoder(max_header_list_size=max_header_list_size))


class HpackError(Exception):
    """A header block that does not decode: a connection error COMPRESSION_ERROR."""


class HpackTooLarge(Exception):
    """A header block that decodes to more than the decoder's bound."""


_ERROR = cast(type[Exception], _HPACKError)
_OVERSIZED = cast(type[Exception], _Oversized)


def decode(decoder: Decoder, block: bytes) -> list[Field]:
    try:
        return decoder.decode(block, raw=True)
    # One name per handler: compiled, a name bound by two handlers keeps the first's type.
    except _OVERSIZED as too_large:
        raise HpackTooLarge from too_large
    except _ERROR as undecodable:
        raise HpackError from undecodable
    except BaseException as panic:
        # jh2's Rust decoder panics on some malformed blocks (seen: an index past a short
        # block), and pyo3 raises a panic as a BaseException: still only a bad block.
        if type(panic).__name__ != "PanicException":
            raise
        raise HpackError from panic
