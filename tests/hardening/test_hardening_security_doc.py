"""SECURITY.md stays true: its limits table matches the settings, and its list of known gaps is
exactly the set of strict expected failures in these tests (a gap that closes turns its test red;
removing the marker then makes this test ask for the line in SECURITY.md to go too)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from sidecar_proxy.config.settings import FIELDS_BY_NAME

HERE = Path(__file__).parent
DOC = (HERE.parent.parent / "SECURITY.md").read_text()

# The settings a reader of the threat model needs: every size limit and every timeout.
SECURITY_SETTINGS = {
    "max_header_bytes",
    "max_header_count",
    "max_url_bytes",
    "max_request_body_bytes",
    "client_header_timeout",
    "client_body_timeout",
    "client_idle_timeout",
    "request_timeout",
    "per_try_timeout",
    "connect_timeout",
    "upstream_idle_timeout",
    "upstream_max_idle",
    "retry_buffer_limit",
    "retry_spool_limit",
    "retry_spool_max_total",
    "hook_timeout",
    "max_in_flight",
    "h2_max_concurrent_streams",
    "h2_stream_window",
    "h2_connection_window",
    "h2_max_reset_rate",
    "h2_max_control_frame_rate",
    "h2_send_stall_timeout",
}


def section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else len(DOC)]


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def backticked(cell: str) -> str:
    m = re.match(r"`([^`]*)`", cell)
    assert m, f"expected a `value` in {cell!r}"
    return m.group(1)


def test_limits_table_matches_the_settings() -> None:
    rows = table_rows(section("Limits and timeouts"))
    documented = {}
    for setting, env, default, _ in rows:
        documented[backticked(setting)] = (backticked(env), backticked(default))
    assert set(documented) == SECURITY_SETTINGS
    for name, (env, default) in documented.items():
        field = FIELDS_BY_NAME[name]
        assert (env, default) == (field.env, field.default), name


def expected_failures() -> set[str]:
    """Every strict xfail in this directory, as ``file::test`` or ``file::test[id]``."""
    found: set[str] = set()
    for path in sorted(HERE.glob("test_hardening_*.py")):
        module = importlib.import_module(f"{__package__}.{path.stem}")
        for name, fn in vars(module).items():
            if not name.startswith("test_") or not callable(fn):
                continue
            marks = getattr(fn, "pytestmark", [])
            if any(m.name == "xfail" for m in marks):
                assert all(m.kwargs.get("strict") for m in marks if m.name == "xfail"), name
                found.add(f"{path.name}::{name}")
            for mark in marks:
                if mark.name != "parametrize":
                    continue
                for param in mark.args[1]:
                    for m in getattr(param, "marks", ()):  # only pytest.param() carries marks
                        if m.name == "xfail":
                            assert m.kwargs.get("strict"), (name, param.id)
                            found.add(f"{path.name}::{name}[{param.id}]")
    return found


def matches(case: str, pattern: str) -> bool:
    """``pattern`` as written in SECURITY.md: literal, except ``*`` for any run of characters
    (so one line can cover several parameters)."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), case) is not None


def gap_patterns() -> list[str]:
    """The test column of the Known gaps table; a pattern written as just ``[id]`` is another
    parameter of the test named before it in the same cell."""
    patterns: list[str] = []
    for row in table_rows(section("Known gaps")):
        test = ""
        for written in re.findall(r"`([^`]*)`", row[1]):
            pattern = test + written if written.startswith("[") else written
            test = pattern.split("[")[0]
            patterns.append(pattern)
    return patterns


def test_known_gaps_are_exactly_the_expected_failures() -> None:
    patterns = gap_patterns()
    failures = expected_failures()
    unlisted = {f for f in failures if not any(matches(f, p) for p in patterns)}
    assert unlisted == set(), "expected failures missing from SECURITY.md's Known gaps"
    stale = [p for p in patterns if not any(matches(f, p) for f in failures)]
    assert stale == [], "Known gaps listed in SECURITY.md that no test expects to fail any more"
