"""Reading settings from flags, the environment and a config file, and validating them.

Precedence is flag > env > file > default, decided per setting, and the winning source of
each is reported (``check-config`` prints it) because "where did this value come from?" is
the first question when a pod misbehaves. An env var set to the empty string counts as unset,
as in the Go sidecar: Kubernetes manifests and shell scripts routinely produce ``FOO=``.

The config file is named by ``--config`` or ``SIDECAR_CONFIG``. It is a flat table whose keys
are the setting names: ``.toml`` is read with tomllib, ``.yaml``/``.yml`` with
``yaml.safe_load``; an empty YAML file is an empty table. The file format's native numbers and
booleans are accepted where they fit (see :mod:`sidecar_proxy.config.kinds`).

Nothing falls back silently: the first bad value raises :class:`ConfigError`, one line naming
the setting the way the user wrote it (``SIDECAR_LISTEN_PORT``, ``--listen-port`` or
``config.toml: listen_port``), the value, and what is allowed. A proxy started with a typo'd
timeout silently replaced by a default is worse than one that does not start.

Port 0 is refused here even though :class:`Settings` accepts it: a user who writes 0 has made
a mistake, while tests construct ``Settings`` directly to ask for any free port.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar_proxy.config.settings import FIELDS, FIELDS_BY_NAME, Field, Settings
from sidecar_proxy.config.units import format_duration
from sidecar_proxy.policy.liveness import MIN_TIMEOUT
from sidecar_proxy.replay.spool import spool_directory

CONFIG_ENV = "SIDECAR_CONFIG"
CONFIG_FLAG = "--config"
# Kubernetes' default terminationGracePeriodSeconds: SIGKILL follows SIGTERM after this.
KUBERNETES_GRACE_SECONDS = 30.0


class ConfigError(ValueError):
    """A setting, or the config file, is unusable; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """The effective settings, where each came from, and non-fatal advice about them."""

    settings: Settings
    # field name -> "default" | "env NAME" | "file PATH" | "flag --name"
    sources: dict[str, str]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where one explicit value came from: how to name it to the user, and what they wrote."""

    source: str  # as reported in LoadedSettings.sources
    label: str  # as named in error messages
    raw: object  # the text or native file value, shown back verbatim


def load_settings(
    flags: Mapping[str, str],
    environ: Mapping[str, str],
    config_path: str | None = None,
) -> LoadedSettings:
    """Build :class:`Settings` from ``flags`` (field name -> text), ``environ`` and a file.

    ``config_path`` is the ``--config`` value; when it is None, ``SIDECAR_CONFIG`` is used.
    """
    for name in flags:
        if name not in FIELDS_BY_NAME:
            raise ConfigError(f"unknown setting {name!r}{_suggest(name)}")
    file_label, file_values = _read_config_file(config_path, environ)

    values: dict[str, Any] = {}
    origins: dict[str, _Origin] = {}
    for field in FIELDS:
        origin = _origin(field, flags, environ, file_label, file_values)
        if origin is None:
            continue  # Settings supplies the default
        try:
            values[field.name] = field.kind.coerce(origin.raw)
        except ValueError as exc:
            raise ConfigError(f"{origin.label}={_show(origin.raw)}: {exc}") from None
        origins[field.name] = origin

    settings = Settings(**values)
    _check_relations(settings, origins)
    return LoadedSettings(
        settings=settings,
        sources={
            field.name: origins[field.name].source if field.name in origins else "default"
            for field in FIELDS
        },
        warnings=_advice(settings),
    )


def _origin(
    field: Field,
    flags: Mapping[str, str],
    environ: Mapping[str, str],
    file_label: str,
    file_values: Mapping[str, object],
) -> _Origin | None:
    if field.name in flags:
        return _Origin(f"flag {field.flag}", field.flag, flags[field.name])
    if environ.get(field.env):
        return _Origin(f"env {field.env}", field.env, environ[field.env])
    if field.name in file_values:
        return _Origin(f"file {file_label}", f"{file_label}: {field.name}", file_values[field.name])
    return None


def _read_config_file(
    config_path: str | None, environ: Mapping[str, str]
) -> tuple[str, dict[str, object]]:
    """Return the file's path as the user wrote it, and its settings (none without a file)."""
    if config_path is not None:
        path, named_by = config_path, CONFIG_FLAG
    elif environ.get(CONFIG_ENV):
        path, named_by = environ[CONFIG_ENV], CONFIG_ENV
    else:
        return "", {}
    where = f"{named_by}={path!r}"
    parsers: dict[str, Callable[[str, bytes], object]] = {
        ".toml": _parse_toml,
        ".yaml": _parse_yaml,
        ".yml": _parse_yaml,
    }
    parse = parsers.get(Path(path).suffix.lower())
    if parse is None:
        raise ConfigError(f"{where}: unsupported file type; expected a .toml, .yaml or .yml file")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the file: {exc.strerror or exc}") from None
    try:
        document = parse(path, data)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason}") from None
    if document is None:  # an empty YAML file
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{path}: expected a table of settings at the top level, "
            f"got {type(document).__name__} {_show(document)}"
        )
    for key in document:
        if key not in FIELDS_BY_NAME:
            raise ConfigError(f"{path}: unknown key {key!r}{_suggest(str(key))}")
    return path, document


