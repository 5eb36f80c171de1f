"""Starting and stopping the real processes the deploy tests talk to, all on 127.0.0.1.

Every wait here has a deadline and every process started here is ended in a `finally`, so a
failing test leaves nothing running behind it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from support.process import free_port, http_get

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SIDECAR = VENV_BIN / "sidecar-proxy"
LOOPBACK = "127.0.0.1"
# Debian's prometheus package, installed by scripts/install-test-tools.sh.
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


class Proc:
    """A running process whose output goes to a temporary file rather than a pipe, so a chatty
    process never blocks on a full pipe that nobody reads."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self._log = log

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def output(self) -> str:
        """The last few KiB of what the process printed (stdout and stderr together)."""
        return self._log.read_bytes().decode(errors="replace")[-4000:]


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None
) -> None:
    """Polls check until it is true; fails after timeout, or at once if proc has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.exited():
            code = proc.popen.returncode
            raise AssertionError(f"{what}: process exited with {code}:\n{proc.output()}")
        try:
            if check():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    detail = f"\n{proc.output()}" if proc is not None else ""
    raise AssertionError(f"{what}: not within {timeout}s{detail}")


def wait_http_ok(port: int, path: str, timeout: float, proc: Proc | None = None) -> None:
    check = lambda: http_get(port, path, timeout=1.0)[0] == 200  # noqa: E731
    wait_until(check, timeout, f"GET {path} on port {port}", proc)


@contextlib.contextmanager
def process(args: list[str], env: Mapping[str, str] | None = None) -> Iterator[Proc]:
    """Runs args for the duration of the block; SIGTERM, then SIGKILL, on the way out."""
    fd, name = tempfile.mkstemp(prefix="deploy-test-", suffix=".log")
    log = Path(name)
    try:
        # The child writes through its own descriptor; output() reads the file afresh.
        popen = subprocess.Popen(
            args,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    except BaseException:
        log.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    try:
        yield Proc(popen, log)
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=5)
        log.unlink(missing_ok=True)


class Served:
    """A stdlib HTTP server's port and the paths it has been asked for."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.paths: list[str] = []


@contextlib.contextmanager
def serve(
    body: bytes | Callable[[], bytes], status: int = 200, content_type: str = "text/plain"
) -> Iterator[Served]:
    """A stdlib HTTP server on a free loopback port answering every GET alike.

    body may be a function, called for each request, for content that changes over time.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            served.paths.append(self.path)
            data = body() if callable(body) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    served = Served(server.server_address[1])
    # A short poll interval: shutdown() waits up to one interval.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sidecar_env(listen_port: int, metrics_port: int, upstream_port: int) -> dict[str, str]:
    """Environment for a sidecar on loopback ports in front of an upstream on upstream_port."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        SIDECAR_LISTEN_PORT=str(listen_port),
        METRICS_PORT=str(metrics_port),
        LISTEN_HOST=LOOPBACK,
        METRICS_HOST=LOOPBACK,
        UPSTREAM_HOST=LOOPBACK,
        UPSTREAM_PORT=str(upstream_port),
        DRAIN_DELAY="0s",
    )
    return env


@contextlib.contextmanager
def sidecar(upstream_port: int, workers: int = 1) -> Iterator[tuple[int, int]]:
    """The real `sidecar-proxy run` in front of upstream_port, once /ready answers 200 on the
    metrics port; yields (proxy port, metrics port)."""
    listen_port, metrics_port = free_port(), free_port()
    env = {**sidecar_env(listen_port, metrics_port, upstream_port), "WORKERS": str(workers)}
    with process([str(SIDECAR), "run"], env) as proc:
        wait_http_ok(metrics_port, "/ready", timeout=15, proc=proc)
        yield listen_port, metrics_port


@contextlib.contextmanager
def prometheus(workdir: Path, config: Mapping[str, object]) -> Iterator[int]:
    """The real Prometheus server with this configuration on a free loopback port, its data in
    workdir; yields its port once it reports ready."""
    port = free_port()
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    args = [
        PROMETHEUS,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--log.level=warn",
    ]
    with process(args) as proc:
        wait_http_ok(port, "/-/ready", timeout=20, proc=proc)
        yield port


def api(prometheus_port: int, path: str, **params: str) -> Any:
    """The data of a Prometheus HTTP API answer, e.g. api(port, "query", query="up")."""
    target = f"/api/v1/{path}"
    if params:
        target += "?" + urllib.parse.urlencode(params)
    status, body = http_get(prometheus_port, target)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def query(prometheus_port: int, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query through Prometheus' HTTP API: (labels, value) for each series."""
    data = api(prometheus_port, "query", query=expr)
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def wait_for_query(
    prometheus_port: int, expr: str, timeout: float
) -> list[tuple[dict[str, str], float]]:
    """Polls an instant query until it returns at least one series; that result."""
    result: list[tuple[dict[str, str], float]] = []

    def has_result() -> bool:
        nonlocal result
        result = query(prometheus_port, expr)
        return bool(result)

    wait_until(has_result, timeout, f"Prometheus query {expr!r} to return a series")
    return result
