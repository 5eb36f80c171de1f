"""The README documents every setting, metric and response flag the code has."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar_proxy.config import FIELDS
from sidecar_proxy.observe import record
from sidecar_proxy.observe.metrics import Metrics

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_has_its_row() -> None:
    for f in FIELDS:
        default = f.default or "''"  # an unset optional value, as check-config prints it
        live = "yes" if f.live else "no"
        row = f"| `{f.env}` | `{f.flag}` | `{f.name}` | `{default}` | {live} |"
        assert row in README, f"README settings table lacks or misstates {f.env}: {row}"


def test_every_metric_is_documented() -> None:
    documented = set(re.findall(r"^\| `(sidecar_[a-z0-9_]+)` \|", README, re.M))
    exported = {
        m.name + ("_total" if m.type == "counter" else "") for m in Metrics().registry.collect()
    }
    assert exported == documented


def test_every_response_flag_is_documented() -> None:
    documented = set(re.findall(r"^\| `([A-Z]{2,3})` \|", README, re.M))
    flags = {
        value
        for name, value in vars(record).items()
        if name.isupper() and isinstance(value, str) and value.isupper() and len(value) <= 3
    }
    assert flags == documented
