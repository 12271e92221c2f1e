"""The simulated network: per-message delay, loss, duplication and reordering, plus partitions.

It schedules nothing itself. The cluster asks :meth:`Network.route` what happens to a message it
sends (the delays of every copy that will arrive; none if it is lost) and :meth:`Network.link_up`
whether the link still carries it when it is due — a partition cuts messages already in flight too.

A partition is a set of blocked *directed* links ``(src, dst)``, built by the shared helpers of
:mod:`raftstate.raft.testing.partition` (symmetric splits, one-way cuts, isolating one node, the
"bridge"); the network carries one at a time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from raftstate.raft.testing.partition import Partition


@dataclass(slots=True)
class NetConfig:
    delay_min_ms: int = 1
    delay_max_ms: int = 6
    #: probability that a message is lost
    loss: float = 0.0
    #: probability that a message arrives twice (the copy takes its own delay)
    dup: float = 0.0
    #: probability that a message takes a long detour, so later messages overtake it
    reorder: float = 0.0
    reorder_max_ms: int = 60


@dataclass(slots=True)
class NetStats:
    sent: int = 0
    lost: int = 0
    cut: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass(slots=True)
class Network:
    rng: random.Random
    config: NetConfig = field(default_factory=NetConfig)
    partition: Partition | None = None
    stats: NetStats = field(default_factory=NetStats)

    def link_up(self, src: str, dst: str) -> bool:
        p = self.partition
        return p is None or not p.blocks(src, dst)

    def route(self, src: str, dst: str) -> list[int]:
        """Delays (ms, >= 1) of every copy of a message src -> dst that will arrive; [] if lost."""
        self.stats.sent += 1
        if not self.link_up(src, dst):
            self.stats.cut += 1
            return []
        cfg, rng = self.config, self.rng
        if cfg.loss and rng.random() < cfg.loss:
            self.stats.lost += 1
            return []
        out = [self._delay()]
        if cfg.dup and rng.random() < cfg.dup:
            self.stats.duplicated += 1
            out.append(self._delay())
        return out

    def _delay(self) -> int:
        cfg, rng = self.config, self.rng
        if cfg.reorder and rng.random() < cfg.reorder:
            self.stats.reordered += 1
            return rng.randint(cfg.delay_max_ms, max(cfg.delay_max_ms, cfg.reorder_max_ms))
        return rng.randint(cfg.delay_min_ms, cfg.delay_max_ms)

    def cut(self, partition: Partition) -> None:
        self.partition = partition

    def heal(self) -> None:
        self.partition = None
