"""What the sidecar itself says about its settings, for checking the deploy artefacts against.

Names, defaults and parsing come from the sidecar's own code (sidecar_proxy.config and
`sidecar-proxy check-config`), never from a copy kept here, so a renamed setting or a changed
default shows up as a failing deploy test.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from running import SIDECAR

from sidecar_proxy.config import FIELDS, Field, LoadedSettings, load_settings

# The sidecar's settings by the environment variable that sets each.
BY_ENV: dict[str, Field] = {field.env: field for field in FIELDS}


def load_env(env: Mapping[str, str]) -> LoadedSettings:
    """The settings the sidecar would run with given exactly env (no flags, no config file)."""
    return load_settings(flags={}, environ=env)


def check_config(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`sidecar-proxy check-config --json` with exactly env (plus PATH) as its environment."""
    return subprocess.run(
        [str(SIDECAR), "check-config", "--json"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
