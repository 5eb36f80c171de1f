"""The access-log writer: complete lines in order, never blocking the caller, bounded memory."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator

import pytest

from sidecar_proxy.observe.accesslog import FLUSH_BYTES, AccessLog


class Drops:
    def __init__(self) -> None:
        self.lines = 0

    def __call__(self, lines: int) -> None:
        self.lines += lines


class Pipe:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.closed: set[int] = set()
        self._chunks: list[bytes] = []
        self._reader: threading.Thread | None = None

    def close(self, fd: int) -> None:
        if fd not in self.closed:
            os.close(fd)
            self.closed.add(fd)

    def start_reader(self, delay: float = 0.0) -> None:
        """Read everything in the background, after ``delay`` seconds."""

        def read() -> None:
            time.sleep(delay)
            while chunk := os.read(self.read_fd, 1 << 16):
                self._chunks.append(chunk)

        self._reader = threading.Thread(target=read)
        self._reader.start()

    def received(self) -> bytes:
        """Everything the background reader got until EOF; closes the write end first."""
        assert self._reader is not None
        self.close(self.write_fd)
        self._reader.join(5.0)
        return b"".join(self._chunks)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    p.close(p.read_fd)
    p.close(p.write_fd)


def line(i: int, size: int = 100) -> bytes:
    head = f'{{"n":{i},"pad":"'.encode()
    return head + b"x" * (size - len(head) - 3) + b'"}\n'


def test_lines_arrive_whole_and_in_order(pipe: Pipe) -> None:
    pipe.start_reader()
    drops = Drops()
    log = AccessLog(pipe.write_fd, on_drop=drops)
    sent = [line(i, size=50 + i % 300) for i in range(5000)]
    for i, data in enumerate(sent):
        log.write(data)
        if i % 97 == 0:
            log.flush()
    assert log.close(5.0)
    assert pipe.received() == b"".join(sent)
    assert drops.lines == 0


def test_nothing_reaches_the_fd_before_a_flush(pipe: Pipe) -> None:
    log = AccessLog(pipe.write_fd)
    log.write(line(1))
    time.sleep(0.05)
    os.set_blocking(pipe.read_fd, False)
    with pytest.raises(BlockingIOError):
        os.read(pipe.read_fd, 100)
    os.set_blocking(pipe.read_fd, True)
    log.flush()
    assert os.read(pipe.read_fd, 1000) == line(1)
    assert log.close(5.0)


def test_a_full_batch_flushes_itself(pipe: Pipe) -> None:
    log = AccessLog(pipe.write_fd)
    count = FLUSH_BYTES // 100 + 1
    for i in range(count):
        log.write(line(i))
    received = b""
    deadline = time.monotonic() + 5.0
    while len(received) < count * 100 and time.monotonic() < deadline:
        received += os.read(pipe.read_fd, 1 << 17)
    assert received == b"".join(line(i) for i in range(count))
    assert log.close(5.0)


def test_stuck_stdout_never_blocks_the_caller_and_drops_are_counted(pipe: Pipe) -> None:
    """A pipe nobody reads: the writer blocks, the loop side must not."""
    drops = Drops()
    max_buffer = 256 * 1024
    log = AccessLog(pipe.write_fd, max_buffer=max_buffer, on_drop=drops)
    slowest = 0.0
    start = time.perf_counter()
    for i in range(20_000):  # 2 MB, far more than the pipe (64 KiB) plus the buffer holds
        t = time.perf_counter()
        log.write(line(i))
        if i % 50 == 0:
            log.flush()
        slowest = max(slowest, time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    assert slowest < 0.05  # a blocking write would hang here forever
    assert elapsed < 2.0
    assert drops.lines > 0
    # Memory stays bounded: what was accepted but not written never passes max_buffer.
    assert log._accepted - log._written <= max_buffer
    assert not log.close(0.1)  # the writer is still stuck on the full pipe

    # Unsticking: the reader goes away, the writer's pending write fails with EPIPE, and every
    # line it held is counted as dropped too; it then sees close()'s sentinel and ends.
    pipe.close(pipe.read_fd)
    log._writer.join(5.0)
    assert not log._writer.is_alive()
    log.flush()
    assert log._failed > 0
    # Every line offered was written, dropped at the door, or failed in the writer.
    refused = 20_000 - log._accepted // 100
    assert drops.lines == refused + log._failed


def test_write_errors_are_counted_as_drops(pipe: Pipe) -> None:
    drops = Drops()
    pipe.close(pipe.read_fd)  # EPIPE on every write
    log = AccessLog(pipe.write_fd, on_drop=drops)
    for i in range(10):
        log.write(line(i))
    log.flush()
    for i in range(5):
        log.write(line(i))
    assert not log.close(5.0)
    assert drops.lines == 15


def test_nonblocking_fd_waits_for_room(pipe: Pipe) -> None:
    # As if another process sharing stdout had set O_NONBLOCK on it.
    flags = fcntl.fcntl(pipe.write_fd, fcntl.F_GETFL)
    fcntl.fcntl(pipe.write_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    drops = Drops()
    log = AccessLog(pipe.write_fd, on_drop=drops)
    sent = [line(i) for i in range(3000)]  # 300 KB, several pipe-fulls
    for data in sent:
        log.write(data)
    log.flush()
    pipe.start_reader(delay=0.1)  # the writer hits EAGAIN first
    assert log.close(5.0)
    assert pipe.received() == b"".join(sent)
    assert drops.lines == 0
