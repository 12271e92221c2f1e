"""Network partitions for the test harnesses: a :class:`Partition` is a set of blocked *directed*
links ``(src, dst)``, built by the helpers below and combined with ``|``.

Who uses it: the seeded simulator (node/sim: its Network carries one Partition at a time, drawn by
the fault injector), tests/raftnet.py (``Net.block``, ``Net.isolate`` and ``Net.partition`` add a
partition's links to the net's cut set; the rule tests build the odd shapes themselves) and
tests/driverfarm.py (the nemesis' splits, leader isolations and one-way cuts).

Shapes: symmetric splits, one-way cuts, isolating one node, and the "bridge" (a line A–B–C where
only the middle node talks to both sides). Arguments that name nodes take one id or several.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Link = tuple[str, str]
#: one node id, or several
Nodes = str | Iterable[str]


@dataclass(frozen=True, slots=True)
class Partition:
    kind: str
    blocked: frozenset[Link]
    #: a short human description for traces ("{n1} | {n2,n3}")
    describe: str

    def blocks(self, src: str, dst: str) -> bool:
        return (src, dst) in self.blocked

    def __or__(self, other: Partition) -> Partition:
        """Both partitions at once."""
        kind = self.kind if self.kind == other.kind else "mixed"
        return Partition(kind, self.blocked | other.blocked, f"{self.describe}; {other.describe}")


def _ids(nodes: Nodes) -> list[str]:
    return [nodes] if isinstance(nodes, str) else sorted(nodes)


def _fmt(nodes: Iterable[str]) -> str:
    return "{" + ",".join(sorted(nodes)) + "}"


def symmetric(groups: Sequence[Nodes]) -> Partition:
    """Nodes talk only within their group."""
    gs = [_ids(g) for g in groups]
    blocked = {(a, b) for i, ga in enumerate(gs) for j, gb in enumerate(gs) if i != j for a in ga for b in gb}
    return Partition("symmetric", frozenset(blocked), " | ".join(_fmt(g) for g in gs))


def one_way(srcs: Nodes, dsts: Nodes) -> Partition:
    """Messages from ``srcs`` to ``dsts`` are lost; the other direction still works."""
    s, d = _ids(srcs), _ids(dsts)
    blocked = {(a, b) for a in s for b in d if a != b}
    return Partition("one-way", frozenset(blocked), f"{_fmt(s)} -/-> {_fmt(d)}")


def isolate(node: str, others: Nodes) -> Partition:
    """``node`` and ``others`` cannot talk, either way."""
    p = symmetric([[node], others])
    return Partition("isolate", p.blocked, f"isolate {node}")


def bridge(left: Nodes, middle: str, right: Nodes) -> Partition:
    """A line: ``left`` and ``right`` cannot talk to each other; ``middle`` talks to everyone."""
    lft, rgt = _ids(left), _ids(right)
    blocked = {(a, b) for a in lft for b in rgt} | {(b, a) for a in lft for b in rgt}
    return Partition("bridge", frozenset(blocked), f"{_fmt(lft)} - {middle} - {_fmt(rgt)}")
