"""The request-body spool: nameless files, the copy read back, both bounds, and disk errors that
drop the copy without failing anything."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.fakeclock import FakeClock

from sidecar_proxy.policy.allowance import Allowance
from sidecar_proxy.replay.spool import WARN_INTERVAL, Spool, SpoolArea, open_unlinked

KIB = 1024


class Area:
    """A spool area in a test directory, counting the errors it reports."""

    def __init__(
        self,
        directory: Path,
        limit: int = 64 * KIB,
        max_total: int = 256 * KIB,
        open_file: Callable[[str], int] = open_unlinked,
    ) -> None:
        self.clock = FakeClock(0.0)
        self.errors: list[OSError] = []
        self.area = SpoolArea(
            str(directory),
            limit,
            Allowance(max_total),
            self.clock,
            self.errors.append,
            open_file=open_file,
        )

    def start(self, *held: bytes) -> Spool:
        spool = self.area.start(held)
        assert spool is not None
        return spool


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def fds() -> Iterator[list[int]]:
    """Descriptors a test opened itself, closed afterwards if the code under test did not."""
    opened: list[int] = []
    yield opened
    for fd in opened:
        if is_open(fd):
            os.close(fd)


def test_the_body_comes_back_as_written(tmp_path: Path) -> None:
    a = Area(tmp_path)
    spool = a.start(b"first ", b"second ")
    assert spool.append(b"third")
    body = b"first second third"
    assert spool.size == len(body) and a.area.in_use == len(body)
    assert spool.read(0, 1 << 20) == body
    # Read back in pieces, as a replay paced by the app's connection would.
    assert b"".join(spool.read(i, 5) or b"!" for i in range(0, len(body), 5)) == body
    assert spool.read(len(body), 5) == b""
    spool.close()
    assert a.area.in_use == 0


def test_the_file_has_no_name_and_its_space_goes_with_close(tmp_path: Path) -> None:
    a = Area(tmp_path)
    spool = a.start(b"x" * KIB)
    assert list(tmp_path.iterdir()) == []  # nothing to find, nothing to clean up after a crash
    spool.close()
    spool.close()  # again: harmless
    assert spool.closed and spool.read(0, 10) is None and not spool.append(b"more")
    assert a.errors == []


def test_a_body_over_the_limit_drops_its_copy(tmp_path: Path) -> None:
    a = Area(tmp_path, limit=10 * KIB)
    spool = a.start(b"a" * (6 * KIB))
    assert spool.append(b"b" * (4 * KIB))  # exactly the limit
    assert not spool.append(b"c")  # one byte over
    assert spool.closed and a.area.in_use == 0
    assert a.errors == []  # a bound is not a disk error
    assert a.area.start([b"z" * (11 * KIB)]) is None  # already over when it starts


def test_the_total_over_all_spools_is_bounded(tmp_path: Path) -> None:
    a = Area(tmp_path, limit=64 * KIB, max_total=100 * KIB)
    first = a.start(b"1" * (60 * KIB))
    second = a.start(b"2" * (30 * KIB))
    assert a.area.in_use == 90 * KIB
    assert not second.append(b"2" * (20 * KIB))  # 110 KiB in all: this copy goes
    assert second.closed and a.area.in_use == 60 * KIB
    assert first.append(b"1" * (4 * KIB))  # the other one is unaffected
    first.close()
    third = a.start(b"3" * (64 * KIB))  # room again
    assert a.area.in_use == 64 * KIB
    third.close()
    assert a.area.in_use == 0


def test_a_missing_directory_means_no_spool_a_warning_and_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sidecar_proxy.spool")
    a = Area(tmp_path / "gone")
    assert a.area.start([b"body"]) is None
    assert a.area.start([b"body"]) is None
    assert [e.errno for e in a.errors] == [errno.ENOENT, errno.ENOENT]
    [record] = caplog.records  # the second one within a minute is not logged again
    assert record.levelno == logging.WARNING
    assert (record.__dict__["action"], record.__dict__["error"]) == ("create", "ENOENT")
    a.clock.now += WARN_INTERVAL
    assert a.area.start([b"body"]) is None
    assert len(caplog.records) == 2


def test_a_full_disk_drops_the_copy_and_gives_the_space_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fds: list[int]
) -> None:
    # /dev/full accepts the open and fails every write with ENOSPC, as a full disk does.
    def full_disk(directory: str) -> int:
        fd = os.open("/dev/full", os.O_RDWR)
        fds.append(fd)
        return fd

    caplog.set_level(logging.WARNING, logger="sidecar_proxy.spool")
    a = Area(tmp_path, open_file=full_disk)
    assert a.area.start([b"body"]) is None
    assert [e.errno for e in a.errors] == [errno.ENOSPC]
    assert a.area.in_use == 0
    assert not is_open(fds[0])
    [record] = caplog.records
    assert (record.__dict__["action"], record.__dict__["error"]) == ("write", "ENOSPC")


def test_a_failed_read_drops_the_copy(tmp_path: Path, fds: list[int]) -> None:
    # A descriptor that can be written but not read: the replay's read fails.
    def write_only(directory: str) -> int:
        fd = os.open(tmp_path / "w", os.O_WRONLY | os.O_CREAT, 0o600)
        fds.append(fd)
        return fd

    a = Area(tmp_path, open_file=write_only)
    spool = a.start(b"body")
    assert spool.read(0, 4) is None
    assert spool.closed and a.area.in_use == 0
    assert [e.errno for e in a.errors] == [errno.EBADF]


@pytest.mark.parametrize(("limit", "max_total"), [(0, 10), (11, 10), (-1, 10)])
def test_nonsense_bounds_are_refused(tmp_path: Path, limit: int, max_total: int) -> None:
    with pytest.raises(ValueError):
        SpoolArea(str(tmp_path), limit, Allowance(max_total), FakeClock(0.0), lambda exc: None)