# The parsers are imported when a file of their format is read, not with this module: PyYAML
# alone is 0.7 MiB of every process's memory (docs/benchmarks.md, "Memory"), and most sidecars
# are configured from the environment.


def _parse_toml(path: str, data: bytes) -> object:
    import tomllib  # noqa: PLC0415 - see above

    try:
        return tomllib.loads(data.decode())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _parse_yaml(path: str, data: bytes) -> object:
    import yaml  # noqa: PLC0415 - see above

    try:
        return yaml.safe_load(data)
    except yaml.MarkedYAMLError as exc:
        # PyYAML's own message spans several lines with a source excerpt; keep the gist.
        if (mark := exc.problem_mark) is None:
            raise ConfigError(f"{path}: invalid YAML: {_one_line(exc)}") from None
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"{path}: invalid YAML: {exc.problem} ({where})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _suggest(key: str) -> str:
    """``" (did you mean 'x'?)"`` for the closest setting name, accepting env var spellings."""
    normal = key.lower().replace("-", "_")
    by_env = {field.env.lower(): field.name for field in FIELDS}
    if normal in FIELDS_BY_NAME or normal in by_env:
        best = [by_env.get(normal, normal)]
    else:
        best = difflib.get_close_matches(normal, list(FIELDS_BY_NAME), n=1)
    return f" (did you mean {best[0]!r}?)" if best else ""


