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
from dataclasses import dataclass
from typing import Any

from sidecar_proxy.config.settings import FIELDS, Settings

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
