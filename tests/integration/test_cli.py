"""The ``sidecar-proxy`` command run as a real process, and the demo app over real sockets."""

from __future__ import annotations

import http.client
import json
import platform
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from support.certs import CA, key_pem, new_key
from support.process import free_port, run_cli, run_proxy
from support.tls import Pki, make_pki

from sidecar_proxy import __version__
from sidecar_proxy.buildinfo import build_info
from sidecar_proxy.config import FIELDS
from sidecar_proxy.demo import start_demo_app

CONFIG_ERROR = "sidecar-proxy: configuration error: "


def assert_config_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(CONFIG_ERROR)
    for part in parts:
        assert part in lines[0]


# --- version and help --------------------------------------------------------------------


def test_version_says_which_build_runs() -> None:
    result = run_cli("--version")
    build = build_info()
    python = f"{platform.python_implementation()} {platform.python_version()}"
    assert build.kind in ("compiled", "pure Python")
    assert (result.returncode, result.stdout) == (
        0,
        f"sidecar-proxy {__version__} ({build.kind}, {python})\n",
    )


def test_startup_log_line_says_which_build_runs() -> None:
    # The app need not exist: the proxy starts and logs "listening" without contacting it.
    with run_proxy(free_port(), {"LOG_LEVEL": "info"}) as proxy:
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(10) == 0
        assert proxy.proc.stderr is not None
        logged = [json.loads(line) for line in proxy.proc.stderr.read().splitlines()]
    (listening,) = [entry for entry in logged if entry["message"] == "listening"]
    assert listening["version"] == __version__
    assert listening["build"] == build_info().kind


def test_top_level_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "check-config", "demo", "wait-ready", "quit"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["run", "check-config", "demo", "wait-ready", "quit"])
def test_command_help_lists_every_flag_with_env_and_default(command: str) -> None:
    result = run_cli(command, "--help", env={"COLUMNS": "400"})
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # undo argparse's wrapping
    for field in FIELDS:
        described = f"{field.help} [env {field.env}; default {field.default}]"
        assert f" {field.flag} " in text
        assert text.index(described) > text.index(f" {field.flag} ")
    assert "--config FILE" in result.stdout
    assert ("--json" in result.stdout) is (command == "check-config")
    assert ("--timeout DURATION" in result.stdout) is (command == "wait-ready")


def test_unknown_command_and_flag_are_usage_errors() -> None:
    result = run_cli("bogus")
    assert result.returncode == 2
    assert "invalid choice: 'bogus'" in result.stderr
    result = run_cli("check-config", "--listen-prot", "1")
    assert result.returncode == 2
    assert "unrecognized arguments: --listen-prot" in result.stderr


# --- check-config ------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "sidecar.toml"
    path.write_text('max_retries = 5\nrequest_timeout = "90s"\nlisten_port = 8000\n')
    return path


