"""Lifecycle logs: one JSON object per line on stderr, with extras and tracebacks."""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Iterator

import orjson
import pytest

from sidecar_proxy.observe.logs import JsonFormatter, UtcTimestamps, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def stderr_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout belongs to the access log
    return [orjson.loads(line) for line in captured.err.splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    log = logging.getLogger("sidecar_proxy.lifecycle")
    log.debug("not shown")
    log.info("listening on %s", "0.0.0.0:8080", extra={"port": 8080, "ready": True})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("startup failed")

    started, failed = stderr_lines(capsys)
    assert started == {
        "time": started["time"],
        "level": "INFO",
        "logger": "sidecar_proxy.lifecycle",
        "message": "listening on 0.0.0.0:8080",
        "port": 8080,
        "ready": True,
    }
    assert isinstance(started["time"], str)
    assert started["time"].endswith("Z")
    assert failed["level"] == "ERROR"
    assert failed["message"] == "startup failed"
    assert isinstance(failed["exc"], str)
    assert "RuntimeError: boom" in failed["exc"]
    assert failed["exc"].startswith("Traceback")


@pytest.mark.usefixtures("restore_logging")
def test_unserialisable_extras_become_strings(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG")
    logging.getLogger("sidecar_proxy.x").debug("odd", extra={"thing": object, "path": b"/x"})
    (entry,) = stderr_lines(capsys)
    assert entry["thing"] == "<class 'object'>"
    assert entry["level"] == "DEBUG"


@pytest.mark.usefixtures("restore_logging")
def test_reconfiguring_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    configure_logging("warning")
    log = logging.getLogger("sidecar_proxy.x")
    log.info("hidden")
    log.warning("once")
    assert [entry["message"] for entry in stderr_lines(capsys)] == ["once"]


@pytest.mark.usefixtures("restore_logging")
def test_warnings_are_logged_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    (entry,) = stderr_lines(capsys)
    assert entry["logger"] == "py.warnings"
    assert "careful" in str(entry["message"])


class Exclusive:
    """A lock that records what was written to stderr while it was held."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.held = False
        self.written_inside: list[str] = []

    def __enter__(self) -> None:
        assert not self.held
        self.held = True

    def __exit__(self, *exc: object) -> None:
        self.written_inside.append(self._capsys.readouterr().err)
        self.held = False


@pytest.mark.usefixtures("restore_logging")
def test_with_an_exclusive_lock_each_line_is_written_whole_while_it_is_held(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exclusive = Exclusive(capsys)
    configure_logging("info", exclusive=exclusive)
    log = logging.getLogger("sidecar_proxy.x")
    log.warning("long " + "x" * 10_000)
    log.warning("short")
    assert not exclusive.held and capsys.readouterr().err == ""  # nothing written outside it
    lines = [orjson.loads(text) for text in exclusive.written_inside]  # one whole line each
    assert [entry["message"][:5] for entry in lines] == ["long ", "short"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud")


@pytest.mark.parametrize(
    "wall", [0.0, 0.0005, 59.9999, 951782400.5, 1714564800.123456, 4102444799.999]
)
def test_timestamps_match_datetime(wall: float) -> None:
    expected = datetime.datetime.fromtimestamp(wall, datetime.UTC)
    text = expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert UtcTimestamps().format(wall) == text
