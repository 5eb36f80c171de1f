"""Settings: the table's defaults, sources and precedence, files, and every kind of bad value."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from sidecar_proxy.config import FIELDS, ConfigError, LoadedSettings, Settings, load_settings


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(
    flags: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    config: str | None = None,
) -> LoadedSettings:
    return load_settings(flags or {}, env or {}, config)


def error(
    flags: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    config: str | None = None,
) -> str:
    with pytest.raises(ConfigError) as info:
        load(flags, env, config)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the table ---------------------------------------------------------------------------


def test_defaults_are_the_documented_table() -> None:
    s = Settings()
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 8080)
    assert (s.upstream_host, s.upstream_port) == ("localhost", 3000)
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9090)
    assert (s.request_timeout, s.per_try_timeout, s.connect_timeout) == (30.0, 0.0, 1.0)
    assert (s.max_retries, s.retry_backoff, s.retry_max_backoff) == (3, 0.1, 5.0)
    assert s.retry_on == frozenset({"connect-failure", "reset", "timeout", "502", "503", "504"})
    assert s.retry_buffer_limit == 65536
    assert (s.retry_budget_ratio, s.retry_budget_min_per_second, s.retry_budget_ttl) == (
        0.2,
        10,
        10.0,
    )
    assert (s.circuit_breaker_threshold, s.circuit_breaker_timeout) == (5, 30.0)
    assert s.circuit_breaker_half_open_requests == 1
    assert s.circuit_breaker_failure_statuses == frozenset(range(500, 600))
    assert (s.max_in_flight, s.upstream_max_idle, s.upstream_idle_timeout) == (1000, 100, 4.0)
    assert (s.client_header_timeout, s.client_body_timeout, s.client_idle_timeout) == (
        10.0,
        30.0,
        120.0,
    )
    assert (s.max_header_bytes, s.max_header_count, s.max_url_bytes) == (65536, 100, 8192)
    assert s.max_request_body_bytes == 0
    assert (s.drain_delay, s.shutdown_grace_period) == (5.0, 20.0)
    assert (s.health_on_proxy_port, s.access_log, s.attempts_header) == (True, True, False)
    assert (s.log_level, s.metrics_path_label_limit, s.trust_forwarded_headers) == (
        "info",
        200,
        True,
    )
    assert s.admin_allow == frozenset({"127.0.0.0/8", "::1/128"})
    assert (s.rate_limit_rps, s.rate_limit_burst, s.rate_limit_key) == (0.0, 0, "global")
    assert s.rate_limit_max_keys == 10_000
    assert (s.app_ready_check, s.app_ready_interval, s.app_ready_failures) == ("none", 1.0, 3)
    assert s.server_timing is False


def test_table_covers_every_field_with_its_env_var_and_flag() -> None:
    names = [f.name for f in dataclasses.fields(Settings)]
    assert [f.name for f in FIELDS] == names
    envs = {f.name: f.env for f in FIELDS}
    assert envs["listen_port"] == "SIDECAR_LISTEN_PORT"
    assert envs["connect_timeout"] == "UPSTREAM_CONNECT_TIMEOUT"
    assert envs["upstream_max_idle"] == "UPSTREAM_MAX_IDLE_CONNECTIONS"
    assert len(set(envs.values())) == len(FIELDS)
    assert {f.name: f.flag for f in FIELDS}["retry_max_backoff"] == "--retry-max-backoff"
    for field in FIELDS:
        assert field.help and field.kind.expected
        # The default text is valid input and prints back to the same value.
        default = getattr(Settings(), field.name)
        assert field.kind.parse(field.kind.format(default)) == default


def test_settings_is_frozen_and_direct_construction_allows_port_zero() -> None:
    s = dataclasses.replace(Settings(), listen_port=0, metrics_port=0)
    assert s.listen_port == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.listen_port = 1  # type: ignore[misc]
    assert not hasattr(s, "__dict__")


def test_no_sources_gives_defaults() -> None:
    loaded = load()
    assert loaded.settings == Settings()
    assert set(loaded.sources.values()) == {"default"}
    assert loaded.warnings == ()


# --- sources and precedence --------------------------------------------------------------


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "sidecar.toml",
        'upstream_port = 3001\nmax_retries = 1\nrequest_timeout = "10s"\n',
    )
    loaded = load(
        flags={"upstream_port": "3003"},
        env={"UPSTREAM_PORT": "3002", "MAX_RETRIES": "2"},
        config=config,
    )
    s = loaded.settings
    assert (s.upstream_port, s.max_retries, s.request_timeout, s.listen_port) == (3003, 2, 10, 8080)
    assert loaded.sources["upstream_port"] == "flag --upstream-port"
    assert loaded.sources["max_retries"] == "env MAX_RETRIES"
    assert loaded.sources["request_timeout"] == f"file {config}"
    assert loaded.sources["listen_port"] == "default"


def test_empty_env_var_is_unset(tmp_path: Path) -> None:
    config = write(tmp_path, "c.toml", "max_retries = 7\n")
    loaded = load(env={"MAX_RETRIES": "", "SIDECAR_LISTEN_PORT": ""}, config=config)
    assert loaded.settings.max_retries == 7
    assert loaded.settings.listen_port == 8080
    assert loaded.sources["max_retries"] == f"file {config}"


def test_config_file_named_by_env_and_flag_wins(tmp_path: Path) -> None:
    by_env = write(tmp_path, "env.yaml", "max_retries: 4\n")
    by_flag = write(tmp_path, "flag.yaml", "max_retries: 5\n")
    assert load(env={"SIDECAR_CONFIG": by_env}).settings.max_retries == 4
    assert load(env={"SIDECAR_CONFIG": by_env}, config=by_flag).settings.max_retries == 5
    assert load(env={"SIDECAR_CONFIG": ""}).settings == Settings()


def test_env_values_of_every_kind() -> None:
    s = load(
        env={
            "LISTEN_HOST": "[::]",
            "UPSTREAM_HOST": "app.default.svc",
            "REQUEST_TIMEOUT": "1m30s",
            "PER_TRY_TIMEOUT": "2.5s",
            "RETRY_ON": " Reset, 429 ,500",
            "RETRY_BUFFER_LIMIT": "1MB",
            "RETRY_BUDGET_RATIO": ".5",
            "CIRCUIT_BREAKER_FAILURE_STATUSES": "502,503",
            "MAX_REQUEST_BODY_BYTES": "10MiB",
            "ACCESS_LOG": "off",
            "LOG_LEVEL": "DEBUG",
            "ADMIN_ALLOW": "10.0.0.0/8, 192.168.1.7,fd00::/8",
            "RATE_LIMIT_RPS": "2.5",
            "RATE_LIMIT_KEY": "CLIENT_IP",
            "APP_READY_CHECK": "HTTP:/Health?deep=1",
        }
    ).settings
    assert s.listen_host == "::"
    assert s.upstream_host == "app.default.svc"
    assert (s.request_timeout, s.per_try_timeout) == (90.0, 2.5)
    assert s.retry_on == frozenset({"reset", "429", "500"})
    assert s.retry_buffer_limit == 1_000_000
    assert s.retry_budget_ratio == 0.5
    assert s.circuit_breaker_failure_statuses == frozenset({502, 503})
    assert s.max_request_body_bytes == 10 * 1024 * 1024
    assert s.access_log is False
    assert s.log_level == "debug"
    assert s.admin_allow == frozenset({"10.0.0.0/8", "192.168.1.7/32", "fd00::/8"})
    assert (s.rate_limit_rps, s.rate_limit_key) == (2.5, "client_ip")
    assert s.app_ready_check == "http:/Health?deep=1"  # the path keeps its case


def test_empty_list_flag_means_none() -> None:
    s = load(flags={"retry_on": "", "circuit_breaker_failure_statuses": ""}).settings
    assert s.retry_on == frozenset()
    assert s.circuit_breaker_failure_statuses == frozenset()


def test_toml_file_with_native_types(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "sidecar.toml",
        """
