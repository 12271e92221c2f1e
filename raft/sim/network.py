"""The simulated network: per-message delay, loss, duplication and reordering, plus partitions.

It schedules nothing itself. The cluster asks :meth:`Network.route` what happens to a message it
sends (the delays of every copy that will arrive; none if it is lost) and :meth:`Network.link_up`
whether the link still carries it when it is due — a partition cuts messages already in flight too.

Partitions are sets of blocked *directed* links ``(src, dst)``, built by the helpers below:
symmetric splits, one-way cuts, isolating one node, and the "bridge" (a line A–B–C where only the
middle node talks to both sides).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Link = tuple[str, str]


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


@dataclass(frozen=True, slots=True)
class Partition:
    kind: str
    blocked: frozenset[Link]
    #: a short human description for traces ("{n1} | {n2,n3}")
    describe: str


def _fmt(nodes: Iterable[str]) -> str:
    return "{" + ",".join(sorted(nodes)) + "}"


def symmetric(groups: Sequence[Iterable[str]]) -> Partition:
    """Nodes talk only within their group."""
    gs = [sorted(g) for g in groups]
    blocked = {(a, b) for i, ga in enumerate(gs) for j, gb in enumerate(gs) if i != j for a in ga for b in gb}
    return Partition("symmetric", frozenset(blocked), " | ".join(_fmt(g) for g in gs))


def one_way(srcs: Iterable[str], dsts: Iterable[str]) -> Partition:
    """Messages from ``srcs`` to ``dsts`` are lost; the other direction still works."""
    s, d = sorted(srcs), sorted(dsts)
    blocked = {(a, b) for a in s for b in d if a != b}
    return Partition("one-way", frozenset(blocked), f"{_fmt(s)} -/-> {_fmt(d)}")


def isolate(node: str, others: Iterable[str]) -> Partition:
    p = symmetric([[node], list(others)])
    return Partition("isolate", p.blocked, f"isolate {node}")


def bridge(left: Iterable[str], middle: str, right: Iterable[str]) -> Partition:
    """A line: ``left`` and ``right`` cannot talk to each other; ``middle`` talks to everyone."""
    lft, rgt = sorted(left), sorted(right)
    blocked = {(a, b) for a in lft for b in rgt} | {(b, a) for a in lft for b in rgt}
    return Partition("bridge", frozenset(blocked), f"{_fmt(lft)} - {middle} - {_fmt(rgt)}")


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
        return p is None or (src, dst) not in p.blocked

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
