"""The benchmark's pinning and its system-call counts: the figures docs/benchmarks.md quotes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.syscalls import parse_perf_stat

REPO = Path(__file__).resolve().parents[2]


def test_perf_stat_counts_by_call() -> None:
    text = (
        "3,,syscalls:sys_enter_read,894841,100.00,,\n"
        "0,,syscalls:sys_enter_write,894841,100.00,,\n"
        "<not counted>,,syscalls:sys_enter_futex,0,0.00,,\n"
        "12,,syscalls:sys_enter_writev,894841,100.00,,\n"
        "5,,raw_syscalls:sys_enter,894841,100.00,,\n"
        "7,,ipi:ipi_send_cpu,894841,100.00,,\n"
    )
    assert parse_perf_stat(text) == {"read": 3, "writev": 12, "ipi:ipi_send_cpu": 7}


@pytest.mark.skipif(
    shutil.which("taskset") is None or not {0, 1} <= os.sched_getaffinity(0),
    reason="pinning needs taskset and cores 0 and 1",
)
def test_pinning_survives_the_script_moving_onto_the_load_core() -> None:
    # Every benchmark script moves itself onto CORE_LOAD before it starts the peers; the peers
    # must still be pinned (they were not: each one inherited the script's single core).
    script = (
        "import os\n"
        "from bench.procs import CORE_LOAD, pinning_available\n"
        "os.sched_setaffinity(0, {CORE_LOAD})\n"
        "print(pinning_available())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "True"
