"""Cluster time carried in the log, one rule per test.

Not in the Raft dissertation as such: the core stamps every entry with the leader's clock
(``Entry.time_ms``), clamped so that it never decreases along the log (see ``RaftNode._stamp``).
The state machine's expiries depend only on this time, so replicas with skewed clocks stay
identical (pitfall "replicas with skewed clocks ... reach byte-identical state"; §3.9's "clients
and servers must not rely on clocks" applies to the followers' clocks).
"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from raftnet import Net
from raftstate.raft import EntryKind, Role


def times(net: Net, nid: str) -> list[int]:
    return [e.time_ms for e in net.node(nid).log.entries]


def non_decreasing(xs: list[int]) -> bool:
    return all(x <= y for x, y in pairwise(xs))


def test_entries_carry_the_leaders_time() -> None:
    """Each entry carries the clock of the leader that appended it — the no-op its clock at the
    election, a proposal the time it was proposed — and every replica stores the same value."""
    net = Net()
    net.clock_offset_ms = {"a": 5000, "b": -3000, "c": 777}
    net.tick("a")
    net.elect("a")
    net.now_ms = 1000
    net.propose("a", b"x")
    assert times(net, "a") == [5010, 6000]
    assert times(net, "b") == times(net, "c") == [5010, 6000]
    net.tick("a")
    net.deliver()
    assert [e.time_ms for e in net.peers["b"].applied] == [5010, 6000]


def test_leader_clock_jumping_backwards_never_stamps_below_the_last_stamp() -> None:
    """A leader whose clock jumps backwards (NTP step, VM restore) stamps new entries with the
    last stamp in its log until its clock catches up: cluster time never goes backwards."""
    net = Net()
    net.elect("a")
    net.now_ms = 10_000
    net.propose("a", b"x")
    net.clock_offset_ms["a"] = -9_500
    net.propose("a", b"y")
    net.tick("a")
    net.propose("a", b"z")
    a = net.node("a")
    assert a.propose(b"w", now_ms=1) > 0
    stamps = times(net, "a")
    assert stamps[1:] == [10_000, 10_000, 10_000, 10_000]
    net.clock_offset_ms["a"] = 0
    net.now_ms = 12_000
    net.propose("a", b"v")
    assert times(net, "a")[-1] == 12_000


def test_new_leader_with_a_slower_clock_never_stamps_below_its_log() -> None:
    """A new leader whose clock is behind the previous leader's stamps its no-op and proposals
    with at least the last stamp in its log; once its own clock passes that, its clock is used."""
    net = Net()
    net.clock_offset_ms = {"a": 100_000}
    net.tick()
    net.elect("a")
    net.propose("a", b"x")
    top = times(net, "a")[-1]
    assert top >= 100_000
    net.expire_leases()
    net.tick("b")
    net.elect("b")
    net.propose("b", b"y")
    b_times = times(net, "b")
    assert b_times[-2:] == [top, top] and non_decreasing(b_times)
    net.now_ms = 200_000
    net.propose("b", b"z")
    assert times(net, "b")[-1] == 200_000


def test_cluster_time_survives_compaction_and_restart() -> None:
    """The snapshot keeps the time of its last entry, so a leader whose log was compacted away
    (and restarted from the snapshot) still never stamps below it."""
    net = Net()
    net.clock_offset_ms = {"a": 50_000}
    net.elect("a")
    net.propose("a", b"x")
    net.compact("b")
    net.crash("b")
    b = net.restart("b").node
    assert b.log.entries == [] and b.log.last_time_ms >= 50_000
    net.expire_leases()
    net.elect("b")
    assert times(net, "b") == [b.log.last_time_ms] and times(net, "b")[0] >= 50_000


@pytest.mark.parametrize("seed", range(4))
def test_replicas_with_skewed_clocks_agree_on_every_entrys_time(seed: int) -> None:
    """Pitfall: with clocks skewed and jumping on every node and leaders changing, every replica
    holds the same time for the same committed entry, and time is non-decreasing along every log."""
    rng = random.Random(seed)
    net = Net(("a", "b", "c", "d", "e"), seed=seed)
    for _ in range(8):
        net.clock_offset_ms = {i: rng.randrange(-50_000, 50_000) for i in net.ids}
        net.run(rng.randrange(5, 40))
        lead = net.leader()
        if lead is not None and net.node(lead).role == Role.LEADER:
            for k in range(rng.randrange(1, 4)):
                net.propose(lead, b"%d" % k)
        if rng.random() < 0.5 and lead is not None:
            net.isolate(lead)
            net.run(30)
            net.heal()
    net.run(10)
    ref: dict[int, int] = {}
    for i in net.ids:
        assert non_decreasing(times(net, i)), (i, times(net, i))
        for e in net.peers[i].applied:
            assert ref.setdefault(e.index, e.time_ms) == e.time_ms, f"{i} disagrees at {e.index}"
    assert any(e.kind == EntryKind.NORMAL for e in net.peers["a"].applied)
