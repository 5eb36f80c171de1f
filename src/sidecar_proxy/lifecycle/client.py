"""The other end of the admin port: ``sidecar-proxy wait-ready`` and ``sidecar-proxy quit``.

Both run in the sidecar's own container (a ``postStart`` hook, a Job's last step) with the
sidecar's environment, so the admin address comes from the same settings the sidecar read.
Plain blocking ``urllib``: these are one-shot commands, and the CLI must not load the event loop.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from sidecar_proxy.config import Settings, format_duration

POLL_INTERVAL = 0.1  # between two /ready requests; a sidecar starts in a few hundred ms
_REQUEST_TIMEOUT = 2.0


def reachable(host: str) -> str:
    """A host a local client can connect to: wildcard listen addresses are reachable locally."""
    if host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def admin_url(settings: Settings) -> str:
    return f"http://{reachable(settings.metrics_host)}:{settings.metrics_port}"


def _request(url: str, method: str, timeout: float) -> tuple[int, str]:
    """Status and body of one request; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def _unreachable(url: str, exc: OSError) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return f"cannot reach {url}: {reason}"


def wait_ready(
    base: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, str]:
    """Poll ``base/ready`` until it answers 200 or ``timeout`` seconds have passed.

    Returns whether it did, and a line saying what happened (on failure, the last answer).
    Connection errors are expected while the sidecar starts, and are retried like a 503.
    """
    url = base + "/ready"
    deadline = clock() + timeout
    while True:
        left = deadline - clock()
        try:
            status, _ = _request(url, "GET", max(0.05, min(_REQUEST_TIMEOUT, left)))
            last = f"{url} answered {status}"
            if status == 200:
                return True, last
        except OSError as exc:
            last = _unreachable(url, exc)
        left = deadline - clock()
        if left <= 0:
            return False, f"not ready after {format_duration(timeout)}: {last}"
        sleep(min(POLL_INTERVAL, left))


def quit_sidecar(base: str) -> tuple[bool, str]:
    """``POST base/quitquitquit``: whether the sidecar took it, and a line saying so."""
    url = base + "/quitquitquit"
    try:
        status, body = _request(url, "POST", _REQUEST_TIMEOUT)
    except OSError as exc:
        return False, _unreachable(url, exc)
    if status == 200:
        return True, "the sidecar is draining and exits when done"
    return False, f"{url} answered {status}: {body.strip()}"
