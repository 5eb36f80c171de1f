"""The ``Server-Timing`` field the sidecar adds to the app's responses (W3C Server Timing).

Two metrics, in milliseconds, measured when the app's response head arrives:

* ``app``: from the moment the final attempt's request head was written to the app until the
  app's response head came back: the app's own time, plus the request body's upload.
* ``sidecar``: everything before that, from the moment the client's request head was parsed:
  connecting to the app, earlier attempts and their backoff, waiting for a pooled connection.

Their sum is the time to the response head as the sidecar saw it (the access log's
``upstream_ttfb_ms``). The field is added as a field line of its own after the app's own
``Server-Timing`` lines, which pass untouched: a list field's lines combine in order (RFC 9110
§5.3), so browser dev tools show the app's entries and these two side by side.
"""

from __future__ import annotations


def server_timing_line(start: float, sent: float, ttfb: float) -> bytes:
    """The field line, for a request parsed at ``start``, whose final attempt was sent at
    ``sent`` (both ``time.monotonic()``) and whose response head came ``ttfb`` seconds after
    ``start``."""
    sidecar = max(0.0, sent - start)
    app = max(0.0, ttfb - sidecar)
    return b"Server-Timing: sidecar;dur=%.3f, app;dur=%.3f\r\n" % (sidecar * 1e3, app * 1e3)
