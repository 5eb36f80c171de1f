"""The ``sidecar-proxy`` command: ``run`` (the default), ``check-config``, ``demo``, and the two
commands that talk to a running sidecar's admin port, ``wait-ready`` and ``quit``.

Every setting's ``--flag`` is generated from :data:`~sidecar_proxy.config.FIELDS`, and flag
values reach the loader as the text the user typed, so a flag is parsed and reported exactly
like the env var and file key of the same setting. Flags therefore default to "not given"
rather than to the setting's default: argparse never invents a value that would outrank the
environment. Boolean flags may be given bare (``--attempts-header``) to mean true.

Exit codes: 0 on success, 2 for any usage or configuration error (argparse's convention, so
a bad setting is told apart from a runtime failure), 1 when the demo app cannot start or when
``wait-ready`` or ``quit`` do not get the answer they wait for, otherwise whatever the server
returns. ``wait-ready`` and ``quit`` read the same settings as ``run`` (they run with the
sidecar's own environment), to find the admin port.

``run`` hands the server a way to load the configuration again, from the same flags, the
environment as it was at start-up, and the same file: that is what a SIGHUP reload reads.

``run``, ``demo`` and ``check-config`` load the hooks ``HOOKS`` names (executing their code, so
a broken file stops them with exit 2); ``run`` and ``demo`` hand the loaded hooks on, so their
code runs once at start-up. ``wait-ready`` and ``quit`` never run the hooks' code.

The server is imported only when it is about to run, so ``--help`` and ``check-config`` stay
quick and work on a machine where the data path's native dependencies do not load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from sidecar_proxy.buildinfo import build_info
from sidecar_proxy.config import FIELDS, ConfigError, LoadedSettings, Settings, load_settings
from sidecar_proxy.config.cpus import worker_count
from sidecar_proxy.config.kinds import BoolKind, DurationKind, WorkersKind
from sidecar_proxy.config.loader import CONFIG_ENV, CONFIG_FLAG
from sidecar_proxy.hooks.load import HOOK_NAMES, HookLoadError, Hooks, load_hooks
from sidecar_proxy.lifecycle.client import admin_url, quit_sidecar, reachable, wait_ready

if TYPE_CHECKING:
    from sidecar_proxy.config.reload import SettingsSource
from sidecar_proxy.tls.material import CertInfo, MaterialError, check_files

PROG = "sidecar-proxy"


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (
        args_list[0].startswith("-") and args_list[0] not in ("-h", "--help", "--version")
    ):
        args_list.insert(0, "run")  # `sidecar-proxy --listen-port 8081` means run
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exc:  # --help, --version and usage errors
        return 0 if exc.code is None else int(exc.code)

    flags = {
        field.name: getattr(args, field.name)
        for field in FIELDS
        if getattr(args, field.name) is not None
    }
    environ = dict(os.environ)  # as at start-up, for every reload too

    def load() -> LoadedSettings:
        return load_settings(flags, environ, args.config)

    try:
        loaded = load()
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    # The TLS files are settings too: unusable ones stop every command the same way.
    try:
        certs = check_files(loaded.settings)
    except MaterialError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "wait-ready":
        return wait_ready_command(loaded.settings, args.timeout)
    if args.command == "quit":
        return quit_command(loaded.settings)
    hooks = None
    if loaded.settings.hooks:
        try:
            hooks = load_hooks(loaded.settings.hooks)
        except HookLoadError as exc:
            print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
            return 2
    if args.command == "check-config":
        workers = worker_count(loaded.settings.workers)
        (print_json if args.json else print_table)(loaded, certs, workers, hooks, sys.stdout)
        return 0
    if args.command == "demo":
        return run_demo(loaded.settings, load, hooks)
    return serve(loaded.settings, load, hooks)


def build_parser() -> argparse.ArgumentParser:
    """The parser; each subcommand takes every setting flag plus ``--config``."""
    # "sidecar-proxy 0.1.0 (compiled, CPython 3.11.7)" or "(pure Python, ...)"
    version = f"{PROG} {build_info().describe()}"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--version", action="version", version=version)
    common.add_argument(
        CONFIG_FLAG,
        metavar="FILE",
        help=f"TOML (.toml) or YAML (.yaml, .yml) file of settings [env {CONFIG_ENV}]",
    )
    group = common.add_argument_group(
        "settings", "Each flag overrides its env var, which overrides the config file."
    )
    for field in FIELDS:
        is_bool = isinstance(field.kind, BoolKind)
        group.add_argument(
            field.flag,
            dest=field.name,
            metavar=field.kind.metavar,
            nargs="?" if is_bool else None,
            const="true" if is_bool else None,
            help=f"{field.help} [env {field.env}; default {field.default}]".replace("%", "%%"),
        )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="HTTP/1.1 sidecar proxy: retries, circuit breaking, load shedding, "
        "metrics and graceful shutdown for the app beside it. "
        "Without a command, `run` is assumed.",
    )
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "run",
        parents=[common],
        usage="%(prog)s [options]",
        help="run the proxy (the default)",
        description="Run the proxy.",
    )
    check = commands.add_parser(
        "check-config",
        parents=[common],
        usage="%(prog)s [--json] [options]",
        help="print the effective settings and where each came from",
        description="Print every effective setting, its value and its source, then exit: "
        "0 if the configuration is valid, 2 if not.",
    )
    check.add_argument("--json", action="store_true", help="print a JSON object instead")
    wait = commands.add_parser(
        "wait-ready",
        parents=[common],
        usage="%(prog)s [--timeout DURATION] [options]",
        help="wait until the running sidecar's /ready answers 200",
        description="Poll /ready on the admin port of the sidecar configured like this one "
        "(same env and flags) until it answers 200, then exit 0; exit 1 after the timeout. "
        "For a postStart hook that holds the app's start until the sidecar is ready.",
    )
    wait.add_argument(
        "--timeout",
        metavar="DURATION",
        default="60s",
        help="how long to wait, a Go duration such as 30s or 2m (default 60s)",
    )
    commands.add_parser(
        "quit",
        parents=[common],
        usage="%(prog)s [options]",
        help="ask the running sidecar to drain and exit (POST /quitquitquit)",
        description="POST /quitquitquit to the admin port of the sidecar configured like this "
        "one: it drains as on SIGTERM and exits 0. Exit 0 if it accepted, 1 if not. For a "
        "Job's app, so that a classic sidecar does not keep the pod running.",
    )
    commands.add_parser(
        "demo",
        parents=[common],
        usage="%(prog)s [options]",
        help="run the proxy in front of a built-in sample app",
        description="Start a sample app on the upstream host and port, then run the proxy "
        "in front of it.",
    )
    return parser


def print_table(
    loaded: LoadedSettings,
    certs: Sequence[CertInfo],
    workers: tuple[int, str],
    hooks: Hooks | None,
    out: TextIO,
) -> None:
    """The settings table, then one line per loaded certificate, then the hooks loaded.
    ``auto`` workers also say what they come to and why."""
    sources = dict(loaded.sources)
    if loaded.settings.workers == WorkersKind.AUTO:
        sources["workers"] += f"; {workers[0]} ({workers[1]})"
    rows = [("SETTING", "VALUE", "SOURCE")] + [
        (name, value, sources[name]) for name, value in _formatted(loaded.settings).items()
    ]
    name_width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    for name, value, source in rows:
        out.write(f"{name:<{name_width}}  {value:<{value_width}}  {source}\n")
    if certs:
        out.write("\nCERTIFICATES\n")
    for cert in certs:
        sans = f"  {', '.join(cert.sans)}" if cert.sans else ""
        out.write(f"{cert.setting}  {cert.subject}  {_expiry(cert)}{sans}\n")
    if hooks is not None:
        out.write(f"\nHOOKS\n{hooks.origin}  {hooks.describe()}\n")


def print_json(
    loaded: LoadedSettings,
    certs: Sequence[CertInfo],
    workers: tuple[int, str],
    hooks: Hooks | None,
    out: TextIO,
) -> None:
    """``{setting: {"value": native, "text": as in the table, "source": ...}}``; a setting that
    names certificate files has ``"certificates"`` too, each with its subject, SANs and expiry;
    ``workers`` also has ``"count"``, the number of processes it comes to, and ``"count_from"``;
    ``hooks`` has ``"loaded"``: the file executed and each hook, ``"sync"``, ``"async"`` or
    null."""
    text = _formatted(loaded.settings)
    document: dict[str, dict[str, object]] = {
        field.name: {
            "value": field.kind.to_json(getattr(loaded.settings, field.name)),
            "text": text[field.name],
            "source": loaded.sources[field.name],
        }
        for field in FIELDS
    }
    for cert in certs:
        entries = document[cert.setting].setdefault("certificates", [])
        assert isinstance(entries, list)
        entries.append(
            {
                "subject": cert.subject,
                "sans": list(cert.sans),
                "not_after": cert.not_after.isoformat().replace("+00:00", "Z"),
            }
        )
    document["workers"] |= {"count": workers[0], "count_from": workers[1]}
    if hooks is not None:
        document["hooks"]["loaded"] = {
            "file": hooks.origin,
            **{name: hooks.kind(name) for name in HOOK_NAMES},
        }
    out.write(json.dumps(document, indent=2) + "\n")


def _expiry(cert: CertInfo) -> str:
    when = cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    days = (cert.not_after.timestamp() - time.time()) / 86400
    return f"expires {when} (EXPIRED)" if days < 0 else f"expires {when} (in {days:.0f} days)"


def _formatted(settings: Settings) -> Mapping[str, str]:
    return {field.name: field.kind.format(getattr(settings, field.name)) for field in FIELDS}


def wait_ready_command(settings: Settings, timeout_text: str) -> int:
    try:
        timeout = DurationKind(allow_zero=True).parse(timeout_text)
    except ValueError as exc:
        print(f"{PROG}: wait-ready: --timeout={timeout_text!r}: {exc}", file=sys.stderr)
        return 2
    ready, message = wait_ready(admin_url(settings), timeout)
    if not ready:
        print(f"{PROG}: wait-ready: {message}", file=sys.stderr)
    return 0 if ready else 1


def quit_command(settings: Settings) -> int:
    accepted, message = quit_sidecar(admin_url(settings))
    print(f"{PROG}: quit: {message}", file=sys.stderr)
    return 0 if accepted else 1


def serve(
    settings: Settings, reload_from: SettingsSource | None = None, hooks: Hooks | None = None
) -> int:
    """Serve until stopped. One process runs the ``hooks`` already loaded; with several
    workers, each worker loads its own copy of what ``settings.hooks`` names (the hooks the
    CLI loaded were its check that they load)."""
    workers, why = worker_count(settings.workers)
    if workers == 1:
        from sidecar_proxy import server  # noqa: PLC0415 - deferred: see the module docstring

        return server.run(settings, reload_from=reload_from, hooks=hooks)
    from sidecar_proxy.workers import supervisor  # noqa: PLC0415 - as the server, deferred

    return supervisor.run(settings, workers, why, reload_from=reload_from)


def run_demo(
    settings: Settings, reload_from: SettingsSource | None = None, hooks: Hooks | None = None
) -> int:
    from sidecar_proxy.demo import start_demo_app  # noqa: PLC0415 - only `demo` needs it

    host, port = settings.upstream_host, settings.upstream_port
    try:
        app = start_demo_app(host, port)
    except OSError as exc:
        print(f"{PROG}: cannot start the demo app on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    proxy = f"{reachable(settings.listen_host)}:{settings.listen_port}"
    admin = f"{reachable(settings.metrics_host)}:{settings.metrics_port}"
    print(
        f"{PROG} demo: sample app on {host}:{port}, proxy on {proxy}, admin on {admin}\n"
        "Try:\n"
        f"  curl -i {proxy}/\n"
        f"  curl -i {proxy}/users/42\n"
        f"  curl -i '{proxy}/slow?ms=200'\n"
        f"  curl -i {proxy}/flaky          # 503 half the time; the proxy retries it\n"
        f"  curl -N {proxy}/stream         # server-sent events, streamed as they come\n"
        f"  curl -i {proxy}/echo -d hello\n"
        f"  curl {admin}/metrics\n"
        "Press Ctrl-C to stop.",
        file=sys.stderr,
    )
    try:
        return serve(settings, reload_from, hooks)
    finally:
        app.shutdown()
        app.server_close()