listen_port = 8081
upstream_host = "127.0.0.1"
request_timeout = "45s"
per_try_timeout = 0
retry_budget_ratio = 0.5
retry_buffer_limit = 1024
max_header_bytes = "32KiB"
retry_on = ["connect-failure", 503]
circuit_breaker_failure_statuses = "5xx"
attempts_header = true
log_level = "warning"
""",
    )
    loaded = load(config=config)
    s = loaded.settings
    assert (s.listen_port, s.upstream_host, s.request_timeout) == (8081, "127.0.0.1", 45.0)
    assert (s.per_try_timeout, s.retry_budget_ratio) == (0.0, 0.5)
    assert (s.retry_buffer_limit, s.max_header_bytes) == (1024, 32768)
    assert s.retry_on == frozenset({"connect-failure", "503"})
    assert s.circuit_breaker_failure_statuses == frozenset(range(500, 600))
    assert (s.attempts_header, s.log_level) == (True, "warning")
    assert sum(src == f"file {config}" for src in loaded.sources.values()) == 11


def test_yaml_file_with_native_types(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        "sidecar.yml",
        """
# the pod's sidecar settings
metrics_port: 9191
retry_backoff: 50ms
retry_max_backoff: 2s
retry_on: [timeout, 504]
access_log: off
trust_forwarded_headers: false
max_in_flight: 0
""",
    )
    s = load(config=config).settings
    assert s.metrics_port == 9191
    assert (s.retry_backoff, s.retry_max_backoff) == (0.05, 2.0)
    assert s.retry_on == frozenset({"timeout", "504"})
    assert (s.access_log, s.trust_forwarded_headers, s.max_in_flight) == (False, False, 0)


def test_empty_yaml_file_is_an_empty_table(tmp_path: Path) -> None:
    assert load(config=write(tmp_path, "empty.yaml", "# nothing yet\n")).settings == Settings()


def test_shutdown_longer_than_kubernetes_grace_is_only_a_warning() -> None:
    loaded = load(env={"DRAIN_DELAY": "15s"})
    assert loaded.settings.drain_delay == 15.0
    (warning,) = loaded.warnings
    assert "drain_delay + shutdown_grace_period = 35s" in warning
    assert "terminationGracePeriodSeconds" in warning


# --- bad values: one line naming the setting, the value and what is allowed -------------


def test_port_not_a_number() -> None:
    assert error(env={"SIDECAR_LISTEN_PORT": "abc"}) == (
        "SIDECAR_LISTEN_PORT='abc': expected a port number 1-65535"
    )


def test_port_out_of_range() -> None:
    assert error(env={"UPSTREAM_PORT": "70000"}) == (
        "UPSTREAM_PORT='70000': expected a port number 1-65535"
    )


def test_port_zero_from_a_user_is_refused() -> None:
    assert (
        error(flags={"metrics_port": "0"}) == "--metrics-port='0': expected a port number 1-65535"
    )


def test_negative_duration() -> None:
    assert error(env={"REQUEST_TIMEOUT": "-5s"}) == "REQUEST_TIMEOUT='-5s': must not be negative"


def test_zero_duration_where_positive_required() -> None:
    assert error(env={"UPSTREAM_CONNECT_TIMEOUT": "0"}) == (
        "UPSTREAM_CONNECT_TIMEOUT='0': must be greater than 0"
    )


def test_duration_with_unknown_unit() -> None:
    message = error(env={"RETRY_BACKOFF": "3x"})
    assert message.startswith("RETRY_BACKOFF='3x': unknown unit 'x'; expected a duration")
    assert "300ms" in message


def test_duration_without_unit() -> None:
    message = error(env={"REQUEST_TIMEOUT": "30"})
    assert message.startswith("REQUEST_TIMEOUT='30': missing unit; expected a duration")


def test_integer_with_junk() -> None:
    assert error(flags={"max_retries": "3x"}) == "--max-retries='3x': expected an integer 0-10"


def test_integer_out_of_range() -> None:
    assert error(env={"MAX_RETRIES": "11"}) == "MAX_RETRIES='11': expected an integer 0-10"
    assert error(env={"MAX_IN_FLIGHT": "-1"}) == "MAX_IN_FLIGHT='-1': expected an integer >= 0"


def test_float_out_of_range() -> None:
    assert error(env={"RETRY_BUDGET_RATIO": "1.5"}) == (
        "RETRY_BUDGET_RATIO='1.5': expected a number 0-1"
    )
    assert error(env={"RETRY_BUDGET_RATIO": "nan"}) == (
        "RETRY_BUDGET_RATIO='nan': expected a number 0-1"
    )


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("CIRCUIT_BREAKER_SLOW_CALL_RATE", "0", "expected a number > 0 and <= 1"),
        ("CIRCUIT_BREAKER_SLOW_CALL_RATE", "1.01", "expected a number > 0 and <= 1"),
        ("CIRCUIT_BREAKER_SLOW_CALL_RATE", "nan", "expected a number > 0 and <= 1"),
        ("CIRCUIT_BREAKER_WINDOW", "0", "expected an integer 1-10000"),
        ("CIRCUIT_BREAKER_WINDOW", "10001", "expected an integer 1-10000"),
        ("CIRCUIT_BREAKER_SLOW_CALL_DURATION", "-1s", "must not be negative"),
        ("SLO_AVAILABILITY", "100", "expected a number >= 0 and < 100"),
        ("SLO_AVAILABILITY", "-1", "expected a number >= 0 and < 100"),
        ("SLO_AVAILABILITY", "99.9%", "expected a number >= 0 and < 100"),
        ("SLO_LATENCY_OBJECTIVE", "0", "expected a number > 0 and < 100"),
        ("SLO_LATENCY_OBJECTIVE", "100", "expected a number > 0 and < 100"),
        ("SLO_LATENCY", "-300ms", "must not be negative"),
    ],
)
def test_bad_slow_call_and_slo_settings(env: str, value: str, expected: str) -> None:
    assert error(env={env: value}) == f"{env}={value!r}: {expected}"


def test_slow_call_settings() -> None:
    assert Settings().circuit_breaker_slow_call_duration == 0.0  # off by default
    s = load(
        env={
            "CIRCUIT_BREAKER_SLOW_CALL_DURATION": "2s",
            "CIRCUIT_BREAKER_SLOW_CALL_RATE": "1",
            "CIRCUIT_BREAKER_WINDOW": "50",
        }
    ).settings
    assert (
        s.circuit_breaker_slow_call_duration,
        s.circuit_breaker_slow_call_rate,
        s.circuit_breaker_window,
    ) == (2.0, 1.0, 50)


def test_slo_settings() -> None:
    s = Settings()
    assert (s.slo_availability, s.slo_latency, s.slo_latency_objective) == (0.0, 0.0, 99.0)
    s = load(
        env={"SLO_AVAILABILITY": "99.95", "SLO_LATENCY": "300ms", "SLO_LATENCY_OBJECTIVE": "95"}
    ).settings
    assert (s.slo_availability, s.slo_latency, s.slo_latency_objective) == (99.95, 0.3, 95.0)


def test_size_out_of_range_and_malformed() -> None:
    message = error(env={"MAX_HEADER_BYTES": "2MiB"})
    assert message.startswith("MAX_HEADER_BYTES='2MiB': expected a size 1KiB-1MiB")
    message = error(env={"RETRY_BUFFER_LIMIT": "1.5MiB"})
    assert message.startswith("RETRY_BUFFER_LIMIT='1.5MiB': expected a size such as 65536")


def test_bad_bool() -> None:
    assert error(env={"ACCESS_LOG": "maybe"}) == (
        "ACCESS_LOG='maybe': expected a boolean: true/false, 1/0, yes/no or on/off"
    )


def test_bad_enum() -> None:
    assert error(env={"LOG_LEVEL": "verbose"}) == (
        "LOG_LEVEL='verbose': expected one of debug, info, warning, error"
    )


def test_bad_retry_on_token() -> None:
    message = error(env={"RETRY_ON": "reset,5xx"})
    assert message == (
        "RETRY_ON='reset,5xx': unknown retry condition '5xx'; expected a comma-separated "
        "list of connect-failure, reset, timeout, 429 or 500-599"
    )
    assert "'404'" in error(env={"RETRY_ON": "404"})


def test_bad_failure_status() -> None:
    message = error(env={"CIRCUIT_BREAKER_FAILURE_STATUSES": "500,429"})
    assert message == (
        "CIRCUIT_BREAKER_FAILURE_STATUSES='500,429': unknown status '429'; expected a "
        "comma-separated list of status codes 500-599 or the word 5xx"
    )


@pytest.mark.parametrize("host", ["http://app", "app:3000", "", "a b", "[::1"])
def test_bad_host(host: str) -> None:
    assert error(flags={"upstream_host": host}) == (
        f"--upstream-host={host!r}: expected a host name or IP address (no scheme, port or path)"
    )


@pytest.mark.parametrize(
    "check", ["http", "http:", "http:healthz", "http:/a b", "http:/#x", "grpc"]
)
def test_bad_app_ready_check(check: str) -> None:
    assert error(env={"APP_READY_CHECK": check}) == (
        f"APP_READY_CHECK={check!r}: expected none, tcp or http:/path (e.g. http:/healthz)"
    )


def test_bad_admin_allow() -> None:
    assert error(env={"ADMIN_ALLOW": "127.0.0.1/8"}) == (
        "ADMIN_ALLOW='127.0.0.1/8': 127.0.0.1/8 has host bits set; expected a comma-separated "
        "list of IP addresses or CIDR blocks (10.0.0.0/8, ::1)"
    )
    assert "'localhost' does not appear" in error(env={"ADMIN_ALLOW": "localhost"})


def test_admin_allow_may_be_empty_and_prints_back_as_written() -> None:
    assert load(flags={"admin_allow": ""}).settings.admin_allow == frozenset()
    field = next(f for f in FIELDS if f.name == "admin_allow")
    assert field.kind.format(Settings().admin_allow) == "127.0.0.0/8,::1"


def test_bad_rate_limit_values() -> None:
    assert error(env={"RATE_LIMIT_RPS": "-1"}) == "RATE_LIMIT_RPS='-1': expected a number 0-1000000"
    assert error(env={"RATE_LIMIT_KEY": "user"}) == (
        "RATE_LIMIT_KEY='user': expected one of global, client_ip"
    )


def test_rate_limit_burst_without_a_rate() -> None:
    assert error(env={"RATE_LIMIT_BURST": "10"}) == (
        "RATE_LIMIT_BURST='10' without rate_limit_rps=0 (default): "
        "rate_limit_burst needs a rate_limit_rps above 0"
    )


def test_retry_max_backoff_below_retry_backoff() -> None:
    assert error(env={"RETRY_MAX_BACKOFF": "50ms"}) == (
        "RETRY_MAX_BACKOFF='50ms' is less than retry_backoff=100ms (default): "
        "retry_max_backoff must be at least retry_backoff"
    )


def test_per_try_timeout_above_request_timeout() -> None:
    assert error(flags={"per_try_timeout": "10s"}, env={"REQUEST_TIMEOUT": "5s"}) == (
        "--per-try-timeout='10s' exceeds REQUEST_TIMEOUT='5s': "
        "per_try_timeout must be at most request_timeout"
    )


def test_slow_call_duration_not_under_request_timeout() -> None:
    assert error(env={"CIRCUIT_BREAKER_SLOW_CALL_DURATION": "30s"}) == (
        "CIRCUIT_BREAKER_SLOW_CALL_DURATION='30s' is not under request_timeout=30s (default): "
        "circuit_breaker_slow_call_duration must be less than request_timeout"
    )


def test_h2c_to_the_app_cannot_be_tls() -> None:
    assert error(env={"UPSTREAM_PROTOCOL": "h2c", "UPSTREAM_TLS": "true"}) == (
        "UPSTREAM_PROTOCOL='h2c' with UPSTREAM_TLS='true': h2c is cleartext HTTP/2; "
        "use upstream_protocol=http1 for TLS to the app"
    )


def test_bad_http2_values_are_refused() -> None:
    assert error(env={"UPSTREAM_PROTOCOL": "h2"}).startswith("UPSTREAM_PROTOCOL='h2': expected")
    assert error(env={"H2_STREAM_WINDOW": "1KiB"}).startswith("H2_STREAM_WINDOW='1KiB': expected")
    assert error(env={"H2_MAX_CONCURRENT_STREAMS": "0"}).startswith(
        "H2_MAX_CONCURRENT_STREAMS='0': expected"
    )
    assert error(env={"H2_SEND_STALL_TIMEOUT": "0"}).startswith("H2_SEND_STALL_TIMEOUT='0': ")
    assert error(env={"H2_KEEPALIVE_TIMEOUT": "0"}).startswith("H2_KEEPALIVE_TIMEOUT='0': ")
    assert error(env={"H2_KEEPALIVE_INTERVAL": "soon"}).startswith("H2_KEEPALIVE_INTERVAL='soon': ")


def test_listen_port_equals_metrics_port(tmp_path: Path) -> None:
    config = write(tmp_path, "c.yaml", "metrics_port: 8080\n")
    assert error(config=config) == (
        f"listen_port=8080 (default) and {config}: metrics_port=8080: "
        "listen_port and metrics_port must differ"
    )


# --- bad files ---------------------------------------------------------------------------


def test_file_value_names_file_and_key(tmp_path: Path) -> None:
    config = write(tmp_path, "c.toml", "listen_port = 70000\n")
    assert error(config=config) == f"{config}: listen_port=70000: expected a port number 1-65535"
    config = write(tmp_path, "d.toml", "access_log = 1\n")
    assert error(config=config).startswith(f"{config}: access_log=1: expected a boolean")
    config = write(tmp_path, "e.yaml", "listen_port: true\n")
    assert error(config=config) == f"{config}: listen_port=true: expected a port number 1-65535"


def test_bare_number_duration_in_file_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, "c.yaml", "request_timeout: 30\n")
    assert error(config=config).startswith(
        f"{config}: request_timeout=30: a bare number has no unit; expected a duration > 0 "
        "such as 300ms"
    )
    config = write(tmp_path, "d.yaml", "connect_timeout: 0\n")
    assert error(config=config) == f"{config}: connect_timeout=0: must be greater than 0"
    config = write(tmp_path, "e.yaml", "drain_delay: [5s]\n")
    assert error(config=config).startswith(f"{config}: drain_delay=['5s']: expected a duration")


def test_unknown_file_key_suggests_the_closest(tmp_path: Path) -> None:
    config = write(tmp_path, "config.yaml", "listen_prot: 8081\n")
    assert error(config=config) == (
        f"{config}: unknown key 'listen_prot' (did you mean 'listen_port'?)"
    )


def test_unknown_file_key_written_as_env_var_or_flag(tmp_path: Path) -> None:
    config = write(tmp_path, "c.toml", "SIDECAR_LISTEN_PORT = 8081\n")
    assert error(config=config).endswith(
        "unknown key 'SIDECAR_LISTEN_PORT' (did you mean 'listen_port'?)"
    )
    config = write(tmp_path, "d.yaml", "max-retries: 2\n")
    assert error(config=config).endswith("unknown key 'max-retries' (did you mean 'max_retries'?)")
    config = write(tmp_path, "e.yaml", "zzz: 1\n")
    assert error(config=config) == f"{config}: unknown key 'zzz'"


def test_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert error(config=missing) == f"--config={missing!r}: file not found"
    assert error(env={"SIDECAR_CONFIG": missing}) == f"SIDECAR_CONFIG={missing!r}: file not found"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    config = write(tmp_path, "c.toml", "max_retries = 1\n")
    os.chmod(config, 0)
    assert error(config=config) == f"--config={config!r}: cannot read the file: Permission denied"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert error(config=str(directory)).startswith(f"--config={str(directory)!r}: cannot read")


def test_unsupported_extension(tmp_path: Path) -> None:
    config = write(tmp_path, "c.json", json.dumps({"max_retries": 1}))
    assert error(config=config) == (
        f"--config={config!r}: unsupported file type; expected a .toml, .yaml or .yml file"
    )


def test_bad_toml_syntax(tmp_path: Path) -> None:
    config = write(tmp_path, "c.toml", "max_retries = 1\nlisten_port 8081\n")
    message = error(config=config)
    assert message.startswith(f"{config}: invalid TOML: ")
    assert "line 2" in message


def test_bad_yaml_syntax(tmp_path: Path) -> None:
    config = write(tmp_path, "c.yaml", "max_retries: 1\nlisten_port: [8081\n")
    message = error(config=config)
    assert message.startswith(f"{config}: invalid YAML: ")
    assert "line 3" in message


def test_file_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(b"log_level = '\xff'\n")
    assert error(config=str(config)).startswith(f"{config}: not UTF-8 text")


@pytest.mark.parametrize(("text", "got"), [("- 1\n- 2\n", "list [1, 2]"), ("8080\n", "int 8080")])
def test_top_level_not_a_table(tmp_path: Path, text: str, got: str) -> None:
    config = write(tmp_path, "c.yaml", text)
    assert (
        error(config=config)
        == f"{config}: expected a table of settings at the top level, got {got}"
    )


def test_nested_table_value_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, "c.toml", "[max_retries]\nvalue = 1\n")
    assert error(config=config) == (
        f"{config}: max_retries={{'value': 1}}: expected an integer 0-10"
    )


def test_unknown_flag_setting() -> None:
    assert (
        error(flags={"max_retry": "1"})
        == "unknown setting 'max_retry' (did you mean 'max_retries'?)"
    )


def test_grpc_status_lists() -> None:
    s = load(None, {"GRPC_RETRY_ON": "Unavailable, resource_exhausted,4"}, None).settings
    assert s.grpc_retry_on == frozenset({14, 8, 4})
    assert error(env={"GRPC_FAILURE_STATUSES": "unavailable,teapot"}) == (
        "GRPC_FAILURE_STATUSES='unavailable,teapot': unknown gRPC status 'teapot'; expected a "
        "comma-separated list of gRPC status names (unavailable, resource-exhausted, internal, "
        "...) or codes 0-16"
    )
    assert "'17'" in error(env={"GRPC_RETRY_ON": "17"})


# --- hooks --------------------------------------------------------------------------------


def test_hooks_name_a_file_or_a_module() -> None:
    assert (Settings().hooks, Settings().hook_timeout) == ("", 1.0)  # no hooks by default
    assert load(env={"HOOKS": "/etc/sidecar/hooks.py"}).settings.hooks == "/etc/sidecar/hooks.py"
    assert load(env={"HOOKS": "hooks.py"}).settings.hooks == "hooks.py"  # relative to the cwd
    assert load(env={"HOOKS": "my_pkg.edge.hooks"}).settings.hooks == "my_pkg.edge.hooks"
    assert load(flags={"hooks": "''"}).settings.hooks == ""
    assert load(env={"HOOK_TIMEOUT": "250ms"}).settings.hook_timeout == 0.25


@pytest.mark.parametrize("value", ["my pkg", "pkg..hooks", "1pkg.hooks", "pkg.hooks.", "a\tb"])
def test_hooks_that_are_neither_file_nor_module(value: str) -> None:
    assert error(env={"HOOKS": value}) == (
        f"HOOKS={value!r}: expected a Python file (e.g. /etc/sidecar/hooks.py) or a dotted "
        "module name (e.g. mypkg.hooks)"
    )


def test_a_hook_timeout_must_be_positive() -> None:
    assert error(env={"HOOK_TIMEOUT": "0s"}) == "HOOK_TIMEOUT='0s': must be greater than 0"


# --- the replay spool ---------------------------------------------------------------------


def test_the_spool_is_off_by_default_and_its_settings(tmp_path: Path) -> None:
    s = Settings()
    assert (s.retry_spool_limit, s.retry_spool_dir, s.retry_spool_max_total) == (0, "", 1 << 30)
    on = load(
        env={
            "RETRY_SPOOL_LIMIT": "64MiB",
            "RETRY_SPOOL_DIR": str(tmp_path),
            "RETRY_SPOOL_MAX_TOTAL": "256MiB",
        }
    ).settings
    assert (on.retry_spool_limit, on.retry_spool_dir) == (64 << 20, str(tmp_path))
    assert on.retry_spool_max_total == 256 << 20
    # The directory is only checked when spooling is on; unset, it is the system temp dir.
    assert load(env={"RETRY_SPOOL_DIR": "/nowhere"}).settings.retry_spool_limit == 0
    assert load(env={"RETRY_SPOOL_LIMIT": "1MiB"}).settings.retry_spool_dir == ""


def test_a_spool_that_could_never_be_used(tmp_path: Path) -> None:
    assert error(env={"RETRY_SPOOL_LIMIT": "64KiB"}) == (
        "RETRY_SPOOL_LIMIT='64KiB' is not above retry_buffer_limit=64KiB (default): bodies up "
        "to retry_buffer_limit are kept in memory, so nothing would be spooled"
    )
    assert error(env={"RETRY_SPOOL_LIMIT": "2GiB"}) == (
        "RETRY_SPOOL_LIMIT='2GiB' exceeds retry_spool_max_total=1GiB (default): "
        "retry_spool_max_total bounds all spooled bodies together"
    )
    missing = tmp_path / "missing"
    assert error(env={"RETRY_SPOOL_LIMIT": "1MiB", "RETRY_SPOOL_DIR": str(missing)}) == (
        f"RETRY_SPOOL_DIR={str(missing)!r}: {str(missing)!r} is not a directory"
    )
    afile = tmp_path / "file"
    afile.write_text("")
    assert "is not a directory" in error(
        env={"RETRY_SPOOL_LIMIT": "1MiB", "RETRY_SPOOL_DIR": str(afile)}
    )
    assert "expected a size" in error(env={"RETRY_SPOOL_MAX_TOTAL": "0"})
    assert "expected a directory path" in error(env={"RETRY_SPOOL_DIR": "bad\x01dir"})


def test_worker_heartbeat_timeout_is_off_or_at_least_four_heartbeats() -> None:
    assert load().settings.worker_heartbeat_timeout == 10.0
    assert load(env={"WORKER_HEARTBEAT_TIMEOUT": "0"}).settings.worker_heartbeat_timeout == 0.0
    assert load(env={"WORKER_HEARTBEAT_TIMEOUT": "2s"}).settings.worker_heartbeat_timeout == 2.0
    assert error(env={"WORKER_HEARTBEAT_TIMEOUT": "1500ms"}) == (
        "WORKER_HEARTBEAT_TIMEOUT='1500ms': worker_heartbeat_timeout must be 0 (off) or at least 2s"
    )