def test_check_config_table_reports_sources(config_file: Path) -> None:
    result = run_cli(
        "check-config",
        "--config",
        str(config_file),
        "--listen-port",
        "8081",
        "--attempts-header",
        env={"RETRY_BACKOFF": "250ms", "MAX_RETRIES": "", "RETRY_BUFFER_LIMIT": "1048576"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["SETTING", "VALUE", "SOURCE"]
    table = {row.split()[0]: row.split(maxsplit=2)[1:] for row in rows}
    assert len(table) == len(FIELDS)
    assert table["listen_port"] == ["8081", "flag --listen-port"]
    assert table["attempts_header"] == ["true", "flag --attempts-header"]
    assert table["retry_backoff"] == ["250ms", "env RETRY_BACKOFF"]
    assert table["retry_buffer_limit"] == ["1MiB", "env RETRY_BUFFER_LIMIT"]
    assert table["max_retries"] == ["5", f"file {config_file}"]  # empty env var = unset
    assert table["request_timeout"] == ["1m30s", f"file {config_file}"]
    assert table["client_idle_timeout"] == ["2m0s", "default"]
    assert table["retry_on"] == ["connect-failure,reset,timeout,502,503,504", "default"]
    # Columns line up: every value starts where the header's VALUE does.
    column = header.index("VALUE")
    assert all(row[column - 2 : column] == "  " and row[column] != " " for row in rows)


def test_check_config_json(config_file: Path) -> None:
    result = run_cli(
        "check-config",
        "--json",
        "--max-request-body-bytes=10MB",
        env={"SIDECAR_CONFIG": str(config_file), "LOG_LEVEL": "WARNING"},
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert list(document) == [field.name for field in FIELDS]
    assert document["max_retries"] == {"value": 5, "text": "5", "source": f"file {config_file}"}
    assert document["request_timeout"] == {
        "value": 90.0,
        "text": "1m30s",
        "source": f"file {config_file}",
    }
    assert document["log_level"] == {
        "value": "warning",
        "text": "warning",
        "source": "env LOG_LEVEL",
    }
    assert document["max_request_body_bytes"] == {
        "value": 10_000_000,
        "text": "10MB",
        "source": "flag --max-request-body-bytes",
    }
    assert document["retry_on"]["value"] == [
        "connect-failure",
        "reset",
        "timeout",
        "502",
        "503",
        "504",
    ]
    assert document["circuit_breaker_failure_statuses"]["value"] == list(range(500, 600))
    assert document["health_on_proxy_port"] == {"value": True, "text": "true", "source": "default"}


def test_check_config_yaml_file_relative_path(tmp_path: Path) -> None:
    (tmp_path / "sidecar.yaml").write_text("upstream_host: app\nretry_on: [timeout]\n")
    result = run_cli("check-config", "--json", "--config", "sidecar.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["upstream_host"] == {
        "value": "app",
        "text": "app",
        "source": "file sidecar.yaml",
    }
    assert document["retry_on"]["value"] == ["timeout"]


def test_check_config_says_what_auto_workers_come_to() -> None:
    result = run_cli("check-config", env={"WORKERS": "auto"})
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("workers ")]
    value, source = row.split(maxsplit=2)[1:]
    assert value == "auto"
    assert source.startswith("env WORKERS; ") and "auto: " in source
    document = json.loads(run_cli("check-config", "--json", "--workers", "3").stdout)
    assert document["workers"] == {
        "value": 3,
        "text": "3",
        "source": "flag --workers",
        "count": 3,
        "count_from": "as given",
    }


def test_check_config_prints_warnings_but_succeeds() -> None:
    result = run_cli("check-config", env={"SHUTDOWN_GRACE_PERIOD": "40s"})
    assert result.returncode == 0
    assert result.stderr.startswith("sidecar-proxy: warning: drain_delay + shutdown_grace_period")


@pytest.mark.parametrize(
    ("env", "parts"),
    [
        ({"SIDECAR_LISTEN_PORT": "abc"}, ["SIDECAR_LISTEN_PORT='abc'", "port number 1-65535"]),
        ({"REQUEST_TIMEOUT": "-5s"}, ["REQUEST_TIMEOUT='-5s'", "must not be negative"]),
        ({"MAX_RETRIES": "3x"}, ["MAX_RETRIES='3x'", "expected an integer 0-10"]),
        ({"ACCESS_LOG": "maybe"}, ["ACCESS_LOG='maybe'", "expected a boolean"]),
        ({"METRICS_PORT": "8080"}, ["METRICS_PORT='8080'", "must differ"]),
        ({"APP_READY_CHECK": "udp"}, ["APP_READY_CHECK='udp'", "none, tcp or http:/path"]),
        ({"RATE_LIMIT_BURST": "5"}, ["RATE_LIMIT_BURST='5'", "needs a rate_limit_rps"]),
        ({"WORKERS": "0"}, ["WORKERS='0'", "expected auto or an integer 1-256"]),
        ({"WORKERS": "-2"}, ["WORKERS='-2'", "expected auto or an integer 1-256"]),
        ({"WORKERS": "all"}, ["WORKERS='all'", "expected auto or an integer 1-256"]),
        ({"WORKERS": "1.5"}, ["WORKERS='1.5'", "expected auto or an integer 1-256"]),
        ({"METRICS_PER_WORKER": "yes please"}, ["METRICS_PER_WORKER=", "expected a boolean"]),
    ],
)
def test_check_config_bad_env_value(env: dict[str, str], parts: list[str]) -> None:
    assert_config_error(run_cli("check-config", env=env), *parts)


def test_check_config_bad_flag_value() -> None:
    result = run_cli("check-config", "--request-timeout", "3x")
    assert_config_error(result, "--request-timeout='3x'", "unknown unit 'x'", "300ms")


def test_check_config_unknown_file_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("listen_prot: 8081\n")
    result = run_cli("check-config", "--config", str(config))
    assert_config_error(result, f"{config}: unknown key 'listen_prot'", "'listen_port'")


def test_check_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    result = run_cli("check-config", "--config", str(missing))
    assert_config_error(result, f"--config='{missing}'", "file not found")


# --- run and demo refuse bad configuration before starting anything ----------------------


@pytest.mark.parametrize("command", [[], ["run"], ["demo"]])
@pytest.mark.parametrize(
    ("env", "parts"),
    [
        ({"REQUEST_TIMEOUT": "-5s"}, ["REQUEST_TIMEOUT='-5s'", "must not be negative"]),
        ({"WORKERS": "0", "REQUEST_TIMEOUT": "5s"}, ["WORKERS='0'", "auto or an integer"]),
        (
            {"WORKERS": "2", "WORKER_HEARTBEAT_TIMEOUT": "1s"},
            ["WORKER_HEARTBEAT_TIMEOUT='1s'", "must be 0 (off) or at least 2s"],
        ),
    ],
)
def test_run_and_demo_with_bad_value_exit_2_without_starting(
    command: list[str], env: dict[str, str], parts: list[str]
) -> None:
    upstream = free_port()
    started = time.monotonic()
    result = run_cli(*command, "--upstream-host=127.0.0.1", f"--upstream-port={upstream}", env=env)
    assert time.monotonic() - started < 10
    assert_config_error(result, *parts)
    with socket.socket() as sock:  # the demo app was never bound
        assert sock.connect_ex(("127.0.0.1", upstream)) != 0


def test_demo_reports_a_busy_upstream_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("demo", "--upstream-host", "127.0.0.1", "--upstream-port", str(port))
    assert result.returncode == 1
    assert result.stderr.startswith(f"sidecar-proxy: cannot start the demo app on 127.0.0.1:{port}")


# --- the demo app ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> Iterator[ThreadingHTTPServer]:
    app = start_demo_app("127.0.0.1", 0)
    yield app
    app.shutdown()
    app.server_close()


@pytest.fixture
def conn(demo: ThreadingHTTPServer) -> Iterator[http.client.HTTPConnection]:
    connection = http.client.HTTPConnection("127.0.0.1", demo.server_address[1], timeout=5)
    yield connection
    connection.close()


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


def test_demo_root_echoes_request_headers(conn: http.client.HTTPConnection) -> None:
    response, body = request(conn, "GET", "/", headers={"X-Request-ID": "abc-123"})
    assert response.status == 200
    assert response.version == 11
    assert response.getheader("Content-Type") == "application/json"
    document = json.loads(body)
    assert document["headers"]["X-Request-ID"] == "abc-123"
    assert document["method"] == "GET"


def test_demo_keeps_the_connection_alive(conn: http.client.HTTPConnection) -> None:
    request(conn, "GET", "/users/1")
    sock = conn.sock
    response, _ = request(conn, "GET", "/users/2")
    assert response.status == 200
    assert conn.sock is sock


def test_demo_user(conn: http.client.HTTPConnection) -> None:
    response, body = request(conn, "GET", "/users/42")
    assert response.status == 200
    assert json.loads(body)["id"] == "42"


def test_demo_slow(conn: http.client.HTTPConnection) -> None:
    started = time.monotonic()
    response, body = request(conn, "GET", "/slow?ms=200")
    assert response.status == 200
    assert json.loads(body) == {"slept_ms": 200}
    assert 0.19 <= time.monotonic() - started < 2
    response, _ = request(conn, "GET", "/slow?ms=soon")
    assert response.status == 400


def test_demo_flaky_gives_both_outcomes(conn: http.client.HTTPConnection) -> None:
    statuses = {request(conn, "GET", "/flaky")[0].status for _ in range(60)}
    assert statuses == {200, 503}  # misses both with odds of 2**-59


@pytest.mark.parametrize("code", [200, 201, 204, 404, 429, 503])
def test_demo_status(conn: http.client.HTTPConnection, code: int) -> None:
    response, body = request(conn, "GET", f"/status/{code}")
    assert response.status == code
    assert body == (b"" if code == 204 else json.dumps({"status": code}).encode() + b"\n")


def test_demo_echo_content_length(conn: http.client.HTTPConnection) -> None:
    response, body = request(
        conn, "POST", "/echo", body=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert (response.status, body) == (200, b"hello")
    assert response.getheader("Content-Type") == "text/plain"


def test_demo_echo_chunked(conn: http.client.HTTPConnection) -> None:
    conn.request("POST", "/echo", body=iter([b"hel", b"lo ", b"world"]), encode_chunked=True)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"hello world")
    # The connection stays usable: the whole chunked body was consumed.
    assert request(conn, "GET", "/users/7")[0].status == 200


def test_demo_stream_sends_events_as_they_happen(conn: http.client.HTTPConnection) -> None:
    started = time.monotonic()
    conn.request("GET", "/stream")
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type") == "text/event-stream"
    first = response.read1()
    assert first.startswith(b"id: 1\n")
    assert time.monotonic() - started < 0.6  # not held back until the end (0.8 s)
    rest = response.read()
    events = (first + rest).decode().strip().split("\n\n")
    assert [json.loads(event.split("data: ")[1])["n"] for event in events] == [1, 2, 3, 4, 5]
    assert time.monotonic() - started >= 0.8


def test_demo_unknown_route_is_json_404(conn: http.client.HTTPConnection) -> None:
    response, body = request(conn, "GET", "/nope")
    assert response.status == 404
    assert json.loads(body)["error"] == "not found"
    response, body = request(conn, "POST", "/users/1", body=b"ignored")
    assert response.status == 404
    assert request(conn, "HEAD", "/users/1")[1] == b""


# --- TLS files -----------------------------------------------------------------------------


def tls_env(pki: Pki) -> dict[str, str]:
    return {"TLS_CERT_FILE": pki.cert_file, "TLS_KEY_FILE": pki.key_file}


def test_check_config_shows_the_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    client_ca = CA("Client CA").write(pki.directory, "client-ca")
    env = tls_env(pki) | {"TLS_CLIENT_CA_FILE": client_ca, "TLS_CLIENT_AUTH": "require"}
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\nCERTIFICATES\n")[1].splitlines()
    assert lines[0].startswith("tls_cert_file  CN=proxy,O=sidecar-proxy tests  expires ")
    assert "(in 30 days)" in lines[0] or "(in 29 days)" in lines[0]
    assert lines[0].endswith("URI:spiffe://cluster.local/ns/shop/sa/proxy, DNS:localhost")
    assert lines[1].startswith("tls_client_ca_file  CN=Client CA,O=sidecar-proxy tests  expires")

    document = json.loads(run_cli("check-config", "--json", env=env).stdout)
    (cert,) = document["tls_cert_file"]["certificates"]
    assert cert["subject"] == "CN=proxy,O=sidecar-proxy tests"
    assert cert["not_after"] == pki.server.cert.not_valid_after_utc.isoformat().replace(
        "+00:00", "Z"
    )


@pytest.mark.parametrize("command", [["check-config"], ["run"], ["demo"]])
def test_a_key_for_another_certificate_stops_every_command(
    tmp_path: Path, command: list[str]
) -> None:
    pki = make_pki(tmp_path)
    other = tmp_path / "other.key"
    other.write_bytes(key_pem(new_key()))
    result = run_cli(*command, env=tls_env(pki) | {"TLS_KEY_FILE": str(other)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{CONFIG_ERROR}TLS_KEY_FILE={str(other)!r}: the key does not match the first "
        f"certificate of TLS_CERT_FILE={pki.cert_file!r}"
    ]


def test_a_missing_certificate_stops_the_proxy(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    missing = str(tmp_path / "gone.crt")
    result = run_cli("run", env=tls_env(pki) | {"TLS_CERT_FILE": missing})
    assert result.returncode == 2
    assert result.stderr == f"{CONFIG_ERROR}TLS_CERT_FILE={missing!r}: file not found\n"


# --- hooks ----------------------------------------------------------------------------------

EXAMPLE_HOOKS = str(Path(__file__).parents[2] / "examples" / "hooks.py")


def test_check_config_shows_the_hooks_loaded() -> None:
    table = run_cli("check-config", env={"HOOKS": EXAMPLE_HOOKS})
    assert table.returncode == 0, table.stderr
    assert table.stdout.endswith(f"\nHOOKS\n{EXAMPLE_HOOKS}  on_request, on_response\n")
    document = json.loads(run_cli("check-config", "--json", env={"HOOKS": EXAMPLE_HOOKS}).stdout)
    assert document["hooks"] == {
        "value": EXAMPLE_HOOKS,
        "text": EXAMPLE_HOOKS,
        "source": "env HOOKS",
        "loaded": {"file": EXAMPLE_HOOKS, "on_request": "sync", "on_response": "sync"},
    }
    plain = json.loads(run_cli("check-config", "--json").stdout)
    assert "loaded" not in plain["hooks"]


@pytest.mark.parametrize("command", [["check-config"], ["run"], ["demo"]])
def test_hooks_that_do_not_load_stop_the_command(tmp_path: Path, command: list[str]) -> None:
    broken = tmp_path / "hooks.py"
    broken.write_text("def on_request(request):\n    return (\n")
    port = free_port()
    result = run_cli(*command, f"--listen-port={port}", env={"HOOKS": str(broken)})
    assert_config_error(result, f"HOOKS='{broken}'", "SyntaxError", "line 2")
    with socket.socket() as sock:  # nothing was started
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_hooks_value_that_names_nothing_loadable(tmp_path: Path) -> None:
    assert_config_error(
        run_cli("check-config", env={"HOOKS": "not a module"}), "HOOKS='not a module'"
    )
    missing = tmp_path / "missing.py"
    assert_config_error(run_cli("run", env={"HOOKS": str(missing)}), "no such file")


def test_wait_ready_and_quit_never_run_the_hooks(tmp_path: Path) -> None:
    broken = tmp_path / "hooks.py"
    broken.write_text("raise SystemExit('the hooks ran')\n")
    env = {"HOOKS": str(broken), "METRICS_PORT": str(free_port())}
    assert run_cli("wait-ready", "--timeout", "0s", env=env).returncode == 1
    assert run_cli("quit", env=env).returncode == 1
