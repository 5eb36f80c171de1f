"""Local rate limiting: a token bucket for all clients, or one per client address.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens a second; a request takes one
or is refused (429) with the time until the next token arrives. That is Envoy's local rate limit
and nginx's ``limit_req`` with ``burst ... nodelay``: a quiet client may send ``burst`` requests
at once, a busy one is held to ``rate`` a second, and nothing is queued.

Per client, buckets are kept in least-recently-used order and at most ``max_keys`` of them: the
proxy's memory must not grow with the number of addresses a client can invent. When a new key
needs room the least recently used bucket goes. Usually it is full again (idle for
``burst / rate`` seconds or more), and a full bucket carries no state worth keeping; if it is not,
its client starts again with a full bucket, which errs towards letting requests through.

Which address a request counts against is :func:`client_key`'s business; the refusal's header
fields (``Retry-After`` and the IETF ``RateLimit-Policy`` / ``RateLimit`` fields) are built here
too, so the data path asks one question and gets back either ``None`` or the fields to send.
"""

from __future__ import annotations

import base64
import math

from sidecar_proxy.policy.clock import Clock

POLICY_NAME = b'"sidecar"'
# The longest textual IP address (an IPv4-mapped IPv6 address): anything longer in
# X-Forwarded-For is not an address, and must not become a key of unbounded size.
_MAX_ADDRESS = 45

RefusalFields = list[tuple[bytes, bytes]]


def client_key(peer: bytes, forwarded_for: bytes, trust_forwarded: bool) -> bytes:
    """The address a request counts against: the socket's peer, or, when forwarded headers are
    trusted, the last ``X-Forwarded-For`` entry.

    The last entry is the one the proxy in front of the pod appended: the address it saw. The
    entries before it are whatever the client wrote, so using the first would let any client
    pick its own bucket. An empty or oversized last entry falls back to the peer.
    """
    if trust_forwarded and forwarded_for:
        last = forwarded_for.rpartition(b",")[2].strip()
        if 0 < len(last) <= _MAX_ADDRESS:
            return last
    return peer


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class TokenBuckets:
    """Token buckets by key, at most ``max_keys`` of them (least recently used ones go first)."""

    __slots__ = ("_buckets", "_burst", "_clock", "_max_keys", "_rate")

    def __init__(self, rate: float, burst: int, max_keys: int, clock: Clock) -> None:
        if not (math.isfinite(rate) and rate > 0.0):
            raise ValueError(f"rate must be a finite number > 0, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, not {max_keys!r}")
        self._rate = float(rate)
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        # dicts keep insertion order: re-inserting on every use makes the first key the least
        # recently used one
        self._buckets: dict[bytes, _Bucket] = {}

    def take(self, key: bytes) -> float:
        """Take a token from ``key``'s bucket: 0.0 when there was one, else the seconds until
        there is (the request is refused and takes nothing)."""
        now = self._clock()
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            if len(buckets) >= self._max_keys:
                del buckets[next(iter(buckets))]
            bucket = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        buckets[key] = bucket
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimit:
    """The proxy's rate limit: whom a request counts against, and the refusal to send.

    The advertised policy (``RateLimit-Policy``, draft-ietf-httpapi-ratelimit-headers-11 §3) is
    a quota a client can keep to without ever being refused: ``q`` requests per ``w`` seconds
    with ``q/w`` at most the rate and ``q`` at most the burst, ``w`` a whole number of seconds as
    the draft requires. The bucket itself allows more after a quiet spell; the draft lets a
    server serve more than it advertises, never less.

    ``shares`` > 1 makes this one of that many equal parts of the limit, for each of several
    processes that split the traffic (worker processes): ``rate / shares``, and the burst divided
    too (rounded up, at least 1). The policy it advertises is then the part's: what a client
    whose requests all reach one part can keep to.
    """

    __slots__ = ("_buckets", "_per_client", "_policy", "_trust_forwarded")

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Clock,
        *,
        per_client: bool = False,
        max_keys: int = 1,
        trust_forwarded: bool = False,
        shares: int = 1,
    ) -> None:
        if shares < 1:
            raise ValueError(f"shares must be >= 1, not {shares!r}")
        burst = burst or max(1, math.ceil(rate))
        if shares > 1:
            rate /= shares
            burst = max(1, math.ceil(burst / shares))
        self._buckets = TokenBuckets(rate, burst, max_keys if per_client else 1, clock)
        self._per_client = per_client
        self._trust_forwarded = trust_forwarded
        window = max(1, math.ceil(1.0 / rate))
        quota = max(1, min(burst, math.floor(rate * window)))
        self._policy = b"%b;q=%d;w=%d" % (POLICY_NAME, quota, window)

    def check(self, peer: bytes, forwarded_for: bytes) -> RefusalFields | None:
        """``None`` when the request may go on; else the header fields of its 429."""
        key = client_key(peer, forwarded_for, self._trust_forwarded) if self._per_client else b""
        wait = self._buckets.take(key)
        if not wait:
            return None
        # Whole seconds, rounded up: both fields are delay-seconds, and a client that waits
        # the rounded-down time would only be refused again.
        seconds = b"%d" % max(1, math.ceil(wait))
        current = b"%b;r=0;t=%b" % (POLICY_NAME, seconds)
        if self._per_client:
            # The partition key (draft §4.1.3, a Byte Sequence): this quota is the client's own.
            current += b";pk=:%b:" % base64.b64encode(key)
        return [
            (b"Retry-After", seconds),
            (b"RateLimit-Policy", self._policy),
            (b"RateLimit", current),
        ]
