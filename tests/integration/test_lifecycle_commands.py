"""The running sidecar's lifecycle from outside, as a pod sees it: real processes, real sockets.

``sidecar-proxy quit`` (POST /quitquitquit), ``sidecar-proxy wait-ready`` and a SIGHUP reload.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from support.client import closed_by_peer, connect, get, read_responses
from support.process import ProxyProcess, http_get, run_cli, run_proxy
from support.scrape import wait_until
from support.upstream import Upstream


def admin_env(proc: ProxyProcess) -> dict[str, str]:
    """What the sidecar's own container has in its environment, as the commands need it."""
    return {"METRICS_HOST": "127.0.0.1", "METRICS_PORT": str(proc.admin_port)}


def metric(proc: ProxyProcess, line_start: str) -> float:
    text = http_get(proc.admin_port, "/metrics")[1].decode()
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.split()[-1])


def logs(proc: ProxyProcess) -> list[dict[str, object]]:
    """The process's JSON log lines, once it has exited."""
    assert proc.proc.stderr is not None
    return [orjson.loads(line) for line in proc.proc.stderr.read().splitlines()]


# --- quit ------------------------------------------------------------------------------------


def test_quit_drains_and_the_process_exits_zero(upstream: Upstream) -> None:
    with run_proxy(upstream.port, {"DRAIN_DELAY": "300ms"}) as proc, connect(proc.port) as sock:
        sock.sendall(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n")
        read_responses(sock, 1)
        done = run_cli("quit", env=admin_env(proc))
        assert done.returncode == 0, done.stderr
        assert done.stderr == "sidecar-proxy: quit: the sidecar is draining and exits when done\n"
        assert wait_until(lambda: proc.ready() == 503)  # the loop takes it from the admin thread
        # The drain is the SIGTERM one: the open connection is told goodbye, not dropped.
        sock.sendall(b"GET /during HTTP/1.1\r\nHost: t\r\n\r\n")
        (resp,), _ = read_responses(sock, 1)
        assert (resp.status, resp.header("Connection")) == (200, "close")
        assert closed_by_peer(sock)
        assert proc.proc.wait(5) == 0


def test_quit_from_an_address_outside_admin_allow_is_refused(upstream: Upstream) -> None:
    with run_proxy(upstream.port, {"ADMIN_ALLOW": "10.0.0.0/8"}) as proc:
        refused = run_cli("quit", env=admin_env(proc))
        assert refused.returncode == 1
        assert "answered 403: 403 forbidden: this address is not in ADMIN_ALLOW" in refused.stderr
        assert proc.ready() == 200
        assert proc.proc.poll() is None


def test_quit_with_no_sidecar_says_so(free_port: int) -> None:
    result = run_cli("quit", env={"METRICS_PORT": str(free_port)})
    assert result.returncode == 1
    assert f"cannot reach http://localhost:{free_port}/quitquitquit" in result.stderr


# --- wait-ready ------------------------------------------------------------------------------


def test_wait_ready_waits_for_the_app_check_and_times_out_with_the_last_answer(
    start_upstream: Callable[..., Upstream], free_port: int
) -> None:
    env = {"APP_READY_CHECK": "tcp", "APP_READY_INTERVAL": "50ms"}
    with run_proxy(free_port, env, started="/health") as proc:
        late = run_cli("wait-ready", "--timeout", "300ms", env=admin_env(proc))
        assert late.returncode == 1
        assert late.stderr == (
            "sidecar-proxy: wait-ready: not ready after 300ms: "
            f"http://127.0.0.1:{proc.admin_port}/ready answered 503\n"
        )
        # The app comes up while wait-ready waits.
        timer = threading.Timer(0.4, start_upstream, kwargs={"port": free_port})
        started = time.monotonic()
        timer.start()
        ready = run_cli("wait-ready", "--timeout", "20s", env=admin_env(proc))
        timer.join()
        assert ready.returncode == 0, ready.stderr
        assert ready.stderr == ""
        assert time.monotonic() - started >= 0.4


def test_wait_ready_retries_while_nothing_listens_yet(free_port: int) -> None:
    result = run_cli("wait-ready", "--timeout", "250ms", env={"METRICS_PORT": str(free_port)})
    assert result.returncode == 1
    assert result.stderr.startswith("sidecar-proxy: wait-ready: not ready after 250ms: cannot ")


def test_wait_ready_refuses_a_bad_timeout() -> None:
    result = run_cli("wait-ready", "--timeout", "soon")
    assert result.returncode == 2
    assert result.stderr.startswith("sidecar-proxy: wait-ready: --timeout='soon': ")


# --- SIGHUP --------------------------------------------------------------------------------


def test_sighup_applies_live_settings_keeps_the_others_and_survives_a_bad_file(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text(
        'attempts_header = false\nmetrics_path_label_limit = 200\nlog_level = "info"\n'
    )
    env = {"SIDECAR_CONFIG": str(config), "LOG_LEVEL": ""}  # the file decides the log level
    with run_proxy(upstream.port, env) as proc:
        assert get(proc.port, "/a").header("X-Sidecar-Attempts") is None

        config.write_text(
            'attempts_header = true\nmetrics_path_label_limit = 50\nlog_level = "info"\n'
        )
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: get(proc.port, "/a").header("X-Sidecar-Attempts") == "1")
        assert metric(proc, 'sidecar_config_reloads_total{result="success"}') == 1

        config.write_text('attempts_header = false\nmax_retries = "many"\n')
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_until(
            lambda: metric(proc, 'sidecar_config_reloads_total{result="failure"}') == 1
        )
        assert get(proc.port, "/a").header("X-Sidecar-Attempts") == "1"  # the old settings hold

        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(5) == 0
        lines = logs(proc)

    reloaded = next(line for line in lines if line["message"] == "configuration reloaded")
    assert reloaded["changed"] == {"attempts_header": "false -> true"}
    kept = next(line for line in lines if str(line["message"]).startswith("reload: some"))
    assert kept["kept"] == {"metrics_path_label_limit": "200 (new: 50)"}
    # The same one line start-up gives for the same file.
    startup = run_cli("check-config", "--config", str(config))
    assert startup.returncode == 2
    expected = startup.stderr.strip().removeprefix("sidecar-proxy: ")
    (error,) = [line for line in lines if line["level"] == "ERROR"]
    assert error["message"] == expected
    assert error["reload"] == "running settings kept"
