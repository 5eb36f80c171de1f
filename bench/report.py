"""From raw wrk runs to medians, ratios, targets and the printed tables.

Ratios are the headline, not absolute numbers: the machine is shared and noisy, but every peer
in one run of the benchmark sees the same machine, interleaved, so a ratio between two peers of
the same run is far more stable than either figure alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.wrk import WrkResult

SIDECAR = "sidecar-proxy"
PURE = "sidecar-pure"  # the same source installed as pure Python: the compiler's gain
RATIO_PEERS = ("nginx-proxy", "aiohttp-naive", "seed-go", "direct", PURE)
MIB = 1024 * 1024

# (scenario, peer compared with, minimum ratio of the sidecar's headline figure)
THROUGHPUT_TARGETS = (
    ("small", "nginx-proxy", 0.45),
    ("small", "aiohttp-naive", 3.0),
    ("1m", "nginx-proxy", 1.0),
)
RSS_IDLE_LIMIT = 40 * MIB
RSS_KEEPALIVE_LIMIT = 64 * MIB


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    connections: int
    size: int  # body bytes of one response, checked before every run
    headline: str  # "rps" or "mibs": the figure the ratios compare

    def headline_of(self, result: WrkResult) -> float:
        return result.requests_per_s if self.headline == "rps" else result.mib_per_s

    @property
    def headline_unit(self) -> str:
        return "req/s" if self.headline == "rps" else "MiB/s"


@dataclass(frozen=True)
class Run:
    round: int
    scenario: str
    peer: str
    result: WrkResult
    rss_after: int | None
    cpu_us: float | None  # the peer's CPU time per request (all its threads and processes)
    waited: float | None  # fraction of the run the peer was runnable but had no core

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "scenario": self.scenario,
            "peer": self.peer,
            "rss_after": self.rss_after,
            "cpu_us_per_request": self.cpu_us,
            "waited_fraction": self.waited,
            **self.result.to_json(),
        }


@dataclass
class Memory:
    """RSS of one peer's process tree, in bytes; None where not measured."""

    idle: int | None = None
    after_runs: int | None = None
    keepalive: int | None = None
    keepalive_open: int = 0


@dataclass(frozen=True)
class Median:
    rps: float
    p50_ms: float
    p99_ms: float
    mibs: float
    errors: int  # over all rounds
    rss_after_max: int | None
    cpu_us: float | None
    cpu_us_min: float | None  # the per-round spread: the 1 MiB runs of the sidecar are bimodal
    cpu_us_max: float | None
    waited: float | None
    rounds: int


@dataclass(frozen=True)
class Target:
    text: str
    value: float
    goal: float
    at_least: bool  # True: value >= goal wanted; False: value <= goal wanted
    unit: str
    cpu_ratio: float | None = None  # the same comparison in requests per CPU-second

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.at_least else self.value <= self.goal

    @property
    def margin(self) -> float:
        """How far past (positive) or short of (negative) the goal, as a fraction of it."""
        if self.at_least:
            return self.value / self.goal - 1.0
        return 1.0 - self.value / self.goal

    def describe(self) -> str:
        verdict = "MET" if self.met else "MISSED"
        how = "above" if self.at_least else "under"
        if not self.met:
            how = "short" if self.at_least else "over"
        return f"{verdict}, {abs(self.margin) * 100:.0f}% {how}"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.text,
            "value": self.value,
            "goal": self.goal,
            "unit": self.unit,
            "met": self.met,
            "margin": self.margin,
            "cpu_ratio": self.cpu_ratio,
        }


