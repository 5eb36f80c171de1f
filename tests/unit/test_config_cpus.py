"""WORKERS=auto: the CPU limit read from fake cgroup trees, rounded up and capped."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar_proxy.config import load_settings
from sidecar_proxy.config.cpus import cpu_limit, worker_count
from sidecar_proxy.config.kinds import WorkersKind

V2_MOUNT = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
V1_MOUNTS = (
    "31 23 0:28 / /sys/fs/cgroup tmpfs rw - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
)


def tree(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (paths relative to the fake root) and return the root."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def v2(root: Path, cgroup: str, limits: dict[str, str]) -> Path:
    """A cgroup v2 tree: the process in ``cgroup``, ``cpu.max`` of each directory given."""
    files = {"proc/self/cgroup": f"0::{cgroup}\n", "proc/self/mountinfo": V2_MOUNT}
    files |= {f"sys/fs/cgroup{d.rstrip('/')}/cpu.max": text for d, text in limits.items()}
    return tree(root, files)


def test_v2_container_with_its_own_cgroup_namespace(tmp_path: Path) -> None:
    # What a pod with `limits.cpu: 1500m` sees: its cgroup is the root of the mount.
    root = v2(tmp_path, "/", {"/": "150000 100000\n"})
    limit = cpu_limit(root)
    assert limit.cpus == 1.5
    assert limit.source == 'cgroup v2 /sys/fs/cgroup/cpu.max "150000 100000"'
    assert worker_count(0, root, available=8) == (
        2,
        f"auto: 1.5 CPUs from {limit.source}, rounded up, at most the 8 CPUs available",
    )


def test_v2_nested_cgroup_takes_the_smallest_limit_on_the_way_up(tmp_path: Path) -> None:
    # Without a cgroup namespace the process sees the whole hierarchy: the pod's cgroup limits
    # its containers even where the container's own cgroup says "max".
    root = v2(
        tmp_path,
        "/kubepods/pod1/ctr",
        {"/kubepods": "max 100000", "/kubepods/pod1": "300000 100000", "/kubepods/pod1/ctr": "max"},
    )
    assert cpu_limit(root).cpus == 3.0
    assert "/sys/fs/cgroup/kubepods/pod1/cpu.max" in cpu_limit(root).source
    assert worker_count(0, root, available=64)[0] == 3


def test_v2_without_a_limit_is_one_worker_not_the_core_count(tmp_path: Path) -> None:
    root = v2(tmp_path, "/", {"/": "max 100000\n"})
    assert cpu_limit(root).cpus is None
    assert worker_count(0, root, available=64) == (
        1,
        "auto: no cgroup v2 CPU limit (cpu.max is max), so 1",
    )


@pytest.mark.parametrize(
    ("quota", "period", "workers"),
    [
        ("50000", "100000", 1),  # 500m on a 64-core node: one worker
        ("1000", "100000", 1),  # 10m: still one, never zero
        ("100000", "100000", 1),
        ("100001", "100000", 2),  # just over one CPU: rounded up
        ("200000", "100000", 2),
        ("1600000", "100000", 4),  # 16 CPUs of quota, 4 CPUs in the affinity mask
    ],
)
def test_v1_quota_over_period_rounded_up_and_capped(
    tmp_path: Path, quota: str, period: str, workers: int
) -> None:
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "5:memory:/\n4:cpu,cpuacct:/\n0::/\n",
            "proc/self/mountinfo": V1_MOUNTS,
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": quota + "\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": period + "\n",
        },
    )
    assert worker_count(0, root, available=4)[0] == workers
    assert cpu_limit(root).source == (
        f"cgroup v1 /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us {quota} / "
        f"cpu.cfs_period_us {period}"
    )


def test_v1_host_path_under_a_mount_of_the_containers_own_cgroup(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup names the host's path, and the
    # mount's root field says which part of it the mount shows.
    mounts = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu:/docker/abc\n",
            "proc/self/mountinfo": mounts,
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "250000",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
        },
    )
    assert cpu_limit(root).cpus == 2.5


def test_v1_unlimited(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/\n",
            "proc/self/mountinfo": V1_MOUNTS,
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
    )
    assert cpu_limit(root).cpus is None
    assert worker_count(0, root, available=2)[0] == 1


def test_hybrid_hierarchy_reads_the_v1_cpu_controller(tmp_path: Path) -> None:
    # systemd's hybrid layout: a unified mount without the cpu controller (no cpu.max there).
    root = tree(
        tmp_path,
        {
            "proc/self/cgroup": "4:cpu,cpuacct:/\n0::/\n",
            "proc/self/mountinfo": V1_MOUNTS
            + "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            "sys/fs/cgroup/unified/cgroup.procs": "1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "150000",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
    )
    assert cpu_limit(root).cpus == 1.5


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert cpu_limit(tmp_path).cpus is None
    assert worker_count(0, tmp_path, available=8) == (1, "auto: no cgroup CPU limit, so 1")


def test_a_number_is_taken_as_given_whatever_the_limit(tmp_path: Path) -> None:
    root = v2(tmp_path, "/", {"/": "50000 100000"})
    assert worker_count(3, root, available=1) == (3, "as given")


def test_the_setting_reads_auto_and_numbers_and_prints_them_back() -> None:
    kind = WorkersKind(256)
    assert kind.parse("auto") == kind.parse("AUTO") == WorkersKind.AUTO
    assert kind.format(WorkersKind.AUTO) == "auto" and kind.to_json(WorkersKind.AUTO) == "auto"
    assert kind.parse("4") == 4 and kind.format(4) == "4" and kind.to_json(4) == 4
    assert load_settings({}, {}).settings.workers == 1  # the default: one process, as before
    assert kind.coerce(2) == 2  # a config file's number


@pytest.mark.parametrize("text", ["0", "-1", "257", "2.5", "two", "auto2", " 2"])
def test_bad_values_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected auto or an integer 1-256"):
        WorkersKind(256).parse(text)
