"""How many worker processes ``WORKERS=auto`` means: the container's CPU limit, from its cgroup.

The limit is the CFS bandwidth quota the kubelet writes from ``resources.limits.cpu``:

* cgroup v2: ``cpu.max`` holds ``"$QUOTA $PERIOD"`` in microseconds, or ``"max $PERIOD"``;
* cgroup v1: ``cpu.cfs_quota_us`` (``-1`` for none) and ``cpu.cfs_period_us``.

The files are looked up where the process's own cgroup is mounted: ``/proc/self/cgroup`` names
the cgroup, ``/proc/self/mountinfo`` says where that hierarchy is mounted and which of its paths
the mount shows (a container with its own cgroup namespace sees its cgroup as the mount's root).
Every level from the process's cgroup up to the mount's root is read, because a quota on a
parent (the pod's cgroup) binds the containers below it too; the smallest one is the limit.
This is the lookup the JVM and Go's automaxprocs do.

``auto`` is the limit rounded up (1.5 CPUs of quota can keep two processes busy part of the
time), at least 1, and at most the CPUs this process may run on (its affinity mask, which a
cpuset narrows). Without a limit it is 1, never the node's core count: a sidecar on a 64-core
node without a CPU limit should not start 64 processes.

Everything reads files under an injectable root, so tests build fake ``/proc`` and
``/sys/fs/cgroup`` trees in a temporary directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path("/")


@dataclass(frozen=True, slots=True)
class CpuLimit:
    """The CPU limit found (``None``: no limit) and where it was read, for ``check-config``."""

    cpus: float | None
    source: str


@dataclass(frozen=True, slots=True)
class _Mount:
    root: PurePosixPath  # the hierarchy's path that the mount point shows
    point: PurePosixPath  # where it is mounted


def cpu_limit(root: Path = ROOT) -> CpuLimit:
    """The container's CPU limit in CPUs, from cgroup v2 if that hierarchy has the cpu
    controller's files, else from cgroup v1."""
    memberships = _memberships(root)
    mounts = _mounts(root)
    found = [
        limit
        for limit in (
            _v2_limit(root, memberships.get(""), mounts.get("cgroup2")),
            _v1_limit(root, memberships.get("cpu"), mounts.get("cpu")),
        )
        if limit is not None
    ]
    return found[0] if found else CpuLimit(None, "no cgroup CPU limit")


def worker_count(
    requested: int, root: Path = ROOT, available: int | None = None
) -> tuple[int, str]:
    """The number of workers to run for ``WORKERS`` = ``requested`` (0 = ``auto``), and why.

    ``available`` defaults to the CPUs in this process's affinity mask.
    """
    if requested > 0:
        return requested, "as given"
    usable = len(os.sched_getaffinity(0)) if available is None else available
    limit = cpu_limit(root)
    if limit.cpus is None:
        return 1, f"auto: {limit.source}, so 1"
    count = min(max(1, math.ceil(limit.cpus)), usable)
    return count, (
        f"auto: {limit.cpus:g} CPUs from {limit.source}, rounded up, "
        f"at most the {usable} CPUs available"
    )


def _memberships(root: Path) -> dict[str, PurePosixPath]:
    """``/proc/self/cgroup``: controller -> cgroup path; ``""`` is the v2 (unified) entry."""
    out: dict[str, PurePosixPath] = {}
    for line in _read(root / "proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = PurePosixPath(path)
    return out


def _mounts(root: Path) -> dict[str, _Mount]:
    """``/proc/self/mountinfo``: ``cgroup2`` and each v1 controller -> its mount.

    A line is ``ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS``;
    a v1 hierarchy names its controllers among the super options.
    """
    out: dict[str, _Mount] = {}
    for line in _read(root / "proc/self/mountinfo").splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 5 or len(fields) < dash + 4:
            continue
        mount = _Mount(PurePosixPath(fields[3]), PurePosixPath(fields[4]))
        fstype, superopts = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup2":
            out.setdefault("cgroup2", mount)
        elif fstype == "cgroup":
            for option in superopts:
                out.setdefault(option, mount)
    return out


def _levels(root: Path, path: PurePosixPath | None, mount: _Mount | None) -> list[Path]:
    """The directories of ``path`` and its ancestors inside ``mount``, innermost first."""
    if path is None:
        return []
    point = mount.point if mount is not None else PurePosixPath("/sys/fs/cgroup")
    try:
        relative = path.relative_to(mount.root if mount is not None else "/")
    except ValueError:
        relative = PurePosixPath()  # another namespace's path: the mount shows our cgroup
    parts = relative.parts
    return [root / point.relative_to("/").joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_limit(root: Path, path: PurePosixPath | None, mount: _Mount | None) -> CpuLimit | None:
    def quota(level: Path) -> tuple[str, str, str] | None:
        text = _read(level / "cpu.max").split()
        if len(text) != 2:
            return None
        return text[0], text[1], f'{_shown(root, level / "cpu.max")} "{text[0]} {text[1]}"'

    return _smallest(_levels(root, path, mount), quota, "cgroup v2", "cpu.max is max")


def _v1_limit(root: Path, path: PurePosixPath | None, mount: _Mount | None) -> CpuLimit | None:
    def quota(level: Path) -> tuple[str, str, str] | None:
        us, period = _read(level / "cpu.cfs_quota_us"), _read(level / "cpu.cfs_period_us")
        if not us or not period:
            return None
        where = _shown(root, level)
        return us, period, f"{where}/cpu.cfs_quota_us {us} / cpu.cfs_period_us {period}"

    return _smallest(_levels(root, path, mount), quota, "cgroup v1", "cpu.cfs_quota_us is -1")


def _smallest(
    levels: list[Path],
    quota: Callable[[Path], tuple[str, str, str] | None],
    version: str,
    unlimited: str,
) -> CpuLimit | None:
    """The smallest quota / period over ``levels``; ``None`` if no level has the files at all
    (the cpu controller is not in this hierarchy), a limit of ``None`` if none sets a quota."""
    best: CpuLimit | None = None
    for level in levels:
        found = quota(level)
        if found is None:
            continue
        us, period, where = found
        if best is None:
            best = CpuLimit(None, f"no {version} CPU limit ({unlimited})")
        # Anything but two positive integers ("max", -1) sets no quota at this level.
        if us.isdigit() and period.isdigit() and int(period) > 0:
            cpus = int(us) / int(period)
            if best.cpus is None or cpus < best.cpus:
                best = CpuLimit(cpus, f"{version} {where}")
    return best


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _shown(root: Path, path: Path) -> str:
    """``path`` as the process sees it (without the test's fake root)."""
    return "/" + str(path.relative_to(root)).lstrip("/")