def _show(value: object) -> str:
    """A value as the user wrote it: strings quoted, file booleans in TOML/YAML spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_relations(settings: Settings, origins: Mapping[str, _Origin]) -> None:
    """Rules between settings; the message names both sides and where each came from."""

    def describe(name: str) -> str:
        if name in origins:
            return f"{origins[name].label}={_show(origins[name].raw)}"
        field = FIELDS_BY_NAME[name]
        return f"{name}={field.kind.format(getattr(settings, name))} (default)"

    if settings.listen_port == settings.metrics_port:
        raise ConfigError(
            f"{describe('listen_port')} and {describe('metrics_port')}: "
            "listen_port and metrics_port must differ"
        )
    if settings.retry_max_backoff < settings.retry_backoff:
        raise ConfigError(
            f"{describe('retry_max_backoff')} is less than {describe('retry_backoff')}: "
            "retry_max_backoff must be at least retry_backoff"
        )
    if settings.per_try_timeout > settings.request_timeout:
        raise ConfigError(
            f"{describe('per_try_timeout')} exceeds {describe('request_timeout')}: "
            "per_try_timeout must be at most request_timeout"
        )
    if settings.rate_limit_burst and not settings.rate_limit_rps:
        # A burst alone would be silently ignored: the bucket never refills, so there is no
        # limit to apply it to.
        raise ConfigError(
            f"{describe('rate_limit_burst')} without {describe('rate_limit_rps')}: "
            "rate_limit_burst needs a rate_limit_rps above 0"
        )
    if settings.circuit_breaker_slow_call_duration >= settings.request_timeout:
        # request_timeout ends every wait for a response head: a call could only be that slow
        # by a slow upload, which is the client's time, not the app's.
        raise ConfigError(
            f"{describe('circuit_breaker_slow_call_duration')} is not under "
            f"{describe('request_timeout')}: circuit_breaker_slow_call_duration must be "
            "less than request_timeout"
        )
    timeout = settings.worker_heartbeat_timeout
    if 0 < timeout < MIN_TIMEOUT:
        # Shorter would take a loop busy for a moment (a large TLS reload, a slow hook) for
        # a stuck one, and kill it with its requests in flight.
        raise ConfigError(
            f"{describe('worker_heartbeat_timeout')}: worker_heartbeat_timeout must be 0 (off) "
            f"or at least {format_duration(MIN_TIMEOUT)}"
        )
    _check_spool(settings, describe)
    _check_tls(settings, origins, describe)


def _check_spool(settings: Settings, describe: Callable[[str], str]) -> None:
    """A spool that could never be used, or that has nowhere to go."""
    limit = settings.retry_spool_limit
    if not limit:
        return
    if limit <= settings.retry_buffer_limit:
        raise ConfigError(
            f"{describe('retry_spool_limit')} is not above {describe('retry_buffer_limit')}: "
            "bodies up to retry_buffer_limit are kept in memory, so nothing would be spooled"
        )
    if limit > settings.retry_spool_max_total:
        raise ConfigError(
            f"{describe('retry_spool_limit')} exceeds {describe('retry_spool_max_total')}: "
            "retry_spool_max_total bounds all spooled bodies together"
        )
    directory = spool_directory(settings.retry_spool_dir)
    if not os.path.isdir(directory):
        raise ConfigError(f"{describe('retry_spool_dir')}: {directory!r} is not a directory")


def _check_tls(
    settings: Settings, origins: Mapping[str, _Origin], describe: Callable[[str], str]
) -> None:
    """TLS settings that would silently do nothing, or half a certificate/key pair."""
    for cert, key in (
        ("tls_cert_file", "tls_key_file"),
        ("upstream_cert_file", "upstream_key_file"),
    ):
        if bool(getattr(settings, cert)) != bool(getattr(settings, key)):
            raise ConfigError(f"{describe(cert)} and {describe(key)}: set both or neither")
    # Each of these means something only when the other setting is on; given explicitly (and
    # not as its default) without it, the user expects protection they would not get.
    defaults = Settings()
    needs = {
        "tls_min_version": ("tls_cert_file", settings.tls_cert_file != ""),
        "tls_client_auth": ("tls_cert_file", settings.tls_cert_file != ""),
        "tls_client_ca_file": ("tls_client_auth", settings.tls_client_auth != "none"),
        "tls_allowed_identities": ("tls_client_auth", settings.tls_client_auth != "none"),
        "upstream_ca_file": ("upstream_tls", settings.upstream_tls),
        "upstream_server_name": ("upstream_tls", settings.upstream_tls),
        "upstream_cert_file": ("upstream_tls", settings.upstream_tls),
    }
    for name, (needed, on) in needs.items():
        if name in origins and not on and getattr(settings, name) != getattr(defaults, name):
            raise ConfigError(f"{describe(name)} has no effect while {describe(needed)}")
    if settings.upstream_tls and settings.upstream_protocol == "h2c":
        # h2c is HTTP/2 in cleartext: going on would send the app in the clear what the user
        # asked to encrypt.
        raise ConfigError(
            f"{describe('upstream_protocol')} with {describe('upstream_tls')}: h2c is "
            "cleartext HTTP/2; use upstream_protocol=http1 for TLS to the app"
        )
    if settings.tls_client_auth != "none" and not settings.tls_client_ca_file:
        raise ConfigError(
            f"{describe('tls_client_auth')} needs tls_client_ca_file: the CA certificates "
            "client certificates are verified against"
        )


def _advice(settings: Settings) -> tuple[str, ...]:
    shutdown = settings.drain_delay + settings.shutdown_grace_period
    if shutdown < KUBERNETES_GRACE_SECONDS:
        return ()
    return (
        f"drain_delay + shutdown_grace_period = {format_duration(shutdown)}, not under "
        f"Kubernetes' default terminationGracePeriodSeconds "
        f"({format_duration(KUBERNETES_GRACE_SECONDS)}): raise the pod's "
        "terminationGracePeriodSeconds above it, or in-flight requests are killed",
    )
