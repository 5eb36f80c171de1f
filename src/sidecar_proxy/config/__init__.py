"""Configuration: the :class:`Settings` type and loading it from flags, env and a file.

One declarative table (:data:`FIELDS`, built from the :class:`Settings` fields) drives every
source, so a setting added to ``Settings`` is at once an env var, a config-file key, a
``--flag`` and a row of ``check-config``. See :mod:`.loader` for precedence and errors,
:mod:`.kinds` for value syntax and :mod:`.units` for Go durations and byte sizes.
"""

from sidecar_proxy.config.loader import ConfigError, LoadedSettings, load_settings
from sidecar_proxy.config.settings import FIELDS, Field, Settings
from sidecar_proxy.config.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "FIELDS",
    "ConfigError",
    "Field",
    "LoadedSettings",
    "Settings",
    "format_duration",
    "format_size",
    "load_settings",
    "parse_duration",
    "parse_size",
]
