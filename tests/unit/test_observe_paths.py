"""Path and method labels: identifier segments collapse to :id, and the label set stays bounded."""

from __future__ import annotations

import uuid

import pytest

from sidecar_proxy.observe.paths import OTHER, PathLabeler, method_label, normalise


@pytest.mark.parametrize(
    ("path", "label"),
    [
        # The seed's documented example and its all-digit rule.
        ("/users/123/orders/456", "/users/:id/orders/:id"),
        ("/users/123", "/users/:id"),
        ("/123", "/:id"),
        ("/", "/"),
        ("", ""),
        ("/users/", "/users/"),
        ("//double//slash", "//double//slash"),
        # Versions and ordinary words stay.
        ("/v1/users", "/v1/users"),
        ("/api/v2/items/7", "/api/v2/items/:id"),
        ("/internationalization", "/internationalization"),
        ("/healthz", "/healthz"),
        # The seed turned "12ab" into "ab"; mixed segments are kept whole.
        ("/files/12ab", "/files/12ab"),
        ("/orders/2024-05-01", "/orders/2024-05-01"),
        # UUIDs, any case.
        ("/items/3f2a9c1e-7d4b-4c1a-9e2f-8b6d5a4c3b21", "/items/:id"),
        ("/items/3F2A9C1E-7D4B-4C1A-9E2F-8B6D5A4C3B21/x", "/items/:id/x"),
        # Hex of 16 or more characters (object ids, hashes); shorter stays.
        ("/blobs/0123456789abcdef", "/blobs/:id"),
        ("/commits/da39a3ee5e6b4b0d3255bfef95601890afd80709", "/commits/:id"),
        ("/blobs/0123456789abcde", "/blobs/0123456789abcde"),
        # base64 / base64url tokens of 20+ characters with a digit.
        ("/s/dGhpcyBpcyBhIHRva2VuMTIz", "/s/:id"),
        ("/s/aGVsbG8td29ybGQ_MTIzNDU-", "/s/:id"),
        ("/s/YWJjZGVmZ2hpams0NTY=", "/s/:id"),
        ("/s/abcdefghijklmnopqrstuvwxyz", "/s/abcdefghijklmnopqrstuvwxyz"),  # no digit
        ("/s/abc123", "/s/abc123"),  # too short
        # Non-ASCII digits are not an id.
        ("/x/\u00b2\u00b3", "/x/\u00b2\u00b3"),
    ],
)
def test_normalise(path: str, label: str) -> None:
    assert normalise(path) == label
    assert PathLabeler(100).label(path) == label


def test_labels_are_capped_at_limit_plus_other() -> None:
    labeler = PathLabeler(50)
    labels = {labeler.label(f"/route{i}/{uuid.uuid4()}") for i in range(10_000)}
    assert len(labels) <= 51
    assert OTHER in labels
    # Labels that made it in before the cap keep working afterwards.
    assert labeler.label("/route0/42") == "/route0/:id"
    assert labeler.label("/route9999/42") == OTHER


def test_id_paths_do_not_use_up_the_limit() -> None:
    labeler = PathLabeler(3)
    for i in range(10_000):
        assert labeler.label(f"/users/{i}/orders/{i * 7}") == "/users/:id/orders/:id"
    assert labeler.label("/a") == "/a"
    assert labeler.label("/b") == "/b"
    assert labeler.label("/c") == OTHER


def test_cache_is_bounded_and_answers_stay_correct() -> None:
    labeler = PathLabeler(10)
    for i in range(25_000):
        assert labeler.label(f"/users/{i}") == "/users/:id"
    # Past the cache's bound it was cleared, not grown without limit.
    assert len(labeler._cache) <= 10_000


def test_huge_paths_are_other_and_not_cached() -> None:
    labeler = PathLabeler(10)
    assert labeler.label("/" + "z" * 5000) == OTHER
    assert labeler._cache == {}
    assert labeler.label("/ok") == "/ok"


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PathLabeler(0)


@pytest.mark.parametrize(
    "method", ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
)
def test_standard_methods_pass(method: str) -> None:
    assert method_label(method) == method


@pytest.mark.parametrize("method", ["PROPFIND", "get", "PURGE", "", "BREW"])
def test_other_methods_collapse(method: str) -> None:
    assert method_label(method) == "OTHER"
