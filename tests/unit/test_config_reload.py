"""What a reload applies: live settings change, the others keep their running value."""

from __future__ import annotations

import dataclasses

from sidecar_proxy.config import FIELDS, Settings
from sidecar_proxy.config.reload import plan_reload


def test_nothing_changed_is_an_empty_plan() -> None:
    plan = plan_reload(Settings(), Settings())
    assert (plan.settings, plan.applied, plan.kept) == (Settings(), {}, {})


def test_live_settings_are_applied_and_the_others_kept() -> None:
    running = Settings()
    loaded = dataclasses.replace(
        running,
        request_timeout=5.0,
        retry_on=frozenset({"reset"}),
        rate_limit_rps=50.0,
        listen_port=8081,
        upstream_host="app",
    )
    plan = plan_reload(running, loaded)
    assert plan.applied == {
        "request_timeout": ("30s", "5s"),
        "retry_on": ("connect-failure,reset,timeout,502,503,504", "reset"),
        "rate_limit_rps": ("0", "50"),
    }
    assert plan.kept == {"listen_port": ("8080", "8081"), "upstream_host": ("localhost", "app")}
    assert plan.settings == dataclasses.replace(loaded, listen_port=8080, upstream_host="localhost")


def test_what_a_restart_needs_is_what_the_running_proxy_cannot_rebuild() -> None:
    # The listener, the pool, the admin thread, the app check and the path labeler are built
    # once at start-up from these; everything else is read afresh or reconfigured.
    assert {f.name for f in FIELDS if not f.live} == {
        "listen_host",
        "listen_port",
        "upstream_host",
        "upstream_port",
        "metrics_host",
        "metrics_port",
        "admin_allow",
        "connect_timeout",
        "upstream_max_idle",
        "upstream_idle_timeout",
        "max_header_bytes",
        "app_ready_check",
        "app_ready_interval",
        "app_ready_failures",
        "metrics_path_label_limit",
        # the app pool's protocol, and the HTTP/2 limits both legs' connections take when made
        "upstream_protocol",
        "h2_max_concurrent_streams",
        "h2_stream_window",
        "h2_connection_window",
        "h2_max_reset_rate",
        "h2_max_control_frame_rate",
        "h2_send_stall_timeout",
        "h2_keepalive_interval",
        "h2_keepalive_timeout",
        # the process tree, the pod's /metrics view and its heartbeat watch are built once
        "workers",
        "metrics_per_worker",
        "worker_heartbeat_timeout",
        # TLS: the files' contents reload by themselves (tls/reload.py); which files, and the
        # policy built around them, are read once
        "tls_cert_file",
        "tls_key_file",
        "tls_min_version",
        "tls_client_ca_file",
        "tls_client_auth",
        "tls_allowed_identities",
        "upstream_tls",
        "upstream_ca_file",
        "upstream_server_name",
        "upstream_cert_file",
        "upstream_key_file",
        # the slow-call rule and the SLO windows are set up at start-up
        "circuit_breaker_slow_call_duration",
        "circuit_breaker_slow_call_rate",
        "circuit_breaker_window",
        "slo_availability",
        "slo_latency",
        "slo_latency_objective",
    }
