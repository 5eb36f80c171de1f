"""The pure parts of gRPC support: grpc-timeout both ways, grpc-message encoding, the statuses of
the sidecar's own answers, message counting across arbitrary chunks, the label cap."""

from __future__ import annotations

import pytest

from sidecar_proxy.http import grpc as G
from sidecar_proxy.observe.paths import GrpcLabeler


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"250m", 0.25),
        (b"99999999u", 99.999999),
        (b"5n", 5e-9),
    ],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert G.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"123456789S", b"1s", b"-1S", b"1.5S", b"1 S", b"10"])
def test_malformed_grpc_timeouts(value: bytes) -> None:
    with pytest.raises(ValueError):
        G.parse_timeout(value)
    assert G.GrpcCall(value).malformed


def test_the_time_left_goes_out_rounded_down_in_at_most_8_digits() -> None:
    assert G.timeout_value(0.25) == b"250000u"
    assert G.timeout_value(1e-9) == b"1u"
    assert G.timeout_value(3600.0) == b"3600000m"
    assert G.timeout_value(1e9) == b"99999999S"
    for seconds in (0.001, 0.5, 99.9, 5000.0):
        value = G.timeout_value(seconds)
        assert len(value) <= 9 and G.parse_timeout(value) <= seconds


def test_grpc_message_is_percent_encoded_utf8() -> None:
    assert G.encode_message("a b%c") == b"a b%25c"
    assert G.encode_message("é\n") == b"%C3%A9%0A"


def test_the_statuses_of_the_sidecars_answers() -> None:
    assert G.local_code(502, False) == G.UNAVAILABLE
    assert G.local_code(503, False) == G.UNAVAILABLE  # breaker open
    assert G.local_code(503, True) == G.RESOURCE_EXHAUSTED  # shed
    assert G.local_code(429, False) == G.RESOURCE_EXHAUSTED
    assert G.local_code(504, False) == G.DEADLINE_EXCEEDED
    assert G.local_code(418, False) == G.UNKNOWN
    assert G.local_trailers(14, "down", 2)[-1] == (b"grpc-retry-pushback-ms", b"2000")


def test_content_types() -> None:
    assert G.is_grpc(b"application/grpc")
    assert G.is_grpc(b"application/grpc+proto")
    assert G.is_grpc(b"Application/GRPC; charset=x")
    assert not G.is_grpc(b"application/grpc-web")
    assert not G.is_grpc(b"application/json")


def test_messages_are_counted_whatever_the_chunks() -> None:
    stream = b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in (b"", b"abc", b"x" * 70000))
    for size in (1, 2, 5, 7, 4096, len(stream)):
        counter = G.MessageCounter()
        for i in range(0, len(stream), size):
            counter.feed(stream[i : i + size])
        assert counter.count == 3, size


def test_grpc_labels_are_capped() -> None:
    labeler = GrpcLabeler(2)
    assert labeler.label("/a.S/M") == ("a.S", "M")
    assert labeler.label("/not-grpc") == ("other", "other")
    assert labeler.label("/a.S/N") == ("a.S", "N")
    assert labeler.label("/a.S/O") == ("other", "other")
    assert labeler.label("/a.S/M") == ("a.S", "M")
