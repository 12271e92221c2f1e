"""Linearizable reads with ReadIndex, one rule per test (Raft dissertation, Ongaro 2014, §6.4)."""

from __future__ import annotations

import pytest

from raftnet import Net, is_msg
from raftstate.raft import (
    Heartbeat,
    HeartbeatResp,
    NotLeader,
    ReadState,
    RequestVote,
    RequestVoteResp,
    Role,
)
from raftstate.raft.testing import one_way

E = 10


def settled() -> Net:
    net = Net()
    net.elect("a")
    return net


def test_read_index_waits_for_a_heartbeat_quorum() -> None:
    """§6.4 step 3: before serving a read at its commit index, the leader confirms it is still the
    leader by exchanging a heartbeat round with a majority; fewer answers, no read."""
    net = Net(("a", "b", "c", "d", "e"))
    net.elect("a")
    net.propose("a", b"x")
    a = net.node("a")
    net.block(one_way(["b", "c", "d", "e"], "a"))
    a.read_index("r1")
    net.deliver()
    assert net.peers["a"].reads == []
    net.cut.discard(("b", "a"))  # one follower answers: with the leader, 2 of 5
    net.tick("a")
    net.deliver()
    assert net.peers["a"].reads == []
    net.cut.discard(("c", "a"))  # a second one: 3 of 5
    net.tick("a")
    net.deliver()
    assert net.peers["a"].reads == [ReadState("r1", a.commit_index)]


def test_read_is_confirmed_only_by_heartbeats_sent_after_it() -> None:
    """§6.4: the heartbeat round must start after the read arrived — acknowledgements of an older
    heartbeat prove nothing about leadership at the time of the read."""
    net = settled()
    net.tick("a")  # heartbeats of the current round are now in flight
    a = net.node("a")
    a.read_index("r")
    old = [m for m in net.inbox if isinstance(m, Heartbeat)]
    assert len(old) == 2
    net.deliver_where(lambda m: isinstance(m, HeartbeatResp) or m in old)
    assert net.peers["a"].reads == []
    net.deliver()
    assert [r.ctx for r in net.peers["a"].reads] == ["r"]


def test_no_read_before_the_leader_commits_an_entry_of_its_term() -> None:
    """§6.4 step 1: a new leader does not know the latest commit index until it commits an entry of
    its own term (its no-op); reads wait until then and then use that commit index."""
    net = settled()
    net.propose("a", b"x")
    net.expire_leases()
    b = net.node("b")
    b.campaign()
    net.deliver_where(is_msg(RequestVote, RequestVoteResp))
    assert b.role == Role.LEADER and b.commit_index < b.log.last_index
    b.read_index("r")
    net.process("b")
    assert net.peers["b"].reads == [] and not net.pending(is_msg(Heartbeat))
    net.deliver()
    (rs,) = net.peers["b"].reads
    assert rs.ctx == "r" and rs.index == b.log.last_index and b.log.term_at(rs.index) == b.term


def test_deposed_leader_never_releases_a_read() -> None:
    """§6.4 / pitfall: a leader partitioned away cannot confirm a read; once it learns of the new
    term (or steps down by CheckQuorum) it drops the pending reads — they are reported as dropped
    and never released, so a client never sees the value from before the new leader's write."""
    net = settled()
    net.propose("a", b"v1")
    net.isolate("a")
    net.node("a").read_index("stale")
    net.deliver()
    net.expire_leases("b", "c")
    net.elect("b")
    net.propose("b", b"v2")
    assert net.node("a").role == Role.LEADER
    net.heal()
    net.tick("b")
    net.deliver()
    p = net.peers["a"]
    assert net.node("a").role == Role.FOLLOWER
    assert p.dropped_reads == ["stale"] and p.reads == []

    net = settled()
    net.isolate("a")
    net.node("a").read_index("r")
    for _ in range(3 * E):
        net.tick("a")
        net.deliver()
    p = net.peers["a"]
    assert net.node("a").role == Role.FOLLOWER
    assert p.dropped_reads == ["r"] and p.reads == []


def test_reads_waiting_for_the_noop_are_dropped_on_step_down() -> None:
    """§6.4: reads queued behind the new leader's no-op are dropped, not kept, when it loses
    leadership before that no-op commits."""
    net = settled()
    net.expire_leases()
    b = net.node("b")
    b.campaign()
    net.deliver_where(is_msg(RequestVote, RequestVoteResp))
    net.drop()
    b.read_index("early")
    b.step(Heartbeat(b.term + 1, "c", "b", 0, 0))
    net.process("b")
    assert net.peers["b"].dropped_reads == ["early"] and net.peers["b"].reads == []


def test_single_node_read_needs_no_round_trip() -> None:
    """§6.4 (single-server optimisation): a leader that is the only voter is a majority by itself;
    once its no-op commits, a read is released at once at the commit index, without messages."""
    net = Net(("a",))
    net.elect("a")
    a = net.node("a")
    assert a.commit_index == 1
    mark = len(net.sent)
    a.read_index("r")
    net.deliver()
    assert net.peers["a"].reads == [ReadState("r", 1)]
    assert net.sent[mark:] == []


def test_reads_are_released_in_order_at_their_registration_index() -> None:
    """§6.4 step 2: each read is served at the commit index of the moment it was registered
    (later reads never at a lower index), and released in the order received."""
    net = settled()
    a = net.node("a")
    a.read_index(1)
    net.propose("a", b"x")
    a.read_index(2)
    a.read_index(3)
    net.tick("a")
    net.deliver()
    reads = net.peers["a"].reads
    assert [r.ctx for r in reads] == [1, 2, 3]
    assert [r.index for r in reads] == [1, 2, 2]


def test_read_index_on_a_follower_is_refused_with_the_leader_hint() -> None:
    """§6.4: only the leader runs ReadIndex; a follower refuses (NotLeader) and names the leader
    it knows so the client can retry there."""
    net = settled()
    with pytest.raises(NotLeader) as exc:
        net.node("b").read_index("r")
    assert exc.value.leader_id == "a"
