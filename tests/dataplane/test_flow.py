"""Flow control and ordering: whichever side is faster is paused, in both directions, and
pipelined requests are answered in order with at most one read held back.

A fake transport records ``pause_reading``/``resume_reading``; the protocols' own
``pause_writing``/``resume_writing`` are called as a real transport calls them when its write
buffer crosses its high and low water marks.
"""

from __future__ import annotations

from support.dataplane import DataPath, request, response

from sidecar_proxy.http.phase import AWAITING_HEAD, QUEUED

UPLOAD = request("PUT", "/f", b"0123456789")


def test_a_client_that_reads_slowly_pauses_the_app_until_it_catches_up() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    app.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)

    c.conn.pause_writing()
    assert not app.transport.reading
    c.conn.resume_writing()
    assert app.transport.reading
    app.send(b"y" * 90)
    assert c.response().body == b"x" * 10 + b"y" * 90


def test_an_app_leg_bound_while_the_client_is_paused_starts_paused() -> None:
    dp = DataPath()
    c, _ = dp.begin()
    c.conn.pause_writing()
    app = dp.pool.accept()
    assert not app.transport.reading
    c.conn.resume_writing()
    assert app.transport.reading


def test_an_app_that_reads_slowly_pauses_the_upload_until_it_catches_up() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(UPLOAD[:-6])
    assert c.transport.reading
    app.leg.pause_writing()
    assert not c.transport.reading
    app.leg.resume_writing()
    assert c.transport.reading
    c.send(b"456789")
    assert app.received().endswith(b"\r\n\r\n0123456789")


def test_an_upload_waits_for_the_app_connection_one_read_at_most() -> None:
    dp = DataPath()
    c, ex = dp.begin(UPLOAD[:-6])
    assert not c.transport.reading  # no app leg to take the body yet: hold one read, no more
    app = dp.pool.accept()
    assert c.transport.reading and ex.phase is AWAITING_HEAD
    assert app.received().endswith(b"\r\n\r\n0123")  # what was held goes with the head
    c.send(b"456789")
    assert app.received() == b"456789"


def test_pipelined_requests_are_answered_in_order_and_wait_with_reading_paused() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c = dp.client()
    c.send(b"".join(request(target=f"/{n}", rid=n) for n in ("first", "second", "third")))
    _, second, third = c.conn.queue
    assert (second.phase, third.phase) == (QUEUED, QUEUED)
    assert not c.transport.reading
    assert app.received().startswith(b"GET /first ")  # only the head of the queue is sent

    for n in ("first", "second", "third"):
        app.send(response(body=n.encode()))
    bodies = [r.body for r in c.responses()]
    assert bodies == [b"first", b"second", b"third"]
    assert c.transport.reading and not c.conn.queue
    assert dp.pool.connects == 0  # one app connection served them all, in turn


def test_a_large_read_of_pipelined_requests_is_parsed_a_slice_at_a_time() -> None:
    # Two hundred requests in one read: parsing stops once one must wait its turn, and the rest
    # stays raw bytes until the queue drains, instead of becoming two hundred exchanges.
    dp = DataPath()
    app = dp.pool.add_idle()
    c = dp.client()
    raw = b"".join(request(target=f"/{n}", rid=f"r{n}") for n in range(200))
    c.send(raw)
    assert 1 < len(c.conn.queue) < 100 and dp.recorder.started_count == len(c.conn.queue)

    for n in range(200):
        assert app.received().startswith(b"GET /%d " % n)
        app.send(response(body=b"%d" % n))
    assert [r.body for r in c.responses()] == [b"%d" % n for n in range(200)]
    assert len(dp.records) == 200


def test_responses_finished_in_one_turn_reach_their_clients_at_its_end() -> None:
    # Written as each is finished, 20 to 30 us of work apart, the clients sleep between them
    # and every write pays a wake-up across cores; at the end of the turn one does for all.
    dp = DataPath()
    apps = [dp.pool.add_idle() for _ in range(2)]
    clients = [dp.begin()[0] for _ in range(2)]
    for app in reversed(apps):  # the pool hands out the newest first
        app.leg.data_received(response(body=b"hello"))  # one read each, the loop's turn goes on
    assert [c.transport.writes for c in clients] == [0, 0]
    dp.loop.run_ready()
    assert [c.transport.writes for c in clients] == [1, 1]  # head and body in one writev
    assert [c.response().body for c in clients] == [b"hello", b"hello"]


def test_a_body_read_twice_in_one_turn_is_written_at_once_so_flow_control_still_holds() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin()
    c.transport.high_water = 16
    app.leg.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 30)
    assert c.transport.writes == 0  # one read's worth held for the end of the turn
    app.leg.data_received(b"y" * 30)  # another in the same turn: both go out now, in order
    assert c.transport.writes == 1
    assert c.transport.write_paused and not app.transport.reading  # over the high-water mark
    assert c.received().endswith(b"x" * 30 + b"y" * 30)
    assert app.transport.reading  # the client read it all: the app is read again
    app.send(b"z" * 40)
    assert c.received() == b"z" * 40


def test_a_response_held_for_the_turn_still_leaves_before_its_close() -> None:
    dp = DataPath()
    app = dp.pool.add_idle()
    c, _ = dp.begin(request(headers="Connection: close\r\n"))
    app.leg.data_received(response(body=b"bye"))
    dp.loop.run_ready()
    assert c.response().body == b"bye" and c.closed
