"""What a reload (SIGHUP) may change: the ``live`` column of the settings table, applied.

A reload loads the settings again from the same flags, environment and file as at start-up
(only the file can have changed under a running process, so flags and env still win over it).
:func:`plan_reload` compares them with the running ones: a changed live setting is applied; a
changed setting that is not live (ports, hosts, what the upstream pool, the admin thread and the
app check were built with) keeps its running value, and is reported so the operator knows a
restart is needed for it. The result is one complete :class:`Settings` to swap in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar_proxy.config.loader import ConfigError, LoadedSettings
from sidecar_proxy.config.settings import FIELDS, Settings

SettingsSource = Callable[[], LoadedSettings]
"""Loads the configuration again the way start-up did (same flags, env and file)."""

# setting name -> (running value, value in the new configuration), both as check-config prints
Changes = dict[str, tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    settings: Settings  # what to run with: the new live values, the running values of the rest
    applied: Changes  # live settings whose value changes
    kept: Changes  # settings whose new value waits for a restart


def plan_reload(running: Settings, loaded: Settings) -> ReloadPlan:
    """Merge freshly ``loaded`` settings into the ``running`` ones, live settings only."""
    applied: Changes = {}
    kept: Changes = {}
    keep: dict[str, Any] = {}
    for field in FIELDS:
        old, new = getattr(running, field.name), getattr(loaded, field.name)
        if old == new:
            continue
        change = (field.kind.format(old), field.kind.format(new))
        if field.live:
            applied[field.name] = change
        else:
            kept[field.name] = change
            keep[field.name] = old
    return ReloadPlan(dataclasses.replace(loaded, **keep), applied, kept)


class ReloadRefused(Exception):
    """Raised by a reload's ``apply`` that cannot use what the new settings name (a hooks file
    that fails to load): nothing has changed, and the message is one line for the log."""


def reload(
    source: SettingsSource | None,
    running: Settings,
    apply: Callable[[Settings], None],
    counted: Callable[[bool], None],
    log: logging.Logger,
) -> None:
    """A SIGHUP reload's steps, the same for one process and for the parent of several: load
    from ``source`` (a bad value keeps every running setting and logs the one-line error
    start-up would have printed), plan against the ``running`` settings (reporting what waits
    for a restart), ``apply`` the plan, and report the outcome to ``counted`` and the log. An
    ``apply`` that raises :class:`ReloadRefused` has kept everything running: a failed reload."""
    if source is None:
        log.warning("reload requested, but there is no configuration source to reload")
        return
    try:
        loaded = source()
    except ConfigError as exc:
        counted(False)
        log.error(f"configuration error: {exc}", extra={"reload": "running settings kept"})
        return
    for warning in loaded.warnings:
        log.warning(warning)
    plan = plan_reload(running, loaded.settings)
    if plan.kept:
        log.warning(
            "reload: some settings change only with a restart; their running values are kept",
            extra={"kept": {name: f"{old} (new: {new})" for name, (old, new) in plan.kept.items()}},
        )
    try:
        apply(plan.settings)
    except ReloadRefused as exc:
        counted(False)
        log.error(str(exc), extra={"reload": "running settings and hooks kept"})
        return
    counted(True)
    log.info(
        "configuration reloaded",
        extra={"changed": {name: f"{old} -> {new}" for name, (old, new) in plan.applied.items()}},
    )
