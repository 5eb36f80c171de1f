"""The app connection pool on the fake clock: LIFO reuse, the idle timeout and its sweep, the
bound on idle connections, and connections the app closes while idle."""

from __future__ import annotations

from support.fakes import FakeLoop, FakeTransport

from sidecar_proxy.http.fields import RequestHead
from sidecar_proxy.http.h1.app import H1AppConnection
from sidecar_proxy.http.pool import H1Pool

IDLE_TIMEOUT = 4.0


class Pooled:
    """An H1Pool on a fake loop, and the reuse flags its metrics hook was given."""

    def __init__(self, max_idle: int = 10) -> None:
        self.loop = FakeLoop()
        self.reused: list[bool] = []
        self.pool = H1Pool(
            self.loop.as_loop(),
            "127.0.0.1",
            3000,
            max_idle=max_idle,
            idle_timeout=IDLE_TIMEOUT,
            connect_timeout=1.0,
            max_head_bytes=65536,
            max_header_count=100,
            on_connection=self.reused.append,
        )

    def returned(self) -> tuple[H1AppConnection, FakeTransport]:
        """A connection whose exchange completed, given back to the pool."""
        conn = H1AppConnection(self.pool)
        transport = FakeTransport(self.loop, ("127.0.0.1", 3000))
        transport.connect(conn)
        self.pool.release(conn)
        return conn, transport


def test_the_warmest_idle_connection_is_reused_first() -> None:
    p = Pooled()
    older, _ = p.returned()
    p.loop.advance(1.0)
    newer, _ = p.returned()
    assert p.pool.take_idle() is newer
    assert p.pool.take_idle() is older
    assert p.pool.take_idle() is None
    assert p.reused == [True, True]


def test_a_connection_idle_too_long_is_never_handed_out() -> None:
    p = Pooled()
    _, transport = p.returned()
    p.loop.now += IDLE_TIMEOUT + 0.001  # the clock jumps past it before the sweep runs
    assert p.pool.take_idle() is None
    assert transport.closed


def test_the_sweep_closes_stale_connections_without_waiting_for_a_request() -> None:
    # The first sweep runs idle_timeout after the pool stops being empty, then every half
    # timeout: a connection is closed at most 1.5 timeouts after it came back (and never handed
    # out after one timeout, see above).
    p = Pooled()
    start = p.loop.now
    _, stale = p.returned()
    p.loop.advance_to(start + 3.0)
    _, fresh = p.returned()

    p.loop.advance_to(start + 1.5 * IDLE_TIMEOUT)
    assert stale.closed and not fresh.closed and p.pool.idle_count == 1
    p.loop.advance_to(start + 2.0 * IDLE_TIMEOUT)
    assert fresh.closed and p.pool.idle_count == 0
    assert p.loop.timers() == []  # nothing idle: the sweep stops rather than run for ever


def test_idle_connections_are_bounded() -> None:
    p = Pooled(max_idle=2)
    kept = [p.returned()[1] for _ in range(2)]
    _, extra = p.returned()
    assert extra.closed and not any(t.closed for t in kept)
    assert p.pool.idle_count == 2


def test_a_connection_the_app_closes_while_idle_is_dropped() -> None:
    p = Pooled()
    conn, transport = p.returned()
    transport.peer_eof()
    assert p.pool.idle_count == 0 and not conn.usable()
    assert p.pool.take_idle() is None


def test_a_closed_pool_closes_what_it_holds_and_what_comes_back() -> None:
    p = Pooled()
    _, held = p.returned()
    p.pool.close()
    _, late = p.returned()
    assert held.closed and late.closed and p.pool.idle_count == 0


def _get(target: bytes, *, chunked: bool = False) -> RequestHead:
    head = RequestHead()
    head.method, head.target, head.chunked = b"POST" if chunked else b"GET", target, chunked
    return head


def _connected(p: Pooled) -> tuple[H1AppConnection, FakeTransport]:
    conn = H1AppConnection(p.pool)
    transport = FakeTransport(p.loop, ("127.0.0.1", 3000))
    transport.connect(conn)
    return conn, transport


def test_requests_started_in_one_turn_are_written_together_after_it() -> None:
    # Written as they are started, 30 us of work apart, the app sleeps between them and each
    # write pays a wake-up across cores; written in one burst after the turn, one or two do.
    p = Pooled()
    legs = [_connected(p) for _ in range(3)]
    for i, (conn, _) in enumerate(legs):
        conn.send_request(_get(b"/%d" % i), [], [], None)
    assert [t.writes for _, t in legs] == [0, 0, 0]
    p.loop.run_ready()
    assert [t.take() for _, t in legs] == [b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(3)]
    assert [t.writes for _, t in legs] == [1, 1, 1]  # one writelines each, head and body


def test_a_body_sent_before_the_turn_ends_follows_its_head_and_is_not_held() -> None:
    # Body bytes go out at once, after the head: held back, a spooled replay would read its
    # whole file into memory, since only the transport's buffer tells it to wait.
    p = Pooled()
    conn, transport = _connected(p)
    conn.send_request(_get(b"/up", chunked=True), [], [b"abc"], None)
    conn.send_body(b"defg")
    assert transport.take() == (
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n"
    )
    p.loop.run_ready()
    assert transport.take() == b""


def test_a_connection_closed_before_the_turn_ends_writes_nothing() -> None:
    p = Pooled()
    conn, transport = _connected(p)
    conn.send_request(_get(b"/gone"), [], [], None)
    conn.close()
    p.loop.run_ready()
    assert transport.writes == 0
