"""Fixtures: a fresh PKI per test, written to the test's own directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.tls import Pki, make_pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)
