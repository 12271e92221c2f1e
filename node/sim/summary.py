"""Aggregating runs into the one-line-per-run-class summary of a soak."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from raftstate.node.sim.cluster import RunStats, SimulationFailure


@dataclass(slots=True)
class ClassSummary:
    """One run class: a mix, a cluster size and (optionally) a mutant."""

    mix: str
    nodes: int
    mutant: str | None = None
    seeds: int = 0
    steps: int = 0
    liveness_steps: int = 0
    sim_ms: int = 0
    elections: int = 0
    commits: int = 0
    acked: int = 0
    lost: int = 0
    unknown_committed: int = 0
    unknown_lost: int = 0
    reads_ok: int = 0
    snapshots_installed: int = 0
    restarts: int = 0
    conf_changes: int = 0
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    failures: list[SimulationFailure] = field(default_factory=list)

    def add(self, s: RunStats) -> None:
        self.seeds += 1
        self.steps += s.steps
        self.liveness_steps += s.liveness_steps
        self.sim_ms += s.sim_ms
        self.elections += s.elections
        self.commits += s.commits
        self.acked += s.acked
        self.lost += s.lost
        self.unknown_committed += s.unknown_committed
        self.unknown_lost += s.unknown_lost
        self.reads_ok += s.reads_ok
        self.snapshots_installed += s.snapshots_installed
        self.restarts += s.restarts
        self.conf_changes += s.conf_changes
        self.faults.update(s.faults)

    def fail(self, f: SimulationFailure) -> None:
        self.seeds += 1
        self.failures.append(f)

    def line(self) -> str:
        faults = " ".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        who = f"{self.mix}/{self.nodes}n" + (f"/{self.mutant}" if self.mutant else "")
        return (
            f"{who:<14} seeds={self.seeds} steps={self.steps}+{self.liveness_steps} "
            f"sim={self.sim_ms / 1000:.0f}s elections={self.elections} commits={self.commits} "
            f"acked={self.acked} lost={self.lost} unknown_committed={self.unknown_committed}/"
            f"{self.unknown_committed + self.unknown_lost} "
            f"reads={self.reads_ok} installs={self.snapshots_installed} "
            f"restarts={self.restarts} confchanges={self.conf_changes} failures={len(self.failures)} "
            f"({self.seconds:.1f}s) faults: {faults}"
        )
