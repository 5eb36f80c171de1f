"""nginx configurations for the upstream app and the reference reverse proxy.

Both run in the foreground (``daemon off``) with one worker, a private prefix directory, and
their pid file and error log in that directory, so nothing outside the benchmark's temporary
directory is read or written and the supervisor's process group owns master and worker.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from bench.procs import HOST

SMALL_BODY = "hello world\n"  # 12 bytes: a typical tiny JSON/health answer
SMALL_SIZE = len(SMALL_BODY)
LARGE_SIZE = 1024 * 1024


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise RuntimeError("nginx not found: run `bash scripts/install-test-tools.sh` (make bench)")
    return found


def _common(prefix: Path) -> str:
    # As root, nginx would switch its worker to "nobody", which cannot read the 0700 temporary
    # directory; keeping the worker as the invoking user needs no chmod of anything.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\n"
        "master_process on;\n"
        "worker_processes 1;\n"
        "worker_rlimit_nofile 16384;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 8192; }\n"
    )


def _temp_paths(prefix: Path) -> str:
    # The compiled-in temp paths are under /var/lib/nginx; keep everything in the prefix.
    return "".join(
        f"  {kind}_temp_path {prefix}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def write_upstream(prefix: Path, port: int) -> Path:
    """The app: ``/small`` (a 12-byte 200) and ``/1m`` (a 1 MiB static file), keep-alive on.

    ``keepalive_requests`` is raised from its default of 1000 so that neither wrk nor a proxy's
    pool is made to reconnect every 1000 requests: the runs measure the steady state.
    """
    www = prefix / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "1m").write_bytes(os.urandom(LARGE_SIZE))
    conf = prefix / "upstream.conf"
    conf.write_text(
        _common(prefix) + "http {\n" + _temp_paths(prefix) + "  access_log off;\n"
        "  sendfile on;\n"
        "  tcp_nopush on;\n"
        "  keepalive_timeout 120s;\n"
        "  keepalive_requests 1000000;\n"
        "  server {\n"
        f"    listen {HOST}:{port} backlog=4096;\n"
        "    location = /small {\n"
        f'      default_type text/plain; return 200 "{SMALL_BODY.strip()}\\n";\n'
        "    }\n"
        f"    location = /1m {{ default_type application/octet-stream; alias {www}/1m; }}\n"
        "  }\n"
        "}\n"
    )
    return conf


def write_proxy(prefix: Path, port: int, upstream_port: int) -> Path:
    """nginx as a plain reverse proxy: pooled keep-alive to the app, no access log, no metrics.

    Everything else is nginx's default, including response buffering (``proxy_buffering on``),
    which is how nginx is deployed as a reverse proxy in practice.
    """
    location = (
        "    location / {\n"
        "      proxy_pass http://app;\n"
        "      proxy_http_version 1.1;\n"
        '      proxy_set_header Connection "";\n'
        "    }\n"
    )
    return _pooled_proxy(prefix / "proxy.conf", port, upstream_port, "", location)


def _pooled_proxy(conf: Path, port: int, upstream_port: int, listen: str, location: str) -> Path:
    """A proxy on ``port`` (``listen`` adds to its listen line) in front of an ``upstream app``
    of up to 100 idle connections, none closed for its request count; no access log."""
    prefix = conf.parent
    conf.write_text(
        _common(prefix) + "http {\n" + _temp_paths(prefix) + "  access_log off;\n"
        "  keepalive_timeout 120s;\n"
        "  keepalive_requests 1000000;\n"
        "  upstream app {\n"
        f"    server {HOST}:{upstream_port};\n"
        "    keepalive 100;\n"
        "    keepalive_requests 1000000;\n"
        "  }\n"
        "  server {\n"
        f"    listen {HOST}:{port}{listen} backlog=4096;\n" + location + "  }\n"
        "}\n"
    )
    return conf


def write_tls_proxy(prefix: Path, port: int, upstream_port: int, cert: Path, key: Path) -> Path:
    """:func:`write_proxy` terminating TLS with the sidecar's policy: TLS 1.2 and 1.3, ECDHE
    with AEAD ciphers for 1.2, the same certificate. Sessions are left at nginx's defaults."""
    conf = write_proxy(prefix, port, upstream_port)
    text = conf.read_text().replace(
        f"    listen {HOST}:{port} backlog=4096;\n",
        f"    listen {HOST}:{port} ssl backlog=4096;\n"
        f"    ssl_certificate {cert};\n"
        f"    ssl_certificate_key {key};\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;\n"
        "    ssl_prefer_server_ciphers on;\n",
    )
    conf.write_text(text)
    return conf


def write_grpc_proxy(prefix: Path, port: int, upstream_port: int) -> Path:
    """nginx in front of a gRPC app: ``listen ... http2`` (h2c, nginx 1.22's spelling) and
    ``grpc_pass`` to an ``upstream`` block with ``keepalive``, so calls share pooled HTTP/2
    connections to the app as the sidecar's do. No access log."""
    location = "    location / { grpc_pass grpc://app; }\n"
    return _pooled_proxy(prefix / "grpc.conf", port, upstream_port, " http2", location)


def argv(prefix: Path, conf: Path) -> list[str]:
    # -e: the error log before the configuration is read (default /var/log/nginx/error.log).
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