@dataclass
class Report:
    scenarios: list[Scenario]
    peers: list[str]
    runs: list[Run]
    memory: dict[str, Memory]
    notes: dict[str, str]
    medians: dict[str, dict[str, Median]] = field(init=False)

    def __post_init__(self) -> None:
        self.medians = {
            sc.name: {
                peer: m
                for peer in self.peers
                if (
                    m := _median([r for r in self.runs if r.scenario == sc.name and r.peer == peer])
                )
            }
            for sc in self.scenarios
        }

    def ratio(
        self, scenario: Scenario, peer: str, of: str = SIDECAR
    ) -> tuple[float, float, float] | None:
        """``of``/``peer`` for the headline figure: ratio of medians, and the per-round range."""
        medians = self.medians[scenario.name]
        if of not in medians or peer not in medians:
            return None
        mine, theirs = medians[of], medians[peer]
        ratio = _headline(scenario, mine) / _headline(scenario, theirs)
        per_round = []
        for r in {run.round for run in self.runs}:
            a = self._run(r, scenario.name, of)
            b = self._run(r, scenario.name, peer)
            if a and b and scenario.headline_of(b.result) > 0:
                per_round.append(scenario.headline_of(a.result) / scenario.headline_of(b.result))
        return ratio, min(per_round, default=ratio), max(per_round, default=ratio)

    def _run(self, round_: int, scenario: str, peer: str) -> Run | None:
        for run in self.runs:
            if (run.round, run.scenario, run.peer) == (round_, scenario, peer):
                return run
        return None

    def cpu_ratio(self, scenario: Scenario, peer: str, of: str = SIDECAR) -> float | None:
        """Requests per CPU-second of ``of`` over ``peer``'s: the ratio that noise moves least."""
        medians = self.medians[scenario.name]
        mine, theirs = medians.get(of), medians.get(peer)
        if mine is None or theirs is None or not mine.cpu_us or not theirs.cpu_us:
            return None
        return theirs.cpu_us / mine.cpu_us

    def targets(self) -> list[Target]:
        found: list[Target] = []
        by_name = {sc.name: sc for sc in self.scenarios}
        for scenario_name, peer, goal in THROUGHPUT_TARGETS:
            scenario = by_name.get(scenario_name)
            if scenario is None:
                continue
            ratio = self.ratio(scenario, peer)
            if ratio:
                found.append(
                    Target(
                        f"{scenario_name}: {scenario.headline_unit} >= {goal:g} x {peer}",
                        ratio[0],
                        goal,
                        True,
                        "x",
                        self.cpu_ratio(scenario, peer),
                    )
                )
        memory = self.memory.get(SIDECAR)
        if memory and memory.idle is not None:
            found.append(
                Target("RSS idle <= 40 MiB", memory.idle / MIB, RSS_IDLE_LIMIT / MIB, False, "MiB")
            )
        if memory and memory.keepalive is not None:
            found.append(
                Target(
                    f"RSS with {memory.keepalive_open} keep-alive connections <= 64 MiB",
                    memory.keepalive / MIB,
                    RSS_KEEPALIVE_LIMIT / MIB,
                    False,
                    "MiB",
                )
            )
        return found

    def text(self, durations: str) -> str:
        out: list[str] = []
        for sc in self.scenarios:
            medians = self.medians[sc.name]
            if not medians:
                continue
            out.append(
                f"\n== {sc.name}: GET {sc.path}, {sc.connections} connections, {durations} "
                "(median of rounds) =="
            )
            rows = [
                [
                    "peer",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "MiB/s",
                    "errors",
                    "RSS MiB",
                    "CPU us/req",
                    "CPU min-max",
                    "waited",
                    f"{SIDECAR} x",
                ]
            ]
            mine = medians.get(SIDECAR)
            for peer, m in medians.items():
                vs = (
                    f"{_headline(sc, mine) / _headline(sc, m):.2f}"
                    if mine and peer != SIDECAR and _headline(sc, m) > 0
                    else "-"
                )
                rows.append(
                    [
                        peer,
                        f"{m.rps:,.0f}",
                        f"{m.p50_ms:.2f}",
                        f"{m.p99_ms:.2f}",
                        f"{m.mibs:,.1f}",
                        str(m.errors),
                        _mib(m.rss_after_max),
                        "-" if m.cpu_us is None else f"{m.cpu_us:,.1f}",
                        "-"
                        if m.cpu_us_min is None or m.cpu_us_max is None
                        else f"{m.cpu_us_min:,.0f}-{m.cpu_us_max:,.0f}",
                        "-" if m.waited is None else f"{m.waited:.0%}",
                        vs,
                    ]
                )
            out.append(table(rows))
            out.append(
                f"  last column: {SIDECAR}'s {sc.headline_unit} / the peer's. CPU us/req: the "
                "peer's own CPU time per request. waited: share of the run the peer was runnable "
                "but its core was busy with other work (noise)."
            )

        out.append(f"\n== ratios: {SIDECAR} / peer (ratio of medians [per-round min-max]) ==")
        rows = [["scenario", "figure", *(f"/ {p}" for p in RATIO_PEERS)]]
        for sc in self.scenarios:
            cells = []
            for peer in RATIO_PEERS:
                ratio = self.ratio(sc, peer)
                cells.append(f"{ratio[0]:.2f} [{ratio[1]:.2f}-{ratio[2]:.2f}]" if ratio else "-")
            rows.append([sc.name, sc.headline_unit, *cells])
            cpu_cells = []
            for peer in RATIO_PEERS:
                cpu = self.cpu_ratio(sc, peer)
                cpu_cells.append("-" if cpu is None else f"{cpu:.2f}")
            rows.append([sc.name, "req/CPU-s", *cpu_cells])
        out.append(table(rows))
        out.append(
            "  req/CPU-s: requests per second of the peer's own CPU time, the sidecar's over the "
            "peer's: what the throughput ratio would be with a quiet core each."
        )

        for sc in self.scenarios:
            parts = []
            for variant, what in (
                (SIDECAR, "log to /dev/null"),
                ("sidecar-pipe", "log to a pipe"),
            ):
                ratio = self.ratio(sc, "sidecar-nolog", of=variant)
                cpu = self.cpu_ratio(sc, "sidecar-nolog", of=variant)
                if ratio:
                    cpu_text = "" if cpu is None else f" (req/CPU-s {cpu:.2f})"
                    parts.append(f"{what} / log off = {ratio[0]:.2f}{cpu_text}")
            if parts:
                out.append(f"access log cost, {sc.name} ({sc.headline_unit}): " + "; ".join(parts))

        out.append("\n== memory: RSS of the peer's process tree (MiB) ==")
        rows = [["peer", "idle", "after runs", "keep-alive held", "open conns"]]
        for peer in self.peers:
            mem = self.memory.get(peer)
            if mem is None or mem.idle is None:
                continue
            rows.append(
                [
                    peer,
                    _mib(mem.idle),
                    _mib(mem.after_runs),
                    _mib(mem.keepalive),
                    str(mem.keepalive_open),
                ]
            )
        out.append(table(rows))

        targets = self.targets()
        if targets:
            out.append(f"\n== targets ({SIDECAR}) ==")
            rows = [["target", "measured", "verdict", "req/CPU-s ratio"]]
            for t in targets:
                shown = f"{t.value:.2f}x" if t.unit == "x" else f"{t.value:.1f} MiB"
                cpu_text = "-" if t.cpu_ratio is None else f"{t.cpu_ratio:.2f}x"
                rows.append([t.text, shown, t.describe(), cpu_text])
            out.append(table(rows))

        if self.notes:
            out.append("\n== peers ==")
            width = max(len(p) for p in self.notes)
            out.extend(f"  {peer:<{width}}  {note}" for peer, note in self.notes.items())
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": [run.to_json() for run in self.runs],
            "medians": {
                sc: {peer: vars(m) for peer, m in by_peer.items()}
                for sc, by_peer in self.medians.items()
            },
            "ratios": {
                sc.name: {
                    peer: dict(zip(("ratio", "round_min", "round_max"), ratio, strict=True))
                    for peer in RATIO_PEERS
                    if (ratio := self.ratio(sc, peer))
                }
                for sc in self.scenarios
            },
            "cpu_ratios": {
                sc.name: {peer: cpu for peer in RATIO_PEERS if (cpu := self.cpu_ratio(sc, peer))}
                for sc in self.scenarios
            },
            "memory": {peer: vars(mem) for peer, mem in self.memory.items()},
            "targets": [t.to_json() for t in self.targets()],
            "notes": self.notes,
        }


def _headline(scenario: Scenario, m: Median) -> float:
    return m.rps if scenario.headline == "rps" else m.mibs


def _median(runs: list[Run]) -> Median | None:
    if not runs:
        return None

    def med(get: Callable[[WrkResult], float]) -> float:
        return statistics.median(get(r.result) for r in runs)

    rss = [r.rss_after for r in runs if r.rss_after is not None]
    cpu = [r.cpu_us for r in runs if r.cpu_us is not None]
    waited = [r.waited for r in runs if r.waited is not None]
    return Median(
        rps=med(lambda w: w.requests_per_s),
        p50_ms=med(lambda w: w.p50_ms),
        p99_ms=med(lambda w: w.p99_ms),
        mibs=med(lambda w: w.mib_per_s),
        errors=sum(r.result.errors for r in runs),
        rss_after_max=max(rss) if rss else None,
        cpu_us=statistics.median(cpu) if cpu else None,
        cpu_us_min=min(cpu) if cpu else None,
        cpu_us_max=max(cpu) if cpu else None,
        waited=statistics.median(waited) if waited else None,
        rounds=len(runs),
    )


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.1f}"


def table(rows: Iterable[list[str]]) -> str:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells))
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
